"""Loading a resolved model version: its artifact checked, then its runtime.

:meth:`Registry.load <hybridserve.registry.registry.Registry.load>` resolves a reference in the
registry's database and calls :func:`load_version`; a batch worker, given the version the run
resolved (a :class:`ModelVersion`, picklable), calls it directly, so it neither opens the
database nor imports SQLAlchemy.
"""

from __future__ import annotations

from pathlib import Path

from hybridserve.registry.artifacts import ArtifactStore
from hybridserve.registry.versions import ModelVersion
from hybridserve.runtimes import Runtime, load_runtime
from hybridserve.runtimes.base import Compile


def load_version(mv: ModelVersion, artifacts: ArtifactStore, compile: Compile = "auto") -> Runtime:
    """``mv`` as a :class:`Runtime`, once its artifact's sha256 matches the registry's
    (ArtifactIntegrityError if not); ``compile`` is the model's ``compile`` option."""
    if mv.flavour == "callable":
        target: str | Path = str(mv.callable_ref)
    else:
        target = artifacts.verify(str(mv.artifact), str(mv.sha256), label=mv.ref)
    return load_runtime(
        mv.flavour,
        target,
        name=mv.name,
        version=mv.version,
        signature=mv.signature,
        task=mv.task,
        compile=compile,
    )
