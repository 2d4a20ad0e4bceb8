"""Bulk indexing of processed events into OpenSearch with Firehose's delivery semantics.

- Documents are built column-wise with polars (one JSON line per row, the canonical `attributes` JSON
  spliced in as an object), not dict by dict: serialization is most of a Python indexer's cost.
- Bulk requests are cut by bytes (default 5 MiB, Amazon OpenSearch's sweet spot and Firehose's
  buffer), never by a fixed count alone, so wide documents cannot build a request the node rejects.
- `_id` = `event_id`, so a retried batch, a replayed day or a replayed failure overwrites instead of
  duplicating (docs/architecture.md, "Delivery guarantees": deterministic `_id`s).
- 429, 5xx and connection errors are retried with exponential backoff and jitter, only for the items
  that failed, within a bounded total wait shared by the whole call (`max_total_wait_s`): a node that
  stays down delays a batch by at most that, then the circuit opens and the rest is backed up at once.
- Documents that still fail go to `search-failed/dt=…/hour=…/<digest>-<part>.jsonl.gz` in the lake
  with the index, the error and the document (Firehose's "failed documents only" S3 backup): counted,
  never dropped. `replay_failed` re-indexes that backup later and deletes each object once delivered.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import polars as pl

from etl_platform.config import env_number
from etl_platform.lake import layout
from etl_platform.search.indices import (
    ANOMALIES,
    EVENT_PROPERTIES,
    EVENTS,
    IndexSettings,
    check_prefix,
    ensure_templates,
    index_name,
)

MIB = 1024 * 1024
FAILED = "search-failed"
RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S%.6fZ"
# Columns copied into a document as they are, in this order; `attributes` and `indexed_at` are added.
DOC_COLUMNS = tuple(name for name in EVENT_PROPERTIES if name not in ("attributes", "indexed_at"))
# Keep only the status and error of each item: a 5 MiB request's full response is mostly noise.
BULK_FILTER_PATH = "took,errors,items.*.status,items.*.error"


class IndexingError(RuntimeError):
    """Documents failed and there is nowhere to back them up: refuse to drop them silently."""


@dataclass(frozen=True)
class IndexerConfig:
    max_bulk_bytes: int = 5 * MIB
    max_bulk_docs: int = 20_000
    initial_backoff_s: float = 0.2
    max_backoff_s: float = 5.0
    max_total_wait_s: float = 60.0  # all sleeping between retries in one call, across every request
    request_timeout_s: float = 60.0
    concurrency: int = 2  # bulk requests in flight; one node keeps up with 2, a cluster with more
    refresh: str | None = None  # e.g. "wait_for" so a test reads its writes; None in production

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> IndexerConfig:
        """ETL_SEARCH_BULK_BYTES, ETL_SEARCH_MAX_WAIT_S, ETL_SEARCH_CONCURRENCY override the defaults."""
        env = os.environ if env is None else env
        defaults = cls()
        return cls(
            max_bulk_bytes=env_number(env, "ETL_SEARCH_BULK_BYTES", defaults.max_bulk_bytes, int, 1024),
            max_total_wait_s=env_number(env, "ETL_SEARCH_MAX_WAIT_S", defaults.max_total_wait_s, float, 0),
            concurrency=env_number(env, "ETL_SEARCH_CONCURRENCY", defaults.concurrency, int, 1),
        )


def prefix_from_env(env: Mapping[str, str] | None = None) -> str:
    """ETL_OPENSEARCH_INDEX_PREFIX: lets deployments (and tests) share a cluster without colliding."""
    env = os.environ if env is None else env
    return check_prefix(env.get("ETL_OPENSEARCH_INDEX_PREFIX", ""))


@dataclass
class IndexStats:
    """What one indexing call did; `failed` documents are in the lake under `backup_objects`."""

    indexed: int = 0
    failed: int = 0
    retried: int = 0  # item re-sends (a document retried twice counts twice)
    bytes: int = 0  # request bytes sent, retries included
    requests: int = 0
    seconds: float = 0.0
    by_family: dict[str, int] = field(default_factory=dict)  # indexed documents per index family
    backup_objects: list[str] = field(default_factory=list)
    last_error: str | None = None
    unreachable: bool = False  # the node stayed unreachable past the wait budget (the circuit opened)

    def add(self, other: IndexStats) -> None:
        self.indexed += other.indexed
        self.failed += other.failed
        self.retried += other.retried
        self.bytes += other.bytes
        self.requests += other.requests
        self.seconds += other.seconds
        for family, n in other.by_family.items():
            self.by_family[family] = self.by_family.get(family, 0) + n
        self.backup_objects += other.backup_objects
        self.last_error = other.last_error or self.last_error
        self.unreachable = self.unreachable or other.unreachable

    def as_dict(self) -> dict[str, Any]:
        return {
            "indexed": self.indexed, "failed": self.failed, "retried": self.retried, "bytes": self.bytes,
            "requests": self.requests, "seconds": round(self.seconds, 3), "by_family": dict(self.by_family),
            "backup_objects": list(self.backup_objects), "last_error": self.last_error,
            "unreachable": self.unreachable,
        }


# --- documents ------------------------------------------------------------------------------------
def _timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def documents(frame: pl.DataFrame, indexed_at: datetime) -> pl.DataFrame:
    """One JSON document per row (column `doc`), plus `_id` and the event-time `_day` (YYYY.MM.DD).

    Times become ISO-8601 UTC strings with microseconds; `attributes` (canonical JSON text from
    decoding) is spliced in as an object for the `flat_object` field. Columns the mapping does not know
    are left out, so the micro-batch frame (with `shard_depth` etc.) and a replayed one index alike.
    """
    if "event_id" not in frame.columns or "event_time" not in frame.columns:
        raise ValueError("a processed frame needs event_id and event_time columns")
    fields = []
    for name in DOC_COLUMNS:
        if name not in frame.columns:
            continue
        expr = pl.col(name)
        if isinstance(frame.schema[name], pl.Datetime):
            expr = expr.dt.convert_time_zone("UTC").dt.strftime(TIME_FORMAT)
        fields.append(expr.alias(name))
    attributes = pl.col("attributes").fill_null("{}") if "attributes" in frame.columns else pl.lit("{}")
    body = pl.struct(fields).struct.json_encode()
    doc = pl.concat_str([
        body.str.strip_suffix("}"),
        pl.lit(f',"indexed_at":"{_timestamp(indexed_at)}","attributes":'),
        attributes,
        pl.lit("}"),
    ])
    return frame.select(
        pl.col("event_id").alias("_id"),
        pl.col("event_time").dt.convert_time_zone("UTC").dt.strftime("%Y.%m.%d").alias("_day"),
        (pl.col("anomaly_status") == "ANOMALY").fill_null(False).alias("_anomaly")
        if "anomaly_status" in frame.columns else pl.lit(False).alias("_anomaly"),
        doc.alias("doc"),
    )


def bulk_lines(docs: pl.DataFrame, prefix: str = "") -> pl.DataFrame:
    """Bulk `index` actions for every doc into events-<day>, and for anomalies also into anomalies-<day>.

    Columns: `_index`, `_id`, `payload` (action line + document line, newline-terminated), `size` (bytes).
    """
    check_prefix(prefix)
    parts = []
    for family, rows in ((EVENTS, docs), (ANOMALIES, docs.filter(pl.col("_anomaly")))):
        if rows.height == 0:
            continue
        target = pl.concat_str([pl.lit(f"{prefix}{family}-"), pl.col("_day")])
        action = pl.struct(pl.struct(target.alias("_index"), pl.col("_id")).alias("index")).struct.json_encode()
        parts.append(rows.select(
            target.alias("_index"), pl.col("_id"),
            pl.concat_str([action, pl.lit("\n"), pl.col("doc"), pl.lit("\n")]).alias("payload"),
        ))
    if not parts:
        return pl.DataFrame(schema={"_index": pl.String, "_id": pl.String, "payload": pl.String, "size": pl.UInt32})
    out = pl.concat(parts)
    return out.with_columns(pl.col("payload").str.len_bytes().alias("size"))


def chunk_ranges(sizes: Sequence[int], max_bytes: int, max_docs: int = 0) -> list[tuple[int, int]]:
    """Consecutive [start, end) ranges, each within max_bytes (and max_docs when > 0), none empty.

    A single item larger than max_bytes gets a range of its own: the node decides (it may answer 413,
    which then fails only that document).
    """
    if max_bytes <= 0:
        raise ValueError("max_bytes must be positive")
    ranges: list[tuple[int, int]] = []
    start, total = 0, 0
    for i, size in enumerate(sizes):
        if i > start and (total + size > max_bytes or (max_docs and i - start >= max_docs)):
            ranges.append((start, i))
            start, total = i, 0
        total += size
    if start < len(sizes):
        ranges.append((start, len(sizes)))
    return ranges


# --- the bulk engine ------------------------------------------------------------------------------
@dataclass
class Failure:
    position: int
    status: int | str
    error: Any


def _family(index: str) -> str:
    base = index.rsplit("-", 1)[0]
    return ANOMALIES if base.endswith(ANOMALIES) else EVENTS


def _describe(exc: Exception) -> tuple[int | str, str]:
    status = getattr(exc, "status_code", "N/A")
    return status, f"{type(exc).__name__}: {exc}"[:2000]


class _Budget:
    """The call's shared retry wait budget, and the circuit that opens when a node stays unreachable."""

    def __init__(self, seconds: float) -> None:
        self.remaining = seconds
        self.open = False
        self.reason = ""
        self.lock = threading.Lock()

    def take(self, wanted: float) -> float | None:
        with self.lock:
            if self.remaining <= 0:
                return None
            granted = min(wanted, self.remaining)
            self.remaining -= granted
            return granted


class BulkEngine:
    """Sends prepared bulk payloads with retries; returns the positions that failed for good."""

    def __init__(self, client: Any, config: IndexerConfig | None = None,
                 sleep: Callable[[float], None] = time.sleep, rng: random.Random | None = None) -> None:
        from opensearchpy.exceptions import ConnectionError as OSConnectionError
        from opensearchpy.exceptions import TransportError

        self.client, self.config = client, config or IndexerConfig()
        self.sleep, self.rng = sleep, rng or random.Random()
        self._connection_error, self._transport_error = OSConnectionError, TransportError
        self._lock = threading.Lock()

    def run(self, payloads: Sequence[str], sizes: Sequence[int], indices: Sequence[str]
            ) -> tuple[IndexStats, list[Failure]]:
        started = time.monotonic()
        stats, failures = IndexStats(), []
        budget = _Budget(self.config.max_total_wait_s)
        chunks = [list(range(a, b)) for a, b in chunk_ranges(sizes, self.config.max_bulk_bytes,
                                                             self.config.max_bulk_docs)]

        def work(positions: list[int]) -> None:
            self._send(positions, payloads, indices, budget, stats, failures)

        if self.config.concurrency > 1 and len(chunks) > 1:
            with ThreadPoolExecutor(self.config.concurrency, thread_name_prefix="bulk") as pool:
                for future in [pool.submit(work, chunk) for chunk in chunks]:
                    future.result()
        else:
            for chunk in chunks:
                work(chunk)
        stats.failed = len(failures)
        stats.unreachable = budget.open
        stats.seconds = time.monotonic() - started
        return stats, failures

    def _send(self, positions: list[int], payloads: Sequence[str], indices: Sequence[str],
              budget: _Budget, stats: IndexStats, failures: list[Failure]) -> None:
        pending, attempt = positions, 0
        while pending:
            if budget.open:
                self._fail(pending, "N/A", f"not sent, OpenSearch unreachable: {budget.reason}", stats, failures,
                           note=False)
                return
            body = "".join(payloads[i] for i in pending).encode()
            retry: list[int] = []
            connection_failed = False
            try:
                params: dict[str, Any] = {"request_timeout": self.config.request_timeout_s,
                                          "filter_path": BULK_FILTER_PATH}
                if self.config.refresh:
                    params["refresh"] = self.config.refresh
                response = self.client.bulk(body=body, **params)
            except self._connection_error as exc:
                status, message = _describe(exc)
                retry, connection_failed = pending, True
                self._note(stats, requests=1, bytes_=len(body), error=message)
            except self._transport_error as exc:
                status, message = _describe(exc)
                self._note(stats, requests=1, bytes_=len(body), error=message)
                if status == 413 and len(pending) > 1:  # too large for the node: halve and go on
                    half = len(pending) // 2
                    self._send(pending[:half], payloads, indices, budget, stats, failures)
                    self._send(pending[half:], payloads, indices, budget, stats, failures)
                    return
                if status in RETRYABLE_STATUS:
                    retry = pending
                else:
                    self._fail(pending, status, message, stats, failures)
                    return
            else:
                self._note(stats, requests=1, bytes_=len(body))
                items = response.get("items", []) if response.get("errors") else None
                if items is not None and len(items) != len(pending):
                    raise RuntimeError(f"bulk answered {len(items)} items for {len(pending)} actions")
                ok: list[int] = []
                retry_status: int | str = "N/A"
                retry_error = ""
                if items is None:
                    ok = pending
                else:
                    for position, item in zip(pending, items, strict=True):
                        result = next(iter(item.values()))
                        status = int(result.get("status", 0))
                        if status < 300:
                            ok.append(position)
                        elif status in RETRYABLE_STATUS:
                            retry.append(position)
                            retry_status, retry_error = status, json.dumps(result.get("error"))[:2000]
                        else:
                            with self._lock:
                                failures.append(Failure(position, status, result.get("error")))
                self._count_ok(ok, indices, stats)
                status, message = retry_status, retry_error
                if retry:
                    self._note(stats, error=retry_error)
            if not retry:
                return
            delay = min(self.config.max_backoff_s, self.config.initial_backoff_s * 2 ** attempt)
            granted = budget.take(delay * (0.5 + self.rng.random() / 2))
            if granted is None:
                if connection_failed:
                    budget.reason, budget.open = message, True
                self._fail(retry, status, f"gave up after {attempt + 1} attempts: {message}", stats, failures)
                return
            self.sleep(granted)
            with self._lock:
                stats.retried += len(retry)
            pending, attempt = retry, attempt + 1

    def _note(self, stats: IndexStats, requests: int = 0, bytes_: int = 0, error: str | None = None) -> None:
        with self._lock:
            stats.requests += requests
            stats.bytes += bytes_
            if error:
                stats.last_error = error

    def _count_ok(self, positions: list[int], indices: Sequence[str], stats: IndexStats) -> None:
        counts: dict[str, int] = {}
        for position in positions:
            family = _family(indices[position])
            counts[family] = counts.get(family, 0) + 1
        with self._lock:
            stats.indexed += len(positions)
            for family, n in counts.items():
                stats.by_family[family] = stats.by_family.get(family, 0) + n

    def _fail(self, positions: list[int], status: int | str, error: Any, stats: IndexStats,
              failures: list[Failure], note: bool = True) -> None:
        with self._lock:
            failures.extend(Failure(p, status, error) for p in positions)
            if note:
                stats.last_error = error if isinstance(error, str) else json.dumps(error)[:2000]


# --- failed-document backup -----------------------------------------------------------------------
def failed_prefix(day: date | str | None = None) -> str:
    return f"{FAILED}/" if day is None else layout.day_prefix(FAILED, day)


def backup_failures(s3: Any, bucket: str, failures: Sequence[Failure], payloads: Sequence[str],
                    indices: Sequence[str], ids: Sequence[str], prefix: str, now: datetime,
                    max_object_bytes: int = 5 * MIB) -> list[str]:
    """Write failed documents to the lake; returns the object keys. Same failures, same keys."""
    if not failures:
        return []
    failed_at = _timestamp(now)
    lines = []
    for failure in sorted(failures, key=lambda f: f.position):
        doc = payloads[failure.position].split("\n", 1)[1].rstrip("\n")
        error = failure.error if isinstance(failure.error, str | dict | list) else str(failure.error)
        lines.append(
            f'{{"index":{json.dumps(indices[failure.position])},"id":{json.dumps(ids[failure.position])},'
            f'"prefix":{json.dumps(prefix)},"status":{json.dumps(failure.status)},'
            f'"error":{json.dumps(error)},"failed_at":"{failed_at}","doc":{doc}}}'
        )
    digest = hashlib.sha1("\n".join(sorted(f"{indices[f.position]}/{ids[f.position]}" for f in failures))
                          .encode()).hexdigest()[:16]
    hour = layout.HourPartition.of(now.astimezone(UTC))
    keys = []
    part_lines: list[str] = []
    size = 0
    for line in [*lines, None]:
        if line is None or (part_lines and size + len(line) + 1 > max_object_bytes):
            key = f"{hour.prefix(FAILED)}{digest}-{len(keys):04d}.jsonl.gz"
            layout.put(s3, bucket, key, layout.gzip_lines(part_lines))
            keys.append(key)
            part_lines, size = [], 0
        if line is not None:
            part_lines.append(line)
            size += len(line) + 1
    return keys


# --- entry points ---------------------------------------------------------------------------------
_templates_ready: set[tuple[str, str]] = set()


def _ensure_templates_once(client: Any, prefix: str, settings: IndexSettings | None) -> str | None:
    """Templates once per process and target; an unreachable node is not an error here (the bulk
    requests that follow will fail and be backed up). Returns the error text, if any."""
    from opensearchpy.exceptions import ConnectionError as OSConnectionError

    key = (repr(getattr(getattr(client, "transport", None), "hosts", id(client))), prefix)
    if key in _templates_ready:
        return None
    try:
        ensure_templates(client, prefix, settings)
    except OSConnectionError as exc:
        return _describe(exc)[1]
    _templates_ready.add(key)
    return None


def _index_lines(client: Any, lines: pl.DataFrame, s3: Any, bucket: str | None, prefix: str,
                 config: IndexerConfig, now: datetime, engine: BulkEngine | None = None) -> IndexStats:
    payloads, sizes = lines["payload"].to_list(), lines["size"].to_list()
    indices, ids = lines["_index"].to_list(), lines["_id"].to_list()
    stats, failures = (engine or BulkEngine(client, config)).run(payloads, sizes, indices)
    if failures:
        if s3 is None or not bucket:
            raise IndexingError(f"{len(failures)} documents failed to index and no lake bucket was given "
                                f"for the backup; last error: {stats.last_error}")
        stats.backup_objects = backup_failures(s3, bucket, failures, payloads, indices, ids, prefix, now)
    return stats


def index_processed_frame(client: Any, frame: pl.DataFrame, s3: Any, bucket: str | None, prefix: str = "",
                          config: IndexerConfig | None = None, now: datetime | None = None,
                          index_settings: IndexSettings | None = None) -> IndexStats:
    """Index a processed micro-batch (or any processed frame): events, and anomalies a second time.

    For the consumer, called after processed delivery and before the checkpoint commit, so a crash
    re-indexes the same `_id`s on retry. Documents that fail for good are backed up to the lake, so
    the batch can commit: nothing is lost and `replay_failed` delivers them later.
    """
    config = config or IndexerConfig()
    if frame.height == 0:
        return IndexStats()
    started = time.monotonic()
    now = now or datetime.now(UTC)
    template_error = _ensure_templates_once(client, prefix, index_settings)
    stats = _index_lines(client, bulk_lines(documents(frame, now), prefix), s3, bucket, prefix, config, now)
    if template_error and not stats.last_error:
        stats.last_error = template_error
    stats.seconds = time.monotonic() - started
    return stats


@dataclass
class DayIndexResult:
    day: date
    rows: int = 0  # processed rows in the lake for the day
    anomalies: int = 0  # of which ANOMALY
    stats: IndexStats = field(default_factory=IndexStats)
    stale_deleted: int = 0
    events_count: int | None = None  # documents in the day's indices after the run
    anomalies_count: int | None = None


def _stale_ids(client: Any, index: str, keep: set[str], before: datetime) -> list[str]:
    """Ids in `index` written before this run that the lake no longer holds."""
    from opensearchpy import helpers

    query = {"query": {"range": {"indexed_at": {"lt": _timestamp(before)}}}, "_source": False}
    hits = helpers.scan(client, index=index, query=query, size=5000, ignore_unavailable=True)
    return [hit["_id"] for hit in hits if hit["_id"] not in keep]


def count_documents(client: Any, index: str) -> int:
    """Documents in an index (0 when it does not exist)."""
    if not client.indices.exists(index=index):
        return 0
    return int(client.count(index=index)["count"])


def index_day(client: Any, s3: Any, bucket: str, day: date, prefix: str = "",
              config: IndexerConfig | None = None, delete_stale: bool = True,
              progress: Callable[[str], None] | None = None) -> DayIndexResult:
    """Reindex one event-time day from `processed/dt=day/` so its indices equal the lake.

    Every row is (re)written under its `_id`; then, only if nothing failed, documents that the lake no
    longer holds and that were written before this run started are deleted (the "written before"
    guard keeps a document a concurrent micro-batch just added). Reindexing is idempotent.
    """
    from etl_platform.lake.readers import read_day

    config = config or IndexerConfig()
    started = datetime.now(UTC)
    frame = read_day(s3, bucket, layout.PROCESSED, day)
    result = DayIndexResult(day=day, rows=frame.height)
    if frame.height:
        result.anomalies = int((frame["anomaly_status"] == "ANOMALY").sum())
    if progress:
        progress(f"{day}: indexing {result.rows} rows ({result.anomalies} anomalies)")
    result.stats = index_processed_frame(client, frame, s3, bucket, prefix, config, now=started)
    if result.stats.failed == 0:
        targets = [index_name(EVENTS, day, prefix), index_name(ANOMALIES, day, prefix)]
        client.indices.refresh(index=",".join(targets), ignore_unavailable=True, allow_no_indices=True)
        if delete_stale:
            keep = set(frame["event_id"].to_list()) if frame.height else set()
            anomaly_ids = (set(frame.filter(pl.col("anomaly_status") == "ANOMALY")["event_id"].to_list())
                           if frame.height else set())
            deletes = []
            for index, ids in zip(targets, (keep, anomaly_ids), strict=True):
                deletes += [(index, doc_id) for doc_id in _stale_ids(client, index, ids, started)]
            for start in range(0, len(deletes), 10_000):
                body = "".join(json.dumps({"delete": {"_index": i, "_id": d}}) + "\n"
                               for i, d in deletes[start:start + 10_000])
                client.bulk(body=body, refresh="true")
            result.stale_deleted = len(deletes)
        result.events_count = count_documents(client, targets[0])
        result.anomalies_count = count_documents(client, targets[1])
    if progress:
        progress(f"{day}: indexed {result.stats.indexed}, failed {result.stats.failed}, "
                 f"stale deleted {result.stale_deleted} in {result.stats.seconds:.1f}s")
    return result


@dataclass
class ReplayStats:
    objects: int = 0  # backup objects read
    documents: int = 0
    deleted: list[str] = field(default_factory=list)  # backup objects fully delivered and removed
    stats: IndexStats = field(default_factory=IndexStats)
    stopped: str | None = None  # why the replay stopped before the last object (objects stay as they are)


def replay_failed(client: Any, s3: Any, bucket: str, day: date | str | None = None,
                  config: IndexerConfig | None = None, progress: Callable[[str], None] | None = None,
                  ) -> ReplayStats:
    """Re-index the failed-document backup (all of it, or one failure day), deleting what got delivered.

    Each object is handled on its own: its documents are re-sent under their original index and `_id`
    (with a fresh `indexed_at`, so the alert sensor sees late anomalies); documents that fail again are
    written to a new backup object first, and only then is the old object deleted. Nothing is lost if
    the node goes down again mid-replay or the process dies: at worst a document is sent twice, which
    its deterministic `_id` makes harmless. When the node is unreachable (past the wait budget) the
    replay stops and leaves the remaining objects untouched for the next attempt.
    """
    config = config or IndexerConfig()
    result = ReplayStats()
    keys = layout.list_keys(s3, bucket, failed_prefix(day))
    for number, key in enumerate(keys, 1):
        records = list(layout.read_jsonl_gz(layout.get(s3, bucket, key)))
        now = datetime.now(UTC)
        stamp = _timestamp(now)
        for prefix in sorted({r.get("prefix", "") for r in records}):
            _ensure_templates_once(client, prefix, None)
        lines = pl.DataFrame(
            {
                "_index": [r["index"] for r in records],
                "_id": [r["id"] for r in records],
                "payload": [
                    json.dumps({"index": {"_index": r["index"], "_id": r["id"]}}) + "\n"
                    + json.dumps({**r["doc"], "indexed_at": stamp}, separators=(",", ":")) + "\n"
                    for r in records
                ],
            },
            schema={"_index": pl.String, "_id": pl.String, "payload": pl.String},
        ).with_columns(pl.col("payload").str.len_bytes().alias("size"))
        # Records from different prefixes share an object only if a caller mixed them; keep the first.
        prefix = records[0].get("prefix", "") if records else ""
        stats = _index_lines(client, lines, s3, bucket, prefix, config, now)
        result.objects += 1
        result.documents += len(records)
        result.stats.add(stats)
        if key not in stats.backup_objects:
            s3.delete_object(Bucket=bucket, Key=key)
            result.deleted.append(key)
        if progress:
            progress(f"replay {number}/{len(keys)}: {key}: {stats.indexed} indexed, {stats.failed} failed again")
        if stats.unreachable and number < len(keys):
            result.stopped = f"OpenSearch unreachable; {len(keys) - number} backup objects left for later"
            break
    return result


def iter_failed(s3: Any, bucket: str, day: date | str | None = None) -> Iterable[dict[str, Any]]:
    """Every backed-up failed document record (index, id, prefix, status, error, failed_at, doc)."""
    for key in layout.list_keys(s3, bucket, failed_prefix(day)):
        yield from layout.read_jsonl_gz(layout.get(s3, bucket, key))


def search_sink(client: Any, s3: Any, bucket: str, env: Mapping[str, str] | None = None
                ) -> Callable[[pl.DataFrame], IndexStats]:
    """The consumer's near-real-time indexing step, configured from the environment."""
    prefix, config = prefix_from_env(env), IndexerConfig.from_env(env)

    def sink(frame: pl.DataFrame) -> IndexStats:
        return index_processed_frame(client, frame, s3, bucket, prefix=prefix, config=config)

    return sink
