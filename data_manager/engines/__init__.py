"""Repository engines: how backups are laid out in a storage. Chosen per storage (``engine = "..."``).

* ``worm`` (the default): each backup a full, self-contained copy, readable by hand (:mod:`.worm`);
* ``dedup``: content-defined chunks, deduplicated, compressed and encrypted in packs, keys with roles
  (:mod:`.dedup`);
* ``sync``: a directory source as a browsable mirror, one object per file, and a manifest per backup
  (:mod:`.sync`).

The interface every engine implements, and what it must never do, is :mod:`.base`.
"""

from __future__ import annotations

import importlib

from ..errors import ConfigError
from .base import RepositoryEngine

DEFAULT = "worm"
# Imported when a storage uses them: the dedup engine pulls in cryptography and fastcdc.
_ENGINES = {
    "worm": "data_manager.engines.worm:WormEngine",
    "dedup": "data_manager.engines.dedup.engine:DedupEngine",
    "sync": "data_manager.engines.sync.engine:SyncEngine",
}


def names() -> list[str]:
    return sorted(_ENGINES)


def engine_class(name: str, where: str = "") -> type[RepositoryEngine]:
    """The engine called ``name``, or a config error naming the known ones."""
    if name not in _ENGINES:
        raise ConfigError(f"{where}: key 'engine': unknown engine {name!r} (known: {', '.join(names())})".lstrip(": "),
                          key="engine")
    module, _, attr = _ENGINES[name].partition(":")
    cls: type[RepositoryEngine] = getattr(importlib.import_module(module), attr)
    return cls
