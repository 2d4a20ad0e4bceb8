"""Example transforms to copy from (`pipelines.<name>.transforms` in config/pipelines.yaml).

`privacy_screen` shows Firehose's three outcomes on any contract with an `event_type` and a `value`:
heartbeats are Dropped, negative values are ProcessingFailed with the reason, and e-mail addresses
inside `attributes` are masked (`"email":"ann@example.com"` -> `"email":"***@example.com"`) on the
rows that go on. Everything is a Polars expression over the whole batch: no per-record Python.
"""

from __future__ import annotations

import polars as pl

from etl_platform.pipelines.transforms import DROPPED, ERROR, FAILED, OK, RESULT

EMAIL_LOCAL_PART = r'"email":"[^"@]*@'


def privacy_screen(events: pl.DataFrame) -> pl.DataFrame:
    return events.with_columns(
        pl.col("attributes").str.replace_all(EMAIL_LOCAL_PART, '"email":"***@'),
        pl.when(pl.col("event_type") == "heartbeat")
        .then(pl.lit(DROPPED))
        .when(pl.col("value") < 0)
        .then(pl.lit(FAILED))
        .otherwise(pl.lit(OK))
        .alias(RESULT),
        pl.when(pl.col("value") < 0)
        .then(pl.format("negative value {} (readings are never below zero)", pl.col("value")))
        .alias(ERROR),
    )
