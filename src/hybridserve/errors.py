"""Every error hybridserve raises, in one tree.

Each class carries the HTTP status the server answers with and the exit code the CLI
exits with, so the core never imports a web framework. The transports translate them: to
HTTP responses in one place, ``error_reply`` in ``server/errors.py`` (used by the predict
path on both HTTP fronts, the Starlette endpoints' handlers and the Open Inference Protocol
endpoints, whose protocol wants ``{"error": message}``), to gRPC status codes in
``server/grpc/service.py``, and to exit codes in one (``main`` in ``cli/__init__.py``)::

    HybridServeError                 500, exit 1
     +-- ConfigError                 500, exit 2   project file or CLI usage problems
     +-- MissingExtra                500, exit 1   an optional dependency is not installed
     +-- InvalidInput                400           bad request data (names the field)
     +-- Unauthorized                401
     +-- Forbidden                   403
     +-- NotFound                    404
     |    +-- RouteNotFound, ModelNotFound, FeatureViewNotFound, RunNotFound
     +-- RequestTimeout              408           the body did not arrive in time
     +-- Conflict                    409           e.g. a registry name/version clash
     +-- PayloadTooLarge             413
     +-- ArtifactIntegrityError      500           an artifact's sha256 does not match
     +-- StoreError                  503           a backend failed or timed out
     +-- Overloaded                  503           shed at the door: the server is past
                                                   what it can answer in time
     +-- NoFreshPrediction           503           the ``type`` of the router's answer when
                                                   the fallback chain leaves an entity
                                                   unanswered (a body the router builds,
                                                   since it carries the answered entities)
     +-- DeadlineExceeded            504
"""

from __future__ import annotations

from typing import Any, ClassVar


class HybridServeError(Exception):
    """Base class. ``status`` is the HTTP status, ``exit_code`` the CLI exit code."""

    status: ClassVar[int] = 500
    exit_code: ClassVar[int] = 1

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.message, "type": type(self).__name__}
        if self.details:
            body["details"] = self.details
        return body


class ConfigError(HybridServeError):
    exit_code = 2


class MissingExtra(HybridServeError):
    """An optional dependency is missing; the message names the extra to install."""


class InvalidInput(HybridServeError):
    status = 400


class Unauthorized(HybridServeError):
    status = 401


class Forbidden(HybridServeError):
    status = 403


class NotFound(HybridServeError):
    status = 404


class RouteNotFound(NotFound):
    pass


class ModelNotFound(NotFound):
    pass


class FeatureViewNotFound(NotFound):
    pass


class RunNotFound(NotFound):
    pass


class RequestTimeout(HybridServeError):
    status = 408


class Conflict(HybridServeError):
    status = 409


class PayloadTooLarge(HybridServeError):
    status = 413


class ArtifactIntegrityError(HybridServeError):
    pass


class StoreError(HybridServeError):
    status = 503


class Overloaded(HybridServeError):
    """The server shed the request before reading it (``routing/admission.py``)."""

    status = 503


class NoFreshPrediction(HybridServeError):
    """Names the router's 503 answer (see :mod:`hybridserve.errors`); not raised."""

    status = 503


class DeadlineExceeded(HybridServeError):
    status = 504
