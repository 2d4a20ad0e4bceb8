"""The shard-scaling schedules: every 5 minutes, read a stream's load from CloudWatch, decide, apply.

One job and schedule per Kinesis pipeline (`scaling_definitions`; the default pipeline's keep their
names, `kinesis_scaling_job` and `kinesis_scaling_schedule`). Thin glue over
`etl_platform.ops.scaling.scale_stream`. The decision (inputs, target, reason) is the op's output
metadata and an observation of the pipeline's `kinesis_stream` asset, so the UI shows each tick's
"why". Runs carry the `etl/scaler` tag: the production run queue limits it to one in flight, so a
slow reshard never overlaps the next tick. The policy's defaults are the `scaling` resource's fields
(ETL_SCALING_*, see ScalingPolicy); the op's run config overrides them. Kafka pipelines have no
scaler: a topic's partitions are added with Kafka's tools, and the workers pick them up.
"""

from collections.abc import Iterable
from datetime import UTC, datetime

from dagster import (
    AssetObservation,
    Config,
    DefaultScheduleStatus,
    JobDefinition,
    MetadataValue,
    OpExecutionContext,
    Output,
    ScheduleDefinition,
    job,
    op,
)
from pydantic import Field

from assets.ingestion import DEFAULT_PIPELINE, definition_name, pipeline_key
from etl_platform.ops.metrics import native_metrics_for
from etl_platform.ops.scaling import ScalingHistory, scale_stream
from etl_platform.pipelines import Pipeline
from resources import CloudWatchResource, KinesisResource, LakeResource, ScalingResource, deployment_pipelines
from sensors.kinesis import stream_of

SCALER_TAG = "etl/scaler"


class ScaleStreamConfig(Config):
    dry_run: bool = Field(default=False, description="decide and record, but do not call UpdateShardCount")
    target_utilization: float | None = Field(default=None, description="default: the scaling resource's")
    min_shards: int | None = None
    max_shards: int | None = None
    cooldown_minutes: float | None = None
    window_minutes: int | None = None
    missing_data: str | None = Field(default=None, description="hold | zero")
    scale_in_window_minutes: int | None = None
    wait_s: float = Field(default=120.0, description="how long to wait for the stream to be ACTIVE again")


def _metadata(report) -> dict:
    d, obs = report.decision, report.observation
    return {
        "action": d.action,
        "current_shards": d.current_shards,
        "target_shards": d.target_shards,
        "required_shards": d.required_shards if d.required_shards is not None else -1,
        "reason": d.reason,
        "records_per_s": round(obs.records_per_s, 3) if obs.records_per_s is not None else -1.0,
        "bytes_per_s": round(obs.bytes_per_s, 3) if obs.bytes_per_s is not None else -1.0,
        "dry_run": report.dry_run,
        "applied": report.applied,
        "scalings_last_24h": len(report.history),
        "report": MetadataValue.json(report.as_dict()),
    }


def scaling_job(pipeline: Pipeline) -> JobDefinition:
    """The pipeline's scaler: one pass over its Kinesis stream."""

    @op(
        name=definition_name(pipeline, "scale_kinesis_stream"),
        description=f"Observe {pipeline.name}'s IncomingRecords/IncomingBytes, decide the shard count, apply it "
        "unless dry-run.",
    )
    def scale_kinesis_stream(
        context: OpExecutionContext,
        config: ScaleStreamConfig,
        kinesis: KinesisResource,
        lake: LakeResource,
        cloudwatch: CloudWatchResource,
        scaling: ScalingResource,
    ) -> Output[dict]:
        policy = scaling.policy(
            target_utilization=config.target_utilization,
            min_shards=config.min_shards,
            max_shards=config.max_shards,
            cooldown_s=None if config.cooldown_minutes is None else config.cooldown_minutes * 60,
            window_minutes=config.window_minutes,
            missing_data=config.missing_data,
            scale_in_window_minutes=config.scale_in_window_minutes,
        )
        stream = stream_of(pipeline, kinesis)
        report = scale_stream(
            kinesis.client(),
            cloudwatch.client(),
            ScalingHistory(lake.client(), lake.bucket, stream),
            stream,
            policy,
            now=datetime.now(UTC),
            dry_run=config.dry_run,
            wait_s=config.wait_s,
            native=native_metrics_for(cloudwatch, pipeline.stream.kind),
        )
        context.log.info(f"stream {stream}: {report.decision.reason}" + (" (dry run)" if config.dry_run else ""))
        metadata = _metadata(report)
        context.log_event(AssetObservation(asset_key=pipeline_key(pipeline, "kinesis_stream"), metadata=metadata))
        return Output(report.as_dict(), metadata=metadata)

    @job(
        name=definition_name(pipeline, "kinesis_scaling_job"),
        tags={SCALER_TAG: "kinesis"},
        description=f"One pass of {pipeline.name}'s shard scaler (seed: scale_kinesis_stream).",
    )
    def kinesis_scaling_job() -> None:
        scale_kinesis_stream()

    return kinesis_scaling_job


def scaling_schedule(pipeline: Pipeline, job_def: JobDefinition) -> ScheduleDefinition:
    return ScheduleDefinition(
        name=definition_name(pipeline, "kinesis_scaling_schedule"),
        job=job_def,
        cron_schedule="*/5 * * * *",
        execution_timezone="UTC",
        default_status=DefaultScheduleStatus.STOPPED,
        description=f"Every 5 minutes: scale {pipeline.name}'s stream to its CloudWatch load (target 70%, 15 min "
        "cool-down, at most 2x/0.5x per step and 10 scalings per 24 h).",
    )


def scaling_definitions(pipelines: Iterable[Pipeline]) -> tuple[list[JobDefinition], list[ScheduleDefinition]]:
    """Every Kinesis pipeline's scaler job and schedule (the default pipeline's are the module's own)."""
    jobs, schedules = [kinesis_scaling_job], [kinesis_scaling_schedule]
    for pipeline in pipelines:
        if not pipeline.is_default and pipeline.stream.kind == "kinesis":
            jobs.append(scaling_job(pipeline))
            schedules.append(scaling_schedule(pipeline, jobs[-1]))
    return jobs, schedules


kinesis_scaling_job = scaling_job(DEFAULT_PIPELINE)
kinesis_scaling_schedule = scaling_schedule(DEFAULT_PIPELINE, kinesis_scaling_job)
scaling_jobs, scaling_schedules = scaling_definitions(deployment_pipelines())
