"""Metrics and alarms against moto's CloudWatch (a real server on loopback): publishing in batches,
reading back, creating the alarms, evaluating them locally, and the alarm sensor alerting once."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from dagster import DagsterInstance, build_sensor_context, job, op

from etl_platform.lake import layout
from etl_platform.ops import metrics as m
from etl_platform.ops.alarms import (
    ALARM,
    INSUFFICIENT,
    OK,
    alarm_name,
    apply_alarms,
    evaluate,
    evaluate_states,
    load_alarms,
    parse_alarms,
)
from etl_platform.stream.consumer import BatchResult
from resources import build_resources
from sensors.alarms import cloudwatch_alarms_sensor, delivery_failure_metrics, publish_batch_metrics

pytestmark = pytest.mark.stack


def minute(now: datetime, back: int) -> datetime:
    """A timestamp inside the complete minute `back` minutes before `now`'s minute."""
    return now.replace(second=0, microsecond=0) - timedelta(minutes=back) + timedelta(seconds=20)


@pytest.fixture
def now() -> datetime:
    """The test's clock. The alarm sensor reads the wall clock on each tick, so start no later than
    40 s into a minute: a test's ticks then all judge the same complete minutes."""
    current = datetime.now(UTC)
    if current.second >= 40:
        time.sleep(60.5 - current.second - current.microsecond / 1e6)
        current = datetime.now(UTC)
    return current


def test_publish_batches_and_read_back(cloudwatch, unique_name, now):
    datums = [m.datum(m.RECORDS_PROCESSED, 1.0, "Count", unique_name, minute(now, 1 + i % 3)) for i in range(1500)]
    datums.append(m.datum(m.RECORDS_PROCESSED, 500.0, "Count", unique_name, minute(now, 2)))
    assert m.publish(cloudwatch, datums) == 2  # 1501 datums -> 1000 + 501
    assert m.read_metric(cloudwatch, m.RECORDS_PROCESSED, unique_name, 10, "Sum", now) == 2000
    assert m.read_metric(cloudwatch, m.RECORDS_PROCESSED, unique_name, 10, "Maximum", now) == 500
    assert m.read_metric(cloudwatch, m.RECORDS_PROCESSED, unique_name, 10, "SampleCount", now) == 1501
    assert m.read_metric(cloudwatch, m.RECORDS_PROCESSED, unique_name, 10, "Average", now) == pytest.approx(2000 / 1501)
    assert m.read_metric(cloudwatch, m.RECORDS_PROCESSED, f"{unique_name}-other", 10, "Sum", now) is None


def test_alarms_are_created_in_cloudwatch(cloudwatch, unique_name):
    alarms = load_alarms()
    names = apply_alarms(cloudwatch, alarms, unique_name, actions=["arn:aws:sns:us-east-1:123456789012:etl-alerts"])
    described = {a["AlarmName"]: a for a in cloudwatch.describe_alarms(AlarmNamePrefix=unique_name)["MetricAlarms"]}
    assert set(described) == set(names) == {alarm_name(a, unique_name) for a in alarms}
    for alarm in alarms:
        got = described[alarm_name(alarm, unique_name)]
        assert (got["MetricName"], got["Namespace"], got["Statistic"]) == (alarm.metric, "ETLPlatform", alarm.statistic)
        assert (got["Threshold"], got["ComparisonOperator"]) == (alarm.threshold, alarm.comparison)
        assert (got["Period"], got["EvaluationPeriods"]) == (alarm.period_s, alarm.evaluation_periods)
        assert got["Dimensions"] == [{"Name": "StreamName", "Value": unique_name}]
        assert got["AlarmActions"] == ["arn:aws:sns:us-east-1:123456789012:etl-alerts"]
    apply_alarms(cloudwatch, alarms, unique_name)  # an upsert: still one alarm each
    assert len(cloudwatch.describe_alarms(AlarmNamePrefix=unique_name)["MetricAlarms"]) == len(alarms)


def test_local_evaluation(cloudwatch, unique_name, now):
    alarms = {a.name: a for a in load_alarms()}
    stream = unique_name
    m.publish(
        cloudwatch,
        [
            m.datum(m.DELIVERY_ERRORS, 0, "Count", stream, minute(now, 3)),
            m.datum(m.DELIVERY_ERRORS, 2, "Count", stream, minute(now, 1)),
            m.datum(m.WRITE_THROTTLED, 0, "Count", stream, minute(now, 1)),
            *[m.datum(m.ITERATOR_AGE, 700_000 + i, "Milliseconds", stream, minute(now, i)) for i in range(1, 6)],
            *[m.datum(m.HOST_CPU, 90, "Percent", stream, minute(now, i)) for i in (1, 2, 4, 5)],  # minute 3 missing
            m.datum(m.DELIVERY_ERRORS, 9, "Count", stream, now),  # the current, incomplete minute is not evaluated
        ],
    )
    states = {s.alarm.name: s for s in evaluate_states(cloudwatch, list(alarms.values()), stream, now)}
    assert states["Delivery-To-S3-Failures"].state == ALARM
    assert states["Delivery-To-S3-Failures"].values == (2,)
    assert states["Consumer-Lag"].state == ALARM
    assert states["Consumer-Lag"].values == tuple(700_000 + i for i in range(5, 0, -1))
    assert states["Kinesis-Stream-Throttling"].state == OK
    # 4 of 5 periods breaching, one missing (treat_missing_data: missing): not 5 of 5.
    assert states["Consumer-Host-CPU-High"].state == OK
    assert states["Consumer-Host-CPU-High"].values[2] is None
    breaches = evaluate(cloudwatch, list(alarms.values()), stream, now)
    assert {b.alarm.name for b in breaches} == {"Delivery-To-S3-Failures", "Consumer-Lag"}
    assert breaches[0].key.startswith(breaches[0].alarm.name + "@")

    # A stream without data: insufficient data, or OK where missing data is "notBreaching".
    empty = {s.alarm.name: s.state for s in evaluate_states(cloudwatch, list(alarms.values()), f"{stream}-x", now)}
    assert empty == {
        "Kinesis-Stream-Throttling": OK,
        "Consumer-Host-CPU-High": INSUFFICIENT,
        "Delivery-To-S3-Failures": OK,
        "Consumer-Lag": INSUFFICIENT,
    }
    # treat_missing_data: breaching makes silence an alarm (e.g. a heartbeat).
    (heartbeat,) = parse_alarms(
        {
            "alarms": [
                {
                    "name": "No-Data",
                    "metric": m.RECORDS_PROCESSED,
                    "threshold": 0,
                    "comparison": "LessThanThreshold",
                    "treat_missing_data": "breaching",
                }
            ]
        }
    )
    assert evaluate_states(cloudwatch, [heartbeat], f"{stream}-x", now)[0].state == ALARM


class _Webhook(BaseHTTPRequestHandler):
    received: list = []
    down = False  # answer 503, as a receiver in trouble would

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if _Webhook.down:
            self.send_response(503)
            self.end_headers()
            return
        _Webhook.received.append((self.headers.get("Idempotency-Key"), json.loads(body)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook():
    """The receiver's URL; what it accepted is `_Webhook.received`."""
    server = HTTPServer(("127.0.0.1", 0), _Webhook)
    _Webhook.received, _Webhook.down = [], False
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/alerts"
    server.shutdown()


def test_alarm_sensor_alerts_once_per_breach(cloudwatch, s3, settings, bucket, unique_name, webhook, now):
    resources = build_resources(
        dataclasses.replace(settings, stream_name=unique_name, lake_bucket=bucket, alert_webhook_url=webhook)
    )
    received = _Webhook.received
    m.publish(cloudwatch, [m.datum(m.DELIVERY_ERRORS, 3, "Count", unique_name, minute(now, 1))])
    instance = DagsterInstance.ephemeral()
    cursor = None

    def tick():
        nonlocal cursor
        with build_sensor_context(instance=instance, cursor=cursor, resources=resources) as ctx:
            result = cloudwatch_alarms_sensor(ctx)
            cursor = ctx.cursor
        return result

    _Webhook.down = True  # first tick: the receiver is down, the alert stays pending in its outbox
    result = tick()
    assert "Delivery-To-S3-Failures=ALARM" in result.skip_message and "sink errors" in result.skip_message
    assert received == []
    _Webhook.down = False
    tick()  # no new breach (same alarm, same period), but the pending alert goes out now
    tick()  # and only once
    assert len(received) == 1
    key, alert = received[0]
    assert alert["kind"] == "alarm" and alert["id"] == key
    assert alert["details"]["alarm"] == "Delivery-To-S3-Failures" and alert["details"]["values"] == [3]
    state = json.loads(cursor)
    assert list(state["active"]) == ["Delivery-To-S3-Failures"]
    assert any(k.startswith("Delivery-To-S3-Failures@") for k in state["sent"])
    outbox = json.loads(layout.get(s3, bucket, "_alerts/alarms/outbox/webhook.json"))
    assert outbox["pending"] == [] and list(outbox["delivered"]) == [key]


def test_batch_metrics_and_failure_hook_publish(cloudwatch, settings, unique_name):
    resources = build_resources(dataclasses.replace(settings, stream_name=unique_name))
    result = BatchResult(
        shard_id="shardId-000000000000",
        records=5,
        events=5,
        anomalies=1,
        committed=True,
        millis_behind_latest=42,
        max_latency_s=1.5,
        timings={"total": 0.2},
    )
    warnings = []
    publish_batch_metrics(
        resources["cloudwatch"], unique_name, result, log=type("Log", (), {"warning": staticmethod(warnings.append)})
    )
    assert warnings == []

    def read(name: str, stat: str) -> float | None:
        return m.read_metric(cloudwatch, name, unique_name, 5, stat, datetime.now(UTC) + timedelta(seconds=2))

    assert read(m.RECORDS_PROCESSED, "Sum") == 5
    cpu = read(m.HOST_CPU, "Maximum")
    assert cpu is not None and 0 <= cpu <= 100

    @op
    def failing_batch() -> None:
        raise RuntimeError("lake write failed")

    @job(hooks={delivery_failure_metrics})
    def failing_job() -> None:
        failing_batch()

    outcome = failing_job.execute_in_process(resources=resources, raise_on_error=False)
    assert not outcome.success
    assert read(m.DELIVERY_ERRORS, "Sum") == 1
    assert read(m.DELIVERY_SUCCESS, "Average") == 0.5  # 1 ok, 1 failed


def test_producer_reports_incoming_records_and_bytes(kinesis, cloudwatch, stream):
    from etl_platform.stream.producer import KinesisProducer
    from etl_platform.stream.sources import demo_mix

    reporter = m.ProducerMetricsReporter(cloudwatch, stream, interval_s=3600)
    producer = KinesisProducer(kinesis, stream, progress=reporter.update)
    stats = producer.send(demo_mix(120, seed=4, start=datetime(2026, 4, 2, tzinfo=UTC)))
    reporter.flush(stats)
    assert reporter.last_error is None
    end = datetime.now(UTC) + timedelta(seconds=2)
    assert m.read_metric(cloudwatch, m.INCOMING_RECORDS, stream, 5, "Sum", end) == stats.records == 120
    assert m.read_metric(cloudwatch, m.INCOMING_BYTES, stream, 5, "Sum", end) == stats.bytes
    assert m.read_metric(cloudwatch, m.WRITE_THROTTLED, stream, 5, "Sum", end) == 0
