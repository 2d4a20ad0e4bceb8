"""The CloudWatch alarm sensor, and the hooks that publish the micro-batch job's metrics.

Locally, each minute the sensor evaluates `config/alarms.yaml` for every pipeline's stream from the
raw CloudWatch statistics (moto never evaluates alarms), counting only periods since its first tick
(a stack that just started has no workers yet). In the aws profile CloudWatch evaluates the alarms
itself (the CDK app creates them with the alert topic as action), so a stalled daemon cannot silence
them; the sensor only relays CloudWatch's states to the sinks SNS does not cover (Dagster log,
webhook).

An alarm entering ALARM is logged and sent as an alert (kind "alarm") to the configured sinks
(Dagster log, webhook, SNS: the `alerts` resource) through a per-sink outbox in the lake
(`_alerts/alarms/outbox/<sink>.json`, `etl_platform.alerts.Outbox`): a sink that is down gets the
alert on a later tick. Breaches are deduped by alarm name + period start in the sensor cursor; an
alarm that stays in ALARM is re-sent once per `RENOTIFY_S`, and it alerts again after returning to OK.
"""

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from dagster import (
    DefaultSensorStatus,
    HookContext,
    HookDefinition,
    SensorEvaluationContext,
    SkipReason,
    failure_hook,
    sensor,
)

from assets.ingestion import DEFAULT_PIPELINE, definition_name
from etl_platform.ops import metrics as m
from etl_platform.ops.alarms import ALARM, OK, AlarmState, evaluate_states, read_states
from etl_platform.ops.alerts import ALERTS_PREFIX, Alert, Outbox, Sink
from etl_platform.pipelines import Pipeline
from etl_platform.stream.consumer import BatchResult
from resources import AlertsResource, CloudWatchResource, KinesisResource, LakeResource, deployment_pipelines

RENOTIFY_S = 3600  # a still-breaching alarm is re-sent this often
SENT_RETENTION = timedelta(days=2)  # dedupe keys older than this are forgotten
ALERT_NAMESPACE = "alarms"
# Few in-tick retries: the outbox retries on the next tick anyway, and a slow sink must not stall the sensor.
WEBHOOK_RETRIES = {"attempts": 2, "backoff_s": 0.5}


def alarm_alert(state: AlarmState, now: datetime) -> Alert:
    """The alert for a breach: id = dedupe key, so webhook receivers can drop repeats."""
    return Alert(
        id=f"alarm:{state.stream}:{state.key}",
        kind="alarm",
        title=f"{state.alarm.name} on {state.stream}",
        time=now.isoformat(),
        details={
            "stream": state.stream,
            "alarm": state.alarm.name,
            "metric": state.alarm.metric,
            "condition": state.alarm.condition(),
            "values": list(state.values),
            "period_start": state.period_start.isoformat(),
            "description": state.alarm.description,
            "message": state.message(),
        },
    )


def send_alarm_alerts(
    states: list[AlarmState], sinks: Sequence[Sink], s3: Any, bucket: str, now: datetime
) -> dict[str, str]:
    """Queue the breaches' alerts in every sink's outbox and deliver what can be; returns sink errors."""
    alerts = [alarm_alert(s, now) for s in states]
    errors: dict[str, str] = {}
    for sink in sinks:
        box = Outbox(s3, bucket, f"{ALERTS_PREFIX}/{ALERT_NAMESPACE}/outbox/{sink.name}.json")
        box.enqueue(alerts)
        box.prune(now - SENT_RETENTION)
        box.save()  # durable before any send, so a crash mid-delivery loses nothing
        try:
            _, error = box.deliver(sink, now, limit=100)
        finally:
            box.save()
        if error:
            errors[sink.name] = error
    return errors


def due_breaches(states: list[AlarmState], cursor: dict, now: datetime) -> list[AlarmState]:
    """The ALARM states to send now, updating `cursor` ({"sent": {key: iso}, "active": {alarm: iso}})."""
    sent, active = cursor.setdefault("sent", {}), cursor.setdefault("active", {})
    due = []
    for state in states:
        name = state.alarm.name
        if state.state == OK:
            active.pop(name, None)
        if state.state != ALARM or state.key in sent:
            continue
        last = active.get(name)
        if last is not None and (now - datetime.fromisoformat(last)).total_seconds() < RENOTIFY_S:
            continue
        sent[state.key] = active[name] = now.isoformat()
        due.append(state)
    horizon = now - SENT_RETENTION
    cursor["sent"] = {k: v for k, v in sent.items() if datetime.fromisoformat(v) >= horizon}
    return due


@sensor(
    minimum_interval_seconds=60,
    default_status=DefaultSensorStatus.RUNNING,
    description="Evaluates config/alarms.yaml against CloudWatch each minute (in AWS: relays CloudWatch's own "
    "alarm states) and alerts on breaches (throttling, worker CPU and memory, delivery failures, consumer "
    "lag, a stalled pipeline).",
)
def cloudwatch_alarms_sensor(
    context: SensorEvaluationContext,
    kinesis: KinesisResource,
    lake: LakeResource,
    cloudwatch: CloudWatchResource,
    alerts: AlertsResource,
) -> SkipReason:
    now = datetime.now(UTC)
    cursor = json.loads(context.cursor) if context.cursor else {}
    since = datetime.fromisoformat(cursor.setdefault("since", now.isoformat()))
    by_cloudwatch = cloudwatch.evaluated_by == "cloudwatch"
    # Every pipeline's stream; the default one's cursor is the top level (as before pipelines existed).
    pipelines = [p for p in deployment_pipelines() if not p.is_default]
    streams = [(kinesis.stream_name, "kinesis"), *((p.stream.name, p.stream.kind) for p in pipelines)]
    client, alarms = cloudwatch.client(), cloudwatch.alarms()
    states, due = [], []
    for stream, kind in streams:
        if by_cloudwatch:
            found = read_states(client, alarms, stream)
        else:
            native = m.native_metrics_for(cloudwatch, kind)
            found = evaluate_states(client, alarms, stream, now, native=native, since=since)
        section = cursor if stream == streams[0][0] else cursor.setdefault("streams", {}).setdefault(stream, {})
        due += due_breaches(found, section, now)
        states += found
    for state in due:
        context.log.warning(f"ALARM {state.message()}")
    # Every tick, not only with new breaches: alerts a sink failed to take earlier are retried.
    sinks = alerts.sinks(log=context.log.warning, webhook_kwargs=WEBHOOK_RETRIES)
    if by_cloudwatch:  # CloudWatch's own alarm actions already published to the SNS topic
        sinks = [sink for sink in sinks if sink.name != "sns"]
    errors = send_alarm_alerts(due, sinks, lake.client(), lake.bucket, now)
    for sink, error in errors.items():
        context.log.error(f"alarm alert sink {sink} failed (alert kept pending): {error}")
    context.update_cursor(json.dumps(cursor, sort_keys=True))
    summary = ", ".join(
        f"{s.alarm.name}={s.state}" + ("" if s.stream == streams[0][0] else f" ({s.stream})") for s in states
    )
    return SkipReason(f"{len(due)} new breach(es); {summary}" + (f"; sink errors: {errors}" if errors else ""))


# --- metrics publishing for the micro-batch job ----------------------------------------------------
def publish_batch_metrics(
    cloudwatch: CloudWatchResource, stream: str, result: BatchResult, log: Any = None, native: bool = False
) -> None:
    """Publish a committed batch's metrics and the worker's memory; never fails the batch (logs instead).
    With `native`, what Kinesis measures itself (the iterator age) is left to it."""
    datums = m.without_native(m.batch_metrics(stream, result) + m.worker_memory_metrics(stream), native)
    _publish(cloudwatch, stream, datums, log)


def publish_heartbeat(
    cloudwatch: CloudWatchResource, stream: str, millis_behind_latest: int, log: Any = None, native: bool = False
) -> None:
    """An idle worker's iterator age, so the lag alarm (missing data = breaching) hears it is alive.
    Not needed with `native`: Kinesis publishes the iterator age of every GetRecords call itself."""
    datums = m.without_native(m.heartbeat_metrics(stream, millis_behind_latest), native)
    _publish(cloudwatch, stream, datums, log)


def _publish(cloudwatch: CloudWatchResource, stream: str, datums: list[m.Datum], log: Any) -> None:
    if not datums:
        return
    try:
        m.publish(cloudwatch.client(), datums)
    except Exception as exc:  # metrics are best-effort: the batch is already durable
        if log is not None:
            log.warning(f"could not publish metrics for {stream}: {type(exc).__name__}: {exc}")


def failure_metrics_hook(pipeline: Pipeline | None = None) -> HookDefinition:
    """On a failed worker op: DeliveryToS3.Errors=1, DeliveryToS3.Success=0 (the delivery alarm) for the
    worker's stream (the default pipeline's is the kinesis resource's)."""
    other = pipeline is not None and not pipeline.is_default

    @failure_hook(
        name=definition_name(pipeline or DEFAULT_PIPELINE, "delivery_failure_metrics"),
        required_resource_keys={"kinesis", "cloudwatch"},
    )
    def delivery_failure_metrics(context: HookContext) -> None:
        stream = pipeline.stream.name if other else context.resources.kinesis.stream_name
        try:
            m.publish(context.resources.cloudwatch.client(), m.failed_batch_metrics(stream))
        except Exception as exc:
            context.log.warning(f"could not publish failure metrics for {stream}: {type(exc).__name__}: {exc}")

    return delivery_failure_metrics


delivery_failure_metrics = failure_metrics_hook()


alarm_sensors = [cloudwatch_alarms_sensor]
