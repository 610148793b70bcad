"""The server fixture: ``s3_bucket`` from the shared ``tests/servers.py`` (fresh bucket on the MinIO of
``scripts/services``, 127.0.0.1:9000). Until that module exists, an equivalent stand-in that only connects
to the running server (it never starts one); outside CI it skips when the server is down."""

from __future__ import annotations

import os
import uuid
from typing import Any

import pytest

ENDPOINT = "127.0.0.1:9000"
ACCESS_KEY = "dmadmin"
SECRET_KEY = "dmadmin-secret"

try:
    from tests.servers import s3_bucket  # noqa: F401
except ImportError:

    @pytest.fixture
    def s3_bucket() -> Any:
        minio = pytest.importorskip("minio")
        client = minio.Minio(ENDPOINT, ACCESS_KEY, SECRET_KEY, secure=False)
        name = "dm-test-" + uuid.uuid4().hex[:12]
        try:
            client.make_bucket(name)
        except Exception as exc:
            if os.environ.get("CI") == "true":
                raise
            pytest.skip(f"MinIO at {ENDPOINT} not reachable: {exc}")
        yield name, client
        _empty(client, name)


def _empty(client: Any, bucket: str) -> None:
    from minio.deleteobjects import DeleteObject

    try:
        for err in client.remove_objects(bucket, [DeleteObject(o.object_name) for o in client.list_objects(bucket, recursive=True)]):
            pass
        client.remove_bucket(bucket)
    except Exception:
        pass


def pytest_configure(config: Any) -> None:
    config.addinivalue_line("markers", "minio: needs the MinIO server of scripts/services")
