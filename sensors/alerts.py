"""The alert sensor: each tick finds new anomalies and threshold breaches and delivers them to the sinks.

Thin glue over `etl_platform.alerts.AlertMonitor`: the sinks are the Dagster log (always), the HTTP
webhook and SNS (the `alerts` resource's `alert_webhook_url` and `sns_topic_arn`). All state (scan cursor, one
outbox per sink with its dedupe record) lives in the lake under `_alerts/`, not in the sensor cursor,
so it survives a new code location, a reset sensor or a second Dagster instance reading the same lake.
The sensor launches no runs.
"""

from __future__ import annotations

from dagster import DefaultSensorStatus, SensorEvaluationContext, SkipReason, sensor

from etl_platform.ops.alerts import AlertMonitor
from resources import AlertsResource, LakeResource, OpenSearchResource


@sensor(
    minimum_interval_seconds=30,
    default_status=DefaultSensorStatus.RUNNING,
    description="Sends each new anomaly (anomalies alias) and each rise in errors/ or search-failed/ objects "
    "once to the Dagster log, the webhook and SNS; a sink that is down gets its alerts on a later tick.",
)
def search_alerts_sensor(
    context: SensorEvaluationContext, opensearch: OpenSearchResource, lake: LakeResource, alerts: AlertsResource
) -> SkipReason:
    monitor = AlertMonitor(
        opensearch.client(),
        lake.client(),
        lake.bucket,
        alerts.sinks(log=context.log.warning),
        prefix=opensearch.index_prefix,
    )
    report = monitor.tick()
    for sink, error in report.errors.items():
        context.log.error(f"alert sink {sink} failed, {report.pending[sink]} alerts pending: {error}")
    context.update_cursor(report.cursor)  # informational; the lake holds the real state
    return SkipReason(report.summary())


alert_sensors = [search_alerts_sensor]
