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

from assets.ingestion import DEFAULT_PIPELINE, pipeline_key
from assets.partitions import daily_partitions
from etl_platform.lake import layout
from etl_platform.lake.checks import null_key_counts, reconcile, reconciled, schema_problems
from etl_platform.lake.readers import read_day
from etl_platform.pipelines import Pipeline
from resources import LakeResource


def lake_checks_for(pipeline: Pipeline) -> list:
    """The pipeline's raw -> processed reconciliation and its processed schema check."""
    processed_key = pipeline_key(pipeline, "processed_events")
    stream_name = None if pipeline.is_default else pipeline.stream.name  # the default: the lake resource's
    contract = pipeline.contract
    raw_dataset, processed_dataset = pipeline.dataset(layout.RAW), pipeline.dataset(layout.PROCESSED)

    @asset_check(
        asset=processed_key,
        name="processed_matches_raw",
        partitions_def=daily_partitions,
        blocking=True,
        description="The day's processed rows are exactly the raw rows: same event_ids, once each.",
    )
    def processed_matches_raw(context: AssetCheckExecutionContext, lake: LakeResource) -> AssetCheckResult:
        day = date.fromisoformat(context.partition_key)
        s3, pending = lake.client(), lake.pending_objects(stream_name)
        raw = read_day(s3, lake.bucket, raw_dataset, day, pending, contract.raw_schema())
        processed = read_day(s3, lake.bucket, processed_dataset, day, pending)
        counts = reconcile(raw, processed)
        return AssetCheckResult(passed=reconciled(counts), severity=AssetCheckSeverity.ERROR, metadata=counts)

    @asset_check(
        asset=processed_key,
        name="processed_schema_and_keys",
        partitions_def=daily_partitions,
        description="Processed Parquet has the contract's columns and types, and no null keys or values.",
    )
    def processed_schema_and_keys(context: AssetCheckExecutionContext, lake: LakeResource) -> AssetCheckResult:
        day = date.fromisoformat(context.partition_key)
        processed = read_day(lake.client(), lake.bucket, processed_dataset, day, lake.pending_objects(stream_name))
        problems = (
            schema_problems(processed, contract.processed_schema(), contract.optional_fields)
            if processed.height
            else []
        )
        nulls = null_key_counts(processed, contract.never_null) if processed.height else {}
        return AssetCheckResult(
            passed=not problems and not any(nulls.values()),
            severity=AssetCheckSeverity.ERROR,
            metadata={
                "rows": processed.height,
                "schema_problems": "; ".join(problems) or "none",
                **{f"nulls_{k}": v for k, v in nulls.items()},
            },
        )

    return [processed_matches_raw, processed_schema_and_keys]


lake_checks = lake_checks_for(DEFAULT_PIPELINE)
processed_matches_raw, processed_schema_and_keys = lake_checks
