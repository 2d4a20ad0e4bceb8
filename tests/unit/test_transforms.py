"""User transforms: Firehose's three outcomes per record, and a transform's mistakes fail records, not the batch."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import polars as pl
import pytest

from etl_platform.config import ConfigError, load_settings
from etl_platform.pipelines import parse_pipelines
from etl_platform.pipelines.transforms import RECORD_ID, Transforms
from etl_platform.stream.decoding import decode_records, isolate_unconvertible

ARRIVAL = datetime(2026, 3, 1, 12, tzinfo=UTC)
CONTRACT_DOC = {
    "fields": {
        "user_id": {"type": "string", "required": True, "max_length": 8},
        "event_type": {"type": "string", "required": True},
        "timestamp": {"type": "timestamp", "required": True},
        "value": {"type": "float", "required": True},
    },
    "keys": ["user_id", "event_type"],
    "value": "value",
    "time": "timestamp",
}


def pipeline(transforms: list[str]):
    doc = {"pipelines": {"p": {"stream": {"name": "s"}, "contract": CONTRACT_DOC, "transforms": transforms}}}
    return parse_pipelines(doc, load_settings({}), {}, "pipelines.yaml").get("p")


def batch(contract, payloads: list[dict]) -> pl.DataFrame:
    records = [
        {
            "Data": json.dumps(p).encode(),
            "SequenceNumber": str(100 + i),
            "PartitionKey": p["user_id"],
            "ApproximateArrivalTimestamp": ARRIVAL,
        }
        for i, p in enumerate(payloads)
    ]
    decoded = decode_records("shardId-0", records, contract)
    assert not decoded.errors
    return isolate_unconvertible(decoded.events, [], contract)


def event(user: str, event_type: str, value: float, **attributes) -> dict:
    return {
        "user_id": user,
        "event_type": event_type,
        "timestamp": "2026-03-01T11:00:00Z",
        "value": value,
        **attributes,
    }


# transforms the tests name by dotted path
def boom(events: pl.DataFrame) -> pl.DataFrame:
    raise RuntimeError("boom")


def loses_a_row(events: pl.DataFrame) -> pl.DataFrame:
    return events.slice(1)


def moves_a_record(events: pl.DataFrame) -> pl.DataFrame:
    return events.with_columns(pl.col("sequence_number") + "0")


def breaks_the_contract(events: pl.DataFrame) -> pl.DataFrame:
    return events.with_columns(
        pl.when(pl.col("value") > 10)
        .then(pl.col("user_id") + "-much-too-long")
        .otherwise(pl.col("user_id"))
        .alias("user_id")
    )


def unknown_result(events: pl.DataFrame) -> pl.DataFrame:
    return events.with_columns(pl.lit("Maybe").alias("result"))


def doubles(events: pl.DataFrame) -> pl.DataFrame:
    return events.with_columns(pl.col("value") * 2)


def returns_a_list(events: pl.DataFrame):
    return [1]


HERE = "tests.unit.test_transforms"


def test_the_three_outcomes_of_the_shipped_example():
    p = pipeline(["etl_platform.pipelines.examples.privacy_screen"])
    frame = batch(
        p.contract,
        [
            event("u1", "click", 1.5, email="ann@example.com"),
            event("u2", "heartbeat", 0.0),
            event("u3", "click", -4.0),
            event("u4", "view", 2.0),
        ],
    )
    result = Transforms(p.contract, p.transforms).apply(frame)
    assert result.events["user_id"].to_list() == ["u1", "u4"]
    assert json.loads(result.events["attributes"][0]) == {"email": "***@example.com"}
    assert result.events.schema == frame.schema
    assert result.dropped == 1
    (failed,) = result.errors
    assert failed["reason"] == (
        "transform etl_platform.pipelines.examples.privacy_screen: negative value -4.0 (readings are never below zero)"
    )
    assert (failed["shard_id"], failed["sequence_number"], failed["sub_sequence"]) == ("shardId-0", "102", 0)
    # the failed record's payload decodes again with the contract: a re-drive puts back what was sent
    payload = json.loads(base64.b64decode(failed["raw_base64"]))
    assert p.contract.to_event(payload, ARRIVAL)["value"] == -4.0 and payload["user_id"] == "u3"


@pytest.mark.parametrize(
    ("function", "reason"),
    [
        ("boom", "RuntimeError: boom"),
        ("loses_a_row", f"ValueError: returned no row for {RECORD_ID} 0 (1 missing)"),
        ("moves_a_record", "ValueError: changed sequence_number, the record's identity and stream position"),
        ("returns_a_list", "TypeError: returned list, not a polars DataFrame"),
    ],
)
def test_a_transform_that_raises_or_breaks_the_batch_fails_its_records_not_the_shard(function, reason):
    p = pipeline([f"{HERE}.{function}"])
    frame = batch(p.contract, [event("u1", "click", 1.0), event("u2", "click", 2.0)])
    result = Transforms(p.contract, p.transforms).apply(frame)
    assert result.events.height == 0 and result.dropped == 0
    assert [e["reason"] for e in result.errors] == [f"transform {HERE}.{function}: {reason}"] * 2


def test_rows_whose_output_breaks_the_contract_fail_naming_the_field():
    p = pipeline([f"{HERE}.breaks_the_contract", f"{HERE}.unknown_result"])
    frame = batch(p.contract, [event("u1", "click", 1.0), event("u2", "click", 20.0)])
    first = Transforms(p.contract, p.transforms[:1]).apply(frame)
    assert first.events["user_id"].to_list() == ["u1"]
    assert [e["reason"] for e in first.errors] == [
        f"transform {HERE}.breaks_the_contract: output field user_id: longer than 8 characters"
    ]
    both = Transforms(p.contract, p.transforms).apply(frame)
    assert both.events.height == 0
    assert both.errors[-1]["reason"] == (
        f"transform {HERE}.unknown_result: result 'Maybe' is not one of Ok, Dropped, ProcessingFailed"
    )


def test_transforms_run_in_order_and_the_event_time_follows_the_time_field():
    p = pipeline([f"{HERE}.doubles", f"{HERE}.doubles"])
    frame = batch(p.contract, [event("u1", "click", 1.5)])
    result = Transforms(p.contract, p.transforms).apply(frame)
    assert result.events["value"].to_list() == [6.0]
    assert result.events["event_time"].to_list() == result.events["timestamp"].to_list()


@pytest.mark.parametrize(
    ("path", "named"),
    [
        ("etl_platform.no_such_module.fn", "pipelines.p.transforms[0]: cannot import 'etl_platform.no_such_module'"),
        (f"{HERE}.no_such_function", f"pipelines.p.transforms[0]: '{HERE}' has no function 'no_such_function'"),
    ],
)
def test_a_transform_that_cannot_be_found_fails_start_up_naming_it(path, named):
    with pytest.raises(ConfigError) as caught:
        pipeline([path])
    assert named in str(caught.value)
