"""The lake checks fail on the faults they exist for: a lost row, a duplicate, a stray row, bad schema."""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl

from etl_platform.lake.checks import PROCESSED_SCHEMA, null_key_counts, reconcile, reconciled, schema_problems


def frame(ids: list[str]) -> pl.DataFrame:
    rows = {name: [None] * len(ids) for name in PROCESSED_SCHEMA}
    rows.update(
        event_id=ids,
        user_id=["u"] * len(ids),
        event_type=["t"] * len(ids),
        value=[1.0] * len(ids),
        event_time=[datetime(2026, 1, 1, tzinfo=UTC)] * len(ids),
        anomaly_status=["NORMAL"] * len(ids),
    )
    return pl.DataFrame(rows, schema=PROCESSED_SCHEMA)


def test_reconcile_passes_only_when_processed_is_exactly_raw():
    raw = frame(["a", "b", "c"])
    assert reconciled(reconcile(raw, frame(["c", "a", "b"])))
    lost = reconcile(raw, frame(["a", "b"]))
    assert not reconciled(lost) and lost["missing_from_processed"] == 1
    duplicated = reconcile(raw, frame(["a", "b", "c", "c"]))
    assert not reconciled(duplicated) and duplicated["duplicates"] == 1
    stray = reconcile(raw, frame(["a", "b", "c", "z"]))
    assert not reconciled(stray) and stray["not_in_raw"] == 1


def test_schema_problems_and_null_keys_are_reported():
    good = frame(["a"])
    assert schema_problems(good) == []
    assert schema_problems(good.drop("avg_value")) == ["missing column avg_value"]
    assert schema_problems(good.with_columns(pl.col("value").cast(pl.String))) == [
        "column value is String, expected Float64"
    ]
    assert null_key_counts(good)["user_id"] == 0
    assert null_key_counts(good.with_columns(pl.lit(None, pl.String).alias("user_id")))["user_id"] == 1
