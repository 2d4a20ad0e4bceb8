"""KinesisProducer: batching limits, partial-failure retries, throttling, give-up, KPL aggregation per
shard (routing, sizes, time-based flush, map refresh).

The local Kinesis emulator enforces no write limits and never throttles, so the failure paths are
driven by `ThrottlingKinesisFake`, a fault injector (not a Kinesis model) that answers PutRecords with
partial failures or whole-request throttling for its first attempts. It also answers ListShards and
gives each stored entry the `ShardId` its ExplicitHashKey or partition key hashes to, because the
producer checks that; `reshard` swaps its shards without telling the producer, the stale-map fault.
Routing and resharding against the real emulator are in tests/integration/test_producer_aggregation.py.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from aws_kinesis_agg import MAGIC
from aws_kinesis_agg.deaggregator import iter_deaggregate_records
from botocore.exceptions import ClientError

from etl_platform.stream.decoding import decode_records
from etl_platform.stream.producer import (
    KPL_DEFAULT_AGGREGATE_BYTES,
    MAX_AGGREGATE_BYTES,
    MAX_RECORD_BYTES,
    MAX_RECORDS_PER_REQUEST,
    MAX_REQUEST_BYTES,
    KinesisProducer,
    ProducerError,
    ProducerStats,
    ShardMap,
)
from etl_platform.stream.shards import Shard, list_shards
from etl_platform.stream.sources import demo_mix

HASH_SPACE = 2**128


def md5_int(key: str) -> int:
    """The routing hash computed here independently: MD5 of the UTF-8 key, big-endian, 128 bits."""
    return int(hashlib.md5(key.encode("utf-8")).hexdigest(), 16)


class ThrottlingKinesisFake:
    """Fault injector standing in for a Kinesis client's `put_records` and `list_shards`.

    - the first `throttle_requests` calls raise a whole-request ClientError (`throttle_code`);
    - the next `partial_failures` calls fail every `fail_every`-th entry (index 0, k, 2k, ...),
      alternating ProvisionedThroughputExceededException and InternalFailure;
    - every call is recorded, and accepted entries are appended to `stored` with a sequence number
      and the `ShardId` of the open shard holding their ExplicitHashKey (else their key's MD5);
    - `shards` equal hash ranges; `reshard(n)` closes them all and opens `n` new ones.
    """

    def __init__(
        self,
        partial_failures: int = 0,
        fail_every: int = 3,
        throttle_requests: int = 0,
        throttle_code: str = "ProvisionedThroughputExceededException",
        shards: int = 1,
    ) -> None:
        self.partial_failures = partial_failures
        self.fail_every = fail_every
        self.throttle_requests = throttle_requests
        self.throttle_code = throttle_code
        self.calls: list[list[dict]] = []
        self.stored: list[dict] = []
        self.failed_entries: list[list[dict]] = []
        self.call_times: list[float] = []
        self.list_calls = 0
        self.shards: list[dict] = []
        self.reshard(shards)

    def reshard(self, count: int) -> None:
        for shard in self.shards:
            shard["SequenceNumberRange"]["EndingSequenceNumber"] = str(10**30 + len(self.stored))
        first = len(self.shards)
        step = HASH_SPACE // count
        for i in range(count):
            end = HASH_SPACE - 1 if i == count - 1 else (i + 1) * step - 1
            self.shards.append(
                {
                    "ShardId": f"shardId-{first + i:012d}",
                    "HashKeyRange": {"StartingHashKey": str(i * step), "EndingHashKey": str(end)},
                    "SequenceNumberRange": {"StartingSequenceNumber": str(10**30 + len(self.stored))},
                }
            )

    def shard_of(self, hash_value: int) -> str:
        for shard in self.shards:
            keys = shard["HashKeyRange"]
            open_ = "EndingSequenceNumber" not in shard["SequenceNumberRange"]
            if open_ and int(keys["StartingHashKey"]) <= hash_value <= int(keys["EndingHashKey"]):
                return shard["ShardId"]
        raise AssertionError(f"no open shard holds {hash_value}")

    def list_shards(self, StreamName: str) -> dict:  # noqa: N803 - boto3 names
        assert StreamName == "events"
        self.list_calls += 1
        return {"Shards": [json.loads(json.dumps(s)) for s in self.shards]}

    def put_records(self, StreamName: str, Records: list[dict]) -> dict:  # noqa: N803 - boto3 names
        assert StreamName == "events"
        self.calls.append(list(Records))
        self.call_times.append(time.monotonic())
        call = len(self.calls)
        if call <= self.throttle_requests:
            raise ClientError({"Error": {"Code": self.throttle_code, "Message": "Rate exceeded"}}, "PutRecords")
        failing = call - self.throttle_requests <= self.partial_failures
        results, failed = [], []
        for i, record in enumerate(Records):
            if failing and i % self.fail_every == 0:
                code = "ProvisionedThroughputExceededException" if i % 2 == 0 else "InternalFailure"
                results.append({"ErrorCode": code, "ErrorMessage": "injected"})
                failed.append(record)
            else:
                seq = str(10**30 + len(self.stored))
                ehk = record.get("ExplicitHashKey")
                shard_id = self.shard_of(int(ehk) if ehk else md5_int(record["PartitionKey"]))
                self.stored.append({**record, "SequenceNumber": seq, "ShardId": shard_id, "call": call})
                results.append({"SequenceNumber": seq, "ShardId": shard_id})
        self.failed_entries.append(failed)
        return {"FailedRecordCount": len(failed), "Records": results}


def events(n: int, seed: int = 1) -> list[dict]:
    return list(demo_mix(n, seed=seed))


def stored_events(fake: ThrottlingKinesisFake) -> list[dict]:
    return [json.loads(r["Data"]) for r in fake.stored]


def producer(fake: ThrottlingKinesisFake, sleeps: list[float] | None = None, **kwargs: object) -> KinesisProducer:
    sleeps = [] if sleeps is None else sleeps
    return KinesisProducer(fake, "events", sleep=sleeps.append, rng=random.Random(0), **kwargs)


def request_bytes(records: list[dict]) -> int:
    return sum(len(r["Data"]) + len(r["PartitionKey"].encode()) for r in records)


# -- happy path and limits ---------------------------------------------------------------------------


def test_plain_send_partition_key_and_json() -> None:
    fake = ThrottlingKinesisFake()
    sent = events(20)
    stats = producer(fake).send(sent)
    assert (stats.sent, stats.failed, stats.retried, stats.requests, stats.records) == (20, 0, 0, 1, 20)
    assert stored_events(fake) == sent
    assert [r["PartitionKey"] for r in fake.stored] == [e["user_id"] for e in sent]
    assert stats.bytes == request_bytes(fake.calls[0])


def test_count_limit_500_per_request() -> None:
    fake = ThrottlingKinesisFake()
    stats = producer(fake).send(events(1234))
    assert [len(c) for c in fake.calls] == [500, 500, 234]
    assert stats.sent == 1234 and stats.requests == 3
    assert MAX_RECORDS_PER_REQUEST == 500


def test_byte_limit_5_mib_per_request() -> None:
    fake = ThrottlingKinesisFake()
    big = [{**e, "attributes": {"blob": "x" * 300_000}} for e in events(40)]
    stats = producer(fake).send(big)
    assert stats.sent == 40
    sizes = [request_bytes(c) for c in fake.calls]
    assert all(s <= MAX_REQUEST_BYTES for s in sizes)
    # Batches are full: the first record of the next request would not have fitted.
    for current, following in zip(fake.calls, fake.calls[1:], strict=False):
        assert request_bytes(current) + request_bytes(following[:1]) > MAX_REQUEST_BYTES
    assert [len(c) for c in fake.calls] == [17, 17, 6]
    assert stored_events(fake) == big


def test_oversized_and_unkeyable_events_are_rejected_not_sent() -> None:
    fake = ThrottlingKinesisFake()
    ok = events(3)
    huge = {**ok[0], "event_id": "huge", "attributes": {"blob": "x" * MAX_RECORD_BYTES}}
    no_key = {k: v for k, v in ok[1].items() if k != "user_id"}
    unserialisable = {**ok[2], "event_id": "set", "attributes": {"s": {1, 2}}}
    stats = producer(fake).send([ok[0], huge, no_key, ok[1], unserialisable, ok[2]])
    assert stored_events(fake) == ok
    reasons = {r.event.get("event_id"): r.reason for r in stats.rejected}
    assert reasons["huge"].startswith("size: record is ") and "1048576-byte Kinesis limit" in reasons["huge"]
    assert reasons[ok[1]["event_id"]] == "partition key: user_id missing or not a non-empty string"
    assert reasons["set"] == "json: set is not JSON serialisable"
    assert stats.sent == 3 and len(stats.rejected) == 3


def test_compressed_records_are_deterministic_gzip_json() -> None:
    fake = ThrottlingKinesisFake()
    sent = events(5)
    producer(fake, compress=True).send(sent)
    assert all(r["Data"][:2] == b"\x1f\x8b" for r in fake.stored)
    assert [json.loads(gzip.decompress(r["Data"])) for r in fake.stored] == sent
    again = ThrottlingKinesisFake()
    producer(again, compress=True).send(sent)
    assert [r["Data"] for r in again.stored] == [r["Data"] for r in fake.stored]


def test_datetimes_are_serialised_as_utc_iso() -> None:
    fake = ThrottlingKinesisFake()
    event = {**events(1)[0], "event_time": datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=UTC)}
    producer(fake).send([event])
    assert stored_events(fake)[0]["event_time"] == "2024-01-02T03:04:05.000006Z"


# -- retries -----------------------------------------------------------------------------------------


def test_partial_failures_retry_only_failed_entries() -> None:
    fake = ThrottlingKinesisFake(partial_failures=3, fail_every=3)
    sleeps: list[float] = []
    sent = events(30)
    stats = producer(fake, sleeps).send(sent)

    # Each retry request carries exactly the entries that failed in the previous one, in order.
    for previous_failed, retry in zip(fake.failed_entries, fake.calls[1:], strict=False):
        assert retry == previous_failed
    assert [len(c) for c in fake.calls] == [30, 10, 4, 2]

    stored = stored_events(fake)
    assert Counter(e["event_id"] for e in stored) == Counter(e["event_id"] for e in sent)  # no loss, no dup
    assert stats.sent == 30 and stats.failed == 0
    assert stats.retried == 10 + 4 + 2 == sum(len(f) for f in fake.failed_entries)
    # call 1 fails indices 0,3,..,27 (even -> throughput, odd -> internal); retries fail 0,3,6,9 then 0,3
    assert stats.error_codes == Counter(
        {"ProvisionedThroughputExceededException": 5 + 2 + 1, "InternalFailure": 5 + 2 + 1}
    )
    assert stats.requests == 4

    # Exponential backoff with jitter: delay k lies in [c/2, c] for c = base * 2**(k-1).
    assert len(sleeps) == 3
    for k, delay in enumerate(sleeps, start=1):
        ceiling = 0.05 * 2 ** (k - 1)
        assert ceiling / 2 <= delay <= ceiling


def test_failed_entries_go_before_later_batches() -> None:
    fake = ThrottlingKinesisFake(partial_failures=1, fail_every=2)
    sent = events(700)
    producer(fake).send(sent)
    assert [len(c) for c in fake.calls] == [500, 250, 200]  # the retry precedes the second batch
    first_batch = {e["event_id"] for e in sent[:500]}
    position = {e["event_id"]: i for i, e in enumerate(stored_events(fake))}
    for key in {e["user_id"] for e in sent}:
        mine = [e["event_id"] for e in sent if e["user_id"] == key]
        early = [position[i] for i in mine if i in first_batch]
        late = [position[i] for i in mine if i not in first_batch]
        if early and late:
            assert max(early) < min(late)


@pytest.mark.parametrize("code", ["ProvisionedThroughputExceededException", "LimitExceededException"])
def test_whole_request_throttling_is_retried(code: str) -> None:
    fake = ThrottlingKinesisFake(throttle_requests=2, throttle_code=code)
    sleeps: list[float] = []
    sent = events(50)
    stats = producer(fake, sleeps).send(sent)
    assert stored_events(fake) == sent
    assert len(fake.calls) == 3 and all(len(c) == 50 for c in fake.calls)
    assert stats.throttled_requests == 2 and stats.retried == 100 and stats.sent == 50
    assert len(sleeps) == 2


def test_non_retryable_client_error_propagates_at_once() -> None:
    fake = ThrottlingKinesisFake(throttle_requests=1, throttle_code="ResourceNotFoundException")
    sleeps: list[float] = []
    with pytest.raises(ClientError, match="ResourceNotFoundException"):
        producer(fake, sleeps).send(events(3))
    assert sleeps == [] and len(fake.calls) == 1


def test_gives_up_after_max_attempts_with_clear_error() -> None:
    fake = ThrottlingKinesisFake(partial_failures=100, fail_every=4)
    sleeps: list[float] = []
    sent = events(520)
    with pytest.raises(ProducerError, match=r"^8 record\(s\) still failing after 3 attempts") as info:
        producer(fake, sleeps, max_attempts=3).send(sent)
    err = info.value
    still_failing = list(range(500))[::4][::4][::4]  # every 4th entry fails on each of the 3 attempts
    assert err.stats.failed == 8 and err.stats.sent == 492
    assert [e["event_id"] for e in err.failed_events] == [sent[i]["event_id"] for i in still_failing]
    assert len(fake.calls) == 3 and len(sleeps) == 2  # the second batch was never sent
    stored_ids = {e["event_id"] for e in stored_events(fake)}
    assert stored_ids.isdisjoint(e["event_id"] for e in err.failed_events)
    assert stored_ids.isdisjoint(e["event_id"] for e in sent[500:])


def test_progress_is_reported_after_each_request() -> None:
    fake = ThrottlingKinesisFake(partial_failures=1, fail_every=5)
    seen: list[str] = []
    producer(fake, progress=lambda s: seen.append(s.summary())).send(events(600))
    assert len(seen) == len(fake.calls) == 3
    assert seen[0].startswith("sent=400 failed=0 retried=0 rejected=0 requests=1 ")
    assert seen[-1].startswith("sent=600 failed=0 retried=100 rejected=0 requests=3 ")
    assert isinstance(ProducerStats().summary(), str)


def test_backoff_is_capped() -> None:
    p = KinesisProducer(ThrottlingKinesisFake(), "events", base_backoff_s=1.0, max_backoff_s=4.0, rng=random.Random(1))
    assert all(2.0 <= p.backoff_s(k) <= 4.0 for k in range(3, 40))


# -- KPL aggregation per shard -----------------------------------------------------------------------


def library_deaggregate(records: list[dict]) -> list[dict]:
    boto3_shaped = [
        {
            "Data": r["Data"],
            "SequenceNumber": r.get("SequenceNumber", "0"),
            "PartitionKey": r["PartitionKey"],
            "ApproximateArrivalTimestamp": 0,
        }
        for r in records
    ]
    return list(iter_deaggregate_records(boto3_shaped, data_format="Boto3"))


def users_of(records: list[dict]) -> list[tuple[str, dict]]:
    """(partition key, event) of every user record: aggregates as the library's own deaggregator sees them."""

    def event(data: bytes) -> dict:
        return json.loads(gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data)

    out = []
    for record in records:
        if record["Data"][:4] != MAGIC:
            out.append((record["PartitionKey"], event(record["Data"])))
            continue
        for user in library_deaggregate([record]):
            out.append((user["kinesis"]["partitionKey"], event(base64.b64decode(user["kinesis"]["data"]))))
    return out


def ranges(fake: ThrottlingKinesisFake) -> dict[str, tuple[int, int]]:
    return {s.shard_id: s.hash_key_range for s in list_shards(fake, "events")}


def on_its_shard(record: dict, key: str, shard_ranges: dict[str, tuple[int, int]]) -> bool:
    low, high = shard_ranges[record["ShardId"]]
    return low <= md5_int(key) <= high


def test_shard_map_routes_md5_big_endian_into_open_ranges() -> None:
    parent = Shard("shardId-000000000000", (), True, "0", (0, HASH_SPACE - 1))
    low = Shard("shardId-000000000001", (parent.shard_id,), False, "1", (0, 2**100))
    mid = Shard("shardId-000000000002", (parent.shard_id,), False, "1", (2**100 + 1, 2**127 - 1))
    high = Shard("shardId-000000000003", (parent.shard_id,), False, "1", (2**127, HASH_SPACE - 1))
    shard_map = ShardMap([high, parent, low, mid])  # any order; the closed parent is never a destination

    def expected(h: int) -> str:
        return next(s.shard_id for s in (low, mid, high) if s.hash_key_range[0] <= h <= s.hash_key_range[1])

    for key in [f"user-{i:04d}" for i in range(2000)] + ["é", "a" * 256]:
        found = shard_map.shard_for(md5_int(key))
        assert found is not None and found.shard_id == expected(md5_int(key))
        assert shard_map.holds(found.shard_id, key) is True
    for h, shard in [
        (0, low),
        (2**100, low),
        (2**100 + 1, mid),
        (2**127 - 1, mid),
        (2**127, high),
        (HASH_SPACE - 1, high),
    ]:
        assert shard_map.shard_for(h) == shard
    gap = ShardMap([parent, low, high])  # mid-reshard: no open shard holds the middle
    assert gap.shard_for(2**101) is None
    assert shard_map.holds("shardId-999999999999", "user-0001") is None


def test_aggregates_pack_per_destination_shard_with_every_key_on_its_hash_shard() -> None:
    fake = ThrottlingKinesisFake(shards=4)
    sent = events(3000)  # 500 users: per-key packing would give ~1 event per aggregate
    stats = producer(fake).send_kpl_aggregated(sent, max_buffered_ms=60_000)
    assert stats.sent == 3000 and stats.records == len(fake.stored) < 3000 / 50
    assert stats.misrouted == 0 and stats.shard_map_refreshes == 0 and fake.list_calls == 1
    shard_ranges = ranges(fake)
    seen: list[tuple[str, dict]] = []
    by_shard: dict[str, list[int]] = {}
    for record in fake.stored:
        users = users_of([record])
        assert all(on_its_shard(record, key, shard_ranges) for key, _ in users)
        assert record["Data"][:4] == MAGIC and len({key for key, _ in users}) > 1
        # The aggregate is keyed and pinned by its first user record.
        assert record["PartitionKey"] == users[0][0]
        assert record["ExplicitHashKey"] == str(md5_int(users[0][0]))
        assert len(record["Data"]) <= KPL_DEFAULT_AGGREGATE_BYTES
        by_shard.setdefault(record["ShardId"], []).append(len(record["Data"]))
        seen += users
    assert set(by_shard) == set(shard_ranges)
    for sizes in by_shard.values():  # full but for each shard's last (a demo event is < 600 bytes)
        assert all(size > KPL_DEFAULT_AGGREGATE_BYTES - 600 for size in sizes[:-1])
    assert all(key == event["user_id"] for key, event in seen)
    assert Counter(e["event_id"] for _, e in seen) == Counter(e["event_id"] for e in sent)
    for user in {e["user_id"] for e in sent}:
        assert [e["event_id"] for k, e in seen if k == user] == [e["event_id"] for e in sent if e["user_id"] == user]
    assert stats.bytes == sum(len(r["Data"]) + len(r["PartitionKey"]) for r in fake.stored)


def test_single_event_goes_plain_and_gzip_sub_records_decode() -> None:
    fake = ThrottlingKinesisFake(shards=4)
    one = events(1)[0]
    producer(fake).send_kpl_aggregated([one])
    assert json.loads(fake.stored[0]["Data"]) == one and "ExplicitHashKey" not in fake.stored[0]

    fake = ThrottlingKinesisFake(shards=2)
    sent = events(400, seed=5)
    producer(fake, compress=True).send_kpl_aggregated(sent, max_buffered_ms=60_000)
    decoded = []
    for shard_id in ranges(fake):
        records = [
            {**r, "ApproximateArrivalTimestamp": datetime(2024, 1, 1, tzinfo=UTC)}
            for r in fake.stored
            if r["ShardId"] == shard_id
        ]
        result = decode_records(shard_id, records)
        assert result.errors == []
        decoded += result.events
    assert sorted(e["event_id"] for e in decoded) == sorted(e["event_id"] for e in sent)
    assert all(e["partition_key"] == e["user_id"] for e in decoded)


def test_aggregate_size_bounds_and_too_big_events_go_plain_in_order() -> None:
    p = producer(ThrottlingKinesisFake())
    for bad in (0, MAX_AGGREGATE_BYTES + 1):
        with pytest.raises(ValueError, match="max_aggregate_bytes"):
            p.send_kpl_aggregated([], max_aggregate_bytes=bad)

    fake = ThrottlingKinesisFake(shards=2)
    base = list(demo_mix(40, seed=4, users=3))
    big = {**base[10], "event_id": "big", "attributes": {"blob": "x" * 60_000}}
    huge = {**base[11], "event_id": "huge", "attributes": {"blob": "x" * MAX_RECORD_BYTES}}
    sent = base[:20] + [big, huge] + base[20:]
    stats = producer(fake).send_kpl_aggregated(sent, max_buffered_ms=60_000)
    assert stats.sent == 41 and [r.event["event_id"] for r in stats.rejected] == ["huge"]
    plain_big = [r for r in fake.stored if r["Data"][:1] == b"{" and json.loads(r["Data"])["event_id"] == "big"]
    assert len(plain_big) == 1 and "ExplicitHashKey" not in plain_big[0]
    seen = users_of(fake.stored)
    for user in {e["user_id"] for e in base}:  # the plain record kept its key's order
        expected = [e["event_id"] for e in sent if e["user_id"] == user and e["event_id"] != "huge"]
        assert [e["event_id"] for k, e in seen if k == user] == expected

    fake = ThrottlingKinesisFake()
    blobs = [{**e, "attributes": {"blob": "y" * 100_000}} for e in events(30, seed=6)]
    stats = producer(fake).send_kpl_aggregated(blobs, max_aggregate_bytes=MAX_AGGREGATE_BYTES, max_buffered_ms=60_000)
    sizes = [len(r["Data"]) + len(r["PartitionKey"].encode()) for r in fake.stored]
    assert stats.sent == 30 and len(sizes) == 3 and all(900_000 < s <= MAX_RECORD_BYTES for s in sizes[:-1])


def test_a_slow_source_is_flushed_within_max_buffered_ms() -> None:
    fake = ThrottlingKinesisFake(shards=2)
    taken: dict[str, float] = {}

    def slow() -> Iterator[dict]:
        for event in events(5, seed=6):
            taken[event["event_id"]] = time.monotonic()
            yield event
            time.sleep(0.4)  # as the CLI's live demo sleeps between ticks

    stats = producer(fake).send_kpl_aggregated(slow(), max_buffered_ms=50)
    assert stats.sent == 5
    # Each event went out on its own deadline, long before the next one came (the bound is 50 ms;
    # the slack is for a loaded 2-core machine).
    assert len(fake.calls) == 5
    for record in fake.stored:
        for _, event in users_of([record]):
            assert fake.call_times[record["call"] - 1] - taken[event["event_id"]] < 0.3


@pytest.mark.parametrize("error", [RuntimeError("source broke"), SystemExit("events.jsonl:4: not a JSON object")])
def test_source_errors_propagate_after_what_came_before_is_sent(error: BaseException) -> None:
    fake = ThrottlingKinesisFake(shards=2)
    before = events(3, seed=7)

    def failing() -> Iterator[dict]:
        yield from before
        raise error

    with pytest.raises(type(error)) as info:
        producer(fake).send_kpl_aggregated(failing(), max_buffered_ms=60_000)
    assert info.value is error
    assert sorted(e["event_id"] for _, e in users_of(fake.stored)) == sorted(e["event_id"] for e in before)


def test_keyboard_interrupt_flushes_and_stops_the_source() -> None:
    fake = ThrottlingKinesisFake(shards=2)
    yielded: list[str] = []
    closed = threading.Event()

    def endless() -> Iterator[dict]:
        try:
            for event in demo_mix(500, seed=8):  # ~10 s: ends the test even if the interrupt never came
                yielded.append(event["event_id"])
                yield event
                time.sleep(0.02)
        finally:
            closed.set()

    main = threading.main_thread().ident
    assert main is not None
    # Python's own handler even when the run inherited SIGINT ignored (a background job).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(0.3, signal.pthread_kill, (main, signal.SIGINT))  # a real Ctrl-C
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            producer(fake).send_kpl_aggregated(endless(), max_buffered_ms=50)
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
    assert closed.wait(2), "the source generator was not closed"
    deadline = time.monotonic() + 2
    while any(t.name == "producer-source" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(t.name == "producer-source" for t in threading.enumerate())
    stored = [e["event_id"] for _, e in users_of(fake.stored)]
    assert stored and stored == yielded[: len(stored)] and len(stored) >= len(yielded) - 5


def test_partial_failure_of_aggregates_resends_exactly_their_events() -> None:
    fake = ThrottlingKinesisFake(partial_failures=2, fail_every=2, shards=4)
    sent = events(3000, seed=3)
    stats = producer(fake).send_kpl_aggregated(sent, max_aggregate_bytes=4096, max_buffered_ms=60_000)
    assert len(fake.calls) == 3
    assert fake.calls[1] == fake.failed_entries[0] and fake.calls[2] == fake.failed_entries[1]
    assert sum(r["Data"][:4] == MAGIC for r in fake.failed_entries[0]) > 100  # whole aggregates
    ids = [e["event_id"] for _, e in users_of(fake.stored)]
    assert Counter(ids) == Counter(e["event_id"] for e in sent)  # no loss, no duplicate
    failed_users = users_of([r for failed in fake.failed_entries for r in failed])
    assert stats.retried == len(failed_users) > len(fake.failed_entries[0])  # events, not aggregates
    assert stats.sent == 3000 and stats.records == len(fake.stored) and stats.failed == 0


def test_give_up_on_aggregates_reports_their_events() -> None:
    fake = ThrottlingKinesisFake(partial_failures=100, fail_every=4, shards=2)
    sent = events(600, seed=9)
    with pytest.raises(ProducerError, match=r"still failing after 2 attempts") as info:
        producer(fake, max_attempts=2).send_kpl_aggregated(sent, max_aggregate_bytes=4096, max_buffered_ms=60_000)
    err = info.value
    lost = [e["event_id"] for _, e in users_of(fake.failed_entries[-1])]
    assert [e["event_id"] for e in err.failed_events] == lost
    assert err.stats.failed == len(lost) and err.stats.sent + len(lost) == 600


def test_reshard_mismatch_refreshes_the_map_and_repacks_what_is_buffered() -> None:
    fake = ThrottlingKinesisFake(shards=2)
    p = producer(fake)
    p.send_kpl_aggregated(events(200, seed=11), max_buffered_ms=60_000)
    assert fake.list_calls == 1
    stored_before, calls_before = len(fake.stored), len(fake.calls)

    fake.reshard(4)  # the producer's map is now stale
    sent = events(6000, seed=12)
    stats = p.send_kpl_aggregated(sent, max_aggregate_bytes=2048, max_buffered_ms=60_000)
    assert len(fake.calls) - calls_before > 2  # ~1000 small aggregates: several requests
    assert stats.shard_map_refreshes == 1 and fake.list_calls == 2
    shard_ranges = ranges(fake)
    wrong = [
        (record["call"], key)
        for record in fake.stored[stored_before:]
        for key, _ in users_of([record])
        if not on_its_shard(record, key, shard_ranges)
    ]
    # Only the first request after the reshard went out on the stale map; it is counted exactly.
    assert wrong and {call for call, _ in wrong} == {calls_before + 1}
    assert stats.misrouted == len(wrong)
    ids = [e["event_id"] for _, e in users_of(fake.stored[stored_before:])]
    assert Counter(ids) == Counter(e["event_id"] for e in sent)
    assert "shard_map_refreshes=1 misrouted=" in stats.summary()


def test_an_unexplained_mismatch_does_not_storm_list_shards(monkeypatch: pytest.MonkeyPatch) -> None:
    from etl_platform.stream import producer as producer_module

    monkeypatch.setattr(producer_module, "MAP_REFRESH_BACKOFF_S", 600.0)
    fake = ThrottlingKinesisFake(shards=2)
    real_put = fake.put_records

    def misreporting(StreamName: str, Records: list[dict]) -> dict:  # noqa: N803 - boto3 names
        response = real_put(StreamName, Records)
        return {**response, "Records": [{**r, "ShardId": "shardId-000000000000"} for r in response["Records"]]}

    fake.put_records = misreporting  # type: ignore[method-assign]
    stats = producer(fake).send_kpl_aggregated(events(6000, seed=13), max_aggregate_bytes=2048, max_buffered_ms=60_000)
    assert len(fake.calls) > 2 and fake.list_calls == 2 and stats.shard_map_refreshes == 1
    assert stats.sent == 6000


def test_aggregation_needs_a_kinesis_client() -> None:
    class NoListShards:
        def put_records(self, **kwargs: object) -> dict:
            raise AssertionError("not reached")

    with pytest.raises(TypeError, match="needs a Kinesis client"):
        KinesisProducer(NoListShards(), "events").send_kpl_aggregated(events(2))
