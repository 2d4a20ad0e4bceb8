"""The indexer without a node: documents, bulk sizing by bytes, retries and the failure backup.

Retry behaviour is driven by `ScriptedBulkClient`, a fake (named as such): it answers bulk requests
with per-item 429s, 503s, 413s and connection errors on cue, which the real single node cannot be made
to produce on demand. Indexing against the real node is in tests/integration/test_search.py.
"""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime

import pytest
from opensearchpy.exceptions import ConnectionError as OSConnectionError
from opensearchpy.exceptions import TransportError

from etl_platform.config import ConfigError
from etl_platform.search.backup import backup_failures
from etl_platform.search.bulk import BulkEngine, IndexerConfig, IndexingError, chunk_ranges
from etl_platform.search.documents import bulk_lines, documents
from etl_platform.search.indexer import index_processed_frame
from etl_platform.search.indices import EVENT_PROPERTIES
from etl_platform.stream.samples import known_processed_frame

NOW = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def lines_for(frame=None, prefix: str = "p-"):
    return bulk_lines(documents(frame if frame is not None else known_processed_frame(), NOW), prefix)


# --- sizing by bytes ------------------------------------------------------------------------------
def test_chunk_ranges_cut_by_bytes_and_docs():
    assert chunk_ranges([3, 3, 3, 3], 7) == [(0, 2), (2, 4)]
    assert chunk_ranges([3, 3, 3, 3], 6) == [(0, 2), (2, 4)]
    assert chunk_ranges([3, 3, 3, 3], 5) == [(0, 1), (1, 2), (2, 3), (3, 4)]
    assert chunk_ranges([2, 10, 2], 5) == [(0, 1), (1, 2), (2, 3)]  # an oversized item goes alone
    assert chunk_ranges([1] * 10, 100, max_docs=4) == [(0, 4), (4, 8), (8, 10)]
    assert chunk_ranges([], 10) == []
    with pytest.raises(ValueError):
        chunk_ranges([1], 0)


@pytest.mark.parametrize("max_bytes", [700, 2048, 5000, 10**6])
def test_bulk_requests_stay_within_the_byte_limit_and_cover_every_action(max_bytes):
    lines = lines_for()
    sizes = lines["size"].to_list()
    payloads = lines["payload"].to_list()
    assert sizes == [len(p.encode()) for p in payloads]
    ranges = chunk_ranges(sizes, max_bytes)
    assert [i for a, b in ranges for i in range(a, b)] == list(range(len(sizes)))
    for a, b in ranges:
        body = "".join(payloads[a:b]).encode()
        assert len(body) <= max_bytes or b - a == 1
    if max_bytes == 10**6:
        assert ranges == [(0, len(sizes))]


# --- documents ------------------------------------------------------------------------------------
def test_documents_match_the_mapping_and_the_rows():
    frame = known_processed_frame()
    docs = documents(frame, NOW)
    assert docs.columns == ["_id", "_day", "_anomaly", "doc"]
    first = json.loads(docs["doc"][0])
    assert set(first) == set(EVENT_PROPERTIES)  # every field mapped, nothing unmapped
    assert first["event_time"] == "2024-03-01T10:00:00.000000Z"
    assert first["indexed_at"] == "2026-01-02T03:04:05.678901Z"
    assert first["attributes"] == {"n": 0, "nested": {"tag": "alice-0"}}
    assert first["shard_depth"] == 0 and first["value"] == 10.0 and first["sub_sequence"] == 0
    assert docs["_day"].unique().sort().to_list() == ["2024.03.01", "2024.03.02"]

    lines = bulk_lines(docs, "p-")
    assert lines.height == frame.height + 8  # anomalies are indexed twice: events and anomalies
    action, doc = lines["payload"][0].splitlines()
    assert json.loads(action) == {"index": {"_index": "p-events-2024.03.01", "_id": "alice-click-00"}}
    assert json.loads(doc)["event_id"] == "alice-click-00"
    anomalies = lines.filter(lines["_index"].str.contains("anomalies"))
    assert sorted(anomalies["_id"].to_list()) == sorted(
        frame.filter(frame["anomaly_status"] == "ANOMALY")["event_id"].to_list()
    )


def test_documents_escape_ids_and_ignore_unknown_columns():
    frame = known_processed_frame().head(1)
    frame = frame.with_columns(frame["event_id"].str.replace("alice", 'al"ice\\')).with_columns(extra_column=1)
    lines = lines_for(frame)
    action, doc = lines["payload"][0].splitlines()
    assert json.loads(action)["index"]["_id"] == 'al"ice\\-click-00'
    assert "extra_column" not in json.loads(doc)


# --- retries --------------------------------------------------------------------------------------
class ScriptedBulkClient:
    """Fake bulk endpoint: each call takes the next step of the script; afterwards everything succeeds.

    A step is "conn" (connection refused), an int (request-level HTTP status), or a dict
    {_id: item status} for per-item answers (unlisted items succeed).
    """

    def __init__(self, *script):
        self.script = list(script)
        self.calls: list[list[str]] = []
        self.indices = self  # client.indices.get_index_template: the node is unreachable for templates

    def get_index_template(self, **params):
        raise OSConnectionError("N/A", "Connection refused", None)

    def bulk(self, body, **params):
        rows = body.decode().splitlines()
        ids = [json.loads(rows[i])["index"]["_id"] for i in range(0, len(rows), 2)]
        self.calls.append(ids)
        step = self.script.pop(0) if self.script else {}
        if step == "conn":
            raise OSConnectionError("N/A", "Connection refused", None)
        if isinstance(step, int):
            raise TransportError(step, "scripted", {})
        items = []
        for doc_id in ids:
            status = step.get(doc_id, 201)
            item = {"status": status}
            if status >= 300:
                kind = "es_rejected_execution_exception" if status == 429 else "mapper_parsing_exception"
                item["error"] = {"type": kind}
            items.append({"index": item})
        return {"errors": any(i["index"]["status"] >= 300 for i in items), "items": items}


def run(client, lines, **config):
    sleeps: list[float] = []
    defaults = {"concurrency": 1, "initial_backoff_s": 1.0, "max_backoff_s": 8.0}
    engine = BulkEngine(client, IndexerConfig(**{**defaults, **config}), sleep=sleeps.append)
    stats, failures = engine.run(lines["payload"].to_list(), lines["size"].to_list(), lines["_index"].to_list())
    return stats, failures, sleeps


def test_only_rejected_items_are_retried_with_growing_backoff():
    lines = lines_for()
    client = ScriptedBulkClient({"alice-click-01": 429, "bob-api_call-02": 503}, {"alice-click-01": 429}, {})
    stats, failures, sleeps = run(client, lines)
    assert failures == [] and stats.indexed == lines.height and stats.failed == 0
    assert client.calls[1] == ["alice-click-01", "bob-api_call-02"] and client.calls[2] == ["alice-click-01"]
    assert stats.retried == 3 and stats.requests == 3
    assert 0.5 <= sleeps[0] <= 1.0 and 1.0 <= sleeps[1] <= 2.0  # exponential, with jitter
    assert stats.by_family == {"events": 25, "anomalies": 8}


def test_request_level_503_retries_the_whole_request():
    lines = lines_for()
    stats, failures, sleeps = run(ScriptedBulkClient(503, 503), lines)
    assert (stats.indexed, stats.failed, stats.requests, len(sleeps)) == (33, 0, 3, 2)


def test_non_retryable_items_fail_at_once():
    lines = lines_for()
    stats, failures, sleeps = run(ScriptedBulkClient({"carol-log_error-00": 400}), lines)
    assert [(lines["_id"][f.position], f.status) for f in failures] == [("carol-log_error-00", 400)]
    assert failures[0].error == {"type": "mapper_parsing_exception"}
    assert (stats.indexed, stats.failed, stats.retried, sleeps) == (32, 1, 0, [])


def test_the_wait_budget_bounds_retries_and_the_circuit_stops_sending():
    lines = lines_for()
    client = ScriptedBulkClient(*["conn"] * 100)
    stats, failures, sleeps = run(client, lines, max_bulk_bytes=2000, max_total_wait_s=3.0)
    assert sum(sleeps) == pytest.approx(3.0)  # never more than the budget
    assert stats.failed == lines.height and stats.indexed == 0 and stats.unreachable
    # The first request used the whole budget; after that the circuit was open: no further requests.
    assert len(client.calls) == len(sleeps) + 1
    assert len(chunk_ranges(lines["size"].to_list(), 2000)) > 3
    assert "Connection refused" in stats.last_error


def test_a_429_storm_past_the_budget_fails_the_items_without_opening_the_circuit():
    lines = lines_for()
    storm = {doc_id: 429 for doc_id in lines["_id"].to_list()}
    client = ScriptedBulkClient(*[storm] * 100)
    stats, failures, _ = run(client, lines, max_bulk_bytes=4000, max_total_wait_s=2.0)
    chunks = len(chunk_ranges(lines["size"].to_list(), 4000))
    assert stats.failed == lines.height and not stats.unreachable
    assert len(client.calls) >= chunks  # every request was still tried once after the budget ran out


def test_413_halves_the_request():
    lines = lines_for()
    client = ScriptedBulkClient(413)
    stats, failures, _ = run(client, lines)
    assert stats.indexed == lines.height and [len(c) for c in client.calls] == [33, 16, 17]


def test_parallel_requests_index_everything_once():
    lines = lines_for()
    client = ScriptedBulkClient()
    stats, failures, _ = run(client, lines, max_bulk_bytes=1500, concurrency=4)
    assert failures == [] and stats.indexed == lines.height
    assert sorted(i for call in client.calls for i in call) == sorted(lines["_id"].to_list())


# --- backup ---------------------------------------------------------------------------------------
class DictS3:
    """Fake S3 holding objects in a dict (only put_object is needed here)."""

    def __init__(self):
        self.objects: dict[str, bytes] = {}

    def put_object(self, Bucket, Key, Body):  # noqa: N803 (boto3's argument names)
        self.objects[Key] = Body


def test_failed_documents_are_backed_up_with_index_error_and_document():
    lines = lines_for()
    _, failures, _ = run(ScriptedBulkClient({"carol-log_error-00": 400, "bob-api_call-01": 400}), lines)
    s3 = DictS3()
    args = (failures, lines["payload"].to_list(), lines["_index"].to_list(), lines["_id"].to_list(), "p-", NOW)
    keys = backup_failures(s3, "b", *args)
    assert keys == backup_failures(s3, "b", *args)  # same failures, same object: a retry overwrites
    assert len(keys) == 1 and keys[0].startswith("search-failed/dt=2026-01-02/hour=03/")
    records = [json.loads(x) for x in gzip.decompress(s3.objects[keys[0]]).splitlines()]
    assert {(r["index"], r["id"]) for r in records} == {
        ("p-events-2024.03.02", "carol-log_error-00"),
        ("p-events-2024.03.02", "bob-api_call-01"),
        ("p-anomalies-2024.03.02", "bob-api_call-01"),
    }
    record = records[0]
    assert record["status"] == 400 and record["error"] == {"type": "mapper_parsing_exception"}
    assert record["doc"]["event_id"] == record["id"] and record["prefix"] == "p-"
    assert record["failed_at"] == "2026-01-02T03:04:05.678901Z"
    # Big backups are split into parts.
    many = backup_failures(DictS3(), "b", *args, max_object_bytes=500)
    assert len(many) == 3 and many[1].endswith("-0001.jsonl.gz")


def test_failures_without_a_backup_location_raise_instead_of_dropping():
    with pytest.raises(IndexingError, match="33 documents failed"):
        index_processed_frame(
            ScriptedBulkClient(*["conn"] * 10),
            known_processed_frame(),
            None,
            None,
            "p-",
            IndexerConfig(max_total_wait_s=0, concurrency=1),
        )


def test_config_from_env():
    assert IndexerConfig.from_env({}) == IndexerConfig()
    config = IndexerConfig.from_env({"ETL_SEARCH_BULK_BYTES": "1048576", "ETL_SEARCH_MAX_WAIT_S": "2.5"})
    assert (config.max_bulk_bytes, config.max_total_wait_s) == (1048576, 2.5)
    with pytest.raises(ConfigError, match="ETL_SEARCH_BULK_BYTES"):
        IndexerConfig.from_env({"ETL_SEARCH_BULK_BYTES": "12"})
    with pytest.raises(ConfigError, match="ETL_SEARCH_CONCURRENCY"):
        IndexerConfig.from_env({"ETL_SEARCH_CONCURRENCY": "two"})
