"""Backfill = replay: recompute a processed partition from raw, exactly as the stream path computed it.

Windows are per key in stream order, and a day's rows may need history from earlier days (and from
later event-time days for events that arrived late), so a replay of day D reads raw from
D - lookback_days to D + lookahead_days, runs the same detector over it in stream order, and
rewrites only day D's processed objects, each under the name of the raw object it mirrors. The
result equals the stream path's rows whenever every key's baseline window of history lies inside
that range (the defaults cover a week).

When it does not, the replay's rows differ from the stream's, exactly in these cases: a key whose
previous `baseline_rows` (100) events reach back more than `lookback_days` before the day (a sparse
key), whose rows are then computed from an empty history; and an event that arrived after the raw
range's end, which the replay does not see. Each replay compares its rows with the processed
objects it overwrites and reports how many rows changed their analytics (`rows_changed`, shown as
the materialization's metadata in the UI), so a backfill that departs from the stream says so.

A replay reads only committed raw objects (`visibility`) and writes only the processed objects of
the raw objects it read; it removes nothing. A processed object it did not write belongs to a flush
the stream committed meanwhile (raw is written before processed, so the replay may have listed raw
before it) or to a flush in progress, and is the stream's, never the replay's, to replace.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import polars as pl

from etl_platform.analytics import AnalyticsConfig
from etl_platform.events import arrival_order
from etl_platform.lake import layout
from etl_platform.lake.readers import RAW_SCHEMA, keys_for_days, read_raw
from etl_platform.lake.visibility import PendingObjects


@dataclass
class ReplayResult:
    day: date
    rows: int = 0
    anomalies: int = 0
    history_rows: int = 0
    rows_changed: int = 0  # rows whose avg_value or anomaly_status differ from the object they replaced
    written: list[str] = field(default_factory=list)


def recompute_processed_day(
    s3: Any,
    bucket: str,
    day: date,
    config: AnalyticsConfig | None = None,
    lookback_days: int = 7,
    lookahead_days: int = 1,
    pending: PendingObjects | None = None,
    root: str = "",
    schema: Mapping[str, pl.DataType] = RAW_SCHEMA,
) -> ReplayResult:
    """Rewrite day `day`'s processed objects from raw; `pending` names uncommitted objects to skip;
    `root` and `schema` are the pipeline's lake root and raw columns (its contract's `raw_schema()`)."""
    config = config or AnalyticsConfig()
    first, last = day - timedelta(days=lookback_days), day + timedelta(days=lookahead_days)
    keys = keys_for_days(s3, bucket, root + layout.RAW, first, last, pending)
    history = arrival_order(read_raw(s3, bucket, keys, schema))
    processed = config.new_detector().process(history.drop("_object"))
    processed = processed.with_columns(history["_object"])
    prefix = layout.day_prefix(root + layout.RAW, day)
    todays = processed.filter(pl.col("_object").str.starts_with(prefix))
    result = ReplayResult(
        day=day,
        rows=todays.height,
        history_rows=history.height,
        anomalies=int((todays["anomaly_status"] == "ANOMALY").sum()),
    )
    for (raw_key,), part in todays.group_by("_object", maintain_order=True):
        key = layout.processed_key_for(raw_key)
        rows = part.drop("_object")
        result.rows_changed += _rows_changed(s3, bucket, key, rows)
        # Stream order inside the object, as the stream path wrote it.
        layout.put(s3, bucket, key, layout.parquet_bytes(rows))
        result.written.append(key)
    return result


def _rows_changed(s3: Any, bucket: str, key: str, rows: pl.DataFrame) -> int:
    """Rows of `rows` whose analytics differ from those in the object at `key` (all of them if none)."""
    try:
        before = layout.read_parquet(layout.get(s3, bucket, key)).select("event_id", "avg_value", "anomaly_status")
    except s3.exceptions.NoSuchKey:
        return rows.height
    joined = rows.select("event_id", "avg_value", "anomaly_status").join(
        before, on="event_id", how="left", suffix="_before"
    )
    same_avg = (joined["avg_value"] - joined["avg_value_before"]).abs() <= joined["avg_value"].abs() * 1e-9 + 1e-12
    same_status = joined["anomaly_status"] == joined["anomaly_status_before"]
    return int((~(same_avg & same_status)).fill_null(True).sum())
