"""The event envelope: its fields, its polars schema, validation and deterministic ids, in one place.

Every stage (decoding, analytics, lake, warehouse, search) agrees on these names and types, so they
are defined once here. A producer puts a JSON *envelope* on the stream; decoding validates it with
its pipeline's contract (`etl_platform.pipelines`) and adds the stream metadata (shard, sequence
number, sub-sequence, arrival time, partition key) to make a *decoded event*.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl

SOURCES: frozenset[str] = frozenset({"app_log", "iot", "cdc", "api", "web"})

# The seed's stream definition: user_id VARCHAR(64), event_type VARCHAR(32). Enforced here so a
# warehouse column sized from the seed never truncates or rejects a row late in the pipeline.
MAX_USER_ID_LEN = 64
MAX_EVENT_TYPE_LEN = 32
MAX_EVENT_ID_LEN = 128
# Redshift's largest VARCHAR, in bytes: the canonical JSON of `attributes` must fit in it.
MAX_ATTRIBUTES_BYTES = 65_535

# Kinesis sequence numbers are decimal strings of up to 129 digits (the API's pattern; AWS and the
# emulator hand out 56-digit ones); padding them to a fixed width makes lexicographic order (polars,
# SQL, object keys) equal to numeric order.
SEQUENCE_WIDTH = 129

EVENT_SCHEMA: dict[str, pl.DataType] = {
    "event_id": pl.String(),
    "source": pl.String(),
    "user_id": pl.String(),
    "event_type": pl.String(),
    "event_time": pl.Datetime("us", "UTC"),
    "value": pl.Float64(),
    "attributes": pl.String(),
    "shard_id": pl.String(),
    "sequence_number": pl.String(),
    "sub_sequence": pl.Int64(),
    "arrival_time": pl.Datetime("us", "UTC"),
    "partition_key": pl.String(),
}
EVENT_FIELDS: tuple[str, ...] = tuple(EVENT_SCHEMA)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# The accepted event times. Earlier events (a device whose clock was never set reports 1970) would
# reach the lake and search but have no daily partition, so never the warehouse; events far ahead of
# their arrival are a wrong clock too. Both are refused at decode with the reason, into errors/.
EARLIEST_EVENT_TIME = datetime(2020, 1, 1, tzinfo=UTC)  # the first daily partition (assets/partitions.py)
MAX_AHEAD_OF_ARRIVAL = timedelta(hours=1)  # producer clock skew tolerated


class InvalidEvent(ValueError):
    """An envelope that must not enter the pipeline; `reason` names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        self.reason = f"field {field}: {message}"
        super().__init__(self.reason)


def check_text(field: str, value: str) -> None:
    """What every sink would refuse later, refused here: text that is not valid Unicode (a lone
    surrogate, which JSON's \\u escapes can carry but UTF-8 cannot) and NUL, which PostgreSQL and
    Redshift reject in text columns."""
    if not value.isascii():  # ASCII text holds no surrogate: skip the encoding (most text is ASCII)
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidEvent(field, f"is not valid Unicode (a lone surrogate at character {exc.start})") from None
    if "\x00" in value:
        raise InvalidEvent(field, f"contains NUL (U+0000) at character {value.index(chr(0))}")


def parse_event_time(raw: Any, field: str = "event_time") -> datetime:
    """ISO-8601 with an offset, or epoch milliseconds, to an aware UTC datetime (microseconds).

    Naive timestamps are refused rather than guessed: a wrong guess shifts every partition.
    """
    if raw is None:
        raise InvalidEvent(field, "missing")
    if isinstance(raw, bool):
        raise InvalidEvent(field, "must be an ISO-8601 string or epoch milliseconds, got bool")
    if isinstance(raw, int | float):
        if isinstance(raw, float) and not math.isfinite(raw):
            raise InvalidEvent(field, f"epoch milliseconds must be finite, got {raw}")
        try:
            if isinstance(raw, int):
                return _EPOCH + timedelta(milliseconds=raw)
            return _EPOCH + timedelta(microseconds=round(raw * 1000))
        except OverflowError:
            raise InvalidEvent(field, f"epoch milliseconds out of range: {raw}") from None
    if isinstance(raw, str):
        try:
            parsed = datetime.fromisoformat(raw.strip())
        except ValueError:
            raise InvalidEvent(field, f"not an ISO-8601 timestamp: {raw[:64]!r}") from None
        if parsed.tzinfo is None or parsed.utcoffset() is None:
            raise InvalidEvent(field, f"timestamp has no timezone offset: {raw[:64]!r}")
        try:
            return parsed.astimezone(UTC)
        except OverflowError:
            raise InvalidEvent(field, f"timestamp out of range in UTC: {raw[:64]!r}") from None
    raise InvalidEvent(field, f"must be an ISO-8601 string or epoch milliseconds, got {type(raw).__name__}")


def check_event_time(event_time: datetime, arrival: datetime) -> None:
    """Refuse an event time outside the accepted range (see EARLIEST_EVENT_TIME), naming the field."""
    if event_time < EARLIEST_EVENT_TIME:
        raise InvalidEvent(
            "event_time",
            f"{event_time.isoformat()} is before {EARLIEST_EVENT_TIME.date().isoformat()}, the first daily partition",
        )
    if event_time > arrival + MAX_AHEAD_OF_ARRIVAL:
        ahead = (event_time - arrival).total_seconds()
        raise InvalidEvent(
            "event_time",
            f"{event_time.isoformat()} is {ahead:.0f} s after the record's arrival "
            f"(at most {MAX_AHEAD_OF_ARRIVAL.total_seconds():.0f} s of clock skew is accepted)",
        )


def derive_event_id(shard_id: str, sequence_number: str, sub_sequence: int) -> str:
    """A stable id from the stream position, for events whose producer supplied none.

    The position is unique and survives replays, so re-reading a record after a crash yields the
    same id and the sinks (deterministic S3 keys, OpenSearch `_id`, MERGE) stay idempotent.
    """
    key = f"{shard_id}:{sequence_number}:{int(sub_sequence)}"
    return hashlib.sha1(key.encode("utf-8")).hexdigest()


def sequence_sort_key(sequence_number: str) -> str:
    """Zero-padded form of a sequence number whose string order is its numeric order."""
    if not sequence_number.isdigit() or not sequence_number.isascii():
        raise ValueError(f"sequence number must be decimal digits, got {sequence_number!r}")
    if len(sequence_number) > SEQUENCE_WIDTH:
        raise ValueError(f"sequence number longer than {SEQUENCE_WIDTH} digits: {sequence_number}")
    return sequence_number.zfill(SEQUENCE_WIDTH)


def sequence_sort_expr(column: str = "sequence_number") -> pl.Expr:
    """The polars twin of `sequence_sort_key`, for sorting frames by stream position."""
    return pl.col(column).str.zfill(SEQUENCE_WIDTH)


def events_to_frame(
    events: Iterable[Mapping[str, Any]], schema: Mapping[str, pl.DataType] = EVENT_SCHEMA
) -> pl.DataFrame:
    """Decoded events to a DataFrame with exactly `schema` (names, order, dtypes; default the original
    envelope's, else a pipeline contract's `event_schema()`).

    Built column by column so an empty batch still has the full schema and a missing field fails
    loudly (KeyError) instead of becoming a silent null column.
    """
    columns: dict[str, list[Any]] = {name: [] for name in schema}
    for event in events:
        for name in columns:
            columns[name].append(event[name])
    return pl.DataFrame(columns, schema=dict(schema), strict=True)


def with_depth(frame: pl.DataFrame, depth: int) -> pl.DataFrame:
    """`frame` with `shard_depth`: the generation of the shard its events came from (see stream.shards)."""
    return frame.with_columns(pl.lit(depth, dtype=pl.Int32).alias("shard_depth"))


def arrival_order(frame: pl.DataFrame) -> pl.DataFrame:
    """Stream order for every key: parents before children (depth), then sequence, then sub-record."""
    return frame.sort(["shard_depth", sequence_sort_expr(), "sub_sequence"], maintain_order=True)
