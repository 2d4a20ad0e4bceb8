"""The dialect-neutral warehouse interface: what a load returns, how it fails, and what it must do.

A load replaces one event-time day (`event_date`) of the `events` and `anomalies` tables with that
day's processed partition, staged first and swapped in by one transaction (PostgreSQL: the day's
partition; Redshift: delete the day + insert from staging). Each day then holds the partition's
events exactly once (first arrival per event_id), so re-running a load changes nothing, a replay
that dropped rows drops them here too, and readers never see a half-loaded day. An event's day
comes from its event_time, so a redelivered event lands on the same day; only a producer reusing an
event_id for events on two different days would get a row on each (the key is event_id + day).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from etl_platform.lake.visibility import PendingObjects
from etl_platform.warehouse.schema import (
    DEFAULT_DRIFT_POLICY,
    DEFAULT_LAYOUT,
    TABLES,
    TableLayout,
    check_policy,
    validate_identifier,
)

DEFAULT_SCHEMA = "etl"


def default_schema(env: Mapping[str, str] | None = None) -> str:
    """ETL_WAREHOUSE_SCHEMA (default `etl`): tests and parallel deployments each get their own."""
    env = os.environ if env is None else env
    return validate_identifier(env.get("ETL_WAREHOUSE_SCHEMA") or DEFAULT_SCHEMA, "ETL_WAREHOUSE_SCHEMA")


def default_drift_policy(env: Mapping[str, str] | None = None) -> str:
    """ETL_WAREHOUSE_ON_DRIFT (default `fail`): adding columns to a shared table is an explicit decision."""
    env = os.environ if env is None else env
    return check_policy(env.get("ETL_WAREHOUSE_ON_DRIFT") or DEFAULT_DRIFT_POLICY)


class WarehouseLoadError(RuntimeError):
    """A load failed and was rolled back; `details` carries the warehouse's own error rows if any."""

    def __init__(self, message: str, details: Sequence[Mapping[str, Any]] = ()) -> None:
        super().__init__(message)
        self.details = list(details)


class PartitionMismatchError(ValueError):
    """A processed partition holds rows whose event_time is outside its day; loading would corrupt
    the neighbouring day's partition, so nothing is loaded."""


@dataclass(frozen=True)
class LoadResult:
    table: str  # schema-qualified
    day: date
    rows_loaded: int  # rows now in the table for the day
    rows_deleted: int  # rows the day held before (replaced)
    seconds: float  # whole load, shared by the tables loaded in one transaction
    source_rows: int = 0  # processed rows read for the day (before de-duplication)
    duplicates_dropped: int = 0  # rows dropped because their event_id arrived earlier in the stream
    objects: int = 0  # processed Parquet objects read
    added_columns: tuple[str, ...] = ()
    timings: Mapping[str, float] = field(default_factory=dict)

    def metadata(self) -> dict[str, Any]:
        """Plain values for run metadata and logs."""
        return {
            "table": self.table,
            "day": self.day.isoformat(),
            "rows_loaded": self.rows_loaded,
            "rows_deleted": self.rows_deleted,
            "source_rows": self.source_rows,
            "duplicates_dropped": self.duplicates_dropped,
            "objects": self.objects,
            "added_columns": ", ".join(self.added_columns) or "-",
            "load_seconds": round(self.seconds, 3),
            **{f"seconds_{k}": round(v, 3) for k, v in self.timings.items()},
        }


class Warehouse(ABC):
    """One warehouse schema holding a pipeline's `events` and `anomalies` (columns: `layout`, loaded
    from the lake datasets under `lake_root`); PostgreSQL and Redshift implement it."""

    dialect: str = ""

    def __init__(self, schema: str, layout: TableLayout = DEFAULT_LAYOUT, lake_root: str = "") -> None:
        self.schema = validate_identifier(schema, "warehouse schema")
        self.layout = layout
        self.lake_root = lake_root

    def qualified(self, table: str) -> str:
        return f"{self.schema}.{table}"

    @abstractmethod
    def ensure_tables(self) -> None:
        """Create the schema and both tables if missing (idempotent, safe to race)."""

    @abstractmethod
    def table_columns(self, table: str) -> dict[str, str]:
        """{column: information_schema data_type} of a table, in column order; {} if it does not exist."""

    @abstractmethod
    def load_day(
        self,
        s3: Any,
        bucket: str,
        day: date,
        tables: Sequence[str] = TABLES,
        on_drift: str = DEFAULT_DRIFT_POLICY,
        pending: PendingObjects | None = None,
    ) -> dict[str, LoadResult]:
        """Replace `day` in each of `tables` with the committed processed partition, in one transaction
        (`pending`: the uncommitted objects to skip, lake.visibility), then record the objects it read
        (`source.record_loaded`) for the day's check."""

    @abstractmethod
    def count_rows(self, table: str, day: date) -> tuple[int, int]:
        """(rows, distinct event_ids) the table holds for a day."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the connection."""

    def __enter__(self) -> Warehouse:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_tables(tables: Sequence[str]) -> tuple[str, ...]:
    unknown = [t for t in tables if t not in TABLES]
    if unknown or not tables:
        raise ValueError(f"tables must be a non-empty subset of {TABLES}, got {list(tables)}")
    # events first: anomalies are a subset and a reader may join them to events.
    return tuple(t for t in TABLES if t in tables)
