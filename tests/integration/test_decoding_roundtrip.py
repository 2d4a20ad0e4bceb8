"""Producer -> the real Kinesis emulator -> decoder: plain, gzip, KPL and KPL+gzip records, and poison."""

from __future__ import annotations

import json

import pytest

from etl_platform.events import events_to_frame, parse_event_time
from etl_platform.ops.provisioning import ensure_stream
from etl_platform.stream.decoding import decode_records
from etl_platform.stream.producer import KinesisProducer
from etl_platform.stream.sources import demo_mix, generate

pytestmark = pytest.mark.stack


def _read_all(client, stream: str) -> tuple[list[dict], list[dict]]:
    events, errors = [], []
    for shard in client.list_shards(StreamName=stream)["Shards"]:
        it = client.get_shard_iterator(StreamName=stream, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON")[
            "ShardIterator"
        ]
        result = decode_records(shard["ShardId"], client.get_records(ShardIterator=it, Limit=10000)["Records"])
        events += result.events
        errors += result.errors
    return events, errors


@pytest.mark.parametrize("mode", ["plain", "gzip", "kpl", "kpl+gzip"])
def test_round_trip_producer_to_decoder(kinesis, stream, mode: str) -> None:
    sent = list(demo_mix(300, seed=9, users=12))
    producer = KinesisProducer(kinesis, stream, compress="gzip" in mode)
    stats = producer.send_kpl_aggregated(sent) if "kpl" in mode else producer.send(sent)
    assert stats.sent == 300
    events, errors = _read_all(kinesis, stream)
    assert errors == []
    by_id = {e["event_id"]: e for e in events}
    assert len(events) == len(by_id) == 300
    for original in sent:
        got = by_id[original["event_id"]]
        assert (got["source"], got["user_id"], got["event_type"], got["value"]) == (
            original["source"],
            original["user_id"],
            original["event_type"],
            original["value"],
        )
        assert got["event_time"] == parse_event_time(original["event_time"])
        assert json.loads(got["attributes"]) == original["attributes"]
        assert got["partition_key"] == original["user_id"]
    # Per shard, a key's events keep the producer's order (sequence, then sub-sequence).
    for key in {e["user_id"] for e in sent}:
        expected = [e["event_id"] for e in sent if e["user_id"] == key]
        mine = sorted(
            (e for e in events if e["user_id"] == key), key=lambda e: (int(e["sequence_number"]), e["sub_sequence"])
        )
        assert [e["event_id"] for e in mine] == expected
        assert len({e["shard_id"] for e in mine}) == 1
    assert events_to_frame(events).height == 300


@pytest.fixture
def one_shard_stream(kinesis, unique_name):
    ensure_stream(kinesis, unique_name, shards=1)
    yield unique_name
    kinesis.delete_stream(StreamName=unique_name, EnforceConsumerDeletion=True)


def test_round_trip_with_poison_mixed_in(kinesis, one_shard_stream) -> None:
    stream = one_shard_stream
    good = list(generate("iot", 5, seed=1))
    producer = KinesisProducer(kinesis, stream, compress=True)
    producer.send(good[:2])
    kinesis.put_record(StreamName=stream, Data=b"\x1f\x8b\x08garbage", PartitionKey="user-0001")
    producer.send(good[2:])
    events, errors = _read_all(kinesis, stream)
    assert [e["event_id"] for e in events] == [e["event_id"] for e in good]
    assert len(errors) == 1 and errors[0]["reason"].startswith("gzip: ")
    assert int(events[1]["sequence_number"]) < int(errors[0]["sequence_number"]) < int(events[2]["sequence_number"])
