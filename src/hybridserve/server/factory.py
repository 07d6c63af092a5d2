"""Builds the app inside each server worker process (uvicorn or granian) from the environment
``serve`` set."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from hybridserve.config import load_project
from hybridserve.server.app import HybridApp, create_app

if TYPE_CHECKING:
    from hybridserve.server.rsgi import RsgiApp


def app_from_env() -> HybridApp:
    from hybridserve.observability.logging import configure

    configure(os.environ.get("HYBRIDSERVE_LOG_LEVEL", "info"))
    project = load_project(os.environ.get("HYBRIDSERVE_PROJECT"))
    return create_app(
        project,
        access_log=os.environ.get("HYBRIDSERVE_ACCESS_LOG", "1") == "1",
        scheduler=_scheduler_lock(),
        grpc_address=os.environ.get("HYBRIDSERVE_GRPC_ADDRESS") or None,
    )


_LOCK: object = None


def _scheduler_lock() -> bool:
    """With several workers, exactly one runs the scheduler: the first to take a file lock."""
    global _LOCK
    path = os.environ.get("HYBRIDSERVE_SCHEDULER_LOCK")
    if not path:
        return False
    import fcntl
    from pathlib import Path

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a")  # noqa: SIM115 - held for the life of the process
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return False
    _LOCK = handle
    return True


def rsgi_app_from_env() -> RsgiApp:
    """The same app for granian's RSGI interface (``serve --http granian``)."""
    from hybridserve.server.rsgi import RsgiApp

    return RsgiApp(app_from_env())
