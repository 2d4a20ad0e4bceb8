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
    STALL_EXPRESSION,
    alarm_definitions,
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
        assert (got["Threshold"], got["ComparisonOperator"]) == (alarm.threshold, alarm.comparison)
        assert got["EvaluationPeriods"] == alarm.evaluation_periods
        assert got["TreatMissingData"] == alarm.treat_missing_data
        assert got["AlarmActions"] == got["OKActions"] == ["arn:aws:sns:us-east-1:123456789012:etl-alerts"]
        if alarm.arriving:  # the stall alarm: metric math over the two sums
            queries = {q["Id"]: q for q in got["Metrics"]}
            assert queries["stalled"]["Expression"] == STALL_EXPRESSION
            for key, metric in (("arriving", alarm.arriving), ("processed", alarm.metric)):
                stat = queries[key]["MetricStat"]
                assert (stat["Metric"]["MetricName"], stat["Stat"], stat["Period"]) == (metric, "Sum", alarm.period_s)
                assert stat["Metric"]["Dimensions"] == [{"Name": "StreamName", "Value": unique_name}]
            continue
        assert (got["MetricName"], got["Namespace"], got["Statistic"]) == (alarm.metric, "ETLPlatform", alarm.statistic)
        assert got["Period"] == alarm.period_s
        assert got["Dimensions"] == [{"Name": "StreamName", "Value": unique_name}]
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
            *[m.datum(m.WORKER_CPU, 90, "Percent", stream, minute(now, i)) for i in (1, 2, 4, 5)],  # minute 3 missing
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
    assert states["Consumer-CPU-High"].state == OK
    assert states["Consumer-CPU-High"].values[2] is None
    breaches = evaluate(cloudwatch, list(alarms.values()), stream, now)
    assert {b.alarm.name for b in breaches} == {"Delivery-To-S3-Failures", "Consumer-Lag"}
    assert breaches[0].key.startswith(breaches[0].alarm.name + "@")

    # A stream without data: insufficient data, OK where missing data is "notBreaching" (and for the
    # stall alarm: nothing arrived), ALARM for the lag: no worker reported its iterator age.
    empty = {s.alarm.name: s.state for s in evaluate_states(cloudwatch, list(alarms.values()), f"{stream}-x", now)}
    assert empty == {
        "Kinesis-Stream-Throttling": OK,
        "Consumer-CPU-High": INSUFFICIENT,
        "Delivery-To-S3-Failures": OK,
        "Consumer-Lag": ALARM,
        "Pipeline-Stalled": OK,
        "Worker-Memory-High": INSUFFICIENT,
    }
    # Evaluation that began this minute (a stack just started) counts none of those silent periods.
    fresh = evaluate_states(cloudwatch, [alarms["Consumer-Lag"]], f"{stream}-x", now, since=now)
    assert fresh[0].state == INSUFFICIENT and fresh[0].values == (None,) * 5
    # Since two minutes ago: 2 silent periods breach, 2 of the required 5 do not make an alarm.
    since = minute(now, 2).replace(second=0)
    recent = evaluate_states(cloudwatch, [alarms["Consumer-Lag"]], f"{stream}-x", now, since=since)[0]
    assert recent.state == OK and recent.breaching == 2
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


def test_stall_alarm(cloudwatch, unique_name, now):
    """Records arriving with none read breach; an idle stream and a stream that is read do not."""
    stall = {a.name: a for a in load_alarms()}["Pipeline-Stalled"]
    stalled, working, idle = f"{unique_name}-s", f"{unique_name}-w", f"{unique_name}-i"
    arriving = [
        m.datum(m.INCOMING_RECORDS, 100, "Count", s, minute(now, i)) for s in (stalled, working) for i in range(1, 6)
    ]
    m.publish(cloudwatch, [*arriving, m.datum(m.RECORDS_READ, 100, "Count", working, minute(now, 3))])
    (state,) = evaluate_states(cloudwatch, [stall], stalled, now)
    assert (state.state, state.values) == (ALARM, (1.0,) * 5)
    assert "Sum(IncomingRecords) > 0 while Sum(RecordsRead) = 0" in state.message()
    (state,) = evaluate_states(cloudwatch, [stall], working, now)
    assert state.state == OK and state.values[2] == 0.0 and state.breaching == 4
    (state,) = evaluate_states(cloudwatch, [stall], idle, now)
    assert (state.state, state.values) == (OK, (0.0,) * 5)


def test_native_metrics_are_read_from_aws_kinesis(kinesis, cloudwatch, stream, now):
    """With native metrics (a Kinesis stream in the aws profile) the alarms and the scaler read what
    Kinesis publishes in AWS/Kinesis, whoever produced; the rest stays in our namespace. moto accepts
    datums in AWS/Kinesis: they stand in for the ones Kinesis itself would publish."""
    from etl_platform.ops.scaling import observe

    alarms = {a.name: a for a in load_alarms()}
    m.publish(
        cloudwatch,
        [m.datum(m.WRITE_THROTTLED, 5, "Count", stream, minute(now, 1))]
        + [m.datum(m.INCOMING_RECORDS, 600, "Count", stream, minute(now, i)) for i in range(1, 6)],
        namespace=m.KINESIS_NAMESPACE,
    )
    m.publish(cloudwatch, [m.datum(m.RECORDS_READ, 600, "Count", stream, minute(now, i)) for i in range(1, 6)])
    native = {s.alarm.name: s for s in evaluate_states(cloudwatch, list(alarms.values()), stream, now, native=True)}
    assert native["Kinesis-Stream-Throttling"].state == ALARM and native["Kinesis-Stream-Throttling"].values == (5,)
    assert native["Pipeline-Stalled"].state == OK  # arriving (AWS/Kinesis) and read (ours) both counted
    ours = {s.alarm.name: s for s in evaluate_states(cloudwatch, list(alarms.values()), stream, now)}
    assert ours["Kinesis-Stream-Throttling"].values == (None,)  # nothing in our namespace
    assert ours["Pipeline-Stalled"].values == (0.0,) * 5  # nothing arriving there either

    # The scaler sees the records every producer wrote (the window's 6 minutes hold all 5 datums).
    assert observe(kinesis, cloudwatch, stream, now, 6, native=True).incoming_records == 3000
    assert observe(kinesis, cloudwatch, stream, now, 6).incoming_records is None

    # The same alarms as CloudWatch would hold them.
    definitions = {d["AlarmName"]: d for d in alarm_definitions(list(alarms.values()), stream, native=True)}
    assert definitions[f"{stream}-Kinesis-Stream-Throttling"]["Namespace"] == "AWS/Kinesis"
    assert definitions[f"{stream}-Consumer-CPU-High"]["Namespace"] == "ETLPlatform"
    queries = definitions[f"{stream}-Pipeline-Stalled"]["Metrics"]
    assert [q["MetricStat"]["Metric"]["Namespace"] for q in queries[:2]] == ["AWS/Kinesis", "ETLPlatform"]
    assert queries[2]["Expression"] == STALL_EXPRESSION and queries[2]["ReturnData"]


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
    m.publish(
        cloudwatch,
        [m.datum(m.DELIVERY_ERRORS, 3, "Count", unique_name, minute(now, 1))]
        # an idle worker's heartbeats: the lag alarm stays OK for this stream
        + [d for i in range(1, 6) for d in m.heartbeat_metrics(unique_name, 0, minute(now, i))],
    )
    instance = DagsterInstance.ephemeral()
    cursor = json.dumps({"since": (now - timedelta(hours=1)).isoformat()})  # evaluating for an hour already

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
    # (The deployment's other pipelines have no workers here: their lag alarms alert too.)
    ours = [(key, alert) for key, alert in received if alert["details"]["stream"] == unique_name]
    assert len(ours) == 1
    key, alert = ours[0]
    assert alert["kind"] == "alarm" and alert["id"] == key
    assert alert["details"]["alarm"] == "Delivery-To-S3-Failures" and alert["details"]["values"] == [3]
    state = json.loads(cursor)
    assert list(state["active"]) == ["Delivery-To-S3-Failures"]
    assert any(k.startswith("Delivery-To-S3-Failures@") for k in state["sent"])
    outbox = json.loads(layout.get(s3, bucket, "_alerts/alarms/outbox/webhook.json"))
    assert outbox["pending"] == [] and key in outbox["delivered"]
    assert len(outbox["delivered"]) == len(received)


def test_a_stalled_pipeline_pages(kinesis, cloudwatch, s3, settings, bucket, stream, webhook, now):
    """Records reach the stream and no worker reads them: the sensor alerts Pipeline-Stalled and
    Consumer-Lag (no worker reports its iterator age). The producer's per-minute reports are
    published with the timestamps of the last five minutes, as a producer running for five minutes
    would have left them (the sensor judges complete minutes only)."""
    from etl_platform.stream.producer import KinesisProducer
    from etl_platform.stream.sources import demo_mix

    stats = KinesisProducer(kinesis, stream).send(demo_mix(50, seed=7, start=now - timedelta(minutes=5)))
    assert stats.records == 50
    m.publish(
        cloudwatch,
        [d for i in range(1, 6) for d in m.producer_metrics(stream, stats, minute(now, i))],
    )
    resources = build_resources(
        dataclasses.replace(settings, stream_name=stream, lake_bucket=bucket, alert_webhook_url=webhook)
    )
    with build_sensor_context(
        instance=DagsterInstance.ephemeral(),
        cursor=json.dumps({"since": (now - timedelta(hours=1)).isoformat()}),
        resources=resources,
    ) as ctx:
        result = cloudwatch_alarms_sensor(ctx)
    assert "Pipeline-Stalled=ALARM" in result.skip_message and "Consumer-Lag=ALARM" in result.skip_message
    alerted = {alert["details"]["alarm"]: alert for _, alert in _Webhook.received}
    assert set(alerted) >= {"Pipeline-Stalled", "Consumer-Lag"}
    assert alerted["Pipeline-Stalled"]["details"]["values"] == [1.0] * 5
    assert alerted["Pipeline-Stalled"]["details"]["stream"] == stream

    # The same evaluation on a stack that started this minute: no page for the silence before it.
    with build_sensor_context(instance=DagsterInstance.ephemeral(), cursor=None, resources=resources) as ctx:
        fresh = cloudwatch_alarms_sensor(ctx)
    assert "Consumer-Lag=INSUFFICIENT_DATA" in fresh.skip_message


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
        cpu_s=0.1,
        state_bytes=2048,
    )
    warnings = []
    publish_batch_metrics(
        resources["cloudwatch"], unique_name, result, log=type("Log", (), {"warning": staticmethod(warnings.append)})
    )
    assert warnings == []

    def read(name: str, stat: str) -> float | None:
        return m.read_metric(cloudwatch, name, unique_name, 5, stat, datetime.now(UTC) + timedelta(seconds=2))

    assert read(m.RECORDS_PROCESSED, "Sum") == 5
    assert read(m.RECORDS_READ, "Sum") == 5
    assert read(m.WORKER_CPU, "Maximum") == 50.0
    assert read(m.CHECKPOINT_SIZE, "Sum") == 2048
    memory = read(m.WORKER_MEMORY, "Maximum")
    assert memory is not None and 0 < memory < 100
    assert read(m.ITERATOR_AGE, "Maximum") == 42

    # With native metrics the iterator age is Kinesis' own: not published again.
    native_stream = f"{unique_name}-n"
    publish_batch_metrics(resources["cloudwatch"], native_stream, result, native=True)
    later = datetime.now(UTC) + timedelta(seconds=2)
    assert m.read_metric(cloudwatch, m.RECORDS_READ, native_stream, 5, "Sum", later) == 5
    assert m.read_metric(cloudwatch, m.ITERATOR_AGE, native_stream, 5, "Maximum", later) is None

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
