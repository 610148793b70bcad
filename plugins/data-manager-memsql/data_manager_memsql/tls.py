"""TLS to the server: the ``tls*`` settings as an :class:`ssl.SSLContext` for pymysql's ``ssl=``.

``tls = true`` makes TLS required: pymysql then refuses a server that does not offer it (and
:func:`check_in_use` asks the server besides, for pymysql versions that would silently go on in clear).
The server's certificate is verified against ``tls_ca_file`` (default: the system's CAs) and its name
against ``host`` unless ``tls_verify = false``. Without ``tls`` pymysql does what it always did (recent
versions try TLS without verifying anything and fall back to clear text; older ones never try).
"""

from __future__ import annotations

import logging
import ssl
from typing import Any

from data_manager.types import Settings

log = logging.getLogger(__name__)

KEYS = {"tls", "tls_ca_file", "tls_verify", "tls_cert_file", "tls_key_file"}


class TlsSettings:
    """The ``tls*`` settings, read (and checked) without touching a file; :meth:`context` loads them."""

    def __init__(self, settings: Settings, source: str) -> None:
        self.settings = settings
        self.source = source
        self.enabled = settings.get_bool("tls", False)
        self.verify = settings.get_bool("tls_verify", True)
        self.ca_file = settings.get_path("tls_ca_file", None)
        self.cert_file = settings.get_path("tls_cert_file", None)
        self.key_file = settings.get_path("tls_key_file", None)
        if not self.enabled:
            given = sorted(k for k in KEYS - {"tls"} if k in settings)
            if given:
                raise settings.error(given[0], "has no effect without tls = true")
        if self.key_file is not None and self.cert_file is None:
            raise settings.error("tls_key_file", "needs tls_cert_file (the client certificate)")
        if not self.verify and self.ca_file is not None:
            raise settings.error("tls_ca_file", "has no effect with tls_verify = false")
        self._context: ssl.SSLContext | None = None

    def context(self) -> ssl.SSLContext | None:
        """The context for every connection (None: TLS not configured); a ConfigError names a bad file."""
        if not self.enabled:
            return None
        if self._context is None:
            key = "tls_ca_file"
            try:
                ctx = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
                if not self.verify:
                    log.warning("source %s: tls_verify = false: the connection is encrypted, but the server is "
                                "not authenticated (anyone on the path can pose as it)", self.source)
                    ctx.check_hostname = False
                    ctx.verify_mode = ssl.CERT_NONE
                if self.cert_file is not None:
                    key = "tls_cert_file"
                    ctx.load_cert_chain(str(self.cert_file), str(self.key_file) if self.key_file else None)
            except (OSError, ssl.SSLError, ValueError) as exc:
                problem = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or exc
                raise self.settings.error(key, f"cannot load it ({problem})") from None
            self._context = ctx
        return self._context


def check_in_use(conn: Any) -> bool:
    """Does the server say this connection is encrypted (``Ssl_cipher`` of the session not empty)?"""
    with conn.cursor() as cur:
        cur.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
        row = cur.fetchone()
    return bool(row and row[1])
