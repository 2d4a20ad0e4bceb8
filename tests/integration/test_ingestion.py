"""Sources -> Kinesis -> raw S3 -> analytics -> processed S3, exactly once, against the real local stack."""

from __future__ import annotations

import base64
import gzip
import json
import time
from datetime import UTC, datetime

import pytest

from etl_platform.lake import layout
from etl_platform.stream.consumer import ConsumerConfig, StreamConsumer
from etl_platform.stream.producer import KinesisProducer
from etl_platform.stream.sources import demo_mix
from tests.integration.pipeline_helpers import assert_same_results, cli, lake_rows, one_pass, write_jsonl

pytestmark = pytest.mark.stack

START = datetime(2026, 3, 1, 23, 59, 55, tzinfo=UTC)  # crosses midnight: two days, two hours


def events(n: int, seed: int, users: int = 12):
    # Few users so each key gets long histories: windows and baselines are exercised across batches.
    return list(demo_mix(n, seed=seed, start=START, users=users, spike_rate=0.02))


def consumer(kinesis, s3, bucket, stream, leases, **config) -> StreamConsumer:
    return StreamConsumer(kinesis, s3, bucket, stream, leases, ConsumerConfig(**{"max_records": 120, **config}))


def test_end_to_end_file_gzip_and_kpl_across_shards(kinesis, s3, bucket, stream, leases, tmp_path):
    batch = events(900, seed=1)
    env = {"ETL_STREAM_NAME": stream}
    # One record per event (plain, then gzip), then aggregated per shard (the default) with gzip members.
    cli("produce", "--file", str(write_jsonl(tmp_path / "a.jsonl", batch[:300])), "--no-kpl", "--quiet", env=env)
    b = write_jsonl(tmp_path / "b.jsonl", batch[300:600])
    cli("produce", "--file", str(b), "--no-kpl", "--gzip", "--quiet", env=env)
    cli("produce", "--file", str(write_jsonl(tmp_path / "c.jsonl", batch[600:])), "--gzip", "--quiet", env=env)

    results = consumer(kinesis, s3, bucket, stream, leases).drain()

    assert {r.shard_id for r in results} == {s["ShardId"] for s in kinesis.list_shards(StreamName=stream)["Shards"]}
    assert sum(r.events for r in results) == 900 and sum(r.errors for r in results) == 0
    processed = lake_rows(s3, bucket, layout.PROCESSED)
    expected = one_pass(kinesis, stream)
    assert expected.height == 900
    assert_same_results(processed, expected)
    assert processed["anomaly_status"].to_list().count("ANOMALY") > 0
    raw = lake_rows(s3, bucket, layout.RAW)
    assert sorted(raw["event_id"].to_list()) == sorted(e["event_id"] for e in batch)
    # Partitioned by event time: every object sits under the hour of each of its events.
    for row in raw.select("event_time", "_object").iter_rows():
        assert row[1].startswith(layout.HourPartition.of(row[0]).prefix(layout.RAW))
    assert len({k.split("/")[1] for k in raw["_object"].to_list()}) == 2  # two days


def test_retried_batches_overwrite_their_objects(kinesis, s3, bucket, stream, leases):
    KinesisProducer(kinesis, stream).send(events(200, seed=2))
    first = consumer(kinesis, s3, bucket, stream, leases).drain()
    keys_before = layout.list_keys(s3, bucket, "raw/") + layout.list_keys(s3, bucket, "processed/")
    # Forget the commits, as if every batch had crashed just before its checkpoint: the replay must
    # write exactly the same object names and contents.
    leases.delete_all()
    again = consumer(kinesis, s3, bucket, stream, leases).drain()
    assert [r.raw_objects for r in first] == [r.raw_objects for r in again]
    assert layout.list_keys(s3, bucket, "raw/") + layout.list_keys(s3, bucket, "processed/") == keys_before
    assert_same_results(lake_rows(s3, bucket, layout.PROCESSED), one_pass(kinesis, stream))


@pytest.mark.parametrize("stage", ["raw", "processed"])
def test_crash_before_commit_then_retry_leaves_no_duplicate_and_no_gap(kinesis, s3, bucket, stream, leases, stage):
    KinesisProducer(kinesis, stream, compress=True).send(events(500, seed=3))
    env = {
        "ETL_STREAM_NAME": stream,
        "ETL_LAKE_BUCKET": bucket,
        "ETL_BATCH_MAX_RECORDS": "100",
        "ETL_LEASE_DURATION_S": "2",
    }
    # A real crash: the consumer process SIGKILLs itself right after the stage is durable.
    crashed = cli(
        "consume", "--until-caught-up", "--quiet", "--no-index", env={**env, "ETL_FAULT_KILL_AFTER": stage}, check=False
    )
    assert crashed.returncode == -9
    assert layout.list_keys(s3, bucket, f"{stage}/")  # it did deliver before dying
    assert not any(lease.checkpoint for lease in leases.all().values())  # ... and committed nothing
    # The dead process still holds its shard's lease: another consumer takes the shard once it expires.
    held = [lease for lease in leases.all().values() if lease.held(time.time())]
    assert len(held) == 1 and held[0].pending_objects  # what it wrote is recorded as pending
    time.sleep(max(0.0, held[0].expires_at - time.time()) + 0.1)
    # The retry cuts its batches to another size: what the dead attempt wrote and the retry does not
    # overwrite (recorded as pending in the lease) is removed, never left beside the new objects.
    done = cli("consume", "--until-caught-up", "--quiet", "--no-index", env={**env, "ETL_BATCH_MAX_RECORDS": "37"})
    summary = json.loads(done.stdout)
    assert summary["events"] == 500
    assert_same_results(lake_rows(s3, bucket, layout.PROCESSED), one_pass(kinesis, stream))
    raw = lake_rows(s3, bucket, layout.RAW)
    assert raw.height == 500 and raw["event_id"].n_unique() == 500


def test_poison_records_go_to_errors_and_the_rest_flows_on(kinesis, s3, bucket, stream, leases):
    good = events(60, seed=4)
    producer = KinesisProducer(kinesis, stream)
    producer.send(good[:30])
    kinesis.put_records(
        StreamName=stream,
        Records=[
            {"Data": b"\x00\xffnot json", "PartitionKey": "poison-1"},
            {
                "Data": json.dumps({**good[0], "event_id": "bad-value", "value": "NaN"}).encode(),
                "PartitionKey": "poison-2",
            },
            {"Data": gzip.compress(b'{"truncated": ')[:-4], "PartitionKey": "poison-3"},
        ],
    )
    producer.send(good[30:])

    results = consumer(kinesis, s3, bucket, stream, leases).drain()

    assert sum(r.errors for r in results) == 3 and sum(r.events for r in results) == 60
    error_rows = [
        row
        for key in layout.list_keys(s3, bucket, "errors/")
        for row in layout.read_jsonl_gz(layout.get(s3, bucket, key))
    ]
    assert sorted(r["partition_key"] for r in error_rows) == ["poison-1", "poison-2", "poison-3"]
    by_key = {r["partition_key"]: r for r in error_rows}
    assert base64.b64decode(by_key["poison-1"]["raw_base64"]) == b"\x00\xffnot json"
    assert by_key["poison-1"]["reason"].startswith("json:")
    assert "value" in by_key["poison-2"]["reason"]
    assert by_key["poison-3"]["reason"].startswith("gzip:")
    assert all(r["shard_id"] and r["sequence_number"] for r in error_rows)
    assert_same_results(lake_rows(s3, bucket, layout.PROCESSED), one_pass(kinesis, stream))


def test_resharding_2_to_4_to_2_while_consuming_is_exact(kinesis, s3, bucket, stream, leases):
    run = consumer(kinesis, s3, bucket, stream, leases, max_records=80)
    producer = KinesisProducer(kinesis, stream)
    producer.send(events(300, seed=5))
    run.process_shard(run.readable()[0].shard_id)  # one shard part-consumed when the split happens
    kinesis.update_shard_count(StreamName=stream, TargetShardCount=4, ScalingType="UNIFORM_SCALING")
    producer.send(events(300, seed=6))
    # Children must wait for their parents: the first readable shards are still the two parents.
    assert {s.shard_id for s in run.readable()} <= {s.shard_id for s in run.shards() if s.closed}
    for shard in run.readable()[:2]:  # part of the way through the children
        run.process_shard(shard.shard_id)
    kinesis.update_shard_count(StreamName=stream, TargetShardCount=2, ScalingType="UNIFORM_SCALING")
    producer.send(events(300, seed=7))
    run.drain()

    shards = run.shards()
    assert sum(1 for s in shards if not s.closed) == 2 and len(shards) > 4
    assert all(
        cp.finished for sid, cp in run.leases.all().items() if next(s for s in shards if s.shard_id == sid).closed
    )
    expected = one_pass(kinesis, stream)
    assert expected.height == 900
    assert_same_results(lake_rows(s3, bucket, layout.PROCESSED), expected)
