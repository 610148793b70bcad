"""The status page at ``/`` in a real browser (issue 19): Debian's ``chromium`` and ``chromium-driver``
driven by Selenium, against a real ``data-manager serve`` process.

A backup posted through the API after the page loaded must appear in the page as ``running`` (with its
progress) and then leave the running table, the dataset's row showing the new backup, all without a
reload: the page's ``EventSource`` on ``/v1/events`` does it. Screenshots are taken into the test's
``tmp_path`` (and copied to ``$DM_SCREENSHOTS`` when it is set, e.g. for CI artifacts).

Nothing is downloaded at run time: the browser and its driver are the Debian packages at fixed paths
(``scripts/services start`` installs them), so Selenium Manager is never asked to fetch one. A missing
browser or driver fails the test, never skips it (as a missing service dependency does in conftest.py).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium import webdriver  # the test extra: fail, never skip, when it is missing
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from .conftest import TOKENS, token_env, wait_job, write_config

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
MARKER = "dm-no-reload"


@pytest.fixture
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[WebDriver]:
    """Headless Chromium from the Debian packages, at fixed paths (no Selenium Manager download)."""
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        assert os.access(path, os.X_OK), (
            f"{path} is missing: apt-get install -y chromium chromium-driver (scripts/services start installs them)"
            f"; the {package} package is needed for this test, which must not be skipped")
    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager, if it ran at all, must not download anything
    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox",  # we run as root: Chromium's sandbox refuses root
                "--disable-dev-shm-usage",          # containers have a small /dev/shm
                "--window-size=1280,900", "--disable-gpu", "--no-first-run", "--disable-extensions",
                f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER,
                                              log_output=str(tmp_path / "chromedriver.log")), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def screenshot(driver: WebDriver, tmp_path: Path, name: str) -> Path:
    """A PNG of the page in ``tmp_path``; also copied to ``$DM_SCREENSHOTS`` when set."""
    out = tmp_path / f"{name}.png"
    assert driver.save_screenshot(str(out)), f"no screenshot {out}"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 1000
    keep = os.environ.get("DM_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy2(out, Path(keep) / out.name)
    return out


def cell(driver: WebDriver, row_id: str, index: int) -> str | None:
    """The text of a cell of the row ``row_id``, None while the row is absent."""
    try:
        return str(driver.find_element(By.ID, row_id).find_elements(By.TAG_NAME, "td")[index].text)
    except (NoSuchElementException, StaleElementReferenceException, IndexError):
        return None


def wait(driver: WebDriver, what: str, check: Any, timeout: float = 30.0) -> Any:
    """Poll the DOM until ``check(driver)`` is truthy; a failure says what was awaited and shows the
    running table."""
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.05).until(check)
    except TimeoutException:
        table = driver.find_element(By.ID, "running").text
        raise AssertionError(f"page: no {what} after {timeout}s; running table: {table!r}; "
                             f"live: {driver.find_element(By.ID, 'live').text!r}") from None


def severe_console_errors(driver: WebDriver) -> list[str]:
    """Errors the page's JavaScript logged, but the favicon Chromium asks for (not served: 404)."""
    return [e["message"] for e in driver.get_log("browser")
            if e["level"] == "SEVERE" and "favicon.ico" not in e["message"]]


def slow_config(tmp_path: Path, tokens: bool = False) -> Path:
    """The conftest's config with source ``b`` grown to 8 MiB at 1 MiB/s: the backup runs about 8 s, long
    enough for the page to show progress also on a loaded machine (3 MiB once ended before it did)."""
    config = write_config(tmp_path, slow_mib=1, tokens=tokens)
    (tmp_path / "data" / "d1" / "b" / "file.bin").write_bytes(os.urandom(8 << 20))
    return config


def live_backup(driver: WebDriver, client: httpx.Client, base_url: str, tmp_path: Path, prefix: str) -> None:
    """Load ``/`` (or stay on it), post a backup, and follow it in the page: running with progress, then
    gone from the running table and the dataset's newest backup updated, with no reload."""
    if driver.current_url.rstrip("/") != base_url:
        driver.get(base_url + "/")
    assert driver.title == "data-manager"
    # the EventSource is open before the POST: /v1/events without Last-Event-ID starts with the next event
    wait(driver, "live connection", lambda d: d.find_element(By.ID, "live").text == "connected")
    assert cell(driver, "ds-d1", 1) == "none" and cell(driver, "ds-d1", 2) == "never"
    assert len(driver.find_elements(By.CSS_SELECTOR, "#running tr[id^='job-']")) == 0
    driver.execute_script(f"window['{MARKER}'] = true;")  # a reload would drop it

    r = client.post("/v1/backups", json={"data_id": "d1"})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    row = f"job-{job_id}"

    wait(driver, f"job {job_id} running", lambda d: cell(d, row, 3) == "running")
    assert cell(driver, row, 2) == "d1" and cell(driver, row, 1) == "backup"
    assert client.get(f"/v1/jobs/{job_id}").json()["state"] in ("running", "done")

    def progress_or_end(d: WebDriver) -> str | None:
        """The progress text once ``job.progress`` events show bytes read, or "finished" if the job ended
        first (the first event says 0 bytes; the backup of 8 MiB at 1 MiB/s gives a few more)."""
        if cell(d, row, 3) is None:
            return "finished"
        text = cell(d, row, 4) or ""
        return text if text.split(" bytes")[0].isdigit() and int(text.split(" bytes")[0]) > 0 else None

    progress = wait(driver, f"progress of job {job_id}", progress_or_end)
    screenshot(driver, tmp_path, f"{prefix}-running")
    assert progress != "finished", "the 8 s backup ended before the page showed any progress"

    job = wait_job(client, job_id, timeout=60)
    assert job["state"] == "done", job
    wait(driver, f"job {job_id} gone from the running table", lambda d: cell(d, row, 3) is None)
    wait(driver, "the dataset's newest backup", lambda d: cell(d, "ds-d1", 1) == job["backup"])
    assert cell(driver, "ds-d1", 2).endswith("ago")  # type: ignore[union-attr]
    assert "green" in driver.find_element(By.ID, "ds-d1").find_elements(By.TAG_NAME, "td")[2].get_attribute("class")
    screenshot(driver, tmp_path, f"{prefix}-done")

    assert driver.execute_script(f"return window['{MARKER}'] === true;"), "the page was reloaded"
    assert driver.find_element(By.ID, "live").text == "connected"
    assert severe_console_errors(driver) == []


def test_page_follows_a_backup_live(tmp_path: Path, serve_factory: Any, browser: WebDriver) -> None:
    """No tokens on loopback (allowed): the page and its events are open."""
    config = slow_config(tmp_path)
    server = serve_factory(config).start()
    with httpx.Client(base_url=server.url, timeout=10) as client:
        live_backup(browser, client, server.url, tmp_path, "page")
    assert server.stop() == 0


def test_page_with_tokens_after_login(tmp_path: Path, serve_factory: Any, browser: WebDriver) -> None:
    """With tokens, ``/`` sends the browser to ``/login``; the read token given there is kept as a cookie,
    which also authorises the page's ``EventSource`` (a browser cannot send an Authorization header)."""
    config = slow_config(tmp_path, tokens=True)
    server = serve_factory(config, env=token_env()).start()
    browser.get(server.url + "/")
    assert browser.current_url == server.url + "/login"
    field = browser.find_element(By.NAME, "token")
    field.send_keys("not-a-token-" + "x" * 12)
    field.submit()
    wait(browser, "refusal", lambda d: "unknown token" in d.page_source)
    field = browser.find_element(By.NAME, "token")
    field.send_keys(TOKENS["reader"])
    field.submit()
    wait(browser, "the status page", lambda d: d.current_url.rstrip("/") == server.url and d.title == "data-manager")
    browser.get_log("browser")  # drained: the refused login's 401 above was on purpose
    headers = {"Authorization": f"Bearer {TOKENS['operator']}"}
    with httpx.Client(base_url=server.url, timeout=10, headers=headers) as client:
        live_backup(browser, client, server.url, tmp_path, "page-tokens")
    assert server.stop() == 0
