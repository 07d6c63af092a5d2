"""Builds the app inside each uvicorn worker process from the environment ``serve`` set."""

from __future__ import annotations

import os

from hybridserve.config import load_project
from hybridserve.server.app import HybridApp, create_app


def app_from_env() -> HybridApp:
    from hybridserve.observability.logging import configure

    configure(os.environ.get("HYBRIDSERVE_LOG_LEVEL", "info"))
    project = load_project(os.environ.get("HYBRIDSERVE_PROJECT"))
    return create_app(project, access_log=os.environ.get("HYBRIDSERVE_ACCESS_LOG", "1") == "1")
