"""The experiments guard against the local fake services: answers, retries, timeouts, tokens, config errors."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from data_manager.errors import ConfigError
from data_manager.types import Dataset, Settings
from data_manager_experiments.client import GuardError
from data_manager_experiments.fake_services import FakeServices, closed_port_url
from data_manager_experiments.guard import ExperimentsGuard

TOKEN = "t0ken-for-tests"
DS = Dataset("exp 42/x", "local", ())  # a space and a slash: quoted in the URL


@pytest.fixture
def fake() -> Iterator[FakeServices]:
    with FakeServices(token=TOKEN) as services:
        yield services


def guard(fake: FakeServices | None = None, **over: Any) -> ExperimentsGuard:
    values: dict[str, Any] = {"token": TOKEN, "timeout": "2s", "retries": 2}
    if fake is not None:
        values |= {"experiments_url": fake.experiments_url, "spark_url": fake.spark_url}
    values |= over
    g = ExperimentsGuard(Settings(values, where="dm.toml: [guards.experiments]"))
    for client in (g.experiments, g.spark):
        if client is not None:
            client.backoff = 0.05  # fast retries in tests
    return g


def test_allowed_refused_and_spark_tasks(fake: FakeServices) -> None:
    g = guard(fake)
    assert g.check(DS, "backup") is None
    fake.refuse[DS.data_id] = "experiment 17 is writing it"
    fake.running[DS.data_id] = ["t1", "t2"]
    reason = g.check(DS, "restore")
    assert reason is not None and "experiment 17 is writing it" in reason and "2 Spark task(s)" in reason and "t2" in reason
    assert ("GET", "/em/datasets/exp%2042%2Fx/allowed") in fake.calls
    fake.unknown.add(DS.data_id)
    assert "does not know" in (g.check(DS, "backup") or "")


def test_marks_carry_job_and_operation(fake: FakeServices) -> None:
    g = guard(fake)
    g.mark(DS, "backup", "job1", available=False)
    g.mark(DS, "backup", "job1", available=True, outcome="failed")
    assert fake.marks(DS.data_id) == [False, True]
    last = fake.availability[-1]
    assert last["job_id"] == "job1" and last["operation"] == "backup" and last["outcome"] == "failed"


def test_5xx_retried_then_answered(fake: FakeServices) -> None:
    fake.fail_next = 2
    assert guard(fake).check(DS, "backup") is None
    assert len([c for c in fake.calls if c[1].endswith("/allowed")]) == 3


def test_5xx_until_retries_run_out(fake: FakeServices) -> None:
    fake.fail_next = 10
    with pytest.raises(GuardError, match=r"HTTP 503: temporarily unavailable \(fake\) \(after 3 attempts\)"):
        guard(fake).check(DS, "backup")


def test_slow_answer_times_out(fake: FakeServices) -> None:
    fake.delay = 1.0
    t0 = time.monotonic()
    with pytest.raises(GuardError, match=r"no answer within 0.3s \(after 2 attempts\)"):
        guard(fake, timeout=0.3, retries=1).check(DS, "backup")
    assert time.monotonic() - t0 < 3


def test_unreachable_one_line_without_token() -> None:
    g = guard(experiments_url=closed_port_url() + "/em", retries=1)
    with pytest.raises(GuardError) as info:
        g.check(DS, "backup")
    text = str(info.value)
    assert "experiments-manager at http://127.0.0.1:" in text and "unreachable" in text
    assert "\n" not in text and TOKEN not in text


def test_wrong_token_not_retried(fake: FakeServices) -> None:
    with pytest.raises(GuardError, match="HTTP 401 \\(check the token\\)"):
        guard(fake, token="wrong", retries=3).check(DS, "backup")
    assert len(fake.calls) == 1


def test_release_failure_raises(fake: FakeServices) -> None:
    fake.fail_release = True
    g = guard(fake, retries=0)
    g.mark(DS, "backup", "j", available=False)
    with pytest.raises(GuardError, match="HTTP 500"):
        g.mark(DS, "backup", "j", available=True, outcome="done")


@pytest.mark.parametrize(
    "values, needle",
    [
        ({}, "key 'experiments_url': missing"),
        ({"experiments_url": "ftp://x"}, "must be an http"),
        ({"experiments_url": "http://x", "retries": -1}, "at least 0"),
        ({"experiments_url": "http://x", "timeout": "soon"}, "must be a duration"),
        ({"experiments_url": "http://x", "tokn": "x"}, "key 'tokn': unknown key"),
    ],
)
def test_config_errors_name_the_key(values: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        ExperimentsGuard(Settings(values, where="dm.toml: [guards.experiments]"))


def test_contract_document_is_valid_openapi() -> None:
    from pathlib import Path

    import openapi_spec_validator as validator
    import yaml
    doc = yaml.safe_load((Path(__file__).parents[3] / "docs" / "experiments-api.yaml").read_text())
    validator.validate(doc)
    assert set(doc["paths"]) == {"/datasets/{data_id}/allowed", "/datasets/{data_id}/availability",
                                 "/datasets/{data_id}/tasks"}
