"""The shard consumer: a lease-owning loop that reads, analyses, indexes and delivers a shard exactly once.

`StreamConsumer.work` takes a shard's lease (`stream.leases`) and loops until its budget ends, the
shard is closed and finished, it is told to stop, or the lease is lost:

    read (stream.reader) -> decode -> analytics -> search indexing   every read, about once a second
    lake flush: raw + errors -> processed -> commit                   by size or interval (Firehose)

Search gets each read's events at once; the lake gets them when the buffer is due (`buffer_bytes` or
`buffer_interval_s`, like Firehose's buffering hints per destination). The commit (checkpoint, the
analytics state, the lease's pending objects cleared) is one conditional write in the lease table,
after every output is durable; a worker that lost its lease can neither write (it checks its local
deadline before each write) nor commit (the write is conditional on its fencing token). A crash
anywhere re-reads from the last commit: the same analytics state gives the same rows, search
documents overwrite themselves (`_id` = `event_id`), and lake objects are named by the flush's first
stream position, with the names of an unfinished flush recorded in the lease first so that the next
attempt removes those it does not overwrite. So every event is in each sink exactly once.

`drain` runs the same loop in-process, shard by shard in lineage order, until every shard it can
lease is caught up (the CLI's `consume --until-caught-up`); `process_shard` commits one batch.

Every stage of a batch is measured as it completes (`stage`): wall time and process CPU into the
batch's `timings` and `cpu_s`, and one `StageSpan` per occurrence into `stage_spans`, which the
`trace_batch` hook (`etl_platform.ops.tracing.BatchTracer`) turns into a trace when the batch commits
or fails; an idle poll leaves no trace of itself in any of them.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

import polars as pl

from etl_platform.analytics import AnalyticsConfig, RollingAnomalyDetector
from etl_platform.config import env_number
from etl_platform.events import with_depth
from etl_platform.lake import writers
from etl_platform.pipelines import DEFAULT_CONTRACT, Pipeline
from etl_platform.pipelines.transforms import Transforms
from etl_platform.stream.checkpoints import StateStore, legacy_checkpoints
from etl_platform.stream.decoding import DecodedChunk, decode_chunks
from etl_platform.stream.dedupe import SeenIds
from etl_platform.stream.leases import Lease, LeaseHolder, LeaseLost, LeaseTable, readable
from etl_platform.stream.reader import KinesisSource, ReadResult, Source, SourceReader
from etl_platform.stream.shards import Shard

# Firehose's S3 defaults are 5 MiB / 300 s.
FIREHOSE_BUFFER_BYTES = 5 * 1024 * 1024
FIREHOSE_BUFFER_INTERVAL_S = 300


@dataclass(frozen=True)
class ConsumerConfig:
    max_records: int = 10_000  # per read; GetRecords returns at most 10,000 per call
    buffer_bytes: int = FIREHOSE_BUFFER_BYTES  # per read, per lake flush and per delivered object
    buffer_interval_s: float = FIREHOSE_BUFFER_INTERVAL_S  # a lake flush at least this often
    analytics: AnalyticsConfig = field(default_factory=AnalyticsConfig)
    lease_duration_s: float = 10.0  # a dead worker's shard is taken over within this long
    poll_interval_s: float = 1.0  # a caught-up worker reads its shard this often (as the KCL)
    read_budget_s: float = 5.0  # how long one read may page through empty pages while behind
    max_decoded_bytes: int = 64 * 1024 * 1024  # decompressed payload bytes a batch holds at most
    dedupe_horizon_s: float = 600.0  # a producer id delivered again within this long is a duplicate

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, profile: str = "local") -> ConsumerConfig:
        """Settings from ETL_* variables; the local profile flushes the lake every 10 s so the demo is lively."""
        env = os.environ if env is None else env
        defaults = cls(buffer_interval_s=10.0) if profile == "local" else cls()
        return cls(
            max_records=env_number(env, "ETL_BATCH_MAX_RECORDS", defaults.max_records, int, 1),
            buffer_bytes=env_number(env, "ETL_BUFFER_BYTES", defaults.buffer_bytes, int, 1024),
            buffer_interval_s=env_number(env, "ETL_BUFFER_INTERVAL_S", defaults.buffer_interval_s, float, 0),
            analytics=AnalyticsConfig.from_env(env),
            lease_duration_s=env_number(env, "ETL_LEASE_DURATION_S", defaults.lease_duration_s, float, 1),
            poll_interval_s=env_number(env, "ETL_POLL_INTERVAL_S", defaults.poll_interval_s, float, 0.2),
            max_decoded_bytes=env_number(env, "ETL_MAX_DECODED_BYTES", defaults.max_decoded_bytes, int, 1024 * 1024),
            dedupe_horizon_s=env_number(env, "ETL_DEDUPE_HORIZON_S", defaults.dedupe_horizon_s, float, 0),
        )


@dataclass(frozen=True)
class WorkBudget:
    """When a worker gives its shard back."""

    seconds: float | None = None  # wall time
    batches: int | None = None  # committed lake flushes
    until_caught_up: bool = False  # once a read finds nothing behind it
    flush_each_read: bool = False  # every read is a lake flush and a commit (micro-batches)
    lease_wait_s: float = 0.0  # a successor waits this long for a held lease to be handed over


class StageSpan(NamedTuple):
    """One run of one stage of a batch (`stage`): wall-clock start and end (epoch ns), the process CPU
    seconds it took, and the exception that ended it, if one did."""

    name: str
    start_ns: int
    end_ns: int
    cpu_s: float
    error: str | None = None


@dataclass
class BatchResult:
    """One committed lake flush of one shard (a micro-batch)."""

    shard_id: str
    first_sequence: str | None = None
    last_sequence: str | None = None
    records: int = 0
    decoded_bytes: int = 0  # the records' payloads after decompression
    events: int = 0
    duplicates: int = 0  # deliveries of an event_id seen lately, dropped (stream.dedupe)
    dropped: int = 0  # events a transform dropped (its `Dropped` outcome)
    errors: int = 0
    anomalies: int = 0
    ended: bool = False
    cut: bool = False
    millis_behind_latest: int = 0
    committed: bool = False
    raw_objects: list[str] = field(default_factory=list)
    processed_objects: list[str] = field(default_factory=list)
    error_objects: list[str] = field(default_factory=list)
    rows_by_day: dict[str, int] = field(default_factory=dict)
    search_indexed: int = 0
    search_failed: int = 0  # backed up under search-failed/ in the lake, never dropped
    max_latency_s: float = 0.0  # arrival -> processed object durable, for the batch's oldest record
    timings: dict[str, float] = field(default_factory=dict)
    cpu_s: float = 0.0  # process CPU over the stages (all threads): cpu_s / timings["total"] = utilisation
    state_bytes: int = 0  # the analytics snapshot its commit wrote (a base or a delta; not the manifest)
    stage_spans: list[StageSpan] = field(default_factory=list, repr=False, compare=False)  # one per stage run


@dataclass
class WorkResult:
    """What one `work` call did with its shard."""

    shard_id: str
    owner: str
    batches: list[BatchResult] = field(default_factory=list)
    held_by: str | None = None  # the lease was held by this other owner: nothing done
    finished: bool = False  # the shard is closed and fully consumed
    lease_lost: bool = False
    reads: int = 0
    stop_reason: str = ""


@contextmanager
def stage(result: BatchResult, name: str) -> Iterator[None]:
    """Time one stage of a batch into `result.timings[name]` (seconds, added up over its runs), its
    process CPU into `result.cpu_s`, and append its `StageSpan`."""
    started, cpu, wall_ns = time.monotonic(), time.process_time(), time.time_ns()
    error = None
    try:
        yield
    except BaseException as exc:
        error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        elapsed, spent = time.monotonic() - started, time.process_time() - cpu
        result.timings[name] = result.timings.get(name, 0.0) + elapsed
        result.cpu_s += spent
        # The end from the monotonic clock: a span lasts what its timing says, whatever the wall clock does.
        result.stage_spans.append(StageSpan(name, wall_ns, wall_ns + round(elapsed * 1e9), spent, error))


def default_owner() -> str:
    """A worker identity unique across processes and hosts."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass
class _Buffer:
    """Reads analysed and indexed but not yet in the lake."""

    result: BatchResult
    frames: list[pl.DataFrame] = field(default_factory=list)
    processed: list[pl.DataFrame] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    bytes: int = 0
    decoded_bytes: int = 0
    opened: float = 0.0  # time.monotonic() of its first read
    traced: bool = False  # handed to `trace_batch` (at its commit, or when it failed)

    def add(self, chunk: DecodedChunk, frame: pl.DataFrame, processed: pl.DataFrame, errors: list[dict]) -> None:
        if not self.result.records:
            self.opened = time.monotonic()
            self.result.first_sequence = chunk.records[0]["SequenceNumber"]
        self.result.last_sequence = chunk.records[-1]["SequenceNumber"]
        self.result.records += len(chunk.records)
        self.result.events += frame.height
        self.result.errors += len(errors)
        self.result.anomalies += int((processed["anomaly_status"] == "ANOMALY").sum())
        self.bytes += chunk.result.record_bytes
        self.decoded_bytes += chunk.result.decoded_bytes
        self.result.decoded_bytes = self.decoded_bytes
        self.frames.append(frame)
        self.processed.append(processed)
        self.errors += errors

    def due(self, config: ConsumerConfig, budget: WorkBudget, now: float) -> bool:
        if not self.result.records:
            return False
        return (
            budget.flush_each_read
            or self.bytes >= config.buffer_bytes
            or self.decoded_bytes >= config.max_decoded_bytes
            or self.result.records >= config.max_records
            or now - self.opened >= config.buffer_interval_s
        )


@dataclass
class _Shard:
    """One shard a worker holds: its lease, analytics state, reader and unflushed buffer."""

    holder: LeaseHolder
    detector: RollingAnomalyDetector
    seen: SeenIds  # producer ids delivered lately (stream.dedupe)
    reader: SourceReader
    buffer: _Buffer
    outcome: WorkResult


@dataclass
class _Claims:
    """Shards a worker was given but whose lease another worker still holds; it keeps asking for them
    until `deadline` (monotonic): a successor started ahead of a handover takes them when released."""

    deadline: float
    waiting: list[WorkResult] = field(default_factory=list)

    def open(self) -> bool:
        return bool(self.waiting) and time.monotonic() < self.deadline


class StreamConsumer:
    def __init__(
        self,
        kinesis: Any,
        s3: Any,
        bucket: str,
        stream_name: str,
        leases: LeaseTable,
        config: ConsumerConfig | None = None,
        on_stage: Callable[[str, BatchResult], None] | None = None,
        search_sink: Callable[[pl.DataFrame], Any] | None = None,
        owner: str | None = None,
        pipeline: Pipeline | None = None,
        source: Source | None = None,
        trace_batch: Callable[[BatchResult, BaseException | None], None] | None = None,
    ) -> None:
        self.kinesis, self.s3, self.bucket, self.stream_name = kinesis, s3, bucket, stream_name
        # Where the shards and their records come from: the Kinesis stream, or a Kafka topic
        # (`stream.kafka.KafkaSource`, whose partitions are shards and offsets sequence numbers).
        self.source = source or KinesisSource(kinesis, stream_name)
        # What the records are (contract), where they go in the lake (root) and their analytics: the
        # pipeline's; without one, the default contract with `config.analytics`.
        self.contract = pipeline.contract if pipeline else DEFAULT_CONTRACT
        self.lake_root = pipeline.lake_root if pipeline else ""
        self.transforms = Transforms(self.contract, pipeline.transforms if pipeline else ())
        self.leases = leases
        # Near-real-time indexing of each read (before the lake commit, so a retry re-indexes the same
        # _ids); it must not raise for documents it could not index, only back them up.
        self.search_sink = search_sink
        self.config = config or ConsumerConfig()
        self.analytics = pipeline.analytics if pipeline else self.config.analytics
        self.states = StateStore(s3, bucket, stream_name)
        self.owner = owner or default_owner()
        # Called after each durable stage ("raw", "processed", "committed"); fault-injection tests use it.
        self.on_stage = on_stage or (lambda stage, result: None)
        # Called once per batch that ran a stage: after its commit with None, or with the exception that
        # ended it before its commit (etl_platform.ops.tracing.BatchTracer emits its span tree).
        self.trace_batch = trace_batch

    # --- planning ---------------------------------------------------------------------------------
    def shards(self) -> list[Shard]:
        return self.source.list_shards()

    def sync_leases(self, shards: list[Shard] | None = None) -> dict[str, Lease]:
        """Every shard's lease, creating those of new shards (migrating older versions' checkpoints)."""
        shards = self.shards() if shards is None else shards
        leases = self.leases.all()
        if any(s.shard_id not in leases for s in shards):
            leases = self.leases.sync(shards, migrate=legacy_checkpoints(self.s3, self.bucket, self.stream_name))
        return leases

    def readable(self, leases: Mapping[str, Lease] | None = None) -> list[Lease]:
        """Unfinished shards whose parents are finished, in lineage order (`leases.readable`)."""
        return readable(self.sync_leases() if leases is None else leases)

    # --- the worker loop ----------------------------------------------------------------------------
    def _initial_state(self, lease: Lease, leases: Mapping[str, Lease]) -> tuple[RollingAnomalyDetector, SeenIds]:
        """The state as last committed; for a shard never committed, its parents' final states merged,
        keeping the keys routed into this shard's hash-key range (`RollingAnomalyDetector.merge`);
        else an empty one."""
        horizon = self.config.dedupe_horizon_s

        def restore(state_key: str | None) -> tuple[RollingAnomalyDetector, SeenIds] | None:
            detector, ids = self.states.load_state(state_key)
            if detector is None:
                return None
            return detector, SeenIds.restore(ids, horizon) if ids is not None else SeenIds(horizon)

        state = restore(lease.state_key)
        if state is not None:
            return state
        states = [s for parent in lease.parents if parent in leases and (s := restore(leases[parent].state_key))]
        if not states:
            return self.analytics.new_detector(), SeenIds(horizon)
        hash_range = next((sh.hash_key_range for sh in self.shards() if sh.shard_id == lease.shard_id), None)
        return (
            RollingAnomalyDetector.merge([detector for detector, _ in states], hash_range=hash_range),
            SeenIds.merge([seen for _, seen in states], horizon),
        )

    def work(
        self,
        shard_id: str,
        budget: WorkBudget,
        should_stop: Callable[[], bool] = lambda: False,
        on_batch: Callable[[BatchResult], None] | None = None,
        on_read: Callable[[str, int], None] | None = None,
    ) -> WorkResult:
        """Own one shard's lease and consume it until the budget ends (see the module docstring and
        `work_many` for the callbacks)."""
        return self.work_many([shard_id], budget, should_stop, on_batch, on_read)[0]

    def work_many(
        self,
        shard_ids: Sequence[str],
        budget: WorkBudget,
        should_stop: Callable[[], bool] = lambda: False,
        on_batch: Callable[[BatchResult], None] | None = None,
        on_read: Callable[[str, int], None] | None = None,
    ) -> list[WorkResult]:
        """Own the leases of these shards (those free) and consume them in turn, a read each per round,
        until the budget ends; one process then serves several shards (as a KCL worker does).

        `on_batch(result)` is called after each commit; `on_read(shard_id, millis_behind_latest)` after
        every read, idle polls included (a heartbeat while nothing arrives), before the read's records
        are processed. Both run on the worker's thread, so keep them quick. An exception raised by either
        ends the work like any other failure (the shards' leases are released; what is buffered is not
        committed and the next owner reads it again), so a callback that must not stop the worker
        catches its own errors."""
        leases = self.sync_leases()
        ready = {lease.shard_id for lease in readable(leases)}
        outcomes: list[WorkResult] = []
        shards: list[_Shard] = []
        handover_at = time.time() + budget.seconds if budget.seconds is not None else None
        claims = _Claims(time.monotonic() + budget.lease_wait_s)

        def claim() -> list[_Shard]:
            """Take the leases still waited for that are free now."""
            opened = []
            for outcome in list(claims.waiting):
                holder = self.leases.take(
                    outcome.shard_id, self.owner, self.config.lease_duration_s, handover_at=handover_at
                )
                if holder is not None:
                    claims.waiting.remove(outcome)
                    outcome.held_by, outcome.stop_reason = None, ""
                    opened.append(self._open(holder, leases, outcome))
                    shards.append(opened[-1])
            for outcome in claims.waiting:
                current = self.leases.get(outcome.shard_id)
                outcome.held_by = current.owner if current else None
                outcome.stop_reason = "held by another worker"
            return opened

        try:
            for shard_id in shard_ids:
                if shard_id not in leases:
                    raise ValueError(f"shard {shard_id} is not in stream {self.stream_name}")
                outcome = WorkResult(shard_id=shard_id, owner=self.owner)
                outcomes.append(outcome)
                if leases[shard_id].finished:
                    outcome.finished, outcome.stop_reason = True, "finished"
                    continue
                if shard_id not in ready:
                    raise RuntimeError(f"shard {shard_id} is not readable yet: a parent is not fully consumed")
                claims.waiting.append(outcome)
            claim()
            self._rounds(shards, claims, claim, budget, should_stop, on_batch, on_read)
        finally:
            for shard in shards:
                shard.reader.close()
                if not shard.outcome.lease_lost:
                    self.leases.release(shard.holder)
        return outcomes

    def _open(self, holder: LeaseHolder, leases: Mapping[str, Lease], outcome: WorkResult) -> _Shard:
        lease = holder.lease
        detector, seen = self._initial_state(lease, leases)
        return _Shard(
            holder=holder,
            detector=detector,
            seen=seen,
            reader=self.source.reader(lease.shard_id, lease.checkpoint),
            buffer=_Buffer(BatchResult(shard_id=lease.shard_id)),
            outcome=outcome,
        )

    def _rounds(
        self,
        shards: list[_Shard],
        claims: _Claims,
        claim: Callable[[], list[_Shard]],  # takes free leases of `claims`, adding them to `shards`
        budget: WorkBudget,
        should_stop: Callable[[], bool],
        on_batch: Callable[[BatchResult], None] | None,
        on_read: Callable[[str, int], None] | None,
    ) -> None:
        started = time.monotonic()
        active = list(shards)

        def out_of_budget() -> str:
            if should_stop():
                return "stopped"
            if budget.seconds is not None and time.monotonic() - started >= budget.seconds:
                return "time budget"
            if budget.batches is not None and sum(len(s.outcome.batches) for s in shards) >= budget.batches:
                return "batch budget"
            return ""

        while (active or claims.open()) and not (reason := out_of_budget()):
            if claims.open():
                active += claim()  # a handover: the predecessor released the lease at its budget's end
            got_records = False
            for shard in list(active):
                try:
                    read = self._step(shard, budget, on_batch, on_read)
                except LeaseLost as exc:
                    shard.outcome.lease_lost, shard.outcome.stop_reason = True, str(exc)
                    active.remove(shard)
                    continue
                got_records = got_records or bool(read.records)
                if read.ended:
                    shard.outcome.finished, shard.outcome.stop_reason = True, "finished"
                elif budget.until_caught_up and not read.cut and read.millis_behind_latest == 0:
                    shard.outcome.stop_reason = "caught up"  # what the buffer holds is flushed below
                else:
                    continue
                self._hand_over(shard, on_batch)
                active.remove(shard)
            if (active or claims.open()) and not got_records:
                self._idle(self.config.poll_interval_s, should_stop)
        for shard in active:
            shard.outcome.stop_reason = reason
            self._hand_over(shard, on_batch)

    def _step(
        self,
        shard: _Shard,
        budget: WorkBudget,
        on_batch: Callable[[BatchResult], None] | None,
        on_read: Callable[[str, int], None] | None,
    ) -> ReadResult:
        """One read of one shard: analysed and indexed at once, flushed to the lake when the buffer is due."""
        config, holder = self.config, shard.holder
        result = shard.buffer.result
        with self._traced_on_failure(shard):
            self.leases.keep(holder)
            with stage(result, "read"):
                read = shard.reader.read(config.max_records, config.buffer_bytes, config.read_budget_s)
            shard.outcome.reads += 1
            if not read.records and not result.records:
                # An idle poll is no part of the next batch: no timing, CPU or span of it stays.
                idle = result.stage_spans.pop()
                result.timings.pop("read")
                result.cpu_s -= idle.cpu_s
            if on_read is not None:
                on_read(result.shard_id, read.millis_behind_latest)
            chunks = decode_chunks(result.shard_id, read.records, config.max_decoded_bytes, self.contract)
            while True:
                with stage(shard.buffer.result, "decode"):  # the decoding happens as the chunks are drawn
                    chunk = next(chunks, None)
                if chunk is None:
                    break
                self._analyse_and_index(chunk, shard)
                more = chunk.records[-1] is not read.records[-1]
                if more and shard.buffer.decoded_bytes >= config.max_decoded_bytes:
                    # Records that inflate enormously: flush before decoding the rest of the read, so a
                    # batch never holds more than max_decoded_bytes of payloads.
                    shard.buffer.result.millis_behind_latest = read.millis_behind_latest
                    self._commit_batch(shard, on_batch)
            result = shard.buffer.result
            result.ended, result.cut, result.millis_behind_latest = read.ended, read.cut, read.millis_behind_latest
            if shard.buffer.due(config, budget, time.monotonic()) or read.ended:
                self._commit_batch(shard, on_batch)
        return read

    def _commit_batch(self, shard: _Shard, on_batch: Callable[[BatchResult], None] | None) -> None:
        shard.outcome.batches.append(self._flush(shard))
        self._trace(shard.buffer)
        if on_batch is not None:
            on_batch(shard.outcome.batches[-1])
        shard.buffer = _Buffer(BatchResult(shard_id=shard.holder.lease.shard_id))

    def _trace(self, buffer: _Buffer, error: BaseException | None = None) -> None:
        """Hand the batch to `trace_batch` once: committed (no error) or failed; not an idle one."""
        if self.trace_batch is None or buffer.traced or not buffer.result.stage_spans:
            return
        if error is not None and not buffer.result.records:
            return  # a poll that failed before the buffer held anything: no batch yet
        buffer.traced = True
        self.trace_batch(buffer.result, error)

    @contextmanager
    def _traced_on_failure(self, shard: _Shard) -> Iterator[None]:
        """A batch that fails before its commit (lease lost, a sink down, a stop) is traced with the
        error; the exception goes on as before."""
        try:
            yield
        except BaseException as exc:
            self._trace(shard.buffer, exc)
            raise

    def _hand_over(self, shard: _Shard, on_batch: Callable[[BatchResult], None] | None) -> None:
        """Flush what is buffered, so the next owner starts with the lake up to date (the lease is
        released by `work_many`)."""
        if shard.buffer.result.records:
            try:
                with self._traced_on_failure(shard):
                    self._commit_batch(shard, on_batch)
            except LeaseLost as exc:
                shard.outcome.lease_lost, shard.outcome.stop_reason = True, str(exc)

    @staticmethod
    def _idle(seconds: float, should_stop: Callable[[], bool]) -> None:
        deadline = time.monotonic() + seconds
        while not should_stop() and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, 0.2))

    def _analyse_and_index(self, chunk: DecodedChunk, shard: _Shard) -> None:
        holder, buffer = shard.holder, shard.buffer
        result = buffer.result
        with stage(result, "decode"):
            errors = list(chunk.result.errors)
            frame, duplicates = shard.seen.filter(chunk.result.frame)
            result.duplicates += duplicates
        if self.transforms:
            with stage(result, "transform"):
                transformed = self.transforms.apply(frame)
                frame, result.dropped = transformed.events, result.dropped + transformed.dropped
                errors += transformed.errors
        frame = with_depth(frame, holder.lease.depth)
        with stage(result, "analytics"):
            processed = shard.detector.process(frame)
        buffer.add(chunk, frame, processed, errors)
        self.on_stage("analysed", result)
        if self.search_sink is not None and processed.height:
            self.leases.keep(holder)
            with stage(result, "search_indexing"):
                stats = self.search_sink(processed)
                result.search_indexed += stats.indexed
                result.search_failed += stats.failed
            self.on_stage("indexed", result)

    def _flush(self, shard: _Shard) -> BatchResult:
        """Deliver the buffer to the lake and commit it with the shard's state (which is at its end)."""
        holder, buffer = shard.holder, shard.buffer
        result, lease = buffer.result, holder.lease
        with stage(result, "raw_delivery"):  # serializing the raw lines is raw delivery's work too
            frame = pl.concat(buffer.frames) if buffer.frames else pl.DataFrame()
            processed = pl.concat(buffer.processed) if buffer.processed else pl.DataFrame()
            plan = writers.plan_flush(
                frame,
                buffer.errors,
                self.stream_name,
                result.shard_id,
                result.first_sequence or "",
                self.config.buffer_bytes,
                self.lake_root,
            )
        stale = set(lease.pending_objects) - set(plan.keys)  # written by an attempt that did not commit
        if plan.keys or stale:
            with stage(result, "lease"):
                self.leases.set_pending(holder, [*plan.keys, *stale])
        with stage(result, "raw_delivery"):
            self.leases.keep(holder)
            writers.write_raw(self.s3, self.bucket, plan)
        result.raw_objects = [obj.key for obj in plan.raw]
        result.error_objects = list(plan.errors)
        result.rows_by_day = plan.rows_by_day
        self.on_stage("raw", result)
        with stage(result, "processed_delivery"):
            self.leases.keep(holder)
            writers.write_processed(self.s3, self.bucket, processed, plan)
        result.processed_objects = plan.processed_keys
        if frame.height:
            oldest = frame["arrival_time"].min()
            result.max_latency_s = max(0.0, (datetime.now(UTC) - oldest).total_seconds())  # type: ignore[operator]
        self.on_stage("processed", result)
        with stage(result, "processed_delivery"):
            for key in sorted(stale):  # an attempt that did not commit wrote these and this one did not
                self.s3.delete_object(Bucket=self.bucket, Key=key)
        checkpoint = result.last_sequence or lease.checkpoint
        with stage(result, "state"):
            self.leases.keep(holder)
            state_key = self.states.save_commit(
                result.shard_id, checkpoint, shard.detector, shard.seen.snapshot(), lease.state_key
            )
            result.state_bytes = self.states.last_saved.snapshot_bytes if self.states.last_saved else 0
        self.on_stage("state", result)
        with stage(result, "commit"):
            self.leases.commit(
                holder,
                checkpoint=checkpoint,
                state_key=state_key,
                finished=result.ended,
                records=lease.records + result.records,
                millis_behind_latest=result.millis_behind_latest,
            )
        with stage(result, "state"):
            self.states.discard_superseded(lease.state_key, state_key, shard.detector)
        if checkpoint:
            shard.reader.mirror_commit(checkpoint)
        result.committed = True
        result.timings["total"] = sum(v for k, v in result.timings.items() if k != "total")
        self.on_stage("committed", result)
        return result

    # --- entry points -----------------------------------------------------------------------------
    def process_shard(self, shard_id: str) -> BatchResult:
        """One micro-batch of one shard: read, deliver everywhere, commit (an empty result if there was
        nothing new or the shard is leased by another worker)."""
        outcome = self.work(shard_id, WorkBudget(batches=1, until_caught_up=True, flush_each_read=True))
        if outcome.held_by is not None:
            raise RuntimeError(f"shard {shard_id} is leased by {outcome.held_by}")
        return outcome.batches[0] if outcome.batches else BatchResult(shard_id=shard_id)

    def drain(
        self, progress: Callable[[BatchResult], None] | None = None, max_rounds: int = 100_000
    ) -> list[BatchResult]:
        """Micro-batches for every readable shard until all are caught up (children after parents).
        Shards leased by another worker (a running Dagster worker) are left to it."""
        results: list[BatchResult] = []
        for _ in range(max_rounds):
            did_work = False
            for lease in self.readable(self.sync_leases()):
                outcome = self.work(
                    lease.shard_id, WorkBudget(until_caught_up=True, flush_each_read=True), on_batch=progress
                )
                results += outcome.batches
                did_work = did_work or bool(outcome.batches)
            if not did_work:
                return results
        raise RuntimeError(f"stream {self.stream_name} not drained after {max_rounds} rounds")
