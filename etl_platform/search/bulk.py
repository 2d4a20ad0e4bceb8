"""Sending bulk requests to OpenSearch: sized by bytes, retried per item, within one wait budget.

- Requests are cut by bytes (default 5 MiB, Amazon OpenSearch's sweet spot and Firehose's buffer),
  never by a fixed count alone, so wide documents cannot build a request the node rejects.
- 429, 5xx and connection errors are retried with exponential backoff and jitter, only for the items
  that failed, within a bounded total wait shared by the whole call (`max_total_wait_s`): a node that
  stays down delays a batch by at most that, then the circuit opens and the rest fails at once.
- What still fails is returned as `Failure`s for the caller to back up (`search.backup`).
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from etl_platform.config import env_number
from etl_platform.search.indices import ANOMALIES, EVENTS

MIB = 1024 * 1024
RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
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
            "indexed": self.indexed,
            "failed": self.failed,
            "retried": self.retried,
            "bytes": self.bytes,
            "requests": self.requests,
            "seconds": round(self.seconds, 3),
            "by_family": dict(self.by_family),
            "backup_objects": list(self.backup_objects),
            "last_error": self.last_error,
            "unreachable": self.unreachable,
        }


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


@dataclass
class Failure:
    position: int
    status: int | str
    error: Any


def _family(index: str) -> str:
    base = index.rsplit("-", 1)[0]
    return ANOMALIES if base.endswith(ANOMALIES) else EVENTS


def describe_error(exc: Exception) -> tuple[int | str, str]:
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

    def __init__(
        self,
        client: Any,
        config: IndexerConfig | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        from opensearchpy.exceptions import ConnectionError as OSConnectionError
        from opensearchpy.exceptions import TransportError

        self.client, self.config = client, config or IndexerConfig()
        self.sleep, self.rng = sleep, rng or random.Random()
        self._connection_error, self._transport_error = OSConnectionError, TransportError
        self._lock = threading.Lock()

    def run(
        self, payloads: Sequence[str], sizes: Sequence[int], indices: Sequence[str]
    ) -> tuple[IndexStats, list[Failure]]:
        started = time.monotonic()
        stats, failures = IndexStats(), []
        budget = _Budget(self.config.max_total_wait_s)
        chunks = [
            list(range(a, b)) for a, b in chunk_ranges(sizes, self.config.max_bulk_bytes, self.config.max_bulk_docs)
        ]

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

    def _send(
        self,
        positions: list[int],
        payloads: Sequence[str],
        indices: Sequence[str],
        budget: _Budget,
        stats: IndexStats,
        failures: list[Failure],
    ) -> None:
        pending, attempt = positions, 0
        while pending:
            if budget.open:
                self._fail(
                    pending, "N/A", f"not sent, OpenSearch unreachable: {budget.reason}", stats, failures, note=False
                )
                return
            body = "".join(payloads[i] for i in pending).encode()
            retry: list[int] = []
            connection_failed = False
            try:
                params: dict[str, Any] = {
                    "request_timeout": self.config.request_timeout_s,
                    "filter_path": BULK_FILTER_PATH,
                }
                if self.config.refresh:
                    params["refresh"] = self.config.refresh
                response = self.client.bulk(body=body, **params)
            except self._connection_error as exc:
                status, message = describe_error(exc)
                retry, connection_failed = pending, True
                self._note(stats, requests=1, bytes_=len(body), error=message)
            except self._transport_error as exc:
                status, message = describe_error(exc)
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
            delay = min(self.config.max_backoff_s, self.config.initial_backoff_s * 2**attempt)
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

    def _fail(
        self,
        positions: list[int],
        status: int | str,
        error: Any,
        stats: IndexStats,
        failures: list[Failure],
        note: bool = True,
    ) -> None:
        with self._lock:
            failures.extend(Failure(p, status, error) for p in positions)
            if note:
                stats.last_error = error if isinstance(error, str) else json.dumps(error)[:2000]
