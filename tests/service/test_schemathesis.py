"""schemathesis against a live ``data-manager serve`` (a real process on a free loopback port, tokens
configured, a filesystem storage and a tiny directory dataset): every operation of the served OpenAPI
document, with a bounded number of examples; no 5xx, every response as the document says.

The sources have names no generator guesses (``srcalpha...``), so a generated restore's ``set`` never
points a real source somewhere else: every generated restore is refused (422) or restores the tiny dataset
into its own temporary directory. The two server-sent-event streams never end: their cases are sent with
httpx, streaming, and only the status and headers are checked against the document.
"""

from __future__ import annotations

import itertools
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from data_manager.service.openapi import document

from .conftest import TOKENS, Serve, token_env, wait_job

HEADERS = {"Authorization": f"Bearer {TOKENS['admin']}"}
KNOWN: dict[str, str] = {}  # job_id: a job of the live server
_draws = itertools.count()


def _aim(case: Any) -> None:
    """Every other positive case names what exists (a configured dataset, a known job, a restore of the
    whole dataset in place): random ids alone would only ever reach the 404s."""
    meta = case.meta
    if meta is None or meta.generation.mode.name != "POSITIVE":
        return
    if case.headers and "Idempotency-Key" in case.headers:
        # a key used again with another body is refused (422, docs/service.md): the generator's keys
        # repeat ("0"), so each positive case gets its own
        case.headers["Idempotency-Key"] = f"schemathesis-{next(_draws)}"
    if next(_draws) % 2:
        return
    data_id = random.Random(len(KNOWN) + next(_draws)).choice(("d1", "sched1"))
    if "data_id" in (case.path_parameters or {}):
        case.path_parameters["data_id"] = data_id
    if "job_id" in (case.path_parameters or {}):
        case.path_parameters["job_id"] = KNOWN["job_id"]
    if isinstance(case.body, dict) and "data_id" in case.body:
        case.body["data_id"] = data_id
        case.body.pop("set", None)
        case.body.pop("only", None)


def _config(tmp: Path) -> Path:
    store = tmp / "store"
    store.mkdir()
    lines = ["[storages.local]", 'type = "filesystem"', f'root = "{store}"', "",
             "[state]", f'path = "{tmp / "state.db"}"', "", "[locks]", 'settle = "0.05s"', ""]
    for data_id in ("d1", "sched1"):
        lines.append(f"[datasets.{data_id}]")
        for source in ("srcalphaqz", "srcbetaqz"):
            d = tmp / "data" / data_id / source
            d.mkdir(parents=True)
            (d / "file.bin").write_bytes(os.urandom(1000))
            lines += [f"[[datasets.{data_id}.sources]]", f'name = "{source}"', 'type = "directory"', f'path = "{d}"']
        lines.append("")
    lines += ["[datasets.sched1.schedule]", 'cron = "0 3 * * *"', "",
              "[service.tokens.reader]", 'token = "${DM_TEST_READ}"', 'scope = "read"',
              "[service.tokens.operator]", 'token = "${DM_TEST_OPERATE}"', 'scope = "operate"',
              "[service.tokens.admin]", 'token = "${DM_TEST_ADMIN}"', 'scope = "admin"', ""]
    path = tmp / "dm.toml"
    path.write_text("\n".join(lines))
    return path


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    server = Serve(_config(tmp_path_factory.mktemp("schemathesis")), env=token_env()).start()
    with httpx.Client(base_url=server.url, headers=HEADERS, timeout=10) as c:  # a job to find by id
        KNOWN["job_id"] = wait_job(c, c.post("/v1/backups", json={"data_id": "d1"}).json()["id"])["id"]
    try:
        yield server
    finally:
        code = server.stop()
        assert "Traceback" not in server.log.read_text(), server.log.read_text()
        assert code == 0, server.log.read_text()


# The document is generated at collection (data_manager.service.openapi, what every service serves whatever
# its config): schemathesis.pytest.from_fixture, which would load it from the live server, fails under
# pytest 9 (request.node._nodeid). test_the_live_server_serves_this_document proves it is the served one.
DOCUMENT = document()
# allow-extra-parameters = false: a query parameter an operation does not declare is not "invalid data"
# (the service ignores it, as HTTP APIs do), so negative_data_rejection runs on every other kind of bad input
CONFIG = schemathesis.config.SchemathesisConfig.from_dict({"generation": {"allow-extra-parameters": False}})
schema = schemathesis.openapi.from_dict(DOCUMENT, config=CONFIG)


def test_the_live_server_serves_this_document(live_server: Serve) -> None:
    served = httpx.get(live_server.url + "/openapi.json", timeout=10).json()
    assert served == DOCUMENT
    loaded = schemathesis.openapi.from_url(live_server.url + "/openapi.json", timeout=10)
    assert {(op.ok().method.upper(), op.ok().path) for op in loaded.get_all_operations()} == \
        {(op.ok().method.upper(), op.ok().path) for op in schema.get_all_operations()}


def _check_stream(case: Any, server: Serve) -> None:
    """An SSE operation's case: status and content type as documented, never a 5xx."""
    kwargs = case.as_transport_kwargs(base_url=server.url, headers=HEADERS)
    with httpx.Client(timeout=10) as c:
        with c.stream(kwargs["method"].upper(), kwargs["url"], headers=kwargs.get("headers"), params=kwargs.get("params"),
                      cookies=kwargs.get("cookies")) as r:
            assert r.status_code < 500, r.read()
            if kwargs["method"].upper() != case.operation.method.upper():  # the coverage phase's unexpected method
                assert r.status_code == 405, (kwargs["method"], r.status_code)
                return
            documented = case.operation.definition.raw["responses"]
            assert str(r.status_code) in documented, (r.status_code, list(documented))
            if r.status_code == 200:
                assert r.headers["content-type"].startswith("text/event-stream")
            else:
                assert r.headers["content-type"].startswith("application/problem+json"), r.headers
                body = r.read()
                assert b'"status"' in body


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_operation(case: Any, live_server: Serve) -> None:
    if case.operation.path.endswith("/events"):
        _aim(case)
        _check_stream(case, live_server)
        return
    _aim(case)
    case.call_and_validate(base_url=live_server.url, headers=HEADERS, timeout=15)


@schema.include(method="POST").parametrize()
@settings(max_examples=5, deadline=None, suppress_health_check=list(HealthCheck))
def test_writes_with_a_read_token(case: Any, live_server: Serve) -> None:
    """A read token on every write: a 403 problem (or another 4xx for the request itself), as documented."""
    response = case.call_and_validate(base_url=live_server.url, headers={"Authorization": f"Bearer {TOKENS['reader']}"},
                                      timeout=15, excluded_checks=[schemathesis.checks.negative_data_rejection])
    assert 400 <= response.status_code < 500, response.text
