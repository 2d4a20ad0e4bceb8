"""The micro-batch consumer: one bounded read of one shard, delivered and committed exactly once.

A batch: read records after the committed checkpoint -> decode -> raw delivery (Firehose-style
JSON lines, gzip) and error delivery -> stream analytics -> processed delivery (Parquet) -> commit the
checkpoint and the analytics state together. Outputs are written before the commit and their object
names derive from the batch's first stream position, so a crash anywhere followed by a retry
overwrites the same objects: at-least-once reading plus idempotent sinks gives exactly-once effect.

The Dagster sensor launches one run per readable shard with `process_shard`; `drain` runs the same
code in-process until every shard is caught up (the CLI's `consume --until-caught-up`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import polars as pl

from etl_platform.analytics import AnalyticsConfig, RollingAnomalyDetector
from etl_platform.config import env_number
from etl_platform.events import events_to_frame, with_depth
from etl_platform.lake import writers
from etl_platform.stream.checkpoints import Checkpoint, CheckpointStore
from etl_platform.stream.decoding import decode_records
from etl_platform.stream.shards import Shard, list_shards, readable_shards, shard_depths

# Firehose's S3 defaults are 5 MiB / 300 s; the interval is the sensor's launch cadence per shard.
FIREHOSE_BUFFER_BYTES = 5 * 1024 * 1024
FIREHOSE_BUFFER_INTERVAL_S = 300


@dataclass(frozen=True)
class ConsumerConfig:
    max_records: int = 10_000  # per batch; GetRecords returns at most 10,000 per call
    buffer_bytes: int = FIREHOSE_BUFFER_BYTES  # per batch read and per delivered object
    buffer_interval_s: float = FIREHOSE_BUFFER_INTERVAL_S
    analytics: AnalyticsConfig = field(default_factory=AnalyticsConfig)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, profile: str = "local") -> ConsumerConfig:
        """Settings from ETL_* variables; the local profile flushes every 10 s so the demo is lively."""
        env = os.environ if env is None else env
        defaults = cls(buffer_interval_s=10.0) if profile == "local" else cls()
        return cls(
            max_records=env_number(env, "ETL_BATCH_MAX_RECORDS", defaults.max_records, int, 1),
            buffer_bytes=env_number(env, "ETL_BUFFER_BYTES", defaults.buffer_bytes, int, 1024),
            buffer_interval_s=env_number(env, "ETL_BUFFER_INTERVAL_S", defaults.buffer_interval_s, float, 0),
            analytics=AnalyticsConfig.from_env(env),
        )


@dataclass
class ReadResult:
    records: list[dict[str, Any]]
    ended: bool  # a closed shard read to its end
    cut: bool  # stopped at max_records/max_bytes: more is waiting
    millis_behind_latest: int


def read_range(
    kinesis: Any, stream_name: str, shard_id: str, after: str | None, max_records: int, max_bytes: int
) -> ReadResult:
    """Records after sequence number `after` (from the start if None), a deterministic prefix.

    The batch is cut by a rule on the records themselves (count and bytes), never by how GetRecords
    happened to page them, so a retry from the same checkpoint reads the same records or, if the
    first try caught up with the shard, a superset of them.
    """
    kwargs: dict[str, Any] = {"StreamName": stream_name, "ShardId": shard_id}
    if after is None:
        kwargs["ShardIteratorType"] = "TRIM_HORIZON"
    else:
        kwargs.update(ShardIteratorType="AFTER_SEQUENCE_NUMBER", StartingSequenceNumber=after)
    iterator = kinesis.get_shard_iterator(**kwargs)["ShardIterator"]
    records: list[dict[str, Any]] = []
    size, ended, cut, behind, empty_polls = 0, False, False, 0, 0
    while not cut:
        resp = kinesis.get_records(ShardIterator=iterator, Limit=min(10_000, max_records - len(records)))
        behind = int(resp.get("MillisBehindLatest", 0))
        for record in resp["Records"]:
            record_size = len(record["Data"]) + len(record["PartitionKey"])
            if records and (len(records) >= max_records or size + record_size > max_bytes):
                cut = True
                break
            records.append(record)
            size += record_size
        if not cut and len(records) >= max_records:
            cut = True
        iterator = resp.get("NextShardIterator")
        if iterator is None:
            ended = not cut
            break
        if not resp["Records"]:
            empty_polls += 1
            if behind == 0 or empty_polls >= 5:
                break
        else:
            empty_polls = 0
    return ReadResult(records=records, ended=ended, cut=cut, millis_behind_latest=behind)


@dataclass
class BatchResult:
    shard_id: str
    first_sequence: str | None = None
    last_sequence: str | None = None
    records: int = 0
    events: int = 0
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


@contextmanager
def stage(result: BatchResult, name: str) -> Iterator[None]:
    """Time one stage of a batch into `result.timings[name]` (seconds)."""
    started = time.monotonic()
    try:
        yield
    finally:
        result.timings[name] = time.monotonic() - started


class StreamConsumer:
    def __init__(
        self,
        kinesis: Any,
        s3: Any,
        bucket: str,
        stream_name: str,
        config: ConsumerConfig | None = None,
        on_stage: Callable[[str, BatchResult], None] | None = None,
        search_sink: Callable[[pl.DataFrame], Any] | None = None,
    ) -> None:
        self.kinesis, self.s3, self.bucket, self.stream_name = kinesis, s3, bucket, stream_name
        # Near-real-time indexing of each processed batch (before the commit, so a retry re-indexes the
        # same _ids); it must not raise for documents it could not index, only back them up.
        self.search_sink = search_sink
        self.config = config or ConsumerConfig()
        self.checkpoints = CheckpointStore(s3, bucket, stream_name)
        # Called after each durable stage ("raw", "processed", "committed"); fault-injection tests use it.
        self.on_stage = on_stage or (lambda stage, result: None)

    # --- planning ---------------------------------------------------------------------------------
    def shards(self) -> list[Shard]:
        return list_shards(self.kinesis, self.stream_name)

    def readable(self, shards: list[Shard] | None = None) -> list[Shard]:
        shards = self.shards() if shards is None else shards
        finished = {cp.shard_id for cp in self.checkpoints.load_all().values() if cp.finished}
        return readable_shards(shards, finished)

    # --- one batch --------------------------------------------------------------------------------
    def _initial_detector(self, shard: Shard) -> RollingAnomalyDetector:
        """A child starts from its parents' final state: keys move with their hash range."""
        states = []
        for parent in shard.parents:
            blob = self.checkpoints.load_state(self.checkpoints.load(parent))
            if blob is not None:
                states.append(RollingAnomalyDetector.restore(blob))
        if not states:
            return self.config.analytics.new_detector()
        return RollingAnomalyDetector.merge(states)

    def _initial_state(self, shard: Shard, checkpoint: Checkpoint | None) -> RollingAnomalyDetector:
        """The detector as last committed for this shard, else as its parents left it."""
        blob = self.checkpoints.load_state(checkpoint)
        return RollingAnomalyDetector.restore(blob) if blob is not None else self._initial_detector(shard)

    def process_shard(self, shard_id: str) -> BatchResult:
        """One batch of one shard: read -> decode -> raw + errors -> analytics -> processed -> index -> commit."""
        started = time.monotonic()
        shards = self.shards()
        shard = next((s for s in shards if s.shard_id == shard_id), None)
        if shard is None:
            raise ValueError(f"shard {shard_id} is not in stream {self.stream_name}")
        checkpoint = self.checkpoints.load(shard_id)
        result = BatchResult(shard_id=shard_id)
        if checkpoint is not None and checkpoint.finished:
            return result
        if shard not in self.readable(shards):
            raise RuntimeError(f"shard {shard_id} is not readable yet: a parent is not fully consumed")
        detector = self._initial_state(shard, checkpoint)

        with stage(result, "read"):
            read = read_range(
                self.kinesis,
                self.stream_name,
                shard_id,
                checkpoint.sequence_number if checkpoint else None,
                self.config.max_records,
                self.config.buffer_bytes,
            )
        result.ended, result.cut, result.millis_behind_latest = read.ended, read.cut, read.millis_behind_latest
        result.records = len(read.records)
        if not read.records and not read.ended:
            return result  # nothing new: no objects, no commit
        if read.records:
            self._deliver(read.records, shard_depths(shards)[shard_id], detector, result)

        with stage(result, "commit"):
            self.checkpoints.commit(
                Checkpoint(
                    shard_id=shard_id,
                    sequence_number=result.last_sequence or (checkpoint.sequence_number if checkpoint else None),
                    finished=read.ended,
                    records=(checkpoint.records if checkpoint else 0) + result.records,
                    more_available=read.cut,
                    millis_behind_latest=read.millis_behind_latest,
                ),
                detector.snapshot(),
                previous=checkpoint,
            )
        result.committed = True
        result.timings["total"] = time.monotonic() - started
        self.on_stage("committed", result)
        return result

    def _deliver(
        self, records: list[dict[str, Any]], depth: int, detector: RollingAnomalyDetector, result: BatchResult
    ) -> None:
        """Every output of a non-empty batch, durable before the commit; `detector` advances over it."""
        result.first_sequence = first = records[0]["SequenceNumber"]
        result.last_sequence = records[-1]["SequenceNumber"]
        with stage(result, "decode"):
            decoded = decode_records(result.shard_id, records)
            frame = with_depth(events_to_frame(decoded.events), depth)
            result.events, result.errors = frame.height, len(decoded.errors)

        with stage(result, "raw_delivery"):
            raw = writers.deliver_raw(self.s3, self.bucket, frame, result.shard_id, first, self.config.buffer_bytes)
            result.raw_objects, result.rows_by_day = raw.objects, raw.rows_by_day
            if decoded.errors:
                result.error_objects = writers.deliver_errors(
                    self.s3, self.bucket, decoded.errors, self.stream_name, result.shard_id, first
                )
        self.on_stage("raw", result)

        with stage(result, "analytics"):
            processed = detector.process(frame)
            result.anomalies = int((processed["anomaly_status"] == "ANOMALY").sum())

        with stage(result, "processed_delivery"):
            result.processed_objects = writers.deliver_processed(self.s3, self.bucket, processed, raw)
        if frame.height:
            oldest = frame["arrival_time"].min()
            result.max_latency_s = max(0.0, (datetime.now(UTC) - oldest).total_seconds())  # type: ignore[operator]
        self.on_stage("processed", result)

        if self.search_sink is not None and processed.height:
            with stage(result, "search_indexing"):
                stats = self.search_sink(processed)
                result.search_indexed, result.search_failed = stats.indexed, stats.failed

    # --- draining ---------------------------------------------------------------------------------
    def drain(
        self, progress: Callable[[BatchResult], None] | None = None, max_batches: int = 100_000
    ) -> list[BatchResult]:
        """Process batches for every readable shard until all are caught up (children after parents)."""
        results: list[BatchResult] = []
        for _ in range(max_batches):
            did_work = False
            for shard in self.readable():
                result = self.process_shard(shard.shard_id)
                if result.committed:
                    results.append(result)
                    did_work = True
                    if progress:
                        progress(result)
            if not did_work:
                return results
        raise RuntimeError(f"stream {self.stream_name} not drained after {max_batches} batches")
