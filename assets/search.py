"""Search assets: the daily OpenSearch indices, rebuilt from the lake, and a check that they match it.

The micro-batch path indexes each batch as it is processed; materializing `search_index` for a day
(a UI backfill, or after `processed_events` was replayed) reindexes that day from `processed/` so the
day's indices equal the lake again. The check compares document counts with the lake's rows.
"""

from datetime import date

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    MaterializeResult,
    MetadataValue,
    asset,
    asset_check,
)

from assets.ingestion import processed_events
from assets.partitions import daily_partitions
from etl_platform.search.checks import day_counts
from etl_platform.search.indexer import index_day
from etl_platform.search.indices import ANOMALIES, EVENTS, index_name
from resources import LakeResource, OpenSearchResource


@asset(
    partitions_def=daily_partitions,
    deps=[processed_events],
    group_name="search",
    kinds={"opensearch"},
    description="Daily OpenSearch indices events-YYYY.MM.DD (every processed event, _id = event_id) and "
    "anomalies-YYYY.MM.DD (the anomalies), behind the read aliases `events` and `anomalies`. A "
    "materialization reindexes the day from processed/ in the lake; failed documents go to search-failed/.",
)
def search_index(
    context: AssetExecutionContext, opensearch: OpenSearchResource, lake: LakeResource
) -> MaterializeResult:
    day = date.fromisoformat(context.partition_key)
    prefix = opensearch.index_prefix
    result = index_day(
        opensearch.client(),
        lake.client(),
        lake.bucket,
        day,
        prefix,
        opensearch.indexer_config(),
        progress=context.log.info,
        pending=lake.pending_objects(),
    )
    stats = result.stats
    if stats.failed:
        context.log.warning(
            f"{stats.failed} documents failed and were backed up to {stats.backup_objects}; last error: "
            f"{stats.last_error}. `etl-platform search replay-failed` re-indexes them."
        )
    return MaterializeResult(
        metadata={
            "docs_indexed": stats.by_family.get(EVENTS, 0),
            "anomalies_indexed": stats.by_family.get(ANOMALIES, 0),
            "failed": stats.failed,
            "retried": stats.retried,
            "seconds": round(stats.seconds, 3),
            "bytes_sent": stats.bytes,
            "stale_deleted": result.stale_deleted,
            "lake_rows": result.rows,
            "events_index": index_name(EVENTS, day, prefix),
            "anomalies_index": index_name(ANOMALIES, day, prefix),
            "backup_objects": MetadataValue.json(stats.backup_objects),
        }
    )


@asset_check(
    asset=search_index,
    partitions_def=daily_partitions,
    description="The day's events index holds exactly one document per processed row, and the anomalies "
    "index exactly the processed anomalies.",
)
def search_index_matches_lake(
    context: AssetCheckExecutionContext, opensearch: OpenSearchResource, lake: LakeResource
) -> AssetCheckResult:
    day = date.fromisoformat(context.partition_key)
    counts = day_counts(
        opensearch.client(), lake.client(), lake.bucket, day, opensearch.index_prefix, lake.pending_objects()
    )
    return AssetCheckResult(
        passed=counts.matches,
        severity=AssetCheckSeverity.ERROR,
        description=counts.describe(),
        metadata={
            "lake_rows": counts.lake_rows,
            "indexed_docs": counts.indexed_docs,
            "lake_anomalies": counts.lake_anomalies,
            "indexed_anomalies": counts.indexed_anomalies,
        },
    )


search_assets = [search_index]
search_checks = [search_index_matches_lake]
