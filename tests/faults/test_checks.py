"""Scenario 10 of the fault matrix: checks that tell the truth when an event was delivered twice.

A producer retry puts an event twice: two rows in the lake, one document in search (keyed by
event_id), one row in the warehouse (the first delivery). The search reconciliation used to count
lake rows and so reported a mismatch forever; both checks now count distinct events.
"""

from __future__ import annotations

from datetime import date

import polars as pl
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
