"""TLS to the server: the core's ``tls*`` settings (:class:`data_manager.tls.TlsSettings`) as pymysql's ``ssl=``.

``tls = true`` makes TLS required: pymysql then refuses a server that does not offer it (and
:func:`check_in_use` asks the server besides, for pymysql versions that would silently go on in clear).
The settings are the core's (:mod:`data_manager.tls`): the server's certificate is verified against
``tls_ca_file`` (default: the system's CAs) and its name against ``host`` unless ``tls_verify = false``
(or ``tls_check_hostname = false``). Without ``tls`` pymysql does what it always did (recent
versions try TLS without verifying anything and fall back to clear text; older ones never try).
"""

from __future__ import annotations

from typing import Any



def check_in_use(conn: Any) -> bool:
    """Does the server say this connection is encrypted (``Ssl_cipher`` of the session not empty)?"""
    with conn.cursor() as cur:
        cur.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
        row = cur.fetchone()
    return bool(row and row[1])
