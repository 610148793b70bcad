"""The one size parser and the one duration parser, and the Settings accessors built on them."""

from __future__ import annotations

import pytest

from data_manager.errors import ConfigError
from data_manager.types import Settings
from data_manager.units import parse_duration, parse_size


@pytest.mark.parametrize("text, n", [
    (0, 0), (4096, 4096), ("4096", 4096), ("128MiB", 128 << 20), ("64 MB", 64 << 20), ("1GiB", 1 << 30),
    ("512k", 512 << 10), ("2 t", 2 << 40), ("100b", 100), (" 7 KiB ", 7 << 10),
])
def test_sizes(text: object, n: int) -> None:
    assert parse_size(text) == n


@pytest.mark.parametrize("text", ["", "MiB", "1.5GiB", "-1", "12 parsecs", True, None, 1.5, "1 GiBB"])
def test_not_sizes(text: object) -> None:
    assert parse_size(text) is None


@pytest.mark.parametrize("text, seconds", [(90, 90.0), ("90s", 90.0), ("30m", 1800.0), ("6h", 21600.0),
                                           ("2d", 172800.0), ("250ms", 0.25), ("1.5", 1.5)])
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", [0, "0s", "-5m", "soon", "5 weeks", True, None])
def test_not_durations(text: object) -> None:
    assert parse_duration(text) is None


def test_settings_accessors_name_the_key() -> None:
    s = Settings({"part": "8MiB", "tiny": "1k", "bad": "lots", "wait": "2m", "never": "later"}, where="f.toml: [x]")
    assert s.get_size("part") == 8 << 20
    assert s.get_size("absent", 5) == 5
    assert s.get_duration("wait") == 120.0
    assert s.get_duration("absent", 1.5) == 1.5
    with pytest.raises(ConfigError, match=r"^f\.toml: \[x\]: key 'bad': must be a size like"):
        s.get_size("bad")
    with pytest.raises(ConfigError, match=r"key .tiny.: must be a size of at least 4096 bytes"):
        s.get_size("tiny", minimum=4096)
    with pytest.raises(ConfigError, match=r"key 'never': must be a duration like"):
        s.get_duration("never")
    with pytest.raises(ConfigError, match=r"key 'absent': missing"):
        s.get_size("absent")
