"""The sensor path through Dagster: evaluation yields per-shard runs; the runs materialize partitions;
a UI-style backfill of `processed_events` replays a day from raw and reproduces the stream's rows."""

from __future__ import annotations

import dataclasses
import time
from datetime import UTC, datetime

import pytest
from dagster import DagsterInstance, DagsterRunStatus, SensorResult, build_sensor_context, materialize

from assets.ingestion import processed_events
from assets.lake_checks import processed_matches_raw, processed_schema_and_keys
from etl_platform.lake import layout
from etl_platform.stream.producer import KinesisProducer
from etl_platform.stream.sources import demo_mix
from resources import KinesisResource, build_resources
from sensors.kinesis import SHARD_TAG, kinesis_microbatch_job, kinesis_microbatch_sensor, shard_tag
from tests.integration.pipeline_helpers import assert_same_results, lake_rows, one_pass

pytestmark = pytest.mark.stack


@pytest.fixture
def resources(settings, stream, bucket):
    resources = build_resources(dataclasses.replace(settings, stream_name=stream, lake_bucket=bucket))
    # No buffer interval: every read is a lake flush, so a worker's batches are small and many.
    resources["kinesis"] = KinesisResource(
        stream_name=stream,
        region_name=settings.aws_region,
        endpoint_url=settings.kinesis_endpoint,
        analytics=resources["analytics"],
        buffer_interval_s=0,
        max_records=150,
        **settings.local_credentials,
    )
    return resources


def run_sensor_until_idle(instance, resources, max_ticks: int = 10) -> list:
    """Evaluate the supervisor and execute each worker it launches in-process (until its shard is caught up),
    until a tick's workers commit nothing more."""
    cursor, runs = None, []
    for _ in range(max_ticks):
        with build_sensor_context(instance=instance, cursor=cursor, resources=resources) as ctx:
            result = kinesis_microbatch_sensor(ctx)
            cursor = ctx.cursor
        requests = result.run_requests if isinstance(result, SensorResult) else []
        # Each readable shard in exactly one worker.
        owned = [sid for r in requests for sid in r.tags[SHARD_TAG].split("+")]
        assert len(owned) == len(set(owned))
        committed = 0
        for request in requests:
            config = request.run_config["ops"]["consume_shard"]["config"]
            outcome = kinesis_microbatch_job.execute_in_process(
                run_config={"ops": {"consume_shard": {"config": {**config, "until_caught_up": True}}}},
                resources=resources,
                instance=instance,
                tags=request.tags,
            )
            assert outcome.success
            runs.append(outcome)
            committed += len(outcome.get_asset_materialization_events())
        if requests and not committed:
            return runs
    raise AssertionError("workers kept committing")


def test_sensor_launches_shard_runs_that_materialize_partitions(kinesis, s3, stream, bucket, resources):
    start = datetime(2026, 4, 2, 23, 0, tzinfo=UTC)
    KinesisProducer(kinesis, stream).send(demo_mix(400, seed=11, start=start, users=8, spike_rate=0.03))
    instance = DagsterInstance.ephemeral()

    runs = run_sensor_until_idle(instance, resources)

    owned = {sid for run in runs for sid in run.dagster_run.tags[SHARD_TAG].split("+")}
    assert len(owned) == 2  # both shards got a worker
    materialized = set()
    for run in runs:
        for event in run.get_asset_materialization_events():
            mat = event.event_specific_data.materialization
            materialized.add((mat.asset_key.to_user_string(), mat.partition))
    days = {key.split("/")[1].removeprefix("dt=") for key in layout.list_keys(s3, bucket, "raw/")}
    assert {("raw_events", d) for d in days} <= materialized
    assert {("processed_events", d) for d in days} <= materialized
    stream_rows = lake_rows(s3, bucket, layout.PROCESSED)
    assert_same_results(stream_rows, one_pass(kinesis, stream))

    # A backfill of one day (as launched from the UI) replays it from raw: same rows, same objects.
    day = sorted(days)[-1]
    day_keys = layout.list_keys(s3, bucket, layout.day_prefix(layout.PROCESSED, day))
    before = {k: layout.get(s3, bucket, k) for k in day_keys}
    for key in before:
        s3.delete_object(Bucket=bucket, Key=key)
    result = materialize([processed_events], partition_key=day, resources=resources, instance=instance)
    assert result.success
    after = layout.list_keys(s3, bucket, layout.day_prefix(layout.PROCESSED, day))
    assert sorted(after) == sorted(before)
    assert_same_results(lake_rows(s3, bucket, layout.PROCESSED), one_pass(kinesis, stream))
    meta = result.get_asset_materialization_events()[0].event_specific_data.materialization.metadata
    assert meta["rows"].value == sum(1 for d in stream_rows["event_time"].dt.date().cast(str).to_list() if d == day)
    lineage = meta["dagster/column_lineage"].value.deps_by_column
    assert {d.column_name for d in lineage["anomaly_status"]} >= {"user_id", "event_type", "value"}

    # The lake's checks pass on the day, and the raw -> processed reconciliation catches a lost object.
    checks = [processed_matches_raw, processed_schema_and_keys]
    evaluations = materialize(
        [processed_events, *checks], partition_key=day, resources=resources, instance=instance
    ).get_asset_check_evaluations()
    assert {(e.check_name, e.passed) for e in evaluations} == {
        ("processed_matches_raw", True),
        ("processed_schema_and_keys", True),
    }


def test_the_supervisor_replaces_a_dead_worker_and_frees_its_queue_slot(stream, resources):
    """A worker whose process died (kill -9, a lost task) stays STARTED in Dagster and keeps the shard's
    run-queue slot: once its lease expires the supervisor marks it failed and launches a new worker."""
    instance = DagsterInstance.ephemeral()
    leases = resources["leases"].table(stream)

    results = []

    def tick():
        with build_sensor_context(instance=instance, resources=resources) as ctx:
            result = kinesis_microbatch_sensor(ctx)
        results.append(result)
        requests = result.run_requests if isinstance(result, SensorResult) else []
        return {sid for r in requests for sid in r.tags[SHARD_TAG].split("+")}

    shards = tick()  # a fresh stream: every shard gets a worker
    assert len(shards) == 2
    # The UI's per-shard view: an observation of the stream asset with each shard's owner and checkpoint.
    status = results[0].asset_events[0]
    assert status.asset_key.to_user_string() == "kinesis_stream"
    assert all(sid in status.metadata["shards"].value for sid in shards)
    shard = sorted(shards)[0]
    run = instance.create_run_for_job(
        kinesis_microbatch_job,
        run_config={"ops": {"consume_shard": {"config": {"shard_ids": [shard]}}}},
        tags={SHARD_TAG: shard, shard_tag(shard): "owner"},
        status=DagsterRunStatus.STARTED,
    )
    holder = leases.take(shard, f"run:{run.run_id}", duration_s=4.0)  # outlives a slow tick
    assert holder is not None
    assert shard not in tick()  # alive: its lease is held
    time.sleep(max(0.0, holder.lease.expires_at - time.time()) + 0.2)  # the process "died": no renewal
    assert shard in tick()
    assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.FAILURE


def test_the_supervisor_starts_one_successor_ahead_of_a_handover(stream, resources):
    """An owner whose budget ends within the handover lead gets a successor that waits for its lease;
    the next tick does not start another."""
    instance = DagsterInstance.ephemeral()
    leases = resources["leases"].table(stream)
    kinesis = resources["kinesis"]

    def tick() -> dict[str, dict]:
        with build_sensor_context(instance=instance, resources=resources) as ctx:
            result = kinesis_microbatch_sensor(ctx)
        requests = result.run_requests if isinstance(result, SensorResult) else []
        return {
            sid: request.run_config["ops"]["consume_shard"]["config"]
            for request in requests
            for sid in request.tags[SHARD_TAG].split("+")
        }

    shard = sorted(tick())[0]  # syncs the lease table
    owner = instance.create_run_for_job(
        kinesis_microbatch_job,
        run_config={"ops": {"consume_shard": {"config": {"shard_ids": [shard]}}}},
        tags={SHARD_TAG: shard, shard_tag(shard): "owner"},
        status=DagsterRunStatus.STARTED,
    )
    far = time.time() + kinesis.handover_lead_s + 60
    holder = leases.take(shard, f"run:{owner.run_id}", duration_s=30, handover_at=far)
    assert holder is not None
    assert shard not in tick()  # alive, its handover far off
    leases.release(holder)
    holder = leases.take(shard, f"run:{owner.run_id}", duration_s=30, handover_at=time.time() + 5)
    assert holder is not None
    launched = tick()
    assert shard in launched
    assert launched[shard]["lease_wait_s"] == kinesis.handover_lead_s + kinesis.lease_duration_s
    instance.create_run_for_job(
        kinesis_microbatch_job,
        run_config={"ops": {"consume_shard": {"config": launched[shard]}}},
        tags={SHARD_TAG: shard, shard_tag(shard): "owner"},
        status=DagsterRunStatus.STARTING,  # launched, not yet started: it has not asked for the lease
    )
    assert shard not in tick()  # one successor, not one per tick
    leases.release(holder)


def test_an_idle_worker_reports_its_iterator_age(stream, resources, cloudwatch):
    """A worker with nothing to read still publishes `GetRecords.IteratorAgeMilliseconds` (a heartbeat),
    so the lag alarm, which treats silence as a stall, stays quiet for an idle pipeline."""
    from datetime import timedelta

    from etl_platform.ops import metrics as m

    shards = [s["ShardId"] for s in resources["kinesis"].client().list_shards(StreamName=stream)["Shards"]]
    outcome = kinesis_microbatch_job.execute_in_process(
        run_config={"ops": {"consume_shard": {"config": {"shard_ids": shards, "budget_s": 2.0}}}},
        resources=resources,
    )
    assert outcome.success
    ages = m.period_values(
        cloudwatch,
        m.ITERATOR_AGE,
        stream,
        datetime.now(UTC) - timedelta(minutes=2),
        datetime.now(UTC),
        60,
        "SampleCount",
    )
    assert sum(ages) >= 1  # no batch was committed: these are heartbeats
    assert m.read_metric(cloudwatch, m.RECORDS_READ, stream, 2, "Sum") is None
    assert m.read_metric(cloudwatch, m.ITERATOR_AGE, stream, 2, "Maximum") == 0
