"""KinesisProducer: batching limits, partial-failure retries, throttling, give-up, KPL aggregation.

The local Kinesis emulator enforces no write limits and never throttles, so the failure paths are
driven by `ThrottlingKinesisFake`, a fault injector (not a Kinesis model) that answers PutRecords with
partial failures or whole-request throttling for its first attempts.
"""

from __future__ import annotations

import base64
import gzip
import json
import random
from collections import Counter
from datetime import UTC, datetime

import pytest
from aws_kinesis_agg import MAGIC
from aws_kinesis_agg.deaggregator import iter_deaggregate_records
from botocore.exceptions import ClientError

from etl_platform.stream.producer import (
    MAX_RECORD_BYTES,
    MAX_RECORDS_PER_REQUEST,
    MAX_REQUEST_BYTES,
    KinesisProducer,
    ProducerError,
    ProducerStats,
)
from etl_platform.stream.sources import demo_mix


class ThrottlingKinesisFake:
    """Fault injector standing in for a Kinesis client's `put_records`.

    - the first `throttle_requests` calls raise a whole-request ClientError (`throttle_code`);
    - the next `partial_failures` calls fail every `fail_every`-th entry (index 0, k, 2k, ...),
      alternating ProvisionedThroughputExceededException and InternalFailure;
    - every call is recorded, and accepted entries are appended to `stored` with a sequence number.
    """

    def __init__(
        self,
        partial_failures: int = 0,
        fail_every: int = 3,
        throttle_requests: int = 0,
        throttle_code: str = "ProvisionedThroughputExceededException",
    ) -> None:
        self.partial_failures = partial_failures
        self.fail_every = fail_every
        self.throttle_requests = throttle_requests
        self.throttle_code = throttle_code
        self.calls: list[list[dict]] = []
        self.stored: list[dict] = []
        self.failed_entries: list[list[dict]] = []

    def put_records(self, StreamName: str, Records: list[dict]) -> dict:  # noqa: N803 - boto3 names
        assert StreamName == "events"
        self.calls.append(list(Records))
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
                self.stored.append({**record, "SequenceNumber": seq})
                results.append({"SequenceNumber": seq, "ShardId": "shardId-000000000000"})
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


# -- KPL aggregation ---------------------------------------------------------------------------------


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


def deaggregated(fake: ThrottlingKinesisFake) -> list[dict]:
    """What a KPL-aware consumer sees: the library's own deaggregator over the stored records."""
    users = library_deaggregate(fake.stored)
    return [
        {"pk": u["kinesis"]["partitionKey"], "event": json.loads(base64.b64decode(u["kinesis"]["data"]))} for u in users
    ]


def test_kpl_aggregates_keep_one_key_each_and_key_order() -> None:
    fake = ThrottlingKinesisFake()
    sent = list(demo_mix(600, seed=2, users=5))
    stats = producer(fake).send_kpl_aggregated(sent, max_aggregate_bytes=8192)
    assert stats.sent == 600 and stats.records == len(fake.stored) < 600
    assert all(r["Data"][:4] == MAGIC for r in fake.stored)
    users = deaggregated(fake)
    assert Counter(u["event"]["event_id"] for u in users) == Counter(e["event_id"] for e in sent)
    for u in users:
        assert u["pk"] == u["event"]["user_id"]
    per_key_sent = [e["event_id"] for e in sent if e["user_id"] == "user-0003"]
    per_key_seen = [u["event"]["event_id"] for u in users if u["pk"] == "user-0003"]
    assert per_key_seen == per_key_sent
    assert all(len(r["Data"]) <= 8192 for r in fake.stored)


def test_kpl_partial_failure_retries_whole_aggregate_without_duplicates() -> None:
    fake = ThrottlingKinesisFake(partial_failures=2, fail_every=2)
    sent = list(demo_mix(300, seed=3, users=8))
    stats = producer(fake).send_kpl_aggregated(sent, max_aggregate_bytes=4096)
    ids = [u["event"]["event_id"] for u in deaggregated(fake)]
    assert sorted(ids) == sorted(e["event_id"] for e in sent)
    failed_users = library_deaggregate([r for failed in fake.failed_entries for r in failed])
    assert stats.retried == len(failed_users) > 0  # counted in events, not aggregates
