"""A contract applied to a whole batch of parsed payloads at once: `Contract.to_event`'s columnar twin.

`to_event` checks one payload field by field in Python; at tens of thousands of records per second
that is most of a consumer's CPU. `ColumnBuilder` builds one column per declared field and checks
types, enums, lengths, bounds and event times with Polars over the column. It only decides what is
plainly valid: any row a check cannot clear cheaply (a wrong type, a value out of range, non-ASCII
text, a timestamp not in the common ISO-8601 shape, an unknown field colliding with an attribute) is
*flagged*, and the caller sends flagged rows through `to_event`, which accepts or refuses them with
its precise reason. So the error reasons are `to_event`'s by construction, and for every row the fast
path accepts, its values equal `to_event`'s (`tests/unit/test_columnar.py` checks both on generated
good and bad payloads).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import polars as pl

from etl_platform.events import EARLIEST_EVENT_TIME, MAX_AHEAD_OF_ARRIVAL, InvalidEvent
from etl_platform.pipelines.contract import ARRIVAL, Contract, FieldSpec, fast_canonical_json

# Text the fast path clears: printable ASCII. Anything else (control characters, NUL, non-ASCII that
# may hold a lone surrogate, whitespace Python and Rust strip differently) goes to `to_event`.
_PLAIN_TEXT = r"^[\x20-\x7e]*$"
# The ISO-8601 shapes whose parse by Polars equals `datetime.fromisoformat`'s: a year 2000-2999 date,
# `T`, full seconds (no leap second), 1-6 fraction digits, and `Z` or an offset under 24 hours.
_ISO_DATETIME = r"2\d{3}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])T([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d{1,6})?"
_ISO_OFFSET = r"(Z|[+-]([01]\d|2[0-3]):[0-5]\d)"
_FLOAT_EXACT_INT = 2**53  # ints up to this are exact in float64 (larger ones go to `to_event`)
_LAST_EPOCH_MS = 253_402_300_800_000  # 10000-01-01: later epoch milliseconds overflow `datetime`


@dataclass
class ContractColumns:
    """The contract columns of n payloads (`event_id` null where the payload has none) and the rows
    `to_event` must decide (`flagged`, a boolean Series; those rows' values are meaningless)."""

    columns: dict[str, pl.Series]
    flagged: pl.Series


class ColumnBuilder:
    """Parsed payloads, added one at a time, spread into one value list per declared field (and the
    attributes' canonical JSON), so no payload object outlives its `add`: a batch of dicts kept alive
    would cost the garbage collector more than the checks cost. `columns` then checks every column."""

    def __init__(self, contract: Contract) -> None:
        self.contract = contract
        self.specs = tuple(f for f in contract.fields if f.name != contract.attributes)
        self.values: tuple[list[Any], ...] = tuple([] for _ in self.specs)
        self._getters = tuple(zip((f.name for f in self.specs), (v.append for v in self.values), strict=True))
        self.not_object: list[bool] = []
        self.attributes: list[str | None] = []  # None: to be decided by `to_event`
        self._declared = frozenset(contract.by_name)

    def add(self, payload: Any) -> None:
        """One parsed payload (None, or anything not an object, is flagged)."""
        if type(payload) is not dict:
            self.not_object.append(True)
            for _, append in self._getters:
                append(None)
            self.attributes.append(None)
            return
        try:
            attributes = self._attributes_text(payload)
        except Exception:  # whatever it is, `to_event` decides the row and says what is wrong
            attributes = None
        get = payload.get
        for name, append in self._getters:
            append(get(name))
        self.not_object.append(False)
        self.attributes.append(attributes)

    def _attributes_text(self, obj: dict[str, Any]) -> str | None:
        """The `attributes` column of one payload: the attributes field's object with unknown fields
        merged in, as canonical JSON (`{}` when empty); None (flagged) for an attributes value that is
        not an object, an unknown field under `unknown_fields: reject` or colliding with an
        attribute, or JSON no sink takes."""
        name = self.contract.attributes
        attributes = obj.get(name) if name is not None else None
        if attributes is not None and type(attributes) is not dict:
            return None
        if not obj.keys() <= self._declared:
            if self.contract.unknown_fields == "reject":
                return None
            merged = dict(attributes) if attributes else {}
            for key, value in obj.items():
                if key not in self._declared:
                    if key in merged:
                        return None
                    merged[key] = value
            attributes = merged
        if not attributes:
            return "{}"
        try:
            return fast_canonical_json(name or "attributes", attributes)
        except InvalidEvent:
            return None

    def columns(self, arrivals: pl.Series) -> ContractColumns:
        """The columns, as `to_event` with these `arrivals` would give them, and the flagged rows."""
        contract = self.contract
        n = len(self.not_object)
        flags = [pl.Series(self.not_object, dtype=pl.Boolean)]
        columns: dict[str, pl.Series] = {"event_id": pl.Series("event_id", [None] * n, dtype=pl.String)}
        for spec, values in zip(self.specs, self.values, strict=True):
            series, flagged = _column(spec, values)
            flags.append(flagged)
            column = "event_id" if spec.name == contract.event_id else spec.name
            columns[column] = series.alias(column)
        attributes = pl.Series("attributes", self.attributes, dtype=pl.String)
        flags.append(attributes.is_null())
        if contract.time == ARRIVAL:
            event_time = arrivals
        else:
            event_time = columns[contract.time]
            in_range = (event_time >= EARLIEST_EVENT_TIME) & (event_time <= arrivals + MAX_AHEAD_OF_ARRIVAL)
            flags.append(~in_range.fill_null(True))
        columns.setdefault("event_time", event_time.alias("event_time"))
        columns["attributes"] = attributes
        flagged = pl.DataFrame(flags, schema=[f"f{i}" for i in range(len(flags))]).select(
            pl.any_horizontal(pl.all()).fill_null(True)
        )
        return ContractColumns(columns, flagged.to_series())


def _column(spec: FieldSpec, values: list[Any]) -> tuple[pl.Series, pl.Series]:
    """One field's column and its flagged rows: absent or null where required, a value of another
    type, or one that fails the field's constraints."""
    builder = _BUILDERS[spec.type]
    series, wrong_type = builder(spec, values)
    flagged = wrong_type | _constraint_flags(spec, series).fill_null(False)
    if spec.required:  # a null is a missing value, or one of a wrong type (flagged already)
        flagged = flagged | series.is_null()
    return series, flagged


_NONE = type(None)


def _kept(
    values: list[Any], dtype: pl.DataType, convert: Any, exact: frozenset[type] = frozenset()
) -> tuple[pl.Series, pl.Series]:
    """Each value converted by `convert` (None: refused), and the wrong types: present but refused.
    When every value is of an `exact` type (or None), the values are taken as they are, without a
    look at each (the common batch)."""
    if exact and set(map(type, values)) <= exact | {_NONE}:
        return pl.Series(values, dtype=dtype, strict=True), pl.zeros(len(values), pl.Boolean, eager=True)
    kept = [convert(v) for v in values]
    wrong = [v is not None and k is None for v, k in zip(values, kept, strict=True)]
    return pl.Series(kept, dtype=dtype, strict=True), pl.Series(wrong, dtype=pl.Boolean)


def _as_str(value: Any) -> str | None:
    return value if type(value) is str else None


def _as_float(value: Any) -> float | None:
    if type(value) is float:
        return value
    if type(value) is int and -_FLOAT_EXACT_INT <= value <= _FLOAT_EXACT_INT:
        return float(value)
    return None


def _as_int(value: Any) -> int | None:
    # Within 2**53 a bound (a float) compares with the value in Polars exactly as in Python.
    return value if type(value) is int and -_FLOAT_EXACT_INT <= value <= _FLOAT_EXACT_INT else None


def _as_bool(value: Any) -> bool | None:
    return value if type(value) is bool else None


def _as_epoch_millis(value: Any) -> int | None:
    return value if type(value) is int and 0 <= value < _LAST_EPOCH_MS else None


def _string(spec: FieldSpec, values: list[Any]) -> tuple[pl.Series, pl.Series]:
    return _kept(values, pl.String(), _as_str, frozenset({str}))


def _float(spec: FieldSpec, values: list[Any]) -> tuple[pl.Series, pl.Series]:
    return _kept(values, pl.Float64(), _as_float, frozenset({float}))


def _int(spec: FieldSpec, values: list[Any]) -> tuple[pl.Series, pl.Series]:
    return _kept(values, pl.Int64(), _as_int)


def _bool(spec: FieldSpec, values: list[Any]) -> tuple[pl.Series, pl.Series]:
    return _kept(values, pl.Boolean(), _as_bool, frozenset({bool}))


def _timestamp(spec: FieldSpec, values: list[Any]) -> tuple[pl.Series, pl.Series]:
    """ISO-8601 strings of the common shape (naive ones too when the field reads them as UTC) and
    integer epoch milliseconds; any other present value is flagged for `to_event`."""
    text, not_text = _kept(values, pl.String(), _as_str, frozenset({str}))
    naive_as_utc = spec.naive_timestamps == "utc"
    shaped = text.str.contains(f"^{_ISO_DATETIME}{_ISO_OFFSET}{'?' if naive_as_utc else ''}$")
    iso = text.str.replace(r"Z$", "+00:00")
    if naive_as_utc:
        iso = iso.str.replace(f"^({_ISO_DATETIME})$", "${1}+00:00")
    parsed = (
        pl.select(pl.when(shaped).then(iso))
        .to_series()
        .str.to_datetime("%Y-%m-%dT%H:%M:%S%.f%z", time_unit="us", time_zone="UTC", strict=False)
    )
    if not not_text.any():  # only strings (the common batch)
        return parsed, text.is_not_null() & parsed.is_null()
    millis, _ = _kept(values, pl.Int64(), _as_epoch_millis)
    series = pl.select(pl.coalesce(parsed, (millis * 1000).cast(pl.Datetime("us", "UTC")))).to_series()
    # Present but of no cleared shape: a string of another shape, a float, a bool, a container.
    present = pl.Series([v is not None for v in values], dtype=pl.Boolean)
    return series, present & series.is_null()


def _json(spec: FieldSpec, values: list[Any]) -> tuple[pl.Series, pl.Series]:
    texts: list[str | None] = []
    wrong: list[bool] = []
    for value in values:
        if value is None:
            texts.append(None)
            wrong.append(False)
            continue
        try:
            text = fast_canonical_json(spec.name, value)
        except InvalidEvent:
            text = None
        texts.append(text)
        wrong.append(text is None)
    return pl.Series(texts, dtype=pl.String), pl.Series(wrong, dtype=pl.Boolean)


def _object(spec: FieldSpec, values: list[Any]) -> tuple[pl.Series, pl.Series]:
    # Only the attributes field may be an object, and it is built by `_attributes`.
    raise AssertionError(f"field {spec.name}: an object field is the attributes field")


_BUILDERS = {
    "string": _string,
    "float": _float,
    "int": _int,
    "bool": _bool,
    "timestamp": _timestamp,
    "json": _json,
    "object": _object,
}


def _constraint_flags(spec: FieldSpec, series: pl.Series) -> pl.Series:
    """Rows whose present value fails the field's constraints (or is text the fast path does not clear)."""
    out = pl.Series([False] * series.len(), dtype=pl.Boolean)
    if spec.type == "string":
        if spec.values is not None:
            return ~series.is_in(list(spec.values))
        out = ~series.str.contains(_PLAIN_TEXT) | (series.str.strip_chars(" ").str.len_bytes() == 0)
        if spec.max_length is not None:
            out = out | (series.str.len_bytes() > spec.max_length)
    elif spec.type in ("float", "int"):
        if spec.type == "float":
            out = ~series.is_finite()
        if spec.minimum is not None:
            out = out | (series < spec.minimum)
        if spec.maximum is not None:
            out = out | (series > spec.maximum)
    return out


def arrival_series(arrivals: Sequence[datetime]) -> pl.Series:
    """Record arrival times as the event frame's `arrival_time` column."""
    return pl.Series("arrival_time", arrivals, dtype=pl.Datetime("us", "UTC"))
