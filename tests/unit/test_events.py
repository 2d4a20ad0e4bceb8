"""The envelope contract: schema dtypes, validation reasons, deterministic ids, sortable sequence numbers."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta, timezone

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from etl_platform.events import (
    EVENT_FIELDS,
    EVENT_SCHEMA,
    SOURCES,
    InvalidEvent,
    derive_event_id,
    events_to_frame,
    parse_event_time,
    sequence_sort_expr,
    sequence_sort_key,
)
from etl_platform.pipelines.contract import validate_envelope


def envelope(**overrides: object) -> dict:
    base = {
        "event_id": "e-1",
        "source": "iot",
        "user_id": "user-0001",
        "event_type": "temperature_reading",
        "event_time": "2024-03-01T12:00:00.123456+02:00",
        "value": 21.5,
        "attributes": {"z": 1, "a": {"nested": [1, 2]}},
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not _DROP}


_DROP = object()


def decoded_event(**overrides: object) -> dict:
    base = {
        "event_id": "e-1",
        "source": "web",
        "user_id": "u",
        "event_type": "click",
        "event_time": datetime(2024, 1, 1, 0, 0, 0, 123456, tzinfo=UTC),
        "value": 1.5,
        "attributes": "{}",
        "shard_id": "shardId-000000000000",
        "sequence_number": "49590338271490256608559692538361571095921575989136588898",
        "sub_sequence": 0,
        "arrival_time": datetime(2024, 1, 1, 0, 0, 1, tzinfo=UTC),
        "partition_key": "u",
    }
    base.update(overrides)
    return base


# -- schema ------------------------------------------------------------------------------------------


def test_schema_has_exact_fields_and_dtypes() -> None:
    assert EVENT_FIELDS == (
        "event_id",
        "source",
        "user_id",
        "event_type",
        "event_time",
        "value",
        "attributes",
        "shard_id",
        "sequence_number",
        "sub_sequence",
        "arrival_time",
        "partition_key",
    )
    assert EVENT_SCHEMA["event_time"] == pl.Datetime("us", "UTC")
    assert EVENT_SCHEMA["arrival_time"] == pl.Datetime("us", "UTC")
    assert EVENT_SCHEMA["value"] == pl.Float64()
    assert EVENT_SCHEMA["sub_sequence"] == pl.Int64()
    assert EVENT_SCHEMA["sequence_number"] == pl.String()
    assert EVENT_SCHEMA["attributes"] == pl.String()


def test_events_to_frame_keeps_schema_and_values() -> None:
    df = events_to_frame([decoded_event(), decoded_event(event_id="e-2", sub_sequence=3)])
    assert df.schema == pl.Schema(EVENT_SCHEMA)
    row = df.row(0, named=True)
    assert row["event_time"] == datetime(2024, 1, 1, 0, 0, 0, 123456, tzinfo=UTC)  # microseconds kept
    assert row["sequence_number"] == "49590338271490256608559692538361571095921575989136588898"
    assert df["sub_sequence"].to_list() == [0, 3]


def test_events_to_frame_empty_and_missing_field() -> None:
    assert events_to_frame([]).schema == pl.Schema(EVENT_SCHEMA)
    broken = decoded_event()
    del broken["partition_key"]
    with pytest.raises(KeyError):
        events_to_frame([broken])


# -- validation --------------------------------------------------------------------------------------


def test_valid_envelope_is_normalised() -> None:
    out = validate_envelope(envelope())
    assert out == {
        "event_id": "e-1",
        "source": "iot",
        "user_id": "user-0001",
        "event_type": "temperature_reading",
        "event_time": datetime(2024, 3, 1, 10, 0, 0, 123456, tzinfo=UTC),
        "value": 21.5,
        "attributes": '{"a":{"nested":[1,2]},"z":1}',
    }
    assert out["event_time"].utcoffset() == timedelta(0)


def test_optional_fields_and_numeric_forms() -> None:
    out = validate_envelope(envelope(event_id=_DROP, attributes=_DROP, value=3, event_time=1_700_000_000_123))
    assert out["event_id"] is None
    assert out["attributes"] == "{}"
    assert out["value"] == 3.0 and isinstance(out["value"], float)
    assert out["event_time"] == datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC)
    assert validate_envelope(envelope(event_time="2024-01-01T00:00:00Z"))["event_time"] == datetime(
        2024, 1, 1, tzinfo=UTC
    )
    assert parse_event_time(1.5) == datetime(1970, 1, 1, 0, 0, 0, 1500, tzinfo=UTC)
    assert parse_event_time("2024-01-01T00:00:00.123456789+00:00").microsecond == 123456


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"user_id": _DROP}, "user_id", "missing"),
        ({"user_id": ""}, "user_id", "must be a non-empty string"),
        ({"user_id": 42}, "user_id", "must be a string, got int"),
        ({"user_id": "u" * 65}, "user_id", "longer than 64 characters (65)"),
        ({"event_type": _DROP}, "event_type", "missing"),
        ({"source": _DROP}, "source", "missing"),
        ({"source": "mainframe"}, "source", "'mainframe' is not one of api, app_log, cdc, iot, web"),
        ({"source": ["iot"]}, "source", "is not one of"),
        ({"event_time": _DROP}, "event_time", "missing"),
        ({"event_time": "2024-01-01T00:00:00"}, "event_time", "timestamp has no timezone offset"),
        ({"event_time": "yesterday"}, "event_time", "not an ISO-8601 timestamp: 'yesterday'"),
        ({"event_time": True}, "event_time", "got bool"),
        ({"event_time": 10**20}, "event_time", "epoch milliseconds out of range"),
        ({"event_time": float("nan")}, "event_time", "epoch milliseconds must be finite"),
        ({"value": _DROP}, "value", "missing"),
        ({"value": True}, "value", "must be a number, got bool"),
        ({"value": "1.5"}, "value", "must be a number, got str"),
        ({"value": float("nan")}, "value", "must be finite, got nan"),
        ({"value": float("-inf")}, "value", "must be finite, got -inf"),
        ({"value": 10**400}, "value", "integer too large for float64"),
        ({"event_id": ""}, "event_id", "must be a non-empty string"),
        ({"event_id": 7}, "event_id", "must be a string, got int"),
        ({"attributes": [1, 2]}, "attributes", "must be an object, got list"),
        ({"attributes": {"x": float("nan")}}, "attributes", "non-finite number"),
    ],
)
def test_invalid_envelope_names_the_field(overrides: dict, field: str, message: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        validate_envelope(envelope(**overrides))
    assert info.value.field == field
    assert info.value.reason.startswith(f"field {field}: ")
    assert message in info.value.reason


def test_non_object_is_invalid() -> None:
    with pytest.raises(InvalidEvent, match=r"field <root>: must be a JSON object, got list"):
        validate_envelope([1])


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=80, deadline=None)
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "source": st.sampled_from(sorted(SOURCES)) | _json,
            "user_id": st.text(max_size=70) | _json,
            "event_type": st.text(max_size=40) | _json,
            "event_time": st.integers(-(10**16), 10**16) | st.text(max_size=30) | _json,
            "value": st.floats() | st.integers() | _json,
            "event_id": st.text(max_size=5) | _json,
            "attributes": st.dictionaries(st.text(max_size=3), _json, max_size=3) | _json,
        },
    )
)
def test_validation_only_ever_raises_invalid_event(obj: dict) -> None:
    try:
        out = validate_envelope(obj)
    except InvalidEvent as exc:
        assert exc.field in {"source", "user_id", "event_type", "event_time", "value", "event_id", "attributes"}
        return
    assert math.isfinite(out["value"])
    assert out["event_time"].tzinfo is not None and out["event_time"].utcoffset() == timedelta(0)
    assert isinstance(json.loads(out["attributes"]), dict)


def test_offsets_normalise_to_the_same_instant() -> None:
    a = parse_event_time("2024-06-30T23:30:00-05:00")
    b = parse_event_time(datetime(2024, 7, 1, 4, 30, tzinfo=timezone(timedelta(0))).isoformat())
    assert a == b and a.tzinfo == UTC


# -- ids and ordering --------------------------------------------------------------------------------


def test_derived_event_id_is_deterministic_and_position_specific() -> None:
    seq = "49590338271490256608559692538361571095921575989136588898"
    first = derive_event_id("shardId-000000000001", seq, 0)
    assert first == derive_event_id("shardId-000000000001", seq, 0)
    assert len(first) == 40 and all(c in "0123456789abcdef" for c in first)
    others = {
        derive_event_id("shardId-000000000002", seq, 0),
        derive_event_id("shardId-000000000001", seq[:-1] + "9", 0),
        derive_event_id("shardId-000000000001", seq, 1),
    }
    assert first not in others and len(others) == 3


def test_sequence_sort_key_orders_numerically_beyond_int64() -> None:
    seqs = [
        "9",
        "10",
        "9223372036854775807",
        "9223372036854775808",
        "49590338271490256608559692538361571095921575989136588898",
        "100000000000000000000",
        "9" * 129,
    ]
    by_key = sorted(seqs, key=sequence_sort_key)
    assert by_key == sorted(seqs, key=int)
    df = pl.DataFrame({"sequence_number": seqs}).sort(sequence_sort_expr())
    assert df["sequence_number"].to_list() == by_key
    with pytest.raises(ValueError, match="decimal digits"):
        sequence_sort_key("12a")
    with pytest.raises(ValueError, match="longer than 129"):
        sequence_sort_key("1" * 130)
