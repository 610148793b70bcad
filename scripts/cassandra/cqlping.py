#!/usr/bin/env python3
"""Check that a CQL server accepts a password login, with nothing but the standard library.

    cqlping.py HOST PORT USER PASSWORD [TIMEOUT_SECONDS]

Speaks just enough of the CQL native protocol (version 4): STARTUP, then the PLAIN SASL token
if the server asks to authenticate. Exit status: 0 login accepted, 1 no CQL server answering,
2 the server answered but refused the login (e.g. the default role is not created yet).
One line on standard output says what happened.
"""

import socket
import struct
import sys

VERSION = 0x04
OP_ERROR, OP_STARTUP, OP_READY, OP_AUTHENTICATE = 0x00, 0x01, 0x02, 0x03
OP_AUTH_CHALLENGE, OP_AUTH_RESPONSE, OP_AUTH_SUCCESS = 0x0E, 0x0F, 0x10


def _string(s: str) -> bytes:
    b = s.encode()
    return struct.pack(">H", len(b)) + b


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed by the server")
        buf += chunk
    return buf


def _request(sock: socket.socket, stream: int, opcode: int, body: bytes) -> tuple[int, bytes]:
    sock.sendall(struct.pack(">BBhBi", VERSION, 0, stream, opcode, len(body)) + body)
    _version, _flags, _stream, op, length = struct.unpack(">BBhBi", _recv_exactly(sock, 9))
    return op, _recv_exactly(sock, length)


def _error_text(body: bytes) -> str:
    code, = struct.unpack(">i", body[:4])
    n, = struct.unpack(">H", body[4:6])
    return f"error 0x{code:04x}: {body[6:6 + n].decode(errors='replace')}"


def ping(host: str, port: int, user: str, password: str, timeout: float) -> tuple[int, str]:
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as e:
        return 1, f"no connection to {host}:{port}: {e}"
    try:
        sock.settimeout(timeout)
        op, body = _request(sock, 1, OP_STARTUP, struct.pack(">H", 1) + _string("CQL_VERSION") + _string("3.0.0"))
        if op == OP_READY:
            return 0, "ready (the server asks for no authentication)"
        if op == OP_ERROR:
            return 1, _error_text(body)
        if op != OP_AUTHENTICATE:
            return 1, f"unexpected answer to STARTUP: opcode 0x{op:02x}"
        token = b"\x00" + user.encode() + b"\x00" + password.encode()
        op, body = _request(sock, 2, OP_AUTH_RESPONSE, struct.pack(">i", len(token)) + token)
        if op == OP_AUTH_SUCCESS:
            return 0, f"login as {user} accepted"
        if op == OP_ERROR:
            return 2, f"login as {user} refused: {_error_text(body)}"
        return 2, f"unexpected answer to AUTH_RESPONSE: opcode 0x{op:02x}"
    except (OSError, ConnectionError, struct.error) as e:
        return 1, f"CQL handshake with {host}:{port} failed: {e}"
    finally:
        sock.close()


def main(argv: list[str]) -> int:
    if len(argv) not in (5, 6):
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 64
    host, port, user, password = argv[1], int(argv[2]), argv[3], argv[4]
    timeout = float(argv[5]) if len(argv) == 6 else 5.0
    status, message = ping(host, port, user, password, timeout)
    print(message)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv))
