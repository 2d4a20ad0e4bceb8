"""Checks on processed data that assets and tests share: schema and null keys."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import polars as pl

from etl_platform.lake.readers import RAW_SCHEMA

PROCESSED_SCHEMA: dict[str, pl.DataType] = {**RAW_SCHEMA, "avg_value": pl.Float64(), "anomaly_status": pl.String()}
KEY_COLUMNS = ("event_id", "user_id", "event_type", "event_time", "value", "anomaly_status")


def schema_problems(
    frame: pl.DataFrame, schema: Mapping[str, pl.DataType] = PROCESSED_SCHEMA, optional: Collection[str] = ()
) -> list[str]:
    """Missing columns and wrong types against `schema` (a pipeline contract's `processed_schema()`),
    as readable lines; `optional` columns may be missing (a field newer than the data); extra columns
    are allowed (schema drift is the warehouse loader's decision, not the lake's)."""
    problems = []
    for name, dtype in schema.items():
        if name not in frame.columns:
            if name not in optional:
                problems.append(f"missing column {name}")
        elif frame.schema[name] != dtype:
            problems.append(f"column {name} is {frame.schema[name]}, expected {dtype}")
    return problems


def null_key_counts(frame: pl.DataFrame, columns: Sequence[str] = KEY_COLUMNS) -> dict[str, int]:
    """Nulls per column that must have a value (a pipeline contract's `never_null`)."""
    return {c: int(frame[c].null_count()) for c in columns if c in frame.columns}


def reconcile(raw: pl.DataFrame, processed: pl.DataFrame) -> dict[str, int]:
    """Counts for the raw -> processed check of one day; it passes when every count but the two row
    counts is 0 and those are equal."""
    raw_ids = set(raw["event_id"].to_list()) if raw.height else set()
    processed_ids = set(processed["event_id"].to_list()) if processed.height else set()
    return {
        "raw_rows": raw.height,
        "processed_rows": processed.height,
        "duplicates": processed.height - len(processed_ids),
        "missing_from_processed": len(raw_ids - processed_ids),
        "not_in_raw": len(processed_ids - raw_ids),
    }


def reconciled(counts: dict[str, int]) -> bool:
    return counts["raw_rows"] == counts["processed_rows"] and not (
        counts["duplicates"] or counts["missing_from_processed"] or counts["not_in_raw"]
    )
