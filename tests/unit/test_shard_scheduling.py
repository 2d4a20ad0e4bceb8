"""The Kinesis sensor's decision "which shards are due", as a pure function: no servers, no Dagster."""

from __future__ import annotations

from etl_platform.stream.checkpoints import Checkpoint
from etl_platform.stream.scheduling import (
    FAILED_RETRY_AFTER_S,
    START,
    BatchRequest,
    LatestRun,
    due_batches,
)
from etl_platform.stream.shards import Shard

NOW = 1_000_000.0
INTERVAL = 10.0
RUNNING = LatestRun(in_flight=True, failed=False, position=START)


def shard(sid: str, *parents: str, closed: bool = False) -> Shard:
    return Shard(sid, tuple(parents), closed, "0", (0, 1))


class Records:
    """A `has_new_records` answer that records what it was asked."""

    def __init__(self, answer: bool = True) -> None:
        self.answer, self.asked = answer, []

    def __call__(self, shard_id: str, after: str | None) -> bool:
        self.asked.append((shard_id, after))
        return self.answer


def plan(shards, checkpoints=None, runs=None, cursor=None, now=NOW, records=None):
    return due_batches(
        shards,
        checkpoints or {},
        runs or {},
        cursor or {},
        now,
        INTERVAL,
        records if records is not None else Records(),
    )


def test_a_new_shard_with_records_is_due_from_the_start():
    records = Records()
    result = plan([shard("s-0")], records=records)
    assert result.requests == [BatchRequest("s-0", START, 0)]
    assert result.requests[0].run_key == "s-0:start:0"
    assert result.cursor == {"s-0": {"launched_at": NOW, "attempt": 0}}
    assert records.asked == [("s-0", None)]


def test_a_shard_with_a_run_in_flight_is_skipped_without_a_kinesis_read():
    records = Records()
    result = plan([shard("s-0"), shard("s-1")], runs={"s-0": RUNNING}, records=records)
    assert [r.shard_id for r in result.requests] == ["s-1"]
    assert records.asked == [("s-1", None)]
    assert result.cursor["s-0"] == {"launched_at": 0.0, "attempt": 0}  # tracked, not launched


def test_interval_due_only_after_the_buffer_interval_and_only_with_new_records():
    cp = {"s-0": Checkpoint("s-0", sequence_number="42")}
    cursor = {"s-0": {"launched_at": NOW - INTERVAL + 1, "attempt": 0}}
    records = Records()
    assert plan([shard("s-0")], cp, cursor=cursor, records=records).requests == []
    assert records.asked == []  # not due: no read

    cursor = {"s-0": {"launched_at": NOW - INTERVAL, "attempt": 0}}
    assert plan([shard("s-0")], cp, cursor=cursor, records=Records(False)).requests == []
    result = plan([shard("s-0")], cp, cursor=cursor, records=records)
    assert result.requests == [BatchRequest("s-0", "42", 0)]
    assert records.asked == [("s-0", "42")]  # read after the checkpoint
    assert result.cursor["s-0"]["launched_at"] == NOW


def test_size_cap_makes_a_shard_due_before_the_interval():
    cp = {"s-0": Checkpoint("s-0", sequence_number="42", more_available=True)}
    cursor = {"s-0": {"launched_at": NOW - 1, "attempt": 0}}
    assert plan([shard("s-0")], cp, cursor=cursor).requests == [BatchRequest("s-0", "42", 0)]


def test_a_closed_parent_is_due_without_a_records_read_and_its_children_wait():
    shards = [shard("p", closed=True), shard("c-0", "p"), shard("c-1", "p")]
    cp = {"p": Checkpoint("p", sequence_number="7")}
    cursor = {"p": {"launched_at": NOW - 1, "attempt": 0}}
    records = Records()
    result = plan(shards, cp, cursor=cursor, records=records)
    assert result.requests == [BatchRequest("p", "7", 0)]
    assert records.asked == []  # a closed shard must be finished, new records or not
    assert set(result.cursor) == {"p"}  # the children are not readable yet


def test_children_become_due_once_every_parent_is_finished():
    shards = [shard("a", closed=True), shard("b", closed=True), shard("m", "a", "b")]
    half = {"a": Checkpoint("a", sequence_number="9", finished=True), "b": Checkpoint("b", sequence_number="3")}
    result = plan(shards, half, cursor={"b": {"launched_at": NOW, "attempt": 0}})
    assert [r.shard_id for r in result.requests] == ["b"]  # the merge waits for b

    done = {**half, "b": Checkpoint("b", sequence_number="5", finished=True)}
    result = plan(shards, done)
    assert result.requests == [BatchRequest("m", START, 0)]
    assert result.finished == {"a", "b"}


def test_a_failed_batch_is_retried_after_a_backoff_with_the_next_attempt():
    cp = {"s-0": Checkpoint("s-0", sequence_number="42", more_available=True)}
    failed = {"s-0": LatestRun(in_flight=False, failed=True, position="42")}
    cursor = {"s-0": {"launched_at": NOW - FAILED_RETRY_AFTER_S + 1, "attempt": 0}}
    result = plan([shard("s-0")], cp, failed, cursor)
    assert result.requests == [] and result.cursor == cursor  # backing off

    cursor = {"s-0": {"launched_at": NOW - FAILED_RETRY_AFTER_S, "attempt": 0}}
    result = plan([shard("s-0")], cp, failed, cursor)
    assert result.requests == [BatchRequest("s-0", "42", 1)]
    assert result.requests[0].run_key == "s-0:42:1"  # a new run key: not deduplicated away
    assert result.cursor["s-0"] == {"launched_at": NOW, "attempt": 1}
    assert cursor["s-0"]["attempt"] == 0  # the input cursor is not modified


def test_a_failure_at_an_older_position_is_not_a_retry():
    cp = {"s-0": Checkpoint("s-0", sequence_number="43", more_available=True)}
    failed = {"s-0": LatestRun(in_flight=False, failed=True, position="42")}
    cursor = {"s-0": {"launched_at": NOW - 1, "attempt": 2}}
    assert plan([shard("s-0")], cp, failed, cursor).requests == [BatchRequest("s-0", "43", 2)]


def test_finished_shards_are_never_scheduled():
    cp = {"s-0": Checkpoint("s-0", sequence_number="9", finished=True)}
    result = plan([shard("s-0", closed=True)], cp)
    assert result.requests == [] and result.cursor == {} and result.finished == {"s-0"}
