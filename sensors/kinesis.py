"""The Kinesis micro-batch sensor and the job it launches: one run = one bounded batch of one shard.

Each tick the sensor reads the shards, the checkpoints and each unfinished shard's latest run, and
asks `etl_platform.stream.scheduling.due_batches` which shards are due: readable ones (children only
after their parents are fully consumed) with no run still queued or running (at most one in flight
per shard; the run queue also limits the `etl/shard` tag to one) whose buffer is due: the last batch
stopped at its size cap, or the buffer interval has passed and new records are waiting
(Firehose's size-or-interval buffering), or a closed parent must be finished. It turns the answer
into run requests.
"""

import json
import time
from datetime import UTC, datetime

from dagster import (
    AssetKey,
    AssetMaterialization,
    Backoff,
    Config,
    DagsterRunStatus,
    DefaultSensorStatus,
    OpExecutionContext,
    RetryPolicy,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SkipReason,
    in_process_executor,
    job,
    op,
    sensor,
)

from assets.ingestion import PROCESSED_COLUMN_METADATA, RAW_COLUMN_METADATA
from etl_platform.stream.consumer import BatchResult, StreamConsumer
from etl_platform.stream.scheduling import LatestRun, due_batches
from resources import CloudWatchResource, KinesisResource, LakeResource, OpenSearchResource
from sensors.alarms import delivery_failure_metrics, publish_batch_metrics

SHARD_TAG = "etl/shard"
POSITION_TAG = "etl/position"
IN_FLIGHT = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
    DagsterRunStatus.CANCELING,
]


def consumer_for(
    kinesis: KinesisResource, lake: LakeResource, opensearch: OpenSearchResource | None = None
) -> StreamConsumer:
    s3 = lake.client()
    return StreamConsumer(
        kinesis.client(),
        s3,
        lake.bucket,
        kinesis.stream_name,
        kinesis.consumer_config(),
        search_sink=opensearch.search_sink(s3, lake.bucket) if opensearch else None,
    )


class ShardBatchConfig(Config):
    shard_id: str


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


@op(retry_policy=RetryPolicy(max_retries=3, delay=2, backoff=Backoff.EXPONENTIAL))
def consume_shard_batch(
    context: OpExecutionContext,
    config: ShardBatchConfig,
    kinesis: KinesisResource,
    lake: LakeResource,
    opensearch: OpenSearchResource,
    cloudwatch: CloudWatchResource,
) -> None:
    result = consumer_for(kinesis, lake, opensearch).process_shard(config.shard_id)
    context.log.info(
        f"shard {result.shard_id}: {result.records} records -> {result.events} events, {result.errors} errors, "
        f"{result.anomalies} anomalies, {result.search_indexed} indexed ({result.search_failed} backed up); "
        f"ended={result.ended} cut={result.cut} "
        f"behind={result.millis_behind_latest}ms timings={ {k: round(v, 3) for k, v in result.timings.items()} }"
    )
    log_materializations(context, result)
    publish_batch_metrics(cloudwatch, kinesis.stream_name, result, context.log)


@job(
    # One op: in-process execution saves a Python start per micro-batch.
    executor_def=in_process_executor,
    hooks={delivery_failure_metrics},
    description="One micro-batch of one shard: read, decode, deliver raw, analyse, deliver processed, commit.",
)
def kinesis_microbatch_job() -> None:
    consume_shard_batch()


def _latest_run(context: SensorEvaluationContext, shard_id: str) -> LatestRun | None:
    runs = context.instance.get_runs(filters=RunsFilter(tags={SHARD_TAG: shard_id}), limit=1)
    if not runs:
        return None
    run = runs[0]
    return LatestRun(
        in_flight=run.status in IN_FLIGHT,
        failed=run.status == DagsterRunStatus.FAILURE,
        position=run.tags.get(POSITION_TAG),
    )


def _has_new_records(consumer: StreamConsumer, shard_id: str, after: str | None) -> bool:
    kwargs = {"StreamName": consumer.stream_name, "ShardId": shard_id}
    if after is None:
        kwargs["ShardIteratorType"] = "TRIM_HORIZON"
    else:
        kwargs.update(ShardIteratorType="AFTER_SEQUENCE_NUMBER", StartingSequenceNumber=after)
    iterator = consumer.kinesis.get_shard_iterator(**kwargs)["ShardIterator"]
    return bool(consumer.kinesis.get_records(ShardIterator=iterator, Limit=1)["Records"])


@sensor(
    job=kinesis_microbatch_job,
    minimum_interval_seconds=5,
    default_status=DefaultSensorStatus.RUNNING,
    description="Launches micro-batch runs per Kinesis shard (lineage-ordered, one in flight per shard).",
)
def kinesis_microbatch_sensor(context: SensorEvaluationContext, kinesis: KinesisResource, lake: LakeResource):
    consumer = consumer_for(kinesis, lake)
    cursor: dict[str, dict] = json.loads(context.cursor) if context.cursor else {}
    now = time.time()
    shards = consumer.shards()
    checkpoints = consumer.checkpoints.load_all()
    finished = {sid for sid, cp in checkpoints.items() if cp.finished}  # a finished shard is never scheduled again
    latest_runs = {s.shard_id: _latest_run(context, s.shard_id) for s in shards if s.shard_id not in finished}
    plan = due_batches(
        shards,
        checkpoints,
        latest_runs,
        cursor,
        now,
        kinesis.buffer_interval_s,
        has_new_records=lambda sid, after: _has_new_records(consumer, sid, after),
    )
    context.update_cursor(json.dumps(plan.cursor))
    if not plan.requests:
        return SkipReason(
            f"{len(shards)} shards, {len(finished)} finished: nothing due at "
            f"{datetime.now(UTC).isoformat(timespec='seconds')}"
        )
    return [
        RunRequest(
            run_key=batch.run_key,
            run_config={"ops": {"consume_shard_batch": {"config": {"shard_id": batch.shard_id}}}},
            tags={SHARD_TAG: batch.shard_id, POSITION_TAG: batch.position},
        )
        for batch in plan.requests
    ]
