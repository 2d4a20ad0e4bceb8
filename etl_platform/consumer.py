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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import polars as pl

from etl_platform import lake
from etl_platform.analytics import RollingAnomalyDetector
from etl_platform.checkpoints import Checkpoint, CheckpointStore
from etl_platform.config import env_number
from etl_platform.decoding import decode_records
from etl_platform.events import events_to_frame, sequence_sort_expr
from etl_platform.shards import Shard, lineage_order, list_shards, readable_shards

ANALYTICS_KEYS = ("user_id", "event_type")
# Firehose's S3 defaults are 5 MiB / 300 s; the interval is the sensor's launch cadence per shard.
FIREHOSE_BUFFER_BYTES = 5 * 1024 * 1024
FIREHOSE_BUFFER_INTERVAL_S = 300


@dataclass(frozen=True)
class ConsumerConfig:
    max_records: int = 10_000  # per batch; GetRecords returns at most 10,000 per call
    buffer_bytes: int = FIREHOSE_BUFFER_BYTES  # per batch read and per delivered object
    buffer_interval_s: float = FIREHOSE_BUFFER_INTERVAL_S
    avg_rows: int = 10
    baseline_rows: int = 100
    sigmas: float = 3.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, profile: str = "local") -> ConsumerConfig:
        """Settings from ETL_* variables; the local profile flushes every 10 s so the demo is lively."""
        env = os.environ if env is None else env
        defaults = cls(buffer_interval_s=10.0) if profile == "local" else cls()

        return cls(
            max_records=env_number(env, "ETL_BATCH_MAX_RECORDS", defaults.max_records, int, 1),
            buffer_bytes=env_number(env, "ETL_BUFFER_BYTES", defaults.buffer_bytes, int, 1024),
            buffer_interval_s=env_number(env, "ETL_BUFFER_INTERVAL_S", defaults.buffer_interval_s, float, 0),
            avg_rows=env_number(env, "ETL_AVG_ROWS", defaults.avg_rows, int, 0),
            baseline_rows=env_number(env, "ETL_BASELINE_ROWS", defaults.baseline_rows, int, 2),
            sigmas=env_number(env, "ETL_ANOMALY_SIGMAS", defaults.sigmas, float, 0),
        )

    def new_detector(self) -> RollingAnomalyDetector:
        return RollingAnomalyDetector(
            avg_rows=self.avg_rows, baseline_rows=self.baseline_rows, sigmas=self.sigmas, keys=ANALYTICS_KEYS
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


def _split_by_bytes(lines: list[str], max_bytes: int) -> list[tuple[int, int]]:
    """Row ranges [start, end) whose serialized size stays within max_bytes (at least one row each)."""
    ranges, start, size = [], 0, 0
    for i, line in enumerate(lines):
        if i > start and size + len(line) + 1 > max_bytes:
            ranges.append((start, i))
            start, size = i, 0
        size += len(line) + 1
    if start < len(lines):
        ranges.append((start, len(lines)))
    return ranges


def with_depth(frame: pl.DataFrame, depth: int) -> pl.DataFrame:
    return frame.with_columns(pl.lit(depth, dtype=pl.Int32).alias("shard_depth"))


def arrival_order(frame: pl.DataFrame) -> pl.DataFrame:
    """Stream order for every key: parents before children (depth), then sequence, then sub-record."""
    return frame.sort(["shard_depth", sequence_sort_expr(), "sub_sequence"], maintain_order=True)


def shard_depths(shards: list[Shard]) -> dict[str, int]:
    """Generation of each shard: 0 for the original ones, 1 + deepest parent otherwise."""
    depth: dict[str, int] = {}
    for shard in lineage_order(shards):
        depth[shard.shard_id] = 1 + max((depth[p] for p in shard.parents if p in depth), default=-1)
    return depth


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
            return self.config.new_detector()
        return RollingAnomalyDetector.merge(states)

    def process_shard(self, shard_id: str) -> BatchResult:
        started = time.monotonic()
        shards = self.shards()
        by_id = {s.shard_id: s for s in shards}
        if shard_id not in by_id:
            raise ValueError(f"shard {shard_id} is not in stream {self.stream_name}")
        shard = by_id[shard_id]
        checkpoint = self.checkpoints.load(shard_id)
        result = BatchResult(shard_id=shard_id)
        if checkpoint is not None and checkpoint.finished:
            return result
        if shard not in readable_shards(shards, {c.shard_id for c in self.checkpoints.load_all().values()
                                                  if c.finished}):
            raise RuntimeError(f"shard {shard_id} is not readable yet: a parent is not fully consumed")

        detector = (
            RollingAnomalyDetector.restore(self.checkpoints.load_state(checkpoint))  # type: ignore[arg-type]
            if checkpoint is not None and checkpoint.state_key
            else self._initial_detector(shard)
        )
        t0 = time.monotonic()
        read = read_range(
            self.kinesis, self.stream_name, shard_id, checkpoint.sequence_number if checkpoint else None,
            self.config.max_records, self.config.buffer_bytes,
        )
        result.timings["read"] = time.monotonic() - t0
        result.ended, result.cut, result.millis_behind_latest = read.ended, read.cut, read.millis_behind_latest
        result.records = len(read.records)
        if not read.records and not read.ended:
            return result  # nothing new: no objects, no commit
        if read.records:
            result.first_sequence = read.records[0]["SequenceNumber"]
            result.last_sequence = read.records[-1]["SequenceNumber"]

            t0 = time.monotonic()
            decoded = decode_records(shard_id, read.records)
            depth = shard_depths(shards)[shard_id]
            frame = with_depth(events_to_frame(decoded.events), depth)
            result.events, result.errors = frame.height, len(decoded.errors)
            result.timings["decode"] = time.monotonic() - t0

            t0 = time.monotonic()
            parts = self._deliver_raw(frame, result)
            self._deliver_errors(decoded.errors, result)
            result.timings["raw_delivery"] = time.monotonic() - t0
            self.on_stage("raw", result)

            t0 = time.monotonic()
            processed = detector.process(frame)
            result.anomalies = int((processed["anomaly_status"] == "ANOMALY").sum())
            result.timings["analytics"] = time.monotonic() - t0

            t0 = time.monotonic()
            self._deliver_processed(processed, parts, result)
            result.timings["processed_delivery"] = time.monotonic() - t0
            if frame.height:
                oldest = frame["arrival_time"].min()
                result.max_latency_s = max(0.0, (datetime.now(UTC) - oldest).total_seconds())  # type: ignore[operator]
            self.on_stage("processed", result)
            if self.search_sink is not None and processed.height:
                t0 = time.monotonic()
                stats = self.search_sink(processed)
                result.search_indexed, result.search_failed = stats.indexed, stats.failed
                result.timings["search_indexing"] = time.monotonic() - t0

        t0 = time.monotonic()
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
        result.timings["commit"] = time.monotonic() - t0
        result.timings["total"] = time.monotonic() - started
        self.on_stage("committed", result)
        return result

    # --- delivery ---------------------------------------------------------------------------------
    def _deliver_raw(self, frame: pl.DataFrame, result: BatchResult) -> list[tuple[str, pl.Series]]:
        """Raw objects per event-time hour, split by size; returns (part name, row mask) per object."""
        parts: list[tuple[str, pl.Series]] = []
        if frame.height == 0:
            return parts
        indexed = frame.with_row_index("_row").with_columns(pl.col("event_time").dt.truncate("1h").alias("_hour"))
        for (moment,), group in indexed.group_by("_hour", maintain_order=True):
            partition = lake.HourPartition.of(moment)
            rows = group.drop("_hour")
            lines = rows.drop("_row").write_ndjson().splitlines()
            for part, (start, end) in enumerate(_split_by_bytes(lines, self.config.buffer_bytes)):
                key = lake.object_key(lake.RAW, partition, result.shard_id, result.first_sequence or "", part)
                lake.put(self.s3, self.bucket, key, lake.gzip_lines(lines[start:end]))
                result.raw_objects.append(key)
                parts.append((key, rows["_row"].slice(start, end - start)))
                day = partition.day.isoformat()
                result.rows_by_day[day] = result.rows_by_day.get(day, 0) + (end - start)
        return parts

    def _deliver_errors(self, errors: list[dict[str, Any]], result: BatchResult) -> None:
        if not errors:
            return
        by_partition: dict[lake.HourPartition, list[dict[str, Any]]] = {}
        for err in errors:
            arrival = err.get("arrival_time") or datetime.now(UTC)
            by_partition.setdefault(lake.HourPartition.of(arrival), []).append(
                {**err, "stream_name": self.stream_name}
            )
        for partition, rows in by_partition.items():
            key = lake.object_key(lake.ERRORS, partition, result.shard_id, result.first_sequence or "", 0)
            lake.put(self.s3, self.bucket, key, lake.jsonl_gz(rows))
            result.error_objects.append(key)

    def _deliver_processed(
        self, processed: pl.DataFrame, parts: list[tuple[str, pl.Series]], result: BatchResult
    ) -> None:
        """One Parquet object per raw object, holding exactly the same events (see lake.processed_key)."""
        indexed = processed.with_row_index("_row")
        for raw_key, rows in parts:
            key = lake.processed_key_for(raw_key)
            part = indexed.join(rows.to_frame("_row"), on="_row", how="semi").drop("_row")
            lake.put(self.s3, self.bucket, key, lake.parquet_bytes(part))
            result.processed_objects.append(key)

    # --- draining ---------------------------------------------------------------------------------
    def drain(self, progress: Callable[[BatchResult], None] | None = None, max_batches: int = 100_000
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
