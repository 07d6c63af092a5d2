"""The batch suites' fixtures (their helper functions are in ``batch_helpers``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from hybridserve.config import Project


@pytest.fixture
def batch_project(make_project: Callable[..., Project]) -> Callable[..., Project]:
    """A copy of the trained project whose ``batch_jobs`` are ``jobs``."""

    def make(jobs: dict[str, dict[str, Any]], **changes: Any) -> Project:
        return make_project({"batch_jobs": jobs, **changes})

    return make
