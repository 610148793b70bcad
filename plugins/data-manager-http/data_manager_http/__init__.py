"""data-manager plugin: source ``http``, what a service exports over HTTP (an export API's zip or dump).

Registration only: urllib3 is imported when the source first talks to a server, so ``data-manager --help``
stays fast.

``url``, ``restore_url`` and ``headers`` are secret keys: a token may sit in a URL's query or a header, so
their values are recorded as ``***`` and scrubbed from every log line; the backup's info records the URL
with secret-looking query values masked instead (:func:`data_manager_http.urls.public_url`).
"""

from __future__ import annotations

from collections.abc import Callable

from data_manager import hookimpl
from data_manager.types import SourceType

SECRET_KEYS = ("url", "restore_url", "headers")


@hookimpl
def register_source_types(register: Callable[[SourceType], None]) -> None:
    from .source import HttpSource

    register(SourceType(
        "http",
        HttpSource,
        "what a service exports over HTTP: ranged, resumed, checked GETs; restored by POST/PUT or to a file",
        secret_keys=SECRET_KEYS,
        resumes=True,  # keeps the parts an interrupted run committed (download.py)
    ))
