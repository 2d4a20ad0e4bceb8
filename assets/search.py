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

from assets.ingestion import DEFAULT_PIPELINE, pipeline_group, pipeline_key
from assets.partitions import daily_partitions
from etl_platform.lake import layout
from etl_platform.pipelines import Pipeline
from etl_platform.search.checks import day_counts
from etl_platform.search.indexer import index_day
from etl_platform.search.indices import ANOMALIES, EVENTS, index_name
from resources import LakeResource, OpenSearchResource


def search_assets_for(pipeline: Pipeline) -> tuple[list, list]:
    """The pipeline's search index asset (a day's reindex from its lake) and the check against the lake."""
    stream_name = None if pipeline.is_default else pipeline.stream.name  # the default: the lake resource's
    processed_dataset = pipeline.dataset(layout.PROCESSED)
    own = pipeline.own_index_prefix

    @asset(
        key=pipeline_key(pipeline, "search_index"),
        partitions_def=daily_partitions,
        deps=[pipeline_key(pipeline, "processed_events")],
        group_name=pipeline_group(pipeline, "search"),
        kinds={"opensearch"},
        description=f"Daily OpenSearch indices {own}events-YYYY.MM.DD (every processed event, _id = event_id) "
        f"and {own}anomalies-YYYY.MM.DD (the anomalies), behind the read aliases `{own}events` and "
        f"`{own}anomalies` (after the deployment's prefix). A materialization reindexes the day from "
        f"{processed_dataset}/ in the lake; failed documents go to search-failed/.",
    )
    def search_index(
        context: AssetExecutionContext, opensearch: OpenSearchResource, lake: LakeResource
    ) -> MaterializeResult:
        day = date.fromisoformat(context.partition_key)
        prefix = opensearch.prefix_for(pipeline)
        result = index_day(
            opensearch.client(),
            lake.client(),
            lake.bucket,
            day,
            prefix,
            opensearch.indexer_config(),
            progress=context.log.info,
            pending=lake.pending_objects(stream_name),
            root=pipeline.lake_root,
            properties=opensearch.properties_for(pipeline),
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
        name="search_index_matches_lake",
        partitions_def=daily_partitions,
        description="The day's events index holds exactly one document per processed row, and the anomalies "
        "index exactly the processed anomalies.",
    )
    def search_index_matches_lake(
        context: AssetCheckExecutionContext, opensearch: OpenSearchResource, lake: LakeResource
    ) -> AssetCheckResult:
        day = date.fromisoformat(context.partition_key)
        counts = day_counts(
            opensearch.client(),
            lake.client(),
            lake.bucket,
            day,
            opensearch.prefix_for(pipeline),
            lake.pending_objects(stream_name),
            root=pipeline.lake_root,
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

    return [search_index], [search_index_matches_lake]


search_assets, search_checks = search_assets_for(DEFAULT_PIPELINE)
(search_index,) = search_assets
(search_index_matches_lake,) = search_checks
