"""KPL aggregation per shard against the real Kinesis emulator: every event once, on the shard its own
key hashes to, in per-key order, in far fewer records; a reshard makes the producer refresh its map;
`produce` aggregates by default for Kinesis and never for Kafka."""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import pytest

from etl_platform.ops.provisioning import ensure_stream, ensure_topic
from etl_platform.stream.decoding import decode_records
from etl_platform.stream.kafka import KafkaSource, kafka_config
from etl_platform.stream.producer import KinesisProducer
from etl_platform.stream.reader import ShardReader
from etl_platform.stream.shards import hash_key, lineage_order, list_shards
from etl_platform.stream.sources import demo_mix
from tests.integration.pipeline_helpers import cli, write_jsonl

pytestmark = pytest.mark.stack


class RecordingKinesis:
    """The real client, passed through, remembering which PutRecords call stored each sequence number
    (a spy, not a fake: every call reaches the emulator)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.call_of: dict[str, int] = {}
        self.calls = 0

    def put_records(self, **kwargs: Any) -> dict:
        response = self.client.put_records(**kwargs)
        self.calls += 1
        for result in response["Records"]:
            if "SequenceNumber" in result:
                self.call_of[result["SequenceNumber"]] = self.calls
        return response

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


@pytest.fixture
def four_shards(kinesis, unique_name):
    ensure_stream(kinesis, unique_name, shards=4)
    yield unique_name
    kinesis.delete_stream(StreamName=unique_name, EnforceConsumerDeletion=True)


def read_back(kinesis, stream: str) -> tuple[dict[str, list[dict]], int]:
    """Decoded events per shard (parents first), in stream order, and how many Kinesis records held them."""
    per_shard: dict[str, list[dict]] = {}
    records_read = 0
    for shard in lineage_order(list_shards(kinesis, stream)):
        reader, records = ShardReader(kinesis, stream, shard.shard_id, None), []
        while True:
            read = reader.read(10_000, 50 * 1024 * 1024, time_budget_s=5)
            records += read.records
            if not read.records and not read.cut:
                break
        result = decode_records(shard.shard_id, records)
        assert result.errors == []
        records_read += len(records)
        per_shard[shard.shard_id] = sorted(result.events, key=lambda e: (int(e["sequence_number"]), e["sub_sequence"]))
    return per_shard, records_read


@pytest.mark.parametrize("compress", [False, True], ids=["json", "gzip"])
def test_aggregated_events_arrive_once_on_their_keys_shards_in_order(kinesis, four_shards, compress: bool) -> None:
    sent = list(demo_mix(4000, seed=31))  # 500 users
    stats = KinesisProducer(kinesis, four_shards, compress=compress).send_kpl_aggregated(sent)
    assert stats.sent == 4000 and stats.failed == 0 and not stats.rejected
    assert stats.records < 4000 / 50 and stats.misrouted == 0 and stats.shard_map_refreshes == 0

    per_shard, records_read = read_back(kinesis, four_shards)
    assert records_read == stats.records
    ranges = {s.shard_id: s.hash_key_range for s in list_shards(kinesis, four_shards)}
    got = [e for events in per_shard.values() for e in events]
    assert Counter(e["event_id"] for e in got) == Counter(e["event_id"] for e in sent)  # each exactly once
    for shard_id, events in per_shard.items():
        low, high = ranges[shard_id]
        assert events and all(low <= hash_key(e["partition_key"]) <= high for e in events)
        assert all(e["partition_key"] == e["user_id"] for e in events)
    position = {e["event_id"]: (int(e["sequence_number"]), e["sub_sequence"]) for e in got}
    for user in {e["user_id"] for e in sent}:
        mine = [e["event_id"] for e in sent if e["user_id"] == user]
        assert sorted(mine, key=position.__getitem__) == mine  # the producer's per-key order


def test_reshard_mid_production_refreshes_the_map(kinesis, stream) -> None:
    spy = RecordingKinesis(kinesis)
    producer = KinesisProducer(spy, stream)
    before = list(demo_mix(1000, seed=32))
    producer.send_kpl_aggregated(before)
    calls_before = spy.calls

    kinesis.update_shard_count(StreamName=stream, TargetShardCount=4, ScalingType="UNIFORM_SCALING")
    deadline = time.monotonic() + 30
    while True:
        summary = kinesis.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"]
        if summary["StreamStatus"] == "ACTIVE" and summary["OpenShardCount"] == 4:
            break
        assert time.monotonic() < deadline, f"reshard not done: {summary}"
        time.sleep(0.1)

    after = list(demo_mix(6000, seed=33))
    # Small aggregates, so the run takes several requests: only the first may use the stale map.
    stats = producer.send_kpl_aggregated(after, max_aggregate_bytes=2048, max_buffered_ms=60_000)
    assert spy.calls - calls_before > 2
    assert stats.shard_map_refreshes == 1 and stats.sent == 6000

    per_shard, _ = read_back(kinesis, stream)
    shards = {s.shard_id: s for s in list_shards(kinesis, stream)}
    got = [e for events in per_shard.values() for e in events]
    assert Counter(e["event_id"] for e in got) == Counter(e["event_id"] for e in before + after)
    off_shard = [
        e
        for shard_id, events in per_shard.items()
        for e in events
        if not shards[shard_id].hash_key_range[0] <= hash_key(e["partition_key"]) <= shards[shard_id].hash_key_range[1]
    ]
    # The stale map sent some events to a sibling child, all in the first request after the reshard,
    # and the producer counted exactly those.
    assert off_shard and {spy.call_of[e["sequence_number"]] for e in off_shard} == {calls_before + 1}
    assert stats.misrouted == len(off_shard)
    # Within each shard, every key's events keep the producer's order.
    order = {e["event_id"]: i for i, e in enumerate(before + after)}
    for events in per_shard.values():
        for user in {e["user_id"] for e in events}:
            mine = [order[e["event_id"]] for e in events if e["user_id"] == user]
            assert mine == sorted(mine)


def test_produce_aggregates_by_default_for_kinesis(kinesis, four_shards, tmp_path) -> None:
    events = list(demo_mix(600, seed=34))
    path = write_jsonl(tmp_path / "events.jsonl", events)
    env = {"ETL_STREAM_NAME": four_shards}
    default = json.loads(cli("produce", "--file", str(path), "--gzip", "--quiet", env=env).stdout.splitlines()[-1])
    assert default["aggregated"] is True and default["sent"] == 600 and default["records"] < 600 / 20
    alias = json.loads(cli("produce", "--file", str(path), "--kpl", "--quiet", env=env).stdout.splitlines()[-1])
    assert alias["aggregated"] is True and alias["records"] < 600 / 20
    plain = json.loads(cli("produce", "--file", str(path), "--no-kpl", "--quiet", env=env).stdout.splitlines()[-1])
    assert plain["aggregated"] is False and plain["records"] == plain["sent"] == 600
    per_shard, records_read = read_back(kinesis, four_shards)
    assert records_read == default["records"] + alias["records"] + 600
    assert Counter(e["event_id"] for events in per_shard.values() for e in events) == Counter(
        e["event_id"] for e in events * 3
    )


def test_produce_to_kafka_sends_one_message_per_event(settings, unique_name, tmp_path) -> None:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    ensure_topic(admin, unique_name, 2)
    try:
        events = list(demo_mix(200, seed=35))
        path = write_jsonl(tmp_path / "events.jsonl", events)
        args = ("produce", "--pipeline", "msk-events", "--stream", unique_name, "--file", str(path), "--quiet")
        default = cli(*args)
        assert json.loads(default.stdout.splitlines()[-1])["aggregated"] is False
        asked = cli(*args, "--kpl")
        assert "--kpl ignored: kafka pipelines send one record per event" in asked.stderr
        out = json.loads(asked.stdout.splitlines()[-1])
        assert out["sent"] == out["records"] == 200

        source = KafkaSource(kafka_config(settings), unique_name, group_id=f"t.{unique_name}")
        values = []
        for shard in source.list_shards():
            reader = source.reader(shard.shard_id, None)
            while True:
                read = reader.read(10_000, 50 * 1024 * 1024, 5)
                values += [r["Data"] for r in read.records]
                if not read.records and not read.cut:
                    break
            reader.close()
        assert len(values) == 400 and all(v[:1] == b"{" for v in values)
    finally:
        admin.delete_topics([unique_name])[unique_name].result(30)
