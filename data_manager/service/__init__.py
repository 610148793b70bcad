"""``data-manager serve``: the backup service (docs/service.md).

A FastAPI application (:mod:`.app`) in front of a job launcher (:mod:`.jobs`: every job is a child process
running the ``data-manager`` command with ``--json``), a scheduler (:mod:`.scheduler`), server-sent events
(:mod:`.events`), Prometheus metrics (:mod:`.metrics`), bearer tokens (:mod:`.auth`) and a status page
(:mod:`.page`). Its own records (jobs, attempts, events, due times) live in tables of the state database
(:mod:`.store`).

Importing this package imports nothing optional: :mod:`.settings` (the ``[service]`` table and the
datasets' ``schedule``) is used by the core's config validation whether or not the ``serve`` extra is
installed.
"""
