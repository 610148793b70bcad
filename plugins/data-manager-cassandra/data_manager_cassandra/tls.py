"""TLS to the cluster: the ``tls*`` settings as the :class:`ssl.SSLContext` cassandra-driver's ``Cluster(ssl_context=)`` takes.

With ``tls = true`` every connection (control connection and the sessions' pools, to every node) is
TLS: the driver has no fallback to clear text. The nodes' certificates are verified against
``tls_ca_file`` (default: the system's CAs) unless ``tls_verify = false``, and their names against the
address the driver connects to unless ``tls_check_hostname = false`` (the driver reaches the other nodes by
the addresses the cluster announces, usually IPs: their certificates need those as subject alternative
names). ``tls_cert_file``/``tls_key_file``: a client certificate, for ``require_client_auth``.
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from data_manager.types import Settings

log = logging.getLogger(__name__)

KEYS = {"tls", "tls_ca_file", "tls_verify", "tls_check_hostname", "tls_cert_file", "tls_key_file"}


class TlsSettings:
    """The ``tls*`` settings, read and checked without touching a file; :meth:`context` loads them."""

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

    def context(self) -> Any:
        """The context for the cluster (None: TLS not configured); a ConfigError names a file that cannot be loaded."""
        if not self.enabled:
            return None
        key = "tls_ca_file"
        try:
            ctx = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
            ctx.check_hostname = self.check_hostname
            if not self.verify:
                log.warning("source %s: tls_verify = false: the connection is encrypted, but the nodes are not "
                            "authenticated (anyone on the path can pose as one)", self.source)
                ctx.verify_mode = ssl.CERT_NONE
            if self.cert_file is not None:
                key = "tls_cert_file"
                ctx.load_cert_chain(str(self.cert_file), str(self.key_file) if self.key_file else None)
        except (OSError, ssl.SSLError, ValueError) as exc:
            problem = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or exc
            raise self.settings.error(key, f"cannot load it ({problem})") from None
        return ctx


def all_loopback(hosts: Iterable[str]) -> bool:
    """Are all these contact points this machine (``localhost``, 127.0.0.0/8, ::1)?"""
    for host in hosts:
        if host.lower() == "localhost":
            continue
        try:
            if ipaddress.ip_address(host).is_loopback:
                continue
        except ValueError:
            pass
        return False
    return True
