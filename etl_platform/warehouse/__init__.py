"""Warehouse loading: processed lake partitions into `events` and `anomalies`, idempotently.

One interface (`Warehouse`), two dialects (docs/architecture.md, "The local stack"): Redshift in production
(redshift_connector; `COPY ... FORMAT AS PARQUET MANIFEST` into temp staging, then delete the day
+ insert, one transaction) and PostgreSQL locally (psycopg; binary `COPY FROM STDIN` into the day's
new partition, then swap it in, one transaction). `connect` picks the dialect by name:

    with connect("postgres", "postgresql://postgres@127.0.0.1:5439/warehouse", schema="etl") as wh:
        results = wh.load_day(s3, bucket, date(2024, 3, 5))   # {"events": LoadResult, "anomalies": ...}
"""

from __future__ import annotations

from etl_platform.warehouse.base import (
    DEFAULT_SCHEMA,
    LoadResult,
    PartitionMismatchError,
    Warehouse,
    WarehouseLoadError,
    default_drift_policy,
    default_schema,
)
from etl_platform.warehouse.schema import (
    DEFAULT_DRIFT_POLICY,
    DEFAULT_LAYOUT,
    DIALECTS,
    DRIFT_POLICIES,
    TABLE_COLUMNS,
    TABLES,
    SchemaDriftError,
    TableLayout,
    table_layout,
)
from etl_platform.warehouse.source import PartitionCounts, partition_counts

__all__ = [
    "DEFAULT_DRIFT_POLICY",
    "DEFAULT_SCHEMA",
    "DIALECTS",
    "DRIFT_POLICIES",
    "TABLES",
    "TABLE_COLUMNS",
    "DEFAULT_LAYOUT",
    "TableLayout",
    "table_layout",
    "LoadResult",
    "PartitionCounts",
    "PartitionMismatchError",
    "SchemaDriftError",
    "Warehouse",
    "WarehouseLoadError",
    "connect",
    "default_drift_policy",
    "default_schema",
    "partition_counts",
]


def connect(
    dialect: str,
    dsn: str,
    *,
    schema: str | None = None,
    password: str | None = None,
    iam_role: str | None = None,
    layout: TableLayout = DEFAULT_LAYOUT,
    lake_root: str = "",
) -> Warehouse:
    """A connected warehouse for `dialect` ("postgres" | "redshift"); schema defaults to
    ETL_WAREHOUSE_SCHEMA or `etl`. Redshift needs the IAM role its COPY assumes to read the lake.
    `layout` and `lake_root` are the pipeline's (`schema.table_layout`, `Pipeline.lake_root`)."""
    schema = schema or default_schema()
    if dialect == "postgres":
        from etl_platform.warehouse.postgres import PostgresWarehouse

        return PostgresWarehouse(dsn, schema, password=password, layout=layout, lake_root=lake_root)
    if dialect == "redshift":
        from etl_platform.warehouse.redshift import RedshiftWarehouse

        if not iam_role:
            raise ValueError("the redshift dialect needs iam_role (ETL_REDSHIFT_IAM_ROLE) for COPY from S3")
        return RedshiftWarehouse(dsn, schema, iam_role=iam_role, password=password, layout=layout, lake_root=lake_root)
    raise ValueError(f"unknown warehouse dialect {dialect!r}; expected one of {', '.join(DIALECTS)}")
