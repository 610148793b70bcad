"""Talking to an S3 server: connection settings, the clients, retries, one-line errors.

Shared by the ``minio`` source and the ``s3`` storage. Reads, listings, single PUTs and deletes go through
the minio SDK's public API; multipart uploads through boto3's public multipart calls (the minio SDK has
none that lets us push parts and complete on ``commit``: see :mod:`.multipart`). Both clients' own HTTP
retries are switched off (the minio pool retries any 5xx five times, invisibly, and not S3's
``SlowDown``); :meth:`Connection.call` retries transient failures (timeouts, broken connections, 5xx,
throttling) itself, with exponential backoff, and turns everything else into one clear line without
secrets.
"""

from __future__ import annotations

import logging
import re
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
        """The CA bundle every client here trusts (the SDK's pool and libcurl alike): $SSL_CERT_FILE, else certifi's."""
        import os

        import certifi

        return os.environ.get("SSL_CERT_FILE") or certifi.where()


def _response_code(exc: BaseException) -> int:
    """The HTTP status of the SDK's InvalidResponseError (a non-XML answer), from its public message."""
    m = re.search(r"Response code: (\d+)", str(exc))
    return int(m[1]) if m else 0


def _client_error(exc: BaseException) -> tuple[str, int] | None:
    """(S3 error code, HTTP status) of a boto3 ``ClientError``, else None."""
    response = getattr(exc, "response", None)
    if type(exc).__name__ != "ClientError" or not isinstance(response, dict):
        return None
    return str(response.get("Error", {}).get("Code") or ""), int(response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def is_transient(exc: BaseException) -> bool:
    """Would the same request, repeated a little later, probably succeed?"""
    import urllib3
    from minio.error import InvalidResponseError, S3Error, ServerError

    if isinstance(exc, S3Error):
        status = getattr(exc.response, "status", 0) or 0
        return exc.code in TRANSIENT_CODES or status >= 500 or status == 429
    if isinstance(exc, ServerError):
        return exc.status_code >= 500 or exc.status_code == 429
    if isinstance(exc, InvalidResponseError):
        code = _response_code(exc)
        return code >= 500 or code == 429
    if isinstance(exc, urllib3.exceptions.SSLError):
        return False
    if (error := _client_error(exc)) is not None:
        return error[0] in TRANSIENT_CODES or error[1] >= 500 or error[1] == 429
    if _is_botocore(exc):
        from botocore import exceptions as b

        return isinstance(exc, (b.ConnectionError, b.HTTPClientError)) and not isinstance(exc, b.SSLError)
    return isinstance(exc, (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError))


def _is_botocore(exc: BaseException) -> bool:
    """Is ``exc`` boto3's (without importing botocore where no multipart upload ever ran)?"""
    return type(exc).__module__.startswith("botocore")


def describe(exc: BaseException) -> str:
    """One line about what went wrong, without secrets (never the exception's own text with URLs and ids)."""
    import urllib3
    from minio.error import InvalidResponseError, S3Error, ServerError

    if isinstance(exc, S3Error):
        code = exc.code or "error"
        if code in CREDENTIAL_CODES:
            return f"{CREDENTIAL_CODES[code]} (check access_key / secret_key and the bucket policy)"
        if code == "NoSuchBucket":
            return f"bucket {exc.bucket_name!r} does not exist" if exc.bucket_name else "no such bucket"
        if code == "NoSuchKey":
            return "no such object"
        message = (exc.message or "").splitlines()[0] if exc.message else ""
        return f"{code}: {message}".rstrip(": ")
    if isinstance(exc, ServerError):
        return f"server error (HTTP {exc.status_code})"
    if isinstance(exc, InvalidResponseError):
        return f"unexpected answer from the server (HTTP {_response_code(exc) or '?'}; is this an S3 endpoint?)"
    if (error := _client_error(exc)) is not None:
        code = error[0] or f"HTTP {error[1]}"
        if code in CREDENTIAL_CODES:
            return f"{CREDENTIAL_CODES[code]} (check access_key / secret_key and the bucket policy)"
        message = str(exc.response.get("Error", {}).get("Message") or "").splitlines()  # type: ignore[attr-defined]
        return f"{code}: {message[0] if message else ''}".rstrip(": ")
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
        if isinstance(exc, b.ConnectionClosedError):
            return "the connection broke"
        return f"HTTP failure ({type(exc).__name__})"
    if isinstance(exc, urllib3.exceptions.SSLError):
        return "TLS handshake failed (is secure = true right for this endpoint?)"
    if isinstance(exc, urllib3.exceptions.NewConnectionError):
        return "cannot connect (connection refused or host unreachable)"
    if isinstance(exc, urllib3.exceptions.NameResolutionError):
        return "cannot resolve the host name"
    if isinstance(exc, urllib3.exceptions.ConnectTimeoutError):
        return "connection timed out"
    if isinstance(exc, urllib3.exceptions.ReadTimeoutError):
        return "the server stopped answering (read timed out)"
    if isinstance(exc, urllib3.exceptions.ProtocolError):
        return "the connection broke"
    if isinstance(exc, urllib3.exceptions.HTTPError):
        return f"HTTP failure ({type(exc).__name__})"
    return f"{type(exc).__name__}: {exc}"


def is_s3_code(exc: BaseException, *codes: str) -> bool:
    """Is ``exc`` an S3 error answer (of either client) with one of these codes?"""
    from minio.error import S3Error

    if isinstance(exc, S3Error):
        return exc.code in codes
    error = _client_error(exc)
    return error is not None and error[0] in codes


class Connection:
    """A lazily created minio client plus the retry policy and the error type of one source or storage."""

    def __init__(
        self,
        cs: ConnectionSettings,
        label: str,
        error_class: type[DataManagerError],
        pool_size: int = 16,
    ) -> None:
        self.cs = cs
        self.label = label
        self.error_class = error_class
        self._pool_size = pool_size
        self._client: Any = None
        self._http: Any = None
        self._s3: Any = None
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = self._make_client()
        return self._client

    def _make_client(self) -> Any:
        import urllib3
        from minio import Minio

        self._http = http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=self.cs.connect_timeout, read=self.cs.timeout),
            maxsize=self._pool_size,
            cert_reqs="CERT_REQUIRED",
            ca_certs=self.cs.ca_file(),
            retries=False,  # Connection.call retries, with backoff and a log line
        )
        return Minio(
            self.cs.endpoint,
            access_key=self.cs.access_key,
            secret_key=self.cs.secret_key,
            secure=self.cs.secure,
            region=self.cs.region,
            http_client=http,
        )

    @property
    def s3(self) -> Any:
        """A boto3 S3 client for multipart uploads (created, and boto3 imported, on the first one)."""
        if self._s3 is None:
            with self._lock:
                if self._s3 is None:
                    self._s3 = self._make_s3()
        return self._s3

    def _make_s3(self) -> Any:
        import boto3
        import botocore
        from botocore.config import Config

        signed = self.cs.access_key is not None
        config = Config(
            connect_timeout=self.cs.connect_timeout,
            read_timeout=self.cs.timeout,
            max_pool_connections=self._pool_size,
            retries={"total_max_attempts": 1},  # Connection.call retries, with backoff and a log line
            s3={"addressing_style": "path"},  # as the minio SDK and libcurl address a bucket
            # Checksums only where we ask for them (multipart.py): the signed sha256 over http, CRC32 over https.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            proxies={},
            **({} if signed else {"signature_version": botocore.UNSIGNED}),
        )
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.cs.url("").rstrip("/"),
            aws_access_key_id=self.cs.access_key,
            aws_secret_access_key=self.cs.secret_key,
            region_name=self.cs.region or "us-east-1",
            verify=self.cs.ca_file() if self.cs.secure else False,
            config=config,
        )

    def region(self, bucket: str) -> str:
        """The region requests to ``bucket`` are signed for: the setting, else the server's GetBucketLocation."""
        if self.cs.region:
            return self.cs.region
        from .listing import bucket_region

        return bucket_region(self.cs, bucket) or "us-east-1"  # a wrong guess only hands libcurl's work to the SDK

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
        import urllib3
        from minio.error import MinioException

        return isinstance(exc, (MinioException, urllib3.exceptions.HTTPError, ConnectionError, TimeoutError)) or (
            _is_botocore(exc) and (_client_error(exc) is not None or not _is_usage_error(exc)))

    def close(self) -> None:
        if self._http is not None:
            self._http.clear()
        if self._s3 is not None:
            self._s3.close()
        self._client = self._http = self._s3 = None


def _is_usage_error(exc: BaseException) -> bool:
    """boto3's own complaints about how it was called (a bug here, not a server's answer): never hidden."""
    from botocore import exceptions as b

    return isinstance(exc, (b.ParamValidationError, b.ValidationError))
