"""Stream events: raw entries as a source delivers them, and validation against a stream's fields.

A source hands the consumer :class:`RawEntry` objects (a delivery id, the payload, how often
it was delivered). :func:`decode` turns one into an :class:`Event` or says why it cannot:
bad JSON, an event or a string field over its size limit, a missing entity, id or time, a
value of the wrong type, or an event time that is not finite or lies too far in the future
or the past. The ingest endpoint uses :func:`validate` on the same rules, so an event it
accepts is one the consumer accepts too.

:func:`decode_batch` decodes a micro-batch: the common case (JSON objects whose values
already have their fields' types) column by column, with the time bounds checked on an
array; every entry it does not recognise as valid goes through :func:`decode`, so the rules
and the reasons are those of :func:`validate`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson

from hybridserve.config import StreamConfig
from hybridserve.errors import InvalidInput


@dataclass(slots=True)
class RawEntry:
    """One delivery of one entry: the source's id for it, its payload, its delivery count."""

    id: str
    payload: bytes | dict[str, str]
    """JSON bytes, or (an external producer's multi-field Redis entry) a field mapping."""
    deliveries: int = 1
    read_at: float = 0.0

    def raw_text(self) -> str:
        if isinstance(self.payload, bytes):
            return self.payload.decode("utf-8", "replace")
        return orjson.dumps(self.payload).decode()


@dataclass(slots=True)
class Event:
    entry: RawEntry
    event_id: str
    entity: str
    time: float
    values: dict[str, Any]


class BadEvent(InvalidInput):
    """An event that does not match its stream's fields (the message names the field)."""


class EventTooLarge(BadEvent):
    """An event, or one of its string fields, over the stream's size limit."""

    status = 413


def parse_timestamp(value: Any) -> float:
    """Epoch seconds from a number (seconds) or an ISO-8601 string (``Z`` means UTC)."""
    if value.__class__ is float or value.__class__ is int:
        ts = float(value)
    elif isinstance(value, str):
        try:
            ts = float(value)
        except ValueError:
            parsed = datetime.fromisoformat(value)
            ts = (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
    else:
        raise ValueError(f"expected epoch seconds or an ISO time, got {value!r}")
    if not math.isfinite(ts):  # "NaN" and "inf" parse as floats
        raise ValueError("not a finite time")
    return ts


_NATIVE: dict[str, frozenset[type]] = {
    "float": frozenset({float, int}),
    "int": frozenset({int}),
    "str": frozenset({str}),
    "bool": frozenset({bool}),
    "timestamp": frozenset({float, int}),
}
"""Per kind, the classes of parsed JSON values it takes without parsing a string: what
:func:`decode_batch` checks a batch's columns against (anything else goes through
:func:`validate`)."""


def _coerce(kind: str, value: Any, text: bool) -> Any:
    """``value`` as ``kind``; strings are parsed only for field-mapping (text) payloads."""
    cls = value.__class__
    if kind == "timestamp":
        return parse_timestamp(value)
    if cls in _NATIVE[kind]:
        return float(value) if kind == "float" else value
    if kind == "float":
        if text and cls is str:
            return float(value)
    elif kind == "int":
        if cls is float and value.is_integer():
            return int(value)
        if text and cls is str:
            return int(value)
    elif kind == "bool" and text and value in ("true", "false", "1", "0"):
        return value in ("true", "1")
    raise ValueError(f"expected {kind}, got {value!r}")


def check_size(cfg: StreamConfig, size: int) -> None:
    """:class:`EventTooLarge` for a payload of ``size`` bytes over ``max_event_size``."""
    if size > cfg.max_event_size:
        raise EventTooLarge(
            f"event is {size} bytes, more than max_event_size ({cfg.max_event_size})",
            size=size,
            limit=cfg.max_event_size,
        )


def _string_too_long(value: str, limit: int) -> bool:
    # UTF-8 needs at most 4 bytes a character: most strings are decided without encoding.
    n = len(value)
    return n > limit or (4 * n > limit and len(value.encode()) > limit)


def validate(
    cfg: StreamConfig, obj: Any, *, at: float, size: int, text: bool = False
) -> tuple[str, str, float, dict[str, Any]]:
    """``(event_id, entity, time, values)`` of one event of ``size`` bytes, or
    :class:`BadEvent` naming the field.

    The entity, id and time fields are required; other declared fields may be absent or null.
    The time must lie within ``max_past`` before and ``max_future`` after ``at``.
    """
    check_size(cfg, size)
    if not isinstance(obj, dict):
        raise BadEvent(f"expected a JSON object, got {type(obj).__name__}")
    values: dict[str, Any] = {}
    limit = cfg.max_field_size
    for name, kind in cfg.fields.items():
        value = obj.get(name)
        if value is None:
            if name == cfg.entity_field or name == cfg.id_field or name == cfg.time_field:
                raise BadEvent(f"{name}: required field is missing", field=name)
            continue
        if value.__class__ is str and _string_too_long(value, limit):
            raise EventTooLarge(
                f"{name}: longer than max_field_size ({limit} bytes)", field=name, limit=limit
            )
        try:
            values[name] = _coerce(kind, value, text)
        except (ValueError, TypeError, OverflowError):
            raise BadEvent(f"{name}: expected {kind}, got {value!r}", field=name) from None
    entity, event_id = values[cfg.entity_field], values[cfg.id_field]
    if not isinstance(entity, str) or not entity:
        raise BadEvent(f"{cfg.entity_field}: expected a non-empty key", field=cfg.entity_field)
    if not isinstance(event_id, str) or not event_id:
        event_id = str(event_id)
    ts = float(values[cfg.time_field])
    if ts > at + cfg.max_future:
        raise BadEvent(
            f"{cfg.time_field}: {ts:.3f} is more than {cfg.max_future:g}s in the future "
            "(max_future)",
            field=cfg.time_field,
        )
    past = cfg.past_bound
    if ts < at - past:
        raise BadEvent(
            f"{cfg.time_field}: {ts:.3f} is more than {past:g}s in the past (max_past)",
            field=cfg.time_field,
        )
    return event_id, entity, ts, values


def decode(cfg: StreamConfig, entry: RawEntry, at: float) -> Event | str:
    """The event in ``entry``, or the reason it is dead-lettered."""
    payload = entry.payload
    try:
        if isinstance(payload, bytes):
            check_size(cfg, len(payload))  # before parsing it
            try:
                obj = orjson.loads(payload)
            except orjson.JSONDecodeError as exc:
                return f"bad JSON: {exc}"
            event_id, entity, ts, values = validate(cfg, obj, at=at, size=len(payload))
        else:
            size = len(orjson.dumps(payload))
            event_id, entity, ts, values = validate(cfg, payload, at=at, size=size, text=True)
    except BadEvent as exc:
        return exc.message
    return Event(entry, event_id, entity, ts, values)


def decode_batch(cfg: StreamConfig, entries: Sequence[RawEntry], at: float) -> list[Event | str]:
    """:func:`decode` of each entry, a batch at a time."""
    try:
        out = _decode_columns(cfg, entries, at)
    except Exception:  # anything unforeseen in the column path: the rules one at a time
        out = [None] * len(entries)
    return [decode(cfg, e, at) if r is None else r for e, r in zip(entries, out, strict=True)]


def _decode_columns(
    cfg: StreamConfig, entries: Sequence[RawEntry], at: float
) -> list[Event | str | None]:
    """The events the column path vouches for (``None`` for the entries it leaves)."""
    out: list[Event | str | None] = [None] * len(entries)
    objs: list[dict[str, Any]] = []
    rows: list[int] = []
    for i, entry in enumerate(entries):
        p = entry.payload
        if p.__class__ is bytes and len(p) <= cfg.max_event_size:
            try:
                obj = orjson.loads(p)
            except orjson.JSONDecodeError:
                continue
            if obj.__class__ is dict:
                objs.append(obj)
                rows.append(i)
    ok = np.ones(len(objs), dtype=bool)
    required = {cfg.entity_field, cfg.id_field, cfg.time_field}
    columns: list[tuple[str, list[Any]]] = []
    for name, kind in cfg.fields.items():
        col = [o.get(name) for o in objs]
        columns.append((name, _native_column(col, kind, name in required, cfg, ok)))
    cols = dict(columns)
    if objs:
        times = cols[cfg.time_field]
        ts = np.array([v if v.__class__ is float else 0.0 for v in times], dtype=np.float64)
        ok &= (ts <= at + cfg.max_future) & (ts >= at - cfg.past_bound)
        ok &= np.fromiter((bool(e) for e in cols[cfg.entity_field]), bool, len(objs))
    entity_col, id_col, time_col = cols[cfg.entity_field], cols[cfg.id_field], cols[cfg.time_field]
    for k in np.flatnonzero(ok).tolist():
        i, eid = rows[k], id_col[k]
        values = {name: col[k] for name, col in columns if col[k] is not None}
        eid = eid if eid.__class__ is str and eid else str(eid)
        out[i] = Event(entries[i], eid, entity_col[k], float(time_col[k]), values)
    return out


def _native_column(
    col: list[Any], kind: str, required: bool, cfg: StreamConfig, ok: np.ndarray
) -> list[Any]:
    """``col`` converted as :func:`_coerce` would; rows it cannot vouch for are cleared in
    ``ok`` (they go through :func:`validate`)."""
    native = _NATIVE[kind]
    classes = set(map(type, col))
    classes.discard(type(None))
    if not classes <= native or (required and None in col):
        for k, v in enumerate(col):
            if (v is None and required) or (v is not None and v.__class__ not in native):
                ok[k] = False
    if kind == "str" and str in classes:
        limit = cfg.max_field_size
        if 4 * max(len(v) for v in col if v.__class__ is str) > limit:
            for k, v in enumerate(col):
                if v.__class__ is str and _string_too_long(v, limit):
                    ok[k] = False
    if kind in ("float", "timestamp") and int in classes:
        converted = []
        for k, v in enumerate(col):
            if v.__class__ is int:
                try:
                    v = float(v)
                except OverflowError:  # beyond a float: validate says so
                    ok[k], v = False, None
            converted.append(v)
        return converted
    return col
