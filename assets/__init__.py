"""Dagster assets and checks, grouped by domain; each module is thin glue over etl_platform."""

from assets import _dagster_preview  # noqa: F401  (first: before any partitioned check is defined)
from assets.dbt import dbt_assets_list
from assets.ingestion import kinesis_stream, processed_events, raw_events, source_specs
from assets.lake_checks import lake_checks
from assets.search import search_assets, search_checks
from assets.warehouse import warehouse_assets, warehouse_checks

lake_assets = [*source_specs, kinesis_stream, raw_events, processed_events]
all_assets = [*lake_assets, *warehouse_assets, *dbt_assets_list, *search_assets]
all_checks = [*lake_checks, *warehouse_checks, *search_checks]

__all__ = ["all_assets", "all_checks", "lake_assets"]
