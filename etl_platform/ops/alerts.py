"""Anomaly and threshold alerts: find them, send each once to every sink, never lose one.

Framework-free; the Dagster sensor (`sensors/alerts.py`) only builds the sinks and calls `tick`.

Finding. New anomalies are documents in the `<prefix>anomalies` alias whose `indexed_at` is at or
after the scan cursor minus an overlap (documents from concurrent micro-batches become searchable a
refresh interval after they are written, possibly out of order), read in (indexed_at, event_id) order
with `search_after`. Anomalies that *arrived* longer than `max_age_s` ago are not news (a backfill
that reindexes an old day must not page anyone) and are skipped. Threshold breaches are increases in
the number of objects under `errors/dt=D/` or `search-failed/dt=D/` for recent days.

Delivering. Every sink has its own outbox in the lake, `_alerts/<namespace>/outbox/<sink>.json`:
alerts pending for it (in order) and the ids it already delivered (the dedupe record, kept
`dedupe_retention_s`, longer than `max_age_s`, so a re-found alert is recognised). A tick first
enqueues what it found into every outbox and saves them, then saves the scan cursor, then lets each
sink work through its own pending list, stopping at its first failure. So a sink that is down only
delays its alerts (they stay pending and are retried next tick) while the others carry on, and the
cursor moving on never loses an alert. Delivery is at-least-once: a crash between a send and the
outbox save re-sends that alert next tick, with the same `id` (the webhook's `Idempotency-Key`), so
receivers can drop the repeat.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from etl_platform.lake import layout

ALERTS_PREFIX = "_alerts"
THRESHOLD_DATASETS = ("errors", "search-failed")


@dataclass(frozen=True)
class Alert:
    id: str  # anomalies: the event_id; thresholds: dataset, day and breach number
    kind: str  # "anomaly" | "threshold"
    title: str
    time: str  # ISO-8601 UTC: the event time, or when the breach was seen
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Alert:
        return cls(**data)


class SinkError(RuntimeError):
    """A sink could not deliver an alert now; the alert stays pending for the next tick."""


class Sink(Protocol):
    name: str

    def send(self, alert: Alert) -> None: ...


# --- sinks ----------------------------------------------------------------------------------------
class LogSink:
    """Writes alerts to a logger (the Dagster log in the sensor); cannot fail."""

    def __init__(self, log: Callable[[str], None], name: str = "log") -> None:
        self.log, self.name = log, name

    def send(self, alert: Alert) -> None:
        self.log(f"ALERT [{alert.kind}] {alert.title} (id={alert.id})")


class WebhookSink:
    """POSTs the alert as JSON; retries connection errors, 408, 429 and 5xx with exponential backoff.

    After `attempts` tries it raises `SinkError`; the alert stays pending and the next tick retries, so
    a receiver that is down for longer than one tick's retries delays alerts without losing any.
    """

    def __init__(
        self,
        url: str,
        name: str = "webhook",
        timeout_s: float = 5.0,
        attempts: int = 4,
        backoff_s: float = 0.5,
        max_backoff_s: float = 4.0,
        session: Any = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        import requests

        self.url, self.name, self.timeout_s, self.attempts = url, name, timeout_s, max(1, attempts)
        self.backoff_s, self.max_backoff_s, self.sleep = backoff_s, max_backoff_s, sleep
        self.session = session or requests.Session()
        self.session.trust_env = False  # an http_proxy in the environment must not see alert traffic

    def send(self, alert: Alert) -> None:
        import requests

        error = ""
        for attempt in range(self.attempts):
            if attempt:
                self.sleep(min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1)))
            try:
                response = self.session.post(
                    self.url,
                    data=json.dumps(alert.as_dict()),
                    timeout=self.timeout_s,
                    headers={"Content-Type": "application/json", "Idempotency-Key": alert.id},
                )
            except requests.RequestException as exc:
                error = f"{type(exc).__name__}: {exc}"
                continue
            if response.status_code < 300:
                return
            error = f"HTTP {response.status_code}: {response.text[:200]}"
            if response.status_code not in (408, 429) and response.status_code < 500:
                break  # the receiver refuses this payload: retrying now will not help
        raise SinkError(f"webhook {self.url}: {error}")


class SnsSink:
    """Publishes the alert to an SNS topic (subject = title, message = the alert as JSON)."""

    def __init__(self, sns: Any, topic_arn: str, name: str = "sns") -> None:
        self.sns, self.topic_arn, self.name = sns, topic_arn, name

    def send(self, alert: Alert) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.sns.publish(
                TopicArn=self.topic_arn,
                Subject=alert.title[:100],
                Message=json.dumps(alert.as_dict()),
                MessageAttributes={
                    "kind": {"DataType": "String", "StringValue": alert.kind},
                    "alert_id": {"DataType": "String", "StringValue": alert.id},
                },
            )
        except (BotoCoreError, ClientError) as exc:
            raise SinkError(f"sns {self.topic_arn}: {exc}") from exc


# --- persistent state -----------------------------------------------------------------------------
def _load_json(s3: Any, bucket: str, key: str) -> dict[str, Any] | None:
    try:
        return json.loads(layout.get(s3, bucket, key))
    except s3.exceptions.NoSuchKey:
        return None


def _save_json(s3: Any, bucket: str, key: str, data: dict[str, Any]) -> None:
    layout.put(s3, bucket, key, json.dumps(data, separators=(",", ":"), sort_keys=True).encode())


class Outbox:
    """One sink's pending alerts (in order) and the ids it delivered, persisted as one lake object."""

    def __init__(self, s3: Any, bucket: str, key: str) -> None:
        self.s3, self.bucket, self.key = s3, bucket, key
        data = _load_json(s3, bucket, key) or {}
        self.pending: list[dict[str, Any]] = data.get("pending", [])
        self.delivered: dict[str, str] = data.get("delivered", {})  # id -> when delivered (ISO)
        self.dirty = False

    def enqueue(self, alerts: Iterable[Alert]) -> int:
        queued = {a["id"] for a in self.pending}
        added = 0
        for alert in alerts:
            if alert.id in self.delivered or alert.id in queued:
                continue
            self.pending.append(alert.as_dict())
            queued.add(alert.id)
            added += 1
        self.dirty = self.dirty or added > 0
        return added

    def deliver(self, sink: Sink, now: datetime, limit: int) -> tuple[int, str | None]:
        """Send pending alerts in order until one fails or `limit` are sent; returns (sent, error)."""
        sent, error = 0, None
        while self.pending and sent < limit:
            alert = Alert.from_dict(self.pending[0])
            try:
                sink.send(alert)
            except SinkError as exc:
                error = str(exc)
                break
            except Exception as exc:  # a sink bug must not lose the alert either
                error = f"{type(exc).__name__}: {exc}"
                break
            self.pending.pop(0)
            self.delivered[alert.id] = now.isoformat()
            self.dirty = True
            sent += 1
        return sent, error

    def prune(self, before: datetime) -> None:
        """Forget delivered ids older than the dedupe retention (their alerts can no longer be found)."""
        cutoff = before.isoformat()
        old = [k for k, when in self.delivered.items() if when < cutoff]
        for k in old:
            del self.delivered[k]
        self.dirty = self.dirty or bool(old)

    def save(self) -> None:
        if self.dirty:
            _save_json(self.s3, self.bucket, self.key, {"pending": self.pending, "delivered": self.delivered})
            self.dirty = False


# --- finding alerts -------------------------------------------------------------------------------
@dataclass(frozen=True)
class AlertConfig:
    overlap_s: float = 120.0  # re-read this much before the cursor: refresh lag, concurrent writers
    max_age_s: float | None = 2 * 86400.0  # anomalies that arrived earlier are not alerted (backfills)
    dedupe_retention_s: float = 7 * 86400.0  # must exceed max_age_s + overlap_s
    page_size: int = 500
    max_scan: int = 10_000  # anomaly documents read per tick; a backlog continues next tick
    max_send: int = 1_000  # alerts sent per sink per tick
    threshold_datasets: tuple[str, ...] = THRESHOLD_DATASETS
    threshold_days: int = 2  # today and yesterday (UTC partitions)


def anomaly_alert(hit: dict[str, Any]) -> Alert:
    doc = hit["_source"]
    value, avg = doc.get("value"), doc.get("avg_value")
    return Alert(
        id=doc.get("event_id") or hit["_id"],
        kind="anomaly",
        title=f"Anomaly: {doc.get('event_type')}={value} for {doc.get('user_id')} ({doc.get('source')})",
        time=doc.get("event_time", ""),
        details={
            "event_id": doc.get("event_id") or hit["_id"],
            "user_id": doc.get("user_id"),
            "event_type": doc.get("event_type"),
            "source": doc.get("source"),
            "value": value,
            "avg_value": avg,
            "event_time": doc.get("event_time"),
            "arrival_time": doc.get("arrival_time"),
            "index": hit.get("_index"),
        },
    )


def _iso_millis(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


@dataclass
class TickReport:
    anomalies_found: int = 0  # documents read (the overlap re-reads some)
    new_alerts: int = 0  # alerts not seen before by at least one sink
    thresholds: list[str] = field(default_factory=list)
    sent: dict[str, int] = field(default_factory=dict)
    pending: dict[str, int] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    cursor: str | None = None
    catching_up: bool = False

    def summary(self) -> str:
        parts = [f"{self.anomalies_found} anomaly docs read, {self.new_alerts} new alerts"]
        if self.thresholds:
            parts.append(f"breaches: {', '.join(self.thresholds)}")
        parts += [
            f"{name}: sent {self.sent.get(name, 0)}, pending {self.pending.get(name, 0)}"
            + (f" ({self.errors[name]})" if name in self.errors else "")
            for name in self.pending
        ]
        if self.catching_up:
            parts.append("backlog: continuing next tick")
        return "; ".join(parts)


class AlertMonitor:
    """One alerting pipeline (scan cursor + one outbox per sink), advanced by `tick`."""

    def __init__(
        self,
        client: Any,
        s3: Any,
        bucket: str,
        sinks: Sequence[Sink],
        prefix: str = "",
        namespace: str | None = None,
        config: AlertConfig | None = None,
    ) -> None:
        self.client, self.s3, self.bucket, self.sinks = client, s3, bucket, list(sinks)
        self.prefix = prefix
        self.config = config or AlertConfig()
        names = [s.name for s in self.sinks]
        if len(set(names)) != len(names):
            raise ValueError(f"sink names must be unique: {names}")
        self.root = f"{ALERTS_PREFIX}/{namespace or (prefix.rstrip('-_.') or 'default')}/"

    @property
    def state_key(self) -> str:
        return f"{self.root}state.json"

    def outbox_key(self, sink: str) -> str:
        return f"{self.root}outbox/{sink}.json"

    # --- scanning ---------------------------------------------------------------------------------
    def _scan_anomalies(self, state: dict[str, Any], now: datetime, report: TickReport) -> list[Alert]:
        from etl_platform.search.indices import ANOMALIES, alias_name

        filters: list[dict[str, Any]] = []
        cursor = state.get("indexed_at_ms")
        if cursor is not None:
            since = int(cursor - self.config.overlap_s * 1000)
            filters.append({"range": {"indexed_at": {"gte": since, "format": "epoch_millis"}}})
        if self.config.max_age_s is not None:
            oldest = now - timedelta(seconds=self.config.max_age_s)
            filters.append(
                {"range": {"arrival_time": {"gte": int(oldest.timestamp() * 1000), "format": "epoch_millis"}}}
            )
        after = state.get("after")
        alerts: list[Alert] = []
        newest = cursor
        while True:
            body: dict[str, Any] = {
                "size": self.config.page_size,
                "query": {"bool": {"filter": filters}},
                "sort": [{"indexed_at": "asc"}, {"event_id": "asc"}],
                "track_total_hits": False,
            }
            if after is not None:
                body["search_after"] = after
            hits = self.client.search(
                index=alias_name(ANOMALIES, self.prefix), body=body, ignore_unavailable=True, allow_no_indices=True
            )["hits"]["hits"]
            for hit in hits:
                alerts.append(anomaly_alert(hit))
                newest = hit["sort"][0] if newest is None else max(newest, hit["sort"][0])
            if hits:
                after = hits[-1]["sort"]
            if len(hits) < self.config.page_size:
                state["after"] = None
                state["indexed_at_ms"] = newest
                break
            if len(alerts) >= self.config.max_scan:
                state["after"] = after  # continue exactly here next tick; cursor stays put
                report.catching_up = True
                break
        report.anomalies_found = len(alerts)
        report.cursor = _iso_millis(ms) if (ms := state.get("indexed_at_ms")) is not None else None
        return alerts

    def _scan_thresholds(self, state: dict[str, Any], now: datetime, report: TickReport) -> list[Alert]:
        counts: dict[str, dict[str, int]] = state.setdefault("thresholds", {})
        alerts = []
        today = now.astimezone(UTC).date()
        days = [today - timedelta(days=n) for n in range(self.config.threshold_days)]
        for dataset in self.config.threshold_datasets:
            for day in days:
                prefix = layout.day_prefix(dataset, day)
                count = len(layout.list_keys(self.s3, self.bucket, prefix))
                seen = counts.setdefault(prefix, {"count": 0, "breaches": 0})
                if count > seen["count"]:
                    seen["breaches"] += 1
                    alerts.append(
                        Alert(
                            id=f"threshold:{prefix}#{seen['breaches']}",
                            kind="threshold",
                            title=f"{dataset} objects for {day.isoformat()} rose from {seen['count']} to {count}",
                            time=now.isoformat(timespec="seconds"),
                            details={
                                "dataset": dataset,
                                "day": day.isoformat(),
                                "prefix": prefix,
                                "previous": seen["count"],
                                "count": count,
                                "location": f"s3://{self.bucket}/{prefix}",
                            },
                        )
                    )
                    report.thresholds.append(f"{prefix} {seen['count']}->{count}")
                seen["count"] = count
        # Keep only the days still watched.
        watched = {layout.day_prefix(ds, d) for ds in self.config.threshold_datasets for d in days}
        for prefix in [p for p in counts if p not in watched]:
            del counts[prefix]
        return alerts

    # --- one tick ---------------------------------------------------------------------------------
    def tick(self, now: datetime | None = None) -> TickReport:
        """Find new alerts, record them in every outbox, advance the cursor, then deliver per sink."""
        now = now or datetime.now(UTC)
        report = TickReport()
        state = _load_json(self.s3, self.bucket, self.state_key) or {}
        found = self._scan_anomalies(state, now, report) + self._scan_thresholds(state, now, report)
        outboxes = {s.name: Outbox(self.s3, self.bucket, self.outbox_key(s.name)) for s in self.sinks}
        new_ids: set[str] = set()
        for box in outboxes.values():
            before = {a["id"] for a in box.pending}
            box.enqueue(found)
            new_ids |= {a["id"] for a in box.pending} - before
            box.prune(now - timedelta(seconds=self.config.dedupe_retention_s))
            box.save()  # durable in every outbox before the cursor moves past them
        report.new_alerts = len(new_ids)
        _save_json(self.s3, self.bucket, self.state_key, state)
        for sink in self.sinks:
            box = outboxes[sink.name]
            try:
                sent, error = box.deliver(sink, now, self.config.max_send)
            finally:
                box.save()
            report.sent[sink.name] = sent
            report.pending[sink.name] = len(box.pending)
            if error:
                report.errors[sink.name] = error
        return report

    def pending(self) -> dict[str, list[dict[str, Any]]]:
        """Alerts waiting per sink (for the UI and tests)."""
        return {s.name: Outbox(self.s3, self.bucket, self.outbox_key(s.name)).pending for s in self.sinks}


def build_sinks(
    settings: Any, log: Callable[[str], None], sns: Any = None, webhook_kwargs: dict[str, Any] | None = None
) -> list[Sink]:
    """The log sink always; the webhook and SNS when the settings configure them."""
    sinks: list[Sink] = [LogSink(log)]
    if getattr(settings, "alert_webhook_url", None):
        sinks.append(WebhookSink(settings.alert_webhook_url, **(webhook_kwargs or {})))
    if getattr(settings, "sns_topic_arn", None):
        if sns is None:
            from etl_platform import aws

            sns = aws.client("sns", settings)
        sinks.append(SnsSink(sns, settings.sns_topic_arn))
    return sinks
