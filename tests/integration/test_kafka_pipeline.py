"""Kafka (MSK) as a pipeline's source, against the real local broker: a plain client's events reach the
lake, the warehouse and search exactly once with exact analytics, through a kill -9, and a partition
added mid-stream flows too."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
import yaml
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewPartitions
from opensearchpy import OpenSearch

from etl_platform.events import arrival_order, with_depth
from etl_platform.lake import layout
from etl_platform.lake.readers import read_processed, read_raw
from etl_platform.ops.provisioning import ensure_bucket, ensure_topic
from etl_platform.pipelines import load_pipelines
from etl_platform.search import indices
from etl_platform.stream.connect import stream_source
from etl_platform.stream.decoding import decode_records
from etl_platform.stream.dedupe import SeenIds
from etl_platform.stream.sources import demo_mix
from etl_platform.warehouse import connect
from tests.integration.pipeline_helpers import assert_same_results, cli, remove_deployment

pytestmark = pytest.mark.stack

SHIPPED = Path(__file__).resolve().parents[2] / "config" / "pipelines.yaml"


@pytest.fixture
def kafka_pipeline(tmp_path, settings, s3, unique_name):
    """The shipped `msk-events` pipeline on a fresh 3-partition topic, bucket, schema and index prefix."""
    shipped = yaml.safe_load(SHIPPED.read_text())
    kafka = shipped["pipelines"]["msk-events"]
    kafka["stream"]["topic"] = unique_name
    kafka["stream"]["partitions"] = 3
    kafka["warehouse_schema"] = f"t_k_{uuid.uuid4().hex[:10]}"
    pipelines_file = tmp_path / "pipelines.yaml"
    pipelines_file.write_text(yaml.safe_dump({"pipelines": {"msk-events": kafka}}))
    env = {
        "ETL_PIPELINES_FILE": str(pipelines_file),
        "ETL_LAKE_BUCKET": unique_name,
        "ETL_OPENSEARCH_INDEX_PREFIX": f"{unique_name}-",
    }
    pipeline = load_pipelines(settings, env).get("msk-events")
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    ensure_topic(admin, unique_name, 3)
    ensure_bucket(s3, unique_name, settings.aws_region)
    yield env, pipeline
    admin.delete_topics([unique_name])[unique_name].result(30)
    remove_deployment(settings, s3, unique_name, kafka["warehouse_schema"], env["ETL_OPENSEARCH_INDEX_PREFIX"])


def plain_produce(settings, topic: str, events: list[dict], partition: int | None = None) -> None:
    """A plain Kafka client, not the platform's producer: JSON values keyed by user."""
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    for event in events:
        kwargs = {} if partition is None else {"partition": partition}
        producer.produce(topic, key=event["user_id"].encode(), value=json.dumps(event).encode(), **kwargs)
    assert producer.flush(30) == 0


def one_pass(settings, pipeline) -> pl.DataFrame:
    """The reference: every partition read straight from the broker, decoded, one detector over all."""
    source = stream_source(pipeline, settings)
    frames = []
    for shard in source.list_shards():
        reader, records = source.reader(shard.shard_id, None), []
        while True:
            read = reader.read(10_000, 50 * 1024 * 1024, 5)
            records += read.records
            if not read.records and not read.cut:
                break
        reader.close()
        events, _ = SeenIds(600).filter(decode_records(shard.shard_id, records, pipeline.contract).frame)
        frames.append(with_depth(events, 0))
    return pipeline.analytics.new_detector().process(arrival_order(pl.concat(frames)))


def lake(s3, bucket: str, dataset: str, pipeline) -> pl.DataFrame:
    keys = layout.list_keys(s3, bucket, f"{pipeline.dataset(dataset)}/")
    if dataset == layout.RAW:
        return read_raw(s3, bucket, keys, pipeline.contract.raw_schema())
    return read_processed(s3, bucket, keys)


def test_a_plain_clients_events_reach_every_sink_exactly_once_through_a_kill(kafka_pipeline, settings, s3):
    env, pipeline = kafka_pipeline
    topic, bucket = pipeline.stream.name, env["ETL_LAKE_BUCKET"]
    events = list(demo_mix(600, seed=5, start=datetime(2026, 11, 1, 23, 59, 55, tzinfo=UTC), users=12, spike_rate=0.03))
    plain_produce(settings, topic, events)

    # A consumer killed (SIGKILL) right after a batch's processed objects are written, before the
    # commit; the retry, in smaller batches, resumes from the last commit.
    consume = ("consume", "--pipeline", "msk-events", "--until-caught-up", "--quiet")
    crash = {**env, "ETL_BATCH_MAX_RECORDS": "100", "ETL_FAULT_KILL_AFTER": "processed"}
    crashed = cli(*consume, env=crash, check=False)
    assert crashed.returncode == -9, crashed.stderr
    summary = json.loads(cli(*consume, env={**env, "ETL_BATCH_MAX_RECORDS": "37"}).stdout)
    assert summary["errors"] == 0 and set(summary["shards"]) <= {f"{topic}-{p}" for p in range(3)}

    raw = lake(s3, bucket, layout.RAW, pipeline)
    assert raw.height == 600 and raw["event_id"].n_unique() == 600  # nothing lost, nothing twice
    processed = lake(s3, bucket, layout.PROCESSED, pipeline)
    expected = one_pass(settings, pipeline)
    assert_same_results(processed, expected)
    assert processed["shard_id"].str.starts_with(f"{topic}-").all()
    assert processed["sequence_number"].str.zfill(20).sort().to_list() == sorted(
        processed["sequence_number"].str.zfill(20).to_list()
    )

    days = sorted(set(processed["event_time"].dt.date().to_list()))
    assert len(days) == 2
    with connect(
        "postgres", settings.warehouse_dsn, schema=pipeline.warehouse_schema, lake_root=pipeline.lake_root
    ) as wh:
        for day in days:
            wh.load_day(s3, bucket, day)
            rows, distinct = wh.count_rows("events", day)
            assert rows == distinct == processed.filter(processed["event_time"].dt.date() == day).height
    client = OpenSearch(settings.opensearch_url, timeout=30)
    alias = indices.alias_name(indices.EVENTS, pipeline.index_prefix)
    client.indices.refresh(index=alias)
    assert client.count(index=alias)["count"] == 600
    client.close()


def test_a_partition_added_mid_stream_flows_too(kafka_pipeline, settings, s3):
    env, pipeline = kafka_pipeline
    topic, bucket = pipeline.stream.name, env["ETL_LAKE_BUCKET"]
    start = datetime(2026, 11, 2, 12, tzinfo=UTC)
    first = list(demo_mix(200, seed=6, start=start, users=8))
    plain_produce(settings, topic, first)
    cli("consume", "--pipeline", "msk-events", "--until-caught-up", "--quiet", env=env)

    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    admin.create_partitions([NewPartitions(topic, 4)])[topic].result(30)
    # Kafka keeps a key's order only within its partition, and adding partitions moves keys (hash mod
    # the new count): new users go to the new partition, known users stay on theirs.
    where = dict(lake(s3, bucket, layout.PROCESSED, pipeline).select("user_id", "shard_id").unique().iter_rows())
    later = list(demo_mix(100, seed=7, start=start.replace(hour=13), users=8))
    newcomers = [{**e, "user_id": f"new-{e['user_id']}", "event_id": f"new-{e['event_id']}"} for e in later[:50]]
    plain_produce(settings, topic, newcomers, partition=3)
    for event in later[50:]:
        plain_produce(settings, topic, [event], partition=int(where[event["user_id"]].rsplit("-", 1)[1]))
    summary = json.loads(cli("consume", "--pipeline", "msk-events", "--until-caught-up", "--quiet", env=env).stdout)
    assert f"{topic}-3" in summary["shards"]

    processed = lake(s3, bucket, layout.PROCESSED, pipeline)
    assert processed.height == 300 and processed["event_id"].n_unique() == 300
    assert processed.filter(pl.col("shard_id") == f"{topic}-3").height >= 50
    assert_same_results(processed, one_pass(settings, pipeline))


def test_the_supervisor_and_workers_of_a_kafka_pipeline_run_it_in_dagster(kafka_pipeline, settings, s3):
    """The msk-events pipeline's sensor launches a worker per partition group; the worker runs read
    the topic, deliver the lake and report the pipeline's partitions of its assets."""
    import dataclasses

    from dagster import DagsterInstance, SensorResult, build_sensor_context

    from resources import build_resources
    from sensors.kinesis import SHARD_TAG, worker_job, worker_sensor

    env, pipeline = kafka_pipeline
    bucket = env["ETL_LAKE_BUCKET"]
    events = list(demo_mix(300, seed=9, start=datetime(2026, 11, 3, 9, tzinfo=UTC), users=10))
    plain_produce(settings, pipeline.stream.name, events)
    resources = build_resources(
        dataclasses.replace(settings, lake_bucket=bucket), env={**env, "ETL_BUFFER_INTERVAL_S": "0"}
    )
    job = worker_job(pipeline)
    sensor = worker_sensor(pipeline, job)
    with DagsterInstance.ephemeral() as instance:
        with build_sensor_context(instance=instance, resources=resources) as ctx:
            result = sensor(ctx)
        assert isinstance(result, SensorResult) and result.run_requests
        shards = sorted(s for r in result.run_requests for s in r.tags[SHARD_TAG].split(":")[-1].split("+"))
        assert shards == [f"{pipeline.stream.name}-{p}" for p in range(3)]
        materialized = set()
        for request in result.run_requests:
            op = f"{pipeline.name.replace('-', '_')}_consume_shard"
            config = request.run_config["ops"][op]["config"]
            outcome = job.execute_in_process(
                run_config={"ops": {op: {"config": {**config, "until_caught_up": True}}}},
                resources=resources,
                instance=instance,
                tags=request.tags,
            )
            assert outcome.success
            materialized |= {e.asset_key.to_user_string() for e in outcome.get_asset_materialization_events()}
    assert materialized == {"msk_events/raw_events", "msk_events/processed_events"}  # key parts: `-` as `_`
    processed = lake(s3, bucket, layout.PROCESSED, pipeline)
    assert processed.height == 300 and processed["event_id"].n_unique() == 300
    assert_same_results(processed, one_pass(settings, pipeline))


def test_kafka_lag_is_reported_as_kinesis_lag_is(kafka_pipeline, settings):
    """A reader behind the high watermark reports MillisBehindLatest > 0 (the lag metric and alarm the
    Kinesis consumers feed), and 0 once it has caught up."""
    from etl_platform.ops import metrics
    from etl_platform.stream.consumer import BatchResult

    _, pipeline = kafka_pipeline
    events = list(demo_mix(50, seed=10, start=datetime(2026, 11, 3, 10, tzinfo=UTC), users=1))
    plain_produce(settings, pipeline.stream.name, events)  # one user: one partition
    source = stream_source(pipeline, settings)
    shard = next(s.shard_id for s in source.list_shards() if source.reader(s.shard_id, None)._lag(fresh=True))
    reader = source.reader(shard, None)
    behind = reader.read(10, 10**6, 2)
    assert len(behind.records) == 10 and behind.cut and behind.millis_behind_latest > 0
    rest = reader.read(1000, 10**7, 2)
    assert len(rest.records) == 40 and rest.millis_behind_latest == 0 and not rest.cut
    reader.close()
    datums = metrics.batch_metrics(
        pipeline.stream.name, BatchResult(shard_id=shard, millis_behind_latest=behind.millis_behind_latest)
    )
    lag = [d for d in datums if d["MetricName"] == metrics.ITERATOR_AGE]  # the consumer-lag alarm's metric
    assert lag and lag[0]["Value"] > 0
    assert lag[0]["Dimensions"] == [{"Name": metrics.DIMENSION, "Value": pipeline.stream.name}]
