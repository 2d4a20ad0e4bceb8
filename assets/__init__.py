"""Dagster assets and checks, grouped by domain; each module is thin glue over etl_platform.

The package imports nothing but the preview-warning filters, so a code location imports only the
domains it serves: the stream workers' location (`stream_definitions.py`) never pays for dbt.
"""

from assets import _dagster_preview  # noqa: F401  (first: before any partitioned check is defined)
