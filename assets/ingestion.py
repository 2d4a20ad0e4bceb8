"""Lake assets per pipeline: its stream (and the default pipeline's sources), raw events
(Firehose-style delivery) and processed events.

The shard workers write both lake datasets and report materializations for the days they touched;
materializing `processed_events` here (a UI backfill) replays it from raw. `lake_assets_for` builds
them for one pipeline (`config/pipelines.yaml`); every other domain's factory hangs off its keys.
"""

from datetime import date, timedelta

from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetSpec,
    FreshnessPolicy,
    MaterializeResult,
    MetadataValue,
    TableColumn,
    TableColumnDep,
    TableColumnLineage,
    TableSchema,
    asset,
)

from assets.partitions import daily_partitions
from etl_platform.lake import layout
from etl_platform.lake.readers import read_day
from etl_platform.lake.replay import recompute_processed_day
from etl_platform.pipelines import Pipeline
from resources import LakeResource, deployment_pipelines

SOURCE_KINDS = {
    "app_log": "Application logs",
    "iot": "IoT devices",
    "cdc": "Database change data capture",
    "api": "External APIs",
    "web": "Web applications",
}

source_specs = [
    AssetSpec(f"source_{kind}", description=text, group_name="sources", kinds={"python"})
    for kind, text in SOURCE_KINDS.items()
]


def _columns(schema: dict) -> TableSchema:
    return TableSchema(columns=[TableColumn(name, str(dtype)) for name, dtype in schema.items()])


def pipeline_key(pipeline: Pipeline, name: str) -> AssetKey:
    """An asset of `pipeline`: the default pipeline's keys are unprefixed (as before pipelines existed),
    another pipeline's carry its name (`seed/processed_events`)."""
    return AssetKey(name) if pipeline.is_default else AssetKey([pipeline_prefix(pipeline), name])


def pipeline_prefix(pipeline: Pipeline) -> str:
    """The pipeline's name as an asset key part and group name (letters, digits, _)."""
    return pipeline.name.replace("-", "_")


def definition_name(pipeline: Pipeline, name: str) -> str:
    """The name of one of the pipeline's jobs, ops, sensors, schedules or hooks: the default pipeline's
    is `name` itself, another's is prefixed with its name (`seed_consume_shard`)."""
    return name if pipeline.is_default else f"{pipeline_prefix(pipeline)}_{name}"


def pipeline_group(pipeline: Pipeline, domain: str) -> str:
    """The default pipeline's assets group by domain (lake, warehouse, search); another pipeline's
    are one group named after it."""
    return domain if pipeline.is_default else pipeline_prefix(pipeline)


def raw_column_metadata(pipeline: Pipeline) -> dict:
    return {"dagster/column_schema": _columns(pipeline.contract.raw_schema())}


def processed_column_metadata(pipeline: Pipeline) -> dict:
    """Column schema and lineage for the UI: every processed column copies its raw column, except the
    two analytics columns, computed per key over the value in stream order."""
    contract = pipeline.contract
    raw = pipeline_key(pipeline, "raw_events")

    def from_raw(*columns: str) -> list[TableColumnDep]:
        return [TableColumnDep(asset_key=raw, column_name=c) for c in columns]

    window_inputs = (*contract.keys, contract.value, "shard_depth", "sequence_number", "sub_sequence")
    return {
        "dagster/column_schema": _columns(contract.processed_schema()),
        "dagster/column_lineage": TableColumnLineage(
            deps_by_column={
                **{name: from_raw(name) for name in contract.raw_schema()},
                "avg_value": from_raw(*window_inputs),
                "anomaly_status": from_raw(*window_inputs),
            }
        ),
    }


def _stream_spec(pipeline: Pipeline) -> AssetSpec:
    if pipeline.is_default:
        return AssetSpec(
            "kinesis_stream",
            description="Kinesis Data Stream carrying JSON events (partition key user_id)",
            deps=[spec.key for spec in source_specs],
            group_name="stream",
            kinds={"kinesis"},
        )
    contract = pipeline.contract
    return AssetSpec(
        pipeline_key(pipeline, "kinesis_stream"),
        description=f"Kinesis Data Stream {pipeline.stream.name}: {pipeline.description or 'JSON records'} "
        f"(keys {', '.join(contract.keys)}; value {contract.value}; time {contract.time})",
        group_name=pipeline_group(pipeline, "stream"),
        kinds={"kinesis"},
    )


def lake_assets_for(pipeline: Pipeline) -> list:
    """The pipeline's stream, raw events and processed events (with the default pipeline, its sources)."""
    stream = _stream_spec(pipeline)
    raw_dataset, processed_dataset = pipeline.dataset(layout.RAW), pipeline.dataset(layout.PROCESSED)
    errors_dataset = pipeline.dataset(layout.ERRORS)
    raw_metadata, processed_metadata = raw_column_metadata(pipeline), processed_column_metadata(pipeline)
    stream_name = None if pipeline.is_default else pipeline.stream.name  # the default: the lake resource's
    raw_schema = pipeline.contract.raw_schema()

    @asset(
        key=pipeline_key(pipeline, "raw_events"),
        partitions_def=daily_partitions,
        deps=[stream],
        group_name=pipeline_group(pipeline, "lake"),
        kinds={"s3"},
        description=f"Decoded events as delivered from the stream: {raw_dataset}/dt=…/hour=…/*.jsonl.gz. "
        "Written by the shard workers; materializing a partition here reports what the lake holds.",
    )
    def raw_events(context: AssetExecutionContext, lake: LakeResource) -> MaterializeResult:
        day = date.fromisoformat(context.partition_key)
        s3 = lake.client()
        frame = read_day(s3, lake.bucket, raw_dataset, day, lake.pending_objects(stream_name), raw_schema)
        errors = layout.list_keys(s3, lake.bucket, layout.day_prefix(errors_dataset, day))
        context.log.info(f"raw {day}: {frame.height} events, {len(errors)} error objects")
        first_key = pipeline.contract.keys[0]
        return MaterializeResult(
            metadata={
                **raw_metadata,
                "rows": frame.height,
                "error_objects": len(errors),
                f"distinct_{first_key}": frame[first_key].n_unique() if frame.height else 0,
                "path": MetadataValue.path(f"s3://{lake.bucket}/{layout.day_prefix(raw_dataset, day)}"),
            }
        )

    analytics = pipeline.analytics

    @asset(
        key=pipeline_key(pipeline, "processed_events"),
        partitions_def=daily_partitions,
        deps=[raw_events],
        group_name=pipeline_group(pipeline, "lake"),
        kinds={"s3", "parquet"},
        # The stream path materializes it every buffer interval: an hour without one means the consumer
        # (or the stream) has stopped.
        freshness_policy=FreshnessPolicy.time_window(fail_window=timedelta(hours=1)),
        description=f"Events with the stream analytics (avg_value over {analytics.avg_rows + 1} rows, "
        f"anomaly_status at {analytics.sigmas:g} sigma over the previous {analytics.baseline_rows}): "
        f"{processed_dataset}/dt=…/hour=…/*.parquet. A materialization replays the day from raw.",
    )
    def processed_events(context: AssetExecutionContext, lake: LakeResource) -> MaterializeResult:
        day = date.fromisoformat(context.partition_key)
        result = recompute_processed_day(
            lake.client(),
            lake.bucket,
            day,
            analytics,
            pending=lake.pending_objects(stream_name),
            root=pipeline.lake_root,
            schema=raw_schema,
        )
        context.log.info(
            f"replayed {day}: {result.rows} rows ({result.anomalies} anomalies) from {result.history_rows} rows "
            f"of history; wrote {len(result.written)} objects; {result.rows_changed} rows changed their analytics"
        )
        if result.rows_changed:
            context.log.warning(
                f"{result.rows_changed} rows of {day} now differ from what the stream computed: keys whose history "
                "reaches back beyond the replay's lookback, or events that arrived after its range (lake/replay.py)"
            )
        return MaterializeResult(
            metadata={
                **processed_metadata,
                "rows": result.rows,
                "anomalies": result.anomalies,
                "history_rows": result.history_rows,
                "objects_written": len(result.written),
                "rows_changed": result.rows_changed,
                "path": MetadataValue.path(f"s3://{lake.bucket}/{layout.day_prefix(processed_dataset, day)}"),
            }
        )

    sources = source_specs if pipeline.is_default else []
    return [*sources, stream, raw_events, processed_events]


DEFAULT_PIPELINE = deployment_pipelines().default
lake_assets = lake_assets_for(DEFAULT_PIPELINE)
kinesis_stream, raw_events, processed_events = lake_assets[-3:]
