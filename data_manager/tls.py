"""TLS for plugins that open their own connections, and telling this machine from the network.

One reading of the ``tls*`` settings for every source that speaks TLS through its driver (cassandra,
memsql...), so they are spelled, checked and documented alike:

``tls = true``: every connection is TLS, verified against ``tls_ca_file`` (default: the system's CAs)
unless ``tls_verify = false``, its name checked unless ``tls_check_hostname = false``;
``tls_cert_file``/``tls_key_file``: a client certificate.
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
from collections.abc import Iterable
from pathlib import Path

from .types import Settings

log = logging.getLogger(__name__)

KEYS = frozenset({"tls", "tls_ca_file", "tls_verify", "tls_check_hostname", "tls_cert_file", "tls_key_file"})


class TlsSettings:
    """The ``tls*`` settings, read and checked in ``__init__`` without touching a file (a bad combination is a
    ConfigError naming the key); :meth:`context` loads the files once."""

    def __init__(self, settings: Settings, source: str) -> None:
        self.settings = settings
        self.source = source
        self.enabled = settings.get_bool("tls", False)
        self.verify = settings.get_bool("tls_verify", True)
        self.check_hostname = settings.get_bool("tls_check_hostname", self.verify)
        self.ca_file: Path | None = settings.get_path("tls_ca_file", None)
        self.cert_file: Path | None = settings.get_path("tls_cert_file", None)
        self.key_file: Path | None = settings.get_path("tls_key_file", None)
        if not self.enabled:
            given = sorted(k for k in KEYS - {"tls"} if k in settings)
            if given:
                raise settings.error(given[0], "has no effect without tls = true")
        if self.key_file is not None and self.cert_file is None:
            raise settings.error("tls_key_file", "needs tls_cert_file (the client certificate)")
        if not self.verify and self.ca_file is not None:
            raise settings.error("tls_ca_file", "has no effect with tls_verify = false")
        if not self.verify and self.check_hostname:
            raise settings.error("tls_check_hostname", "needs tls_verify = true")
        self._context: ssl.SSLContext | None = None

    def context(self) -> ssl.SSLContext | None:
        """The context for every connection (None: TLS not configured); a ConfigError names a file that
        cannot be loaded."""
        if not self.enabled:
            return None
        if self._context is None:
            key = "tls_ca_file"
            try:
                ctx = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
                ctx.check_hostname = self.check_hostname
                if not self.verify:
                    log.warning("source %s: tls_verify = false: the connection is encrypted, but the server is "
                                "not authenticated (anyone on the path can pose as it)", self.source)
                    ctx.verify_mode = ssl.CERT_NONE
                if self.cert_file is not None:
                    key = "tls_cert_file"
                    ctx.load_cert_chain(str(self.cert_file), str(self.key_file) if self.key_file else None)
            except (OSError, ssl.SSLError, ValueError) as exc:
                problem = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or exc
                raise self.settings.error(key, f"cannot load it ({problem})") from None
            self._context = ctx
        return self._context


def is_loopback(host: str | None) -> bool:
    """``localhost``, 127.0.0.0/8 or ::1 (also as an IPv4-mapped address): this machine, not the network."""
    if not host:
        return False
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(addr, "ipv4_mapped", None)
    return addr.is_loopback or (mapped is not None and mapped.is_loopback)


def all_loopback(hosts: Iterable[str]) -> bool:
    """Are all these hosts this machine? (Then a password in clear never leaves it.)"""
    return all(is_loopback(h) for h in hosts)
