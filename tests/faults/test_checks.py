"""Scenario 10 of the fault matrix: checks that tell the truth when an event was delivered twice.

A producer retry puts an event twice: two rows in the lake, one document in search (keyed by
event_id), one row in the warehouse (the first delivery). The search reconciliation used to count
lake rows and so reported a mismatch forever; both checks now count distinct events.
"""

from __future__ import annotations

import uuid
from datetime import date

import polars as pl
import psycopg
import pytest

from etl_platform.lake import layout
from etl_platform.search.checks import day_counts
from etl_platform.search.indexer import index_day
from etl_platform.stream.samples import known_processed_frame
from etl_platform.warehouse import partition_counts

pytestmark = pytest.mark.stack

DAY = date(2024, 3, 1)


def test_a_duplicate_delivery_is_no_mismatch_for_search_or_the_warehouse(client, prefix, s3, bucket):
    day = known_processed_frame().filter(pl.col("event_time").dt.date() == DAY)
    first = day.slice(0, 10)
    # The producer's retry: the same events again, later in the stream (another object).
    again = first.slice(2, 3).with_columns(pl.col("sequence_number").str.replace(r"^1", "9"))
    layout.put(s3, bucket, f"processed/dt={DAY}/hour=10/shard-a-1-0000.parquet", layout.parquet_bytes(first))
    layout.put(s3, bucket, f"processed/dt={DAY}/hour=10/shard-a-9-0000.parquet", layout.parquet_bytes(again))
    distinct = first["event_id"].n_unique()
    anomalies = first.filter(pl.col("anomaly_status") == "ANOMALY")["event_id"].n_unique()
    assert anomalies > 0 and again["event_id"].is_in(first["event_id"]).all()

    result = index_day(client, s3, bucket, DAY, prefix)
    assert result.stats.failed == 0
    counts = day_counts(client, s3, bucket, DAY, prefix)
    assert (counts.lake_rows, counts.lake_anomalies) == (distinct, anomalies)  # not the 13 rows
    assert (counts.indexed_docs, counts.indexed_anomalies) == (distinct, anomalies)
    assert counts.matches, counts.describe()
    warehouse_side = partition_counts(s3, bucket, DAY)
    assert (warehouse_side.rows, warehouse_side.events) == (first.height + again.height, distinct)


def test_the_warehouse_check_tells_a_wrong_load_from_a_lake_that_moved_on(settings, s3, bucket):
    """After a load, the stream commits more of the day: the table is stale, a WARN that does not block
    the dbt models (it used to fail the run). A table that differs from what its load read is an ERROR."""
    from types import SimpleNamespace

    from dagster import AssetCheckSeverity, materialize

    from assets.warehouse import _reconcile, warehouse_assets, warehouse_checks
    from tests.integration.test_warehouse import processed_day, resources_for, write_partition

    day = date(2024, 5, 6)
    schema = f"t_chk_{uuid.uuid4().hex[:8]}"
    resources = resources_for(settings, bucket, schema)

    def run() -> dict:
        result = materialize([*warehouse_assets, *warehouse_checks], partition_key=day.isoformat(), resources=resources)
        return {e.check_name: e for e in result.get_asset_check_evaluations()}

    def check_events():  # the check's own logic on its own, between loads (Dagster runs it after a load)
        context = SimpleNamespace(partition_key=day.isoformat())
        return _reconcile(context, "events", resources["warehouse"], resources["lake"])  # type: ignore[arg-type]

    try:
        write_partition(s3, bucket, processed_day(day, n=120, seed=3))
        loaded = run()
        assert len(loaded) == 2 and all(e.passed for e in loaded.values())

        write_partition(s3, bucket, processed_day(day, n=30, seed=4, first=120))  # committed after the load
        stale = check_events()
        assert not stale.passed and stale.severity == AssetCheckSeverity.WARN
        assert (stale.metadata["expected_rows"].value, stale.metadata["lake_rows_now"].value) == (120, 150)

        with psycopg.connect(settings.warehouse_dsn, autocommit=True) as conn:  # a row lost behind its back
            conn.execute(f'DELETE FROM "{schema}".events WHERE ctid IN (SELECT ctid FROM "{schema}".events LIMIT 1)')
        wrong = check_events()
        assert not wrong.passed and wrong.severity == AssetCheckSeverity.ERROR

        reloaded = run()  # the automation's next load
        assert all(e.passed for e in reloaded.values())
    finally:
        with psycopg.connect(settings.warehouse_dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
