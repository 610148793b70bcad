"""Talking to an S3 server: connection settings, the one client (boto3), retries, one-line errors.

Shared by the ``minio`` source and the ``s3`` storage. Every request goes through boto3's public API
(listings, GETs, PUTs, the multipart calls, deletes); boto3 is imported when a source or storage first talks
to a server. boto3's own retries are switched off (it would retry invisibly, with its own backoff);
:meth:`Connection.call` retries transient failures (timeouts, broken connections, 5xx, throttling) through
:mod:`data_manager.retry`, and turns everything else into one clear line without secrets. Why boto3 and not
obstore or the minio SDK: docs/storages/s3.md.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from data_manager import retry
from data_manager.retry import Backoff
from data_manager.errors import DataManagerError
from data_manager.types import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")

CONNECTION_KEYS = {"endpoint", "secure", "access_key", "secret_key", "region", "retries", "timeout"}

# S3 error codes worth another try: throttling, server-side hiccups, a body damaged on the way.
TRANSIENT_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "TooManyRequests",
    "RequestLimitExceeded",
    "InternalError",
    "ServiceUnavailable",
    "RequestTimeout",
    "OperationAborted",
    "BadDigest",
    "XAmzContentChecksumMismatch",  # the body's CRC32 did not match: damaged on the way, sent again
    "XAmzContentSHA256Mismatch",
    "XMinioServerNotInitialized",
    "XMinioReadQuorum",
    "XMinioWriteQuorum",
}
CREDENTIAL_CODES = {
    "InvalidAccessKeyId": "the server does not know this access key",
    "SignatureDoesNotMatch": "the secret key does not match the access key",
    "AccessDenied": "access denied",
    "AllAccessDisabled": "access denied",
    "InvalidToken": "the session token is invalid",
    "ExpiredToken": "the session token has expired",
}


@dataclass(frozen=True)
class ConnectionSettings:
    endpoint: str
    secure: bool
    access_key: str | None
    secret_key: str | None
    region: str | None
    retries: int
    timeout: int

    @classmethod
    def read(cls, settings: Settings) -> ConnectionSettings:
        endpoint = settings.get_str("endpoint")
        if "://" in endpoint or "/" in endpoint:
            raise settings.error("endpoint", "must be host[:port], without scheme or path (plain http: secure = false)")
        access_key = settings.get_str("access_key", None)
        secret_key = settings.get_str("secret_key", None)
        if (access_key is None) != (secret_key is None):
            raise settings.error("secret_key" if access_key else "access_key", "access_key and secret_key go together")
        return cls(
            endpoint=endpoint,
            secure=settings.get_bool("secure", True),
            access_key=access_key,
            secret_key=secret_key,
            region=settings.get_str("region", None),
            retries=settings.get_int("retries", 5, minimum=0),
            timeout=settings.get_int("timeout", 60, minimum=1),
        )

    def url(self, bucket: str, prefix: str = "") -> str:
        scheme = "https" if self.secure else "http"
        return f"{scheme}://{self.endpoint}/{bucket}" + (f"/{prefix.rstrip('/')}" if prefix else "")

    @property
    def connect_timeout(self) -> int:
        return min(self.timeout, 15)

    @staticmethod
    def ca_file() -> str:
        """The CA bundle the client trusts over https: $SSL_CERT_FILE, else certifi's."""
        import os

        import certifi

        return os.environ.get("SSL_CERT_FILE") or certifi.where()



def _client_error(exc: BaseException) -> tuple[str, int] | None:
    """(S3 error code, HTTP status) of a boto3 ``ClientError``, else None. A HEAD answer has no body: its
    code is then the status as text ("404")."""
    if not _is_botocore(exc):
        return None
    from botocore.exceptions import ClientError  # modelled errors (NoSuchKey...) are subclasses

    response = getattr(exc, "response", None)
    if not isinstance(exc, ClientError) or not isinstance(response, dict):
        return None
    return str(response.get("Error", {}).get("Code") or ""), int(response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def _is_botocore(exc: BaseException) -> bool:
    """Is ``exc`` boto3's (without importing botocore to find out)?"""
    return type(exc).__module__.startswith("botocore")


def is_transient(exc: BaseException) -> bool:
    """Would the same request, repeated a little later, probably succeed?"""
    if (error := _client_error(exc)) is not None:
        return error[0] in TRANSIENT_CODES or error[1] >= 500 or error[1] == 429
    if _is_botocore(exc):
        from botocore import exceptions as b

        # Connection refused/reset/timed out, a body cut short (ResponseStreamingError, IncompleteReadError);
        # never a TLS failure (a wrong setting does not heal by waiting).
        return (isinstance(exc, (b.ConnectionError, b.HTTPClientError, b.IncompleteReadError))
                and not isinstance(exc, b.SSLError))
    return isinstance(exc, (ConnectionError, TimeoutError))


def describe(exc: BaseException) -> str:
    """One line about what went wrong, without secrets (never the exception's own text with URLs and ids)."""
    if (error := _client_error(exc)) is not None:
        code, status = error
        if code in CREDENTIAL_CODES or (code == "403" and status == 403):
            return f"{CREDENTIAL_CODES.get(code, 'access denied')} (check access_key / secret_key and the bucket policy)"
        details = exc.response.get("Error", {})  # type: ignore[attr-defined]
        if code == "NoSuchBucket":
            return f"bucket {details['BucketName']!r} does not exist" if details.get("BucketName") else "no such bucket"
        if code in ("NoSuchKey", "404"):
            return "no such object"
        if code.isdigit():
            return f"server error (HTTP {status})" if status >= 500 else f"HTTP {status}"
        message = str(details.get("Message") or "").splitlines()
        return f"{code or f'HTTP {status}'}: {message[0] if message else ''}".rstrip(": ")
    if _is_botocore(exc):
        from botocore import exceptions as b

        if isinstance(exc, b.SSLError):
            return "TLS handshake failed (is secure = true right for this endpoint?)"
        if isinstance(exc, b.ConnectTimeoutError):
            return "connection timed out"
        if isinstance(exc, b.EndpointConnectionError):
            return "cannot connect (connection refused or host unreachable)"
        if isinstance(exc, b.ReadTimeoutError):
            return "the server stopped answering (read timed out)"
        if isinstance(exc, (b.ConnectionClosedError, b.ResponseStreamingError, b.IncompleteReadError)):
            return "the connection broke"
        if isinstance(exc, b.NoCredentialsError):
            return "no credentials"
        return f"HTTP failure ({type(exc).__name__})"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ConnectionError):
        return "the connection broke"
    return f"{type(exc).__name__}: {exc}"


def is_s3_code(exc: BaseException, *codes: str) -> bool:
    """Is ``exc`` an S3 error answer with one of these codes (a HEAD's: its status, e.g. ``"404"``)?"""
    error = _client_error(exc)
    return error is not None and error[0] in codes


class Connection:
    """A lazily created boto3 S3 client plus the retry policy and the error type of one source or storage.

    ``bucket``: the bucket this source or storage works in; without a ``region`` setting, requests are
    signed for the region the server answers for it (GetBucketLocation), else for ``us-east-1``.
    """

    def __init__(
        self,
        cs: ConnectionSettings,
        label: str,
        error_class: type[DataManagerError],
        pool_size: int = 16,
        bucket: str | None = None,
    ) -> None:
        self.cs = cs
        self.label = label
        self.error_class = error_class
        self._pool_size = pool_size
        self._bucket = bucket
        self._s3: Any = None
        self._region: str | None = None
        self._lock = threading.Lock()

    @property
    def s3(self) -> Any:
        """The boto3 S3 client (created, and boto3 imported, on first use)."""
        if self._s3 is None:
            with self._lock:
                if self._s3 is None:
                    client = self._make_s3(self.cs.region or "us-east-1")
                    if self.cs.region is None and self._bucket:
                        region = self._bucket_region(client, self._bucket)
                        if region != "us-east-1":
                            client.close()
                            client = self._make_s3(region)
                    self._s3 = client
        return self._s3

    def _make_s3(self, region: str) -> Any:
        import boto3
        import botocore
        from botocore.config import Config

        signed = self.cs.access_key is not None
        config = Config(
            connect_timeout=self.cs.connect_timeout,
            read_timeout=self.cs.timeout,
            max_pool_connections=self._pool_size,
            retries={"total_max_attempts": 1},  # Connection.call retries, with backoff and a log line
            s3={"addressing_style": "path"},  # any S3 server, any bucket name
            # Checksums only where we ask for them (multipart.py): the signed sha256 over http, CRC32 over https.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            proxies={},  # no proxy from the environment
            **({} if signed else {"signature_version": botocore.UNSIGNED}),
        )
        self._region = region
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.cs.url("").rstrip("/"),
            aws_access_key_id=self.cs.access_key,
            aws_secret_access_key=self.cs.secret_key,
            region_name=region,
            verify=self.cs.ca_file() if self.cs.secure else False,
            config=config,
        )

    def _bucket_region(self, client: Any, bucket: str) -> str:
        """The bucket's region by S3's GetBucketLocation (signed for us-east-1, which AWS accepts for it from
        any region); us-east-1 when it cannot be told (a missing bucket is reported by the request that
        needs it, with its retries and its one line)."""
        try:
            region = client.get_bucket_location(Bucket=bucket).get("LocationConstraint") or ""
        except Exception as exc:
            if not self.known(exc):
                raise
            log.info("%s: the bucket's region is unknown (%s); requests are signed for us-east-1",
                     self.label, describe(exc))
            return "us-east-1"
        return {"": "us-east-1", "EU": "eu-west-1"}.get(region, region)  # S3's two legacy spellings

    def region(self) -> str:
        """The region requests are signed for: the setting, else the bucket's (asked once), else us-east-1."""
        self.s3  # noqa: B018 (creating the client settles the region)
        return self._region or "us-east-1"

    def error(self, what: str, exc: BaseException | str) -> DataManagerError:
        detail = exc if isinstance(exc, str) else describe(exc)
        return self.error_class(f"{self.label}: {what}: {detail}")

    @property
    def policy(self) -> Backoff:
        return Backoff(retries=self.cs.retries, base=0.5, cap=8.0)

    def call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)``, retried with backoff on transient failures; errors become one line."""

        def note(exc: BaseException, n: int, delay: float) -> None:
            log.warning("%s: %s: %s; retrying in %.1fs", self.label, what, describe(exc), delay)

        try:
            return retry.call(lambda: fn(*args, **kwargs), self.policy, on_retry=note,
                              transient=lambda exc: not isinstance(exc, DataManagerError) and self.known(exc)
                              and is_transient(exc))
        except DataManagerError:
            raise
        except Exception as exc:
            if not self.known(exc):
                raise
            raise self.error(what, exc) from None

    def backoff(self, attempt: int, what: str, exc: BaseException) -> bool:
        """For loops that retry themselves (resuming a read): sleep and say True if another try is due."""
        if not (self.known(exc) and is_transient(exc)):
            return False
        delay = self.policy.pause(attempt + 1)
        if delay is not None:
            log.warning("%s: %s: %s; retried after %.1fs", self.label, what, describe(exc), delay)
        return delay is not None

    @staticmethod
    def known(exc: BaseException) -> bool:
        """Is ``exc`` a server's answer or a network failure (not a bug here, which must never be hidden)?"""
        if _is_botocore(exc):
            return _client_error(exc) is not None or not _is_usage_error(exc)
        return isinstance(exc, (ConnectionError, TimeoutError))

    def close(self) -> None:
        if self._s3 is not None:
            self._s3.close()
        self._s3 = None


def _is_usage_error(exc: BaseException) -> bool:
    """boto3's own complaints about how it was called (a bug here, not a server's answer): never hidden."""
    from botocore import exceptions as b

    return isinstance(exc, (b.ParamValidationError, b.ValidationError))
