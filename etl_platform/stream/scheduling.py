"""Which shards get a micro-batch now: the Kinesis sensor's decision, without Dagster and without I/O.

Each tick the caller gathers the inputs (the stream's shards, the committed checkpoints, each shard's
latest run and the sensor's cursor) and asks `due_batches`. A readable shard (children only after
their parents are finished) with no run in flight gets a batch when its buffer is due: the last batch
stopped at its size cap, the shard is closed and must be finished, or the buffer interval has passed
since the last launch, and, for an open shard, new records are waiting (Firehose's size-or-interval
buffering). A shard whose latest run failed at the position it would start from again is retried at
most every `retry_after_s`, with a new attempt number so the retry gets a new run key.

The cursor is JSON-shaped, `{shard_id: {"launched_at": epoch_s, "attempt": n}}`; the input is not
modified, the updated copy is part of the result.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from etl_platform.stream.checkpoints import Checkpoint
from etl_platform.stream.shards import Shard, readable_shards

FAILED_RETRY_AFTER_S = 60.0  # after a run exhausts its retries, try the shard again this much later
START = "start"  # the position of a shard with nothing consumed yet


@dataclass(frozen=True)
class LatestRun:
    """A shard's most recent run, as far as scheduling cares."""

    in_flight: bool  # queued, starting, running or being cancelled
    failed: bool
    position: str | None  # the position (checkpoint sequence number or START) it started from


@dataclass(frozen=True)
class BatchRequest:
    shard_id: str
    position: str  # where the batch starts: the checkpoint's sequence number, or START
    attempt: int  # bumped on each retry of a failed batch at the same position

    @property
    def run_key(self) -> str:
        return f"{self.shard_id}:{self.position}:{self.attempt}"


@dataclass(frozen=True)
class BatchPlan:
    requests: list[BatchRequest]
    cursor: dict[str, dict[str, Any]]
    finished: frozenset[str]  # shards read to their end (their children may start)


def position_of(checkpoint: Checkpoint | None) -> str:
    """Where a shard's next batch starts, as run keys and tags name it."""
    return checkpoint.sequence_number if checkpoint and checkpoint.sequence_number else START


def due_batches(
    shards: Sequence[Shard],
    checkpoints: Mapping[str, Checkpoint],
    latest_runs: Mapping[str, LatestRun | None],
    cursor: Mapping[str, Mapping[str, Any]],
    now: float,
    buffer_interval_s: float,
    has_new_records: Callable[[str, str | None], bool],
    retry_after_s: float = FAILED_RETRY_AFTER_S,
) -> BatchPlan:
    """The batches to launch now, in lineage order, and the updated cursor.

    `latest_runs` maps a shard id to its latest run (missing or None: never run). `has_new_records(shard_id,
    after_sequence_number)` is asked only for an open shard that is otherwise due (it costs a Kinesis read).
    """
    state_by_shard: dict[str, dict[str, Any]] = {sid: dict(state) for sid, state in cursor.items()}
    finished = frozenset(sid for sid, cp in checkpoints.items() if cp.finished)
    requests: list[BatchRequest] = []
    for shard in readable_shards(shards, set(finished)):
        sid = shard.shard_id
        state = state_by_shard.setdefault(sid, {"launched_at": 0.0, "attempt": 0})
        latest = latest_runs.get(sid)
        if latest is not None and latest.in_flight:
            continue  # at most one batch in flight per shard
        cp = checkpoints.get(sid)
        position = position_of(cp)
        if latest is not None and latest.failed and latest.position == position:
            if now - state["launched_at"] < retry_after_s:
                continue
            state["attempt"] += 1  # kept as the sensor always did: bumped even if the shard turns out not due
        due = (cp is not None and cp.more_available) or shard.closed or now - state["launched_at"] >= buffer_interval_s
        if not due:
            continue
        if not shard.closed and not has_new_records(sid, cp.sequence_number if cp else None):
            continue
        state["launched_at"] = now
        requests.append(BatchRequest(sid, position, state["attempt"]))
    return BatchPlan(requests=requests, cursor=state_by_shard, finished=finished)
