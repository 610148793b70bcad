pytest_plugins = ["tests.servers"]

import pytest


@pytest.fixture(autouse=True)
def _isolated_state(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets its own job/lock state database and config dirs, never the user's."""
    home = tmp_path_factory.mktemp("state")
    monkeypatch.setenv("DATA_MANAGER_STATE", str(home / "state.db"))
    monkeypatch.setenv("XDG_STATE_HOME", str(home / "xdg-state"))
