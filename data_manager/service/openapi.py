"""``python -m data_manager.service.openapi > docs/openapi.json``: the OpenAPI document the service serves
at ``/openapi.json`` (it does not depend on the config; a throwaway one is used)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def document() -> dict[str, Any]:
    from ..api import DataManager
    from .app import create_app
    from .runtime import Service

    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "dm.toml"
        config.write_text(f'[storages.s]\ntype = "filesystem"\nroot = "{tmp}"\n[state]\npath = "{tmp}/state.db"\n')
        os.environ.pop("DATA_MANAGER_STATE", None)
        return create_app(Service(DataManager.from_file(config))).openapi()


if __name__ == "__main__":
    print(json.dumps(document(), indent=2, sort_keys=True))
