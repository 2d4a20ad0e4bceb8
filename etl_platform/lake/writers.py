"""Firehose-style delivery of one flush of a shard into the lake: raw JSON lines, errors, processed Parquet.

A flush is planned before anything is written (`plan_flush`), so its object names can be recorded as
pending in the shard's lease first: an attempt that dies after writing some of them leaves names the
next attempt knows, and removes when it does not overwrite them. Object names derive from the flush's
first stream position (`layout.object_key`); raw objects are split per event-time hour and by size;
each processed object holds exactly the events of the raw object it mirrors (`layout.processed_key_for`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import polars as pl

from etl_platform.lake import layout


@dataclass
class RawObject:
    key: str
    text: str  # the events as JSON lines, each ended by "\n"
    rows: pl.Series  # their row numbers in the flush's frame
    day: str  # event-time day (YYYY-MM-DD)


@dataclass
class FlushPlan:
    """Every lake object one flush writes, by name, before any is written."""

    raw: list[RawObject] = field(default_factory=list)
    errors: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # key -> rejected records

    @property
    def processed_keys(self) -> list[str]:
        return [layout.processed_key_for(obj.key) for obj in self.raw]

    @property
    def keys(self) -> list[str]:
        return [*(obj.key for obj in self.raw), *self.processed_keys, *self.errors]

    @property
    def rows_by_day(self) -> dict[str, int]:
        days: dict[str, int] = {}
        for obj in self.raw:
            days[obj.day] = days.get(obj.day, 0) + len(obj.rows)
        return days


def split_by_bytes(lines: list[str], max_bytes: int) -> list[tuple[int, int]]:
    """Row ranges [start, end) whose serialized size stays within max_bytes (at least one row each)."""
    ranges, start, size = [], 0, 0
    for i, line in enumerate(lines):
        if i > start and size + len(line) + 1 > max_bytes:
            ranges.append((start, i))
            start, size = i, 0
        size += len(line) + 1
    if start < len(lines):
        ranges.append((start, len(lines)))
    return ranges


def _json_line_parts(text: str, max_bytes: int) -> list[tuple[int, int, str]]:
    """JSON lines (each ended by "\n") as parts of at most `max_bytes` characters (at least one line
    each): (first row, end row, text). Most flushes fit one part and are never split into lines. Lines
    are split on "\n" alone, which JSON escapes inside strings; `str.splitlines` would also split on
    U+2028, U+0085 and the like, which JSON leaves as they are."""
    if len(text) <= max_bytes:
        return [(0, text.count("\n"), text)]
    lines = text.split("\n")[:-1]
    return [(start, end, "\n".join(lines[start:end]) + "\n") for start, end in split_by_bytes(lines, max_bytes)]


def plan_flush(
    frame: pl.DataFrame,
    errors: list[dict[str, Any]],
    stream_name: str,
    shard_id: str,
    first_sequence: str,
    max_object_bytes: int,
    root: str = "",
) -> FlushPlan:
    """The objects for a flush's events (raw per event-time hour, each at most `max_object_bytes`
    uncompressed) and its rejected records (errors/ per arrival hour, with the stream's name), under
    the pipeline's lake `root`."""
    plan = FlushPlan()
    if frame.height:
        indexed = frame.with_row_index("_row").with_columns(pl.col("event_time").dt.truncate("1h").alias("_hour"))
        for (moment,), group in indexed.group_by("_hour", maintain_order=True):
            partition = layout.HourPartition.of(moment)  # type: ignore[arg-type]
            rows = group.drop("_hour")
            text = rows.drop("_row").write_ndjson()
            for part, (start, end, part_text) in enumerate(_json_line_parts(text, max_object_bytes)):
                key = layout.object_key(root + layout.RAW, partition, shard_id, first_sequence, part)
                plan.raw.append(
                    RawObject(key, part_text, rows["_row"].slice(start, end - start), partition.day.isoformat())
                )
    for err in errors:
        arrival = err.get("arrival_time") or datetime.now(UTC)
        key = layout.object_key(root + layout.ERRORS, layout.HourPartition.of(arrival), shard_id, first_sequence, 0)
        plan.errors.setdefault(key, []).append({**err, "stream_name": stream_name})
    return plan


def write_raw(s3: Any, bucket: str, plan: FlushPlan) -> None:
    """The raw objects (gzip JSON lines) and the error objects of a planned flush."""
    for obj in plan.raw:
        layout.put(s3, bucket, obj.key, layout.gzip_text(obj.text))
    for key, rows in plan.errors.items():
        layout.put(s3, bucket, key, layout.jsonl_gz(rows))


def write_processed(s3: Any, bucket: str, processed: pl.DataFrame, plan: FlushPlan) -> None:
    """One Parquet object per raw object, holding exactly the same events (`processed` is row-aligned
    with the frame the plan was made from)."""
    for obj, key in zip(plan.raw, plan.processed_keys, strict=True):
        part = processed if len(obj.rows) == processed.height else processed[obj.rows]  # rows ascending
        layout.put(s3, bucket, key, layout.parquet_bytes(part))
