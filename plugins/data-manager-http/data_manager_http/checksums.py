"""What a server says its export's bytes hash to, and checking it as the bytes stream past.

Headers understood (``checksum_header`` picks one, or ``auto`` takes what is there):

* ``Repr-Digest`` (RFC 9530): ``sha-256=:BASE64:`` of the whole representation, also on a 206;
* ``Digest`` (RFC 3230): ``SHA-256=BASE64`` (or ``MD5=...``) of the whole instance, also on a 206;
* ``ETag`` when it is an MD5: a strong ETag of exactly 32 hex digits (S3, MinIO, Django...); other ETags
  (``"5f3c-1a4"`` of nginx and Apache) are only compared between ranges, never taken as a checksum;
* ``Content-MD5`` (RFC 1864): the MD5 of the body of that one answer (a 206's part), checked per answer.

The strongest algorithm offered wins; only one whole-export hash is computed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: Algorithm names as the headers write them -> hashlib name, strongest first.
ALGORITHMS = {"sha-512": "sha512", "sha-256": "sha256", "sha": "sha1", "sha-1": "sha1", "md5": "md5"}
_ORDER = ["sha-512", "sha-256", "sha-1", "sha", "md5"]
HEADERS = ("repr-digest", "digest", "etag", "content-md5")
_HEX32 = re.compile(r"^[0-9a-fA-F]{32}$")


@dataclass(frozen=True)
class Expected:
    """A whole-export checksum the server gave: which header, which algorithm, the digest bytes."""

    header: str  # as sent: "Repr-Digest", "Digest", "ETag"
    algorithm: str  # "sha-256", "md5", ...
    digest: bytes

    def hasher(self) -> Any:
        return hashlib.new(ALGORITHMS[self.algorithm])

    def text(self) -> str:
        """For metadata: ``sha-256=:BASE64:`` (the Repr-Digest form, whatever header it came in)."""
        return f"{self.algorithm}=:{base64.b64encode(self.digest).decode()}:"


def _decode(value: str, algorithm: str) -> bytes | None:
    """A digest value: base64 (what the RFCs say) or hex (what some servers send)."""
    size = hashlib.new(ALGORITHMS[algorithm]).digest_size
    value = value.strip().strip(":").strip('"')
    if len(value) == 2 * size and re.fullmatch(r"[0-9a-fA-F]+", value):
        return bytes.fromhex(value)
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == size else None


def _pairs(header: str) -> dict[str, str]:
    out = {}
    for item in header.split(","):
        name, eq, value = item.strip().partition("=")
        if eq:
            out[name.strip().lower()] = value.split(";", 1)[0].strip()
    return out


def _strongest(header: str, name: str) -> Expected | None:
    pairs = _pairs(header)
    for algorithm in _ORDER:
        if algorithm in pairs:
            digest = _decode(pairs[algorithm], algorithm)
            if digest is not None:
                return Expected(name, "sha-1" if algorithm == "sha" else algorithm, digest)
    return None


def etag_md5(etag: str | None) -> bytes | None:
    """The MD5 a strong, 32-hex-digit ETag stands for; None for any other ETag."""
    if not etag or etag.startswith("W/"):
        return None
    value = etag.strip('"')
    return bytes.fromhex(value) if _HEX32.match(value) else None


def whole(headers: Mapping[str, str], mode: str) -> Expected | None:
    """The whole-export checksum in the first answer's ``headers`` (lower-case names), per ``mode``:
    ``auto``, ``none`` or one of :data:`HEADERS` (lower case). None: nothing to check."""
    if mode in ("none", "content-md5"):
        return None
    if mode in ("auto", "repr-digest") and headers.get("repr-digest"):
        if (found := _strongest(headers["repr-digest"], "Repr-Digest")) is not None:
            return found
    if mode in ("auto", "digest") and headers.get("digest"):
        if (found := _strongest(headers["digest"], "Digest")) is not None:
            return found
    if mode in ("auto", "etag") and (md5 := etag_md5(headers.get("etag"))) is not None:
        return Expected("ETag", "md5", md5)
    return None


def content_md5(headers: Mapping[str, str], mode: str) -> bytes | None:
    """The ``Content-MD5`` of one answer's body, when ``mode`` checks it."""
    if mode not in ("auto", "content-md5") or not headers.get("content-md5"):
        return None
    return _decode(headers["content-md5"], "md5")


__all__ = ["HEADERS", "Expected", "content_md5", "etag_md5", "whole"]
