"""Writes envelopes to a Kinesis stream with PutRecords: batching to the API limits, retrying only what failed.

Kinesis accepts a PutRecords request partially: some entries come back with an `ErrorCode`
(`ProvisionedThroughputExceededException`, `InternalFailure`) while the rest are stored. Re-sending
the whole batch would duplicate the stored ones, so only the failed entries are re-sent, with
exponential backoff and jitter, before any later record is sent: a key's failed record is not
overtaken by that key's *later* records (earlier-batch order is the best PutRecords allows, since
entries after a failed one in the same request may already be stored).

Oversized or unkeyable events are not sent and not raised: they go to `ProducerStats.rejected` with a
reason, so one bad event neither aborts a long run nor disappears. The producer does not validate
the envelope itself (the consumer does, and routes bad events to the error prefix); it only refuses
what Kinesis cannot accept.
"""

from __future__ import annotations

import gzip
import json
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aws_kinesis_agg.aggregator import RecordAggregator
from botocore.exceptions import ClientError

MAX_RECORDS_PER_REQUEST = 500
MAX_REQUEST_BYTES = 5 * 1024 * 1024
MAX_RECORD_BYTES = 1024 * 1024
MAX_PARTITION_KEY_CHARS = 256
KPL_DEFAULT_AGGREGATE_BYTES = 51_200  # the KPL's own AggregationMaxSize default
RETRYABLE_REQUEST_ERRORS = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "LimitExceededException",
        "InternalFailure",
        "ServiceUnavailable",
        "KMSThrottlingException",
    }
)


@dataclass(frozen=True)
class Rejected:
    """An event Kinesis cannot accept (too large, no usable partition key, not JSON-serialisable)."""

    event: Any
    reason: str


@dataclass
class ProducerStats:
    """Counts of one `send`; `sent`/`failed`/`retried` count events (user records), not requests."""

    sent: int = 0  # events stored by Kinesis
    failed: int = 0  # events given up on after max_attempts
    retried: int = 0  # event re-submissions (an event retried twice counts 2)
    bytes: int = 0  # stored bytes (data + partition key), the unit of the 5 MiB / 1 MiB limits
    requests: int = 0  # PutRecords calls, including throttled ones
    records: int = 0  # Kinesis records stored (fewer than `sent` when KPL-aggregated)
    throttled_requests: int = 0  # whole requests refused with a retryable ClientError
    error_codes: Counter[str] = field(default_factory=Counter)
    rejected: list[Rejected] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"sent={self.sent} failed={self.failed} retried={self.retried} "
            f"rejected={len(self.rejected)} requests={self.requests} bytes={self.bytes}"
        )


class ProducerError(RuntimeError):
    """Records still failing after `max_attempts`; later events of the iterable were not sent."""

    def __init__(self, message: str, stats: ProducerStats, failed_events: list[Any]) -> None:
        super().__init__(message)
        self.stats = stats
        self.failed_events = failed_events


@dataclass
class _Entry:
    """One PutRecords entry and the events it carries (one, or many when KPL-aggregated)."""

    partition_key: str
    data: bytes
    events: list[Any]
    explicit_hash_key: str | None = None

    @property
    def size(self) -> int:
        return len(self.data) + len(self.partition_key.encode("utf-8"))

    def request(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"Data": self.data, "PartitionKey": self.partition_key}
        if self.explicit_hash_key:
            entry["ExplicitHashKey"] = self.explicit_hash_key
        return entry


def _json_default(obj: Any) -> Any:
    if isinstance(obj, datetime):
        if obj.tzinfo is None:
            raise TypeError("naive datetime (no timezone) is not serialisable as an event time")
        return obj.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


class KinesisProducer:
    """PutRecords writer for one stream; `client` is a boto3 Kinesis client (or anything shaped like one)."""

    def __init__(
        self,
        client: Any,
        stream_name: str,
        compress: bool = False,
        max_attempts: int = 8,
        base_backoff_s: float = 0.05,
        sleep: Callable[[float], None] = time.sleep,
        *,
        max_backoff_s: float = 5.0,
        progress: Callable[[ProducerStats], None] | None = None,
        rng: random.Random | None = None,
        partition_key_field: str = "user_id",
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        self.client = client
        self.stream_name = stream_name
        # The field whose value is the partition key: a pipeline's first analytics key, so every
        # event of a key lands on one shard, in order.
        self.partition_key_field = partition_key_field
        self.compress = compress
        self.max_attempts = max_attempts
        self.base_backoff_s = base_backoff_s
        self.max_backoff_s = max_backoff_s
        self.progress = progress
        self._sleep = sleep
        self._rng = rng or random.Random()

    # -- encoding --------------------------------------------------------------------------------

    def encode(self, event: Any) -> bytes:
        """JSON (UTF-8), gzip-compressed when `compress` (as the seed's producer does).

        gzip with mtime=0 so equal events give equal bytes.
        """
        data = json.dumps(event, separators=(",", ":"), ensure_ascii=False, default=_json_default).encode()
        return gzip.compress(data, mtime=0) if self.compress else data

    def _prepare(self, event: Any, stats: ProducerStats) -> tuple[str, bytes] | None:
        """(partition key, data) for an event, or None after recording why it was rejected."""
        field = self.partition_key_field
        key = event.get(field) if isinstance(event, dict) else None
        if isinstance(key, int) and not isinstance(key, bool):
            key = str(key)
        if not isinstance(key, str) or not key:
            stats.rejected.append(Rejected(event, f"partition key: {field} missing or not a non-empty string"))
            return None
        if len(key) > MAX_PARTITION_KEY_CHARS:
            stats.rejected.append(
                Rejected(event, f"partition key: {field} longer than {MAX_PARTITION_KEY_CHARS} characters")
            )
            return None
        try:
            data = self.encode(event)
        except (TypeError, ValueError) as exc:
            stats.rejected.append(Rejected(event, f"json: {exc}"))
            return None
        size = len(data) + len(key.encode("utf-8"))
        if size > MAX_RECORD_BYTES:
            stats.rejected.append(
                Rejected(
                    event,
                    f"size: record is {size} bytes (data + partition key), "
                    f"over the {MAX_RECORD_BYTES}-byte Kinesis limit",
                )
            )
            return None
        return key, data

    def _plain_entries(self, events: Iterable[Any], stats: ProducerStats) -> Iterator[_Entry]:
        for event in events:
            prepared = self._prepare(event, stats)
            if prepared is not None:
                yield _Entry(prepared[0], prepared[1], [event])

    def _kpl_entries(
        self, events: Iterable[Any], stats: ProducerStats, max_aggregate_bytes: int, flush_every: int
    ) -> Iterator[_Entry]:
        # One aggregator per partition key: an aggregate is routed by its first key, so packing
        # different keys together would move keys off their hash shard (the real KPL packs per shard).
        aggregators: dict[str, tuple[RecordAggregator, list[Any]]] = {}

        def entry(agg_record: Any, members: list[Any]) -> _Entry:
            pk, ehk, data = agg_record.get_contents()
            return _Entry(pk, data, members, ehk or None)

        def flush_all() -> Iterator[_Entry]:
            for agg, members in aggregators.values():
                record = agg.clear_and_get()
                if record is not None:
                    yield entry(record, members)
            aggregators.clear()

        for n, event in enumerate(events, start=1):
            prepared = self._prepare(event, stats)
            if prepared is not None:
                key, data = prepared
                agg, members = aggregators.setdefault(key, (RecordAggregator(max_aggregate_bytes), []))
                try:
                    full = agg.add_user_record(key, data)
                except ValueError:
                    stats.rejected.append(
                        Rejected(
                            event,
                            f"size: {len(data)}-byte record does not fit a {max_aggregate_bytes}-byte KPL aggregate",
                        )
                    )
                    continue
                if full is not None:
                    yield entry(full, members[:])
                    del members[:]
                members.append(event)
            if n % flush_every == 0:
                yield from flush_all()
        yield from flush_all()

    # -- sending ---------------------------------------------------------------------------------

    def send(self, events: Iterable[Any]) -> ProducerStats:
        """Send each event as one record (partition key: `partition_key_field`); raise `ProducerError` on give-up."""
        stats = ProducerStats()
        self._send_entries(self._plain_entries(events, stats), stats)
        return stats

    def send_kpl_aggregated(
        self, events: Iterable[Any], max_aggregate_bytes: int = KPL_DEFAULT_AGGREGATE_BYTES, flush_every: int = 1000
    ) -> ProducerStats:
        """Send events packed KPL-style (aws_kinesis_agg), as a KPL producer in the fleet would.

        Aggregates hold one partition key each and are flushed at least every `flush_every` events.
        """
        if not 0 < max_aggregate_bytes <= MAX_RECORD_BYTES - 4 * MAX_PARTITION_KEY_CHARS:
            raise ValueError(f"max_aggregate_bytes must be in 1..{MAX_RECORD_BYTES - 4 * MAX_PARTITION_KEY_CHARS}")
        stats = ProducerStats()
        self._send_entries(self._kpl_entries(events, stats, max_aggregate_bytes, flush_every), stats)
        return stats

    def _send_entries(self, entries: Iterable[_Entry], stats: ProducerStats) -> None:
        batch: list[_Entry] = []
        batch_bytes = 0
        for entry in entries:
            if batch and (len(batch) == MAX_RECORDS_PER_REQUEST or batch_bytes + entry.size > MAX_REQUEST_BYTES):
                self._put_batch(batch, stats)
                batch, batch_bytes = [], 0
            batch.append(entry)
            batch_bytes += entry.size
        if batch:
            self._put_batch(batch, stats)

    def backoff_s(self, retry: int) -> float:
        """Delay before retry number `retry` (1-based): capped exponential with equal jitter."""
        ceiling = min(self.max_backoff_s, self.base_backoff_s * (2 ** (retry - 1)))
        return ceiling / 2 + self._rng.uniform(0, ceiling / 2)

    def _put_batch(self, batch: list[_Entry], stats: ProducerStats) -> None:
        pending = batch
        for attempt in range(1, self.max_attempts + 1):
            if attempt > 1:
                self._sleep(self.backoff_s(attempt - 1))
                stats.retried += sum(len(e.events) for e in pending)
            stats.requests += 1
            try:
                response = self.client.put_records(StreamName=self.stream_name, Records=[e.request() for e in pending])
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "")
                if code not in RETRYABLE_REQUEST_ERRORS:
                    raise
                stats.throttled_requests += 1
                stats.error_codes[code] += len(pending)
                self._report(stats)
                continue
            results = response["Records"]
            if len(results) != len(pending):
                raise ProducerError(
                    f"PutRecords answered {len(results)} results for {len(pending)} records",
                    stats,
                    [ev for e in pending for ev in e.events],
                )
            failed: list[_Entry] = []
            for entry, result in zip(pending, results, strict=True):
                code = result.get("ErrorCode")
                if code:
                    stats.error_codes[code] += 1
                    failed.append(entry)
                else:
                    stats.sent += len(entry.events)
                    stats.records += 1
                    stats.bytes += entry.size
            self._report(stats)
            if not failed:
                return
            pending = failed
        lost = [ev for e in pending for ev in e.events]
        stats.failed += len(lost)
        raise ProducerError(
            f"{len(lost)} record(s) still failing after {self.max_attempts} attempts "
            f"(errors so far: {dict(stats.error_codes)}); {stats.sent} sent, later events not sent",
            stats,
            lost,
        )

    def _report(self, stats: ProducerStats) -> None:
        if self.progress is not None:
            self.progress(stats)
