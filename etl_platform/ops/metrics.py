"""CloudWatch metrics for the pipeline, under the names the seed's dashboards and alarms use.

Two sources, one dimension (`StreamName`) so alarms and the shard scaler read a stream's numbers
back with one exact-dimension query:

- **What AWS measures itself.** Kinesis publishes `IncomingRecords`, `IncomingBytes`,
  `WriteProvisionedThroughputExceeded` and `GetRecords.IteratorAgeMilliseconds` in `AWS/Kinesis` for
  every producer and consumer, ours or not. In the `aws` profile (`Settings.native_metrics`) alarms
  and the scaler read them there (`metric_namespace`), and the platform does not publish copies.
  Locally (kinesis-mock publishes nothing) and for Kafka pipelines, the producer and the workers
  publish the same names in our namespace, so one set of alarms serves every profile.
- **What AWS does not measure**, in our namespace `ETLPlatform`: records read, processed,
  dead-lettered (`RecordsRejected`) and dropped as duplicates per batch, the state snapshot written
  (`CheckpointSize`), the worker's CPU over the batch and its memory against its limit, deliveries
  (Firehose's `DeliveryToS3.*` names), warehouse and search counts.

Building datums is pure (`batch_metrics`, `producer_metrics`, ...); `publish` is the only writer and
`statistic` / `period_values` the readers.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

NAMESPACE = "ETLPlatform"
KINESIS_NAMESPACE = "AWS/Kinesis"
DIMENSION = "StreamName"
MAX_DATUMS_PER_CALL = 1000  # PutMetricData's limit per request
STATISTICS = ("SampleCount", "Average", "Sum", "Minimum", "Maximum")

# Metric names (one constant each so producers, alarms, the scaler and tests cannot drift apart).
INCOMING_RECORDS = "IncomingRecords"
INCOMING_BYTES = "IncomingBytes"
WRITE_THROTTLED = "WriteProvisionedThroughputExceeded"
ITERATOR_AGE = "GetRecords.IteratorAgeMilliseconds"
RECORDS_READ = "RecordsRead"  # stream records read (a KPL aggregate counts once, as Kinesis counts it)
RECORDS_PROCESSED = "RecordsProcessed"
RECORDS_REJECTED = "RecordsRejected"  # dead-lettered: written to errors/ with the reason
CHECKPOINT_SIZE = "CheckpointSize"  # bytes of analytics state the batch's commit wrote
DUPLICATE_EVENTS = "DuplicateEvents"  # deliveries of an event_id seen lately, dropped (stream.dedupe)
DELIVERY_SUCCESS = "DeliveryToS3.Success"
DELIVERY_FRESHNESS = "DeliveryToS3.DataFreshness"
DELIVERY_ERRORS = "DeliveryToS3.Errors"
WAREHOUSE_ROWS = "WarehouseRowsLoaded"
SEARCH_INDEXED = "SearchDocumentsIndexed"
SEARCH_FAILED = "SearchDocumentsFailed"
ANOMALIES = "AnomaliesDetected"
BATCH_DURATION = "MicroBatchDuration"
WORKER_CPU = "WorkerCPUUtilization"  # process CPU time / wall time over the batch, percent of one core
WORKER_MEMORY = "WorkerMemoryUtilization"  # resident memory / the worker's memory limit, percent
# Measured by Kinesis itself (AWS/Kinesis) wherever the stream is a real Kinesis stream.
NATIVE_KINESIS_METRICS = frozenset({INCOMING_RECORDS, INCOMING_BYTES, WRITE_THROTTLED, ITERATOR_AGE})

Datum = dict[str, Any]  # a boto3 MetricDatum


def metric_namespace(name: str, native: bool, namespace: str = NAMESPACE) -> str:
    """Where metric `name` of a stream lives: `AWS/Kinesis` for what Kinesis measures itself when
    `native` (a Kinesis stream in the aws profile), else our own `namespace`."""
    return KINESIS_NAMESPACE if native and name in NATIVE_KINESIS_METRICS else namespace


def native_metrics_for(settings: Any, stream_kind: str) -> bool:
    """Whether Kinesis measures this stream itself: a Kinesis stream where `settings.native_metrics`."""
    return bool(settings.native_metrics) and stream_kind == "kinesis"


def without_native(datums: Sequence[Datum], native: bool) -> list[Datum]:
    """`datums` less those AWS already publishes for the stream (when `native`)."""
    return [d for d in datums if not (native and d["MetricName"] in NATIVE_KINESIS_METRICS)]


def datum(name: str, value: float, unit: str, stream: str, timestamp: datetime | None = None) -> Datum:
    """One MetricDatum for `stream` (timestamp defaults to now, UTC)."""
    return {
        "MetricName": name,
        "Dimensions": [{"Name": DIMENSION, "Value": stream}],
        "Timestamp": timestamp or datetime.now(UTC),
        "Value": float(value),
        "Unit": unit,
    }


def batch_metrics(stream: str, result: Any, timestamp: datetime | None = None) -> list[Datum]:
    """Datums for one committed micro-batch (a `consumer.BatchResult`).

    An empty poll (nothing read, nothing committed) still reports the iterator age, so the lag alarm
    sees a caught-up consumer as 0 rather than as missing data.
    """
    ts = timestamp or datetime.now(UTC)
    out = [datum(ITERATOR_AGE, result.millis_behind_latest, "Milliseconds", stream, ts)]
    if not result.committed:
        return out
    total_s = result.timings.get("total", 0.0)
    out += [
        datum(RECORDS_READ, result.records, "Count", stream, ts),
        datum(RECORDS_PROCESSED, result.events, "Count", stream, ts),
        datum(RECORDS_REJECTED, result.errors, "Count", stream, ts),
        datum(DUPLICATE_EVENTS, getattr(result, "duplicates", 0), "Count", stream, ts),
        datum(ANOMALIES, result.anomalies, "Count", stream, ts),
        datum(CHECKPOINT_SIZE, getattr(result, "state_bytes", 0), "Bytes", stream, ts),
        datum(DELIVERY_SUCCESS, 1.0, "None", stream, ts),
        datum(DELIVERY_ERRORS, 0.0, "Count", stream, ts),
        datum(BATCH_DURATION, total_s, "Seconds", stream, ts),
    ]
    if total_s > 0:
        cpu = 100.0 * getattr(result, "cpu_s", 0.0) / total_s
        out.append(datum(WORKER_CPU, round(cpu, 2), "Percent", stream, ts))
    if result.events:
        out.append(datum(DELIVERY_FRESHNESS, result.max_latency_s, "Seconds", stream, ts))
    if getattr(result, "search_indexed", None) is not None:  # near-real-time indexing in the same batch
        out += search_metrics(stream, result.search_indexed, result.search_failed, ts)
    return out


def heartbeat_metrics(stream: str, millis_behind_latest: int, timestamp: datetime | None = None) -> list[Datum]:
    """An idle worker's sign of life: its iterator age. The lag alarm treats silence as a stall."""
    return [datum(ITERATOR_AGE, millis_behind_latest, "Milliseconds", stream, timestamp)]


def failed_batch_metrics(stream: str, timestamp: datetime | None = None) -> list[Datum]:
    """Datums for a micro-batch that raised before its commit (the op's failure hook publishes these)."""
    ts = timestamp or datetime.now(UTC)
    return [datum(DELIVERY_SUCCESS, 0.0, "None", stream, ts), datum(DELIVERY_ERRORS, 1.0, "Count", stream, ts)]


def producer_metrics(stream: str, stats: Any, timestamp: datetime | None = None) -> list[Datum]:
    """Datums for one producer `send` (a `producer.ProducerStats`, or the delta of two).

    `IncomingRecords` counts Kinesis records (KPL aggregates count once, as Kinesis bills them) and
    `IncomingBytes` data + partition key: the units of the per-shard write limits the scaler uses.
    """
    ts = timestamp or datetime.now(UTC)
    throttled = stats.error_codes.get("ProvisionedThroughputExceededException", 0)
    return [
        datum(INCOMING_RECORDS, stats.records, "Count", stream, ts),
        datum(INCOMING_BYTES, stats.bytes, "Bytes", stream, ts),
        datum(WRITE_THROTTLED, throttled, "Count", stream, ts),
    ]


def warehouse_metrics(stream: str, rows_loaded: int, timestamp: datetime | None = None) -> list[Datum]:
    """Datums for one warehouse load."""
    return [datum(WAREHOUSE_ROWS, rows_loaded, "Count", stream, timestamp)]


def search_metrics(stream: str, indexed: int, failed: int, timestamp: datetime | None = None) -> list[Datum]:
    """Datums for one OpenSearch indexing pass."""
    ts = timestamp or datetime.now(UTC)
    return [datum(SEARCH_INDEXED, indexed, "Count", stream, ts), datum(SEARCH_FAILED, failed, "Count", stream, ts)]


@dataclass
class Heartbeat:
    """When an idle worker should report its iterator age: at most once per `interval_s`, with the
    largest age seen since the last report (a worker serving several shards reports its worst)."""

    interval_s: float = 30.0
    _worst: int | None = None
    _last: float = float("-inf")

    def observe(self, millis_behind_latest: int, now: float | None = None) -> int | None:
        """Record one read's age; returns the age to report now, or None."""
        now = time.monotonic() if now is None else now
        self._worst = max(self._worst or 0, millis_behind_latest)
        if now - self._last < self.interval_s:
            return None
        worst, self._worst, self._last = self._worst, None, now
        return worst

    def reset(self, now: float | None = None) -> None:
        """A batch was just reported (its datums include the iterator age): restart the interval."""
        self._worst, self._last = None, time.monotonic() if now is None else now


# --- worker memory --------------------------------------------------------------------------------
def _read_int(path: str) -> int | None:
    try:
        with open(path, encoding="ascii") as fh:
            text = fh.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # cgroup v2 says "max" for no limit


def _meminfo_total() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def memory_limit_bytes() -> int | None:
    """The process's memory limit: its cgroup's (a Fargate task's memory), else the host's RAM."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        limit = _read_int(path)
        if limit is not None and limit < 1 << 60:  # cgroup v1 writes a huge number for "no limit"
            return limit
    return _meminfo_total()


def resident_bytes() -> int | None:
    """The process's resident set size now (VmRSS), None where /proc is absent."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def worker_memory_metrics(stream: str, timestamp: datetime | None = None) -> list[Datum]:
    """`WorkerMemoryUtilization`: resident memory against the limit (Kinesis Analytics'
    HeapMemoryUtilization, for a Python worker); nothing where either is unknown."""
    rss, limit = resident_bytes(), memory_limit_bytes()
    if not rss or not limit:
        return []
    return [datum(WORKER_MEMORY, round(100.0 * rss / limit, 2), "Percent", stream, timestamp)]


# --- I/O ------------------------------------------------------------------------------------------
def publish(cloudwatch: Any, datums: Sequence[Datum], namespace: str = NAMESPACE) -> int:
    """Write datums in requests of at most 1000 (PutMetricData's cap); returns the number of requests."""
    calls = 0
    for start in range(0, len(datums), MAX_DATUMS_PER_CALL):
        cloudwatch.put_metric_data(Namespace=namespace, MetricData=list(datums[start : start + MAX_DATUMS_PER_CALL]))
        calls += 1
    return calls


def combine_datapoints(points: Iterable[dict[str, Any]], stat: str) -> float | None:
    """Combine per-period datapoints into one statistic over all of them."""
    points = list(points)
    if not points:
        return None
    if stat == "Sum":
        return sum(p["Sum"] for p in points)
    if stat == "SampleCount":
        return sum(p["SampleCount"] for p in points)
    if stat == "Maximum":
        return max(p["Maximum"] for p in points)
    if stat == "Minimum":
        return min(p["Minimum"] for p in points)
    count = sum(p["SampleCount"] for p in points)
    return sum(p["Sum"] for p in points) / count if count else None


def statistic(
    cloudwatch: Any,
    name: str,
    stream: str,
    start: datetime,
    end: datetime,
    stat: str = "Sum",
    namespace: str = NAMESPACE,
) -> float | None:
    """`stat` of metric `name` over [start, end) for `stream`; None when there is no datapoint.

    Asks for one period spanning the whole range and combines whatever buckets come back, so the
    answer does not depend on how the server aligns its periods (CloudWatch aligns to StartTime,
    moto to the first datapoint).
    """
    if stat not in STATISTICS:
        raise ValueError(f"statistic {stat!r} is not one of {', '.join(STATISTICS)}")
    seconds = max(60, int((end - start).total_seconds()))
    period = -(-seconds // 60) * 60  # CloudWatch periods are multiples of 60 s
    stats = sorted({stat, "Sum", "SampleCount"}) if stat == "Average" else [stat]
    resp = cloudwatch.get_metric_statistics(
        Namespace=namespace,
        MetricName=name,
        Dimensions=[{"Name": DIMENSION, "Value": stream}],
        StartTime=start,
        EndTime=end,
        Period=period,
        Statistics=stats,
    )
    return combine_datapoints(resp.get("Datapoints", []), stat)


def period_values(
    cloudwatch: Any,
    name: str,
    stream: str,
    start: datetime,
    end: datetime,
    period_s: int,
    stat: str = "Sum",
    namespace: str = NAMESPACE,
) -> list[float]:
    """`stat` per `period_s` bucket over [start, end), oldest first (buckets without data are absent)."""
    if stat not in STATISTICS:
        raise ValueError(f"statistic {stat!r} is not one of {', '.join(STATISTICS)}")
    resp = cloudwatch.get_metric_statistics(
        Namespace=namespace,
        MetricName=name,
        Dimensions=[{"Name": DIMENSION, "Value": stream}],
        StartTime=start,
        EndTime=end,
        Period=period_s,
        Statistics=[stat],
    )
    return [p[stat] for p in sorted(resp.get("Datapoints", []), key=lambda p: p["Timestamp"])]


def read_metric(
    cloudwatch: Any,
    name: str,
    stream: str,
    minutes: float,
    stat: str = "Sum",
    now: datetime | None = None,
    namespace: str = NAMESPACE,
) -> float | None:
    """`stat` of `name` over the last `minutes` (None when the window has no datapoint)."""
    end = now or datetime.now(UTC)
    return statistic(cloudwatch, name, stream, end - timedelta(minutes=minutes), end, stat, namespace)


@dataclass
class ProducerMetricsReporter:
    """Publishes a long-running producer's progress as per-interval deltas of its cumulative stats.

    Wire it into `KinesisProducer(progress=...)` and call `flush` at the end, so `IncomingRecords`
    reflects the rate over time rather than one lump when the run finishes. The first update publishes
    at once (interval counted from then on). With `native` (Kinesis measures these itself), nothing
    is published.
    """

    cloudwatch: Any
    stream: str
    interval_s: float = 60.0
    native: bool = False
    _records: int = 0
    _bytes: int = 0
    _throttled: int = 0
    _last: float = 0.0
    last_error: str | None = None  # the latest publish failure, if any (publishing is best-effort)

    def update(self, stats: Any, force: bool = False) -> int:
        """Publish the change since the previous call if `interval_s` passed (or `force`); returns datums sent."""
        now = time.monotonic()
        if not force and now - self._last < self.interval_s:
            return 0
        throttled = stats.error_codes.get("ProvisionedThroughputExceededException", 0)
        delta = _Counts(
            stats.records - self._records,
            stats.bytes - self._bytes,
            {"ProvisionedThroughputExceededException": throttled - self._throttled},
        )
        self._records, self._bytes, self._throttled, self._last = stats.records, stats.bytes, throttled, now
        datums = without_native(producer_metrics(self.stream, delta), self.native)
        if not datums:
            return 0
        try:
            publish(self.cloudwatch, datums)
        except Exception as exc:  # best-effort: a metrics outage must not stop the producer
            self.last_error = f"{type(exc).__name__}: {exc}"
            return 0
        return len(datums)

    def flush(self, stats: Any) -> int:
        return self.update(stats, force=True)


@dataclass
class _Counts:
    records: int
    bytes: int
    error_codes: dict[str, int]
