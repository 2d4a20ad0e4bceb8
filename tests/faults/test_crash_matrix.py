"""The crash-point matrix: kill the consumer (SIGKILL) right after each step of a micro-batch, then
retry with another batch size; every layer holds each event once and the analytics are exact.

Steps: `analysed` (read, decoded, analysed), `indexed` (written to search), `raw` and `processed`
(in the lake), `state` (the analytics snapshot saved, the commit not yet made), `committed`. The dead
attempt cut its batches at 100 records, the retry at 37, so the retry never simply overwrites what
the dead one wrote. Against the local stack: Kinesis, S3, DynamoDB, OpenSearch and PostgreSQL.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

import psycopg
import pytest

from etl_platform.lake import layout
from etl_platform.search import indices
from etl_platform.stream.producer import KinesisProducer
from etl_platform.stream.sources import demo_mix
from etl_platform.warehouse import connect
from tests.integration.pipeline_helpers import assert_same_results, cli, lake_rows, one_pass

pytestmark = pytest.mark.stack

EVENTS = 400


@pytest.mark.parametrize("step", ["analysed", "indexed", "raw", "processed", "state", "committed"])
def test_a_crash_after_any_step_then_a_retry_with_another_batch_size_is_exact(
    step, settings, kinesis, s3, bucket, stream, leases, client, prefix
):
    events = list(
        demo_mix(EVENTS, seed=41, start=datetime(2026, 9, 1, 23, 59, 56, tzinfo=UTC), users=9, spike_rate=0.03)
    )
    KinesisProducer(kinesis, stream, compress=True).send(events)  # two event-time days
    env = {
        "ETL_STREAM_NAME": stream,
        "ETL_LAKE_BUCKET": bucket,
        "ETL_OPENSEARCH_INDEX_PREFIX": prefix,
        "ETL_LEASE_DURATION_S": "2",
    }
    crashed = cli(
        "consume",
        "--until-caught-up",
        "--quiet",
        env={**env, "ETL_BATCH_MAX_RECORDS": "100", "ETL_FAULT_KILL_AFTER": step},
        check=False,
    )
    assert crashed.returncode == -9, crashed.stderr
    held = [lease.expires_at for lease in leases.all().values() if lease.held(time.time())]
    time.sleep(max([0.0, *(at - time.time() for at in held)]) + 0.1)  # the dead owner's lease runs out
    cli("consume", "--until-caught-up", "--quiet", env={**env, "ETL_BATCH_MAX_RECORDS": "37"})

    # Lake: each event once in raw and processed, with the analytics of one pass over the stream.
    assert leases.pending_objects() == set()
    raw = lake_rows(s3, bucket, layout.RAW)
    assert raw.height == EVENTS and raw["event_id"].n_unique() == EVENTS
    processed = lake_rows(s3, bucket, layout.PROCESSED)
    assert_same_results(processed, one_pass(kinesis, stream))
    # Search: one document per event, anomalies once in the anomalies indices.
    client.indices.refresh(index=f"{prefix}*")
    anomalies = processed.filter(processed["anomaly_status"] == "ANOMALY").height
    assert client.count(index=indices.alias_name(indices.EVENTS, prefix))["count"] == EVENTS
    assert client.count(index=indices.alias_name(indices.ANOMALIES, prefix))["count"] == anomalies
    # Warehouse: each day loaded from the committed lake holds each of its events once.
    schema = f"t_crash_{uuid.uuid4().hex[:8]}"
    try:
        with connect("postgres", settings.warehouse_dsn, schema=schema) as wh:
            days = sorted(set(processed["event_time"].dt.date().to_list()))
            assert len(days) == 2
            for day in days:
                wh.load_day(s3, bucket, day, pending=leases.pending_objects)
                rows, distinct = wh.count_rows("events", day)
                expected = processed.filter(processed["event_time"].dt.date() == day).height
                assert rows == distinct == expected
    finally:
        with psycopg.connect(settings.warehouse_dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
