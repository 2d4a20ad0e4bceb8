"""The dashboard's start-up checks, its windows and its figures (no server needed).

A bad setting stops `python -m etl_platform.dashboard` before it serves, with exit code 2 and a
message naming the setting (no traceback).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from etl_platform.config import ConfigError, load_settings
from etl_platform.dashboard import DEFAULT_PORT, dashboard_port, dashboard_url
from etl_platform.dashboard.data import WINDOWS, Sources
from etl_platform.dashboard.layout import describe_outage, series_figure
from etl_platform.search.queries import OTHER


def test_the_port_and_url_come_from_etl_dashboard_port():
    assert dashboard_port({}) == DEFAULT_PORT == 8050
    assert dashboard_url({"ETL_DASHBOARD_PORT": "8123"}) == "http://127.0.0.1:8123"
    for bad in ("port", "0", "70000", "-1"):
        with pytest.raises(ConfigError, match=f"ETL_DASHBOARD_PORT='{bad}' is not a TCP port"):
            dashboard_port({"ETL_DASHBOARD_PORT": bad})


@pytest.mark.parametrize(
    "env,named",
    [
        ({"ETL_DASHBOARD_PORT": "port"}, "ETL_DASHBOARD_PORT='port' is not a TCP port"),
        ({"ETL_PROFILE": "cloud"}, "ETL_PROFILE='cloud'"),
        ({"ETL_PIPELINES_FILE": "/nonexistent/pipelines.yaml"}, "ETL_PIPELINES_FILE='/nonexistent/pipelines.yaml'"),
        ({"ETL_OPENSEARCH_PORT": "x"}, "ETL_OPENSEARCH_PORT='x'"),
    ],
)
def test_bad_configuration_fails_at_start_up_naming_the_setting(env, named):
    base = {k: v for k, v in os.environ.items() if not k.startswith("ETL_")}
    with socket.socket() as probe:  # a free port, never reached: the checks come first
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    result = subprocess.run(
        [sys.executable, "-m", "etl_platform.dashboard"],
        env={**base, "ETL_DASHBOARD_PORT": port, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert named in result.stderr and "Traceback" not in result.stderr


def test_the_aws_profile_needs_the_domains_user():
    aws = replace(load_settings({}), profile="aws", opensearch_url="https://search.example.com")
    with pytest.raises(ConfigError, match="ETL_OPENSEARCH_USERNAME is required"):
        Sources.connect(aws, {})
    with pytest.raises(ConfigError, match="ETL_OPENSEARCH_PASSWORD is required"):
        Sources.connect(aws, {"ETL_OPENSEARCH_USERNAME": "etl-platform"})
    sources = Sources.connect(aws, {"ETL_OPENSEARCH_USERNAME": "u", "ETL_OPENSEARCH_PASSWORD": "p"})
    assert sources.opensearch_url == "https://search.example.com"


def test_windows_are_whole_buckets_ending_after_now():
    now = datetime(2026, 6, 1, 12, 0, 7, 500_000, tzinfo=UTC)
    assert WINDOWS["15m"].bounds(now) == (
        datetime(2026, 6, 1, 11, 45, 10, tzinfo=UTC),
        datetime(2026, 6, 1, 12, 0, 10, tzinfo=UTC),
    )
    for window in WINDOWS.values():
        start, end = window.bounds(now)
        assert start < now < end and (end - start).total_seconds() == window.seconds
        assert end.timestamp() % window.bucket_s == 0
        assert 150 <= window.seconds / window.bucket_s <= 360  # points per series: detail without the cost


def test_a_series_figure_has_a_trace_per_group_in_rank_order():
    rows = [
        {"time": "2026-06-01T12:00:00.000Z", "group": "web", "count": 3, "per_second": 3.0},
        {"time": "2026-06-01T12:00:00.000Z", "group": OTHER, "count": 1, "per_second": 1.0},
        {"time": "2026-06-01T12:00:01.000Z", "group": "web", "count": 0, "per_second": 0.0},
        {"time": "2026-06-01T12:00:01.000Z", "group": OTHER, "count": 2, "per_second": 2.0},
    ]
    figure = series_figure(rows, "per_second", "events / s", "default/5m")
    assert [(t["name"], t["x"], t["y"]) for t in figure["data"]] == [
        ("web", ["2026-06-01 12:00:00.000", "2026-06-01 12:00:01.000"], [3.0, 0.0]),
        (OTHER, ["2026-06-01 12:00:00.000", "2026-06-01 12:00:01.000"], [1.0, 2.0]),
    ]
    assert figure["layout"]["uirevision"] == "default/5m"
    empty = series_figure([{**r, "count": 0} for r in rows], "per_second", "events / s", "x")
    assert empty["data"] == [] and "no documents" in empty["layout"]["annotations"][0]["text"]


def test_an_outage_is_one_sentence_naming_the_cluster():
    from opensearchpy.exceptions import AuthorizationException, ConnectionError

    down = describe_outage("https://search.example.com", ConnectionError("N/A", "refused", OSError("refused")))
    assert down.startswith("OpenSearch at https://search.example.com is not reachable (ConnectionError).")
    denied = describe_outage("https://search.example.com", AuthorizationException(403, "security_exception", {}))
    assert "answered HTTP 403 (security_exception)" in denied
