"""Scenarios 3 and 5 of the fault matrix: backfills beside the stream, and objects of uncommitted flushes.

Against the local stack. Readers downstream of the lake see committed objects only (lake.visibility);
a backfill (replay) writes only what it recomputed and removes nothing the stream wrote.
"""

from __future__ import annotations

import time
from datetime import UTC, date, datetime

import pytest

from etl_platform.lake import layout
from etl_platform.lake.readers import read_day
from etl_platform.lake.replay import recompute_processed_day
from etl_platform.stream.consumer import ConsumerConfig, StreamConsumer
from etl_platform.stream.producer import KinesisProducer
from etl_platform.stream.sources import demo_mix
from etl_platform.warehouse import partition_counts
from tests.integration.pipeline_helpers import assert_same_results, cli, lake_rows, one_pass

pytestmark = pytest.mark.stack

START = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
DAY = START.date()


def events(n: int, seed: int) -> list:
    return list(demo_mix(n, seed=seed, start=START, users=10, spike_rate=0.02))


def env_for(stream: str, bucket: str, **extra: str) -> dict[str, str]:
    return {"ETL_STREAM_NAME": stream, "ETL_LAKE_BUCKET": bucket, "ETL_LEASE_DURATION_S": "2", **extra}


def test_objects_of_an_uncommitted_flush_are_invisible_until_a_retry_replaces_them(kinesis, s3, bucket, stream, leases):
    KinesisProducer(kinesis, stream, compress=True).send(events(400, seed=21))
    env = env_for(stream, bucket, ETL_BATCH_MAX_RECORDS="100")
    crashed = cli(
        "consume",
        "--until-caught-up",
        "--quiet",
        "--no-index",
        env={**env, "ETL_FAULT_KILL_AFTER": "processed"},
        check=False,
    )
    assert crashed.returncode == -9
    pending = leases.pending_objects()
    written = layout.list_keys(s3, bucket, layout.day_prefix(layout.PROCESSED, DAY))
    assert written and set(written) <= pending  # the dead attempt's objects are in the lake, uncommitted

    # Every reader downstream skips them: lake reads, the warehouse's counts, a backfill.
    assert read_day(s3, bucket, layout.PROCESSED, DAY).height > 0  # they are there...
    assert read_day(s3, bucket, layout.PROCESSED, DAY, leases.pending_objects).height == 0  # ...but not committed
    assert partition_counts(s3, bucket, DAY, leases.pending_objects).rows == 0
    replayed = recompute_processed_day(s3, bucket, DAY, pending=leases.pending_objects)
    assert replayed.rows == 0 and replayed.written == []

    # A retry with another batch size commits; what the dead attempt wrote and the retry did not
    # overwrite is gone, and every reader now sees each event once.
    held = [lease for lease in leases.all().values() if lease.held(time.time())]
    time.sleep(max([0.0, *(lease.expires_at - time.time() for lease in held)]) + 0.1)
    cli("consume", "--until-caught-up", "--quiet", "--no-index", env={**env, "ETL_BATCH_MAX_RECORDS": "37"})
    assert leases.pending_objects() == set()
    visible = read_day(s3, bucket, layout.PROCESSED, DAY, leases.pending_objects)
    everything = read_day(s3, bucket, layout.PROCESSED, DAY)
    assert visible.height == everything.height == 400 and visible["event_id"].n_unique() == 400
    assert partition_counts(s3, bucket, DAY, leases.pending_objects).rows == 400
    assert_same_results(lake_rows(s3, bucket, layout.PROCESSED), one_pass(kinesis, stream))


class CommitDuringReplay:
    """The real S3 client, except that the replay's first processed write first lets the stream commit
    a flush: a test double for timing only (the stream's commit lands between the replay's listing of
    raw and its end, which on a real deployment is a matter of luck)."""

    def __init__(self, s3, on_first_processed_put) -> None:
        self._s3, self._hook = s3, on_first_processed_put

    def put_object(self, **kwargs):
        if self._hook is not None and kwargs["Key"].startswith(f"{layout.PROCESSED}/"):
            hook, self._hook = self._hook, None
            hook()
        return self._s3.put_object(**kwargs)

    def __getattr__(self, name):
        return getattr(self._s3, name)


def test_a_backfill_beside_the_stream_loses_and_duplicates_nothing(kinesis, s3, bucket, stream, leases):
    producer = KinesisProducer(kinesis, stream)
    producer.send(events(300, seed=22))
    config = ConsumerConfig(max_records=80)
    StreamConsumer(kinesis, s3, bucket, stream, leases, config).drain()
    before = set(layout.list_keys(s3, bucket, layout.day_prefix(layout.PROCESSED, DAY)))
    producer.send(events(150, seed=23))  # the stream's next flushes, for the same day

    def stream_commits_meanwhile() -> None:
        StreamConsumer(kinesis, s3, bucket, stream, leases, config).drain()

    replay_s3 = CommitDuringReplay(s3, stream_commits_meanwhile)
    replayed = recompute_processed_day(replay_s3, bucket, DAY, pending=leases.pending_objects)
    after = set(layout.list_keys(s3, bucket, layout.day_prefix(layout.PROCESSED, DAY)))
    new_objects = after - before
    assert new_objects, "the stream committed no flush during the backfill"
    assert not new_objects & set(replayed.written)  # the replay listed raw before they existed...
    # ...and left them alone: every event once in processed, with the stream's analytics.
    processed = lake_rows(s3, bucket, layout.PROCESSED)
    assert processed.height == 450 and processed["event_id"].n_unique() == 450
    assert_same_results(processed, one_pass(kinesis, stream))
    assert date.fromisoformat(str(DAY)) == replayed.day


def test_a_replay_reports_the_rows_it_changed(kinesis, s3, bucket, stream, leases):
    """Scenario 4: a key whose history reaches back beyond the replay's 7 days gets other windows in a
    replay than the stream gave it; the replay counts those rows instead of changing them silently."""
    day = datetime(2026, 6, 20, tzinfo=UTC)
    old = day.replace(day=5)  # 15 days before: outside the replay's lookback

    def envelope(user: str, when: datetime, value: float) -> dict:
        return {"source": "api", "user_id": user, "event_type": "call", "event_time": when.isoformat(), "value": value}

    sparse_history = [
        envelope("sparse", old.replace(hour=1, minute=i % 60, second=i // 60), 100.0 + i) for i in range(120)
    ]
    todays = [envelope("sparse", day.replace(hour=9, minute=i), 50.0 + i) for i in range(5)]
    dense = [envelope("dense", day.replace(hour=10, minute=i), 10.0 + i) for i in range(20)]
    KinesisProducer(kinesis, stream).send(sparse_history + todays + dense)
    StreamConsumer(kinesis, s3, bucket, stream, leases, ConsumerConfig()).drain()

    replayed = recompute_processed_day(s3, bucket, day.date(), pending=leases.pending_objects)
    assert replayed.rows == 25
    assert replayed.rows_changed == 5  # the sparse key's rows of the day; the dense key's are the stream's
    again = recompute_processed_day(s3, bucket, day.date(), pending=leases.pending_objects)
    assert again.rows_changed == 0  # a replay of a replay changes nothing
