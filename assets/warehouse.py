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

from assets.ingestion import processed_events
from assets.partitions import daily_partitions
from etl_platform.warehouse import TABLES, partition_counts
from etl_platform.warehouse.source import partition_objects, read_loaded
from resources import LakeResource, WarehouseResource

WAREHOUSE_KEYS: dict[str, AssetKey] = {table: AssetKey(f"warehouse_{table}") for table in TABLES}

# eager() only ever considers the latest time partition; dropping that operand lets a reprocessed or
# late day reload as well. newly_missing() still only fires for days that go missing after the
# condition is applied, so turning it on does not launch a load for every historical day.
WAREHOUSE_AUTOMATION = AutomationCondition.eager().without(AutomationCondition.in_latest_time_window())

_DESCRIPTIONS = {
    "events": "Every processed event, one row per event_id, with event_date (UTC day of event_time). "
    "Redshift: DISTKEY(user_id) SORTKEY(event_time); PostgreSQL locally: partitioned by event_date.",
    "anomalies": "The processed events the stream analytics flagged ANOMALY (same columns as events).",
}


class WarehouseLoadConfig(Config):
    on_drift: str | None = Field(
        default=None,
        description="What to do when processed data has a column the table lacks: 'fail' (name it and stop) or "
        "'add' (ALTER TABLE ADD COLUMN). Default: the warehouse resource's on_drift.",
    )


@multi_asset(
    name="warehouse_tables",
    specs=[
        AssetSpec(
            key,
            deps=[processed_events],
            description=_DESCRIPTIONS[table],
            group_name="warehouse",
            kinds={"redshift"},
            automation_condition=WAREHOUSE_AUTOMATION,
        )
        for table, key in WAREHOUSE_KEYS.items()
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
    tables = [table for table, key in WAREHOUSE_KEYS.items() if key in context.selected_asset_keys]
    policy = config.on_drift or warehouse.on_drift
    with warehouse.open() as wh:
        results = wh.load_day(
            lake.client(), lake.bucket, day, tables=tables, on_drift=policy, pending=lake.pending_objects()
        )
    for table, result in results.items():
        context.log.info(
            f"{result.table} {day}: {result.rows_loaded} rows loaded, {result.rows_deleted} replaced, "
            f"{result.duplicates_dropped} duplicate deliveries dropped, {result.seconds:.2f}s "
            f"({', '.join(f'{k} {v:.2f}s' for k, v in result.timings.items())})"
        )
        yield MaterializeResult(
            asset_key=WAREHOUSE_KEYS[table],
            metadata={
                **result.metadata(),
                "dagster/row_count": result.rows_loaded,
                "dagster/table_name": result.table,
                "dialect": warehouse.dialect,
                "load_seconds": MetadataValue.float(round(result.seconds, 3)),
            },
        )


def _reconcile(
    context: AssetCheckExecutionContext, table: str, warehouse: WarehouseResource, lake: LakeResource
) -> AssetCheckResult:
    """The table's rows for the day against the lake's committed rows.

    Against what the day's last load read (the objects it recorded): a difference there is a wrong
    load, an ERROR that blocks the dbt models. Rows the stream committed to the day since that load
    make the table stale, not wrong: a WARN (not blocking), which the automation's next load clears.
    """
    day = date.fromisoformat(context.partition_key)
    s3, pending = lake.client(), lake.pending_objects()
    loaded = read_loaded(s3, lake.bucket, warehouse.schema_name, day)
    at_load = partition_counts(s3, lake.bucket, day, pending, only=loaded)
    committed = [o.key for o in partition_objects(s3, lake.bucket, day, pending)]
    # A second read of the day only when the stream committed objects since the load.
    now = (
        at_load if loaded is None or set(committed) == set(loaded) else partition_counts(s3, lake.bucket, day, pending)
    )
    want = at_load.events if table == "events" else at_load.anomalies
    want_now = now.events if table == "events" else now.anomalies
    with warehouse.open() as wh:
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


# Partitioned asset checks (one result per day, like the asset) are a preview feature in Dagster
# 1.13 (assets/_dagster_preview.py); it is the only way to check the partition that was loaded
# rather than whichever was last.
@asset_check(
    asset=WAREHOUSE_KEYS["events"],
    partitions_def=daily_partitions,
    blocking=True,
    description="The day's rows in the events table equal the processed partition's distinct events, once each.",
)
def warehouse_events_match_processed(
    context: AssetCheckExecutionContext, warehouse: WarehouseResource, lake: LakeResource
) -> AssetCheckResult:
    return _reconcile(context, "events", warehouse, lake)


@asset_check(
    asset=WAREHOUSE_KEYS["anomalies"],
    partitions_def=daily_partitions,
    blocking=True,
    description="The day's rows in the anomalies table equal the processed partition's distinct ANOMALY events.",
)
def warehouse_anomalies_match_processed(
    context: AssetCheckExecutionContext, warehouse: WarehouseResource, lake: LakeResource
) -> AssetCheckResult:
    return _reconcile(context, "anomalies", warehouse, lake)


warehouse_assets = [warehouse_tables]
warehouse_checks = [warehouse_events_match_processed, warehouse_anomalies_match_processed]
