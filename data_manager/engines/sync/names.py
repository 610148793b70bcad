"""File names in a ``sync`` repository: which are safe, and the mirror key of each.

Every name read back from the storage (manifests, skeletons, journals) passes :func:`check_path` before it
becomes a key: the same rule the directory source's restore applies to tar members (no absolute path, no
empty, ``.`` or ``..`` segment, no NUL), so a crafted manifest cannot reach outside ``mirror/SOURCE/``.
"""

from __future__ import annotations

from typing import Any


def check_path(path: Any) -> str:
    """``path`` if it is a safe relative file name (``a/b c.txt``), else ``ValueError``."""
    if (
        not isinstance(path, str)
        or not path
        or path.startswith("/")
        or "\0" in path
        or any(p in ("", ".", "..") for p in path.split("/"))
    ):
        raise ValueError(f"unsafe path {path!r}")
    try:
        path.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise ValueError(f"unsafe path {path!r}") from None
    return path


def mirror_name(path: str) -> str:
    """The object name of file ``path`` below ``mirror/SOURCE/``: the path itself when it is UTF-8, else its
    undecodable bytes written ``\\xNN`` (object stores take UTF-8 keys only; the manifest keeps the real
    name, which restore uses)."""
    if path.isascii():  # most names: nothing to escape
        return path
    raw = path.encode("utf-8", "surrogateescape")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("utf-8", "backslashreplace")


def ancestors(path: str) -> list[str]:
    """``a/b/c`` -> ``["a", "a/b"]``."""
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]
