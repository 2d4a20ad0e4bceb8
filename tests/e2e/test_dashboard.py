"""The live dashboard page, end to end in headless Chromium, as a user sees it under `make dev`:

(a) the page renders its charts and tables with the data indexed (by the platform's indexer) under
    the test's prefix, the shards panel the test stream's worker from the lease table, and the
    metrics panel what it published to CloudWatch;
(b) more events indexed while the page is open change a chart within a few seconds, with no reload;
(c) clicking a recent anomaly drills down to that user's recent events.

The screenshot goes to .stack/screenshots/dashboard.png (ETL_E2E_SCREENSHOTS=docs/screenshots
refreshes the README's).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from etl_platform.ops import metrics as m
from etl_platform.search.indexer import index_processed_frame
from etl_platform.stream.leases import LeaseTable
from etl_platform.stream.shards import Shard
from tests.e2e.conftest import DashboardPage
from tests.e2e.test_dagster_ui import _expect, _shot
from tests.integration.test_dashboard_data import recent_known_frame

pytestmark = [pytest.mark.e2e, pytest.mark.stack, pytest.mark.timeout(180)]

PAGE_TIMEOUT_MS = 30_000  # first render on a loaded 2-core machine
CHANGE_TIMEOUT_MS = 8_000  # searchable ~1 s after indexing, then the next 1 s tick: ~2 s, with slack for load
SHARDS = ("shardId-000000000000", "shardId-000000000001")


def test_dashboard_renders_updates_and_drills_down(
    page, dashboard: DashboardPage, client, s3, dynamodb, lease_table, cloudwatch
):
    from playwright.sync_api import expect

    # The first batch: 25 events of four sources, 8 anomalies of three users, over the last ~3 minutes.
    first = recent_known_frame(datetime.now(UTC) - timedelta(seconds=1), step_s=8)
    assert index_processed_frame(client, first, s3, None, dashboard.prefix).failed == 0
    leases = LeaseTable(dynamodb, lease_table, dashboard.stream)
    leases.sync([Shard(s, (), False, "0", (0, 1)) for s in SHARDS])
    holder = leases.take(SHARDS[0], "run-e2e-worker", duration_s=120)
    assert holder is not None
    leases.commit(holder, "49000000000000000042", "state/x", finished=False, records=25, millis_behind_latest=250)
    # What that worker's batches publish (ops.metrics): its lag and 600 records in the last minute.
    m.publish(
        cloudwatch,
        [
            m.datum(m.ITERATOR_AGE, 250, "Milliseconds", dashboard.stream),
            m.datum(m.RECORDS_PROCESSED, 600, "Count", dashboard.stream),
        ],
    )

    try:
        page.goto(dashboard.url)
        # (a) every chart and table with the data: one line per source, a bar series per event type,
        # a bar per anomalous user, a row per anomaly, and the worker holding its shard.
        checks = [
            ("#event_rate .scatterlayer .trace", 4, "a line per source (web, iot, api, app_log)"),
            ("#anomalies_over_time .barlayer .trace", 4, "a bar series per event type"),
            ("#rolling_average .scatterlayer .trace", 4, "a line per event type"),
            ("#top_users .barlayer .point", 3, "a bar per anomalous user (bob, carol, alice)"),
            ("#latest_anomalies tr.clickable", 8, "a row per anomaly"),
            ("#anomaly_breakdown tbody tr", 4, "a row per (event type, source)"),
        ]
        for selector, count, what in checks:
            _expect(
                page,
                dashboard,
                lambda s=selector, n=count: expect(page.locator(s)).to_have_count(n, timeout=PAGE_TIMEOUT_MS),
                f"{selector}: expected {what}",
            )
        newest = page.locator("#latest_anomalies tr.clickable").first
        _expect(page, dashboard, lambda: expect(newest).to_contain_text("carol"), "the newest anomaly is carol's")
        _expect(page, dashboard, lambda: expect(newest).to_contain_text("1,004.00"), "with its value")
        users = page.locator("#top_users .yaxislayer-above text").all_text_contents()
        assert sorted(users) == ["alice", "bob", "carol"], f"the top-users chart's bars are {users}"
        worker = page.locator("#shards tr").filter(has_text=SHARDS[0])
        _expect(page, dashboard, lambda: expect(worker).to_contain_text("working"), "the shard's worker is working")
        _expect(page, dashboard, lambda: expect(worker).to_contain_text("run-e2e-worker"), "owned by its run")
        tiles = page.locator("#metrics .tile")
        _expect(page, dashboard, lambda: expect(tiles.first).to_contain_text("250.0"), "the stream's iterator age")
        _expect(page, dashboard, lambda: expect(tiles.nth(1)).to_contain_text("2.0"), "600 records / 5 min = 2.0/s")
        _expect(page, dashboard, lambda: expect(page.locator("#banner")).to_be_hidden(), "no outage banner")

        # (b) a second batch (alice's rows as a new user, dave) appears without a reload.
        second = recent_known_frame(datetime.now(UTC), step_s=2, tag="b-", rename={"alice": "dave"})
        assert index_processed_frame(client, second, s3, None, dashboard.prefix).failed == 0
        indexed = time.monotonic()
        _expect(
            page,
            dashboard,
            lambda: expect(page.locator("#top_users .barlayer .point")).to_have_count(4, timeout=CHANGE_TIMEOUT_MS),
            "the top-users chart did not gain dave's bar after new events were indexed",
        )
        print(f"dashboard: new events on the page {time.monotonic() - indexed:.1f}s after indexing")
        _expect(
            page,
            dashboard,
            lambda: expect(page.locator("#latest_anomalies tr.clickable")).to_have_count(16),
            "the recent anomalies table did not take the new anomalies",
        )

        # (c) click bob's temperature anomaly: his recent events, that one highlighted.
        row = page.locator("#latest_anomalies tr.clickable").filter(has_text="temperature_reading")
        row.first.click()
        title = page.locator("#drilldown-title")
        _expect(page, dashboard, lambda: expect(title).to_contain_text("bob's recent events"), "drill-down title")
        bob_events = first.filter(first["user_id"] == "bob").height + second.filter(second["user_id"] == "bob").height
        _expect(
            page,
            dashboard,
            lambda: expect(page.locator("#drilldown tbody tr")).to_have_count(bob_events),
            f"the drill-down lists bob's {bob_events} events",
        )
        _expect(
            page,
            dashboard,
            lambda: expect(page.locator("#drilldown tr.selected")).to_contain_text("temperature_reading-05"),
            "the clicked anomaly is highlighted among them",
        )
        page.set_viewport_size({"width": 1440, "height": 1750})  # the whole page in the picture
        _shot(page, "dashboard.png")
    finally:
        leases.delete_all()
