"""decode_records: plain / gzip / KPL records to events; every bad record or sub-record to a precise error row."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from aws_kinesis_agg import DIGEST_SIZE, MAGIC
from aws_kinesis_agg.aggregator import RecordAggregator
from aws_kinesis_agg.deaggregator import iter_deaggregate_records
from hypothesis import given, settings
from hypothesis import strategies as st

from etl_platform.events import EVENT_FIELDS, EVENT_SCHEMA, derive_event_id, events_to_frame
from etl_platform.stream import decoding
from etl_platform.stream.decoding import decode_records

SHARD = "shardId-000000000003"
ARRIVAL = datetime(2024, 5, 1, 8, 0, 0, 250000, tzinfo=UTC)
ERROR_FIELDS = {"shard_id", "sequence_number", "sub_sequence", "arrival_time", "partition_key", "raw_base64", "reason"}


def env(**overrides: object) -> dict:
    base = {
        "event_id": "ev-1",
        "source": "api",
        "user_id": "user-0001",
        "event_type": "api_call",
        "event_time": "2024-05-01T07:59:59.500000Z",
        "value": 120.5,
        "attributes": {"endpoint": "/v1/charges", "status_code": 200},
    }
    base.update(overrides)
    return base


def as_json(obj: object) -> bytes:
    return json.dumps(obj).encode()


def record(data: bytes, seq: int, key: str = "user-0001", arrival: object = ARRIVAL) -> dict:
    """A GetRecords record as boto3 returns it."""
    return {
        "Data": data,
        "SequenceNumber": str(49_000_000_000_000_000_000_000 + seq),
        "PartitionKey": key,
        "ApproximateArrivalTimestamp": arrival,
    }


def seq(n: int) -> str:
    return str(49_000_000_000_000_000_000_000 + n)


def aggregate(items: list[tuple[str, bytes]]) -> bytes:
    agg = RecordAggregator()
    for key, data in items:
        assert agg.add_user_record(key, data) is None
    return agg.clear_and_get().get_contents()[2]


def without(obj: dict, key: str) -> dict:
    return {k: v for k, v in obj.items() if k != key}


# -- formats -----------------------------------------------------------------------------------------


def test_plain_json_record_becomes_one_event() -> None:
    result = decode_records(SHARD, [record(as_json(env()), 1)])
    assert result.errors == []
    assert result.events == [
        {
            "event_id": "ev-1",
            "source": "api",
            "user_id": "user-0001",
            "event_type": "api_call",
            "event_time": datetime(2024, 5, 1, 7, 59, 59, 500000, tzinfo=UTC),
            "value": 120.5,
            "attributes": '{"endpoint":"/v1/charges","status_code":200}',
            "shard_id": SHARD,
            "sequence_number": seq(1),
            "sub_sequence": 0,
            "arrival_time": ARRIVAL,
            "partition_key": "user-0001",
        }
    ]
    assert tuple(result.events[0]) == EVENT_FIELDS
    assert events_to_frame(result.events).schema == dict(EVENT_SCHEMA)


def test_missing_event_id_is_derived_from_position() -> None:
    result = decode_records(SHARD, [record(as_json(without(env(), "event_id")), 7)])
    assert result.events[0]["event_id"] == derive_event_id(SHARD, seq(7), 0)
    again = decode_records(SHARD, [record(as_json(without(env(), "event_id")), 7)])
    assert again.events == result.events


def test_gzip_record_decodes_like_plain() -> None:
    plain = decode_records(SHARD, [record(as_json(env()), 1)])
    zipped = decode_records(SHARD, [record(gzip.compress(as_json(env())), 1)])
    assert zipped == plain
    two_members = gzip.compress(b'{"source":"api",') + gzip.compress(as_json(env())[1:])
    assert decode_records(SHARD, [record(two_members, 1)]).events == plain.events


def test_kpl_aggregate_yields_sub_records_with_sub_sequence() -> None:
    subs = [
        ("user-0001", as_json(env(event_id="a"))),
        ("user-0002", gzip.compress(as_json(env(event_id="b", user_id="user-0002")))),
        ("user-0001", as_json(without(env(value=3), "event_id"))),
        ("user-0003", as_json(env(event_id="d", user_id="user-0003"))),
    ]
    data = aggregate(subs)
    assert data[:4] == MAGIC
    result = decode_records(SHARD, [record(data, 5, key="user-0001")])
    assert result.errors == []
    assert [(e["event_id"], e["sub_sequence"], e["partition_key"]) for e in result.events] == [
        ("a", 0, "user-0001"),
        ("b", 1, "user-0002"),
        (derive_event_id(SHARD, seq(5), 2), 2, "user-0001"),
        ("d", 3, "user-0003"),
    ]
    assert {e["sequence_number"] for e in result.events} == {seq(5)}
    # Same split, keys and order as the library's own deaggregator.
    lib = list(iter_deaggregate_records([record(data, 5)], data_format="Boto3"))
    assert [
        (u["kinesis"]["subSequenceNumber"], u["kinesis"]["partitionKey"], base64.b64decode(u["kinesis"]["data"]))
        for u in lib
    ] == [(i, k, d) for i, (k, d) in enumerate(subs)]


# -- poison records ----------------------------------------------------------------------------------


def test_poison_records_in_the_middle_become_errors_and_lose_nothing() -> None:
    good_first = as_json(env(event_id="first"))
    good_last = gzip.compress(as_json(env(event_id="last")))
    poison = [
        b"\x00\xffnot json at all",
        gzip.compress(as_json(env()))[:-12],
        as_json(without(env(), "user_id")),
        json.dumps(env(value=float("nan"))).encode(),
        as_json(env(source="mainframe")),
        b"[1, 2]",
        b'{"source": "api", ',
    ]
    records = [record(good_first, 0)] + [record(p, i + 1) for i, p in enumerate(poison)]
    records.append(record(good_last, len(records)))
    result = decode_records(SHARD, records)

    assert [e["event_id"] for e in result.events] == ["first", "last"]
    assert [e["sequence_number"] for e in result.events] == [seq(0), seq(8)]
    reasons = [e["reason"] for e in result.errors]
    assert reasons == [
        "json: payload is not UTF-8 (invalid start byte at byte 1)",
        "gzip: truncated stream (compressed data ended before the end-of-stream marker)",
        "invalid event: field user_id: missing",
        "invalid event: field value: must be finite, got nan",
        "invalid event: field source: 'mainframe' is not one of api, app_log, cdc, iot, web",
        "json: expected an object, got list",
        "json: Expecting property name enclosed in double quotes: line 1 column 19 (char 18)",
    ]
    for i, (error, raw) in enumerate(zip(result.errors, poison, strict=True), start=1):
        assert set(error) == ERROR_FIELDS
        assert base64.b64decode(error["raw_base64"]) == raw
        assert (error["shard_id"], error["sequence_number"], error["sub_sequence"]) == (SHARD, seq(i), 0)
        assert (error["arrival_time"], error["partition_key"]) == (ARRIVAL, "user-0001")


def test_bad_sub_record_inside_a_good_aggregate() -> None:
    data = aggregate(
        [
            ("user-0001", as_json(env(event_id="a"))),
            ("user-0009", json.dumps(env(event_id="b", value=float("inf"))).encode()),
            ("user-0001", b"garbage\xff"),
            ("user-0001", as_json(env(event_id="d"))),
        ]
    )
    result = decode_records(SHARD, [record(data, 4)])
    assert [(e["event_id"], e["sub_sequence"]) for e in result.events] == [("a", 0), ("d", 3)]
    assert [(e["sub_sequence"], e["partition_key"], e["reason"]) for e in result.errors] == [
        (1, "user-0009", "invalid event: field value: must be finite, got inf"),
        (2, "user-0001", "json: payload is not UTF-8 (invalid start byte at byte 7)"),
    ]
    assert base64.b64decode(result.errors[1]["raw_base64"]) == b"garbage\xff"


def _with_digest(message: bytes) -> bytes:
    return MAGIC + message + hashlib.md5(message).digest()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (MAGIC + b"\x01" * DIGEST_SIZE, "kpl: aggregate of 20 bytes is too short for magic + message + MD5 digest"),
        (None, "kpl: MD5 digest mismatch (aggregate corrupt or truncated)"),
        (_with_digest(b"\xff\xff\xff"), "kpl: protobuf decode failed: "),
        (_with_digest(b""), "kpl: aggregate of 20 bytes is too short"),
    ],
)
def test_corrupt_aggregates_are_kpl_errors(data: bytes | None, reason: str) -> None:
    if data is None:  # one flipped byte inside a valid aggregate
        good = bytearray(aggregate([("k", as_json(env()))]))
        good[10] ^= 0xFF
        data = bytes(good)
    result = decode_records(SHARD, [record(as_json(env(event_id="x")), 1), record(data, 2)])
    assert [e["event_id"] for e in result.events] == ["x"]
    assert len(result.errors) == 1 and result.errors[0]["reason"].startswith(reason)
    assert base64.b64decode(result.errors[0]["raw_base64"]) == data


def test_sub_record_with_bad_partition_key_index_does_not_drop_the_rest() -> None:
    from aws_kinesis_agg import messages_pb2

    agg = messages_pb2.AggregatedRecord()
    agg.partition_key_table.append("user-0001")
    for i, index in enumerate([0, 5, 0]):
        sub = agg.records.add()
        sub.partition_key_index = index
        sub.data = as_json(env(event_id=f"s{i}"))
    result = decode_records(SHARD, [record(_with_digest(agg.SerializeToString()), 1)])
    assert [e["event_id"] for e in result.events] == ["s0", "s2"]
    assert [(e["sub_sequence"], e["reason"]) for e in result.errors] == [
        (1, "kpl: sub-record 1 partition_key_index 5 out of range (1 keys in table)")
    ]


def test_gzip_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    trailing = gzip.compress(as_json(env())) + b"junk"
    monkeypatch.setattr(decoding, "MAX_DECOMPRESSED_BYTES", 1000)
    bomb = gzip.compress(as_json(env(attributes={"pad": " " * 5000})))
    corrupt = bytearray(gzip.compress(as_json(env())))
    corrupt[12] ^= 0xFF
    result = decode_records(SHARD, [record(trailing, 1), record(bomb, 2), record(bytes(corrupt), 3)])
    assert result.events == []
    assert [e["reason"] for e in result.errors][:2] == [
        "gzip: 4 trailing bytes after the gzip stream",
        "gzip: decompressed size exceeds 1000 bytes",
    ]
    assert result.errors[2]["reason"].startswith("gzip: ")


def test_broken_stream_metadata_is_an_error_not_an_exception() -> None:
    bad = [
        {**record(as_json(env()), 1), "Data": "eyJ9"},
        without(record(as_json(env()), 2), "SequenceNumber"),
        {**record(as_json(env()), 3), "ApproximateArrivalTimestamp": "yesterday"},
        {**record(as_json(env()), 4), "PartitionKey": None},
    ]
    result = decode_records(SHARD, bad)
    assert result.events == []
    assert [e["reason"] for e in result.errors] == [
        "record: Data must be bytes, got str",
        "record: SequenceNumber must be decimal digits, got None",
        "record: ApproximateArrivalTimestamp must be a datetime or epoch seconds, got 'yesterday'",
        "record: PartitionKey must be a string, got NoneType",
    ]


def test_arrival_time_is_normalised_to_utc() -> None:
    east = timezone(timedelta(hours=2))
    records = [
        record(as_json(env()), 1, arrival=ARRIVAL.astimezone(east)),
        record(as_json(env()), 2, arrival=ARRIVAL.replace(tzinfo=None)),
        record(as_json(env()), 3, arrival=ARRIVAL.timestamp()),
    ]
    times = [e["arrival_time"] for e in decode_records(SHARD, records).events]
    assert times == [ARRIVAL] * 3 and all(t.utcoffset() == timedelta(0) for t in times)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.binary(max_size=64)
        | st.sampled_from([MAGIC, b"\x1f\x8b", b"{}"]).flatmap(
            lambda head: st.binary(max_size=40).map(lambda tail: head + tail)
        ),
        max_size=8,
    )
)
def test_arbitrary_bytes_never_raise_and_are_all_accounted_for(payloads: list[bytes]) -> None:
    result = decode_records(SHARD, [record(p, i) for i, p in enumerate(payloads)])
    # Non-aggregates give exactly one row each; a random aggregate cannot pass the MD5 check.
    assert len(result.events) + len(result.errors) == len(payloads)
    assert all(not e["reason"].startswith("internal:") for e in result.errors)
