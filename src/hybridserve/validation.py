"""Deep checks of a project: everything the file points to exists and fits together.

Loading a project file checks its shape; this module checks the world it describes: offline
sources exist and have the declared columns, model references resolve in the registry, and
every feature a model needs is provided by its route.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hybridserve.config import Project
from hybridserve.errors import HybridServeError

if TYPE_CHECKING:
    from hybridserve.registry import Registry


def check_sources(project: Project) -> list[str]:
    from hybridserve.features.offline import open_source

    problems = []
    for name, view in project.feature_views.items():
        if view.source is None:
            continue
        try:
            open_source(project, name)
        except HybridServeError as exc:
            problems.append(exc.message)
        except Exception as exc:  # an unreadable file: say which and why
            problems.append(
                f"feature_views.{name}.source.path: cannot read {view.source.path}: {exc}"
            )
    return problems


def check_models(project: Project, registry: Registry) -> list[str]:
    problems = []
    for name in project.models:
        if not registry.versions(name):
            problems.append(f"models.{name}: no version of {name!r} is registered")
    for route_name, route in project.routes.items():
        refs = [("model", route.model)]
        refs += [
            (f"fallback.{i}.model", step.model)
            for i, step in enumerate(route.fallback)
            if hasattr(step, "model")
        ]
        refs += [
            (f"{k}.model", r.model)
            for k, r in (("canary", route.canary), ("shadow", route.shadow))
            if r is not None
        ]
        for where, ref in refs:
            try:
                version = registry.get(ref)
            except HybridServeError as exc:
                problems.append(f"routes.{route_name}.{where}: {exc.message}")
                continue
            provided = [
                n for n in version.signature.names if project.feature_spec(route_name, n) is None
            ]
            if provided:
                problems.append(
                    f"routes.{route_name}.{where}: {version.ref} needs features the route "
                    f"does not provide: {', '.join(provided)}"
                )
    return problems


def check_project(project: Project, registry: Registry | None) -> list[str]:
    """Every problem found, one line each (empty when the project is sound)."""
    problems = check_sources(project)
    if registry is not None:
        problems += check_models(project, registry)
    return problems
