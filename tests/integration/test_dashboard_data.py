"""The dashboard's data layer against the real local stack: OpenSearch (documents indexed by the
platform's own indexer under a per-test prefix), the lease table and CloudWatch on moto.

The documents are `known_processed_frame()`'s 25 rows with their answers known (KNOWN_ANSWERS), moved
to the last minute so the page's windows ("now" minus 5 minutes...) hold them. OpenSearch going down
and coming back is a `SwitchableProxy` (tests/integration/test_search.py) in front of the real node.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest
from opensearchpy import OpenSearch

from etl_platform.dashboard import data
from etl_platform.dashboard.data import PipelineView, Sources
from etl_platform.dashboard.layout import refresh_search
from etl_platform.dashboard.questions import QUESTIONS
from etl_platform.ops import metrics as m
from etl_platform.pipelines import load_pipelines
from etl_platform.search import queries
from etl_platform.search.indexer import index_processed_frame
from etl_platform.search.indices import EVENTS, contract_properties
from etl_platform.search.queries import DEFAULT_FIELDS, OTHER
from etl_platform.stream.leases import LeaseTable
from etl_platform.stream.samples import KNOWN_ANSWERS, known_processed_frame
from etl_platform.stream.shards import Shard
from tests.integration.test_search import SwitchableProxy

pytestmark = pytest.mark.stack

FIVE_MINUTES = data.WINDOWS["5m"]


def recent_known_frame(end: datetime, step_s: float = 2.0, tag: str = "", rename: dict | None = None) -> pl.DataFrame:
    """`known_processed_frame()` moved to just before `end`: row i at end - (25 - i) * step_s, in the
    frame's order (its analytics results unchanged). `tag` makes the event ids new; `rename` maps users."""
    frame = known_processed_frame()
    first = end - timedelta(seconds=step_s * frame.height)
    times = pl.Series([first + timedelta(seconds=step_s * i) for i in range(frame.height)]).dt.cast_time_unit("us")
    frame = frame.with_columns(
        times.alias("event_time"),
        (times + timedelta(milliseconds=250)).alias("arrival_time"),
        (pl.lit(tag) + pl.col("event_id")).alias("event_id"),
    )
    if rename:
        frame = frame.with_columns(pl.col("user_id").replace(rename), pl.col("partition_key").replace(rename))
    return frame


def index_now(client, frame: pl.DataFrame, s3, bucket: str, prefix: str, properties=None) -> None:
    stats = index_processed_frame(client, frame, s3, bucket, prefix, properties=properties)
    assert stats.failed == 0, stats
    client.indices.refresh(index=f"{prefix}*", allow_no_indices=True)


def default_view(prefix: str) -> PipelineView:
    return PipelineView("default", prefix, DEFAULT_FIELDS, "no-stream", native_metrics=False)


def totals(rows: list[dict], value: str = "count") -> dict[str, float]:
    out: Counter = Counter()
    for row in rows:
        out[row["group"]] += row[value]
    return dict(out)


# --- OpenSearch -----------------------------------------------------------------------------------
def test_every_panel_answers_its_question_from_aggregations(client, prefix, s3, bucket):
    now = datetime.now(UTC)
    frame = recent_known_frame(now - timedelta(seconds=1))
    index_now(client, frame, s3, bucket, prefix)
    view = default_view(prefix)

    panels = data.search_panels(client, view, FIVE_MINUTES, now)
    assert set(panels) == {q.key for q in QUESTIONS}

    rate = panels["event_rate"]
    assert totals(rate) == {"web": 10, "iot": 6, "api": 4, "app_log": 5}
    assert {len([r for r in rate if r["group"] == g]) for g in ("web", "iot")} == {300}  # every 1 s bucket
    full = [r for r in rate if r["count"] and r["time"] < queries._iso(now - timedelta(seconds=2))]
    assert full and all(r["per_second"] == r["count"] for r in full)  # whole 1 s buckets: count = rate

    by_type = Counter({t: 0 for t, _, _ in KNOWN_ANSWERS["breakdown"]})
    for event_type, _, n in KNOWN_ANSWERS["breakdown"]:
        by_type[event_type] += n
    assert totals(panels["anomalies_over_time"]) == dict(by_type)

    averages = defaultdict(lambda: [0.0, 0])
    for row in panels["rolling_average"]:
        if row["count"]:
            averages[row["group"]][0] += row["average"] * row["count"]
            averages[row["group"]][1] += row["count"]
    expected = frame.group_by("event_type").agg(pl.col("avg_value").mean()).rows()
    assert {k: round(s / n, 9) for k, (s, n) in averages.items()} == {k: round(v, 9) for k, v in expected}

    assert [(r["user_id"], r["anomalies"]) for r in panels["top_users"]] == KNOWN_ANSWERS["top_users"]
    breakdown = [(r["event_type"], r["source"], r["anomalies"]) for r in panels["anomaly_breakdown"]]
    assert breakdown == KNOWN_ANSWERS["breakdown"]

    latest = panels["latest_anomalies"]
    anomalies = frame.filter(pl.col("anomaly_status") == "ANOMALY").sort("event_time", descending=True)
    assert [r["event_id"] for r in latest] == anomalies["event_id"].to_list()
    assert latest[0] | {"event_time": None} == {
        "user_id": "carol",
        "event_time": None,
        "event_id": "carol-log_error-04",
        "source": "app_log",
        "event_type": "log_error",
        "value": 1004.0,
        "avg_value": 10.2,
        "anomaly_status": "ANOMALY",
    }

    drill = data.user_recent_events(client, view, "bob", FIVE_MINUTES, now)
    bob = frame.filter(pl.col("user_id") == "bob").sort("event_time", descending=True)
    assert [r["event_id"] for r in drill] == bob["event_id"].to_list()


def test_a_series_keeps_its_top_groups_and_the_rest_adds_up_as_other(client, prefix, s3, bucket):
    now = datetime.now(UTC)
    index_now(client, recent_known_frame(now - timedelta(seconds=1)), s3, bucket, prefix)
    end = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
    start = end - timedelta(minutes=5)
    rows = queries.over_time(client, EVENTS, start, end, 60, by="source", prefix=prefix, limit=2)
    assert totals(rows) == {"web": 10, "iot": 6, OTHER: 9}
    assert len(rows) == 3 * 5  # three series, a bucket per minute
    unsplit = queries.over_time(client, EVENTS, start, end, 60, prefix=prefix)
    per_bucket = Counter()
    for row in rows:
        per_bucket[row["time"]] += row["count"]
    assert per_bucket == Counter({r["time"]: r["count"] for r in unsplit})


def test_nothing_indexed_is_an_empty_page_not_an_error(client, prefix):
    panels = data.search_panels(client, default_view(prefix), FIVE_MINUTES)
    assert all(rows == [] for rows in panels.values())
    start, end = FIVE_MINUTES.bounds()
    assert {r["count"] for r in queries.over_time(client, EVENTS, start, end, 1, prefix=prefix)} == {0}


def test_a_pipeline_without_a_source_field_uses_its_own_contract(client, prefix, s3, bucket, settings):
    seed = load_pipelines(settings, {"ETL_OPENSEARCH_INDEX_PREFIX": prefix}).get("seed")
    view = PipelineView.of(seed, settings)
    assert (view.prefix, view.names.source, view.names.groups) == (f"{prefix}seed-", None, ("event_type",))
    frame = recent_known_frame(datetime.now(UTC) - timedelta(seconds=1)).drop("source")
    frame = frame.with_columns(pl.col("event_time").alias("timestamp"))
    index_now(client, frame, s3, bucket, view.prefix, properties=contract_properties(seed.contract))

    panels = data.search_panels(client, view, FIVE_MINUTES)
    assert totals(panels["event_rate"]) == {queries.ALL: 25}  # no source: one series
    assert [(r["event_type"], r["anomalies"]) for r in panels["anomaly_breakdown"]] == [
        ("log_error", 3),
        ("api_call", 2),
        ("click", 2),
        ("temperature_reading", 1),
    ]
    assert "source" not in panels["latest_anomalies"][0]
    # ... and the default pipeline's indices under the same deployment prefix are another view.
    assert data.search_panels(client, default_view(prefix), FIVE_MINUTES)["latest_anomalies"] == []


def test_opensearch_down_is_a_banner_over_the_last_answers_and_the_page_recovers(client, prefix, s3, bucket, node):
    index_now(client, recent_known_frame(datetime.now(UTC) - timedelta(seconds=1)), s3, bucket, prefix)
    proxy = SwitchableProxy(node.port)
    search = OpenSearch(proxy.url, timeout=5, max_retries=0)
    sources = Sources(proxy.url, search, dynamodb=None, cloudwatch=None, lease_table="unused")
    views = {"default": default_view(prefix)}
    try:
        started = time.monotonic()
        down = refresh_search(sources, views, "default", "5m")
        assert time.monotonic() - started < 3  # fails fast: the next tick comes in a second
        panels, (banner, hidden, _stamp) = down[: len(QUESTIONS)], down[len(QUESTIONS) :]
        assert all(p is data_no_update() for p in panels) and hidden is False
        assert banner.startswith(f"OpenSearch at {proxy.url} is not reachable (ConnectionError)")
        assert "Traceback" not in banner

        proxy.up()
        up = refresh_search(sources, views, "default", "5m")
        assert up[-3:-1] == ["", True]
        top_users = up[[q.key for q in QUESTIONS].index("top_users")]
        assert top_users["data"][0]["y"] == ["bob", "carol", "alice"]
    finally:
        proxy.down()
        search.close()


def data_no_update():
    from dash import no_update

    return no_update


# --- the lease table and CloudWatch ---------------------------------------------------------------
def _shard(shard_id: str, parents: tuple[str, ...] = ()) -> Shard:
    return Shard(shard_id, parents, closed=bool(not parents), starting_sequence_number="0", hash_key_range=(0, 1))


def test_shard_status_reads_each_workers_lease(dynamodb, lease_table, unique_name):
    table = LeaseTable(dynamodb, lease_table, unique_name)
    parent, left, right = "shardId-000000000000", "shardId-000000000001", "shardId-000000000002"
    table.sync([_shard(parent), _shard(left, (parent,)), _shard(right, (parent,))])
    try:
        done = table.take(parent, "run-a", duration_s=60)
        assert done is not None
        table.commit(done, "49000001", "state/p", finished=True, records=40, millis_behind_latest=0)
        table.release(done)
        working = table.take(left, "run-b", duration_s=60)
        assert working is not None
        table.commit(working, "49000077", "state/l", finished=False, records=12, millis_behind_latest=1234)
        assert table.take(right, "run-c", duration_s=0.5) is not None
        time.sleep(1)  # run-c stops renewing: its lease expires without a release

        rows = data.shard_status(dynamodb, lease_table, PipelineView("p", "", DEFAULT_FIELDS, unique_name, False))
        by_shard = {r["shard"]: r for r in rows}
        assert [r["shard"] for r in rows] == [parent, left, right]  # lineage order
        assert by_shard[parent]["state"] == "finished"
        assert by_shard[left] | {"committed_s_ago": 0} == {
            "shard": left,
            "state": "working",
            "owner": "run-b",
            "checkpoint": "49000077",
            "behind_ms": 1234,
            "committed_s_ago": 0,
            "records": 12,
        }
        assert 0 <= by_shard[left]["committed_s_ago"] < 30
        assert (by_shard[right]["state"], by_shard[right]["owner"]) == ("expired", None)
    finally:
        table.delete_all()


def test_stream_metrics_read_the_platforms_metrics(cloudwatch, unique_name):
    now = datetime.now(UTC)
    m.publish(
        cloudwatch,
        [
            m.datum(m.ITERATOR_AGE, 900, "Milliseconds", unique_name, now - timedelta(seconds=30)),
            m.datum(m.ITERATOR_AGE, 1500, "Milliseconds", unique_name, now - timedelta(seconds=20)),
            m.datum(m.RECORDS_PROCESSED, 400, "Count", unique_name, now - timedelta(seconds=30)),
            m.datum(m.RECORDS_PROCESSED, 200, "Count", unique_name, now - timedelta(seconds=20)),
            m.datum(m.ANOMALIES, 3, "Count", unique_name, now - timedelta(seconds=20)),
        ],
    )
    view = PipelineView("p", "", DEFAULT_FIELDS, unique_name, native_metrics=False)
    rows = {r["metric"]: r["value"] for r in data.stream_metrics(cloudwatch, view, now + timedelta(seconds=1))}
    assert rows["iterator age, max (ms)"] == 1500
    assert rows["records processed / s"] == pytest.approx(600 / 300)
    assert rows["anomalies detected"] == 3
    assert rows["records rejected"] is None  # no datapoint: shown as "–", not 0
