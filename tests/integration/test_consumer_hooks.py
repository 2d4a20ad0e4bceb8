"""The consumer's hooks for metrics, on the real local stack: `on_read` after every read (idle ones
included), a batch's process CPU (`cpu_s`) and the state bytes its commit wrote (`state_bytes`)."""

from __future__ import annotations

import os
from datetime import UTC, datetime

import pytest

from etl_platform.stream.checkpoints import Chain, unpack_state
from etl_platform.stream.consumer import ConsumerConfig, StreamConsumer, WorkBudget
from etl_platform.stream.producer import KinesisProducer
from etl_platform.stream.sources import demo_mix

pytestmark = pytest.mark.stack

START = datetime(2026, 6, 2, 9, tzinfo=UTC)


def consumer(kinesis, s3, bucket, stream, leases) -> StreamConsumer:
    return StreamConsumer(kinesis, s3, bucket, stream, leases, ConsumerConfig(max_records=100))


def written_snapshot(s3, bucket: str, state_key: str) -> tuple[str, int]:
    """The kind and size in the lake of the snapshot a commit added to its chain (a delta, or a base)."""
    manifest = s3.get_object(Bucket=bucket, Key=state_key)["Body"].read()
    chain = Chain.decode(unpack_state(manifest)[0])
    assert chain is not None
    key = chain.deltas[-1] if chain.deltas else chain.base
    return ("delta" if chain.deltas else "base"), s3.head_object(Bucket=bucket, Key=key)["ContentLength"]


def test_on_read_reports_every_read_and_batches_report_cpu_and_state_bytes(kinesis, s3, bucket, stream, leases):
    shard = sorted(s["ShardId"] for s in kinesis.list_shards(StreamName=stream)["Shards"])[0]
    reads: list[tuple[str, int]] = []

    def on_read(shard_id: str, millis_behind_latest: int) -> None:
        reads.append((shard_id, millis_behind_latest))

    idle = consumer(kinesis, s3, bucket, stream, leases).work(shard, WorkBudget(until_caught_up=True), on_read=on_read)
    assert not idle.batches and idle.reads >= 1
    assert reads == [(shard, 0)] * idle.reads  # idle polls report too: the worker's heartbeat

    producer = KinesisProducer(kinesis, stream)
    kinds = []
    # Many users in one batch first (the chain's base), then a few of them again (a delta of the keys touched).
    for events in (demo_mix(90, seed=1, start=START, users=40), demo_mix(20, seed=2, start=START, users=2)):
        producer.send(events)
        reads.clear()
        outcome = consumer(kinesis, s3, bucket, stream, leases).work(
            shard, WorkBudget(until_caught_up=True, flush_each_read=True), on_read=on_read
        )
        assert outcome.batches and len(reads) == outcome.reads
        assert {sid for sid, _ in reads} == {shard}
        for batch in outcome.batches:
            total = batch.timings["total"]
            assert 0 < batch.cpu_s == pytest.approx(sum(s.cpu_s for s in batch.stage_spans))
            assert batch.cpu_s <= total * (os.cpu_count() or 1) + 0.05  # CPU within the stages' wall time
        kind, size = written_snapshot(s3, bucket, leases.get(shard).state_key)
        assert outcome.batches[-1].state_bytes == size > 0
        kinds.append(kind)
    assert kinds[0] == "base" and kinds[-1] == "delta"


def test_an_on_read_that_raises_ends_the_work_and_frees_the_shard(kinesis, s3, bucket, stream, leases):
    shard = sorted(s["ShardId"] for s in kinesis.list_shards(StreamName=stream)["Shards"])[0]
    KinesisProducer(kinesis, stream).send(demo_mix(50, seed=3, start=START, users=4, spike_rate=0.0))

    def broken(shard_id: str, millis_behind_latest: int) -> None:
        raise RuntimeError("metrics endpoint down")

    with pytest.raises(RuntimeError, match="metrics endpoint down"):
        consumer(kinesis, s3, bucket, stream, leases).work(shard, WorkBudget(until_caught_up=True), on_read=broken)
    # Nothing committed, the lease released: the next worker takes the shard at once and reads it all.
    assert leases.get(shard).checkpoint is None
    outcome = consumer(kinesis, s3, bucket, stream, leases).work(shard, WorkBudget(until_caught_up=True))
    assert outcome.held_by is None and sum(b.records for b in outcome.batches) > 0
