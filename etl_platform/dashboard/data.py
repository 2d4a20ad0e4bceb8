"""The page's data layer: plain rows (lists of dicts) from OpenSearch aggregations, the lease table and
CloudWatch, per pipeline. Nothing here knows about the page's layout or its library.

Every OpenSearch answer is an aggregation or a top-k request of at most a screenful (`QUESTIONS`
says which, and `search.queries` asks it): what comes back is sized by the time window and the
number of groups, never by the number of documents, and no document list is paged through. The
event-time range keeps the cluster's work to the window (another day's index has nothing in range).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from etl_platform import aws
from etl_platform.config import ConfigError, Settings
from etl_platform.dashboard.questions import (
    ANOMALIES_OVER_TIME,
    ANOMALY_BREAKDOWN,
    EVENT_RATE,
    LATEST_ANOMALIES,
    ROLLING_AVERAGE,
    TOP_USERS,
    Question,
    field_of,
)
from etl_platform.ops import metrics as m
from etl_platform.pipelines import Pipeline
from etl_platform.search import queries
from etl_platform.search.client import make_client
from etl_platform.search.queries import QueryFields
from etl_platform.stream.leases import Lease, LeaseTable

TOP_USERS_LIMIT = 10
LATEST_LIMIT = 20  # rows of the recent-anomalies table
DRILLDOWN_LIMIT = 50  # a user's recent events
SERIES_LIMIT = 10  # groups per chart; the rest is one "(other)" series
METRICS_MINUTES = 5


@dataclass(frozen=True)
class Window:
    """A time window ending now, and the bucket its charts use (180 to 360 points per series)."""

    label: str
    seconds: int
    bucket_s: int

    def bounds(self, now: datetime | None = None) -> tuple[datetime, datetime]:
        """[start, end) in whole buckets, the last one holding `now`."""
        now = now or datetime.now(UTC)
        step = self.bucket_s
        end = datetime.fromtimestamp((int(now.timestamp()) // step + 1) * step, UTC)
        return end - timedelta(seconds=self.seconds), end


WINDOWS: dict[str, Window] = {
    w.label: w
    for w in (
        Window("5m", 300, 1),
        Window("15m", 900, 5),
        Window("1h", 3600, 15),
        Window("6h", 6 * 3600, 60),
        Window("24h", 24 * 3600, 300),
    )
}
DEFAULT_WINDOW = "15m"


def window(label: str) -> Window:
    if label not in WINDOWS:
        raise ValueError(f"unknown window {label!r}; expected one of {', '.join(WINDOWS)}")
    return WINDOWS[label]


@dataclass(frozen=True)
class PipelineView:
    """What the page needs of a pipeline: its indices, its fields and its stream."""

    name: str
    prefix: str  # the pipeline's index prefix (the deployment's, then its own)
    names: QueryFields
    stream: str
    native_metrics: bool  # Kinesis measures the stream itself (AWS/Kinesis), see ops.metrics

    @classmethod
    def of(cls, pipeline: Pipeline, settings: Settings) -> PipelineView:
        return cls(
            name=pipeline.name,
            prefix=pipeline.index_prefix,
            names=QueryFields.of(pipeline.contract),
            stream=pipeline.stream.name,
            native_metrics=m.native_metrics_for(settings, pipeline.stream.kind),
        )


@dataclass(frozen=True)
class Sources:
    """The clients the page reads through, made once at start-up."""

    opensearch_url: str
    search: Any
    dynamodb: Any
    cloudwatch: Any
    lease_table: str

    @classmethod
    def connect(cls, settings: Settings, env: Mapping[str, str] | None = None) -> Sources:
        """Clients for the profile's endpoints; ConfigError names a missing setting. They fail fast
        (short timeouts, no retries): the page asks again every second anyway."""
        env = os.environ if env is None else env
        if settings.profile == "aws":
            for var in ("ETL_OPENSEARCH_USERNAME", "ETL_OPENSEARCH_PASSWORD"):
                if not env.get(var):
                    raise ConfigError(f"{var} is required for ETL_PROFILE=aws but is not set (the domain's user)")
        search = make_client(settings, env, timeout=5.0)
        search.transport.max_retries = 0
        boto = {"retries": {"max_attempts": 1, "mode": "standard"}, "connect_timeout": 2, "read_timeout": 5}
        return cls(
            opensearch_url=settings.opensearch_url,
            search=search,
            dynamodb=aws.client("dynamodb", settings, **boto),
            cloudwatch=aws.client("cloudwatch", settings, **boto),
            lease_table=settings.lease_table,
        )


# --- OpenSearch -----------------------------------------------------------------------------------
def _series(client: Any, view: PipelineView, question: Question, win: Window, now: datetime | None) -> list[dict]:
    start, end = win.bounds(now)
    split = question.fields(view.names)["split"]
    average = next((field_of(f, view.names) for agg, f in question.metrics if agg == "avg" and f), None)
    by = split[0] if split else None
    return queries.over_time(
        client, question.family, start, end, win.bucket_s, by, view.prefix, SERIES_LIMIT, average=average
    )


def event_rate(client: Any, view: PipelineView, win: Window, now: datetime | None = None) -> list[dict]:
    """Events per second by source, per bucket: rows {time, group, count, per_second}. The bucket
    holding `now` is divided by the seconds it has had so far, so the newest point is a rate too."""
    now = now or datetime.now(UTC)
    rows = _series(client, view, EVENT_RATE, win, now)
    for row in rows:
        started = datetime.fromisoformat(row["time"].replace("Z", "+00:00"))
        seconds = max(1.0, min(win.bucket_s, (now - started).total_seconds()))
        row["per_second"] = row["count"] / seconds
    return rows


def anomalies_over_time(client: Any, view: PipelineView, win: Window, now: datetime | None = None) -> list[dict]:
    """Anomalies per bucket by event type: rows {time, group, count}."""
    return _series(client, view, ANOMALIES_OVER_TIME, win, now)


def rolling_average(client: Any, view: PipelineView, win: Window, now: datetime | None = None) -> list[dict]:
    """The stream's rolling average (`avg_value`) per bucket and event type: rows {time, group, count, average}."""
    return _series(client, view, ROLLING_AVERAGE, win, now)


def top_users(client: Any, view: PipelineView, win: Window, now: datetime | None = None) -> list[dict]:
    """Users with the most anomalies in the window (`queries.top_anomalous_users`)."""
    start, end = win.bounds(now)
    return queries.top_anomalous_users(client, start, end, view.prefix, TOP_USERS_LIMIT, view.names)


def anomaly_breakdown(client: Any, view: PipelineView, win: Window, now: datetime | None = None) -> list[dict]:
    """Anomalies per event type and source in the window (`queries.anomaly_breakdown`)."""
    start, end = win.bounds(now)
    return queries.anomaly_breakdown(client, start, end, view.prefix, names=view.names)


def latest_anomalies(client: Any, view: PipelineView, win: Window, now: datetime | None = None) -> list[dict]:
    """The newest anomalies in the window, newest first."""
    start, end = win.bounds(now)
    return queries.latest_anomalies(client, start, end, view.prefix, LATEST_LIMIT, view.names)


def user_recent_events(
    client: Any, view: PipelineView, user: str, win: Window, now: datetime | None = None
) -> list[dict]:
    """The drill-down: a user's newest events in the window, newest first."""
    start, end = win.bounds(now)
    return queries.user_events(
        client, user, start, end, view.prefix, DRILLDOWN_LIMIT, names=view.names, newest_first=True
    )


PANELS = {
    EVENT_RATE.key: event_rate,
    ANOMALIES_OVER_TIME.key: anomalies_over_time,
    ROLLING_AVERAGE.key: rolling_average,
    TOP_USERS.key: top_users,
    ANOMALY_BREAKDOWN.key: anomaly_breakdown,
    LATEST_ANOMALIES.key: latest_anomalies,
}
_pool = ThreadPoolExecutor(max_workers=len(PANELS), thread_name_prefix="dashboard-search")


def search_panels(client: Any, view: PipelineView, win: Window, now: datetime | None = None) -> dict[str, list[dict]]:
    """Every OpenSearch panel of the page for one instant, by question key; the requests run side by
    side (a refresh costs the slowest, not the sum). The first error is raised."""
    now = now or datetime.now(UTC)
    futures = {key: _pool.submit(ask, client, view, win, now) for key, ask in PANELS.items()}
    return {key: future.result() for key, future in futures.items()}


# --- the lease table and CloudWatch ---------------------------------------------------------------
def worker_state(lease: Lease, now: float) -> str:
    """finished (a closed shard read to its end), working (its lease is held), expired (its holder
    stopped renewing without releasing it: a dead or stuck worker until another takes it) or free."""
    if lease.finished:
        return "finished"
    if lease.held(now):
        return "working"
    return "expired" if lease.owner else "free"


def shard_status(dynamodb: Any, table: str, view: PipelineView, now: float | None = None) -> list[dict]:
    """Per shard of the pipeline's stream, in lineage order: worker state and owner, checkpoint,
    lag at its last commit (`millis_behind_latest`) and how long ago that commit was."""
    now = time.time() if now is None else now
    leases = LeaseTable(dynamodb, table, view.stream).all()
    return [
        {
            "shard": lease.shard_id,
            "state": worker_state(lease, now),
            "owner": lease.owner if lease.held(now) else None,
            "checkpoint": lease.checkpoint,
            "behind_ms": lease.millis_behind_latest,
            "committed_s_ago": int(now - lease.committed_at) if lease.committed_at else None,
            "records": lease.records,
        }
        for lease in sorted(leases.values(), key=lambda lease: (lease.depth, lease.shard_id))
    ]


# (label, metric, statistic, per second): what the stream-metrics panel shows over the last minutes.
STREAM_METRICS = (
    ("iterator age, max (ms)", m.ITERATOR_AGE, "Maximum", False),
    ("records processed / s", m.RECORDS_PROCESSED, "Sum", True),
    ("records rejected", m.RECORDS_REJECTED, "Sum", False),
    ("anomalies detected", m.ANOMALIES, "Sum", False),
    ("search documents failed", m.SEARCH_FAILED, "Sum", False),
    ("worker CPU, avg (%)", m.WORKER_CPU, "Average", False),
)


def stream_metrics(
    cloudwatch: Any, view: PipelineView, now: datetime | None = None, minutes: int = METRICS_MINUTES
) -> list[dict]:
    """The stream's platform metrics over the last `minutes` (rows {metric, value}; None: no datapoint),
    each read where it lives (`metric_namespace`: AWS/Kinesis for what Kinesis measures itself)."""
    now = now or datetime.now(UTC)
    start = now - timedelta(minutes=minutes)
    end = now + timedelta(seconds=1)  # CloudWatch cuts EndTime to whole seconds: keep this second's datapoints
    rows = []
    for label, name, stat, per_second in STREAM_METRICS:
        namespace = m.metric_namespace(name, view.native_metrics)
        value = m.statistic(cloudwatch, name, view.stream, start, end, stat, namespace)
        if value is not None and per_second:
            value /= minutes * 60
        rows.append({"metric": label, "value": value})
    return rows
