"""A stream contract: what one pipeline's records look like and how they map to the platform's event.

A contract names the payload's fields (type, whether required, constraints) and their roles: the
analytics keys, the value, the event time (a field, or the record's arrival time as Kinesis
Analytics' ROWTIME) and the event id (a field, or none: ids derive from the stream position). Fields
the contract does not name are kept, never dropped: merged into the `attributes` JSON object (or,
with `unknown_fields: reject`, the record goes to errors/ with the field named).

A decoded event carries the platform's columns (`event_id`, `event_time`, `attributes` and the stream
position) plus every declared field under its contract name, so processed Parquet, the warehouse
table and the search mapping follow the contract. The default contract is the platform's original
envelope field for field, so a deployment that declares nothing behaves as before.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import polars as pl

from etl_platform.events import (
    MAX_ATTRIBUTES_BYTES,
    MAX_EVENT_ID_LEN,
    SOURCES,
    InvalidEvent,
    check_event_time,
    check_text,
    parse_event_time,
)

_ABSENT = object()
FIELD_TYPES = ("string", "float", "int", "bool", "timestamp", "json", "object")
FORMATS = ("json",)  # each record (or KPL sub-record) one JSON object; gzip detected by its magic bytes
UNKNOWN_FIELD_POLICIES = ("attributes", "reject")
ARRIVAL = "arrival"  # `time: arrival`: the record's arrival time is the event time (ROWTIME)
NAIVE_POLICIES = ("reject", "utc")

# Columns the platform adds to every event (the stream position and the derived ones), so no field
# may take their names.
POSITION_COLUMNS = ("shard_id", "sequence_number", "sub_sequence", "arrival_time", "partition_key")
DERIVED_COLUMNS = ("shard_depth", "avg_value", "anomaly_status", "event_date")
FIELD_NAME_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
MAX_INT64 = 2**63 - 1

_POLARS_TYPES: dict[str, pl.DataType] = {
    "string": pl.String(),
    "float": pl.Float64(),
    "int": pl.Int64(),
    "bool": pl.Boolean(),
    "timestamp": pl.Datetime("us", "UTC"),
    "json": pl.String(),  # canonical JSON text
}


@dataclass(frozen=True)
class FieldSpec:
    """One payload field: its type and constraints. `values` (strings) and `minimum`/`maximum`
    (numbers) are optional; `naive_timestamps: utc` reads a timestamp without offset as UTC."""

    name: str
    type: str
    required: bool = False
    max_length: int | None = None
    values: tuple[str, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    naive_timestamps: str = "reject"
    description: str = ""
    _allowed: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_allowed", frozenset(self.values or ()))

    @property
    def dtype(self) -> pl.DataType:
        return _POLARS_TYPES[self.type]

    def converter(self) -> Any:
        """The function from a present (non-null) JSON value to the field's value, checked and
        normalised; it raises `InvalidEvent` naming the field."""
        return getattr(self, f"_{self.type}")

    def _string(self, raw: Any) -> str:
        name = self.name
        if self.values is not None:
            if not isinstance(raw, str) or raw not in self._allowed:
                raise InvalidEvent(name, f"{str(raw)[:64]!r} is not one of {', '.join(sorted(self.values))}")
            return raw
        if not isinstance(raw, str):
            raise InvalidEvent(name, f"must be a string, got {type(raw).__name__}")
        if not raw.strip():
            raise InvalidEvent(name, "must be a non-empty string")
        if self.max_length is not None and len(raw) > self.max_length:
            raise InvalidEvent(name, f"longer than {self.max_length} characters ({len(raw)})")
        check_text(name, raw)
        return raw

    def _bounds(self, value: float) -> None:
        if self.minimum is not None and value < self.minimum:
            raise InvalidEvent(self.name, f"{value!r} is below the minimum {self.minimum:g}")
        if self.maximum is not None and value > self.maximum:
            raise InvalidEvent(self.name, f"{value!r} is above the maximum {self.maximum:g}")

    def _float(self, raw: Any) -> float:
        if type(raw) is float:  # the common case, checked first: a JSON number with a fraction
            value = raw
        elif isinstance(raw, int) and not isinstance(raw, bool):
            try:
                value = float(raw)
            except OverflowError:
                raise InvalidEvent(self.name, "integer too large for float64") from None
        else:
            raise InvalidEvent(self.name, f"must be a number, got {type(raw).__name__}")
        if not math.isfinite(value):
            raise InvalidEvent(self.name, f"must be finite, got {value}")
        self._bounds(value)
        return value

    def _int(self, raw: Any) -> int:
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise InvalidEvent(self.name, f"must be a number, got {type(raw).__name__}")
        if isinstance(raw, float):
            if not raw.is_integer():
                raise InvalidEvent(self.name, f"must be an integer, got {raw!r}")
            raw = int(raw)
        if abs(raw) > MAX_INT64:
            raise InvalidEvent(self.name, "integer out of the 64-bit range")
        self._bounds(raw)
        return raw

    def _bool(self, raw: Any) -> bool:
        if not isinstance(raw, bool):
            raise InvalidEvent(self.name, f"must be true or false, got {type(raw).__name__}")
        return raw

    def _timestamp(self, raw: Any) -> datetime:
        if self.naive_timestamps == "utc" and isinstance(raw, str):
            try:
                parsed = datetime.fromisoformat(raw.strip())
            except ValueError:
                parsed = None
            if parsed is not None and parsed.tzinfo is None:
                return parsed.replace(tzinfo=UTC)
        return parse_event_time(raw, self.name)

    def _json(self, raw: Any) -> str:
        return canonical_json(self.name, raw)

    def _object(self, raw: Any) -> dict[str, Any]:
        if not isinstance(raw, dict):
            raise InvalidEvent(self.name, f"must be an object, got {type(raw).__name__}")
        return raw


# One encoder for every record: `json.dumps` with options builds a new one per call.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_ORJSON_SORTED = orjson.OPT_SORT_KEYS
# orjson writes floats as `repr` does except below 1e-4 (`1e-05` vs `0.00001`, `1.5e-07` vs `1.5e-7`).
_ORJSON_SMALLEST = 1e-4
# orjson reads an integer beyond the 64-bit range as a float (json.loads keeps the int): such a float
# is at least this large, so larger floats are left to the standard encoder and to json.loads' reading.
_ORJSON_LARGEST = 2.0**63


def canonical_json(name: str, raw: Any) -> str:
    """Sorted keys, no spaces: equal values give equal strings on replay; refuses what no sink takes.

    The text is `json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False)`'s: written by
    orjson when it writes it alike (`fast_canonical_json`), else by the standard encoder."""
    text = fast_canonical_json(name, raw)
    if text is not None:
        return text
    try:
        text = _CANONICAL.encode(raw)
    except ValueError:
        raise InvalidEvent(name, "contains a non-finite number (NaN or Infinity)") from None
    except RecursionError:
        raise InvalidEvent(name, "nested too deeply") from None
    try:
        size = len(text.encode("utf-8"))  # NUL inside is escaped (\\u0000) by json.dumps: no check needed
    except UnicodeEncodeError as exc:
        raise InvalidEvent(name, f"is not valid Unicode (a lone surrogate at character {exc.start})") from None
    if size > MAX_ATTRIBUTES_BYTES:
        raise InvalidEvent(name, f"{size} bytes of JSON, over the warehouse's {MAX_ATTRIBUTES_BYTES}-byte limit")
    return text


def fast_canonical_json(name: str, raw: Any) -> str | None:
    """`canonical_json`'s text written by orjson, ten times faster, when orjson writes it alike: None
    when the standard encoder must decide (a float under 1e-4 or non-finite, which orjson writes
    otherwise; a float of 2**63 or more, which may be an integer orjson read as a float; a lone
    surrogate, an integer over 64 bits or deep nesting, which orjson refuses). Raises `InvalidEvent`
    for JSON over the warehouse's size limit."""
    if not _orjson_writes_alike(raw, 0):
        return None
    try:
        data = orjson.dumps(raw, option=_ORJSON_SORTED)
    except orjson.JSONEncodeError:
        return None
    if len(data) > MAX_ATTRIBUTES_BYTES:
        raise InvalidEvent(name, f"{len(data)} bytes of JSON, over the warehouse's {MAX_ATTRIBUTES_BYTES}-byte limit")
    return data.decode("utf-8")


def _orjson_writes_alike(value: Any, depth: int) -> bool:
    """Whether `value` holds only JSON's own types and floats orjson writes as `repr` does, read as
    json.loads reads them (see `fast_canonical_json`). Keys need no look: orjson refuses any but str."""
    if depth > 64:  # deeper than any payload worth the fast path
        return False
    kind = type(value)
    if kind is dict:
        items = value.values()
    elif kind is list:
        items = value
    else:
        items = (value,)
    for item in items:
        kind = type(item)
        if kind is str or kind is int or kind is bool or item is None:
            continue
        if kind is float:
            if item != 0.0 and not _ORJSON_SMALLEST <= abs(item) < _ORJSON_LARGEST:
                return False
        elif kind is dict or kind is list:
            if not _orjson_writes_alike(item, depth + 1):
                return False
        else:
            return False
    return True


@dataclass(frozen=True)
class Contract:
    """The record format, the fields and their roles (see the module docstring)."""

    fields: tuple[FieldSpec, ...]
    keys: tuple[str, ...]
    value: str
    time: str  # a timestamp field's name, or ARRIVAL
    event_id: str | None = None  # a string field's name; None: ids derive from the stream position
    attributes: str | None = None  # an object field whose keys are the attributes, unknown fields merged in
    unknown_fields: str = "attributes"
    format: str = "json"
    by_name: Mapping[str, FieldSpec] = field(init=False, repr=False, compare=False)

    _plan: tuple[tuple[str, str, bool, Any], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_name", {f.name: f for f in self.fields})
        # Per field, once: where its value goes (the id, the attributes or its own column), whether it
        # is required, and its converter; `to_event` runs for every record.
        slots = {self.event_id: "event_id", self.attributes: "attributes"}
        plan = tuple((f.name, slots.get(f.name, f.name), f.required, f.converter()) for f in self.fields)
        object.__setattr__(self, "_plan", plan)

    # --- the decoded event ------------------------------------------------------------------------
    @property
    def column_fields(self) -> tuple[FieldSpec, ...]:
        """Declared fields that become columns under their names (the id and attributes fields have
        the platform's columns `event_id` and `attributes`)."""
        return tuple(f for f in self.fields if f.name not in (self.event_id, self.attributes))

    def event_schema(self) -> dict[str, pl.DataType]:
        """The decoded event's columns in order: `event_id`, the fields, `event_time` (unless a field
        of that name is the time), `attributes`, then the stream position."""
        schema: dict[str, pl.DataType] = {"event_id": pl.String()}
        schema.update({f.name: f.dtype for f in self.column_fields})
        schema.setdefault("event_time", pl.Datetime("us", "UTC"))
        schema["attributes"] = pl.String()
        schema.update(
            {
                "shard_id": pl.String(),
                "sequence_number": pl.String(),
                "sub_sequence": pl.Int64(),
                "arrival_time": pl.Datetime("us", "UTC"),
                "partition_key": pl.String(),
            }
        )
        return schema

    def raw_schema(self) -> dict[str, pl.DataType]:
        """A raw lake object's columns: the event and the generation of its shard (`shard_depth`)."""
        return {**self.event_schema(), "shard_depth": pl.Int32()}

    def processed_schema(self) -> dict[str, pl.DataType]:
        """A processed Parquet object's columns: the raw ones and the two analytics columns."""
        return {**self.raw_schema(), "avg_value": pl.Float64(), "anomaly_status": pl.String()}

    @property
    def optional_fields(self) -> tuple[str, ...]:
        """Fields that may be absent from a record, and so from data older than the field."""
        return tuple(f.name for f in self.column_fields if not f.required)

    @property
    def never_null(self) -> tuple[str, ...]:
        """Columns every processed row has a value in (what the lake check counts nulls of)."""
        required = tuple(
            f.name for f in self.column_fields if f.required and (f.name in self.keys or f.name == self.value)
        )
        return ("event_id", *required, "event_time", "anomaly_status")

    def to_payload(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """A decoded event back to a payload this contract takes (for re-driving a record that failed
        after decoding): the fields under their names, the id, the attributes as they came."""
        attributes = json.loads(event.get("attributes") or "{}")
        payload: dict[str, Any] = {} if self.attributes is not None else dict(attributes)
        for spec in self.fields:
            if spec.name == self.attributes:
                payload[spec.name] = attributes
            elif spec.name == self.event_id:
                payload[spec.name] = event.get("event_id")
            elif event.get(spec.name) is not None:
                value = event[spec.name]
                payload[spec.name] = json.loads(value) if spec.type == "json" else value
        return payload

    def to_event(self, obj: Any, arrival: datetime | None) -> dict[str, Any]:
        """A parsed JSON payload to the event's contract columns (`event_id` None when the contract
        has no id field, or the payload none); raise `InvalidEvent` naming the first bad field.

        The event time is checked against `arrival` (`events.check_event_time`); without an arrival
        (an event not read from a stream) it is not, and a `time: arrival` contract refuses it."""
        if not isinstance(obj, dict):
            raise InvalidEvent("<root>", f"must be a JSON object, got {type(obj).__name__}")
        out: dict[str, Any] = {"event_id": None}
        attributes: dict[str, Any] = {}
        present = 0  # declared fields the payload has (even as null): fewer than its keys means unknown ones
        for name, slot, required, convert in self._plan:
            raw = obj.get(name, _ABSENT)
            if raw is _ABSENT or raw is None:
                if required:
                    raise InvalidEvent(name, "missing")
                value = None
                present += raw is None
            else:
                value = convert(raw)
                present += 1
            if slot == "attributes":
                attributes = dict(value) if value else attributes
            else:
                out[slot] = value
        if len(obj) > present:
            unknown = [name for name in obj if name not in self.by_name]
            if self.unknown_fields == "reject":
                raise InvalidEvent(unknown[0], "is not a field of the contract (unknown_fields: reject)")
            for name in unknown:
                if name in attributes:
                    raise InvalidEvent(name, f"is both a top-level field and a key of {self.attributes}")
                attributes[name] = obj[name]
        out["attributes"] = canonical_json(self.attributes or "attributes", attributes) if attributes else "{}"
        if self.time == ARRIVAL:
            if arrival is None:
                raise InvalidEvent("arrival_time", "missing: this contract's event time is the record's arrival")
            out["event_time"] = arrival
        else:
            out["event_time"] = out[self.time]
            if arrival is not None:
                check_event_time_of(self.time, out["event_time"], arrival)
        return out


def check_event_time_of(name: str, moment: datetime, arrival: datetime) -> None:
    """`events.check_event_time`, naming the contract's time field."""
    try:
        check_event_time(moment, arrival)
    except InvalidEvent as exc:
        raise InvalidEvent(name, exc.message) from None


# The platform's original envelope, field for field.
DEFAULT_CONTRACT = Contract(
    fields=(
        FieldSpec("source", "string", required=True, max_length=16, values=tuple(sorted(SOURCES))),
        FieldSpec("event_id", "string", max_length=MAX_EVENT_ID_LEN),
        FieldSpec("user_id", "string", required=True, max_length=64),
        FieldSpec("event_type", "string", required=True, max_length=32),
        FieldSpec("event_time", "timestamp", required=True),
        FieldSpec("value", "float", required=True),
        FieldSpec("attributes", "object"),
    ),
    keys=("user_id", "event_type"),
    value="value",
    time="event_time",
    event_id="event_id",
    attributes="attributes",
)


def validate_envelope(obj: Any) -> dict[str, Any]:
    """An envelope of the default contract, checked and normalised (no stream position, so the event
    time is not compared with an arrival): `event_id` (None when absent), `source`, `user_id`,
    `event_type`, `event_time` (UTC), `value` (float), `attributes` (canonical JSON)."""
    return DEFAULT_CONTRACT.to_event(obj, None)
