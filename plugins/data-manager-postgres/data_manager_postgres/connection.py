"""Where a PostgreSQL database is and how to reach it: the DSN, split so the password never reaches a
command line, and psycopg connections whose failures become one clear line.

psycopg is imported inside the functions: importing this module stays cheap.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from data_manager.tls import is_loopback
from data_manager.errors import SourceError
from data_manager.types import redact_urls

DEFAULT_CONNECT_TIMEOUT = 10
APPLICATION_NAME = "data-manager"


@dataclass(frozen=True)
class Target:
    """A database as libpq parameters (``dbname``, ``host``...), the password kept apart."""

    params: Mapping[str, str]
    password: str | None = field(default=None, repr=False)

    @property
    def dbname(self) -> str:
        return self.params.get("dbname") or self.params.get("user") or os.environ.get("PGDATABASE") or _default_user()

    @property
    def user(self) -> str:
        return self.params.get("user") or os.environ.get("PGUSER") or _default_user()

    @property
    def where(self) -> str:
        """``host:port`` as libpq will use them, for messages."""
        host = self.params.get("host") or self.params.get("hostaddr") or os.environ.get("PGHOST") or "localhost"
        port = self.params.get("port") or os.environ.get("PGPORT") or "5432"
        return f"{host}:{port}"

    def describe(self) -> str:
        return f"postgresql://{self.user}@{self.where}/{self.dbname}"

    def with_dbname(self, dbname: str) -> Target:
        return Target({**self.params, "dbname": dbname}, self.password)

    def conninfo(self) -> str:
        """The connection string for a command line: never holds the password."""
        from psycopg.conninfo import make_conninfo

        params = {k: v for k, v in self.params.items() if k != "password"}
        params.setdefault("fallback_application_name", APPLICATION_NAME)
        return make_conninfo(**params)

    def env(self, base: Mapping[str, str] | None = None, **extra: str) -> dict[str, str]:
        """The environment for a client tool: the password travels as PGPASSWORD, never as an argument."""
        env = dict(os.environ if base is None else base)
        if self.password is not None:
            env["PGPASSWORD"] = self.password
        env.update(extra)
        return env


def _default_user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except Exception:  # pragma: no cover - no user name at all
        return "postgres"


SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
# TLS parameters a source may give beside its dsn (they win over the dsn's); libpq reads them, and so do
# pg_dump, pg_restore and psql, which get them in their connection string
TLS_KEYS = ("sslmode", "sslrootcert", "sslcert", "sslkey", "sslcrl")


def is_local(params: Mapping[str, str], environ: Mapping[str, str] | None = None) -> bool:
    """Do these parameters reach a server on this machine only (a Unix socket or a loopback address)?"""

    env = os.environ if environ is None else environ
    hosts = params.get("hostaddr") or params.get("host") or env.get("PGHOSTADDR") or env.get("PGHOST") or ""
    for host in hosts.split(","):
        host = host.strip()
        if not host or host.startswith("/") or host.startswith("@"):
            continue  # no host: libpq's Unix socket
        if not is_loopback(host):
            return False
    return True


def parse_target(dsn: str, password: str | None = None, dbname: str | None = None,
                 tls: Mapping[str, str] | None = None) -> Target:
    """Split ``dsn`` (URI or key=value) into parameters; ValueError (without the DSN) if malformed.

    ``tls``: ``sslmode``, ``sslrootcert``... given apart from the DSN; they replace the DSN's."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = {k: str(v) for k, v in conninfo_to_dict(dsn).items() if v is not None}
    except Exception:
        raise ValueError("not a valid libpq connection URI or key=value string") from None
    pw = params.pop("password", None)
    if password is not None:
        pw = password
    if dbname:
        params["dbname"] = dbname
    params.update(tls or {})
    if params.get("sslmode", "prefer") not in SSLMODES:
        raise ValueError(f"sslmode must be one of {', '.join(SSLMODES)}, not {params['sslmode']!r}")
    params.setdefault("connect_timeout", str(DEFAULT_CONNECT_TIMEOUT))
    return Target(params, pw)


# --------------------------------------------------------------------------- errors in one line

_UNREACHABLE = re.compile(
    r"connection refused|could not translate host name|name or service not known|no route to host|"
    r"timeout expired|network is unreachable|could not connect to server|no such file or directory|"
    r"server closed the connection unexpectedly|connection timed out|temporary failure in name resolution",
    re.I,
)


def one_line(text: str) -> str:
    """Collapse a (libpq, psql, pg_dump) message into one line, secrets removed."""
    text = re.sub(r"\s+", " ", str(text)).strip()
    text = re.sub(r"^(connection failed: )", "", text)
    text = re.sub(r"\b(FATAL|ERROR|DETAIL|HINT):\s+", lambda m: f"{m[1]}: ", text)
    return redact_urls(text)


def explain_connect_error(exc: BaseException, target: Target, what: str) -> SourceError:
    """A psycopg connection failure as one line that says what to do."""
    text = one_line(str(exc))
    sqlstate = getattr(exc, "sqlstate", None)
    low = text.lower()
    db, user, where = target.dbname, target.user, target.where
    if sqlstate == "28P01" or "password authentication failed" in low:
        msg = f"wrong password for user {user!r} at {where} (password authentication failed)"
    elif "no password supplied" in low or "fe_sendauth" in low:
        msg = (f"no password for user {user!r} at {where}: give it in the dsn (through ${{VAR}}), "
               f"the password key, PGPASSWORD or ~/.pgpass")
    elif sqlstate == "3D000" or re.search(r'database ".*" does not exist', low):
        msg = f"database {db!r} does not exist at {where}"
    elif sqlstate == "42501" or "permission denied" in low:
        msg = f"user {user!r} may not connect to database {db!r} at {where}: {_server_part(text)}"
    elif sqlstate == "28000" or "no pg_hba.conf entry" in low or ("role" in low and "does not exist" in low):
        msg = f"user {user!r} is not allowed in at {where}: {_server_part(text)}"
    elif _UNREACHABLE.search(text):
        msg = f"cannot reach PostgreSQL at {where}: {_reason(text)}"
    else:
        msg = f"cannot connect to {target.describe()}: {text}"
    return SourceError(f"{what}: {msg}")


def _server_part(text: str) -> str:
    m = re.search(r"FATAL: (.*)", text)
    return m[1] if m else text


def _reason(text: str) -> str:
    m = re.search(r"failed: (.*?)(?: Is the server running.*)?$", text)
    return (m[1] if m else text).strip()


def connect(target: Target, what: str, *, dbname: str | None = None, autocommit: bool = True) -> Any:
    """A psycopg connection to ``target`` (or another database of its server); SourceError if it fails."""
    import psycopg

    t = target.with_dbname(dbname) if dbname else target
    params = dict(t.params)
    params.setdefault("application_name", APPLICATION_NAME)
    if t.password is not None:
        params["password"] = t.password
    try:
        return psycopg.connect(autocommit=autocommit, **params)
    except psycopg.Error as exc:
        raise explain_connect_error(exc, t, what) from None


def query_error(exc: BaseException, what: str) -> SourceError:
    """A failed query as one line."""
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    return SourceError(f"{what}: {one_line(primary or str(exc))}")
