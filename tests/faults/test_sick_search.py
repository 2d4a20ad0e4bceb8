"""Scenario 8 of the fault matrix: a sick OpenSearch must not stop the lake.

The sick node is a fake: a loopback HTTP server answering every request with one error status (503,
429 or 403) and an OpenSearch-shaped error body, the one fault here the real node cannot be made to
produce on demand. The stream consumer delivers raw and processed and commits as usual, the documents
go to the search backup, and `replay_failed` against the real node delivers every one of them.
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opensearchpy import OpenSearch

from etl_platform.lake import layout
from etl_platform.search import indices
from etl_platform.search.backup import iter_failed
from etl_platform.search.bulk import IndexerConfig
from etl_platform.search.indexer import replay_failed, search_sink
from etl_platform.stream.consumer import ConsumerConfig, StreamConsumer
from etl_platform.stream.producer import KinesisProducer
from etl_platform.stream.sources import demo_mix
from tests.integration.pipeline_helpers import lake_rows

pytestmark = pytest.mark.stack


class SickNode:
    """Answers every request with `status` (a fake: see the module docstring)."""

    def __init__(self, status: int) -> None:
        sick = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                sick.requests += 1
                body = json.dumps({"error": {"type": "sick_node", "reason": f"fake {status}"}, "status": status})
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _answer

            def log_message(self, *args) -> None:  # quiet
                pass

        self.requests = 0
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("status", [503, 429, 403])
def test_the_lake_goes_on_while_search_is_sick_and_search_catches_up(
    status, kinesis, s3, bucket, stream, leases, client, prefix
):
    events = list(demo_mix(120, seed=31, start=datetime(2026, 8, 1, 10, 0, tzinfo=UTC), users=6, spike_rate=0.05))
    KinesisProducer(kinesis, stream).send(events)
    sick = SickNode(status)
    try:
        sick_client = OpenSearch(sick.url, timeout=5, max_retries=0)
        config = IndexerConfig(max_total_wait_s=0.5, initial_backoff_s=0.05)
        sink = search_sink(sick_client, s3, bucket, prefix, config)
        consumer = StreamConsumer(kinesis, s3, bucket, stream, leases, ConsumerConfig(), search_sink=sink)
        results = consumer.drain()
    finally:
        sick.close()
    assert sick.requests > 0  # it was asked, and answered `status` every time
    assert sum(r.events for r in results) == 120 and all(r.committed for r in results)
    processed = lake_rows(s3, bucket, layout.PROCESSED)
    assert processed.height == 120  # the lake did not wait for search
    assert all(lease.checkpoint for lease in leases.all().values() if lease.records)
    anomalies = processed.filter(processed["anomaly_status"] == "ANOMALY").height
    backed_up = list(iter_failed(s3, bucket))
    assert len(backed_up) == 120 + anomalies and all(str(status) in json.dumps(r) for r in backed_up)

    # Search is healthy again: the backup is delivered, and the indices equal the lake.
    replayed = replay_failed(client, s3, bucket, config=IndexerConfig())
    assert (replayed.stats.indexed, replayed.stats.failed) == (120 + anomalies, 0)
    assert layout.list_keys(s3, bucket, "search-failed/") == []
    client.indices.refresh(index=f"{prefix}*")
    assert client.count(index=indices.alias_name(indices.EVENTS, prefix))["count"] == 120
    assert client.count(index=indices.alias_name(indices.ANOMALIES, prefix))["count"] == anomalies
