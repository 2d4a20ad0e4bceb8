"""Scenario 9 of the fault matrix (producer retries count once) and the dead-letter re-drive.

Unit tests of `SeenIds` first; then, against the local stack: a producer's retry delivers events twice,
and `etl-platform errors replay` re-drives dead letters exactly once, even when it dies between its
puts and its record of them.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from etl_platform.events import EVENT_SCHEMA, derive_event_id
from etl_platform.lake import layout
from etl_platform.stream import dead_letters, dedupe
from etl_platform.stream.consumer import ConsumerConfig, StreamConsumer
from etl_platform.stream.dedupe import SeenIds
from etl_platform.stream.producer import KinesisProducer
from etl_platform.stream.reader import ShardReader
from etl_platform.stream.sources import demo_mix
from tests.integration.pipeline_helpers import assert_same_results, cli, lake_rows, one_pass

T0 = datetime(2026, 10, 1, 12, 0, tzinfo=UTC)


def event(event_id: str, seq: int, seconds: float = 0.0, derived: bool = False) -> dict:
    shard = "shard-1"
    return {
        "event_id": derive_event_id(shard, str(seq), 0) if derived else event_id,
        "shard_id": shard,
        "sequence_number": str(seq),
        "sub_sequence": 0,
        "arrival_time": T0 + timedelta(seconds=seconds),
    }


def events(*rows: dict) -> pl.DataFrame:
    return pl.DataFrame(list(rows), schema={**{k: EVENT_SCHEMA[k] for k in rows[0]}})


def test_a_producer_id_delivered_again_within_the_horizon_is_dropped():
    seen = SeenIds(horizon_s=60)
    kept, dropped = seen.filter(events(event("a", 1), event("b", 2), event("a", 3, 5)))
    assert kept["event_id"].to_list() == ["a", "b"] and dropped == 1
    kept, dropped = seen.filter(events(event("b", 4, 30), event("a", 5, 100)))  # a: its first delivery is 100 s old
    assert kept["event_id"].to_list() == ["a"] and dropped == 1
    # Ids derived from the position are unique: never remembered, never dropped.
    kept, dropped = seen.filter(events(event("", 6, 101, derived=True), event("", 6, 101, derived=True)))
    assert kept.height == 2 and dropped == 0


def test_the_seen_ids_survive_a_commit_and_merge_into_children():
    seen = SeenIds(horizon_s=60)
    seen.filter(events(event("a", 1), event("b", 2, 1)))
    # The snapshot is the `<16sd` records checkpoints have always held.
    assert seen.snapshot() == dedupe._MAGIC + b"".join(dedupe._ENTRY.pack(*entry) for entry in seen._seen.items())
    restored = SeenIds.restore(seen.snapshot(), horizon_s=60)
    assert len(restored) == 2 and restored.filter(events(event("a", 3, 2)))[1] == 1
    other = SeenIds(horizon_s=60)
    other.filter(events(event("c", 1, 3)))
    child = SeenIds.merge([seen, other], horizon_s=60)
    assert child.filter(events(event("a", 9, 4), event("c", 10, 4), event("d", 11, 4)))[1] == 2


@pytest.mark.stack
def test_a_producer_retry_counts_once_in_every_layer(kinesis, s3, bucket, stream, leases):
    events = list(demo_mix(200, seed=51, start=T0, users=8, spike_rate=0.03))
    producer = KinesisProducer(kinesis, stream)
    producer.send(events)
    producer.send(events[50:80])  # the producer timed out and put these again
    results = StreamConsumer(kinesis, s3, bucket, stream, leases, ConsumerConfig(max_records=60)).drain()
    assert sum(r.duplicates for r in results) == 30
    processed = lake_rows(s3, bucket, layout.PROCESSED)
    assert processed.height == 200
    assert_same_results(processed, one_pass(kinesis, stream))
    assert lake_rows(s3, bucket, layout.RAW).height == 200


def dead_letter(s3, bucket: str, envelopes: list[dict], reason: str) -> str:
    """An errors/ object as an older version would have written it, refusing these envelopes."""
    arrival = datetime.now(UTC)
    rows = [
        {
            "shard_id": "shardId-000000000000",
            "sequence_number": str(10**20 + i),
            "sub_sequence": 0,
            "arrival_time": arrival,
            "partition_key": envelope["user_id"],
            "raw_base64": base64.b64encode(json.dumps(envelope).encode()).decode(),
            "reason": reason,
            "stream_name": "old",
        }
        for i, envelope in enumerate(envelopes)
    ]
    key = layout.object_key(layout.ERRORS, layout.HourPartition.of(arrival), "shardId-000000000000", "1", 0)
    layout.put(s3, bucket, key, layout.jsonl_gz(rows))
    return key


class DiesWritingItsRecord:
    """The real S3 client, except that writing the re-drive's record fails once (a test double for a
    crash between the puts and the record)."""

    def __init__(self, s3) -> None:
        self._s3, self.failed = s3, False

    def put_object(self, **kwargs):
        if kwargs["Key"].startswith(dead_letters.REDRIVEN) and not self.failed:
            self.failed = True
            raise ConnectionError("died before recording the re-drive")
        return self._s3.put_object(**kwargs)

    def __getattr__(self, name):
        return getattr(self._s3, name)


@pytest.mark.stack
def test_dead_letters_are_re_driven_exactly_once_even_after_a_crash(kinesis, s3, bucket, stream, leases):
    now = datetime.now(UTC)
    good = [
        {"source": "api", "user_id": f"u{i}", "event_type": "call", "event_time": now.isoformat(), "value": float(i)}
        for i in range(6)
    ]
    good[0]["event_id"] = "producer-id-0"
    still_bad = {**good[1], "event_type": "nul\x00"}
    dead_letter(s3, bucket, [*good, still_bad], "invalid event: field value: refused by an old bug")
    today = now.date()
    assert [r["records"] for r in dead_letters.summarize(s3, bucket, today, today)] == [7]

    # The first re-drive dies after its puts, before recording them; the second puts them again.
    with pytest.raises(ConnectionError):
        dead_letters.redrive(DiesWritingItsRecord(s3), bucket, kinesis, stream, today, today)
    again = dead_letters.redrive(s3, bucket, kinesis, stream, today, today)
    assert again.redriven == 6 and sum(again.still_invalid.values()) == 1
    assert "invalid event: field event_type" in again.still_invalid
    # A third re-drive finds nothing left to put back (the NUL record is still refused).
    third = dead_letters.redrive(s3, bucket, kinesis, stream, today, today)
    assert (third.redriven, third.redriven_before) == (0, 6)

    StreamConsumer(kinesis, s3, bucket, stream, leases, ConsumerConfig()).drain()
    processed = lake_rows(s3, bucket, layout.PROCESSED)
    expected_ids = {"producer-id-0"} | {
        derive_event_id("shardId-000000000000", str(10**20 + i), 0) for i in range(1, 6)
    }
    assert processed.height == 6 and set(processed["event_id"].to_list()) == expected_ids
    summary = {r["kind"]: r for r in dead_letters.summarize(s3, bucket, today, today)}
    assert summary["invalid event: field value"]["redriven"] == 6


@pytest.mark.stack
def test_the_errors_cli_lists_and_replays(kinesis, s3, bucket, stream, leases):
    now = datetime.now(UTC)
    envelope = {"source": "web", "user_id": "u", "event_type": "view", "event_time": now.isoformat(), "value": 1.0}
    dead_letter(s3, bucket, [envelope], "json: refused by an old bug")
    env = {"ETL_STREAM_NAME": stream, "ETL_LAKE_BUCKET": bucket}
    listed = json.loads(cli("errors", "list", "--json", env=env).stdout)
    assert [(r["kind"], r["records"], r["redriven"]) for r in listed] == [("json", 1, 0)]
    replayed = json.loads(cli("errors", "replay", "--json", env=env).stdout)
    assert replayed["redriven"] == 1 and replayed["still_invalid"] == {}
    bad = cli("errors", "list", "--from", "2026-13-01", env=env, check=False)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert json.loads(cli("errors", "replay", "--json", env=env).stdout)["redriven"] == 0  # once
    records = [
        r for shard in ("shardId-000000000000", "shardId-000000000001") for r in _all_records(kinesis, stream, shard)
    ]
    assert len(records) == 1 and json.loads(records[0]["Data"])["user_id"] == "u"


def _all_records(kinesis, stream: str, shard_id: str) -> list[dict]:
    """Every record of the shard (the reader pages past empty pages while the shard is behind)."""
    return ShardReader(kinesis, stream, shard_id, None).read(1000, 10 * 1024 * 1024, time_budget_s=5).records
