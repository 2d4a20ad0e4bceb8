"""OpenSearch indexing, reindexing, search answers and failure backup, against the real local node.

Each test writes under its own index prefix (t-<random>-) and its own bucket, and deletes both after.
"Node down" is produced by `SwitchableProxy`, a fault injector: a loopback TCP forwarder to the real
node that can refuse connections and come back, because stopping the shared node (~12 s) would
break other suites running against it. `test_real_node_restart` does the real stop/start when
ETL_TEST_RESTART_OPENSEARCH=1.
"""

from __future__ import annotations

import os
import select
import socket
import socketserver
import threading
import time
from datetime import UTC, date, datetime

import polars as pl
import pytest
from opensearchpy import OpenSearch

from etl_platform.lake import layout
from etl_platform.search import indices, queries
from etl_platform.search.backup import iter_failed
from etl_platform.search.bulk import IndexerConfig
from etl_platform.search.checks import day_counts
from etl_platform.search.indexer import index_day, index_processed_frame, replay_failed
from etl_platform.stream.samples import KNOWN_ANSWERS, known_processed_frame

pytestmark = pytest.mark.stack

DAY1, DAY2 = date(2024, 3, 1), date(2024, 3, 2)


def refresh(client, prefix: str) -> None:
    client.indices.refresh(index=f"{prefix}*", allow_no_indices=True)


def ids_in(client, index: str) -> list[str]:
    result = client.search(
        index=index, body={"size": 1000, "_source": False, "sort": [{"event_id": "asc"}]}, ignore_unavailable=True
    )
    return [hit["_id"] for hit in result["hits"]["hits"]]


def write_processed(s3, bucket: str, frame: pl.DataFrame) -> None:
    """The frame into the lake as the consumer would: one Parquet object per event-time hour."""
    hour = pl.col("event_time").dt.truncate("1h")
    for (moment,), part in frame.group_by(hour.alias("_h"), maintain_order=True):
        key = layout.object_key(layout.PROCESSED, layout.HourPartition.of(moment), "shardId-000000000000", "1", 0)
        layout.put(s3, bucket, key, layout.parquet_bytes(part))


# --- indexing -------------------------------------------------------------------------------------
def test_index_frame_gives_one_document_per_event_and_anomalies_only_in_anomalies(client, prefix, s3, bucket):
    frame = known_processed_frame()
    stats = index_processed_frame(client, frame, s3, bucket, prefix)
    assert (stats.failed, stats.backup_objects) == (0, [])
    assert stats.by_family == {"events": 25, "anomalies": 8}
    refresh(client, prefix)

    for day, expected in KNOWN_ANSWERS["events_per_day"].items():
        index = indices.index_name("events", day, prefix)
        day_rows = frame.filter(pl.col("event_time").dt.date() == date.fromisoformat(day))
        assert ids_in(client, index) == sorted(day_rows["event_id"].to_list())
        assert len(ids_in(client, index)) == expected
        anomalies = day_rows.filter(pl.col("anomaly_status") == "ANOMALY")["event_id"].to_list()
        assert ids_in(client, indices.index_name("anomalies", day, prefix)) == sorted(anomalies)
    assert client.count(index=indices.alias_name("events", prefix))["count"] == 25
    assert client.count(index=indices.alias_name("anomalies", prefix))["count"] == 8

    # The template made the index: explicit mapping, ingest settings, read alias.
    index = indices.index_name("events", DAY1, prefix)
    mapping = client.indices.get_mapping(index=index)[index]["mappings"]
    assert mapping["properties"]["attributes"] == {"type": "flat_object"}
    assert mapping["properties"]["value"] == {"type": "double"}
    assert mapping["properties"]["user_id"] == {"type": "keyword"}
    settings = client.indices.get_settings(index=index)[index]["settings"]["index"]
    assert (settings["refresh_interval"], settings["number_of_replicas"]) == ("1s", "0")
    assert client.indices.get_alias(index=index)[index]["aliases"] == {indices.alias_name("events", prefix): {}}

    # The document is the row: times in UTC, attributes searchable by dotted path.
    doc = client.get(index=index, id="alice-click-03")["_source"]
    assert doc["event_time"] == "2024-03-01T10:03:00.000000Z" and doc["value"] == 1003.0
    assert doc["anomaly_status"] == "ANOMALY" and doc["attributes"] == {"n": 3, "nested": {"tag": "alice-3"}}
    hits = client.search(
        index=indices.alias_name("events", prefix), body={"query": {"term": {"attributes.nested.tag": "alice-3"}}}
    )["hits"]["hits"]
    assert [h["_id"] for h in hits] == ["alice-click-03"]
    assert indices.ensure_templates(client, prefix) == []  # idempotent


def test_reindexing_changes_no_count_and_removes_rows_the_lake_dropped(client, prefix, s3, bucket):
    frame = known_processed_frame()
    write_processed(s3, bucket, frame)
    for _ in range(2):
        assert index_processed_frame(client, frame, s3, bucket, prefix).failed == 0
    for day in (DAY1, DAY2):
        result = index_day(client, s3, bucket, day, prefix)
        counts = day_counts(client, s3, bucket, day, prefix)
        assert counts.matches, counts.describe()
        assert (result.events_count, result.anomalies_count, result.stale_deleted) == (
            KNOWN_ANSWERS["events_per_day"][day.isoformat()],
            KNOWN_ANSWERS["anomalies_per_day"][day.isoformat()],
            0,
        )
    assert client.count(index=indices.alias_name("events", prefix))["count"] == 25

    # A replay changed the lake: one row gone, one anomaly now normal. Reindexing the day follows.
    changed = frame.filter(pl.col("event_id") != "alice-click-00").with_columns(
        pl.when(pl.col("event_id") == "alice-click-03")
        .then(pl.lit("NORMAL"))
        .otherwise(pl.col("anomaly_status"))
        .alias("anomaly_status")
    )
    for key in layout.list_keys(s3, bucket, layout.day_prefix(layout.PROCESSED, DAY1)):
        s3.delete_object(Bucket=bucket, Key=key)
    write_processed(s3, bucket, changed.filter(pl.col("event_time").dt.date() == DAY1))
    result = index_day(client, s3, bucket, DAY1, prefix)
    assert result.stale_deleted == 2  # the dropped event, and the anomaly copy of alice-click-03
    counts = day_counts(client, s3, bucket, DAY1, prefix)
    assert (counts.indexed_docs, counts.indexed_anomalies, counts.matches) == (15, 2, True)
    assert "alice-click-03" not in ids_in(client, indices.index_name("anomalies", DAY1, prefix))


def test_search_questions_return_the_known_answers(client, prefix, s3, bucket, capsys):
    index_processed_frame(client, known_processed_frame(), s3, bucket, prefix)
    refresh(client, prefix)
    start, end = datetime(2024, 3, 1, tzinfo=UTC), datetime(2024, 3, 3, tzinfo=UTC)

    rows = queries.user_events(
        client, "alice", datetime(2024, 3, 1, 10, 2, tzinfo=UTC), datetime(2024, 3, 1, 10, 6, tzinfo=UTC), prefix
    )
    assert [r["event_id"] for r in rows] == [f"alice-click-{i:02d}" for i in (2, 3, 4, 5)]
    assert [r["anomaly_status"] for r in rows] == ["NORMAL", "ANOMALY", "NORMAL", "NORMAL"]
    # Paging with search_after: a limit above the page size still returns everything, in order.
    assert len(queries.user_events(client, "bob", start, end, prefix, limit=3)) == 3
    assert [r["event_time"] for r in queries.user_events(client, "bob", start, end, prefix)] == sorted(
        r["event_time"] for r in queries.user_events(client, "bob", start, end, prefix)
    )

    breakdown = queries.anomaly_breakdown(client, start, end, prefix)
    assert [(r["event_type"], r["source"], r["anomalies"]) for r in breakdown] == KNOWN_ANSWERS["breakdown"]
    assert breakdown[0]["max_value"] == 1004.0 and breakdown[0]["first"] == "2024-03-02T12:02:00.000Z"
    only_day1 = queries.anomaly_breakdown(client, start, datetime(2024, 3, 2, tzinfo=UTC), prefix)
    assert [(r["event_type"], r["anomalies"]) for r in only_day1] == [("click", 2), ("temperature_reading", 1)]
    assert queries.anomaly_breakdown(client, start, end, prefix, source="api")[0]["anomalies"] == 2

    top = queries.top_anomalous_users(client, start, end, prefix)
    assert [(r["user_id"], r["anomalies"]) for r in top] == KNOWN_ANSWERS["top_users"]
    assert [r["user_id"] for r in queries.top_anomalous_users(client, start, end, prefix, limit=1)] == ["bob"]
    # Nothing indexed under a prefix: an empty answer, not an error.
    assert queries.top_anomalous_users(client, start, end, f"{prefix}none-") == []

    # The CLI: an aligned table, or the same rows as JSON.
    import argparse
    import json

    from etl_platform.cli.search import add_search_parser, cmd_search
    from etl_platform.config import load_settings

    parser = argparse.ArgumentParser()
    add_search_parser(parser.add_subparsers(dest="command"))
    window = ["--from", "2024-03-01", "--to", "2024-03-03", "--prefix", prefix]
    args = parser.parse_args(["search", "top-users", *window, "--json"])
    assert cmd_search(args, load_settings({})) == 0
    assert [(r["user_id"], r["anomalies"]) for r in json.loads(capsys.readouterr().out)] == KNOWN_ANSWERS["top_users"]
    assert cmd_search(parser.parse_args(["search", "anomalies", *window]), load_settings({})) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["event_type", "source", "anomalies", "max_value", "mean_value", "first", "last"]
    assert table[2].split()[:3] == ["log_error", "app_log", "3"]
    assert len(table) == 2 + len(KNOWN_ANSWERS["breakdown"])


# --- failures: backed up, never lost, replayed ----------------------------------------------------
class SwitchableProxy:
    """Fault injector: a TCP forwarder on 127.0.0.1 to the real node that can go down and come back.

    Down = the listening port is closed and open connections are cut, exactly what clients see when
    the node's process is gone (connection refused / reset).
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.server: socketserver.ThreadingTCPServer | None = None

    def up(self) -> None:
        proxy = self

        class Forward(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                upstream = socket.create_connection(("127.0.0.1", proxy.target_port))
                pair = {self.request: upstream, upstream: self.request}
                try:
                    while proxy.server is self.server:
                        ready, _, _ = select.select(list(pair), [], [], 0.2)
                        for sock in ready:
                            data = sock.recv(65536)
                            if not data:
                                return
                            pair[sock].sendall(data)
                finally:
                    upstream.close()

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        server = socketserver.ThreadingTCPServer(("127.0.0.1", self.port), Forward)
        server.daemon_threads = True
        self.server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()

    def down(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture()
def proxy(node):
    p = SwitchableProxy(node.port)
    yield p
    p.down()


def test_node_unreachable_backs_up_every_document_and_replay_delivers_all(client, prefix, proxy, s3, bucket):
    frame = known_processed_frame()
    via_proxy = OpenSearch(proxy.url, timeout=5, max_retries=0)
    config = IndexerConfig(max_total_wait_s=0.5, initial_backoff_s=0.1, max_bulk_bytes=4096)  # many requests

    stats = index_processed_frame(via_proxy, frame, s3, bucket, prefix, config)  # the node is "down"
    assert (stats.indexed, stats.failed) == (0, 33)
    assert stats.requests < 10, "after the wait budget the circuit opens: no request storm"
    assert "ConnectionError" in stats.last_error
    backed_up = list(iter_failed(s3, bucket))
    assert sorted((r["index"], r["id"]) for r in backed_up) == sorted(
        [(indices.index_name("events", r["event_time"], prefix), r["event_id"]) for r in frame.iter_rows(named=True)]
        + [
            (indices.index_name("anomalies", r["event_time"], prefix), r["event_id"])
            for r in frame.filter(pl.col("anomaly_status") == "ANOMALY").iter_rows(named=True)
        ]
    )
    assert all(r["doc"]["event_id"] == r["id"] and "ConnectionError" in r["error"] for r in backed_up)
    assert stats.backup_objects == layout.list_keys(s3, bucket, "search-failed/")
    assert stats.backup_objects[0].startswith(f"search-failed/dt={datetime.now(UTC).date().isoformat()}/hour=")

    # Still down: a replay backs the documents up again (new object first) and loses none.
    replayed = replay_failed(via_proxy, s3, bucket, config=config)
    assert (replayed.documents, replayed.stats.failed) == (33, 33)
    assert len(list(iter_failed(s3, bucket))) == 33

    proxy.up()  # the node is back
    replayed = replay_failed(via_proxy, s3, bucket, config=config)
    assert (replayed.documents, replayed.stats.indexed, replayed.stats.failed) == (33, 33, 0)
    assert layout.list_keys(s3, bucket, "search-failed/") == []
    refresh(client, prefix)
    for day in (DAY1, DAY2):
        expected = frame.filter(pl.col("event_time").dt.date() == day)
        assert ids_in(client, indices.index_name("events", day, prefix)) == sorted(expected["event_id"].to_list())
    assert client.count(index=indices.alias_name("anomalies", prefix))["count"] == 8
    doc = client.get(index=indices.index_name("events", DAY1, prefix), id="alice-click-03")["_source"]
    assert doc["attributes"] == {"n": 3, "nested": {"tag": "alice-3"}} and doc["value"] == 1003.0
    via_proxy.close()


def test_node_down_for_a_while_delays_indexing_without_failures(client, prefix, proxy, s3, bucket):
    frame = known_processed_frame()
    via_proxy = OpenSearch(proxy.url, timeout=5, max_retries=0)
    config = IndexerConfig(max_total_wait_s=30, initial_backoff_s=0.1, max_backoff_s=0.5)
    indices.ensure_templates(client, prefix)
    result = {}
    worker = threading.Thread(
        target=lambda: result.update(stats=index_processed_frame(via_proxy, frame, s3, bucket, prefix, config))
    )
    worker.start()
    time.sleep(1.5)
    proxy.up()
    worker.join(30)
    stats = result["stats"]
    assert (stats.indexed, stats.failed, stats.backup_objects) == (33, 0, [])
    assert stats.retried > 0
    assert layout.list_keys(s3, bucket, "search-failed/") == []
    refresh(client, prefix)
    assert client.count(index=indices.alias_name("events", prefix))["count"] == 25
    via_proxy.close()


def test_rejected_documents_are_backed_up_not_retried_and_replay_after_the_fix(client, prefix, s3, bucket):
    # A real per-document rejection: day 1's index exists with a conflicting mapping (user_id: long).
    bad = indices.index_name("events", DAY1, prefix)
    client.indices.create(index=bad, body={"mappings": {"properties": {"user_id": {"type": "long"}}}})
    frame = known_processed_frame()
    stats = index_processed_frame(client, frame, s3, bucket, prefix, IndexerConfig(max_total_wait_s=5))
    assert (stats.failed, stats.retried, stats.indexed) == (16, 0, 33 - 16)
    failed = list(iter_failed(s3, bucket))
    assert {r["index"] for r in failed} == {bad} and {r["status"] for r in failed} == {400}
    assert all(r["error"]["type"] == "mapper_parsing_exception" for r in failed)

    client.indices.delete(index=bad)  # the operator fixes the index; the template recreates it
    replayed = replay_failed(client, s3, bucket)
    assert (replayed.stats.indexed, replayed.stats.failed, len(replayed.deleted)) == (16, 0, 1)
    counts = day_counts(client, s3, bucket, DAY1, prefix)
    assert (counts.indexed_docs, counts.indexed_anomalies) == (16, 3)


@pytest.mark.skipif(
    os.environ.get("ETL_TEST_RESTART_OPENSEARCH") != "1",
    reason="stops the shared node for ~12 s; set ETL_TEST_RESTART_OPENSEARCH=1 to run",
)
def test_real_node_restart(node, prefix, s3, bucket):
    frame = known_processed_frame()
    direct = OpenSearch(node.endpoint(), timeout=5, max_retries=0)
    node.stop()
    try:
        stats = index_processed_frame(direct, frame, s3, bucket, prefix, IndexerConfig(max_total_wait_s=1))
        assert (stats.indexed, stats.failed) == (0, 33)
    finally:
        node.start()
    replayed = replay_failed(direct, s3, bucket)
    assert (replayed.stats.indexed, replayed.stats.failed) == (33, 0)
    direct.indices.refresh(index=f"{prefix}*")
    assert direct.count(index=indices.alias_name("events", prefix))["count"] == 25
    direct.close()


# --- Dagster --------------------------------------------------------------------------------------
def test_search_index_asset_and_its_check(client, prefix, s3, bucket, settings):
    from dagster import materialize
    from dagster_aws.s3 import S3Resource

    from assets.search import search_index, search_index_matches_lake
    from resources import LakeResource, OpenSearchResource

    write_processed(s3, bucket, known_processed_frame())
    resources = {
        "opensearch": OpenSearchResource(url=settings.opensearch_url, verify_certs=False, index_prefix=prefix),
        "lake": LakeResource(
            bucket=bucket,
            s3=S3Resource(
                region_name=settings.aws_region, endpoint_url=settings.s3_endpoint, **settings.local_credentials
            ),
        ),
    }
    result = materialize([search_index, search_index_matches_lake], partition_key="2024-03-02", resources=resources)
    assert result.success
    metadata = result.asset_materializations_for_node("search_index")[0].metadata
    assert (metadata["docs_indexed"].value, metadata["anomalies_indexed"].value, metadata["failed"].value) == (9, 5, 0)
    check = result.get_asset_check_evaluations()[0]
    assert check.passed, check.description
    assert (check.metadata["lake_rows"].value, check.metadata["indexed_docs"].value) == (9, 9)

    # Someone deletes a document: the check notices.
    client.delete(index=indices.index_name("anomalies", DAY2, prefix), id="carol-log_error-04", refresh=True)
    counts = day_counts(client, s3, bucket, DAY2, prefix)  # what the check evaluates
    assert not counts.matches and "MISMATCH" in counts.describe()
    assert (counts.lake_anomalies, counts.indexed_anomalies) == (5, 4)
