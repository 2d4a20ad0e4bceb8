"""Warehouse assets: the processed lake loaded into `events` and `anomalies`, one day per partition.

Both tables are loaded by one multi-asset step (one S3 read, one transaction) and can be
materialized separately (subsetting). They follow `processed_events` automatically: an eager
condition without eager's latest-partition-only restriction, so a replayed or late-arriving day
reloads too, while days the lake never had are not backfilled by the automation. A UI backfill
over any range reloads those days; reloading is idempotent (etl_platform.warehouse).

Each table has a partitioned asset check reconciling its row count for the day with the processed
partition in the lake (distinct events; for anomalies, distinct ANOMALY events).
"""

from collections.abc import Iterator
from datetime import date

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetChecksDefinition,
    AssetCheckSeverity,
    AssetExecutionContext,
    AssetKey,
    AssetSpec,
    AutomationCondition,
    BackfillPolicy,
    Backoff,
    Config,
    Jitter,
    MaterializeResult,
    MetadataValue,
    RetryPolicy,
    asset_check,
    multi_asset,
)
from pydantic import Field

from assets.ingestion import DEFAULT_PIPELINE, pipeline_group, pipeline_key, pipeline_prefix
from assets.partitions import daily_partitions
from etl_platform.pipelines import Pipeline
from etl_platform.warehouse import TABLES, partition_counts
from etl_platform.warehouse.source import partition_objects, read_loaded
from resources import LakeResource, WarehouseResource

# eager() only ever considers the latest time partition; dropping that operand lets a reprocessed or
# late day reload as well. newly_missing() still only fires for days that go missing after the
# condition is applied, so turning it on does not launch a load for every historical day.
WAREHOUSE_AUTOMATION = AutomationCondition.eager().without(AutomationCondition.in_latest_time_window())


def warehouse_keys(pipeline: Pipeline) -> dict[str, AssetKey]:
    return {table: pipeline_key(pipeline, f"warehouse_{table}") for table in TABLES}


def _descriptions(pipeline: Pipeline) -> dict[str, str]:
    first_key = pipeline.contract.keys[0]
    where = "" if pipeline.is_default else f" Schema {pipeline.warehouse_schema}."
    return {
        "events": "Every processed event, one row per event_id, with event_date (UTC day of event_time). "
        f"Redshift: DISTKEY({first_key}) SORTKEY(event_time); PostgreSQL locally: partitioned by event_date." + where,
        "anomalies": "The processed events the stream analytics flagged ANOMALY (same columns as events)." + where,
    }


class WarehouseLoadConfig(Config):
    on_drift: str | None = Field(
        default=None,
        description="What to do when processed data has a column the table lacks: 'fail' (name it and stop) or "
        "'add' (ALTER TABLE ADD COLUMN). Default: the warehouse resource's on_drift.",
    )


def warehouse_assets_for(pipeline: Pipeline) -> tuple[list, list]:
    """The pipeline's warehouse load (both tables, one multi-asset) and its two checks."""
    keys = warehouse_keys(pipeline)
    processed = pipeline_key(pipeline, "processed_events")
    descriptions = _descriptions(pipeline)
    stream_name = None if pipeline.is_default else pipeline.stream.name  # the default: the lake resource's

    @multi_asset(
        name="warehouse_tables" if pipeline.is_default else f"{pipeline_prefix(pipeline)}_warehouse_tables",
        specs=[
            AssetSpec(
                key,
                deps=[processed],
                description=descriptions[table],
                group_name=pipeline_group(pipeline, "warehouse"),
                kinds={"redshift"},
                automation_condition=WAREHOUSE_AUTOMATION,
            )
            for table, key in keys.items()
        ],
        partitions_def=daily_partitions,
        backfill_policy=BackfillPolicy.multi_run(max_partitions_per_run=1),
        # A load that failed (a lost connection, a lock timeout, a database restart) rolled back whole:
        # retrying it is safe, and a day must not stay stale until the lake next changes.
        retry_policy=RetryPolicy(max_retries=3, delay=5, backoff=Backoff.EXPONENTIAL, jitter=Jitter.PLUS_MINUS),
        can_subset=True,
    )
    def warehouse_tables(
        context: AssetExecutionContext, config: WarehouseLoadConfig, warehouse: WarehouseResource, lake: LakeResource
    ) -> Iterator[MaterializeResult]:
        """Load the partition's processed day into the selected tables (one transaction)."""
        day = date.fromisoformat(context.partition_key)
        tables = [table for table, key in keys.items() if key in context.selected_asset_keys]
        policy = config.on_drift or warehouse.on_drift
        with warehouse.open(pipeline) as wh:
            results = wh.load_day(
                lake.client(),
                lake.bucket,
                day,
                tables=tables,
                on_drift=policy,
                pending=lake.pending_objects(stream_name),
            )
        for table, result in results.items():
            context.log.info(
                f"{result.table} {day}: {result.rows_loaded} rows loaded, {result.rows_deleted} replaced, "
                f"{result.duplicates_dropped} duplicate deliveries dropped, {result.seconds:.2f}s "
                f"({', '.join(f'{k} {v:.2f}s' for k, v in result.timings.items())})"
            )
            yield MaterializeResult(
                asset_key=keys[table],
                metadata={
                    **result.metadata(),
                    "dagster/row_count": result.rows_loaded,
                    "dagster/table_name": result.table,
                    "dialect": warehouse.dialect,
                    "load_seconds": MetadataValue.float(round(result.seconds, 3)),
                },
            )

    checks = [_reconcile_check(pipeline, table, keys[table]) for table in TABLES]
    return [warehouse_tables], checks


def _reconcile_check(pipeline: Pipeline, table: str, key: AssetKey) -> AssetChecksDefinition:
    what = "distinct events" if table == "events" else "distinct ANOMALY events"

    # Partitioned asset checks (one result per day, like the asset) are a preview feature in Dagster
    # 1.13 (assets/_dagster_preview.py); it is the only way to check the partition that was loaded
    # rather than whichever was last.
    @asset_check(
        asset=key,
        name=f"warehouse_{table}_match_processed",
        partitions_def=daily_partitions,
        blocking=True,
        description=f"The day's rows in the {table} table equal the processed partition's {what}, once each.",
    )
    def reconcile_check(
        context: AssetCheckExecutionContext, warehouse: WarehouseResource, lake: LakeResource
    ) -> AssetCheckResult:
        return _reconcile(context, table, warehouse, lake, pipeline)

    return reconcile_check


def _reconcile(
    context: AssetCheckExecutionContext,
    table: str,
    warehouse: WarehouseResource,
    lake: LakeResource,
    pipeline: Pipeline = DEFAULT_PIPELINE,
) -> AssetCheckResult:
    """The table's rows for the day against the lake's committed rows.

    Against what the day's last load read (the objects it recorded): a difference there is a wrong
    load, an ERROR that blocks the dbt models. Rows the stream committed to the day since that load
    make the table stale, not wrong: a WARN (not blocking), which the automation's next load clears.
    """
    day = date.fromisoformat(context.partition_key)
    s3, pending = lake.client(), lake.pending_objects(None if pipeline.is_default else pipeline.stream.name)
    root = pipeline.lake_root
    loaded = read_loaded(s3, lake.bucket, warehouse.schema_for(pipeline), day)
    at_load = partition_counts(s3, lake.bucket, day, pending, only=loaded, root=root)
    committed = [o.key for o in partition_objects(s3, lake.bucket, day, pending, root)]
    # A second read of the day only when the stream committed objects since the load.
    now = (
        at_load
        if loaded is None or set(committed) == set(loaded)
        else partition_counts(s3, lake.bucket, day, pending, root=root)
    )
    want = at_load.events if table == "events" else at_load.anomalies
    want_now = now.events if table == "events" else now.anomalies
    with warehouse.open(pipeline) as wh:
        rows, distinct = wh.count_rows(table, day)
    correct = rows == want and distinct == rows
    current = correct and want_now == want
    return AssetCheckResult(
        passed=current,
        severity=AssetCheckSeverity.ERROR if not correct else AssetCheckSeverity.WARN,
        description=None
        if current
        else (
            f"the table holds {rows} rows ({distinct} distinct events) where the load read {want}"
            if not correct
            else f"the lake has {want_now - want} more rows for the day since the load; the next load catches up"
        ),
        metadata={
            "day": day.isoformat(),
            "warehouse_rows": rows,
            "warehouse_distinct_event_ids": distinct,
            "expected_rows": want,
            "lake_rows_now": want_now,
            "processed_rows": now.rows,
            "difference": rows - want,
            "objects_loaded": len(loaded) if loaded is not None else -1,
        },
    )


warehouse_assets, warehouse_checks = warehouse_assets_for(DEFAULT_PIPELINE)
(warehouse_tables,) = warehouse_assets
warehouse_events_match_processed, warehouse_anomalies_match_processed = warehouse_checks
WAREHOUSE_KEYS = warehouse_keys(DEFAULT_PIPELINE)
