"""Alerts end to end: anomalies indexed in the real node reach a real HTTP receiver, moto SNS and the
log exactly once each; a sink that is down delays its alerts and loses none; thresholds fire on rises.
"""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
import polars as pl
import pytest

from etl_platform.lake import layout
from etl_platform.ops.alerts import AlertConfig, AlertMonitor, LogSink, SnsSink, WebhookSink, build_sinks
from etl_platform.search.indexer import index_processed_frame
from etl_platform.stream.samples import known_processed_frame

pytestmark = pytest.mark.stack

# Known data from 2024: alert on it regardless of age (production skips anomalies older than 2 days).
CONFIG = AlertConfig(max_age_s=None, page_size=3)  # a small page proves search_after paging
ANOMALY_IDS = sorted(known_processed_frame().filter(pl.col("anomaly_status") == "ANOMALY")["event_id"].to_list())


class Receiver:
    """A webhook endpoint on 127.0.0.1 that answers 503 to its first `fail_first` requests."""

    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first, self.requests, self.accepted = fail_first, 0, []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with receiver.lock:
                    receiver.requests += 1
                    ok = receiver.requests > receiver.fail_first
                    if ok:
                        receiver.accepted.append((body["id"], self.headers["Idempotency-Key"], body))
                self.send_response(200 if ok else 503)
                self.end_headers()
                self.wfile.write(b"ok" if ok else b"busy")

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"

    def ids(self) -> list[str]:
        return [alert_id for alert_id, _, _ in self.accepted]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def receiver():
    r = Receiver(fail_first=3)
    yield r
    r.close()


@pytest.fixture()
def sns_topic(settings, unique_name):
    """A moto SNS topic with an SQS queue subscribed (raw delivery), to read what was published."""
    kw = dict(region_name=settings.aws_region, endpoint_url=settings.sns_endpoint, **settings.local_credentials)
    sns, sqs = boto3.client("sns", **kw), boto3.client("sqs", **kw)
    topic = sns.create_topic(Name=unique_name)["TopicArn"]
    queue = sqs.create_queue(QueueName=unique_name)["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn, Attributes={"RawMessageDelivery": "true"})

    def received() -> list[str]:
        ids = []
        while True:
            messages = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=0).get("Messages")
            if not messages:
                return ids
            for m in messages:
                ids.append(json.loads(m["Body"])["id"])
                sqs.delete_message(QueueUrl=queue, ReceiptHandle=m["ReceiptHandle"])

    yield sns, topic, received
    sns.delete_topic(TopicArn=topic)
    sqs.delete_queue(QueueUrl=queue)


def _refresh(client, prefix: str) -> None:
    client.indices.refresh(index=f"{prefix}*", allow_no_indices=True)


def test_each_anomaly_reaches_every_sink_once_and_a_failing_webhook_only_delays(
    client, prefix, s3, bucket, receiver, sns_topic
):
    sns, topic, sns_received = sns_topic
    logged: list[str] = []
    webhook = WebhookSink(receiver.url, attempts=2, backoff_s=0.05)
    monitor = AlertMonitor(
        client, s3, bucket, [LogSink(logged.append), webhook, SnsSink(sns, topic)], prefix=prefix, config=CONFIG
    )
    frame = known_processed_frame()
    first_day = frame.filter(pl.col("event_time").dt.date() == datetime(2024, 3, 1).date())
    index_processed_frame(client, first_day, s3, bucket, prefix)
    _refresh(client, prefix)
    day1_ids = sorted(first_day.filter(pl.col("anomaly_status") == "ANOMALY")["event_id"].to_list())

    # Tick 1: the webhook answers 503 twice (both attempts): its 3 alerts stay pending; others deliver.
    report = monitor.tick()
    assert report.new_alerts == 3 and report.sent == {"log": 3, "webhook": 0, "sns": 3}
    assert report.pending == {"log": 0, "webhook": 3, "sns": 0} and "503" in report.errors["webhook"]
    assert receiver.ids() == [] and receiver.requests == 2

    # Day 2's anomalies arrive between ticks. Tick 2: one more 503, then everything goes through.
    index_processed_frame(
        client, frame.filter(pl.col("event_time").dt.date() > datetime(2024, 3, 1).date()), s3, bucket, prefix
    )
    _refresh(client, prefix)
    report = monitor.tick()
    assert report.sent == {"log": 5, "webhook": 8, "sns": 5} and report.errors == {}
    assert receiver.ids()[:3] == day1_ids  # the delayed ones first, in order
    assert sorted(receiver.ids()) == ANOMALY_IDS

    # Tick 3 and a full reindex of both days (new indexed_at on every document): nothing is re-sent.
    assert monitor.tick().sent == {"log": 0, "webhook": 0, "sns": 0}
    index_processed_frame(client, frame, s3, bucket, prefix)
    _refresh(client, prefix)
    report = monitor.tick()
    assert report.anomalies_found == 8 and report.new_alerts == 0 and sum(report.sent.values()) == 0

    assert sorted(receiver.ids()) == ANOMALY_IDS  # each exactly once
    assert all(alert_id == key for alert_id, key, _ in receiver.accepted)  # Idempotency-Key = alert id
    body = next(b for i, _, b in receiver.accepted if i == "carol-log_error-04")
    assert body["kind"] == "anomaly" and body["details"]["value"] == 1004.0 and body["details"]["user_id"] == "carol"
    assert sorted(sns_received()) == ANOMALY_IDS
    assert sorted(line.split("id=")[1].rstrip(")") for line in logged) == ANOMALY_IDS
    assert monitor.pending() == {"log": [], "webhook": [], "sns": []}


def test_a_sink_down_for_many_ticks_loses_nothing_and_state_survives_a_new_monitor(client, prefix, s3, bucket):
    down = Receiver(fail_first=10**6)  # never answers 2xx
    index_processed_frame(client, known_processed_frame(), s3, bucket, prefix)
    _refresh(client, prefix)
    for _ in range(3):
        monitor = AlertMonitor(client, s3, bucket, [WebhookSink(down.url, attempts=1)], prefix=prefix, config=CONFIG)
        report = monitor.tick()
        assert report.pending == {"webhook": 8} and report.sent == {"webhook": 0}
    down.close()
    up = Receiver()
    # The receiver moved: a new monitor (as after a code-location restart) with the state in the lake.
    monitor = AlertMonitor(client, s3, bucket, [WebhookSink(up.url, name="webhook")], prefix=prefix, config=CONFIG)
    assert monitor.tick().sent == {"webhook": 8}
    assert sorted(up.ids()) == ANOMALY_IDS
    assert monitor.tick().sent == {"webhook": 0}
    up.close()


def test_sns_down_delays_only_sns(client, prefix, s3, bucket, settings, sns_topic):
    sns, topic, received = sns_topic
    missing = topic + "-missing"
    index_processed_frame(client, known_processed_frame(), s3, bucket, prefix)
    _refresh(client, prefix)
    logged: list[str] = []
    monitor = AlertMonitor(
        client, s3, bucket, [LogSink(logged.append), SnsSink(sns, missing, name="sns")], prefix=prefix, config=CONFIG
    )
    report = monitor.tick()
    assert report.sent == {"log": 8, "sns": 0} and report.pending["sns"] == 8 and "sns" in report.errors
    monitor = AlertMonitor(
        client, s3, bucket, [LogSink(logged.append), SnsSink(sns, topic, name="sns")], prefix=prefix, config=CONFIG
    )
    assert monitor.tick().sent == {"log": 0, "sns": 8}
    assert sorted(received()) == ANOMALY_IDS and len(logged) == 8

    # build_sinks wires the same sinks from the settings.
    sinks = build_sinks(
        replace(settings, sns_topic_arn=topic, alert_webhook_url="http://127.0.0.1:9/x"), log=logged.append, sns=sns
    )
    assert [s.name for s in sinks] == ["log", "webhook", "sns"]


def test_threshold_breaches_alert_once_per_rise(client, prefix, s3, bucket):
    today = datetime.now(UTC).date()
    logged: list[str] = []
    monitor = AlertMonitor(client, s3, bucket, [LogSink(logged.append)], prefix=prefix, config=CONFIG)
    assert monitor.tick().thresholds == []  # no anomalies index yet either: a quiet tick, not an error

    for n in range(2):
        layout.put(s3, bucket, f"{layout.day_prefix('errors', today)}hour=01/shard-{n}.jsonl.gz", b"x")
    layout.put(s3, bucket, f"{layout.day_prefix('search-failed', today - timedelta(days=1))}hour=23/a.jsonl.gz", b"x")
    report = monitor.tick()
    assert sorted(report.thresholds) == sorted(
        [f"errors/dt={today}/ 0->2", f"search-failed/dt={today - timedelta(days=1)}/ 0->1"]
    )
    assert monitor.tick().thresholds == [] and len(logged) == 2

    layout.put(s3, bucket, f"{layout.day_prefix('errors', today)}hour=02/shard-9.jsonl.gz", b"x")
    report = monitor.tick()
    assert report.thresholds == [f"errors/dt={today}/ 2->3"] and report.sent == {"log": 1}
    assert "rose from 2 to 3" in logged[-1]


def test_alert_sensor_runs_in_dagster(client, prefix, s3, bucket, settings, receiver):
    from dagster import build_sensor_context
    from dagster_aws.s3 import S3Resource

    from resources import AlertsResource, LakeResource, OpenSearchResource, SNSResource
    from sensors.alerts import search_alerts_sensor

    index_processed_frame(client, known_processed_frame(), s3, bucket, prefix)
    _refresh(client, prefix)
    receiver.fail_first = 0
    aws = {"region_name": settings.aws_region, **settings.local_credentials}
    sns = SNSResource(endpoint_url=settings.sns_endpoint, **aws)  # no topic configured: the webhook and the log
    resources = {
        "opensearch": OpenSearchResource(url=settings.opensearch_url, verify_certs=False, index_prefix=prefix),
        "lake": LakeResource(bucket=bucket, s3=S3Resource(endpoint_url=settings.s3_endpoint, **aws)),
        "alerts": AlertsResource(alert_webhook_url=receiver.url, sns=sns),
    }
    # The production defaults skip anomalies that arrived over 2 days ago; this data is from 2024, so
    # the sensor must report them as read but alert none (a backfill pages nobody).
    with build_sensor_context(resources=resources) as context:
        result = search_alerts_sensor(context)
    assert "0 new alerts" in result.skip_message and receiver.ids() == []

    fresh = known_processed_frame().with_columns(
        pl.lit(datetime.now(UTC)).dt.cast_time_unit("us").alias("arrival_time")
    )
    index_processed_frame(client, fresh, s3, bucket, prefix)
    _refresh(client, prefix)
    with build_sensor_context(resources=resources) as context:
        result = search_alerts_sensor(context)
    assert "8 new alerts" in result.skip_message
    assert sorted(receiver.ids()) == ANOMALY_IDS
