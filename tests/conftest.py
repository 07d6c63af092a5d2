"""Shared fixtures: the trained fraud project and servers (see ``conftest_server``)."""

from conftest_server import (
    live_server,
    make_project,
    serve,
    trained_dir,
    two_workers,
    worker_project_changes,
    worker_route_changes,
)

__all__ = [
    "live_server",
    "make_project",
    "serve",
    "trained_dir",
    "two_workers",
    "worker_project_changes",
    "worker_route_changes",
]
