"""A local stand-in for the experiments-manager and the spark-tasks-sender, implementing the contract
(docs/experiments-api.yaml) for tests and demos. One stdlib HTTP server on 127.0.0.1 serves both:
``{url}/em`` is the experiments-manager, ``{url}/spark`` the spark-tasks-sender.

    with FakeServices(token="t") as fake:
        fake.refuse["exp42"] = "experiment 17 is writing exp42"
        ...  # experiments_url = fake.experiments_url, spark_url = fake.spark_url

Switches: ``refuse`` (data_id -> reason), ``running`` (data_id -> Spark task ids), ``unknown`` (data_ids
answered 404 by the experiments-manager), ``fail_next`` (that many next answers are HTTP 503),
``fail_release`` (every PUT marking a dataset available again answers 500), ``delay`` (seconds before every answer).
Recorded: ``calls`` (method, path), ``availability`` (the PUT bodies, with data_id), ``available``
(data_id -> the last mark). ``closed_port_url()`` gives a URL where nothing listens.

Run alone: ``python -m data_manager_experiments.fake_services [--port 8080] [--token T]``.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeServices:
    def __init__(self, token: str | None = None) -> None:
        self.token = token
        self.refuse: dict[str, str] = {}
        self.running: dict[str, list[str]] = {}
        self.unknown: set[str] = set()
        self.fail_next = 0
        self.fail_release = False
        self.delay = 0.0
        self.calls: list[tuple[str, str]] = []
        self.availability: list[dict[str, Any]] = []
        self.available: dict[str, bool] = {}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle

    def start(self, port: int = 0) -> FakeServices:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                fake._handle(self, "GET")

            def do_PUT(self) -> None:
                fake._handle(self, "PUT")

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-services", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeServices:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def experiments_url(self) -> str:
        return self.url + "/em"

    @property
    def spark_url(self) -> str:
        return self.url + "/spark"

    def marks(self, data_id: str) -> list[bool]:
        """The ``available`` values PUT for ``data_id``, in order."""
        return [b["available"] for b in self.availability if b["data_id"] == data_id]

    # -- requests

    def _handle(self, req: BaseHTTPRequestHandler, method: str) -> None:
        parsed = urllib.parse.urlsplit(req.path)
        query = dict(urllib.parse.parse_qsl(parsed.query))
        with self._lock:
            self.calls.append((method, parsed.path))
            failing = self.fail_next > 0
            if failing:
                self.fail_next -= 1
        if self.delay:
            time.sleep(self.delay)
        if failing:
            return self._send(req, 503, {"error": "temporarily unavailable (fake)"})
        if self.token and req.headers.get("Authorization") != f"Bearer {self.token}":
            return self._send(req, 401, {"error": "bad or missing token"})
        parts = [urllib.parse.unquote(p) for p in parsed.path.strip("/").split("/")]
        if len(parts) != 4 or parts[1] != "datasets":
            return self._send(req, 404, {"error": "no such endpoint"})
        service, _, data_id, tail = parts
        if service == "em" and tail == "allowed" and method == "GET":
            if data_id in self.unknown:
                return self._send(req, 404, {"error": f"unknown dataset {data_id}"})
            if query.get("operation") not in ("backup", "restore"):
                return self._send(req, 400, {"error": "operation must be backup or restore"})
            reason = self.refuse.get(data_id)
            return self._send(req, 200, {"allowed": reason is None, "reason": reason or ""})
        if service == "em" and tail == "availability" and method == "PUT":
            length = int(req.headers.get("Content-Length") or 0)
            try:
                body = json.loads(req.rfile.read(length))
                assert isinstance(body["available"], bool) and isinstance(body["job_id"], str)
            except (ValueError, KeyError, AssertionError, TypeError):
                return self._send(req, 400, {"error": "body must be {available: bool, reason, job_id, operation}"})
            with self._lock:
                self.availability.append({"data_id": data_id, **body})
            if self.fail_release and body["available"]:
                return self._send(req, 500, {"error": "database down (fake)"})
            self.available[data_id] = body["available"]
            return self._send(req, 204, None)
        if service == "spark" and tail == "tasks" and method == "GET":
            state = query.get("state", "running")
            tasks = [{"id": t, "state": "running"} for t in self.running.get(data_id, [])] if state == "running" else []
            return self._send(req, 200, {"tasks": tasks})
        return self._send(req, 404, {"error": "no such endpoint"})

    @staticmethod
    def _send(req: BaseHTTPRequestHandler, status: int, doc: Any) -> None:
        data = b"" if doc is None else json.dumps(doc).encode()
        try:
            req.send_response(status)
            if data:
                req.send_header("Content-Type", "application/json")
            req.send_header("Content-Length", str(len(data)))
            req.end_headers()
            req.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout)


def closed_port_url() -> str:
    """An http URL on 127.0.0.1 where nothing listens (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--token")
    args = parser.parse_args()
    fake = FakeServices(args.token).start(args.port)
    print(f"experiments_url = {fake.experiments_url!r}\nspark_url = {fake.spark_url!r}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        fake.stop()


if __name__ == "__main__":
    main()
