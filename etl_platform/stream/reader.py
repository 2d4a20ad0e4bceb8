"""Reading one shard in order from a checkpoint, as the KCL does: one iterator kept across reads.

`ShardReader.read` returns the next records, cut by a count and a byte size. It does not stop at an
empty GetRecords page while the shard reports `MillisBehindLatest > 0` (on Kinesis a shard can
answer empty pages with records behind them), within a time budget and at most 5 calls a second
(Kinesis' per-shard read limit). Records fetched past a cut are kept for the next read, and an
expired iterator is re-opened after the last record fetched, so no record is skipped or repeated.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from etl_platform.stream.shards import Shard, list_shards

MAX_RECORDS_PER_CALL = 10_000  # GetRecords' own limit
CALL_INTERVAL_S = 0.2  # Kinesis allows 5 GetRecords a second per shard


@dataclass
class ReadResult:
    records: list[dict[str, Any]]
    ended: bool  # a closed shard read to its end: nothing will ever follow
    cut: bool  # stopped at the count or byte cap: more is waiting now
    millis_behind_latest: int


def record_size(record: Mapping[str, Any]) -> int:
    return len(record["Data"]) + len(record["PartitionKey"])


class ReadBatch:
    """The records of one read: at most `max_records` and, beyond the first, `max_bytes`. `take` adds a
    page and hands back what did not fit, for the reader to carry to its next read."""

    def __init__(self, max_records: int, max_bytes: int) -> None:
        self.max_records, self.max_bytes = max_records, max_bytes
        self.records: list[dict[str, Any]] = []
        self.size = 0
        self.full = False  # a record did not fit: the read is cut

    def take(self, page: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for position, record in enumerate(page):
            size = record_size(record)
            if self.records and (len(self.records) >= self.max_records or self.size + size > self.max_bytes):
                self.full = True
                return page[position:]
            self.records.append(record)
            self.size += size
        return []


class ShardReader:
    """Sequential reads of one shard after sequence number `after` (from the start when None)."""

    def __init__(
        self,
        kinesis: Any,
        stream_name: str,
        shard_id: str,
        after: str | None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kinesis, self.stream_name, self.shard_id = kinesis, stream_name, shard_id
        self.fetched_through = after  # the last record GetRecords returned (where a new iterator starts)
        self.sleep, self.clock = sleep, clock
        self.iterator: str | None = None
        self.carry: list[dict[str, Any]] = []  # fetched past a cut, handed out by the next read
        self.closed = False  # GetRecords answered NextShardIterator=None: the shard has no more records
        self.behind = 0

    def _open(self) -> str:
        kwargs: dict[str, Any] = {"StreamName": self.stream_name, "ShardId": self.shard_id}
        if self.fetched_through is None:
            kwargs["ShardIteratorType"] = "TRIM_HORIZON"
        else:
            kwargs.update(ShardIteratorType="AFTER_SEQUENCE_NUMBER", StartingSequenceNumber=self.fetched_through)
        return self.kinesis.get_shard_iterator(**kwargs)["ShardIterator"]

    def read(self, max_records: int, max_bytes: int, time_budget_s: float) -> ReadResult:
        """The next records (at least one if any is there to read, at most `max_records` and, beyond the
        first, `max_bytes`), paging past empty pages while the shard is behind, for up to `time_budget_s`."""
        batch = ReadBatch(max_records, max_bytes)
        records = batch.records
        pending, self.carry = self.carry, []
        self.carry = batch.take(pending)
        deadline = self.clock() + time_budget_s
        full_page = False  # the last page was as long as asked: more may follow whatever MillisBehindLatest says
        while not batch.full and not self.closed and len(records) < max_records:
            if self.iterator is None:
                self.iterator = self._open()
            limit = min(MAX_RECORDS_PER_CALL, max_records - len(records))
            try:
                page = self.kinesis.get_records(ShardIterator=self.iterator, Limit=limit)
            except self.kinesis.exceptions.ExpiredIteratorException:
                self.iterator = None  # iterators live five minutes: reopen after what was fetched
                continue
            full_page = len(page["Records"]) >= limit
            self.behind = int(page.get("MillisBehindLatest", 0))
            if page["Records"]:
                self.fetched_through = page["Records"][-1]["SequenceNumber"]
            self.iterator = page.get("NextShardIterator")
            self.carry = batch.take(page["Records"]) + self.carry
            if self.iterator is None:
                self.closed = True
            elif self.behind == 0 or self.clock() >= deadline:
                break
            elif not page["Records"]:
                self.sleep(CALL_INTERVAL_S)
        cut = batch.full or len(records) >= max_records and bool(self.carry or self.behind or full_page)
        return ReadResult(
            records=records,
            ended=self.closed and not self.carry,
            cut=cut or bool(self.carry),
            millis_behind_latest=self.behind,
        )

    def mirror_commit(self, sequence_number: str) -> None:
        """Nothing to mirror: Kinesis keeps no consumer positions (the lease is the checkpoint)."""

    def close(self) -> None:
        """Nothing to release: an iterator expires by itself."""


class SourceReader(Protocol):
    """Ordered reads of one shard (a Kinesis shard, a Kafka partition)."""

    def read(self, max_records: int, max_bytes: int, time_budget_s: float) -> ReadResult: ...

    def mirror_commit(self, sequence_number: str) -> None: ...

    def close(self) -> None: ...


class Source(Protocol):
    """Where a consumer's shards and records come from."""

    def list_shards(self) -> list[Shard]: ...

    def reader(self, shard_id: str, after: str | None) -> SourceReader: ...


class KinesisSource:
    """A Kinesis stream as the consumer's source of shards and readers (`stream.kafka.KafkaSource` is
    the other kind)."""

    def __init__(self, kinesis: Any, stream_name: str) -> None:
        self.kinesis, self.stream_name = kinesis, stream_name

    def list_shards(self) -> list[Shard]:
        return list_shards(self.kinesis, self.stream_name)

    def reader(self, shard_id: str, after: str | None) -> ShardReader:
        return ShardReader(self.kinesis, self.stream_name, shard_id, after)
