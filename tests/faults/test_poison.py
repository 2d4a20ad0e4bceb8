"""Scenario 2 of the fault matrix: a poison batch must never wedge its shard.

What a sink would reject is refused at decode time with a reason naming the field; an event that
still cannot become a row is isolated by bisection and dead-lettered; a batch of small records that
inflate enormously is decoded and delivered a chunk at a time. Unit tests first (no servers), then
the issue's reproduction against the local stack.
"""

from __future__ import annotations

import base64
import gzip
import json
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from etl_platform.events import MAX_ATTRIBUTES_BYTES, InvalidEvent, events_to_frame
from etl_platform.lake import layout
from etl_platform.pipelines.contract import validate_envelope
from etl_platform.stream.consumer import ConsumerConfig, StreamConsumer, WorkBudget
from etl_platform.stream.decoding import decode_chunks, decode_records, isolate_unconvertible
from tests.integration.pipeline_helpers import lake_rows

START = datetime(2026, 7, 1, 12, 0, tzinfo=UTC)


def envelope(**overrides: object) -> dict:
    base = {"source": "api", "user_id": "u1", "event_type": "click", "event_time": START.isoformat(), "value": 1.0}
    return {**base, **overrides}


def record(payload: bytes, seq: int, key: str = "u1") -> dict:
    return {"Data": payload, "SequenceNumber": f"{seq:056d}", "PartitionKey": key, "ApproximateArrivalTimestamp": START}


@pytest.mark.parametrize(
    ("overrides", "field", "why"),
    [
        ({"user_id": "\ud800"}, "user_id", "lone surrogate"),
        ({"event_type": "cl\udfffick"}, "event_type", "lone surrogate"),
        ({"event_id": "id-\ud83d"}, "event_id", "lone surrogate"),
        ({"user_id": "u\x00"}, "user_id", "NUL"),
        ({"event_type": "\x00click"}, "event_type", "NUL"),
        ({"event_id": "a\x00b"}, "event_id", "NUL"),
        ({"attributes": {"k": "\udc00"}}, "attributes", "lone surrogate"),
        ({"attributes": {"\ud800": 1}}, "attributes", "lone surrogate"),
        ({"attributes": {"pad": "x" * MAX_ATTRIBUTES_BYTES}}, "attributes", "byte limit"),
    ],
)
def test_what_a_sink_would_reject_is_refused_naming_the_field(overrides, field, why):
    with pytest.raises(InvalidEvent) as caught:
        validate_envelope(envelope(**overrides))
    assert caught.value.field == field and why in caught.value.reason


def test_nul_inside_attributes_is_kept_escaped():
    """JSON escapes it (\\u0000): a text column stores the six characters, so nothing to refuse."""
    assert "\\u0000" in validate_envelope(envelope(attributes={"note": "a\x00b"}))["attributes"]


def test_the_reproduced_poison_record_becomes_an_error_row():
    """The issue's reproduction: `"\\ud800"` in a record's JSON made the consumer fail every time."""
    payload = b'{"source":"api","user_id":"\\ud800","event_type":"click","event_time":"2026-07-01T12:00:00Z","value":1}'
    result = decode_records("shard-1", [record(payload, 1), record(json.dumps(envelope()).encode(), 2)])
    assert len(result.events) == 1 and len(result.errors) == 1
    assert result.errors[0]["reason"].startswith("invalid event: field user_id: is not valid Unicode")
    assert result.errors[0]["sequence_number"] == f"{1:056d}"


def test_a_partition_key_with_nul_is_refused():
    result = decode_records("shard-1", [record(json.dumps(envelope()).encode(), 1, key="u\x00")])
    assert [e["reason"] for e in result.errors] == ["record: field PartitionKey: contains NUL (U+0000) at character 1"]


def test_an_event_that_still_cannot_become_a_row_is_isolated_not_retried_forever():
    good = decode_records("shard-1", [record(json.dumps(envelope(value=float(i))).encode(), i) for i in range(1, 8)])
    events = good.events
    # An event no validation foresaw (here: a value polars refuses for a Float64 column), in the middle.
    events[3] = {**events[3], "value": "not a number"}
    errors: list[dict] = []
    frame = isolate_unconvertible(events, errors)
    assert frame.height == 6 and frame["value"].to_list() == [1.0, 2.0, 3.0, 5.0, 6.0, 7.0]
    assert len(errors) == 1 and errors[0]["sequence_number"] == f"{4:056d}"
    assert errors[0]["reason"].startswith("internal: event cannot become a row")
    assert json.loads(base64.b64decode(errors[0]["raw_base64"]))["value"] == "not a number"


def test_records_that_inflate_are_decoded_a_chunk_at_a_time():
    padded = (json.dumps(envelope()) + " " * (3 * 1024 * 1024)).encode()  # valid JSON, 3 MiB of blanks
    bomb = gzip.compress(padded)
    records = [record(bomb, i) for i in range(1, 11)]
    chunks = list(decode_chunks("shard-1", records, max_decoded_bytes=8 * 1024 * 1024))
    assert sum(len(c.records) for c in chunks) == 10 and sum(len(c.result.events) for c in chunks) == 10
    assert all(c.result.decoded_bytes < 8 * 1024 * 1024 + len(padded) for c in chunks)
    assert len(chunks) == 4  # 3 + 3 + 3 + 1 records


# Any code point, with lone surrogates and NUL (which hypothesis leaves out or rarely draws) mixed in.
TEXT = st.text(alphabet=st.characters() | st.sampled_from(["\ud800", "\udfff", "\x00"]), max_size=12)


@settings(max_examples=150, deadline=None)
@given(
    user_id=TEXT,
    event_type=TEXT,
    event_id=st.none() | TEXT,
    attributes=st.dictionaries(TEXT, TEXT | st.integers() | st.floats(allow_nan=False), max_size=3),
    value=st.floats(allow_nan=False, allow_infinity=False),
)
def test_any_envelope_that_decodes_reaches_every_sink_format(user_id, event_type, event_id, attributes, value):
    """Fuzzing envelopes, not bytes: whatever passes validation converts to a row, serializes to the
    lake's JSON lines and Parquet, and encodes as UTF-8 for search and the warehouse."""
    env = envelope(user_id=user_id, event_type=event_type, event_id=event_id, attributes=attributes, value=value)
    payload = json.dumps(env, ensure_ascii=True).encode()  # \\u escapes carry even lone surrogates
    result = decode_records("shard-1", [record(payload, 1)])
    assert len(result.events) + len(result.errors) == 1
    if result.events:
        frame = events_to_frame(result.events)
        lines = frame.write_ndjson()
        lines.encode("utf-8")
        assert "\x00" not in frame["user_id"][0] + frame["event_type"][0] + frame["event_id"][0]
        layout.parquet_bytes(frame)
    else:
        assert not result.errors[0]["reason"].startswith("internal:")


# --- against the local stack -----------------------------------------------------------------------


@pytest.mark.stack
def test_a_poison_batch_does_not_wedge_the_shard(kinesis, s3, bucket, stream, leases):
    """The issue's reproductions on one shard, between good events: the consumer finishes, the good
    events are delivered once, each bad record is in errors/ with its reason and position."""
    good = [json.dumps(envelope(event_id=f"good-{i}", value=float(i))).encode() for i in range(30)]
    poison = [
        b'{"source":"api","user_id":"\\ud800","event_type":"click","event_time":"2026-07-01T12:00:00Z","value":1}',
        json.dumps(envelope(event_type="cli\x00ck")).encode(),
        json.dumps(envelope(event_id="nul\x00id")).encode(),
        json.dumps(envelope(attributes={"pad": "x" * (MAX_ATTRIBUTES_BYTES + 1)})).encode(),
    ]
    blanks = " " * (2 * 1024 * 1024)
    bombs = [gzip.compress((json.dumps(envelope(event_id=f"inflated-{i}")) + blanks).encode()) for i in range(12)]
    payloads = good[:10] + poison[:2] + good[10:20] + bombs + poison[2:] + good[20:]
    for i in range(0, len(payloads), 100):
        kinesis.put_records(
            StreamName=stream, Records=[{"Data": p, "PartitionKey": "same-shard"} for p in payloads[i : i + 100]]
        )
    config = ConsumerConfig(max_records=1000, max_decoded_bytes=8 * 1024 * 1024)
    batches = []
    consumer = StreamConsumer(kinesis, s3, bucket, stream, leases, config)
    for shard in consumer.readable():
        outcome = consumer.work(shard.shard_id, WorkBudget(until_caught_up=True), on_batch=batches.append)
        assert not outcome.lease_lost
    # Bounded batches: 12 x 2 MiB of inflated payloads were never held at once.
    assert max(b.decoded_bytes for b in batches) < 8 * 1024 * 1024 + 2 * 1024 * 1024 + 4096
    raw = lake_rows(s3, bucket, layout.RAW)
    assert sorted(raw["event_id"].to_list()) == sorted(
        [f"good-{i}" for i in range(30)] + [f"inflated-{i}" for i in range(12)]
    )
    errors = [
        row
        for key in layout.list_keys(s3, bucket, "errors/")
        for row in layout.read_jsonl_gz(layout.get(s3, bucket, key))
    ]
    reasons = sorted(e["reason"] for e in errors)
    assert len(errors) == 4, reasons
    assert any("field user_id: is not valid Unicode" in r for r in reasons)
    assert any("field event_type: contains NUL" in r for r in reasons)
    assert any("field event_id: contains NUL" in r for r in reasons)
    assert any("field attributes:" in r and "byte limit" in r for r in reasons)
    assert all(e["sequence_number"] and e["shard_id"] for e in errors)
    assert all(lease.checkpoint for lease in leases.all().values() if lease.records)  # moved on
