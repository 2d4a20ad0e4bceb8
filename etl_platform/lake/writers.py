"""Firehose-style delivery of one micro-batch into the lake: raw JSON lines, errors, processed Parquet.

Object names derive from the batch's first stream position (`layout.object_key`), so a retried batch
overwrites its own objects. Raw objects are split per event-time hour and by size; each processed
object holds exactly the events of the raw object it mirrors (`layout.processed_key_for`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import polars as pl

from etl_platform.lake import layout


@dataclass
class RawDelivery:
    """What a raw delivery wrote: the objects, which batch rows each holds, and rows per event-time day."""

    objects: list[str] = field(default_factory=list)
    rows_per_object: list[pl.Series] = field(default_factory=list)  # batch row numbers, per object
    rows_by_day: dict[str, int] = field(default_factory=dict)


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


def deliver_raw(
    s3: Any, bucket: str, frame: pl.DataFrame, shard_id: str, first_sequence: str, max_object_bytes: int
) -> RawDelivery:
    """Raw objects (gzip JSON lines) per event-time hour, each at most `max_object_bytes` uncompressed."""
    delivery = RawDelivery()
    if frame.height == 0:
        return delivery
    indexed = frame.with_row_index("_row").with_columns(pl.col("event_time").dt.truncate("1h").alias("_hour"))
    for (moment,), group in indexed.group_by("_hour", maintain_order=True):
        partition = layout.HourPartition.of(moment)
        rows = group.drop("_hour")
        lines = rows.drop("_row").write_ndjson().splitlines()
        for part, (start, end) in enumerate(split_by_bytes(lines, max_object_bytes)):
            key = layout.object_key(layout.RAW, partition, shard_id, first_sequence, part)
            layout.put(s3, bucket, key, layout.gzip_lines(lines[start:end]))
            delivery.objects.append(key)
            delivery.rows_per_object.append(rows["_row"].slice(start, end - start))
            day = partition.day.isoformat()
            delivery.rows_by_day[day] = delivery.rows_by_day.get(day, 0) + (end - start)
    return delivery


def deliver_errors(
    s3: Any, bucket: str, errors: list[dict[str, Any]], stream_name: str, shard_id: str, first_sequence: str
) -> list[str]:
    """Rejected records (raw bytes, reason, position) under errors/, per arrival hour; returns the keys."""
    by_partition: dict[layout.HourPartition, list[dict[str, Any]]] = {}
    for err in errors:
        arrival = err.get("arrival_time") or datetime.now(UTC)
        by_partition.setdefault(layout.HourPartition.of(arrival), []).append({**err, "stream_name": stream_name})
    keys = []
    for partition, rows in by_partition.items():
        key = layout.object_key(layout.ERRORS, partition, shard_id, first_sequence, 0)
        layout.put(s3, bucket, key, layout.jsonl_gz(rows))
        keys.append(key)
    return keys


def deliver_processed(s3: Any, bucket: str, processed: pl.DataFrame, raw: RawDelivery) -> list[str]:
    """One Parquet object per raw object, holding exactly the same events; returns the keys."""
    indexed = processed.with_row_index("_row")
    keys = []
    for raw_key, rows in zip(raw.objects, raw.rows_per_object, strict=True):
        key = layout.processed_key_for(raw_key)
        part = indexed.join(rows.to_frame("_row"), on="_row", how="semi").drop("_row")
        layout.put(s3, bucket, key, layout.parquet_bytes(part))
        keys.append(key)
    return keys
