"""The columnar decode path equals the per-record reference on every payload, good or bad.

`decode_records` parses a batch with orjson and checks it column-wise (`pipelines.columnar`), sending
only the rows it cannot clear through `Contract.to_event`. The reference here is that per-record path
alone (`decoding._parse`, json.loads + `to_event`) applied to every record: for each generated record
both must give the same event (every column equal) or the same error reason, in the same order.
The payloads are generated around each contract's fields: valid values, near misses (wrong types,
bounds, lengths, enum misses, timestamps of every shape, NaN, huge and tiny numbers, control
characters, non-ASCII, lone surrogates), unknown fields and attribute collisions, and garbage bytes.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from etl_platform.events import EARLIEST_EVENT_TIME, InvalidEvent, derive_event_id
from etl_platform.pipelines.contract import ARRIVAL, DEFAULT_CONTRACT, Contract, FieldSpec, canonical_json
from etl_platform.stream import decoding
from etl_platform.stream.decoding import decode_records
from etl_platform.stream.reader import record_size

SHARD = "shardId-000000000001"
ARRIVED = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)

SEED_LIKE = Contract(
    fields=(
        FieldSpec("user_id", "string", required=True, max_length=64),
        FieldSpec("event_type", "string", required=True, max_length=32),
        FieldSpec("timestamp", "timestamp", required=True, naive_timestamps="utc"),
        FieldSpec("value", "float", required=True),
    ),
    keys=("user_id", "event_type"),
    value="value",
    time="timestamp",
)
TYPED = Contract(
    fields=(
        FieldSpec("device", "string", required=True, max_length=8),
        FieldSpec("reading", "float", required=True, minimum=-50.0, maximum=150.0),
        FieldSpec("count", "int", minimum=0, maximum=10_000),
        FieldSpec("ok", "bool"),
        FieldSpec("extra", "json"),
        FieldSpec("level", "string", values=("high", "low")),
    ),
    keys=("device",),
    value="reading",
    time=ARRIVAL,
    unknown_fields="reject",
)
CONTRACTS = {"default": DEFAULT_CONTRACT, "seed": SEED_LIKE, "typed": TYPED}

ABSENT = object()
WILD_TEXT = st.text(
    alphabet=st.one_of(st.characters(codec="utf-8"), st.sampled_from(["\x00", "\ud800", "\x1c", " ", "\t", "é", "😀"])),
    max_size=12,
)
FLOATS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1e-5, 1.5e-7, 1e-4, 1e16, 1e22, 2.0**53, 5e-324, 100.0]),
)
INTS = st.one_of(st.integers(-(2**70), 2**70), st.sampled_from([0, -1, 2**53, 2**53 + 1, 2**63 - 1, 2**63, 2**64]))
SCALARS = st.one_of(st.none(), st.booleans(), INTS, FLOATS, WILD_TEXT)
JSON_VALUES = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(WILD_TEXT, inner, max_size=3), max_leaves=8
)
ISO_TIMES = st.builds(
    lambda moment, sep, frac, zone: moment.strftime(f"%Y-%m-%d{sep}%H:%M:%S") + frac + zone,
    st.datetimes(min_value=datetime(1999, 1, 1), max_value=datetime(2026, 5, 2)),
    st.sampled_from(["T", "T", " ", "t"]),
    st.sampled_from(["", ".1", ".25", ".123", ".123456", ".1234567", "."]),
    st.sampled_from(["Z", "+00:00", "-05:30", "+23:59", "+24:00", "", "z", "+0100", "+01:00:30"]),
)
ODD_TIMES = st.sampled_from(
    [
        "2024-02-30T00:00:00Z",
        "2024-02-29T23:59:60Z",
        "2024-13-01T00:00:00Z",
        "0000-01-01T00:00:00Z",
        " 2024-01-01T00:00:00Z",
        "2024-01-01T24:00:00Z",
        "2024-01-01",
        "20240101T000000Z",
        "2026-05-01T13:00:00+00:00",
        "2026-05-01T13:00:01+00:00",
        "not a time",
    ]
)
TIMES = st.one_of(
    ISO_TIMES,
    ODD_TIMES,
    st.integers(1_500_000_000_000, 1_800_000_000_000),
    st.integers(-(2**63), 2**63),
    FLOATS,
    st.booleans(),
)


GOOD_TIMES = st.builds(
    lambda moment, frac, zone: moment.strftime("%Y-%m-%dT%H:%M:%S") + frac + zone,
    st.datetimes(min_value=datetime(2020, 1, 1, 6), max_value=datetime(2026, 5, 1, 12)),
    st.sampled_from(["", ".1", ".123", ".123456"]),
    st.sampled_from(["Z", "+00:00", "-05:30", "+05:00"]),
)


def good_value(spec: FieldSpec) -> st.SearchStrategy[Any]:
    low = -100 if spec.minimum is None else spec.minimum
    high = 200 if spec.maximum is None else spec.maximum
    return {
        "string": st.sampled_from(spec.values) if spec.values else st.text("abcXYZ-_ 09", min_size=1, max_size=10),
        "float": st.one_of(st.floats(low, high), st.integers(int(low), int(high))),
        "int": st.integers(int(low), int(high)),
        "bool": st.booleans(),
        "timestamp": st.one_of(GOOD_TIMES, st.integers(1_577_858_400_000, 1_777_636_800_000)),
        "json": JSON_VALUES,
        "object": st.dictionaries(st.sampled_from(["a", "b", "c", "host"]), JSON_VALUES, max_size=4),
    }[spec.type]


def wild_value(spec: FieldSpec) -> st.SearchStrategy[Any]:
    return st.one_of(TIMES if spec.type == "timestamp" else JSON_VALUES, st.just(ABSENT))


@st.composite
def payloads(draw: st.DrawFn, contract: Contract) -> bytes:
    """Mostly valid payloads with up to two fields mutated; now and then garbage bytes."""
    if draw(st.integers(0, 19)) == 0:
        return draw(st.one_of(st.binary(max_size=20), st.sampled_from([b"[]", b"1", b'"x"', b"{", b"{}", b"NaN"])))
    names = [spec.name for spec in contract.fields]
    mutated = draw(st.sets(st.sampled_from(names), max_size=2)) if draw(st.booleans()) else set()
    obj: dict[str, Any] = {}
    for spec in contract.fields:
        value = draw(wild_value(spec) if spec.name in mutated else good_value(spec))
        if value is not ABSENT and (spec.required or spec.name in mutated or draw(st.booleans())):
            obj[spec.name] = value
    if draw(st.integers(0, 3)) == 0:
        for name in draw(st.lists(st.sampled_from(["host", "a", "zone", "partition_key"]), max_size=2)):
            obj[name] = draw(JSON_VALUES)
    return json.dumps(obj).encode("utf-8", "surrogatepass")


def records(payload_list: list[bytes]) -> list[dict[str, Any]]:
    return [
        {
            "Data": payload,
            "SequenceNumber": str(49_000_000_000 + i),
            "PartitionKey": f"key-{i % 3}",
            "ApproximateArrivalTimestamp": ARRIVED + timedelta(milliseconds=i),
        }
        for i, payload in enumerate(payload_list)
    ]


def reference(contract: Contract, recs: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    """Per record: ("event", its columns) or ("error", reason), by the per-record path alone."""
    out: list[tuple[str, Any]] = []
    for rec in recs:
        data = rec["Data"]
        try:
            data = decoding._gunzip(data) if data[:2] == decoding.GZIP_MAGIC else data
            event = decoding._parse(data, contract, rec["ApproximateArrivalTimestamp"])
        except decoding._Bad as exc:
            out.append(("error", str(exc)))
            continue
        event["event_id"] = event["event_id"] or derive_event_id(SHARD, rec["SequenceNumber"], 0)
        out.append(("event", event))
    return out


def check_equivalent(contract: Contract, payload_list: list[bytes]) -> None:
    recs = records(payload_list)
    result = decode_records(SHARD, recs, contract)
    assert result.frame.schema == pl.Schema(contract.event_schema())
    assert result.record_bytes == sum(record_size(r) for r in recs)
    events = {e["sequence_number"]: e for e in result.events}
    errors = {e["sequence_number"]: e["reason"] for e in result.errors}
    assert len(events) + len(errors) == len(recs)
    assert list(events) == sorted(events, key=int) and list(errors) == sorted(errors, key=int)
    for rec, (kind, expected) in zip(recs, reference(contract, recs), strict=True):
        seq = rec["SequenceNumber"]
        if kind == "error":
            assert errors.get(seq) == expected, (rec["Data"], expected)
            continue
        assert seq in events, (rec["Data"], errors.get(seq))
        got = events[seq]
        for name, value in expected.items():
            assert got[name] == value, (name, rec["Data"], got[name], value)
            if isinstance(value, float):
                assert repr(got[name]) == repr(value)  # -0.0 stays -0.0


PROFILE = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROFILE
@given(st.data())
def test_default_contract_batches_decode_as_record_by_record(data: st.DataObject) -> None:
    check_equivalent(DEFAULT_CONTRACT, data.draw(st.lists(payloads(DEFAULT_CONTRACT), min_size=1, max_size=12)))


@PROFILE
@given(st.data())
def test_a_naive_utc_contract_with_unknown_fields_decodes_as_record_by_record(data: st.DataObject) -> None:
    check_equivalent(SEED_LIKE, data.draw(st.lists(payloads(SEED_LIKE), min_size=1, max_size=12)))


@PROFILE
@given(st.data())
def test_typed_bounded_rejecting_contract_decodes_as_record_by_record(data: st.DataObject) -> None:
    check_equivalent(TYPED, data.draw(st.lists(payloads(TYPED), min_size=1, max_size=12)))


def test_common_records_take_the_columnar_path() -> None:
    """The generated checks above would pass if every row were flagged; this one would not: valid
    default envelopes must clear the column checks (no row goes to `to_event`)."""
    shard = decoding._Shard(SHARD, DEFAULT_CONTRACT)
    for rec in records(
        [
            json.dumps(
                {
                    "event_id": f"id-{i}",
                    "source": "api",
                    "user_id": f"user-{i}",
                    "event_type": "api_call",
                    "event_time": f"2026-05-01T11:5{i}:00.{i}Z",
                    "value": 1.5 * i,
                    "attributes": {"status": 200, "latency_ms": 12.5, "path": "/v1/é"},
                }
            ).encode()
            for i in range(10)
        ]
    ):
        shard.record(rec)
    checked = shard.columns.columns(pl.Series(shard.arrivals, dtype=pl.Datetime("us", "UTC")))
    assert not checked.flagged.any()
    assert shard.finish().frame.height == 10


def reference_canonical(value: Any) -> str | None:
    try:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        text.encode("utf-8")
    except (ValueError, RecursionError):  # UnicodeEncodeError is a ValueError
        return None
    return text


@settings(max_examples=500, deadline=None)
@given(JSON_VALUES)
def test_canonical_json_is_the_standard_encoders_text(value: Any) -> None:
    try:
        got: str | None = canonical_json("attributes", value)
    except InvalidEvent:
        got = None
    assert got == reference_canonical(value)


def test_event_time_bounds_are_the_reference_ones() -> None:
    """Exactly at the earliest time and exactly an hour ahead of arrival are accepted; a microsecond
    beyond either is refused with `to_event`'s reason."""
    at = [
        EARLIEST_EVENT_TIME,
        EARLIEST_EVENT_TIME - timedelta(microseconds=1),
        ARRIVED + timedelta(hours=1),
        ARRIVED + timedelta(hours=1, microseconds=1),
    ]
    check_equivalent(
        DEFAULT_CONTRACT,
        [
            json.dumps(
                {
                    "source": "api",
                    "user_id": "u",
                    "event_type": "t",
                    "event_time": moment.isoformat(),
                    "value": 1.0,
                }
            ).encode()
            for moment in at
        ],
    )
