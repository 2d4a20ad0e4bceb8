"""The warehouse tables' columns, their SQL types per dialect, and schema-drift detection.

Both tables (`events`, `anomalies`) hold every processed column plus `event_date`, the UTC day of
`event_time` that partitions loads. Columns are described once, by a dialect-neutral *kind*, so the
PostgreSQL and Redshift DDL cannot disagree. Timestamps are `TIMESTAMP` (without time zone) holding
UTC: date and hour truncation in SQL then never depends on a session's time zone setting.

Drift: a processed Parquet object may carry a column the table lacks (a new analytics field). The
loader never drops it silently: `detect_drift` reports it and the loader either fails naming the
column (`on_drift="fail"`, the default) or adds it with a mapped type (`on_drift="add"`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import pyarrow as pa

from etl_platform.events import SEQUENCE_WIDTH
from etl_platform.pipelines import Contract

DIALECTS = ("postgres", "redshift")
TABLES = ("events", "anomalies")
DRIFT_POLICIES = ("fail", "add")
DEFAULT_DRIFT_POLICY = "fail"
PARTITION_COLUMN = "event_date"
IDENTIFIER_RE = re.compile(r"^[a-z_][a-z0-9_]{0,126}$")

# Redshift VARCHAR lengths count bytes, PostgreSQL's count characters: a UTF-8 character takes up to
# four bytes, so a Redshift column sized from a character limit is four times as long (capped).
REDSHIFT_MAX_VARCHAR = 65535


class SchemaDriftError(ValueError):
    """Processed data and the warehouse table disagree; the message names every column involved."""

    def __init__(self, message: str, columns: Iterable[str] = ()) -> None:
        super().__init__(message)
        self.columns = tuple(columns)


@dataclass(frozen=True)
class Column:
    """One warehouse column: name, dialect-neutral kind, character limit for strings, nullability."""

    name: str
    kind: str  # string | int16 | int32 | int64 | float32 | float64 | bool | timestamp | date
    length: int | None = None
    nullable: bool = True

    def sql_type(self, dialect: str) -> str:
        return sql_type(self.kind, dialect, self.length)


KINDS = ("string", "int16", "int32", "int64", "float32", "float64", "bool", "timestamp", "date")

# Every processed column (etl_platform.events.EVENT_SCHEMA + the analytics fields), sized from the
# limits decoding enforces, then the derived partition column.
EVENT_COLUMNS: tuple[Column, ...] = (
    Column("event_id", "string", 128, nullable=False),
    Column("source", "string", 16),
    Column("user_id", "string", 64, nullable=False),
    Column("event_type", "string", 32),
    Column("event_time", "timestamp", nullable=False),
    Column("value", "float64"),
    Column("attributes", "string"),
    Column("shard_id", "string", 128),
    Column("sequence_number", "string", SEQUENCE_WIDTH),
    Column("sub_sequence", "int64"),
    Column("arrival_time", "timestamp"),
    Column("partition_key", "string", 256),
    Column("shard_depth", "int32"),
    Column("avg_value", "float64"),
    Column("anomaly_status", "string", 16),
)
DATA_COLUMNS: tuple[str, ...] = tuple(c.name for c in EVENT_COLUMNS)
TABLE_COLUMNS: tuple[Column, ...] = (*EVENT_COLUMNS, Column(PARTITION_COLUMN, "date", nullable=False))
REQUIRED_COLUMNS = frozenset(DATA_COLUMNS)
# Stream order, for keeping the first delivery when an event_id arrives twice (a producer retry).
ARRIVAL_ORDER = ("shard_depth", "sequence_number", "sub_sequence")

_POSITION_COLUMNS = tuple(c for c in EVENT_COLUMNS if c.name in ("shard_id", "sequence_number", "sub_sequence"))
_FIELD_KINDS = {"string": "string", "float": "float64", "int": "int64", "bool": "bool", "timestamp": "timestamp"}


@dataclass(frozen=True)
class TableLayout:
    """A pipeline's `events`/`anomalies` columns: every processed column (`data`, in table order), the
    ones processed data must carry (`required`; an optional field added to a contract later may be
    absent from older data and loads as NULL) and Redshift's distribution key."""

    data: tuple[Column, ...]
    required: frozenset[str]
    dist_key: str

    @property
    def columns(self) -> tuple[Column, ...]:
        """The table's columns: the data columns, then the partition column."""
        return (*self.data, Column(PARTITION_COLUMN, "date", nullable=False))

    @property
    def by_name(self) -> dict[str, Column]:
        return {c.name: c for c in self.data}


DEFAULT_LAYOUT = TableLayout(EVENT_COLUMNS, REQUIRED_COLUMNS, "user_id")


def table_layout(contract: Contract) -> TableLayout:
    """The tables of a pipeline with `contract`: `event_id`, the contract's fields (strings sized by
    `max_length` or their longest allowed value), `event_time`, `attributes`, the stream position and
    the analytics columns. The first key is the distribution key; it and the time field are NOT NULL
    when required (every other field may be absent from older data). For the
    default contract this is exactly `DEFAULT_LAYOUT`."""
    core = {c.name: c for c in EVENT_COLUMNS}
    columns = [core["event_id"]]
    for spec in contract.column_fields:
        kind = "string" if spec.type == "json" else _FIELD_KINDS[spec.type]
        length = spec.max_length
        if kind == "string" and spec.values:
            length = max(length or 0, *(len(v) for v in spec.values))
        not_null = spec.required and spec.name in (contract.keys[0], contract.time)
        columns.append(Column(spec.name, kind, length if kind == "string" else None, not not_null))
    if "event_time" not in {c.name for c in columns}:
        columns.append(core["event_time"])
    columns += [
        core[name] for name in DATA_COLUMNS if name not in {c.name for c in columns} and name not in _DEFAULT_FIELDS
    ]
    optional = {f.name for f in contract.column_fields if not f.required}
    return TableLayout(tuple(columns), frozenset(c.name for c in columns) - optional, contract.keys[0])


# The default contract's own fields in EVENT_COLUMNS (every other column is the platform's).
_DEFAULT_FIELDS = frozenset({"source", "user_id", "event_type", "value"})


def sql_type(kind: str, dialect: str, length: int | None = None) -> str:
    """The column type for a kind in one dialect."""
    if dialect not in DIALECTS:
        raise ValueError(f"unknown warehouse dialect {dialect!r}; expected one of {', '.join(DIALECTS)}")
    if kind == "string":
        if dialect == "redshift":
            return f"VARCHAR({min(4 * length, REDSHIFT_MAX_VARCHAR) if length else REDSHIFT_MAX_VARCHAR})"
        return f"VARCHAR({length})" if length else "TEXT"
    fixed = {
        "int16": "SMALLINT",
        "int32": "INTEGER",
        "int64": "BIGINT",
        "float32": "REAL",
        "float64": "DOUBLE PRECISION",
        "bool": "BOOLEAN",
        "timestamp": "TIMESTAMP",
        "date": "DATE",
    }
    if kind not in fixed:
        raise ValueError(f"unknown column kind {kind!r}")
    return fixed[kind]


# information_schema.columns.data_type (both dialects) back to kinds.
_SQL_KINDS = {
    "character varying": "string",
    "text": "string",
    "character": "string",
    "varchar": "string",
    "smallint": "int16",
    "integer": "int32",
    "bigint": "int64",
    "real": "float32",
    "double precision": "float64",
    "boolean": "bool",
    "timestamp without time zone": "timestamp",
    "timestamp": "timestamp",
    "date": "date",
}


def kind_of_sql(data_type: str) -> str | None:
    """The kind of an information_schema data type, or None for types this loader never creates."""
    return _SQL_KINDS.get(data_type.lower().strip())


def kind_of_arrow(dtype: pa.DataType) -> str:
    """The warehouse kind for a Parquet/Arrow type; raises for types with no faithful SQL column."""
    if pa.types.is_dictionary(dtype):
        return kind_of_arrow(dtype.value_type)
    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype) or pa.types.is_string_view(dtype):
        return "string"
    if pa.types.is_boolean(dtype):
        return "bool"
    if dtype in (pa.int8(), pa.int16(), pa.uint8()):
        return "int16"
    if dtype in (pa.int32(), pa.uint16()):
        return "int32"
    if dtype in (pa.int64(), pa.uint32()):
        return "int64"
    if dtype in (pa.float16(), pa.float32()):
        return "float32"
    if dtype == pa.float64():
        return "float64"
    if pa.types.is_timestamp(dtype):
        return "timestamp"
    if pa.types.is_date(dtype):
        return "date"
    if pa.types.is_null(dtype):
        return "string"  # an all-null column: nothing to lose, widest type
    raise TypeError(f"Arrow type {dtype} has no warehouse column type (supported: {', '.join(KINDS)})")


# A data column of kind K loads losslessly into a table column of any kind in _WIDENS[K].
_WIDENS = {
    "int16": {"int16", "int32", "int64", "float32", "float64"},
    "int32": {"int32", "int64", "float64"},
    "int64": {"int64"},
    "float32": {"float32", "float64"},
    "float64": {"float64"},
    "string": {"string"},
    "bool": {"bool"},
    "timestamp": {"timestamp"},
    "date": {"date", "timestamp"},
}


def loads_into(data_kind: str, table_kind: str) -> bool:
    return table_kind in _WIDENS.get(data_kind, set())


@dataclass(frozen=True)
class Drift:
    """How processed data differs from a table: new columns, absent ones, and incompatible types."""

    new: tuple[Column, ...] = ()
    absent: tuple[str, ...] = ()
    incompatible: tuple[str, ...] = ()  # human-readable "name: table T, data D"
    unsupported: tuple[str, ...] = ()  # new columns whose type or name cannot be mapped

    @property
    def clean(self) -> bool:
        return not (self.new or self.absent or self.incompatible or self.unsupported)


def detect_drift(data: pa.Schema, table: Mapping[str, str], required: Iterable[str] = DATA_COLUMNS) -> Drift:
    """Compare a processed data schema with a table's {column: kind} (from `kind_of_sql`).

    Table columns the data lacks are fine only for optional columns (added by earlier drift, or an
    optional contract field newer than the data: they load as NULL); a missing `required` column (the
    layout's) is drift, never a silent NULL.
    """
    new: list[Column] = []
    incompatible: list[str] = []
    unsupported: list[str] = []
    for data_field in data:
        name = data_field.name
        try:
            kind = kind_of_arrow(data_field.type)
        except TypeError as exc:
            unsupported.append(f"{name}: {exc}")
            continue
        if name not in table:
            if name == PARTITION_COLUMN or not IDENTIFIER_RE.match(name):
                unsupported.append(f"{name}: not a usable column name (lower-case letters, digits, _)")
            else:
                new.append(Column(name, kind))
            continue
        table_kind = table[name]
        if table_kind != kind and not loads_into(kind, table_kind):
            incompatible.append(f"{name}: table has {table_kind}, processed data has {kind} ({data_field.type})")
    present = set(data.names)
    absent = tuple(name for name in required if name not in present)
    return Drift(tuple(new), absent, tuple(incompatible), tuple(unsupported))


def drift_message(table: str, drift: Drift, policy: str) -> str:
    parts = []
    if drift.new:
        listed = ", ".join(f"{c.name} ({c.kind})" for c in drift.new)
        parts.append(f"new column(s) not in {table}: {listed}")
    if drift.absent:
        parts.append(f"processed data lacks required column(s): {', '.join(drift.absent)}")
    if drift.incompatible:
        parts.append("incompatible type(s): " + "; ".join(drift.incompatible))
    if drift.unsupported:
        parts.append("cannot map: " + "; ".join(drift.unsupported))
    hint = ""
    if drift.new and not (drift.absent or drift.incompatible or drift.unsupported) and policy == "fail":
        hint = (
            " Re-run with on_drift='add' (asset config, or ETL_WAREHOUSE_ON_DRIFT=add) to add "
            "the column(s), or remove them upstream."
        )
    return f"schema drift loading {table}: " + "; ".join(parts) + "." + hint


def check_policy(policy: str) -> str:
    if policy not in DRIFT_POLICIES:
        raise ValueError(f"on_drift={policy!r} is not one of {', '.join(DRIFT_POLICIES)}")
    return policy


def resolve_drift(table: str, drift: Drift, policy: str) -> tuple[Column, ...]:
    """The columns to add under `policy`, or SchemaDriftError naming everything that differs."""
    check_policy(policy)
    if drift.clean:
        return ()
    blocking = drift.absent or drift.incompatible or drift.unsupported
    if blocking or policy == "fail":
        names = [c.name for c in drift.new] + list(drift.absent)
        names += [item.split(":", 1)[0] for item in (*drift.incompatible, *drift.unsupported)]
        raise SchemaDriftError(drift_message(table, drift, policy), names)
    return drift.new


def table_kinds(columns: Mapping[str, str]) -> dict[str, str]:
    """{column: data_type} from information_schema to {column: kind}; unknown types keep their name."""
    return {name: kind_of_sql(data_type) or data_type for name, data_type in columns.items()}


def validate_identifier(name: str, what: str = "identifier") -> str:
    """Schema names come from configuration; only plain lower-case identifiers reach SQL text."""
    if not IDENTIFIER_RE.match(name):
        raise ValueError(f"{what} {name!r} must be lower-case letters, digits and _ (starting with a letter or _)")
    return name
