"""The whole path with the emulator's real stream positions: stream -> lake -> warehouse and index.

The sinks' own tests use synthetic processed rows; this one feeds them what the consumer wrote from
real Kinesis records (56-digit sequence numbers, KPL sub-sequences), so a column sized too small or a
type mismatch between the stages fails here.
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime

import psycopg
import pytest
from opensearchpy import OpenSearch

from etl_platform.lake import layout
from etl_platform.search import indices
from etl_platform.search.checks import day_counts
from etl_platform.search.indexer import search_sink
from etl_platform.stream.consumer import ConsumerConfig, StreamConsumer
from etl_platform.stream.producer import KinesisProducer
from etl_platform.stream.sources import demo_mix
from etl_platform.warehouse import connect
from tests.integration.pipeline_helpers import lake_rows

pytestmark = pytest.mark.stack


@pytest.fixture
def schema(settings):
    name = f"t_wh_{uuid.uuid4().hex[:10]}"
    yield name
    with psycopg.connect(settings.warehouse_dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


@pytest.fixture
def index_prefix(settings):
    client = OpenSearch(settings.opensearch_url, timeout=30)
    name = f"t-{uuid.uuid4().hex[:10]}-"
    yield client, name
    indices.delete_all(client, name)
    client.close()


def test_stream_positions_flow_into_the_warehouse_and_the_index(
    settings, kinesis, s3, stream, bucket, schema, index_prefix, leases
):
    client, prefix = index_prefix
    events = list(demo_mix(400, seed=21, start=datetime(2026, 7, 1, 12, tzinfo=UTC), users=9, spike_rate=0.03))
    producer = KinesisProducer(kinesis, stream, compress=True)
    producer.send(events[:200])
    producer.send_kpl_aggregated(events[200:])
    consumer = StreamConsumer(
        kinesis,
        s3,
        bucket,
        stream,
        leases,
        ConsumerConfig(max_records=150),
        search_sink=search_sink(client, s3, bucket, prefix),
    )
    results = consumer.drain()
    assert sum(r.search_indexed for r in results) >= 400 and sum(r.search_failed for r in results) == 0

    processed = lake_rows(s3, bucket, layout.PROCESSED)
    assert processed.height == 400
    assert processed["sequence_number"].str.len_chars().max() > 40  # real emulator positions
    day = date(2026, 7, 1)
    with connect("postgres", settings.warehouse_dsn, schema=schema) as wh:
        wh.ensure_tables()
        loaded = wh.load_day(s3, bucket, day)
        assert loaded["events"].rows_loaded == 400 and loaded["events"].duplicates_dropped == 0
        assert wh.count_rows("events", day) == (400, 400)
        anomalies = int((processed["anomaly_status"] == "ANOMALY").sum())
        assert wh.count_rows("anomalies", day) == (anomalies, anomalies)
    client.indices.refresh(index=f"{prefix}*")
    counts = day_counts(client, s3, bucket, day, prefix)
    assert counts.matches, counts
