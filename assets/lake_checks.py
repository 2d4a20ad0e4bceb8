"""Asset checks on the lake: raw -> processed reconciliation, processed schema, null keys, freshness.

With the warehouse and index checks (assets/warehouse.py, assets/search.py) they reconcile a day's
rows raw -> processed -> warehouse -> index. Per-partition checks are a Dagster 1.13 preview feature
(assets/_dagster_preview.py).
"""

from datetime import date

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    asset_check,
)

from assets.ingestion import processed_events
from assets.partitions import daily_partitions
from etl_platform.lake import layout
from etl_platform.lake.checks import null_key_counts, reconcile, reconciled, schema_problems
from etl_platform.lake.readers import read_day
from resources import LakeResource


@asset_check(
    asset=processed_events,
    partitions_def=daily_partitions,
    blocking=True,
    description="The day's processed rows are exactly the raw rows: same event_ids, once each.",
)
def processed_matches_raw(context: AssetCheckExecutionContext, lake: LakeResource) -> AssetCheckResult:
    day = date.fromisoformat(context.partition_key)
    s3 = lake.client()
    raw = read_day(s3, lake.bucket, layout.RAW, day, lake.pending_objects())
    processed = read_day(s3, lake.bucket, layout.PROCESSED, day, lake.pending_objects())
    counts = reconcile(raw, processed)
    return AssetCheckResult(passed=reconciled(counts), severity=AssetCheckSeverity.ERROR, metadata=counts)


@asset_check(
    asset=processed_events,
    partitions_def=daily_partitions,
    description="Processed Parquet has the expected columns and types, and no null keys or values.",
)
def processed_schema_and_keys(context: AssetCheckExecutionContext, lake: LakeResource) -> AssetCheckResult:
    day = date.fromisoformat(context.partition_key)
    processed = read_day(lake.client(), lake.bucket, layout.PROCESSED, day, lake.pending_objects())
    problems = schema_problems(processed) if processed.height else []
    nulls = null_key_counts(processed) if processed.height else {}
    return AssetCheckResult(
        passed=not problems and not any(nulls.values()),
        severity=AssetCheckSeverity.ERROR,
        metadata={
            "rows": processed.height,
            "schema_problems": "; ".join(problems) or "none",
            **{f"nulls_{k}": v for k, v in nulls.items()},
        },
    )


lake_checks = [processed_matches_raw, processed_schema_and_keys]
