"""Micro-batch traces on the real local stack: records put into a Kinesis stream go through the real
StreamConsumer (lake, lease table, OpenSearch), and the file exporter's JSON lines hold one span tree
per committed batch, none for idle polls, and an ERROR tree for a batch that failed before its commit."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from etl_platform.ops.tracing import ROOT_SPAN, TraceConfig, batch_tracer
from etl_platform.search.indexer import search_sink
from etl_platform.stream.consumer import ConsumerConfig, StreamConsumer, WorkBudget
from etl_platform.stream.producer import KinesisProducer
from etl_platform.stream.sources import demo_mix

pytestmark = pytest.mark.stack

SHARD = "shardId-000000000000"  # hash keys from 0: ExplicitHashKey "0" lands here
RUN = {"dagster.run_id": "0f6c1a9e-run", "dagster.job_name": "kinesis_microbatch_job"}


def put_on_first_shard(kinesis, stream: str, n: int, seed: int) -> list[str]:
    """n events onto SHARD; their sequence numbers, in order."""
    producer = KinesisProducer(kinesis, stream)
    events = demo_mix(n, seed=seed, start=datetime(2026, 6, 1, 12, tzinfo=UTC), users=5, spike_rate=0.05)
    response = kinesis.put_records(
        StreamName=stream,
        Records=[
            {"Data": producer.encode(event), "PartitionKey": event["user_id"], "ExplicitHashKey": "0"}
            for event in events
        ],
    )
    assert response["FailedRecordCount"] == 0
    assert {r["ShardId"] for r in response["Records"]} == {SHARD}
    return [r["SequenceNumber"] for r in response["Records"]]


def spans(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def trees(lines: list[dict]) -> list[tuple[dict, list[dict]]]:
    """(root, its children) per trace, in the file's order."""
    roots = [line for line in lines if line["parent_span_id"] is None]
    return [(root, [c for c in lines if c["parent_span_id"] == root["span_id"]]) for root in roots]


@pytest.fixture
def traced(kinesis, s3, bucket, stream, leases, client, prefix, tmp_path):
    """A consumer of the test's stream, indexing into OpenSearch, tracing to a file; and that file."""
    path = tmp_path / "spans.jsonl"

    def make(**kwargs) -> StreamConsumer:
        return StreamConsumer(
            kinesis,
            s3,
            bucket,
            stream,
            leases,
            ConsumerConfig(),
            search_sink=search_sink(client, s3, bucket, prefix),
            trace_batch=batch_tracer(TraceConfig("file", str(path)), "default", stream, RUN),
            **kwargs,
        )

    return make, path


def test_a_committed_batch_is_one_span_tree_and_idle_polls_are_none(kinesis, stream, traced):
    make, path = traced
    consumer = make()
    idle = consumer.work(SHARD, WorkBudget(until_caught_up=True))
    assert idle.reads >= 1 and not idle.batches
    assert spans(path) == []  # an idle poll makes no spans

    sequences = put_on_first_shard(kinesis, stream, 40, seed=31)
    outcome = consumer.work(SHARD, WorkBudget(until_caught_up=True))
    (batch,) = outcome.batches
    assert batch.records == 40

    ((root, children),) = trees(lines := spans(path))
    assert len(lines) == 1 + len(children)  # nothing else in the file: one tree
    assert root["name"] == ROOT_SPAN and root["status"]["code"] == "OK"
    attributes = root["attributes"]
    assert (attributes["etl.shard_id"], attributes["etl.stream"], attributes["etl.pipeline"]) == (
        SHARD,
        stream,
        "default",
    )
    # The batch's position is the records Kinesis accepted, first to last.
    assert (attributes["etl.first_sequence"], attributes["etl.last_sequence"]) == (sequences[0], sequences[-1])
    assert (attributes["etl.records"], attributes["etl.events"], attributes["etl.errors"]) == (40, 40, 0)
    assert attributes["etl.committed"] is True and attributes["etl.state_bytes"] == batch.state_bytes > 0
    assert {k: attributes[k] for k in RUN} == RUN
    # A child per stage run, in the order they ran, each inside the root and parented to it.
    assert [c["name"] for c in children] == [s.name for s in batch.stage_spans]
    assert {"read", "decode", "analytics", "search_indexing", "lease", "raw_delivery", "processed_delivery"} <= {
        c["name"] for c in children
    }
    assert [c["name"] for c in children][-2:] == ["commit", "state"]  # the superseded state goes after
    for child in children:
        assert child["trace_id"] == root["trace_id"] and child["parent_span_id"] == root["span_id"]
        assert root["start_ns"] <= child["start_ns"] <= child["end_ns"] <= root["end_ns"]
    assert (root["start_ns"], root["end_ns"]) == (children[0]["start_ns"], max(c["end_ns"] for c in children))

    again = consumer.work(SHARD, WorkBudget(until_caught_up=True))  # caught up: idle polls only
    assert again.reads >= 1 and not again.batches and spans(path) == lines


def test_a_batch_that_fails_before_its_commit_is_traced_in_error(kinesis, stream, leases, traced):
    make, path = traced

    def crash_before_commit(stage: str, result) -> None:
        if stage == "state":  # the outputs and the state are durable, the checkpoint is not
            raise ConnectionError("lease table unreachable")

    put_on_first_shard(kinesis, stream, 20, seed=32)
    with pytest.raises(ConnectionError):
        make(on_stage=crash_before_commit).work(SHARD, WorkBudget(until_caught_up=True))
    assert leases.get(SHARD).checkpoint is None  # nothing committed

    ((root, children),) = trees(spans(path))
    assert root["status"] == {"code": "ERROR", "description": "ConnectionError: lease table unreachable"}
    assert [e["name"] for e in root["events"]] == ["exception"]
    assert root["attributes"]["etl.committed"] is False and root["attributes"]["etl.records"] == 20
    assert "commit" not in {c["name"] for c in children} and children[-1]["name"] == "state"

    # The retry commits the same records: a second, successful tree.
    (batch,) = make().work(SHARD, WorkBudget(until_caught_up=True)).batches
    assert batch.records == 20
    (_, (retry, _)) = trees(spans(path))
    assert retry["status"]["code"] == "OK" and retry["trace_id"] != root["trace_id"]
