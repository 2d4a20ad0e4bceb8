"""Every local server answers its real client over loopback, and `stack status --json` finds them."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys

import psycopg
import pytest

pytestmark = pytest.mark.stack

REQUIRED_KEYS = {
    "kinesis_endpoint",
    "dashboard_url",
    "s3_endpoint",
    "lake_bucket",
    "stream_name",
    "postgres_dsn",
    "opensearch_url",
    "dagster_url",
    "kafka_bootstrap",
    "healthy",
}


def test_status_json_lists_every_endpoint_and_health(settings):
    result = subprocess.run(
        [sys.executable, "-m", "etl_platform.cli.main", "stack", "status", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert REQUIRED_KEYS <= set(status)
    assert {k: status["healthy"][k] for k in ("kinesis", "moto", "postgres", "opensearch", "kafka")} == {
        "kinesis": True,
        "moto": True,
        "postgres": True,
        "opensearch": True,
        "kafka": True,
    }
    assert status["kafka_bootstrap"] == "127.0.0.1:9092"
    assert status["postgres_dsn"].startswith("postgresql://") and "127.0.0.1" in status["postgres_dsn"]
    for key in ("kinesis_endpoint", "s3_endpoint", "opensearch_url", "dagster_url", "dashboard_url"):
        assert status[key].startswith("http://127.0.0.1:")


def test_platform_stream_and_bucket_exist(settings, kinesis, s3):
    summary = kinesis.describe_stream_summary(StreamName=settings.stream_name)["StreamDescriptionSummary"]
    assert summary["StreamStatus"] == "ACTIVE"
    assert settings.lake_bucket in {b["Name"] for b in s3.list_buckets()["Buckets"]}
    block = s3.get_public_access_block(Bucket=settings.lake_bucket)["PublicAccessBlockConfiguration"]
    assert all(block.values())


def test_kinesis_put_and_get_round_trip(kinesis, stream):
    put = kinesis.put_record(StreamName=stream, Data=b'{"x": 1}', PartitionKey="u1")
    it = kinesis.get_shard_iterator(
        StreamName=stream,
        ShardId=put["ShardId"],
        ShardIteratorType="AT_SEQUENCE_NUMBER",
        StartingSequenceNumber=put["SequenceNumber"],
    )["ShardIterator"]
    records = kinesis.get_records(ShardIterator=it)["Records"]
    assert [(r["Data"], r["PartitionKey"]) for r in records] == [(b'{"x": 1}', "u1")]


def test_kafka_broker_round_trip_with_a_plain_client(settings, unique_name):
    """The local KRaft broker takes a topic, a keyed record and gives it back with its offset."""
    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    admin.create_topics([NewTopic(unique_name, num_partitions=2, replication_factor=1)])[unique_name].result(30)
    try:
        producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
        producer.produce(unique_name, key=b"u1", value=b'{"x": 1}', partition=1)
        assert producer.flush(10) == 0
        consumer = Consumer(
            {"bootstrap.servers": settings.kafka_bootstrap, "group.id": unique_name, "auto.offset.reset": "earliest"}
        )
        consumer.subscribe([unique_name])
        message = None
        for _ in range(30):
            message = consumer.poll(1.0)
            if message is not None and not message.error():
                break
        consumer.close()
        assert message is not None and not message.error()
        assert (message.key(), message.value(), message.partition(), message.offset()) == (b"u1", b'{"x": 1}', 1, 0)
    finally:
        admin.delete_topics([unique_name])[unique_name].result(30)


def test_s3_round_trip(s3, bucket):
    s3.put_object(Bucket=bucket, Key="raw/dt=2026-01-01/hour=00/a.json.gz", Body=b"payload")
    assert s3.get_object(Bucket=bucket, Key="raw/dt=2026-01-01/hour=00/a.json.gz")["Body"].read() == b"payload"
    listed = s3.list_objects_v2(Bucket=bucket, Prefix="raw/")["Contents"]
    assert [o["Key"] for o in listed] == ["raw/dt=2026-01-01/hour=00/a.json.gz"]


def test_cloudwatch_metrics_round_trip(cloudwatch, unique_name):
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    cloudwatch.put_metric_data(
        Namespace=f"ETL/{unique_name}",
        MetricData=[{"MetricName": "IncomingRecords", "Value": 42.0, "Unit": "Count", "Timestamp": now}],
    )
    stats = cloudwatch.get_metric_statistics(
        Namespace=f"ETL/{unique_name}",
        MetricName="IncomingRecords",
        StartTime=now - dt.timedelta(minutes=5),
        EndTime=now + dt.timedelta(minutes=5),
        Period=60,
        Statistics=["Sum"],
    )
    assert [p["Sum"] for p in stats["Datapoints"]] == [42.0]


def test_postgres_binary_copy_round_trip(settings, unique_name):
    with psycopg.connect(settings.warehouse_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {unique_name.replace('-', '_')} (id bigint, v double precision)")
        table = unique_name.replace("-", "_")
        try:
            with conn.cursor() as cur:
                with cur.copy(f"COPY {table} (id, v) FROM STDIN (FORMAT BINARY)") as copy:
                    copy.set_types(["int8", "float8"])
                    for i in range(1000):
                        copy.write_row((i, i * 0.5))
            assert conn.execute(f"SELECT count(*), sum(v) FROM {table}").fetchone() == (1000, 249750.0)
        finally:
            conn.execute(f"DROP TABLE {table}")
