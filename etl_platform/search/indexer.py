"""Indexing processed events into OpenSearch with Firehose's delivery semantics: the entry points.

- `index_processed_frame`: a micro-batch (or any processed frame), events and anomalies; what fails
  for good is backed up to the lake (`search.backup`), so the batch can commit and nothing is lost.
- `index_day`: reindex one day from the lake so its indices equal it again.
- `replay_failed`: re-index the backup.
- `search_sink`: the consumer's near-real-time indexing step.
Documents come from `search.documents`, requests go through `search.bulk`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import polars as pl

from etl_platform.lake import layout
from etl_platform.lake.visibility import PendingObjects
from etl_platform.pipelines import Pipeline
from etl_platform.search.backup import backup_failures, failed_prefix
from etl_platform.search.bulk import BulkEngine, Failure, IndexerConfig, IndexingError, IndexStats, describe_error
from etl_platform.search.documents import bulk_lines, documents, timestamp
from etl_platform.search.indices import (
    ANOMALIES,
    EVENTS,
    IndexSettings,
    check_prefix,
    contract_properties,
    ensure_templates,
    index_name,
)


def prefix_from_env(env: Mapping[str, str] | None = None) -> str:
    """ETL_OPENSEARCH_INDEX_PREFIX: lets deployments (and tests) share a cluster without colliding."""
    env = os.environ if env is None else env
    return check_prefix(env.get("ETL_OPENSEARCH_INDEX_PREFIX", ""))


_templates_ready: set[tuple[str, str, str]] = set()


def _ensure_templates_once(
    client: Any, prefix: str, settings: IndexSettings | None, properties: Mapping[str, Any] | None = None
) -> str | None:
    """Templates once per process and target; a node that is unreachable or answers with an error
    (5xx, 429, 403, ...) is not an error here: the bulk requests that follow fail the same way and their
    documents are backed up, so the lake goes on. Returns the error text, if any."""
    from opensearchpy.exceptions import OpenSearchException

    # The mapping is part of the key: a contract that gained a field updates its templates.
    mapping = json.dumps(properties, sort_keys=True) if properties is not None else ""
    key = (repr(getattr(getattr(client, "transport", None), "hosts", id(client))), prefix, mapping)
    if key in _templates_ready:
        return None
    try:
        ensure_templates(client, prefix, settings, properties)
    except OpenSearchException as exc:  # ConnectionError and TransportError (every HTTP error) included
        return describe_error(exc)[1]
    _templates_ready.add(key)
    return None


def _index_lines(
    client: Any,
    lines: pl.DataFrame,
    s3: Any,
    bucket: str | None,
    prefix: str,
    config: IndexerConfig,
    now: datetime,
    engine: BulkEngine | None = None,
) -> IndexStats:
    payloads, sizes = lines["payload"].to_list(), lines["size"].to_list()
    indices, ids = lines["_index"].to_list(), lines["_id"].to_list()
    try:
        stats, failures = (engine or BulkEngine(client, config)).run(payloads, sizes, indices)
    except Exception as exc:  # a cluster answering what no one expected must not stop the lake either
        error = f"{type(exc).__name__}: {exc}"
        stats = IndexStats(requests=1, last_error=error)
        failures = [Failure(position, "N/A", error) for position in range(len(payloads))]
        stats.failed = len(failures)
    if failures:
        if s3 is None or not bucket:
            raise IndexingError(
                f"{len(failures)} documents failed to index and no lake bucket was given "
                f"for the backup; last error: {stats.last_error}"
            )
        stats.backup_objects = backup_failures(s3, bucket, failures, payloads, indices, ids, prefix, now)
    return stats


def index_processed_frame(
    client: Any,
    frame: pl.DataFrame,
    s3: Any,
    bucket: str | None,
    prefix: str = "",
    config: IndexerConfig | None = None,
    now: datetime | None = None,
    index_settings: IndexSettings | None = None,
    properties: Mapping[str, Any] | None = None,
) -> IndexStats:
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
    template_error = _ensure_templates_once(client, prefix, index_settings, properties)
    docs = documents(frame, now, properties)
    stats = _index_lines(client, bulk_lines(docs, prefix), s3, bucket, prefix, config, now)
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

    query = {"query": {"range": {"indexed_at": {"lt": timestamp(before)}}}, "_source": False}
    hits = helpers.scan(client, index=index, query=query, size=5000, ignore_unavailable=True)
    return [hit["_id"] for hit in hits if hit["_id"] not in keep]


def count_documents(client: Any, index: str) -> int:
    """Documents in an index (0 when it does not exist)."""
    if not client.indices.exists(index=index):
        return 0
    return int(client.count(index=index)["count"])


def index_day(
    client: Any,
    s3: Any,
    bucket: str,
    day: date,
    prefix: str = "",
    config: IndexerConfig | None = None,
    delete_stale: bool = True,
    progress: Callable[[str], None] | None = None,
    pending: PendingObjects | None = None,
    root: str = "",
    properties: Mapping[str, Any] | None = None,
) -> DayIndexResult:
    """Reindex one event-time day from `processed/dt=day/` so its indices equal the lake.

    Every row is (re)written under its `_id`; then, only if nothing failed, documents that the lake no
    longer holds and that were written before this run started are deleted (the "written before"
    guard keeps a document a concurrent micro-batch just added). Reindexing is idempotent.
    """
    from etl_platform.lake.readers import read_day

    config = config or IndexerConfig()
    started = datetime.now(UTC)
    frame = read_day(s3, bucket, root + layout.PROCESSED, day, pending)
    result = DayIndexResult(day=day, rows=frame.height)
    if frame.height:
        result.anomalies = int((frame["anomaly_status"] == "ANOMALY").sum())
    if progress:
        progress(f"{day}: indexing {result.rows} rows ({result.anomalies} anomalies)")
    result.stats = index_processed_frame(client, frame, s3, bucket, prefix, config, now=started, properties=properties)
    if result.stats.failed == 0:
        targets = [index_name(EVENTS, day, prefix), index_name(ANOMALIES, day, prefix)]
        client.indices.refresh(index=",".join(targets), ignore_unavailable=True, allow_no_indices=True)
        if delete_stale:
            keep = set(frame["event_id"].to_list()) if frame.height else set()
            anomaly_ids = (
                set(frame.filter(pl.col("anomaly_status") == "ANOMALY")["event_id"].to_list())
                if frame.height
                else set()
            )
            deletes = []
            for index, ids in zip(targets, (keep, anomaly_ids), strict=True):
                deletes += [(index, doc_id) for doc_id in _stale_ids(client, index, ids, started)]
            for start in range(0, len(deletes), 10_000):
                body = "".join(
                    json.dumps({"delete": {"_index": i, "_id": d}}) + "\n" for i, d in deletes[start : start + 10_000]
                )
                client.bulk(body=body, refresh="true")
            result.stale_deleted = len(deletes)
        result.events_count = count_documents(client, targets[0])
        result.anomalies_count = count_documents(client, targets[1])
    if progress:
        progress(
            f"{day}: indexed {result.stats.indexed}, failed {result.stats.failed}, "
            f"stale deleted {result.stale_deleted} in {result.stats.seconds:.1f}s"
        )
    return result


@dataclass
class ReplayStats:
    objects: int = 0  # backup objects read
    documents: int = 0
    deleted: list[str] = field(default_factory=list)  # backup objects fully delivered and removed
    stats: IndexStats = field(default_factory=IndexStats)
    stopped: str | None = None  # why the replay stopped before the last object (objects stay as they are)


def replay_failed(
    client: Any,
    s3: Any,
    bucket: str,
    day: date | str | None = None,
    config: IndexerConfig | None = None,
    progress: Callable[[str], None] | None = None,
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
        stamp = timestamp(now)
        for prefix in sorted({r.get("prefix", "") for r in records}):
            _ensure_templates_once(client, prefix, None)
        lines = pl.DataFrame(
            {
                "_index": [r["index"] for r in records],
                "_id": [r["id"] for r in records],
                "payload": [
                    json.dumps({"index": {"_index": r["index"], "_id": r["id"]}})
                    + "\n"
                    + json.dumps({**r["doc"], "indexed_at": stamp}, separators=(",", ":"))
                    + "\n"
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


def search_sink(
    client: Any,
    s3: Any,
    bucket: str,
    prefix: str = "",
    config: IndexerConfig | None = None,
    pipeline: Pipeline | None = None,
) -> Callable[[pl.DataFrame], IndexStats]:
    """The consumer's near-real-time indexing step: each processed batch into the `prefix`ed indices
    (the pipeline's `index_prefix`), mapped by the pipeline's contract."""
    check_prefix(prefix)
    config = config or IndexerConfig()
    properties = contract_properties(pipeline.contract) if pipeline is not None else None

    def sink(frame: pl.DataFrame) -> IndexStats:
        return index_processed_frame(client, frame, s3, bucket, prefix=prefix, config=config, properties=properties)

    return sink
