"""Backfill = replay: recompute processed partitions from raw, and read partitions back.

Windows are per key in stream order, and a day's rows may need history from earlier days (and from
later event-time days for events that arrived late), so a replay of day D reads raw from
D - lookback_days to D + lookahead_days, runs the same detector over it in stream order, and
rewrites only day D's processed objects, each under the name of the raw object it mirrors. The
result equals the stream path's rows whenever every key's baseline window of history lies inside
that range (the defaults cover a week).
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import polars as pl

from etl_platform import lake
from etl_platform.consumer import ConsumerConfig, arrival_order
from etl_platform.events import EVENT_SCHEMA

RAW_SCHEMA: dict[str, pl.DataType] = {**EVENT_SCHEMA, "shard_depth": pl.Int32()}


def read_raw(s3: Any, bucket: str, keys: list[str]) -> pl.DataFrame:
    """Raw objects as one frame, with `_object` naming the object each row came from."""
    frames = [
        pl.read_ndjson(gzip.decompress(lake.get(s3, bucket, key)), schema=RAW_SCHEMA).with_columns(
            pl.lit(key).alias("_object")
        )
        for key in keys
    ]
    if not frames:
        return pl.DataFrame(schema={**RAW_SCHEMA, "_object": pl.String()})
    return pl.concat(frames)


def read_processed(s3: Any, bucket: str, keys: list[str]) -> pl.DataFrame:
    frames = [lake.read_parquet(lake.get(s3, bucket, key)) for key in keys]
    return pl.concat(frames) if frames else pl.DataFrame()


def keys_for_days(s3: Any, bucket: str, dataset: str, first: date, last: date) -> list[str]:
    keys: list[str] = []
    day = first
    while day <= last:
        keys += lake.list_keys(s3, bucket, lake.day_prefix(dataset, day))
        day += timedelta(days=1)
    return keys


def read_day(s3: Any, bucket: str, dataset: str, day: date) -> pl.DataFrame:
    """Every row of one day of `raw` or `processed`."""
    keys = lake.list_keys(s3, bucket, lake.day_prefix(dataset, day))
    if dataset == lake.RAW:
        return read_raw(s3, bucket, keys).drop("_object")
    return read_processed(s3, bucket, keys)


@dataclass
class ReplayResult:
    day: date
    rows: int = 0
    anomalies: int = 0
    history_rows: int = 0
    written: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)


def recompute_processed_day(
    s3: Any, bucket: str, day: date, config: ConsumerConfig | None = None,
    lookback_days: int = 7, lookahead_days: int = 1,
) -> ReplayResult:
    config = config or ConsumerConfig()
    first, last = day - timedelta(days=lookback_days), day + timedelta(days=lookahead_days)
    keys = keys_for_days(s3, bucket, lake.RAW, first, last)
    history = arrival_order(read_raw(s3, bucket, keys))
    processed = config.new_detector().process(history.drop("_object"))
    processed = processed.with_columns(history["_object"])
    prefix = lake.day_prefix(lake.RAW, day)
    todays = processed.filter(pl.col("_object").str.starts_with(prefix))
    result = ReplayResult(day=day, rows=todays.height, history_rows=history.height,
                          anomalies=int((todays["anomaly_status"] == "ANOMALY").sum()))
    for (raw_key,), part in todays.group_by("_object", maintain_order=True):
        key = lake.processed_key_for(raw_key)
        # Stream order inside the object, as the stream path wrote it.
        lake.put(s3, bucket, key, lake.parquet_bytes(part.drop("_object")))
        result.written.append(key)
    # Processed objects whose raw object is gone would hold rows no longer in raw: remove them.
    for key in lake.list_keys(s3, bucket, lake.day_prefix(lake.PROCESSED, day)):
        if key not in result.written:
            s3.delete_object(Bucket=bucket, Key=key)
            result.deleted.append(key)
    return result
