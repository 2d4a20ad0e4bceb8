"""The shard scaler against the real Kinesis emulator and moto's CloudWatch: the Dagster job scales out
under sustained load and in when idle, records why, and the consumer stays exact across the reshards."""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
from contextlib import redirect_stdout
from datetime import UTC, datetime, timedelta

import pytest
from dagster import DagsterInstance

from etl_platform.cli.scale import add_scale_parser
from etl_platform.ops import metrics as m
from etl_platform.ops.provisioning import ensure_stream
from etl_platform.ops.scaling import ScalingHistory, ScalingPolicy, open_shard_count, scale_stream
from etl_platform.stream.consumer import ConsumerConfig, StreamConsumer
from etl_platform.stream.producer import KinesisProducer
from etl_platform.stream.sources import demo_mix
from resources import build_resources
from sensors.scaling_schedule import kinesis_scaling_job
from tests.integration.pipeline_helpers import assert_same_results, lake_rows, one_pass

pytestmark = pytest.mark.stack


def publish_load(
    cloudwatch, stream: str, records_per_s: float, bytes_per_record: int, end: datetime, minutes: int = 5
) -> None:
    """IncomingRecords/IncomingBytes as producers report them: one datum per minute before `end`, all
    inside the window a scaler reading at `end` looks at."""
    datums = []
    for back in range(minutes):
        at = end - timedelta(seconds=60 * back + 1)
        count = records_per_s * 60
        datums += [
            m.datum(m.INCOMING_RECORDS, count, "Count", stream, at),
            m.datum(m.INCOMING_BYTES, count * bytes_per_record, "Bytes", stream, at),
        ]
    m.publish(cloudwatch, datums)


@pytest.fixture
def resources(settings, stream, bucket):
    return build_resources(dataclasses.replace(settings, stream_name=stream, lake_bucket=bucket))


def run_job(resources, **config):
    result = kinesis_scaling_job.execute_in_process(
        resources=resources,
        instance=DagsterInstance.ephemeral(),
        run_config={"ops": {"scale_kinesis_stream": {"config": {"wait_s": 30, **config}}}},
    )
    assert result.success
    return result


def test_job_scales_out_under_sustained_load_and_records_why(kinesis, s3, cloudwatch, stream, bucket, resources):
    publish_load(cloudwatch, stream, 2400, 500, datetime.now(UTC))  # 2,400 rec/s: 2 shards at 120%

    result = run_job(resources)

    assert open_shard_count(kinesis, stream) == (4, "ACTIVE")
    decision = result.output_for_node("scale_kinesis_stream")["decision"]
    assert (decision["action"], decision["current_shards"], decision["target_shards"]) == ("scale_out", 2, 4)
    assert "need 4 shards at 70% target utilization (records-bound)" in decision["reason"]
    observations = [
        e.event_specific_data.asset_observation for e in result.all_events if e.event_type_value == "ASSET_OBSERVATION"
    ]
    assert observations[0].asset_key.to_user_string() == "kinesis_stream"
    assert observations[0].metadata["target_shards"].value == 4
    (entry,) = ScalingHistory(s3, bucket, stream).entries()
    assert (entry["from"], entry["to"]) == (2, 4)

    # The next tick, with the load unchanged: 4 shards run at 60%, nothing to do.
    again = run_job(resources)
    assert again.output_for_node("scale_kinesis_stream")["decision"]["action"] == "none"
    assert open_shard_count(kinesis, stream)[0] == 4


@pytest.fixture
def wide_stream(kinesis, unique_name):
    name = f"{unique_name}-wide"
    ensure_stream(kinesis, name, shards=4)
    yield name
    kinesis.delete_stream(StreamName=name, EnforceConsumerDeletion=True)


def test_job_scales_in_when_idle(kinesis, cloudwatch, settings, bucket, wide_stream):
    publish_load(cloudwatch, wide_stream, 20, 400, datetime.now(UTC), minutes=30)  # idle for 30 min
    resources = build_resources(dataclasses.replace(settings, stream_name=wide_stream, lake_bucket=bucket))

    dry = run_job(resources, dry_run=True)
    assert dry.output_for_node("scale_kinesis_stream")["decision"]["target_shards"] == 2
    assert open_shard_count(kinesis, wide_stream)[0] == 4  # dry run: unchanged

    result = run_job(resources)
    decision = result.output_for_node("scale_kinesis_stream")["decision"]
    assert (decision["action"], decision["current_shards"], decision["target_shards"]) == ("scale_in", 4, 2)
    assert "at most halving" in decision["reason"]
    assert open_shard_count(kinesis, wide_stream) == (2, "ACTIVE")


def test_cli_dry_run_json(kinesis, cloudwatch, settings, stream, bucket):
    publish_load(cloudwatch, stream, 3000, 1000, datetime.now(UTC))
    parser = argparse.ArgumentParser()
    add_scale_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["scale", "--dry-run", "--json", "--stream", stream])
    out = io.StringIO()
    with redirect_stdout(out):
        assert args.func(args, dataclasses.replace(settings, lake_bucket=bucket)) == 0
    report = json.loads(out.getvalue())
    assert report["dry_run"] is True and report["applied"] is False
    assert report["inputs"]["open_shards"] == 2
    assert report["inputs"]["records_per_s"] == pytest.approx(3000)
    assert report["inputs"]["policy"]["target_utilization"] == 0.7
    decision = report["decision"]
    assert (decision["current_shards"], decision["target_shards"], decision["action"]) == (2, 4, "scale_out")
    assert "capped at 4 by at most doubling" in decision["reason"]  # 3,000 rec/s need 5
    assert open_shard_count(kinesis, stream)[0] == 2


def test_consumer_stays_exact_across_scale_out_and_in(kinesis, s3, cloudwatch, stream, bucket, leases):
    """2 -> 4 -> 2 shards by the scaler while events flow; the lake equals one pass over the stream."""
    producer = KinesisProducer(kinesis, stream)
    consumer = StreamConsumer(kinesis, s3, bucket, stream, leases, ConsumerConfig(max_records=150))
    history = ScalingHistory(s3, bucket, stream)
    start = datetime(2026, 4, 2, 10, 0, tzinfo=UTC)
    policy = ScalingPolicy(min_shards=1)
    now = datetime.now(UTC)

    producer.send(demo_mix(300, seed=1, start=start, users=6, spike_rate=0.03))
    consumer.drain()
    earlier = now - timedelta(hours=1)  # an hour ago, a load peak
    publish_load(cloudwatch, stream, 2400, 500, earlier)
    out = scale_stream(kinesis, cloudwatch, history, stream, policy, now=earlier, wait_s=30)
    assert out.applied and open_shard_count(kinesis, stream)[0] == 4

    producer.send(demo_mix(300, seed=2, start=start + timedelta(minutes=20), users=6, spike_rate=0.03))
    for shard in consumer.readable():  # one batch each: leave records unread across the next reshard
        consumer.process_shard(shard.shard_id)
    publish_load(cloudwatch, stream, 20, 500, now, minutes=30)  # now: idle for half an hour
    back = scale_stream(kinesis, cloudwatch, history, stream, policy, now=now, wait_s=30)
    assert back.applied and (back.decision.current_shards, back.decision.target_shards) == (4, 2)

    producer.send(demo_mix(300, seed=3, start=start + timedelta(minutes=40), users=6, spike_rate=0.03))
    consumer.drain()

    shards = consumer.shards()
    assert len(shards) == 2 + 4 + 2  # the original pair, their 4 children, the 2 merged grandchildren
    assert_same_results(lake_rows(s3, bucket, "processed"), one_pass(kinesis, stream))


def test_every_kinesis_pipeline_has_its_own_scaler(kinesis, cloudwatch, stream, resources):
    """A pipeline other than the default scales its own stream with its own job, observing its own
    `kinesis_stream` asset; a Kafka pipeline has none."""
    from resources import deployment_pipelines
    from sensors.scaling_schedule import scaling_definitions, scaling_job

    seed = deployment_pipelines().get("seed")
    pipeline = dataclasses.replace(seed, stream=dataclasses.replace(seed.stream, name=stream))
    publish_load(cloudwatch, stream, 2400, 500, datetime.now(UTC))
    result = scaling_job(pipeline).execute_in_process(
        resources=resources,
        instance=DagsterInstance.ephemeral(),
        run_config={"ops": {"seed_scale_kinesis_stream": {"config": {"wait_s": 30}}}},
    )
    assert result.success
    assert result.output_for_node("seed_scale_kinesis_stream")["decision"]["action"] == "scale_out"
    assert open_shard_count(kinesis, stream) == (4, "ACTIVE")
    (observation,) = [
        e.event_specific_data.asset_observation for e in result.all_events if e.event_type_value == "ASSET_OBSERVATION"
    ]
    assert observation.asset_key.to_user_string() == "seed/kinesis_stream"

    jobs, schedules = scaling_definitions(deployment_pipelines())
    assert [j.name for j in jobs] == ["kinesis_scaling_job", "seed_kinesis_scaling_job"]  # msk-events: Kafka
    assert [s.job_name for s in schedules] == [j.name for j in jobs]
