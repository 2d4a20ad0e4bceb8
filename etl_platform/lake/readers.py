"""Reading the lake back: raw and processed objects, whole days, as polars frames."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, timedelta
from typing import Any

import polars as pl

from etl_platform.events import EVENT_SCHEMA
from etl_platform.lake import layout
from etl_platform.lake.visibility import PendingObjects, committed

RAW_SCHEMA: dict[str, pl.DataType] = {**EVENT_SCHEMA, "shard_depth": pl.Int32()}  # the default pipeline's


def read_raw(s3: Any, bucket: str, keys: list[str], schema: Mapping[str, pl.DataType] = RAW_SCHEMA) -> pl.DataFrame:
    """Raw objects as one frame (`schema`: the pipeline contract's `raw_schema()`), with `_object` naming the
    object each row came from."""
    schema = dict(schema)
    frames = [
        pl.read_ndjson(layout.gunzip(layout.get(s3, bucket, key)), schema=schema).with_columns(
            pl.lit(key).alias("_object")
        )
        for key in keys
    ]
    if not frames:
        return pl.DataFrame(schema={**schema, "_object": pl.String()})
    return pl.concat(frames)


def read_processed(s3: Any, bucket: str, keys: list[str]) -> pl.DataFrame:
    """Processed objects as one frame; objects written before a contract gained a field lack its
    column, which reads as null for their rows."""
    frames = [layout.read_parquet(layout.get(s3, bucket, key)) for key in keys]
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()


def keys_for_days(
    s3: Any, bucket: str, dataset: str, first: date, last: date, pending: PendingObjects | None = None
) -> list[str]:
    """The committed objects of `dataset` from day `first` to `last` (see `visibility`)."""
    keys: list[str] = []
    day = first
    while day <= last:
        keys += layout.list_keys(s3, bucket, layout.day_prefix(dataset, day))
        day += timedelta(days=1)
    return committed(keys, pending)


def read_day(
    s3: Any,
    bucket: str,
    dataset: str,
    day: date,
    pending: PendingObjects | None = None,
    schema: Mapping[str, pl.DataType] = RAW_SCHEMA,
) -> pl.DataFrame:
    """Every row of one day of a `raw` or `processed` dataset, from committed objects (see
    `visibility`); raw rows have `schema` (the pipeline contract's `raw_schema()`)."""
    keys = committed(layout.list_keys(s3, bucket, layout.day_prefix(dataset, day)), pending)
    if layout.dataset_name(dataset) == layout.RAW:
        return read_raw(s3, bucket, keys, schema).drop("_object")
    return read_processed(s3, bucket, keys)
