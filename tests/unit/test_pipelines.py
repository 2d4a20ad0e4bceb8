"""Stream contracts and the pipelines file: what a record becomes, and every mistake named at start-up."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from etl_platform.config import ConfigError, load_settings
from etl_platform.events import InvalidEvent
from etl_platform.pipelines import DEFAULT_CONTRACT, load_pipelines, parse_pipelines
from etl_platform.pipelines.catalog import DEFAULT_WAREHOUSE_SCHEMA
from etl_platform.search.indices import EVENT_PROPERTIES, contract_properties
from etl_platform.stream.decoding import decode_records
from etl_platform.warehouse import DEFAULT_SCHEMA
from etl_platform.warehouse.schema import DEFAULT_LAYOUT, table_layout

SHIPPED = Path(__file__).resolve().parents[2] / "config" / "pipelines.yaml"
ARRIVAL = datetime(2026, 3, 1, 12, tzinfo=UTC)
SETTINGS = load_settings({})


def pipelines(doc: dict[str, Any], env: dict[str, str] | None = None):
    return parse_pipelines(doc, SETTINGS, env or {}, "pipelines.yaml")


def contract_doc(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "fields": {
            "device": {"type": "string", "required": True, "max_length": 16},
            "metric": {"type": "string", "required": True},
            "ts": {"type": "timestamp", "required": True},
            "reading": {"type": "float", "required": True, "min": -100, "max": 100},
            "site": {"type": "string", "values": ["north", "south"]},
            "count": {"type": "int"},
        },
        "keys": ["device", "metric"],
        "value": "reading",
        "time": "ts",
    }
    doc.update(overrides)
    return doc


def iot(**contract: Any):
    return pipelines({"pipelines": {"iot": {"stream": {"name": "iot-events"}, "contract": contract_doc(**contract)}}})


def record(payload: Any, seq: str = "1", key: str = "k", gz: bool = False) -> dict[str, Any]:
    data = json.dumps(payload).encode()
    return {
        "Data": gzip.compress(data) if gz else data,
        "SequenceNumber": seq,
        "PartitionKey": key,
        "ApproximateArrivalTimestamp": ARRIVAL,
    }


# --- the shipped file ---------------------------------------------------------------------------------
def test_the_shipped_default_pipeline_is_the_original_envelope_and_keeps_the_deployments_names():
    shipped = load_pipelines(SETTINGS, {}, SHIPPED)
    default = shipped.default
    assert default.contract == DEFAULT_CONTRACT
    assert (default.stream.name, default.lake_root, default.index_prefix) == (SETTINGS.stream_name, "", "")
    assert default.warehouse_schema == DEFAULT_SCHEMA == DEFAULT_WAREHOUSE_SCHEMA
    assert table_layout(default.contract) == DEFAULT_LAYOUT
    assert contract_properties(default.contract) == EVENT_PROPERTIES
    # a file that declares nothing gets the same default pipeline
    implicit = pipelines({}).default
    assert (implicit.contract, implicit.stream, implicit.analytics) == (
        default.contract,
        default.stream,
        default.analytics,
    )


def test_the_shipped_seed_pipeline_has_its_own_names():
    seed = load_pipelines(SETTINGS, {"ETL_OPENSEARCH_INDEX_PREFIX": "x-"}, SHIPPED).get("seed")
    assert seed.stream.name == "seed-events"
    assert seed.dataset("processed") == "seed/processed"
    assert (seed.warehouse_schema, seed.index_prefix) == ("seed", "x-seed-")
    assert seed.contract.keys == ("user_id", "event_type") and seed.contract.time == "timestamp"
    assert seed.contract.event_id is None


# --- what a record becomes ------------------------------------------------------------------------------
def test_the_seeds_record_decodes_with_a_position_id_and_its_partition_key_kept_in_attributes():
    seed = load_pipelines(SETTINGS, {}, SHIPPED).get("seed").contract
    payload = {
        "user_id": "u1",
        "event_type": "click",
        "timestamp": "2026-03-01T11:59:00.5",  # datetime.utcnow().isoformat(): no offset, read as UTC
        "value": 3,
        "partition_key": "u1",
    }
    result = decode_records("shardId-0", [record(payload, gz=True)], seed)
    assert not result.errors
    (event,) = result.events
    assert event["timestamp"] == event["event_time"] == datetime(2026, 3, 1, 11, 59, 0, 500000, tzinfo=UTC)
    assert event["value"] == 3.0 and isinstance(event["value"], float)
    assert json.loads(event["attributes"]) == {"partition_key": "u1"}
    assert len(event["event_id"]) == 40  # derived from the stream position
    assert list(event)[:5] == ["event_id", "user_id", "event_type", "timestamp", "value"]
    assert list(seed.event_schema())[:7] == [*event][:5] + ["event_time", "attributes"]


def test_fields_are_checked_by_type_and_constraint_naming_the_field():
    contract = iot().get("iot").contract
    good = {"device": "d1", "metric": "temp", "ts": "2026-03-01T11:00:00Z", "reading": 21.5, "site": "north"}
    assert contract.to_event(good, ARRIVAL)["reading"] == 21.5
    cases = [
        ({"reading": 101}, "reading", "above the maximum"),
        ({"reading": "hot"}, "reading", "must be a number"),
        ({"site": "east"}, "site", "is not one of north, south"),
        ({"device": "d" * 17}, "device", "longer than 16"),
        ({"ts": "2026-03-01T11:00:00"}, "ts", "no timezone offset"),
        ({"ts": "2026-03-01T14:00:00Z"}, "ts", "after the record's arrival"),
        ({"count": 1.5}, "count", "must be an integer"),
        ({"metric": None}, "metric", "missing"),
    ]
    for change, field, message in cases:
        with pytest.raises(InvalidEvent) as caught:
            contract.to_event({**good, **change}, ARRIVAL)
        assert caught.value.field == field and message in caught.value.message, (change, caught.value.reason)


def test_fields_the_contract_does_not_name_are_kept_in_attributes_or_refused_never_dropped():
    good = {"device": "d1", "metric": "temp", "ts": "2026-03-01T11:00:00Z", "reading": 1.0, "fw": {"v": 2}}
    kept = iot().get("iot").contract.to_event(good, ARRIVAL)
    assert json.loads(kept["attributes"]) == {"fw": {"v": 2}}
    strict = iot(unknown_fields="reject").get("iot").contract
    with pytest.raises(InvalidEvent, match="field fw: is not a field of the contract"):
        strict.to_event(good, ARRIVAL)
    # the default envelope: unknown top-level fields join `attributes`; a clash is refused
    envelope = {"source": "web", "user_id": "u", "event_type": "t", "event_time": "2026-03-01T11:00:00Z", "value": 1}
    event = DEFAULT_CONTRACT.to_event({**envelope, "attributes": {"a": 1}, "extra": True}, ARRIVAL)
    assert json.loads(event["attributes"]) == {"a": 1, "extra": True}
    with pytest.raises(InvalidEvent, match="field a: is both a top-level field and a key of attributes"):
        DEFAULT_CONTRACT.to_event({**envelope, "attributes": {"a": 1}, "a": 2}, ARRIVAL)


def test_arrival_time_as_event_time_and_producer_ids():
    doc = contract_doc(time="arrival", event_id="id")
    doc["fields"] = {**doc["fields"], "id": {"type": "string"}}
    del doc["fields"]["ts"]
    contract = pipelines({"pipelines": {"iot": {"stream": {"name": "s"}, "contract": doc}}}).get("iot").contract
    result = decode_records("shardId-0", [record({"device": "d", "metric": "m", "reading": 2, "id": "e-1"})], contract)
    (event,) = result.events
    assert event["event_time"] == ARRIVAL and event["event_id"] == "e-1"
    assert "id" not in event and "ts" not in contract.event_schema()


def test_a_bad_record_goes_to_errors_with_the_reason():
    contract = iot().get("iot").contract
    result = decode_records(
        "shardId-0", [record({"device": "d", "metric": "m", "ts": "2026-03-01T11:00:00Z"})], contract
    )
    assert not result.events
    assert result.errors[0]["reason"] == "invalid event: field reading: missing"


# --- a malformed file fails naming the setting ------------------------------------------------------
@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"value": "nope"}, "pipelines.iot.contract.value: 'nope' is not a declared field"),
        ({"value": "site"}, "pipelines.iot.contract.value: 'site' must be a required float or int field"),
        ({"keys": []}, "pipelines.iot.contract.keys: must be a non-empty list"),
        ({"keys": ["reading"]}, "pipelines.iot.contract.keys[0]: 'reading' is a float field"),
        ({"time": "site"}, "pipelines.iot.contract.time: 'site' must be a required timestamp field, or `arrival`"),
        ({"format": "avro"}, "pipelines.iot.contract.format: 'avro' is not one of json"),
        ({"unknown_fields": "drop"}, "pipelines.iot.contract.unknown_fields: 'drop' is not one of attributes, reject"),
        ({"color": 1}, "pipelines.iot.contract.color: unknown setting"),
        ({"fields": {"x": {"type": "decimal"}}}, "pipelines.iot.contract.fields.x.type: 'decimal' is not one of"),
        ({"fields": {"x": {"type": "int", "max_length": 3}}}, "pipelines.iot.contract.fields.x.max_length: only for"),
        ({"fields": {"shard_id": {"type": "string"}}}, "pipelines.iot.contract.fields.shard_id: 'shard_id' is a col"),
        ({"fields": {"Bad Name": {"type": "string"}}}, "pipelines.iot.contract.fields: field name 'Bad Name'"),
    ],
)
def test_a_malformed_contract_fails_naming_the_setting(change, named):
    with pytest.raises(ConfigError) as caught:
        iot(**change)
    assert f"pipelines.yaml: {named}" in str(caught.value)


@pytest.mark.parametrize(
    ("doc", "named"),
    [
        ({"pipelines": {"x": {"stream": {"name": "s"}}}}, "pipelines.x.contract: missing (required)"),
        ({"pipelines": {"x": {"contract": contract_doc()}}}, "pipelines.x.stream.name: missing (required)"),
        ({"pipelines": {"raw": {}}}, "pipelines.raw: 'raw' is reserved"),
        ({"pipelines": {"Big": {}}}, "pipelines.Big: a pipeline name is lower-case"),
        ({"pipelines": {"x": {"stream": {"name": "s", "shards": 0}, "contract": contract_doc()}}}, "stream.shards"),
        ({"pipelines": {"x": {"stream": {"name": "etl-events"}, "contract": contract_doc()}}}, "already the stream"),
        (
            {"pipelines": {"x": {"stream": {"name": "s"}, "contract": contract_doc(), "analytics": {"sigmas": -1}}}},
            "pipelines.x.analytics.sigmas: must be at least 0",
        ),
        (
            {"pipelines": {"x": {"stream": {"name": "s"}, "contract": contract_doc(), "transforms": ["nodots"]}}},
            "pipelines.x.transforms[0]: 'nodots' is not a dotted path",
        ),
        (
            {"pipelines": {"x": {"stream": {"name": "s"}, "contract": contract_doc(), "warehouse_schema": "etl"}}},
            "pipelines.x.warehouse_schema: 'etl' is already the schema of default",
        ),
    ],
)
def test_a_malformed_pipeline_fails_naming_the_setting(doc, named):
    with pytest.raises(ConfigError, match=None) as caught:
        pipelines(doc)
    assert named in str(caught.value)


def test_a_missing_or_broken_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="ETL_PIPELINES_FILE=.*cannot read the pipelines file"):
        load_pipelines(SETTINGS, {"ETL_PIPELINES_FILE": str(tmp_path / "absent.yaml")})
    broken = tmp_path / "broken.yaml"
    broken.write_text("pipelines: [unclosed")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_pipelines(SETTINGS, {"ETL_PIPELINES_FILE": str(broken)})


def test_unknown_pipeline_lists_the_known_ones():
    with pytest.raises(ConfigError, match="unknown pipeline 'nope'; the pipelines are: default, seed, msk-events"):
        load_pipelines(SETTINGS, {}, SHIPPED).get("nope")


def test_pipelines_file_round_trips_through_yaml(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"pipelines": {"iot": {"stream": {"name": "i"}, "contract": contract_doc()}}}))
    loaded = load_pipelines(SETTINGS, {}, path)
    assert loaded.names == ("default", "iot")
    assert loaded.get("iot").analytics.value == "reading" and loaded.get("iot").analytics.keys == ("device", "metric")
