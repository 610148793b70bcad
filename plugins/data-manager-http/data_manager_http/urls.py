"""URLs as they may be shown: a token in the query or the user info never reaches a log line or metadata.

``url`` and ``restore_url`` are secret keys (see :mod:`data_manager_http`), so the scrubber replaces their
whole expanded value wherever it appears. What the source prints and records instead is built here from
the URL's parts: the password of the user info dropped, the value of every query parameter whose name
looks secret masked, and each part scrubbed of the values taken from the environment.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, quote, urlsplit

from data_manager.scrub import scrub

#: Query parameter names whose values are credentials (``?token=``, ``?api_key=``, S3's ``X-Amz-Signature``).
SECRET_PARAM = re.compile(
    r"token|secret|passw|pwd|key|sig|auth|credential|session|access|code|private|jwt|bearer", re.I
)
MASK = "***"


def check_url(url: str) -> str | None:
    """Why ``url`` cannot be used (a short reason), or None: an ``http``/``https`` URL with a host."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        return f"not a valid URL ({exc})"
    if parts.scheme not in ("http", "https"):
        return "must be an http:// or https:// URL"
    if not parts.hostname:
        return "has no host"
    if parts.fragment:
        return "must not have a #fragment (it is never sent to the server)"
    return None


def _query(query: str) -> str:
    pairs = []
    for name, value in parse_qsl(query, keep_blank_values=True):
        shown = MASK if value and SECRET_PARAM.search(name) else scrub(value)
        pairs.append(f"{quote(name, safe='')}={quote(shown, safe='*')}")
    return "&".join(pairs)


_PARAM = re.compile(r"(?P<lead>[?&;])(?P<name>[^=&#\s\"]+)=(?P<value>[^&#\s\"]*)")


def mask_query_values(text: str) -> str:
    """``text`` (a log line) with the value of every secret-looking ``?name=value`` / ``&name=value`` masked."""
    return _PARAM.sub(lambda m: f"{m['lead']}{m['name']}={MASK}" if m["value"] and SECRET_PARAM.search(m["name"])
                      else m[0], text)


def public_url(url: str) -> str:
    """``url`` safe to record: ``https://user@host/path?site=42&token=***``.

    Never equal to ``url`` itself when it holds a secret, and built from parts, so the scrubber (which
    knows the whole URL as a secret) leaves the rest readable.
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = (f"{scrub(parts.username)}@" if parts.username else "") + host
    if parts.port is not None:
        netloc += f":{parts.port}"
    out = f"{parts.scheme}://{netloc}{scrub(parts.path)}"
    if parts.query:
        out += "?" + _query(parts.query)
    return out


def label(url: str) -> str:
    """How messages name ``url``: :func:`public_url` without its scheme (``host/path?query``).

    Without the scheme the text can never contain the whole configured URL, which the scrubber would
    replace by ``***`` (a URL without secrets is still a secret key's value)."""
    return public_url(url).split("://", 1)[1]
