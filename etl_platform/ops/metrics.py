"""CloudWatch metrics for the pipeline, under the names the seed's dashboards and alarms use.

Everything goes to our own namespace `ETLPlatform` with one dimension, `StreamName`, so alarms and
the shard scaler can read a stream's numbers back with a single exact-dimension query. Names follow
the AWS services the platform re-creates (Kinesis `IncomingRecords`, `GetRecords.IteratorAgeMilliseconds`,
`WriteProvisionedThroughputExceeded`; Firehose `DeliveryToS3.*`) so runbooks written for those
services read the same here.

Building datums is pure (`batch_metrics`, `producer_metrics`, ...); `publish` is the only writer and
`read_metric` the only reader.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

NAMESPACE = "ETLPlatform"
DIMENSION = "StreamName"
MAX_DATUMS_PER_CALL = 1000  # PutMetricData's limit per request
STATISTICS = ("SampleCount", "Average", "Sum", "Minimum", "Maximum")

# Metric names (one constant each so producers, alarms, the scaler and tests cannot drift apart).
INCOMING_RECORDS = "IncomingRecords"
INCOMING_BYTES = "IncomingBytes"
WRITE_THROTTLED = "WriteProvisionedThroughputExceeded"
ITERATOR_AGE = "GetRecords.IteratorAgeMilliseconds"
RECORDS_PROCESSED = "RecordsProcessed"
RECORDS_REJECTED = "RecordsRejected"
DUPLICATE_EVENTS = "DuplicateEvents"  # deliveries of an event_id seen lately, dropped (stream.dedupe)
DELIVERY_SUCCESS = "DeliveryToS3.Success"
DELIVERY_FRESHNESS = "DeliveryToS3.DataFreshness"
DELIVERY_ERRORS = "DeliveryToS3.Errors"
WAREHOUSE_ROWS = "WarehouseRowsLoaded"
SEARCH_INDEXED = "SearchDocumentsIndexed"
SEARCH_FAILED = "SearchDocumentsFailed"
ANOMALIES = "AnomaliesDetected"
BATCH_DURATION = "MicroBatchDuration"
HOST_CPU = "HostCPUUtilization"

Datum = dict[str, Any]  # a boto3 MetricDatum


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
    out += [
        datum(RECORDS_PROCESSED, result.events, "Count", stream, ts),
        datum(RECORDS_REJECTED, result.errors, "Count", stream, ts),
        datum(DUPLICATE_EVENTS, getattr(result, "duplicates", 0), "Count", stream, ts),
        datum(ANOMALIES, result.anomalies, "Count", stream, ts),
        datum(DELIVERY_SUCCESS, 1.0, "None", stream, ts),
        datum(DELIVERY_ERRORS, 0.0, "Count", stream, ts),
        datum(BATCH_DURATION, result.timings.get("total", 0.0), "Seconds", stream, ts),
    ]
    if result.events:
        out.append(datum(DELIVERY_FRESHNESS, result.max_latency_s, "Seconds", stream, ts))
    if getattr(result, "search_indexed", None) is not None:  # near-real-time indexing in the same batch
        out += search_metrics(stream, result.search_indexed, result.search_failed, ts)
    return out


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


# --- host CPU -------------------------------------------------------------------------------------
def _proc_stat_times() -> tuple[int, int] | None:
    """(busy, total) jiffies from /proc/stat's aggregate cpu line; None where /proc is absent."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            fields = fh.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    values = [int(v) for v in fields[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    total = sum(values[:8])  # guest time is already inside user/nice
    return total - idle, total


def host_cpu_percent(interval_s: float = 0.25) -> float:
    """Host CPU utilisation in percent (0-100) over `interval_s`.

    Kinesis Analytics' `CPUUtilization` has no local equivalent: the consumer host's CPU is what the
    seed's "CPU high" alarm protects. /proc/stat deltas where available, else the 1-minute load
    average divided by the core count (capped at 100).
    """
    first = _proc_stat_times()
    if first is not None:
        time.sleep(interval_s)
        second = _proc_stat_times()
        if second is not None and second[1] > first[1]:
            return round(100.0 * (second[0] - first[0]) / (second[1] - first[1]), 2)
    load = os.getloadavg()[0]
    return round(min(100.0, 100.0 * load / (os.cpu_count() or 1)), 2)


def host_metrics(stream: str, cpu_percent: float | None = None, timestamp: datetime | None = None) -> list[Datum]:
    """The `HostCPUUtilization` datum (measured now unless given)."""
    value = host_cpu_percent() if cpu_percent is None else cpu_percent
    return [datum(HOST_CPU, value, "Percent", stream, timestamp)]


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
    at once (interval counted from then on).
    """

    cloudwatch: Any
    stream: str
    interval_s: float = 60.0
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
        datums = producer_metrics(self.stream, delta)
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
