"""Dagster assets, grouped by domain; each module is thin glue over etl_platform."""

from assets.ingestion import kinesis_stream, processed_events, raw_events, source_specs

lake_assets = [*source_specs, kinesis_stream, raw_events, processed_events]

__all__ = ["lake_assets"]
