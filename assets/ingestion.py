"""Lake assets: the stream's sources, raw events (Firehose-style delivery) and processed events.

The Kinesis sensor's micro-batch runs write both lake datasets and report materializations for the
days they touched; materializing `processed_events` here (a UI backfill) replays it from raw.
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
from etl_platform.lake.checks import PROCESSED_SCHEMA
from etl_platform.lake.readers import RAW_SCHEMA, read_day
from etl_platform.lake.replay import recompute_processed_day
from resources import AnalyticsResource, LakeResource

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
kinesis_stream = AssetSpec(
    "kinesis_stream",
    description="Kinesis Data Stream carrying JSON events (partition key user_id)",
    deps=[spec.key for spec in source_specs],
    group_name="stream",
    kinds={"kinesis"},
)


def _columns(schema: dict) -> TableSchema:
    return TableSchema(columns=[TableColumn(name, str(dtype)) for name, dtype in schema.items()])


def _from_raw(*columns: str) -> list[TableColumnDep]:
    return [TableColumnDep(asset_key=AssetKey("raw_events"), column_name=c) for c in columns]


# Column lineage for the UI: every processed column copies its raw column, except the two analytics
# columns, computed per (user_id, event_type) over value in stream order.
_WINDOW_INPUTS = ("user_id", "event_type", "value", "shard_depth", "sequence_number", "sub_sequence")
PROCESSED_COLUMN_METADATA = {
    "dagster/column_schema": _columns(PROCESSED_SCHEMA),
    "dagster/column_lineage": TableColumnLineage(
        deps_by_column={
            **{name: _from_raw(name) for name in RAW_SCHEMA},
            "avg_value": _from_raw(*_WINDOW_INPUTS),
            "anomaly_status": _from_raw(*_WINDOW_INPUTS),
        }
    ),
}
RAW_COLUMN_METADATA = {"dagster/column_schema": _columns(RAW_SCHEMA)}


@asset(
    partitions_def=daily_partitions,
    deps=[kinesis_stream],
    group_name="lake",
    kinds={"s3"},
    description="Decoded events as delivered from the stream: raw/dt=…/hour=…/*.jsonl.gz. Written by the "
    "Kinesis sensor's micro-batch runs; materializing a partition here reports what the lake holds.",
)
def raw_events(context: AssetExecutionContext, lake: LakeResource) -> MaterializeResult:
    day = date.fromisoformat(context.partition_key)
    s3 = lake.client()
    frame = read_day(s3, lake.bucket, layout.RAW, day, lake.pending_objects())
    errors = layout.list_keys(s3, lake.bucket, layout.day_prefix(layout.ERRORS, day))
    context.log.info(f"raw {day}: {frame.height} events, {len(errors)} error objects")
    return MaterializeResult(
        metadata={
            **RAW_COLUMN_METADATA,
            "rows": frame.height,
            "error_objects": len(errors),
            "users": frame["user_id"].n_unique() if frame.height else 0,
            "path": MetadataValue.path(f"s3://{lake.bucket}/{layout.day_prefix(layout.RAW, day)}"),
        }
    )


@asset(
    partitions_def=daily_partitions,
    deps=[raw_events],
    group_name="lake",
    kinds={"s3", "parquet"},
    # The stream path materializes it every buffer interval: an hour without one means the consumer
    # (or the stream) has stopped.
    freshness_policy=FreshnessPolicy.time_window(fail_window=timedelta(hours=1)),
    description="Events with the stream analytics (avg_value over 11 rows, anomaly_status at 3 sigma "
    "over the previous 100): processed/dt=…/hour=…/*.parquet. A materialization replays the day from raw.",
)
def processed_events(
    context: AssetExecutionContext, lake: LakeResource, analytics: AnalyticsResource
) -> MaterializeResult:
    day = date.fromisoformat(context.partition_key)
    result = recompute_processed_day(
        lake.client(), lake.bucket, day, analytics.config(), pending=lake.pending_objects()
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
            **PROCESSED_COLUMN_METADATA,
            "rows": result.rows,
            "anomalies": result.anomalies,
            "history_rows": result.history_rows,
            "objects_written": len(result.written),
            "rows_changed": result.rows_changed,
            "path": MetadataValue.path(f"s3://{lake.bucket}/{layout.day_prefix(layout.PROCESSED, day)}"),
        }
    )


lake_assets = [*source_specs, kinesis_stream, raw_events, processed_events]
