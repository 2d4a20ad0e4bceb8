"""Warehouse loads against the real local PostgreSQL and moto S3, then dbt through Dagster.

Each test writes processed partitions to a fresh bucket with the lake helpers and loads them into
its own warehouse schema (and its own dbt schema), dropped afterwards. The marts are reconciled
with aggregates computed independently from the same rows with polars. The Redshift executor's
error path runs against `FakeRedshiftConnection`, a named fake: no Redshift can run here.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import polars as pl
import psycopg
import pytest
from dagster import Definitions, materialize
from dagster_aws.s3 import S3Resource
from dagster_dbt import DbtProject
from polars.testing import assert_frame_equal

from etl_platform.config import Settings, load_settings
from etl_platform.events import EVENT_SCHEMA, derive_event_id
from etl_platform.lake import layout
from etl_platform.warehouse import (
    PartitionMismatchError,
    SchemaDriftError,
    WarehouseLoadError,
    connect,
    partition_counts,
)
from etl_platform.warehouse.base import Warehouse
from etl_platform.warehouse.redshift import RedshiftSql, RedshiftWarehouse
from resources import LakeResource, WarehouseResource, build_resources

pytestmark = pytest.mark.stack

DAY = date(2024, 3, 5)
DAY2 = date(2024, 3, 6)
PROCESSED_SCHEMA: dict[str, pl.DataType] = {
    **EVENT_SCHEMA,
    "shard_depth": pl.Int32(),
    "avg_value": pl.Float64(),
    "anomaly_status": pl.String(),
}
SOURCES = ["app_log", "iot", "cdc", "api", "web"]
ROLE = "arn:aws:iam::123456789012:role/etl-redshift-copy"


@pytest.fixture(scope="session")
def settings() -> Settings:
    """Only the services these tests use (moto, PostgreSQL) must be up (overrides conftest's)."""
    from etl_platform.stack import LocalStack

    health = LocalStack().health()
    down = [name for name in ("moto", "postgres") if not health.get(name)]
    if down:
        pytest.fail(
            f"local stack services down: {', '.join(down)}; run `etl-platform stack up moto postgres`", pytrace=False
        )
    return load_settings({})


@pytest.fixture
def schema(settings: Settings) -> Iterator[str]:
    name = f"t_wh_{uuid.uuid4().hex[:10]}"
    yield name
    with psycopg.connect(settings.warehouse_dsn, autocommit=True) as conn:
        for suffix in ("", "_dbt"):
            conn.execute(f'DROP SCHEMA IF EXISTS "{name}{suffix}" CASCADE')


@pytest.fixture
def warehouse(settings: Settings, schema: str) -> Iterator[Warehouse]:
    with connect("postgres", settings.warehouse_dsn, schema=schema) as wh:
        yield wh


# --- processed partitions -------------------------------------------------------------------------
def processed_day(day: date, n: int = 600, seed: int = 7, users: int = 23, first: int = 0) -> pl.DataFrame:
    """Rows shaped like the consumer's processed output. Values are multiples of 1/4, so every sum
    is exact in any order and SQL and polars aggregates can be compared for equality."""
    rng = random.Random(seed)
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    rows = []
    for i in range(first, first + n):
        shard = f"shardId-00000000000{i % 2}"
        sequence = str(49_590_000_000_000_000_000_000_000_000_000_000_000 + i * 7919)
        event_time = start + timedelta(seconds=rng.randrange(86_400), microseconds=rng.randrange(1_000_000))
        anomalous = rng.random() < 0.08
        rows.append(
            {
                "event_id": derive_event_id(shard, sequence, 0),
                "source": SOURCES[rng.randrange(len(SOURCES))],
                "user_id": f"user-{rng.randrange(users):03d}",
                "event_type": ["click", "view", "purchase", "sensor_reading"][rng.randrange(4)],
                "event_time": event_time,
                "value": rng.randrange(-400, 40_000) / 4,
                "attributes": json.dumps(
                    {"i": i, "note": "ünïcode ✓", "q": "it's"},
                    sort_keys=True,
                    separators=(",", ":"),
                    ensure_ascii=False,
                ),
                "shard_id": shard,
                "sequence_number": sequence,
                "sub_sequence": 0,
                "arrival_time": event_time + timedelta(milliseconds=rng.randrange(1, 5000)),
                "partition_key": f"user-{i}",
                "shard_depth": 0,
                "avg_value": rng.randrange(0, 40_000) / 4,
                "anomaly_status": "ANOMALY" if anomalous else "NORMAL",
            }
        )
    return pl.DataFrame(rows, schema=PROCESSED_SCHEMA)


def write_partition(s3: Any, bucket: str, frame: pl.DataFrame) -> list[str]:
    """One processed object per (hour, shard), named as the consumer names them."""
    keys = []
    hourly = frame.sort("event_time").with_columns(pl.col("event_time").dt.truncate("1h").alias("_hour"))
    for (moment, shard), part in hourly.group_by("_hour", "shard_id", maintain_order=True):
        part = part.drop("_hour")
        key = layout.object_key(layout.PROCESSED, layout.HourPartition.of(moment), shard, part["sequence_number"][0], 0)
        layout.put(s3, bucket, key, layout.parquet_bytes(part))
        keys.append(key)
    return keys


def table_rows(settings: Settings, relation: str, order: str = "event_id") -> pl.DataFrame:
    with psycopg.connect(settings.warehouse_dsn) as conn:
        cur = conn.execute(f"SELECT * FROM {relation} ORDER BY {order}")
        names = [d.name for d in cur.description]
        return pl.DataFrame(cur.fetchall(), schema=names, orient="row", infer_schema_length=None)


def expected_table(frame: pl.DataFrame) -> pl.DataFrame:
    """The processed rows as the warehouse stores them: naive UTC timestamps plus event_date."""
    return frame.with_columns(
        pl.col("event_time", "arrival_time").dt.replace_time_zone(None),
        pl.col("event_time").dt.date().alias("event_date"),
    ).sort("event_id")


# --- loads ----------------------------------------------------------------------------------------
def test_loading_a_partition_twice_leaves_exactly_its_rows(settings, s3, bucket, warehouse, schema):
    frame = processed_day(DAY)
    keys = write_partition(s3, bucket, frame)
    first = warehouse.load_day(s3, bucket, DAY)
    second = warehouse.load_day(s3, bucket, DAY)

    anomalies = frame.filter(pl.col("anomaly_status") == "ANOMALY")
    assert (first["events"].rows_loaded, first["events"].rows_deleted, first["events"].objects) == (600, 0, len(keys))
    assert (second["events"].rows_loaded, second["events"].rows_deleted) == (600, 600)
    assert (second["anomalies"].rows_loaded, second["anomalies"].rows_deleted) == (anomalies.height,) * 2
    assert second["events"].table == f"{schema}.events" and second["events"].seconds > 0

    assert_frame_equal(table_rows(settings, f"{schema}.events"), expected_table(frame), check_dtypes=False)
    assert_frame_equal(table_rows(settings, f"{schema}.anomalies"), expected_table(anomalies), check_dtypes=False)
    assert warehouse.count_rows("events", DAY) == (600, 600)
    assert partition_counts(s3, bucket, DAY).events == 600


def test_a_replay_that_drops_rows_and_an_emptied_day_are_mirrored(settings, s3, bucket, warehouse, schema):
    frame = processed_day(DAY, n=200)
    keys = write_partition(s3, bucket, frame)
    warehouse.load_day(s3, bucket, DAY)
    other_day = processed_day(DAY2, n=50, seed=9)
    write_partition(s3, bucket, other_day)
    warehouse.load_day(s3, bucket, DAY2)

    gone = layout.read_parquet(layout.get(s3, bucket, keys[0]))
    s3.delete_object(Bucket=bucket, Key=keys[0])
    result = warehouse.load_day(s3, bucket, DAY)["events"]
    assert (result.rows_loaded, result.rows_deleted) == (200 - gone.height, 200)
    remaining = table_rows(settings, f"{schema}.events").filter(pl.col("event_date") == DAY)
    assert set(remaining["event_id"]).isdisjoint(gone["event_id"]) and remaining.height == 200 - gone.height

    for key in keys[1:]:
        s3.delete_object(Bucket=bucket, Key=key)
    emptied = warehouse.load_day(s3, bucket, DAY)
    assert emptied["events"].rows_loaded == 0 and emptied["anomalies"].rows_loaded == 0
    assert warehouse.count_rows("events", DAY) == (0, 0)
    assert warehouse.count_rows("events", DAY2) == (50, 50)  # the neighbouring day is untouched


def test_a_duplicate_delivery_keeps_the_first_arrival(settings, s3, bucket, warehouse, schema):
    frame = processed_day(DAY, n=100)
    original = frame.row(10, named=True)
    retry = {
        **original,
        "sequence_number": str(int(original["sequence_number"]) + 10**30),
        "value": -1.0,
        "shard_id": "shardId-000000000009",
    }
    write_partition(s3, bucket, pl.concat([frame, pl.DataFrame([retry], schema=PROCESSED_SCHEMA)]))
    result = warehouse.load_day(s3, bucket, DAY)["events"]
    assert (result.source_rows, result.rows_loaded, result.duplicates_dropped) == (101, 100, 1)
    stored = table_rows(settings, f"{schema}.events").filter(pl.col("event_id") == original["event_id"])
    assert stored["value"].to_list() == [original["value"]]
    assert partition_counts(s3, bucket, DAY).events == 100


def test_drift_fails_by_default_naming_the_column_and_changes_nothing(settings, s3, bucket, warehouse, schema):
    frame = processed_day(DAY, n=120)
    write_partition(s3, bucket, frame)
    warehouse.load_day(s3, bucket, DAY)
    wider = processed_day(DAY, n=10, seed=3, first=1000).with_columns(pl.lit("eu-west-1").alias("region"))
    layout.put(
        s3,
        bucket,
        layout.object_key(layout.PROCESSED, layout.HourPartition(DAY, 23), "shardId-000000000005", "1", 0),
        layout.parquet_bytes(wider),
    )
    with pytest.raises(SchemaDriftError, match=r"new column\(s\) not in .*events: region \(string\)") as err:
        warehouse.load_day(s3, bucket, DAY)
    assert err.value.columns == ("region",)
    assert "region" not in warehouse.table_columns("events")
    assert warehouse.count_rows("events", DAY) == (120, 120)  # the previous load is intact

    result = warehouse.load_day(s3, bucket, DAY, on_drift="add")
    assert result["events"].added_columns == ("region",) and result["events"].rows_loaded == 130
    assert warehouse.table_columns("events")["region"] == "text"
    assert warehouse.table_columns("anomalies")["region"] == "text"
    stored = table_rows(settings, f"{schema}.events")
    assert stored.filter(pl.col("region") == "eu-west-1").height == 10
    assert stored.filter(pl.col("region").is_null()).height == 120  # objects without it: NULL, not dropped
    again = warehouse.load_day(s3, bucket, DAY)  # once added, the default policy loads it
    assert again["events"].added_columns == () and again["events"].rows_loaded == 130


def test_incompatible_types_and_rows_outside_the_day_are_refused(settings, s3, bucket, warehouse):
    retyped = processed_day(DAY, n=20).with_columns(pl.col("value").cast(pl.String))
    write_partition(s3, bucket, retyped)
    with pytest.raises(SchemaDriftError, match="value: table has float64, processed data has string"):
        warehouse.load_day(s3, bucket, DAY, on_drift="add")

    misplaced = processed_day(DAY2, n=5)
    layout.put(
        s3,
        bucket,
        layout.object_key(layout.PROCESSED, layout.HourPartition(DAY, 1), "shardId-000000000000", "1", 0),
        layout.parquet_bytes(misplaced),
    )
    for key in layout.list_keys(s3, bucket, layout.day_prefix(layout.PROCESSED, DAY)):
        if "hour=01/shardId-000000000000-1-" not in key:
            s3.delete_object(Bucket=bucket, Key=key)
    with pytest.raises(PartitionMismatchError, match="5 row\\(s\\) with event_time outside"):
        warehouse.load_day(s3, bucket, DAY)
    assert warehouse.count_rows("events", DAY) == (0, 0)


def test_database_errors_roll_back_and_name_the_problem(settings, s3, bucket, warehouse):
    frame = processed_day(DAY, n=30)
    write_partition(s3, bucket, frame)
    warehouse.load_day(s3, bucket, DAY)
    too_long = frame.with_columns(pl.lit("u" * 65).alias("user_id"))
    for key in layout.list_keys(s3, bucket, layout.day_prefix(layout.PROCESSED, DAY)):
        s3.delete_object(Bucket=bucket, Key=key)
    write_partition(s3, bucket, too_long)
    with pytest.raises(WarehouseLoadError, match="value too long for type character varying\\(64\\)"):
        warehouse.load_day(s3, bucket, DAY)
    assert warehouse.count_rows("events", DAY) == (30, 30)


# --- Redshift executor (fake connection) ----------------------------------------------------------
class FakeRedshiftConnection:
    """A named fake standing in for redshift_connector: no Redshift can run here. It records each
    statement, answers the catalogue and count queries, and can fail the COPY the way Redshift does,
    with rows waiting in sys_load_error_detail."""

    def __init__(self, fail_copy: bool, s3: Any = None) -> None:
        self.fail_copy, self.s3 = fail_copy, s3
        self.statements: list[tuple[str, Any]] = []
        self.manifests: dict[str, dict] = {}  # what each COPY read, as Redshift would read it then
        self.autocommit = True

    def cursor(self) -> FakeRedshiftConnection:
        return self

    def execute(self, sql: str, params: Any = None) -> None:
        self.statements.append((sql, params))
        self.rows: list[tuple[Any, ...]] = []
        self.rowcount = -1
        if "information_schema.columns" in sql:
            from etl_platform.warehouse.schema import TABLE_COLUMNS

            self.rows = [
                (
                    c.name,
                    c.sql_type("redshift")
                    .split("(")[0]
                    .lower()
                    .replace("varchar", "character varying")
                    .replace("timestamp", "timestamp without time zone"),
                )
                for c in TABLE_COLUMNS
            ]
        elif sql.startswith("COPY") and self.s3 is not None:
            bucket, key = sql.split("FROM 's3://", 1)[1].split("'", 1)[0].split("/", 1)
            self.manifests[key] = json.loads(layout.get(self.s3, bucket, key))
        if sql.startswith("COPY") and self.fail_copy:
            raise RuntimeError("Load into table 'etl_copy_00' failed. Check 'sys_load_error_detail' for details.")
        elif "sys_load_error_detail" in sql:
            self.rows = [
                (
                    901,
                    "s3://lake/processed/dt=2024-03-05/hour=00/x.parquet",
                    17,
                    "user_id",
                    "varchar",
                    1204,
                    "String length exceeds DDL length",
                )
            ]
        elif sql.startswith("SELECT (SELECT COUNT(*)"):
            self.rows = [(101, 100, 7, 0)]
        elif sql.startswith("DELETE"):
            self.rowcount = 42

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self.rows

    def fetchone(self) -> tuple[Any, ...] | None:
        return self.rows[0] if self.rows else None

    def rollback(self) -> None:
        self.statements.append(("<rollback>", None))

    def close(self) -> None:
        pass


def fake_redshift(conn: FakeRedshiftConnection) -> RedshiftWarehouse:
    wh = RedshiftWarehouse.__new__(RedshiftWarehouse)
    Warehouse.__init__(wh, "etl")
    wh.sql, wh.conn, wh.session_id = RedshiftSql("etl", ROLE), conn, 4242
    return wh


def test_redshift_load_writes_manifests_and_runs_one_transaction(s3, bucket):
    keys = write_partition(s3, bucket, processed_day(DAY, n=80))
    conn = FakeRedshiftConnection(fail_copy=False, s3=s3)
    result = fake_redshift(conn).load_day(s3, bucket, DAY)
    assert layout.list_keys(s3, bucket, "_manifests/warehouse/processed/") == []  # the load removed its own manifests
    manifest_keys = list(conn.manifests)
    assert len(manifest_keys) == 1
    assert re.fullmatch(
        r"_manifests/warehouse/processed/dt=2024-03-05/[0-9a-f]{12}/group-00\.manifest", manifest_keys[0]
    )
    manifest = conn.manifests[manifest_keys[0]]
    assert [e["url"] for e in manifest["entries"]] == [f"s3://{bucket}/{k}" for k in sorted(keys)]
    for entry, key in zip(manifest["entries"], sorted(keys), strict=True):
        assert entry["mandatory"] is True
        assert entry["meta"]["content_length"] == s3.head_object(Bucket=bucket, Key=key)["ContentLength"]
    executed = [sql for sql, _ in conn.statements]
    begin, commit = executed.index("BEGIN"), executed.index("COMMIT")
    copy = next(i for i, s in enumerate(executed) if s.startswith("COPY"))
    assert begin < copy < commit and f"s3://{bucket}/{manifest_keys[0]}" in executed[copy]
    assert (
        result["events"].source_rows,
        result["events"].rows_loaded,
        result["events"].duplicates_dropped,
        result["events"].rows_deleted,
        result["anomalies"].rows_loaded,
    ) == (101, 100, 1, 42, 7)


def test_redshift_copy_failure_rolls_back_and_reports_load_errors(s3, bucket):
    write_partition(s3, bucket, processed_day(DAY, n=20))
    conn = FakeRedshiftConnection(fail_copy=True)
    with pytest.raises(WarehouseLoadError, match="x.parquet line 17 column user_id .*String length exceeds DDL") as err:
        fake_redshift(conn).load_day(s3, bucket, DAY)
    assert err.value.details[0]["code"] == 1204
    executed = [sql for sql, _ in conn.statements]
    copy = next(i for i, s in enumerate(executed) if s.startswith("COPY"))
    assert executed[copy + 1] == "ROLLBACK" and "COMMIT" not in executed
    errors_query = next(p for s, p in conn.statements if "sys_load_error_detail" in s)
    assert errors_query[0] == 4242  # this session's errors only


# --- Dagster: warehouse assets, checks, dbt -------------------------------------------------------
def resources_for(settings: Settings, bucket: str, schema: str) -> dict[str, Any]:
    s3 = S3Resource(
        region_name=settings.aws_region, endpoint_url=settings.s3_endpoint, use_ssl=False, **settings.local_credentials
    )
    return {
        "warehouse": WarehouseResource(dialect="postgres", dsn=settings.warehouse_dsn, schema_name=schema),
        "lake": LakeResource(bucket=bucket, s3=s3),
    }


def user_daily_activity(frame: pl.DataFrame) -> pl.DataFrame:
    return (
        expected_table(frame)
        .with_columns((pl.col("anomaly_status") == "ANOMALY").cast(pl.Int64).alias("a"))
        .group_by("event_date", "user_id")
        .agg(
            pl.len().cast(pl.Int64).alias("events"),
            pl.col("a").sum().alias("anomalies"),
            pl.col("event_type").n_unique().cast(pl.Int64).alias("event_types"),
            pl.col("source").n_unique().cast(pl.Int64).alias("sources"),
            pl.col("value").sum().alias("total_value"),
            pl.col("value").mean().alias("avg_value"),
            pl.col("value").min().alias("min_value"),
            pl.col("value").max().alias("max_value"),
            pl.col("event_time").min().alias("first_event_at"),
            pl.col("event_time").max().alias("last_event_at"),
        )
        .sort("event_date", "user_id")
    )


def hourly_anomaly_summary(frame: pl.DataFrame) -> pl.DataFrame:
    anomalous = pl.col("anomaly_status") == "ANOMALY"
    return (
        expected_table(frame)
        .with_columns(pl.col("event_time").dt.truncate("1h").alias("event_hour"))
        .group_by("event_date", "event_hour", "event_type", "source")
        .agg(
            pl.len().cast(pl.Int64).alias("events"),
            anomalous.cast(pl.Int64).sum().alias("anomalies"),
            (anomalous.cast(pl.Int64).sum() / pl.len()).alias("anomaly_rate"),
            pl.col("user_id").n_unique().cast(pl.Int64).alias("users"),
            pl.col("user_id").filter(anomalous).n_unique().cast(pl.Int64).alias("anomalous_users"),
            pl.col("value").mean().alias("avg_value"),
            (pl.col("value") - pl.col("avg_value")).abs().filter(anomalous).max().alias("max_anomaly_deviation"),
        )
        .with_columns((pl.col("event_hour") + pl.duration(hours=1)).alias("event_hour_end"))
        .select(
            "event_date",
            "event_hour",
            "event_hour_end",
            "event_type",
            "source",
            "events",
            "anomalies",
            "anomaly_rate",
            "users",
            "anomalous_users",
            "avg_value",
            "max_anomaly_deviation",
        )
        .sort("event_hour", "event_type", "source")
    )


def test_dagster_loads_checks_and_builds_dbt_marts_that_reconcile(settings, s3, bucket, schema, monkeypatch):
    """Two runs of one partition: the second (a backfill after a replay changed the day) must
    replace the day in every incremental mart, and leave out the other day the warehouse holds."""
    from assets.dbt import dbt_assets_list
    from assets.warehouse import warehouse_assets, warehouse_checks
    from resources.dbt import dbt_resource

    # The Dagster loads get the schema from the warehouse resource; dbt, a subprocess, reads its source
    # schema (models/staging/_sources.yml) and its own schema (profiles.yml) from the environment.
    monkeypatch.setenv("ETL_WAREHOUSE_SCHEMA", schema)
    monkeypatch.setenv("DBT_TARGET_SCHEMA", f"{schema}_dbt")
    resources = resources_for(settings, bucket, schema)
    preliminary, final = processed_day(DAY, n=350, seed=21, users=9), processed_day(DAY, n=500, seed=11)
    write_partition(s3, bucket, processed_day(DAY2, n=300, seed=12))
    with connect("postgres", settings.warehouse_dsn, schema=schema) as wh:
        wh.load_day(s3, bucket, DAY2)  # in the warehouse, so the marts must leave it out

    for version, frame in (("preliminary", preliminary), ("final", final)):
        for key in layout.list_keys(s3, bucket, layout.day_prefix(layout.PROCESSED, DAY)):
            s3.delete_object(Bucket=bucket, Key=key)
        write_partition(s3, bucket, frame)
        if version == "preliminary":  # the loader alone; the Dagster path is checked on the reload
            with connect("postgres", settings.warehouse_dsn, schema=schema) as wh:
                wh.load_day(s3, bucket, DAY)
        else:
            loaded = materialize(
                [*warehouse_assets, *warehouse_checks], partition_key=DAY.isoformat(), resources=resources
            )
            assert loaded.success
            metadata = {
                e.asset_key.to_user_string(): e.event_specific_data.materialization.metadata
                for e in loaded.get_asset_materialization_events()
            }
            assert metadata["warehouse_events"]["dagster/row_count"].value == frame.height
            assert metadata["warehouse_events"]["rows_deleted"].value == preliminary.height
            checks = loaded.get_asset_check_evaluations()
            assert len(checks) == 2 and all(c.passed for c in checks), [c.metadata for c in checks]

        built = materialize(dbt_assets_list, partition_key=DAY.isoformat(), resources={"dbt": dbt_resource("postgres")})
        assert built.success, version
        dbt_checks = built.get_asset_check_evaluations()
        assert dbt_checks and all(c.passed for c in dbt_checks)

        activity = table_rows(settings, f'"{schema}_dbt".mart_user_daily_activity', "event_date, user_id")
        assert_frame_equal(activity, user_daily_activity(frame), check_dtypes=False)

    hourly = table_rows(settings, f'"{schema}_dbt".mart_hourly_anomaly_summary', "event_hour, event_type, source")
    assert_frame_equal(hourly, hourly_anomaly_summary(final), check_dtypes=False)
    metrics = table_rows(settings, f'"{schema}_dbt".mart_event_type_metrics', "event_type")
    expected = (
        final.group_by("event_type")
        .agg(
            pl.len().alias("events"),
            (pl.col("anomaly_status") == "ANOMALY").sum().alias("anomalies"),
            pl.col("value").sum().alias("total_value"),
        )
        .sort("event_type")
    )
    assert metrics.select("event_type", "events", "anomalies", "total_value").to_dicts() == expected.to_dicts()
    assert set(metrics["active_days"]) == {1}


def test_dbt_models_sit_downstream_of_the_warehouse_assets():
    from assets.dbt import dbt_assets_list
    from assets.ingestion import lake_assets
    from assets.warehouse import warehouse_assets, warehouse_checks
    from resources.dbt import dbt_resource

    defs = Definitions(
        assets=[*lake_assets, *warehouse_assets, *dbt_assets_list],
        asset_checks=warehouse_checks,
        resources={**build_resources(load_settings({})), "dbt": dbt_resource("postgres")},
    )
    graph = defs.resolve_asset_graph()
    parents = {
        key.to_user_string(): {p.to_user_string() for p in graph.get(key).parent_keys}
        for key in graph.get_all_asset_keys()
    }
    assert parents["warehouse_events"] == {"processed_events"}
    assert parents["stg_events"] == {"warehouse_events"}
    assert parents["stg_anomalies"] == {"warehouse_anomalies"}
    assert parents["mart_user_daily_activity"] == {"stg_events"}
    for key in ("warehouse_events", "mart_hourly_anomaly_summary"):
        node = next(graph.get(k) for k in graph.get_all_asset_keys() if k.to_user_string() == key)
        assert node.partitions_def is not None and node.automation_condition is not None


def test_a_clean_clone_parses_the_dbt_project_and_an_edit_reparses(tmp_path, monkeypatch):
    """target/ is git-ignored: loading a clean clone parses it (dagster-dbt's preparer, the venv's dbt
    even when it is not on PATH), and under `dagster dev` each load re-parses, so an edited model shows up."""
    from resources.dbt import DBT_PROJECT_DIR, prepare_dbt_project

    clone = tmp_path / "dbt_redshift"
    shutil.copytree(DBT_PROJECT_DIR, clone, ignore=shutil.ignore_patterns("target", "logs"))
    project = DbtProject(project_dir=clone, profiles_dir=clone, target="postgres")
    monkeypatch.delenv("DAGSTER_IS_DEV_CLI", raising=False)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert not project.manifest_path.exists()
    manifest = prepare_dbt_project(project)
    assert manifest == project.manifest_path and manifest.exists()
    nodes = json.loads(manifest.read_text())["nodes"]
    assert {"model.etl_redshift.mart_user_daily_activity", "model.etl_redshift.stg_events"} <= set(nodes)
    assert os.environ["PATH"] == "/usr/bin:/bin"  # restored

    # Outside `dagster dev` an existing manifest is loaded as is (a deployment prepares it at build time).
    model = clone / "models" / "marts" / "mart_edit_probe.sql"
    model.write_text("select event_date, count(*) as events from {{ ref('stg_events') }} group by 1\n")
    built = manifest.stat().st_mtime_ns
    prepare_dbt_project(project)
    assert manifest.stat().st_mtime_ns == built
    assert "model.etl_redshift.mart_edit_probe" not in json.loads(manifest.read_text())["nodes"]

    # Under `dagster dev` the same load re-parses and the edit is in the manifest.
    monkeypatch.setenv("DAGSTER_IS_DEV_CLI", "1")
    prepare_dbt_project(project)
    nodes = json.loads(project.manifest_path.read_text())["nodes"]
    assert "model.etl_redshift.mart_edit_probe" in nodes
