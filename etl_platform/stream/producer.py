"""Writes envelopes to a Kinesis stream with PutRecords: KPL-style aggregation per destination shard,
batching to the API limits, retrying only what failed.

Aggregation (`send_kpl_aggregated`, what `etl-platform produce` does for Kinesis). A shard takes at
most 1,000 records/s and 1 MiB/s, so small events sent one per record hit the record limit long
before the byte limit. As the KPL does, the producer keeps the stream's shard map (ListShards hash
key ranges), routes each event by the 128-bit MD5 of its partition key to the open shard whose range
holds it, and packs the events of one shard into one KPL aggregate (up to `max_aggregate_bytes`, the
KPL's AggregationMaxSize default of 51,200 bytes). The aggregate's PartitionKey is its first event's
key and its ExplicitHashKey that key's hash, which pins it to that shard; every event keeps its own
partition key in the aggregate's key table, and the consumer (`stream.decoding`) gives each
sub-record that key. An aggregate that ends up holding one event is sent as that event's plain record
(the KPL does the same): the KPL framing would only add bytes, and at low rates the stream then
carries exactly what `send` would. An event too big for an aggregate but within the 1 MiB record
limit is sent as its own plain record, after what its shard's open aggregate already holds.

Latency. An event waits in an aggregate (or in the PutRecords batch of finished ones) at most
`max_buffered_ms` (the KPL's RecordMaxBufferedTime, 100 ms by default), counted from when the
producer takes it from the source; then everything buffered is sent. The source is pulled on a
thread into a bounded queue so that a slow generator (the CLI's live demo sleeps between ticks)
cannot hold the flush back; the bound is backpressure, not buffering. A PutRecords call in progress
(with its retries) delays flushing: the bound is `max_buffered_ms` plus the request in flight.
Everything buffered is sent at the end, when the source raises (then its exception is re-raised) and
on KeyboardInterrupt while waiting for the source (then the interrupt is re-raised).

Stale shard map and per-key order. The consumer reads a key's events in order because Kinesis puts
all of them on the shard its hash falls in, and reads parents before children; it also keeps a key's
analytics state on that shard. A plain record is always routed by Kinesis itself, but an aggregate is
routed by its *first* key: its other events go where the producer's map said their keys belong.
After a reshard, until the producer notices, that map is stale: an aggregate packed for a closed
parent lands on the child holding its first key, and its events whose keys hash to a sibling child
land on the wrong shard. Those events are neither lost nor duplicated (and keep their own partition
key), but the consumer reads sibling shards independently: such a key's events on two shards are no
longer in one order (its later events, on its right shard, may be processed before the earlier
misplaced ones), and the misplaced ones are computed against the wrong shard's (empty) state of the
key while its windows on its right shard skip them (docs/reliability.md, "Analytics keys spread over
shards"). The window is kept to one PutRecords request (at most 500 records / 5 MiB, the KPL's
collection limits: in a bulk load, up to ~15,000 demo events, about half of which land on a sibling
after a split; at live rates, one 100 ms flush): every stored entry's response `ShardId` is
compared with the shard it was packed for, and a mismatch (which the first write after a reshard
produces, since closed shards take no writes) refreshes the map with ListShards and re-packs
everything still buffered before anything more is sent. Polling ListShards instead would cost calls
without closing the race (a reshard can land between the poll and the put). A refresh that does not
change the map is not repeated for `MAP_REFRESH_BACKOFF_S` (1 s), so an unexplained mismatch cannot
turn into a ListShards storm; if ListShards lagged behind a reshard, the window stretches to that
second. `ProducerStats.misrouted` counts the events stored on a shard whose hash range does not hold
their key; `shard_map_refreshes` counts the refreshes. `etl-platform produce` prints both.

Retries. Kinesis accepts a PutRecords request partially: some entries come back with an `ErrorCode`
(`ProvisionedThroughputExceededException`, `InternalFailure`) while the rest are stored. Re-sending
the whole batch would duplicate the stored ones, so only the failed entries (plain records or whole
aggregates) are re-sent, with exponential backoff and jitter, before any later record is sent: a
key's failed record is not overtaken by that key's *later* records (earlier-batch order is the best
PutRecords allows, since entries after a failed one in the same request may already be stored).
Counts are of events (user records) except `records` and `requests`.

Oversized or unkeyable events are not sent and not raised: they go to `ProducerStats.rejected` with a
reason, so one bad event neither aborts a long run nor disappears. The producer does not validate
the envelope itself (the consumer does, and routes bad events to the error prefix); it only refuses
what Kinesis cannot accept.
"""

from __future__ import annotations

import bisect
import gzip
import json
import queue
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aws_kinesis_agg.aggregator import AggRecord, RecordAggregator
from botocore.exceptions import ClientError

from etl_platform.stream.shards import Shard, hash_key, list_shards

MAX_RECORDS_PER_REQUEST = 500
MAX_REQUEST_BYTES = 5 * 1024 * 1024
MAX_RECORD_BYTES = 1024 * 1024
MAX_PARTITION_KEY_CHARS = 256
# An aggregate's data plus its partition key (up to 256 characters, 4 UTF-8 bytes each) is one record.
MAX_AGGREGATE_BYTES = MAX_RECORD_BYTES - 4 * MAX_PARTITION_KEY_CHARS
KPL_DEFAULT_AGGREGATE_BYTES = 51_200  # the KPL's own AggregationMaxSize default
KPL_DEFAULT_MAX_BUFFERED_MS = 100.0  # the KPL's own RecordMaxBufferedTime default
SOURCE_QUEUE_EVENTS = 10_000  # events read ahead of the sender from the source
MAP_REFRESH_BACKOFF_S = 1.0
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
    misrouted: int = 0  # events stored on a shard whose hash range does not hold their key (stale map)
    shard_map_refreshes: int = 0  # ListShards refreshes after a response ShardId differed from the map's
    error_codes: Counter[str] = field(default_factory=Counter)
    rejected: list[Rejected] = field(default_factory=list)

    def summary(self) -> str:
        text = (
            f"sent={self.sent} failed={self.failed} retried={self.retried} "
            f"rejected={len(self.rejected)} requests={self.requests} bytes={self.bytes} records={self.records}"
        )
        if self.shard_map_refreshes:
            text += f" shard_map_refreshes={self.shard_map_refreshes} misrouted={self.misrouted}"
        return text


class ProducerError(RuntimeError):
    """Records still failing after `max_attempts`; later events of the iterable were not sent."""

    def __init__(self, message: str, stats: ProducerStats, failed_events: list[Any]) -> None:
        super().__init__(message)
        self.stats = stats
        self.failed_events = failed_events


@dataclass
class _Entry:
    """One PutRecords entry and the events it carries (one, or many when KPL-aggregated).

    `shard_id` is the shard the producer's map routed it to (None: Kinesis routes it, unchecked);
    `members` holds (event, partition key, data) of each user record, to re-pack it after a map
    refresh; `first_at` is when its oldest event was taken from the source (monotonic seconds).
    """

    partition_key: str
    data: bytes
    events: list[Any]
    explicit_hash_key: str | None = None
    shard_id: str | None = None
    members: list[tuple[Any, str, bytes]] = field(default_factory=list)
    first_at: float = 0.0

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


class ShardMap:
    """The stream's shards as the producer routes by them: open shards by hash key range, and every
    retained shard by id (to tell where a stored record's key belongs)."""

    def __init__(self, shards: Iterable[Shard]) -> None:
        self.by_id = {s.shard_id: s for s in shards}
        self.open = sorted((s for s in self.by_id.values() if not s.closed), key=lambda s: s.hash_key_range[0])
        self._starts = [s.hash_key_range[0] for s in self.open]

    def shard_for(self, hash_value: int) -> Shard | None:
        """The open shard whose range holds `hash_value` (None if no open shard does, e.g. mid-reshard)."""
        i = bisect.bisect_right(self._starts, hash_value) - 1
        if i >= 0 and hash_value <= self.open[i].hash_key_range[1]:
            return self.open[i]
        return None

    def holds(self, shard_id: str, partition_key: str) -> bool | None:
        """Whether `shard_id`'s range holds the key's hash (None: the shard is not in the map)."""
        shard = self.by_id.get(shard_id)
        if shard is None:
            return None
        low, high = shard.hash_key_range
        return low <= hash_key(partition_key) <= high

    def same_routing(self, other: ShardMap) -> bool:
        return [(s.shard_id, s.hash_key_range) for s in self.open] == [
            (s.shard_id, s.hash_key_range) for s in other.open
        ]


class _OpenAggregate:
    """The aggregate being filled for one shard: the KPL message so far and its user records."""

    def __init__(self, shard_id: str, max_bytes: int, first_at: float) -> None:
        self.shard_id = shard_id
        self.aggregator = RecordAggregator(max_bytes)
        self.members: list[tuple[Any, str, bytes]] = []
        self.first_at = first_at

    def add(self, event: Any, key: str, data: bytes, now: float) -> _Entry | None:
        """Add a user record; returns the finished entry when it did not fit (it then starts the next one).

        Raises ValueError (adding nothing) when the record alone exceeds the aggregate size.
        """
        # The key as bytes: aws_kinesis_agg looks keys up in its table by the bytes it sizes with, so a
        # str key is never found and every record is sized as if it added a new key (~3% fewer per aggregate).
        full = self.aggregator.add_user_record(key.encode("utf-8"), data)
        if full is None:
            self.members.append((event, key, data))
            return None
        entry = _aggregate_entry(self.shard_id, full, self.members, self.first_at)
        self.members, self.first_at = [(event, key, data)], now
        return entry

    def finish(self) -> _Entry | None:
        record = self.aggregator.clear_and_get()
        if record is None:
            return None
        entry = _aggregate_entry(self.shard_id, record, self.members, self.first_at)
        self.members = []
        return entry


def _aggregate_entry(
    shard_id: str, record: AggRecord, members: list[tuple[Any, str, bytes]], first_at: float
) -> _Entry:
    events = [m[0] for m in members]
    key = members[0][1]
    if len(members) == 1:  # sent plain, as the KPL does: the framing would only add bytes
        return _Entry(key, members[0][2], events, shard_id=shard_id, members=members, first_at=first_at)
    _pk, _ehk, data = record.get_contents()
    return _Entry(key, data, events, str(hash_key(key)), shard_id, members, first_at)


class _SourcePump:
    """Pulls an event iterable on a daemon thread into a bounded queue, so the sender can wait for the
    next event with a timeout (and flush on time) however slowly the source yields."""

    EVENT, END, ERROR = "event", "end", "error"

    def __init__(self, events: Iterable[Any], capacity: int) -> None:
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue(capacity)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(events,), name="producer-source", daemon=True)
        self._thread.start()

    def _run(self, events: Iterable[Any]) -> None:
        iterator: Iterator[Any] | None = None
        try:
            iterator = iter(events)
            for event in iterator:
                if not self._offer((self.EVENT, event)):
                    return
            self._offer((self.END, None))
        except BaseException as exc:  # the sender re-raises it: the source's errors are its caller's
            self._offer((self.ERROR, exc))
        finally:
            close = getattr(iterator, "close", None)
            if callable(close):  # a generator stopped early runs its cleanup (open files) now
                try:
                    close()
                except Exception:
                    pass

    def _offer(self, item: tuple[str, Any]) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)  # wakes to notice `close`
                return True
            except queue.Full:
                continue
        return False

    def get(self, timeout: float | None) -> tuple[str, Any]:
        """The next (kind, value); raises queue.Empty after `timeout` seconds (None: wait)."""
        return self._queue.get(timeout=timeout)

    def close(self) -> None:
        """Stop reading the source (the thread ends at its next event; a daemon, it never blocks exit)."""
        self._stop.set()
        self._thread.join(timeout=0.2)


class _ShardAggregation:
    """One `send_kpl_aggregated` run's buffers: an open aggregate per destination shard and the batch
    of finished entries; sends requests from the batch and refreshes the map on a routing mismatch."""

    def __init__(self, producer: KinesisProducer, stats: ProducerStats, max_bytes: int) -> None:
        self.producer, self.stats, self.max_bytes = producer, stats, max_bytes
        self.open: dict[str, _OpenAggregate] = {}
        self.batch: list[_Entry] = []
        self.batch_bytes = 0
        self.oldest: float | None = None  # when the oldest buffered event was taken from the source

    def add(self, event: Any, key: str, data: bytes, now: float) -> None:
        """Pack one prepared event (nothing is sent here; see `send_full` and `flush`)."""
        if self.oldest is None:
            self.oldest = now
        shard = self.producer.shard_map().shard_for(hash_key(key))
        if shard is None:  # no open shard holds it (a map caught mid-reshard): let Kinesis route it
            self._enqueue(_Entry(key, data, [event], members=[(event, key, data)], first_at=now))
            return
        agg = self.open.get(shard.shard_id)
        if agg is None:
            agg = self.open[shard.shard_id] = _OpenAggregate(shard.shard_id, self.max_bytes, now)
        try:
            full = agg.add(event, key, data, now)
        except ValueError:  # too big to aggregate: its own record, after what its shard already holds
            self._finish(shard.shard_id)
            self._enqueue(
                _Entry(key, data, [event], shard_id=shard.shard_id, members=[(event, key, data)], first_at=now)
            )
            return
        if full is not None:
            self._enqueue(full)

    def _enqueue(self, entry: _Entry) -> None:
        self.batch.append(entry)
        self.batch_bytes += entry.size

    def _finish(self, shard_id: str) -> None:
        agg = self.open.pop(shard_id, None)
        entry = agg.finish() if agg is not None else None
        if entry is not None:
            self._enqueue(entry)

    def send_full(self) -> None:
        """Send requests while the batch holds a full one (500 records or 5 MiB)."""
        while len(self.batch) >= MAX_RECORDS_PER_REQUEST or self.batch_bytes >= MAX_REQUEST_BYTES:
            self._put_request()

    def flush(self) -> None:
        """Send everything buffered, open aggregates included."""
        while self.open or self.batch:
            for shard_id in list(self.open):
                self._finish(shard_id)
            self._put_request()

    def _put_request(self) -> None:
        count, size = 0, 0
        for entry in self.batch:
            if count == MAX_RECORDS_PER_REQUEST or (count and size + entry.size > MAX_REQUEST_BYTES):
                break
            count, size = count + 1, size + entry.size
        if not count:
            return
        request, self.batch = self.batch[:count], self.batch[count:]
        self.batch_bytes -= size
        mismatched = self.producer._put_batch(request, self.stats)
        if mismatched:
            self._refresh(mismatched)
        buffered = [e.first_at for e in self.batch] + [a.first_at for a in self.open.values()]
        self.oldest = min(buffered, default=None)

    def _refresh(self, mismatched: list[tuple[_Entry, str]]) -> None:
        """A stored entry landed off the shard it was packed for: reload the map, count the events on
        the wrong shard, and re-pack what is still buffered so nothing more goes out on the old map."""
        producer, now = self.producer, time.monotonic()
        old = new = producer.shard_map()
        if now >= producer._map_quiet_until:
            new = producer.refresh_shard_map()
            self.stats.shard_map_refreshes += 1
        for entry, landed in mismatched:
            self.stats.misrouted += sum(1 for _, key, _ in entry.members if new.holds(landed, key) is False)
        if new is old:
            return
        if new.same_routing(old):  # nothing to learn from ListShards yet: do not ask again at once
            producer._map_quiet_until = now + MAP_REFRESH_BACKOFF_S
            return
        # Batch first, then open aggregates: a key's earlier records are in its shard's finished entries.
        pending = [m for e in self.batch for m in e.members] + [m for a in self.open.values() for m in a.members]
        since = min([e.first_at for e in self.batch] + [a.first_at for a in self.open.values()], default=now)
        self.batch, self.batch_bytes, self.open, self.oldest = [], 0, {}, None
        for event, key, data in pending:
            self.add(event, key, data, since)  # keeps the oldest deadline: re-packing starts no new clock


class KinesisProducer:
    """PutRecords writer for one stream; `client` is a boto3 Kinesis client (or anything shaped like one).

    Owns the stream's shard map for KPL aggregation (loaded on first use, kept across sends, refreshed
    when a write lands off the shard it was packed for).
    """

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
        max_buffered_ms: float = KPL_DEFAULT_MAX_BUFFERED_MS,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if max_buffered_ms < 0:
            raise ValueError("max_buffered_ms must be >= 0")
        self.client = client
        self.stream_name = stream_name
        # The field whose value is the partition key: a pipeline's first analytics key, so every
        # event of a key lands on one shard, in order.
        self.partition_key_field = partition_key_field
        self.compress = compress
        self.max_attempts = max_attempts
        self.base_backoff_s = base_backoff_s
        self.max_backoff_s = max_backoff_s
        self.max_buffered_ms = max_buffered_ms
        self.progress = progress
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._shard_map: ShardMap | None = None
        self._map_quiet_until = 0.0

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

    # -- shard map -------------------------------------------------------------------------------

    def shard_map(self) -> ShardMap:
        """The shard map aggregates are packed by (ListShards on first use)."""
        if self._shard_map is None:
            return self.refresh_shard_map()
        return self._shard_map

    def refresh_shard_map(self) -> ShardMap:
        """Reload the shard map from ListShards."""
        self._shard_map = ShardMap(list_shards(self.client, self.stream_name))
        return self._shard_map

    # -- sending ---------------------------------------------------------------------------------

    def send(self, events: Iterable[Any]) -> ProducerStats:
        """Send each event as one record (partition key: `partition_key_field`); raise `ProducerError` on give-up.

        Events are pulled lazily and sent 500 records (or 5 MiB) at a time, and at the end.
        """
        stats = ProducerStats()
        self._send_entries(self._plain_entries(events, stats), stats)
        return stats

    def send_kpl_aggregated(
        self,
        events: Iterable[Any],
        max_aggregate_bytes: int = KPL_DEFAULT_AGGREGATE_BYTES,
        max_buffered_ms: float | None = None,
    ) -> ProducerStats:
        """Send events KPL-aggregated per destination shard (see the module docstring); raise
        `ProducerError` on give-up. No event waits more than `max_buffered_ms` (default: the
        producer's) before it is sent, plus any request in flight."""
        if not 0 < max_aggregate_bytes <= MAX_AGGREGATE_BYTES:
            raise ValueError(f"max_aggregate_bytes must be in 1..{MAX_AGGREGATE_BYTES}")
        if not callable(getattr(self.client, "list_shards", None)):
            raise TypeError(
                f"{type(self).__name__}: KPL aggregation packs records per Kinesis shard and needs a Kinesis "
                "client (ListShards); use send()"
            )
        buffered_s = (self.max_buffered_ms if max_buffered_ms is None else max_buffered_ms) / 1000
        stats = ProducerStats()
        run = _ShardAggregation(self, stats, max_aggregate_bytes)
        self.shard_map()  # before the first event: a missing stream fails here, not mid-run
        pump = _SourcePump(events, SOURCE_QUEUE_EVENTS)
        interrupted: KeyboardInterrupt | None = None
        try:
            while True:
                timeout = None
                if run.oldest is not None:
                    timeout = run.oldest + buffered_s - time.monotonic()
                    if timeout <= 0:
                        run.flush()
                        continue
                try:
                    kind, value = pump.get(timeout)
                except queue.Empty:
                    continue
                except KeyboardInterrupt as exc:  # between requests: what is buffered can still go
                    interrupted = exc
                    break
                if kind == pump.EVENT:
                    prepared = self._prepare(value, stats)
                    if prepared is not None:
                        run.add(value, prepared[0], prepared[1], time.monotonic())
                        run.send_full()
                elif kind == pump.END:
                    break
                else:
                    run.flush()  # what the source yielded before it failed is sent
                    raise value
        finally:
            pump.close()
        run.flush()
        if interrupted is not None:
            raise interrupted
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

    def _put_batch(self, batch: list[_Entry], stats: ProducerStats) -> list[tuple[_Entry, str]]:
        """Put `batch`, re-sending failed entries; returns the stored entries that landed on a shard
        other than their `shard_id`, with that shard."""
        pending = batch
        mismatched: list[tuple[_Entry, str]] = []
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
                    continue
                stats.sent += len(entry.events)
                stats.records += 1
                stats.bytes += entry.size
                landed = result.get("ShardId")
                if entry.shard_id is not None and landed and landed != entry.shard_id:
                    mismatched.append((entry, landed))
            self._report(stats)
            if not failed:
                return mismatched
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
