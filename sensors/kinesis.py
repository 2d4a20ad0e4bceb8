"""Shard workers and their supervisor: a run owns a shard's lease and consumes it continuously.

`kinesis_microbatch_job` is a shard worker: it takes the shard's lease (`etl_platform.stream.leases`)
and loops micro-batches (read -> decode -> analytics -> search each read; lake flush + commit by size
or interval) until its time budget ends, the shard is closed and finished, or the lease is lost;
terminating it from the UI abandons the uncommitted flush and releases the lease. Each committed flush
reports the lake partitions it wrote and publishes its metrics.

`kinesis_microbatch_sensor` supervises (`etl_platform.stream.scheduling.supervise`): each tick every
readable shard (children only after their parents finished) gets a worker unless its lease is held or
a run of it is on its way; a started run whose lease expired (its process died) is marked failed so
its run-queue slot frees, and the shard gets a new worker. Every 30 s it records each shard's owner,
checkpoint, lag and last commit as an observation of the `kinesis_stream` asset.
"""

import json
import time
from collections.abc import Iterable
from datetime import UTC, datetime

from dagster import (
    AssetMaterialization,
    AssetObservation,
    Config,
    DagsterRunStatus,
    DefaultSensorStatus,
    JobDefinition,
    MetadataValue,
    OpExecutionContext,
    RunRequest,
    RunsFilter,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    in_process_executor,
    job,
    op,
    sensor,
)
from pydantic import Field

from assets.ingestion import (
    DEFAULT_PIPELINE,
    definition_name,
    pipeline_key,
    processed_column_metadata,
    raw_column_metadata,
)
from etl_platform.ops.logs import batch_log_fields
from etl_platform.ops.metrics import Heartbeat, native_metrics_for
from etl_platform.pipelines import Pipeline
from etl_platform.stream.consumer import BatchResult, StreamConsumer, WorkBudget
from etl_platform.stream.kafka import KafkaSource
from etl_platform.stream.leases import Lease
from etl_platform.stream.reader import KinesisSource
from etl_platform.stream.scheduling import WorkerRun, supervise
from resources import (
    CloudWatchResource,
    KafkaResource,
    KinesisResource,
    LakeResource,
    LeaseTableResource,
    OpenSearchResource,
)
from sensors.alarms import failure_metrics_hook, publish_batch_metrics, publish_heartbeat

SHARD_TAG = "etl/shard"  # the worker's shards joined by "+" (the run queue allows two runs per value)
PIPELINE_TAG = "etl/pipeline"


def shard_tag(shard_id: str, pipeline: Pipeline | None = None) -> str:
    """A tag each worker run carries per shard it owns, to find a shard's runs (shard ids repeat
    across streams, so another pipeline's carry its name)."""
    if pipeline is None or pipeline.is_default:
        return f"etl/shard.{shard_id}"
    return f"etl/shard.{pipeline.name}.{shard_id}"


IN_FLIGHT = {
    DagsterRunStatus.QUEUED: "queued",
    DagsterRunStatus.NOT_STARTED: "queued",
    DagsterRunStatus.STARTING: "starting",
    DagsterRunStatus.STARTED: "started",
    DagsterRunStatus.CANCELING: "starting",  # ending: it releases the lease on its way out
}
STATUS_EVERY_S = 30.0


def stream_of(pipeline: Pipeline, kinesis: KinesisResource) -> str:
    """The pipeline's stream: the default pipeline's is the kinesis resource's."""
    return kinesis.stream_name if pipeline.is_default else pipeline.stream.name


def consumer_for(
    kinesis: KinesisResource,
    kafka: KafkaResource,
    lake: LakeResource,
    leases: LeaseTableResource,
    opensearch: OpenSearchResource | None = None,
    owner: str | None = None,
    pipeline: Pipeline = DEFAULT_PIPELINE,
    run_id: str | None = None,
    job_name: str | None = None,
) -> StreamConsumer:
    """The pipeline's shard consumer; its batches are traced as the kinesis resource's `tracing` says,
    each root span carrying the worker run's `run_id` and `job_name`."""
    s3 = lake.client()
    stream = stream_of(pipeline, kinesis)
    tracing = kinesis.tracing
    attributes = {"dagster.run_id": run_id, "dagster.job_name": job_name}
    client = kinesis.client()
    source = (
        KafkaSource(kafka.config(), stream, group_id=f"etl-platform.{pipeline.name}")
        if pipeline.stream.kind == "kafka"
        else KinesisSource(client, stream)
    )
    return StreamConsumer(
        client,
        s3,
        lake.bucket,
        stream,
        leases.table(stream),
        kinesis.consumer_config(),
        search_sink=opensearch.search_sink(s3, lake.bucket, pipeline) if opensearch else None,
        owner=owner,
        pipeline=pipeline,
        source=source,
        trace_batch=tracing.batch_tracer(pipeline.name, stream, attributes) if tracing else None,
    )


class ShardWorkerConfig(Config):
    shard_ids: list[str] = Field(description="the shards this worker owns (taken in turn, a read each per round)")
    budget_s: float | None = Field(
        default=None,
        description="hand the shard over after this long (default: the kinesis resource's worker_budget_s)",
    )
    until_caught_up: bool = Field(default=False, description="stop once the shard is caught up (tests, scripts)")
    lease_wait_s: float = Field(
        default=0.0,
        description="wait this long for a shard whose lease another worker holds (a successor started "
        "ahead of a handover); 0: leave such a shard alone",
    )


def log_materializations(
    context: OpExecutionContext, result: BatchResult, pipeline: Pipeline = DEFAULT_PIPELINE
) -> None:
    """Report the lake partitions this batch wrote, with counts and latency, for the UI."""
    raw_metadata, processed_metadata = raw_column_metadata(pipeline), processed_column_metadata(pipeline)
    for day, rows in sorted(result.rows_by_day.items()):
        common = {"rows": rows, "shard_id": result.shard_id, "first_sequence": result.first_sequence or ""}
        context.log_event(
            AssetMaterialization(
                pipeline_key(pipeline, "raw_events"),
                partition=day,
                metadata={
                    **common,
                    **raw_metadata,
                    "errors_in_batch": result.errors,
                    "objects": len(result.raw_objects),
                },
            )
        )
        context.log_event(
            AssetMaterialization(
                pipeline_key(pipeline, "processed_events"),
                partition=day,
                metadata={
                    **common,
                    **processed_metadata,
                    "anomalies_in_batch": result.anomalies,
                    "latency_s": round(result.max_latency_s, 3),
                    "batch_seconds": round(result.timings.get("total", 0.0), 3),
                },
            )
        )


def worker_job(pipeline: Pipeline) -> JobDefinition:
    """The pipeline's shard worker job: a run owns some of its stream's shards until its budget ends."""

    @op(
        name=definition_name(pipeline, "consume_shard"),
        description=f"Own shards of {pipeline.name}'s stream and consume them until the budget ends "
        "(see sensors/kinesis.py).",
    )
    def consume_shard(
        context: OpExecutionContext,
        config: ShardWorkerConfig,
        kinesis: KinesisResource,
        kafka: KafkaResource,
        lake: LakeResource,
        leases: LeaseTableResource,
        opensearch: OpenSearchResource,
        cloudwatch: CloudWatchResource,
    ) -> None:
        consumer = consumer_for(
            kinesis,
            kafka,
            lake,
            leases,
            opensearch,
            owner=f"run:{context.run_id}",
            pipeline=pipeline,
            run_id=context.run_id,
            job_name=context.job_name,
        )
        budget_s = config.budget_s if config.budget_s is not None else kinesis.worker_budget_s

        def on_batch(result: BatchResult) -> None:
            context.log.info(
                f"shard {result.shard_id}: {result.records} records -> {result.events} events, {result.errors} "
                f"errors, {result.dropped} dropped, {result.anomalies} anomalies, {result.search_indexed} indexed "
                f"({result.search_failed} backed up); ended={result.ended} behind={result.millis_behind_latest}ms "
                f"timings={ {k: round(v, 3) for k, v in result.timings.items()} }",
                extra=batch_log_fields(pipeline, consumer.stream_name, result),
            )
            log_materializations(context, result, pipeline)
            publish_batch_metrics(cloudwatch, consumer.stream_name, result, context.log, native)
            heartbeat.reset()

        # While idle, the worker still reports its iterator age: the lag alarm counts silence as a stall.
        # Kinesis reports it itself for every GetRecords where its metrics are read (native).
        native = native_metrics_for(cloudwatch, pipeline.stream.kind)
        heartbeat = Heartbeat()

        def on_read(shard_id: str, millis_behind_latest: int) -> None:
            age = heartbeat.observe(millis_behind_latest)
            if age is not None:
                publish_heartbeat(cloudwatch, consumer.stream_name, age, context.log, native)

        budget = WorkBudget(seconds=budget_s, until_caught_up=config.until_caught_up, lease_wait_s=config.lease_wait_s)
        outcomes = consumer.work_many(config.shard_ids, budget, on_batch=on_batch, on_read=None if native else on_read)
        for outcome in outcomes:
            context.log.info(
                f"shard {outcome.shard_id}: {len(outcome.batches)} batches in {outcome.reads} reads; "
                f"stopped: {outcome.stop_reason}" + (f" ({outcome.held_by})" if outcome.held_by else ""),
                extra={"pipeline": pipeline.name, "stream": consumer.stream_name, "shard": outcome.shard_id},
            )

    @job(
        name=definition_name(pipeline, "kinesis_microbatch_job"),
        # One op: in-process execution saves a Python start.
        executor_def=in_process_executor,
        hooks={failure_metrics_hook(pipeline)},
        tags={PIPELINE_TAG: pipeline.name},
        description=f"A shard worker of pipeline {pipeline.name}: owns shards' leases and loops micro-batches "
        "until its budget ends.",
    )
    def kinesis_microbatch_job() -> None:
        consume_shard()

    return kinesis_microbatch_job


def _worker_runs(
    context: SensorEvaluationContext, shard_ids: list[str], pipeline: Pipeline
) -> dict[str, list[WorkerRun]]:
    runs: dict[str, list[WorkerRun]] = {}
    for sid in shard_ids:
        records = context.instance.get_run_records(
            filters=RunsFilter(tags={shard_tag(sid, pipeline): "owner"}, statuses=list(IN_FLIGHT)), limit=10
        )
        runs[sid] = [
            WorkerRun(record.dagster_run.run_id, IN_FLIGHT[record.dagster_run.status], record.start_time)
            for record in records
        ]
    return runs


def _status_table(leases: dict[str, Lease], now: float) -> str:
    rows = ["| shard | owner | checkpoint | behind (ms) | last commit | state |", "|---|---|---|---|---|---|"]
    for lease in sorted(leases.values(), key=lambda item: (item.depth, item.shard_id)):
        owner = lease.owner if lease.held(now) else "-"
        committed = (
            datetime.fromtimestamp(lease.committed_at, UTC).isoformat(timespec="seconds") if lease.committed_at else "-"
        )
        state = "finished" if lease.finished else ("working" if lease.held(now) else "free")
        checkpoint = lease.checkpoint or "-"
        rows.append(
            f"| {lease.shard_id} | {owner} | {checkpoint} | {lease.millis_behind_latest} | {committed} | {state} |"
        )
    return "\n".join(rows)


def worker_sensor(pipeline: Pipeline, job_def: JobDefinition) -> SensorDefinition:
    """The supervisor of the pipeline's shard workers (see the module docstring)."""

    @sensor(
        name=definition_name(pipeline, "kinesis_microbatch_sensor"),
        job=job_def,
        minimum_interval_seconds=5,
        default_status=DefaultSensorStatus.RUNNING,
        description=f"Keeps a live shard worker per readable shard of {pipeline.name}'s stream (lineage-ordered, "
        "one owner per shard).",
    )
    def kinesis_microbatch_sensor(
        context: SensorEvaluationContext,
        kinesis: KinesisResource,
        kafka: KafkaResource,
        lake: LakeResource,
        leases: LeaseTableResource,
    ) -> SensorResult | SkipReason:
        return _supervise(context, pipeline, kinesis, kafka, lake, leases)

    return kinesis_microbatch_sensor


def _supervise(
    context: SensorEvaluationContext,
    pipeline: Pipeline,
    kinesis: KinesisResource,
    kafka: KafkaResource,
    lake: LakeResource,
    leases: LeaseTableResource,
) -> SensorResult | SkipReason:
    consumer = consumer_for(kinesis, kafka, lake, leases, pipeline=pipeline)
    now = time.time()
    table = consumer.sync_leases()
    plan = supervise(
        table,
        _worker_runs(context, [lease.shard_id for lease in consumer.readable(table)], pipeline),
        now,
        handover_lead_s=kinesis.handover_lead_s,
    )
    for run_id, why in plan.dead_runs.items():
        run = context.instance.get_run_by_id(run_id)
        if run is not None and not run.is_finished:
            context.instance.report_run_failed(run, message=f"shard worker presumed dead: {why}")
            context.log.warning(f"marked run {run_id} failed: {why}")
    cursor = json.loads(context.cursor) if context.cursor else {}
    events = []
    if now - cursor.get("status_at", 0.0) >= STATUS_EVERY_S:
        cursor["status_at"] = now
        events.append(
            AssetObservation(
                asset_key=pipeline_key(pipeline, "kinesis_stream"),
                metadata={
                    "shards": MetadataValue.md(_status_table(table, now)),
                    "open_shards": sum(1 for lease in table.values() if not lease.finished),
                    "max_behind_ms": max((lease.millis_behind_latest for lease in table.values()), default=0),
                },
            )
        )
    context.update_cursor(json.dumps(cursor))
    size = kinesis.shards_per_worker
    wait_s = kinesis.handover_lead_s + kinesis.lease_duration_s
    groups = [plan.launch[i : i + size] for i in range(0, len(plan.launch), size)]
    op_name = definition_name(pipeline, "consume_shard")
    group_tag = "" if pipeline.is_default else f"{pipeline.name}:"
    requests = [
        RunRequest(
            # A successor started ahead of a handover waits out the lead and the owner's last flush.
            run_config={"ops": {op_name: {"config": {"shard_ids": group, "lease_wait_s": wait_s}}}},
            tags={SHARD_TAG: group_tag + "+".join(group), **{shard_tag(sid, pipeline): "owner" for sid in group}},
        )
        for group in groups
    ]
    if requests or events:
        return SensorResult(run_requests=requests, asset_events=events)
    summary = ", ".join(f"{sid}: {why}" for sid, why in plan.waiting.items())
    return SkipReason(
        f"{pipeline.name}: {len(table)} shards, every readable one has a worker" + (f" ({summary})" if summary else "")
    )


kinesis_microbatch_job = worker_job(DEFAULT_PIPELINE)
kinesis_microbatch_sensor = worker_sensor(DEFAULT_PIPELINE, kinesis_microbatch_job)


def stream_definitions(pipelines: Iterable[Pipeline]) -> tuple[list[JobDefinition], list[SensorDefinition]]:
    """Every pipeline's worker job and supervisor (the default pipeline's are the module's own)."""
    jobs, sensors = [kinesis_microbatch_job], [kinesis_microbatch_sensor]
    for pipeline in pipelines:
        if not pipeline.is_default:
            jobs.append(worker_job(pipeline))
            sensors.append(worker_sensor(pipeline, jobs[-1]))
    return jobs, sensors
