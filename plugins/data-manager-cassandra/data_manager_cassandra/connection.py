"""The one place a Cassandra ``Cluster`` is made, used and shut down, and driver errors become one line.

Two sessions share the cluster: ``session`` (ordinary results, for schema statements and writes) and
``raw`` (results kept as the bytes the server sent, for reading rows; see :mod:`.rawpages`). Driver
retries are left at their defaults; :func:`retrying` adds retries with backoff around whole requests for
timeouts and unavailable replicas, and gives up with one clear line.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from data_manager import retry
from data_manager.errors import SourceError
from data_manager.retry import Backoff

log = logging.getLogger(__name__)
T = TypeVar("T")

CONSISTENCY_LEVELS = ("ANY", "ONE", "TWO", "THREE", "QUORUM", "ALL", "LOCAL_QUORUM", "EACH_QUORUM",
                      "LOCAL_ONE")
BACKOFF_START = 0.5
BACKOFF_MAX = 8.0


@dataclass(frozen=True)
class ConnectionSettings:
    source: str  # the source's name, for messages
    contact_points: tuple[str, ...]
    port: int
    username: str | None
    password: str | None
    local_dc: str | None
    read_consistency: str
    write_consistency: str
    timeout: float
    connect_timeout: float
    retries: int
    ssl_context: Any = None  # an ssl.SSLContext: every connection is TLS (see .tls)

    def where(self) -> str:
        return ",".join(f"{h}:{self.port}" for h in self.contact_points)


def one_line(text: object, limit: int = 300) -> str:
    line = re.sub(r"\s+", " ", str(text)).strip()
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _connect_error(cs: ConnectionSettings, exc: BaseException) -> SourceError:
    from cassandra import AuthenticationFailed
    from cassandra.cluster import NoHostAvailable

    prefix = f"source {cs.source!r}"
    if isinstance(exc, NoHostAvailable):
        errors = list((exc.errors or {}).values())
        if any(isinstance(e, AuthenticationFailed) for e in errors):
            who = f"user {cs.username!r}" if cs.username else "no credentials"
            return SourceError(f"{prefix}: authentication failed at {cs.where()} ({who}); check username and password")
        reasons = sorted({one_line(getattr(e, "strerror", None) or e, 120) for e in errors}) or ["no host answered"]
        return SourceError(f"{prefix}: cannot connect to Cassandra at {cs.where()}: {'; '.join(reasons)}")
    if isinstance(exc, AuthenticationFailed):
        return SourceError(f"{prefix}: authentication failed at {cs.where()}; check username and password")
    return SourceError(f"{prefix}: cannot connect to Cassandra at {cs.where()}: {one_line(exc)}")


class Connection:
    """A connected cluster with its two sessions. Made only by :func:`connect`."""

    def __init__(self, cs: ConnectionSettings, cluster: Any, session: Any, raw: Any) -> None:
        self.settings = cs
        self.cluster = cluster
        self.session = session
        self.raw = raw

    @property
    def metadata(self) -> Any:
        return self.cluster.metadata

    def execute(self, query: Any, params: Any = None, *, what: str, timeout: float | None = None,
                retry: bool = True) -> Any:
        """One statement on the ordinary session, with retries; ``what`` names it in the error."""
        return retrying(self.settings, what, lambda: self.session.execute(query, params, timeout=timeout or self.settings.timeout),
                        attempts=self.settings.retries if retry else 0)

    def refresh_schema(self) -> None:
        retrying(self.settings, "reading the schema", lambda: self.cluster.refresh_schema_metadata(max_schema_agreement_wait=30))


@contextmanager
def connect(cs: ConnectionSettings) -> Iterator[Connection]:
    """Connect, yield the connection, and always shut the cluster down."""
    from cassandra.auth import PlainTextAuthProvider
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
    from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy
    from cassandra.query import tuple_factory

    from .rawpages import RawPagesProtocolHandler

    def profile(consistency: str) -> Any:
        from cassandra import ConsistencyLevel

        return ExecutionProfile(
            load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=cs.local_dc)),
            consistency_level=ConsistencyLevel.name_to_value[consistency],
            request_timeout=cs.timeout,
            row_factory=tuple_factory,
        )

    auth = PlainTextAuthProvider(cs.username, cs.password) if cs.username is not None else None
    # The driver logs connection trouble as warnings with tracebacks; we report it as one line instead.
    # Its own logs stay visible with -vv (debug).
    driver_log = logging.getLogger("cassandra")
    saved_level = driver_log.level
    if not log.isEnabledFor(logging.DEBUG):
        driver_log.setLevel(logging.CRITICAL)
    cluster = Cluster(
        list(cs.contact_points),
        port=cs.port,
        auth_provider=auth,
        execution_profiles={EXEC_PROFILE_DEFAULT: profile(cs.write_consistency), "read": profile(cs.read_consistency)},
        connect_timeout=cs.connect_timeout,
        control_connection_timeout=cs.connect_timeout,
        max_schema_agreement_wait=60,
        ssl_context=cs.ssl_context,
    )
    try:
        try:
            session = cluster.connect()
            raw = cluster.connect()
        except Exception as exc:
            raise _connect_error(cs, exc) from None
        raw.client_protocol_handler = RawPagesProtocolHandler
        yield Connection(cs, cluster, session, raw)
    finally:
        cluster.shutdown()
        driver_log.setLevel(saved_level)


def is_transient(exc: BaseException) -> bool:
    """Worth asking again: timeouts, unavailable replicas, lost connections."""
    from cassandra import OperationTimedOut, ReadFailure, ReadTimeout, Unavailable, WriteFailure, WriteTimeout
    from cassandra.cluster import NoHostAvailable
    from cassandra.connection import ConnectionException
    from cassandra.protocol import ServerError

    try:
        from cassandra.protocol import IsBootstrappingErrorMessage, OverloadedErrorMessage

        busy: tuple[type, ...] = (OverloadedErrorMessage, IsBootstrappingErrorMessage)
    except ImportError:  # pragma: no cover
        busy = ()
    return isinstance(exc, (OperationTimedOut, ReadTimeout, WriteTimeout, Unavailable, ReadFailure, WriteFailure,
                            NoHostAvailable, ConnectionException, ServerError, *busy))


def describe_error(exc: BaseException) -> str:
    from cassandra import OperationTimedOut, ReadTimeout, WriteTimeout
    from cassandra.cluster import NoHostAvailable

    if isinstance(exc, OperationTimedOut):
        return "no answer within the request timeout"
    if isinstance(exc, (ReadTimeout, WriteTimeout)):
        return f"server-side timeout ({type(exc).__name__})"
    if isinstance(exc, NoHostAvailable):
        return "no host available: " + "; ".join(sorted({one_line(e, 100) for e in (exc.errors or {}).values()}))
    text = one_line(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def policy(cs: ConnectionSettings, attempts: int | None = None) -> Backoff:
    """The retry policy of this source's requests (``retries`` more attempts, the core's backoff)."""
    return Backoff(retries=cs.retries if attempts is None else attempts, base=BACKOFF_START, cap=BACKOFF_MAX)


def retrying(cs: ConnectionSettings, what: str, call: Callable[[], T], *, attempts: int | None = None) -> T:
    """``call()``, retried with backoff on transient errors; then a one-line :class:`SourceError`."""
    rules = policy(cs, attempts)
    tried = [0]

    def attempt() -> T:
        tried[0] += 1
        return call()

    def note(exc: BaseException, retry: int, delay: float) -> None:
        log.info("source %s: %s: %s; retry %d/%d in %.1fs", cs.source, what, describe_error(exc), retry,
                 rules.retries, delay)

    try:
        return retry.call(attempt, rules, transient=lambda exc: not isinstance(exc, SourceError) and is_transient(exc),
                          on_retry=note)
    except SourceError:
        raise
    except Exception as exc:
        tries = f" after {tried[0]} attempts" if tried[0] > 1 else ""
        raise SourceError(f"source {cs.source!r}: {what} failed{tries}: {describe_error(exc)}") from None
