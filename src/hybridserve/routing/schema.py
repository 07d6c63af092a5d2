"""Wire shapes of the hybrid API (``POST /v1/predict/{route}``), independent of any framework.

Validated with pydantic-core (microseconds per request); errors are reported as
``field.path: problem`` in a 400, like the project file's.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError

from hybridserve.errors import InvalidInput
from hybridserve.units import parse_duration

FeatureValue = float | int | bool | str | None
Key = Annotated[
    str, BeforeValidator(lambda v: str(v) if isinstance(v, int) and not isinstance(v, bool) else v)
]


class EntityItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    key: Key = Field(min_length=1, max_length=512)
    features: dict[str, FeatureValue] = Field(default_factory=dict)


class PredictRequest(BaseModel):
    """One or many entities to predict for; request-time features are optional."""

    model_config = ConfigDict(extra="forbid")
    entities: list[Annotated[Key, Field(min_length=1, max_length=512)] | EntityItem] = Field(
        default_factory=list, description="Entity keys, or {key, features} objects."
    )
    entity: Key | None = Field(
        default=None, min_length=1, max_length=512, description="Shorthand for one entity."
    )
    features: dict[str, FeatureValue] = Field(
        default_factory=dict, description="Request-time features for every entity of this request."
    )
    max_staleness: Annotated[float, BeforeValidator(parse_duration)] | None = Field(
        default=None, description="Tighten the route's freshness bound ('30s', '5m' or seconds)."
    )
    timeout_ms: float | None = Field(
        default=None, gt=0, le=600_000, description="Tighten the route's latency budget."
    )
    mode: Literal["auto", "compute", "stored"] = Field(
        default="auto",
        description="auto: stored prediction if fresh, else compute; compute: always compute "
        "now; stored: never compute (fallbacks still apply).",
    )
    probabilities: bool = False


class PredictionOut(BaseModel):
    entity: str
    score: float
    label: Any = None
    source: str = Field(description="cache, batch, stream, online or fallback:<kind>")
    model: str | None
    model_version: int | None
    as_of: str | None
    age_s: float | None
    degraded: bool
    probabilities: dict[str, float] | None = None


class PredictResponse(BaseModel):
    request_id: str
    route: str
    predictions: list[PredictionOut]


_REQUEST = TypeAdapter(PredictRequest)


def parse_predict_request(body: bytes | dict[str, Any]) -> PredictRequest:
    try:
        if isinstance(body, bytes | bytearray):
            return _REQUEST.validate_json(body)
        return _REQUEST.validate_python(body)
    except ValidationError as exc:
        raise InvalidInput(validation_message(exc), errors=_errors(exc)) from None


def _errors(exc: ValidationError) -> list[dict[str, Any]]:
    return [{"loc": ".".join(str(p) for p in e["loc"]), "msg": e["msg"]} for e in exc.errors()][:20]


def validation_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(
            str(p)
            for p in err["loc"]
            # pydantic's internal names of union members and validators are not fields
            if not str(p)[:1].isupper()
            and str(p) not in ("str", "int", "float", "bool", "constrained-str")
            and "[" not in str(p)
            and "(" not in str(p)
        )
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "invalid request: " + "; ".join(dict.fromkeys(parts))
