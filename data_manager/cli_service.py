"""``data-manager serve``: the backup service (data_manager/service/, docs/service.md).

Needs the ``serve`` extra (``pip install 'data-manager[serve]'``); without it, exit 2 and what to install.
Binds to 127.0.0.1 by default; a host that is not loopback needs at least one token in
``[service.tokens.NAME]``. One service per state database: a second one exits 2.
"""

from __future__ import annotations

import signal
from typing import Any

import click

from .errors import UsageError


def _modules() -> None:
    missing = []
    for module in ("fastapi", "uvicorn", "sse_starlette", "prometheus_client", "jinja2", "cronsim"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise UsageError(f"data-manager serve needs {', '.join(missing)}: pip install 'data-manager[serve]'")


@click.command(name="serve")
@click.option("--host", metavar="HOST", help="Address to listen on (default: [service] host, else 127.0.0.1).")
@click.option("--port", metavar="PORT", type=click.IntRange(0, 65535),
              help="Port (default: [service] port, else 8080; 0 picks a free one).")
@click.pass_obj
def serve(obj: Any, host: str | None, port: int | None) -> None:
    """Run the backup service: a REST API under /v1 (OpenAPI at /openapi.json), jobs run as child
    processes, schedules, server-sent events, Prometheus metrics, and a status page at /.

    Stops cleanly on SIGTERM or Ctrl-C: running jobs are stopped (their datasets released) and resumed at
    the next start.
    """
    _modules()
    import uvicorn

    from .service.app import create_app
    from .service.runtime import Service
    from .service.settings import is_loopback

    service = Service(obj.dm)
    host = host or service.settings.host
    port = service.settings.port if port is None else port
    if not is_loopback(host) and not service.tokens.enabled:
        raise UsageError(f"serve --host {host}: not a loopback address, and [service.tokens.NAME] has no token: "
                         "configure tokens before listening beyond this machine")
    service.acquire()  # exit 2 now if another service has the state database
    # uvicorn handles SIGTERM and Ctrl-C (a graceful shutdown, the lifespan stops the jobs), then raises the
    # signal again with the handler it found: make that a no-op, so a stopped service exits 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: None)
    try:
        config = uvicorn.Config(create_app(service), host=host, port=port, log_config=None, access_log=False,
                                timeout_graceful_shutdown=10, lifespan="on")
        server = uvicorn.Server(config)
        server.run()
    finally:
        service.release()
    if not server.started:
        raise UsageError(f"the service could not start on {host}:{port} (see the messages above)")
