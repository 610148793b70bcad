"""Bearer tokens with scopes, from ``[service.tokens.NAME]`` (``token = "${VAR}"``, ``scope``).

Scopes nest: ``read`` (GET: jobs, datasets, events, metrics, the status page) < ``operate`` (start
backups, cancel jobs, pause, resume and run schedules) < ``admin`` (restores). A presented token is
compared with every configured one in constant time (:func:`hmac.compare_digest`, all of them, whichever
matches), so timing tells nothing about a token's prefix. With no token configured the API is open, which
``serve`` allows only on a loopback address. ``/healthz`` and ``/readyz`` need no token.

The status page and its event stream are read in a browser, which sends no ``Authorization`` header: a
``read`` token can also be given once at ``/login`` and is then sent as an HttpOnly, SameSite=Strict
cookie, accepted for GET requests only (a cookie never authorises a change).
"""

from __future__ import annotations

import hmac

from .settings import SCOPES

COOKIE = "dm_token"


class Tokens:
    def __init__(self, tokens: dict[str, tuple[str, str]]) -> None:
        self._tokens = [(name, value.encode(), scope) for name, (value, scope) in tokens.items()]

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def identify(self, presented: str | None) -> tuple[str, str] | None:
        """``(name, scope)`` of the token presented, or None."""
        if presented is None:
            return None
        given = presented.encode()
        found = None
        for name, value, scope in self._tokens:  # every one, always: no early exit
            if hmac.compare_digest(given, value) and found is None:
                found = (name, scope)
        return found


def allows(scope: str, needed: str) -> bool:
    return SCOPES.index(scope) >= SCOPES.index(needed)


def bearer(header: str | None) -> str | None:
    if not header:
        return None
    kind, _, value = header.partition(" ")
    return value.strip() if kind.lower() == "bearer" and value.strip() else None
