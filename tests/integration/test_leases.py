"""Shard leases against the local stack (DynamoDB on moto): one owner per shard, fenced commits,
takeover after a crash, two consumers side by side, reads past empty pages, lineage kept."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime

import pytest

from etl_platform.lake import layout
from etl_platform.stream.consumer import ConsumerConfig, StreamConsumer, WorkBudget
from etl_platform.stream.leases import LeaseLost, LeaseTable
from etl_platform.stream.producer import KinesisProducer
from etl_platform.stream.shards import Shard
from etl_platform.stream.sources import demo_mix
from tests.integration.pipeline_helpers import REPO, assert_same_results, lake_rows, one_pass

pytestmark = pytest.mark.stack

START = datetime(2026, 5, 1, 8, 0, tzinfo=UTC)


def events(n: int, seed: int):
    return list(demo_mix(n, seed=seed, start=START, users=10, spike_rate=0.02))


def assert_exactly_once(kinesis, s3, bucket, stream, expected: int) -> None:
    raw = lake_rows(s3, bucket, layout.RAW)
    assert raw.height == expected and raw["event_id"].n_unique() == expected
    assert_same_results(lake_rows(s3, bucket, layout.PROCESSED), one_pass(kinesis, stream))


def test_one_owner_per_shard_and_a_lost_lease_cannot_commit(dynamodb, lease_table, stream, kinesis):
    table = LeaseTable(dynamodb, lease_table, stream)
    shards = [Shard("shardId-a", (), False, "0", (0, 1))]
    table.sync(shards)
    first = table.take("shardId-a", "worker-1", duration_s=1.0, margin_s=0.3)
    assert first is not None and first.lease.owner == "worker-1" and first.lease.counter == 1
    assert table.take("shardId-a", "worker-2", duration_s=1.0) is None  # held: one owner at a time
    time.sleep(1.1)
    with pytest.raises(LeaseLost):
        first.check()  # its own deadline passed: it must not write any more
    second = table.take("shardId-a", "worker-2", duration_s=5.0)
    assert second is not None and second.lease.counter == 2  # the fencing token moved on
    # The old owner's commit is refused even if its clock were wrong: the write is conditional.
    first.deadline = time.monotonic() + 60
    with pytest.raises(LeaseLost):
        table.commit(first, "42", "state", finished=False, records=1, millis_behind_latest=0)
    committed = table.commit(second, "42", "state", finished=False, records=1, millis_behind_latest=0)
    assert committed.checkpoint == "42" and committed.owner == "worker-2"
    table.release(second)
    released = table.get("shardId-a")
    assert released is not None and not released.held(time.time()) and released.released_by == "worker-2"
    assert table.take("shardId-a", "worker-3", duration_s=5.0) is not None  # free at once after a release


def test_depth_is_kept_when_parents_leave_list_shards(dynamodb, lease_table, stream):
    """A child's place in the stream order is written once; it does not change once its parents age out."""
    table = LeaseTable(dynamodb, lease_table, stream)
    parent = Shard("p", (), True, "0", (0, 1))
    children = [Shard("c1", ("p",), False, "5", (0, 0)), Shard("c2", ("p",), False, "5", (1, 1))]
    table.sync([parent, *children])
    assert {s: table.get(s).depth for s in ("p", "c1", "c2")} == {"p": 0, "c1": 1, "c2": 1}
    grandchild = Shard("g", ("c1", "c2"), False, "9", (0, 1))
    table.sync([*children, grandchild])  # the parent is gone from ListShards
    assert {s: table.get(s).depth for s in ("c1", "c2", "g")} == {"c1": 1, "c2": 1, "g": 2}


def test_old_lake_checkpoints_migrate_into_the_lease_table(kinesis, s3, bucket, stream, leases):
    KinesisProducer(kinesis, stream).send(events(120, seed=1))
    config = ConsumerConfig(max_records=50)
    StreamConsumer(kinesis, s3, bucket, stream, leases, config).drain()
    # Pretend an older version consumed the stream: its checkpoints lived in the lake.
    for lease in leases.all().values():
        old = {
            "shard_id": lease.shard_id,
            "sequence_number": lease.checkpoint,
            "state_key": lease.state_key,
            "finished": lease.finished,
            "records": lease.records,
        }
        layout.put(s3, bucket, f"_checkpoints/{stream}/{lease.shard_id}.json", json.dumps(old).encode())
    before = {k: v.checkpoint for k, v in leases.all().items()}
    leases.delete_all()
    KinesisProducer(kinesis, stream).send(events(80, seed=2))
    results = StreamConsumer(kinesis, s3, bucket, stream, leases, config).drain()
    assert sum(r.events for r in results) == 80  # resumed at the migrated checkpoints, nothing re-read
    assert set(before) == set(leases.all())
    assert_exactly_once(kinesis, s3, bucket, stream, 200)


def test_a_second_consumer_leaves_a_leased_shard_to_its_worker(kinesis, s3, bucket, stream, leases):
    """`consume --until-caught-up` beside a running worker: each batch is committed by exactly one."""
    producer = KinesisProducer(kinesis, stream)
    producer.send(events(300, seed=3))
    config = ConsumerConfig(max_records=40, buffer_interval_s=0.5, lease_duration_s=3, poll_interval_s=0.2)
    worker = StreamConsumer(kinesis, s3, bucket, stream, leases, config, owner="worker")
    shard = worker.readable()[0].shard_id
    stop = threading.Event()
    outcome = {}
    thread = threading.Thread(
        target=lambda: outcome.update(result=worker.work(shard, WorkBudget(seconds=60), should_stop=stop.is_set))
    )
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not (leases.get(shard) and leases.get(shard).held(time.time())):
            assert time.monotonic() < deadline, "the worker never took its lease"
            time.sleep(0.05)
        other = StreamConsumer(kinesis, s3, bucket, stream, leases, ConsumerConfig(max_records=40), owner="cli")
        results = other.drain()
        assert results and {r.shard_id for r in results} == {s.shard_id for s in other.shards()} - {shard}
        producer.send(events(200, seed=4))  # more while both run
        results += other.drain()
        assert shard not in {r.shard_id for r in results}
        deadline = time.monotonic() + 30
        while leases.get(shard).millis_behind_latest or lake_rows(s3, bucket, layout.RAW).height < 500:
            assert time.monotonic() < deadline, "the worker did not catch up"
            time.sleep(0.5)
    finally:
        stop.set()
        thread.join(30)
    assert outcome["result"].stop_reason == "stopped" and not outcome["result"].lease_lost
    assert not leases.get(shard).held(time.time())  # released on the way out
    assert_exactly_once(kinesis, s3, bucket, stream, 500)


def test_a_successor_started_ahead_takes_the_shard_when_its_owner_hands_over(kinesis, s3, bucket, stream, leases):
    """The supervisor starts a worker's successor before the owner's budget ends: it waits for the lease
    (instead of the shard waiting for a run to start) and takes it as soon as the owner releases it."""
    producer = KinesisProducer(kinesis, stream)
    producer.send(events(300, seed=11))
    config = ConsumerConfig(max_records=40, buffer_interval_s=0.5, lease_duration_s=6, poll_interval_s=0.2)
    owner = StreamConsumer(kinesis, s3, bucket, stream, leases, config, owner="owner")
    successor = StreamConsumer(kinesis, s3, bucket, stream, leases, config, owner="successor")
    shard = owner.readable()[0].shard_id
    outcomes: dict = {}
    stop = threading.Event()
    first = threading.Thread(target=lambda: outcomes.update(owner=owner.work(shard, WorkBudget(seconds=4))))
    first.start()
    deadline = time.monotonic() + 20
    while not (leases.get(shard) and leases.get(shard).owner == "owner"):
        assert time.monotonic() < deadline, "the owner never took its lease"
        time.sleep(0.05)
    held = leases.get(shard)
    assert held.handover_at is not None and 0 < held.handover_at - time.time() <= 4  # announced for the supervisor
    second = threading.Thread(
        target=lambda: outcomes.update(
            successor=successor.work(shard, WorkBudget(seconds=60, lease_wait_s=30), should_stop=stop.is_set)
        )
    )
    second.start()
    try:
        time.sleep(1)
        assert leases.get(shard).owner == "owner"  # the successor waits; it does not steal the lease
        first.join(30)
        assert outcomes["owner"].stop_reason == "time budget" and not outcomes["owner"].lease_lost
        deadline = time.monotonic() + 10
        while leases.get(shard).owner != "successor":
            assert time.monotonic() < deadline, "the successor did not take the released lease"
            time.sleep(0.05)
        assert leases.get(shard).counter == held.counter + 1
        producer.send(events(200, seed=12))  # the successor carries on where the owner committed
        StreamConsumer(kinesis, s3, bucket, stream, leases, config, owner="cli").drain()  # the other shards
        deadline = time.monotonic() + 30
        while leases.get(shard).millis_behind_latest or lake_rows(s3, bucket, layout.RAW).height < 500:
            assert time.monotonic() < deadline, "the successor did not catch up"
            time.sleep(0.5)
    finally:
        stop.set()
        second.join(30)
    assert outcomes["successor"].batches and outcomes["successor"].held_by is None
    assert_exactly_once(kinesis, s3, bucket, stream, 500)


def test_a_successor_gives_up_a_lease_that_is_not_handed_over_in_time(kinesis, s3, bucket, stream, leases):
    config = ConsumerConfig(lease_duration_s=30, poll_interval_s=0.2)
    shard = StreamConsumer(kinesis, s3, bucket, stream, leases, config).readable()[0].shard_id
    assert leases.take(shard, "someone", duration_s=30) is not None
    waiter = StreamConsumer(kinesis, s3, bucket, stream, leases, config, owner="waiter")
    started = time.monotonic()
    outcome = waiter.work(shard, WorkBudget(seconds=60, lease_wait_s=1))
    assert outcome.held_by == "someone" and outcome.stop_reason == "held by another worker" and not outcome.batches
    assert time.monotonic() - started < 30  # it stopped waiting at its deadline, not at its budget


def test_a_killed_worker_is_replaced_within_a_lease_period(kinesis, s3, bucket, stream, leases):
    """kill -9 mid-stream (buffered, uncommitted reads lost with the process): the next worker takes over
    once the lease expires and the lake ends up with every event exactly once."""
    producer = KinesisProducer(kinesis, stream)
    producer.send(events(400, seed=5))
    shard = StreamConsumer(kinesis, s3, bucket, stream, leases).readable()[0].shard_id
    env = {
        **{k: v for k, v in os.environ.items() if k != "ETL_PROFILE"},
        "ETL_STREAM_NAME": stream,
        "ETL_LAKE_BUCKET": bucket,
        "ETL_BATCH_MAX_RECORDS": "30",
        "ETL_BUFFER_INTERVAL_S": "0.3",
        "ETL_LEASE_DURATION_S": "2",
        "ETL_POLL_INTERVAL_S": "0.2",
    }
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "etl_platform.cli",
            "consume",
            "--shard",
            shard,
            "--seconds",
            "120",
            "--quiet",
            "--no-index",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not ((lease := leases.get(shard)) and lease.checkpoint and lease.records >= 60):
            assert worker.poll() is None, worker.stderr.read().decode() if worker.stderr else ""
            assert time.monotonic() < deadline, "the worker committed nothing"
            time.sleep(0.1)
        producer.send(events(100, seed=6))
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(10)
    finally:
        if worker.poll() is None:
            worker.kill()
    killed = leases.get(shard)
    assert killed.held(time.time())  # the dead process still holds it...
    config = ConsumerConfig(max_records=30, lease_duration_s=2)
    replacement = StreamConsumer(kinesis, s3, bucket, stream, leases, config, owner="replacement")
    assert replacement.work(shard, WorkBudget(until_caught_up=True)).held_by == killed.owner
    time.sleep(max(0.0, killed.expires_at - time.time()) + 0.1)  # ... for at most one lease period
    replacement.drain()
    after = leases.get(shard)
    assert after.counter > killed.counter and after.released_by == "replacement"  # taken over, then handed back
    assert_exactly_once(kinesis, s3, bucket, stream, 500)


class EmptyPagesFirst:
    """Test double around the real Kinesis client: each fresh iterator first answers `empty` empty pages
    that say records are behind them, as Kinesis can (the local emulator never does)."""

    def __init__(self, kinesis, empty: int) -> None:
        self.kinesis, self.empty, self.exceptions, self.meta = kinesis, empty, kinesis.exceptions, kinesis.meta
        self.pending: dict[str, int] = {}
        self.empty_pages = 0

    def get_shard_iterator(self, **kwargs):
        response = self.kinesis.get_shard_iterator(**kwargs)
        self.pending[response["ShardIterator"]] = self.empty
        return response

    def get_records(self, ShardIterator: str, Limit: int):  # noqa: N803 (boto3's names)
        if self.pending.get(ShardIterator, 0) > 0:
            self.pending[ShardIterator] -= 1
            self.empty_pages += 1
            return {"Records": [], "NextShardIterator": ShardIterator, "MillisBehindLatest": 5000}
        return self.kinesis.get_records(ShardIterator=ShardIterator, Limit=Limit)

    def __getattr__(self, name: str):
        return getattr(self.kinesis, name)


def test_reads_go_on_past_empty_pages_while_the_shard_is_behind(kinesis, s3, bucket, stream, leases):
    KinesisProducer(kinesis, stream).send(events(150, seed=7))
    flaky = EmptyPagesFirst(kinesis, empty=7)  # more than the old reader's 5 empty pages
    results = StreamConsumer(flaky, s3, bucket, stream, leases, ConsumerConfig(max_records=60)).drain()
    assert flaky.empty_pages >= 14 and sum(r.events for r in results) == 150
    assert_exactly_once(kinesis, s3, bucket, stream, 150)


def test_resharding_2_to_4_to_2_while_workers_run_is_exact(kinesis, s3, bucket, stream, leases):
    """Workers own the shards while the stream splits and merges: each finishes its closed shard, the
    children start from their parents' state, and the lake equals one pass over the stream."""
    producer = KinesisProducer(kinesis, stream)
    config = ConsumerConfig(max_records=60, buffer_interval_s=0.3, lease_duration_s=3, poll_interval_s=0.2)
    consumer = StreamConsumer(kinesis, s3, bucket, stream, leases, config, owner="worker")

    def run_until_finished(shard_ids: list[str], reshard_to: int, more: int, seed: int) -> None:
        outcomes: list = []
        thread = threading.Thread(target=lambda: outcomes.extend(consumer.work_many(shard_ids, WorkBudget(seconds=90))))
        thread.start()
        deadline = time.monotonic() + 30
        while not all((lease := leases.get(sid)) and lease.records for sid in shard_ids):
            assert time.monotonic() < deadline, "the workers committed nothing"
            time.sleep(0.1)
        kinesis.update_shard_count(StreamName=stream, TargetShardCount=reshard_to, ScalingType="UNIFORM_SCALING")
        producer.send(events(more, seed=seed))  # lands on the children
        thread.join(90)
        assert not thread.is_alive() and all(o.finished for o in outcomes)  # every closed shard read to its end

    producer.send(events(300, seed=8))
    parents = [lease.shard_id for lease in consumer.readable()]
    run_until_finished(parents, 4, 200, seed=9)
    children = [lease.shard_id for lease in consumer.readable()]
    assert len(children) == 4 and not set(children) & set(parents)
    assert {leases.get(sid).depth for sid in children} == {1}
    run_until_finished(children, 2, 200, seed=10)
    consumer.drain()
    assert_exactly_once(kinesis, s3, bucket, stream, 700)
