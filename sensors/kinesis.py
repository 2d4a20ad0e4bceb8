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
from datetime import UTC, datetime

from dagster import (
    AssetKey,
    AssetMaterialization,
    AssetObservation,
    Config,
    DagsterRunStatus,
    DefaultSensorStatus,
    MetadataValue,
    OpExecutionContext,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    in_process_executor,
    job,
    op,
    sensor,
)
from pydantic import Field

from assets.ingestion import PROCESSED_COLUMN_METADATA, RAW_COLUMN_METADATA
from etl_platform.stream.consumer import BatchResult, StreamConsumer, WorkBudget
from etl_platform.stream.leases import Lease
from etl_platform.stream.scheduling import WorkerRun, supervise
from resources import CloudWatchResource, KinesisResource, LakeResource, LeaseTableResource, OpenSearchResource
from sensors.alarms import delivery_failure_metrics, publish_batch_metrics

SHARD_TAG = "etl/shard"  # the worker's shards joined by "+" (the run queue allows one run per value)


def shard_tag(shard_id: str) -> str:
    """A tag each worker run carries per shard it owns, to find a shard's runs."""
    return f"etl/shard.{shard_id}"


IN_FLIGHT = {
    DagsterRunStatus.QUEUED: "queued",
    DagsterRunStatus.NOT_STARTED: "queued",
    DagsterRunStatus.STARTING: "starting",
    DagsterRunStatus.STARTED: "started",
    DagsterRunStatus.CANCELING: "starting",  # ending: it releases the lease on its way out
}
STATUS_EVERY_S = 30.0


def consumer_for(
    kinesis: KinesisResource,
    lake: LakeResource,
    leases: LeaseTableResource,
    opensearch: OpenSearchResource | None = None,
    owner: str | None = None,
) -> StreamConsumer:
    s3 = lake.client()
    return StreamConsumer(
        kinesis.client(),
        s3,
        lake.bucket,
        kinesis.stream_name,
        leases.table(kinesis.stream_name),
        kinesis.consumer_config(),
        search_sink=opensearch.search_sink(s3, lake.bucket) if opensearch else None,
        owner=owner,
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


def log_materializations(context: OpExecutionContext, result: BatchResult) -> None:
    """Report the lake partitions this batch wrote, with counts and latency, for the UI."""
    for day, rows in sorted(result.rows_by_day.items()):
        common = {"rows": rows, "shard_id": result.shard_id, "first_sequence": result.first_sequence or ""}
        context.log_event(
            AssetMaterialization(
                AssetKey("raw_events"),
                partition=day,
                metadata={
                    **common,
                    **RAW_COLUMN_METADATA,
                    "errors_in_batch": result.errors,
                    "objects": len(result.raw_objects),
                },
            )
        )
        context.log_event(
            AssetMaterialization(
                AssetKey("processed_events"),
                partition=day,
                metadata={
                    **common,
                    **PROCESSED_COLUMN_METADATA,
                    "anomalies_in_batch": result.anomalies,
                    "latency_s": round(result.max_latency_s, 3),
                    "batch_seconds": round(result.timings.get("total", 0.0), 3),
                },
            )
        )


@op(description="Own one shard's lease and consume it until the budget ends (see sensors/kinesis.py).")
def consume_shard(
    context: OpExecutionContext,
    config: ShardWorkerConfig,
    kinesis: KinesisResource,
    lake: LakeResource,
    leases: LeaseTableResource,
    opensearch: OpenSearchResource,
    cloudwatch: CloudWatchResource,
) -> None:
    consumer = consumer_for(kinesis, lake, leases, opensearch, owner=f"run:{context.run_id}")
    budget_s = config.budget_s if config.budget_s is not None else kinesis.worker_budget_s

    def on_batch(result: BatchResult) -> None:
        context.log.info(
            f"shard {result.shard_id}: {result.records} records -> {result.events} events, {result.errors} errors, "
            f"{result.anomalies} anomalies, {result.search_indexed} indexed ({result.search_failed} backed up); "
            f"ended={result.ended} behind={result.millis_behind_latest}ms "
            f"timings={ {k: round(v, 3) for k, v in result.timings.items()} }"
        )
        log_materializations(context, result)
        publish_batch_metrics(cloudwatch, kinesis.stream_name, result, context.log)

    budget = WorkBudget(seconds=budget_s, until_caught_up=config.until_caught_up, lease_wait_s=config.lease_wait_s)
    for outcome in consumer.work_many(config.shard_ids, budget, on_batch=on_batch):
        context.log.info(
            f"shard {outcome.shard_id}: {len(outcome.batches)} batches in {outcome.reads} reads; "
            f"stopped: {outcome.stop_reason}" + (f" ({outcome.held_by})" if outcome.held_by else "")
        )


@job(
    # One op: in-process execution saves a Python start.
    executor_def=in_process_executor,
    hooks={delivery_failure_metrics},
    description="A shard worker: owns one shard's lease and loops micro-batches until its budget ends.",
)
def kinesis_microbatch_job() -> None:
    consume_shard()


def _worker_runs(context: SensorEvaluationContext, shard_ids: list[str]) -> dict[str, list[WorkerRun]]:
    runs: dict[str, list[WorkerRun]] = {}
    for sid in shard_ids:
        records = context.instance.get_run_records(
            filters=RunsFilter(tags={shard_tag(sid): "owner"}, statuses=list(IN_FLIGHT)), limit=10
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


@sensor(
    job=kinesis_microbatch_job,
    minimum_interval_seconds=5,
    default_status=DefaultSensorStatus.RUNNING,
    description="Keeps a live shard worker per readable Kinesis shard (lineage-ordered, one owner per shard).",
)
def kinesis_microbatch_sensor(
    context: SensorEvaluationContext, kinesis: KinesisResource, lake: LakeResource, leases: LeaseTableResource
) -> SensorResult | SkipReason:
    consumer = consumer_for(kinesis, lake, leases)
    now = time.time()
    table = consumer.sync_leases()
    plan = supervise(
        table,
        _worker_runs(context, [lease.shard_id for lease in consumer.readable(table)]),
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
                asset_key=AssetKey("kinesis_stream"),
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
    requests = [
        RunRequest(
            # A successor started ahead of a handover waits out the lead and the owner's last flush.
            run_config={"ops": {"consume_shard": {"config": {"shard_ids": group, "lease_wait_s": wait_s}}}},
            tags={SHARD_TAG: "+".join(group), **{shard_tag(sid): "owner" for sid in group}},
        )
        for group in groups
    ]
    if requests or events:
        return SensorResult(run_requests=requests, asset_events=events)
    summary = ", ".join(f"{sid}: {why}" for sid, why in plan.waiting.items())
    return SkipReason(f"{len(table)} shards, every readable one has a worker" + (f" ({summary})" if summary else ""))
