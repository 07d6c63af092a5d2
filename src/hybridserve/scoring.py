"""The Scorer: the one code path from entity features to prediction records.

Batch, online and streaming all go through it, so a model sees the same features, in the
same order, validated the same way in every mode. Scoring is three steps, kept separate so
the online micro-batcher can merge many requests into one model call:

1. :meth:`Scorer.prepare` turns feature rows (mappings) or columns (arrays) into a float
   matrix in the model's signature order, applying each feature's missing-value policy;
   a row that fails comes back as a :class:`RowError` and does not fail its neighbours;
2. ``runtime.predict(matrix)``: one call per batch, never per row;
3. :meth:`Scorer.records` builds :class:`~hybridserve.records.PredictionRecord` objects.
"""

from __future__ import annotations

import hashlib
import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from hybridserve.config import DType, FeatureSpec, Project
from hybridserve.errors import ConfigError
from hybridserve.records import PredictionRecord, Source, now
from hybridserve.runtimes.base import Prediction, Runtime, Signature

Matrix = npt.NDArray[np.float64]
_PLAIN = frozenset({float, int, type(None)})


@dataclass(slots=True, frozen=True)
class RowError:
    """Why one row could not be scored."""

    index: int
    entity: str
    reason: str


@dataclass(slots=True)
class Prepared:
    """A validated matrix and the positions (in the input) of the rows it holds."""

    matrix: Matrix
    rows: list[int]
    errors: list[RowError] = field(default_factory=list)


@dataclass(slots=True)
class ScoreResult:
    records: list[PredictionRecord]
    errors: list[RowError]


def feature_fingerprint(project: Project, route: str, signature: Sequence[str]) -> str:
    """A short hash of everything that defines the model's inputs for a route.

    Two predictions with the same fingerprint were computed from features defined the
    same way (same names, order, types, missing-value policy and sources).
    """
    specs = {}
    for name in signature:
        spec = project.feature_spec(route, name)
        specs[name] = None if spec is None else spec.model_dump(exclude={"description"})
    views = {v: names for v, names in project.route_features(route).items()}
    payload = orjson.dumps(
        {"signature": list(signature), "specs": specs, "views": views}, option=orjson.OPT_SORT_KEYS
    )
    return hashlib.sha256(payload).hexdigest()[:16]


@dataclass(frozen=True)
class ModelInputs:
    """What one model version takes on one route: its features in matrix order, each one's
    spec, and the fingerprint of their definitions. Built from the registry's signature, so a
    process that only plans (a batch run's parent) checks a model without loading it."""

    model: str
    version: int
    names: list[str]
    specs: list[FeatureSpec]
    fingerprint: str

    @classmethod
    def of(
        cls, project: Project, route: str, model: str, version: int, signature: Signature
    ) -> ModelInputs:
        names = signature.names
        specs: list[FeatureSpec] = []
        missing = []
        for name in names:
            spec = project.feature_spec(route, name)
            if spec is None:
                missing.append(name)
            elif spec.dtype == "str":
                raise ConfigError(
                    f"model {model}/{version} takes feature {name!r} as a number, "
                    f"but route {route!r} declares it as str"
                )
            else:
                specs.append(spec)
        if missing:
            raise ConfigError(
                f"model {model}/{version} needs features that route {route!r} "
                f"does not provide: {', '.join(missing)} (add their feature view to "
                f"routes.{route}.features or declare them in request_features)"
            )
        return cls(model, version, names, specs, feature_fingerprint(project, route, names))


class Scorer:
    """Scores rows for one route with one loaded model version."""

    def __init__(self, project: Project, route: str, runtime: Runtime) -> None:
        self.project = project
        self.route = route
        self.runtime = runtime
        self.threshold = project.route(route).threshold
        inputs = ModelInputs.of(project, route, runtime.name, runtime.version, runtime.signature)
        self.names = inputs.names
        self.name_set = frozenset(self.names)
        # A row's values in signature order, in C (one name would give a value, not a tuple).
        self._take: Callable[[Mapping[str, Any]], tuple[Any, ...]] = (
            operator.itemgetter(*self.names)
            if len(self.names) > 1
            else lambda row: tuple(row[n] for n in self.names)
        )
        self.specs = specs = inputs.specs
        self._impute = [s.default if s.on_missing == "impute" else None for s in specs]
        self._ints = [s.dtype == "int" for s in specs]
        self._impute_mask = np.array([v is not None for v in self._impute], dtype=bool)
        self._impute_values = np.array(
            [float(v) if v is not None else np.nan for v in self._impute],
            dtype=np.float64,
        )
        self._int_cols = np.flatnonzero(np.array(self._ints, dtype=bool))
        self.fingerprint = inputs.fingerprint

    # -- step 1: validate --------------------------------------------------------------

    def prepare(self, entities: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> Prepared:
        """Validate mapping rows (online and streaming): one matrix row per valid input row.

        Rows whose values are all plain floats, ints or missing (nearly all of them) are
        converted in one numpy call and checked matrix-wide; only the others are walked
        value by value. Both paths apply the same rules and word errors the same way.
        """
        names = self.names
        plain: list[tuple[Any, ...]] = []
        plain_at: list[int] = []
        odd: list[int] = []
        is_plain = _PLAIN.__contains__
        take = self._take
        for i, row in enumerate(rows):
            try:
                values = take(row)
            except KeyError:  # a feature left out: missing, as the rules below say
                values = tuple(row.get(n) for n in names)
            if all(map(is_plain, map(type, values))):
                plain.append(values)
                plain_at.append(i)
            else:
                odd.append(i)
        fast = self._check_matrix(
            np.array(plain, dtype=np.float64).reshape(len(plain), len(names)), plain_at, entities
        )
        if not odd:
            return fast
        slow = self._prepare_odd(entities, rows, odd)
        order = sorted(
            zip(fast.rows + slow.rows, range(len(fast.rows) + len(slow.rows)), strict=True)
        )
        stacked = np.concatenate([fast.matrix, slow.matrix])
        return Prepared(
            stacked[[k for _, k in order]],
            [i for i, _ in order],
            sorted(fast.errors + slow.errors, key=lambda e: e.index),
        )

    def _check_matrix(self, m: Matrix, at: list[int], entities: Sequence[str]) -> Prepared:
        """Missing-value policy, finiteness and integrality, checked for a whole matrix."""
        if not at:
            return Prepared(m, [])
        reasons: dict[int, str] = {}
        names = self.names
        nan = np.isnan(m)
        if nan.any():
            if self._impute_mask.any():
                fill = nan & self._impute_mask
                m[fill] = np.broadcast_to(self._impute_values, m.shape)[fill]
                nan &= ~self._impute_mask
            for r in np.flatnonzero(nan.any(axis=1)).tolist():
                reasons[r] = f"missing feature {names[int(nan[r].argmax())]!r}"
        inf = np.isinf(m)
        if inf.any():
            for r in np.flatnonzero(inf.any(axis=1)).tolist():
                j = int(inf[r].argmax())
                reasons.setdefault(
                    r, f"feature {names[j]!r}: expected a finite number, got {float(m[r, j])!r}"
                )
        if self._int_cols.size:
            sub = m[:, self._int_cols]
            frac = np.isfinite(sub) & (np.floor(sub) != sub)
            for r in np.flatnonzero(frac.any(axis=1)).tolist():
                j = int(self._int_cols[int(frac[r].argmax())])
                reasons.setdefault(r, f"feature {names[j]!r}: expected int, got {float(m[r, j])!r}")
        if not reasons:
            return Prepared(m, at)
        keep = [r for r in range(len(at)) if r not in reasons]
        errors = [RowError(at[r], entities[at[r]], why) for r, why in sorted(reasons.items())]
        return Prepared(m[keep], [at[r] for r in keep], errors)

    def _prepare_odd(
        self, entities: Sequence[str], rows: Sequence[Mapping[str, Any]], which: list[int]
    ) -> Prepared:
        """Value by value, for rows holding bools, numpy scalars or wrong types."""
        width = len(self.names)
        matrix = np.empty((len(which), width), dtype=np.float64)
        ok: list[int] = []
        errors: list[RowError] = []
        names, impute, ints = self.names, self._impute, self._ints
        for i in which:
            row = rows[i]
            out = matrix[len(ok)]
            reason = None
            for j in range(width):
                value = row.get(names[j])
                if (
                    value is not None
                    and value.__class__ is not float
                    and value.__class__ is not int
                ):
                    value, reason = _coerce(names[j], value)
                    if reason:
                        break
                if value is None or value != value:  # missing or NaN
                    if impute[j] is None:
                        reason = f"missing feature {names[j]!r}"
                        break
                    value = impute[j]
                elif value.__class__ is float and (
                    math.isinf(value) or (ints[j] and not value.is_integer())
                ):
                    reason = (
                        f"feature {names[j]!r}: expected int, got {value!r}"
                        if not math.isinf(value)
                        else f"feature {names[j]!r}: expected a finite number, got {value!r}"
                    )
                    break
                out[j] = value
            if reason is None:
                ok.append(i)
            else:
                errors.append(RowError(i, entities[i], reason))
        return Prepared(matrix[: len(ok)], ok, errors)

    def prepare_columns(self, entities: Sequence[str], columns: Mapping[str, Any]) -> Prepared:
        """Validate columns (batch): vectorised, for millions of rows."""
        n = len(entities)
        matrix = np.empty((n, len(self.names)), dtype=np.float64)
        bad = np.zeros(n, dtype=bool)
        reasons: dict[int, str] = {}
        for j, name in enumerate(self.names):
            if name not in columns:
                raise ConfigError(
                    f"input has no column {name!r}, which model "
                    f"{self.runtime.name}/{self.runtime.version} needs"
                )
            col, col_bad = _numeric_column(columns[name])
            if col_bad is not None:
                for i in np.flatnonzero(col_bad & ~bad):
                    reasons[int(i)] = not_a_number(name, _raw(columns[name], int(i)))
                bad |= col_bad
            nan = np.isnan(col)
            if nan.any():
                if self._impute[j] is not None:
                    col = np.where(nan, float(self._impute[j]), col)  # type: ignore[arg-type]
                else:
                    for i in np.flatnonzero(nan & ~bad):
                        reasons[int(i)] = f"missing feature {name!r}"
                    bad |= nan
            inf = np.isinf(col)
            if inf.any():
                for i in np.flatnonzero(inf & ~bad):
                    reasons[int(i)] = (
                        f"feature {name!r}: expected a finite number, got {float(col[i])!r}"
                    )
                bad |= inf
            if self._ints[j]:
                frac = ~bad & (np.floor(col) != col)
                for i in np.flatnonzero(frac):
                    reasons[int(i)] = f"feature {name!r}: expected int, got {float(col[i])!r}"
                bad |= frac
            matrix[:, j] = col
        if not bad.any():
            return Prepared(matrix, list(range(n)))
        ok = np.flatnonzero(~bad)
        errors = [RowError(i, entities[i], reasons[i]) for i in sorted(reasons)]
        return Prepared(matrix[ok], ok.tolist(), errors)

    # -- step 3: records ---------------------------------------------------------------

    def records(
        self,
        entities: Sequence[str],
        prediction: Prediction,
        *,
        as_of: Sequence[float] | float,
        source: Source,
        run_id: str | None = None,
        event_ids: Sequence[str | None] | None = None,
        request_id: str | None = None,
        computed_at: float | None = None,
    ) -> list[PredictionRecord]:
        """Records for ``entities`` (one per matrix row, in order) from one model call."""
        at = now() if computed_at is None else computed_at
        scores = prediction.scores.tolist()
        probs = prediction.probabilities
        classes = [str(c) for c in prediction.classes]
        name, version, route, fp = (
            self.runtime.name,
            self.runtime.version,
            self.route,
            self.fingerprint,
        )
        threshold = self.threshold
        as_ofs = [float(as_of)] * len(entities) if isinstance(as_of, int | float) else as_of
        out = []
        for i, entity in enumerate(entities):
            score = scores[i]
            out.append(
                PredictionRecord(
                    entity=entity,
                    route=route,
                    score=score,
                    model=name,
                    model_version=version,
                    source=source,
                    as_of=as_ofs[i],
                    computed_at=at,
                    label=None if threshold is None else int(score >= threshold),
                    probabilities=None
                    if probs is None
                    else dict(zip(classes, probs[i].tolist(), strict=True)),
                    run_id=run_id,
                    event_id=None if event_ids is None else event_ids[i],
                    request_id=request_id,
                    feature_fingerprint=fp,
                )
            )
        return out

    # -- all three steps ---------------------------------------------------------------

    def score_rows(
        self,
        entities: Sequence[str],
        rows: Sequence[Mapping[str, Any]],
        *,
        as_of: Sequence[float] | float,
        source: Source,
        probabilities: bool = False,
        row_of: Sequence[int] | None = None,
        **ids: Any,
    ) -> ScoreResult:
        """Validate, score in one model call, and build records (rows that fail are skipped).

        With ``row_of``, records share rows: record ``i`` is ``entities[i]`` scored from
        ``rows[row_of[i]]`` (a stream's events of one entity, all scored from its stored
        features), so each distinct row is validated and scored once. ``as_of``, the ids and
        the errors' indices are per record either way."""
        if row_of is None:
            return self._finish(
                self.prepare(entities, rows), entities, as_of, source, probabilities, ids
            )
        owner: dict[int, str] = {}
        for i, r in enumerate(row_of):
            owner.setdefault(r, entities[i])
        prepared = self.prepare([owner.get(r, "") for r in range(len(rows))], rows)
        at = dict(zip(prepared.rows, range(len(prepared.rows)), strict=True))
        why = {e.index: e.reason for e in prepared.errors}
        keep: list[int] = []
        take: list[int] = []
        errors: list[RowError] = []
        for i, r in enumerate(row_of):
            k = at.get(r)
            if k is None:
                errors.append(RowError(i, entities[i], why[r]))
            else:
                keep.append(i)
                take.append(k)
        shared = Prepared(prepared.matrix, keep, errors)
        return self._finish(shared, entities, as_of, source, probabilities, ids, take)

    def score_columns(
        self,
        entities: Sequence[str],
        columns: Mapping[str, Any],
        *,
        as_of: Sequence[float] | float,
        source: Source,
        probabilities: bool = False,
        **ids: Any,
    ) -> ScoreResult:
        return self._finish(
            self.prepare_columns(entities, columns), entities, as_of, source, probabilities, ids
        )

    def _finish(
        self,
        prepared: Prepared,
        entities: Sequence[str],
        as_of: Sequence[float] | float,
        source: Source,
        probabilities: bool,
        ids: dict[str, Any],
        take: list[int] | None = None,
    ) -> ScoreResult:
        """Score ``prepared`` and build a record per kept row; with ``take``, record ``k``
        (of input position ``prepared.rows[k]``) is scored from matrix row ``take[k]``."""
        if not prepared.rows:
            return ScoreResult([], prepared.errors)
        prediction = self.runtime.predict(prepared.matrix, probabilities=probabilities)
        if take is not None:
            probs = prediction.probabilities
            prediction = Prediction(
                prediction.scores[take],
                None if probs is None else probs[take],
                prediction.classes,
            )
        keep = prepared.rows
        event_ids = ids.pop("event_ids", None)
        kept_as_of = as_of if isinstance(as_of, int | float) else [as_of[i] for i in keep]
        records = self.records(
            [entities[i] for i in keep],
            prediction,
            as_of=kept_as_of,
            source=source,
            event_ids=None if event_ids is None else [event_ids[i] for i in keep],
            **ids,
        )
        return ScoreResult(records, prepared.errors)


def not_a_number(name: str, value: Any) -> str:
    """The reason a row is rejected for a feature value that is not a number."""
    return f"feature {name!r}: expected a number, got {value!r}"


def _coerce(name: str, value: Any) -> tuple[float | None, str | None]:
    """A value that is not a plain float or int: accept bools and numpy numbers only."""
    if isinstance(value, bool | np.bool_ | np.integer | np.floating):
        return float(value), None
    return None, not_a_number(name, value)


def value_problem(dtype: DType, value: Any) -> str | None:
    """What is wrong with ``value`` given for a feature of ``dtype`` (``None``: nothing).

    Request-time features are checked with this before any step runs, so a value the Scorer
    would reject is a 400 naming the field, not a degraded answer; it words its findings as
    the Scorer words a rejected row.
    """
    cls = value.__class__
    if cls is float:
        if value - value != 0.0:  # NaN or infinite
            return f"expected a finite number, got {value!r}"
        if dtype == "int" and not value.is_integer():
            return f"expected int, got {value!r}"
        return None if dtype in ("float", "int") else _expected(dtype, value)
    if cls is int:
        ok = dtype in ("float", "int") or (dtype == "bool" and value in (0, 1))
        return None if ok else _expected(dtype, value)
    if cls is bool:
        return None if dtype != "str" else _expected(dtype, value)
    if cls is str:
        return None if dtype == "str" else _expected(dtype, value)
    return _expected(dtype, value)


def _expected(dtype: DType, value: Any) -> str:
    wanted = {"float": "a number", "int": "an int", "bool": "true or false", "str": "a string"}
    return f"expected {wanted[dtype]}, got {value!r}"


def _numeric_column(col: Any) -> tuple[Matrix, npt.NDArray[np.bool_] | None]:
    """A column as float64 with NaN for nulls, plus a mask of non-numeric entries (or None)."""
    to_numpy = getattr(col, "to_numpy", None)
    if to_numpy is not None and hasattr(col, "null_count"):  # a pyarrow array or chunked array
        import pyarrow as pa
        import pyarrow.compute as pc

        if (
            pa.types.is_integer(col.type)
            or pa.types.is_floating(col.type)
            or pa.types.is_boolean(col.type)
        ):
            filled = pc.cast(col, pa.float64())
            return np.asarray(filled.to_numpy(zero_copy_only=False), dtype=np.float64), None
        col = col.to_pylist()
    arr = np.asarray(col)
    if arr.dtype.kind in "fiub":
        return arr.astype(np.float64, copy=False), None
    out = np.empty(len(arr), dtype=np.float64)
    bad = np.zeros(len(arr), dtype=bool)
    for i, v in enumerate(arr.tolist()):
        if v is None:
            out[i] = np.nan
        elif isinstance(v, bool | int | float):
            out[i] = float(v)
        else:
            out[i] = np.nan
            bad[i] = True
    return out, bad


def _raw(col: Any, i: int) -> Any:
    try:
        value = col[i]
        return value.as_py() if hasattr(value, "as_py") else value
    except Exception:  # pragma: no cover - only used to word an error
        return "?"
