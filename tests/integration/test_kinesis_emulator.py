"""The Kinesis emulator must reshard like Kinesis, or the consumer's lineage logic is untested."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.stack


def _shards(kinesis, stream):
    shards, token = [], None
    while True:
        resp = kinesis.list_shards(NextToken=token) if token else kinesis.list_shards(StreamName=stream)
        shards += resp["Shards"]
        token = resp.get("NextToken")
        if not token:
            return shards


def _read_all(kinesis, stream, shard_id):
    """Read a shard from its start; returns (data list, final response)."""
    it = kinesis.get_shard_iterator(StreamName=stream, ShardId=shard_id, ShardIteratorType="TRIM_HORIZON")[
        "ShardIterator"
    ]
    data = []
    for _ in range(50):
        resp = kinesis.get_records(ShardIterator=it, Limit=1000)
        data += [r["Data"] for r in resp["Records"]]
        it = resp.get("NextShardIterator")
        if it is None or (not resp["Records"] and resp.get("MillisBehindLatest", 0) == 0):
            return data, resp
    raise AssertionError(f"shard {shard_id} did not end or drain")


def _put(kinesis, stream, prefix, n=40):
    records = [{"Data": f"{prefix}-{i}".encode(), "PartitionKey": f"user-{i}"} for i in range(n)]
    resp = kinesis.put_records(StreamName=stream, Records=records)
    assert resp["FailedRecordCount"] == 0
    return resp["Records"]


def test_update_shard_count_routes_new_writes_to_children_and_closes_parents(kinesis, stream):
    _put(kinesis, stream, "before")
    parents = {s["ShardId"] for s in _shards(kinesis, stream)}
    assert len(parents) == 2

    kinesis.update_shard_count(StreamName=stream, TargetShardCount=4, ScalingType="UNIFORM_SCALING")
    summary = kinesis.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"]
    assert summary["OpenShardCount"] == 4

    after = _put(kinesis, stream, "after")
    shards = _shards(kinesis, stream)
    open_ids = {s["ShardId"] for s in shards if "EndingSequenceNumber" not in s["SequenceNumberRange"]}
    closed_ids = {s["ShardId"] for s in shards if "EndingSequenceNumber" in s["SequenceNumberRange"]}
    assert closed_ids == parents
    assert len(open_ids) == 4
    # Every child names a closed parent: lineage is discoverable from ListShards alone.
    for shard in shards:
        if shard["ShardId"] in open_ids:
            assert shard.get("ParentShardId") in parents
    # New writes land only in open children.
    assert {r["ShardId"] for r in after} <= open_ids

    # Reading a closed parent returns exactly its pre-split records, then ends with ChildShards.
    before_data = []
    for parent in parents:
        data, last = _read_all(kinesis, stream, parent)
        assert last.get("NextShardIterator") is None
        assert {c["ShardId"] for c in last["ChildShards"]} <= open_ids
        assert last["ChildShards"]
        before_data += data
    assert sorted(before_data) == sorted(f"before-{i}".encode() for i in range(40))

    child_data = []
    for child in open_ids:
        child_data += _read_all(kinesis, stream, child)[0]
    assert sorted(child_data) == sorted(f"after-{i}".encode() for i in range(40))
