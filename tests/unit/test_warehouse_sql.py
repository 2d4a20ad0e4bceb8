"""The warehouse layer without a warehouse: Redshift's generated SQL (no Redshift can run here),
COPY manifests, schema-drift rules, and the PostgreSQL binary COPY encoder's bytes."""

from __future__ import annotations

import json
import re
import struct
from datetime import UTC, date, datetime

import pyarrow as pa
import pytest

from etl_platform.warehouse import SchemaDriftError, pgcopy, schema, source
from etl_platform.warehouse.redshift import LoadPlan, RedshiftSql, parse_dsn, plan_load
from etl_platform.warehouse.source import LakeObject

ROLE = "arn:aws:iam::123456789012:role/etl-redshift-copy"
DAY = date(2024, 3, 5)
PROCESSED_SCHEMA = pa.schema(
    [
        ("event_id", pa.large_string()),
        ("source", pa.large_string()),
        ("user_id", pa.large_string()),
        ("event_type", pa.large_string()),
        ("event_time", pa.timestamp("us", "UTC")),
        ("value", pa.float64()),
        ("attributes", pa.large_string()),
        ("shard_id", pa.large_string()),
        ("sequence_number", pa.large_string()),
        ("sub_sequence", pa.int64()),
        ("arrival_time", pa.timestamp("us", "UTC")),
        ("partition_key", pa.large_string()),
        ("shard_depth", pa.int32()),
        ("avg_value", pa.float64()),
        ("anomaly_status", pa.large_string()),
    ]
)
OBJECTS = [
    LakeObject("processed/dt=2024-03-05/hour=00/shardId-000000000000-4959-0000.parquet", 1234),
    LakeObject("processed/dt=2024-03-05/hour=01/shardId-000000000001-4960-0000.parquet", 5678),
]
TABLE = {c.name: c.kind for c in schema.TABLE_COLUMNS}


@pytest.fixture
def rs() -> RedshiftSql:
    return RedshiftSql("etl", ROLE)


def one_group_plan(tables=schema.TABLES) -> LoadPlan:
    return plan_load("etl-lake", DAY, OBJECTS, [PROCESSED_SCHEMA, PROCESSED_SCHEMA], TABLE, tables)


def squash(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


# --- DDL ------------------------------------------------------------------------------------------
def test_table_ddl_distributes_by_user_and_sorts_by_event_time(rs):
    ddl = squash(rs.create_table("events"))
    assert ddl.startswith('CREATE TABLE IF NOT EXISTS "etl"."events" (')
    assert 'DISTSTYLE KEY DISTKEY ("user_id") COMPOUND SORTKEY ("event_time")' in ddl
    for column in schema.TABLE_COLUMNS:
        assert f'"{column.name}" {column.sql_type("redshift")}' in ddl
    assert '"event_id" VARCHAR(512) NOT NULL' in ddl  # 128 characters = up to 512 UTF-8 bytes
    assert '"event_time" TIMESTAMP NOT NULL' in ddl and '"event_date" DATE NOT NULL' in ddl
    assert '"attributes" VARCHAR(65535)' in ddl and '"value" DOUBLE PRECISION' in ddl
    assert 'PRIMARY KEY ("event_id")' in ddl
    assert squash(rs.create_table("anomalies")).startswith('CREATE TABLE IF NOT EXISTS "etl"."anomalies" (')


def test_drift_column_ddl(rs):
    assert rs.add_column("events", schema.Column("region", "string")) == (
        'ALTER TABLE "etl"."events" ADD COLUMN "region" VARCHAR(65535)'
    )
    assert rs.add_column("anomalies", schema.Column("score", "float64")).endswith('"score" DOUBLE PRECISION')


def test_schema_names_and_roles_are_validated():
    with pytest.raises(ValueError, match="lower-case"):
        RedshiftSql('etl"; drop table x; --', ROLE)
    with pytest.raises(ValueError, match="IAM role"):
        RedshiftSql("etl", "not-a-role")


# --- COPY -----------------------------------------------------------------------------------------
def test_copy_reads_parquet_through_a_manifest_with_the_iam_role(rs):
    plan = one_group_plan()
    assert len(plan.groups) == 1
    copy = squash(rs.copy(0, plan.bucket, plan.groups[0].manifest_key))
    assert copy == (
        "COPY \"etl_copy_00\" FROM 's3://etl-lake/_manifests/warehouse/processed/dt=2024-03-05/load/group-00.manifest' "
        f"IAM_ROLE '{ROLE}' FORMAT AS PARQUET MANIFEST"
    )


def test_copy_table_matches_the_parquet_columns_in_file_order(rs):
    plan = one_group_plan()
    ddl = squash(rs.create_copy_table(0, plan.groups[0].columns))
    assert ddl.startswith('CREATE TEMP TABLE "etl_copy_00" (')
    names = re.findall(r'"(\w+)" [A-Z]', ddl)
    assert names == PROCESSED_SCHEMA.names  # columnar COPY maps columns by position
    assert '"user_id" VARCHAR(256)' in ddl  # sized: an over-long value fails the COPY, with a load error row


def test_manifest_lists_every_object_as_mandatory_with_its_length():
    manifest = source.manifest("etl-lake", OBJECTS)
    assert manifest == {
        "entries": [
            {"url": f"s3://etl-lake/{OBJECTS[0].key}", "mandatory": True, "meta": {"content_length": 1234}},
            {"url": f"s3://etl-lake/{OBJECTS[1].key}", "mandatory": True, "meta": {"content_length": 5678}},
        ]
    }
    json.dumps(manifest)  # serialisable as is
    assert source.manifest_key(DAY, 3, "ab12") == "_manifests/warehouse/processed/dt=2024-03-05/ab12/group-03.manifest"


def test_objects_with_a_new_column_get_their_own_copy_group(rs):
    wider = PROCESSED_SCHEMA.append(pa.field("region", pa.large_string()))
    added = (schema.Column("region", "string"),)
    plan = plan_load("etl-lake", DAY, OBJECTS, [PROCESSED_SCHEMA, wider], TABLE, added=added)
    assert [len(g.objects) for g in plan.groups] == [1, 1]
    assert [g.manifest_key[-17:] for g in plan.groups] == ["group-00.manifest", "group-01.manifest"]
    assert plan.columns[-1].name == "region"
    fill = squash(rs.fill_stage(plan.groups, plan.columns))
    # The older object has no region: it is staged as NULL, never dropped or shifted.
    assert 'CAST(NULL AS VARCHAR(65535)) AS "region" FROM "etl_copy_00"' in fill
    assert '"anomaly_status", "region" FROM "etl_copy_01"' in fill


# --- the transaction ------------------------------------------------------------------------------
def test_load_is_one_transaction_staging_then_delete_day_then_insert(rs):
    steps = rs.load_statements(one_group_plan())
    sqls = [squash(s.sql) for s in steps]
    assert sqls[0] == "BEGIN" and sqls[-1] == "COMMIT"
    assert sqls.count("BEGIN") == 1 and sqls.count("COMMIT") == 1
    order = [s.step for s in steps]
    expected = [
        "lock",
        "copy_table",
        "copy",
        "stage",
        "stats",
        "delete:events",
        "insert:events",
        "delete:anomalies",
        "insert:anomalies",
        "commit",
    ]
    positions = [order.index(step) for step in expected]
    assert positions == sorted(positions), order
    assert 'LOCK "etl"."events", "etl"."anomalies"' in sqls
    assert 'CREATE TEMP TABLE "etl_stage" (LIKE "etl"."events")' in sqls
    delete = sqls[order.index("delete:events")]
    assert delete == (
        'DELETE FROM "etl"."events" WHERE event_time >= \'2024-03-05 00:00:00\'::TIMESTAMP '
        "AND event_time < '2024-03-06 00:00:00'::TIMESTAMP"
    )
    insert_events = sqls[order.index("insert:events")]
    assert insert_events.startswith('INSERT INTO "etl"."events" ("event_id", "source"')
    assert insert_events.endswith('"event_date" FROM "etl_stage"')
    assert sqls[order.index("insert:anomalies")].endswith("FROM \"etl_stage\" WHERE anomaly_status = 'ANOMALY'")
    # Temp tables are dropped before (a retry in the same session) and after.
    assert sum(1 for s in sqls if s.startswith('DROP TABLE IF EXISTS "etl_stage"')) == 2


def test_staging_keeps_the_first_arrival_of_each_event_and_derives_the_day(rs):
    plan = one_group_plan()
    fill = squash(rs.fill_stage(plan.groups, plan.columns))
    assert (
        'ROW_NUMBER() OVER (PARTITION BY "event_id" ORDER BY "shard_depth", LPAD("sequence_number", 129, \'0\'), '
        '"sub_sequence") AS etl_arrival'
    ) in fill
    assert fill.endswith("WHERE etl_arrival = 1")
    assert 'CAST("event_time" AS DATE)' in fill


def test_stats_count_rows_outside_the_day(rs):
    stats = squash(rs.stage_stats(2, DAY))
    assert '(SELECT COUNT(*) FROM "etl_copy_00") + (SELECT COUNT(*) FROM "etl_copy_01")' in stats
    assert "event_time < '2024-03-05 00:00:00'::TIMESTAMP OR event_time >= '2024-03-06 00:00:00'::TIMESTAMP" in stats


def test_loading_only_anomalies_touches_only_that_table(rs):
    steps = rs.load_statements(one_group_plan(tables=("anomalies",)))
    assert [s.step for s in steps if ":" in s.step] == ["delete:anomalies", "insert:anomalies"]


def test_an_empty_partition_only_empties_the_day(rs):
    plan = plan_load("etl-lake", DAY, [], [], TABLE)
    steps = [s.step for s in rs.load_statements(plan)]
    assert "copy" not in steps and "delete:events" in steps and "insert:events" in steps


def test_load_errors_are_read_back_from_sys_load_error_detail(rs):
    query = squash(rs.load_errors())
    assert "FROM sys_load_error_detail" in query
    assert "WHERE session_id = %s AND start_time >= %s" in query
    for column in ("file_name", "line_number", "column_name", "error_message"):
        assert column in query


def test_literals_are_escaped():
    assert RedshiftSql("etl", "arn:aws:iam::1:role/o'brien").copy(0, "b", "k").count("o''brien") == 1


def test_dsn_parsing():
    args = parse_dsn(
        "redshift://loader@cluster.abc.eu-west-1.redshift.amazonaws.com:5439/analytics?sslmode=verify-full"
    )
    assert args == {
        "host": "cluster.abc.eu-west-1.redshift.amazonaws.com",
        "port": 5439,
        "database": "analytics",
        "user": "loader",
        "ssl": True,
        "sslmode": "verify-full",
    }
    with pytest.raises(ValueError):
        parse_dsn("mysql://x")


# --- drift ----------------------------------------------------------------------------------------
def test_no_drift_for_the_processed_schema():
    assert schema.detect_drift(PROCESSED_SCHEMA, TABLE).clean


def test_a_new_column_fails_by_default_naming_it():
    drift = schema.detect_drift(PROCESSED_SCHEMA.append(pa.field("region", pa.string())), TABLE)
    assert drift.new == (schema.Column("region", "string"),)
    with pytest.raises(SchemaDriftError, match=r"region \(string\).*on_drift='add'") as err:
        schema.resolve_drift("etl.events", drift, "fail")
    assert err.value.columns == ("region",)
    assert schema.resolve_drift("etl.events", drift, "add") == (schema.Column("region", "string"),)


def test_missing_or_retyped_processed_columns_always_fail():
    missing = pa.schema([f for f in PROCESSED_SCHEMA if f.name != "anomaly_status"])
    with pytest.raises(SchemaDriftError, match="lacks required column.*anomaly_status"):
        schema.resolve_drift("etl.events", schema.detect_drift(missing, TABLE), "add")
    retyped = pa.schema([pa.field("value", pa.string()) if f.name == "value" else f for f in PROCESSED_SCHEMA])
    with pytest.raises(SchemaDriftError, match="value: table has float64, processed data has string"):
        schema.resolve_drift("etl.events", schema.detect_drift(retyped, TABLE), "add")
    nested = PROCESSED_SCHEMA.append(pa.field("tags", pa.list_(pa.string())))
    with pytest.raises(SchemaDriftError, match="tags"):
        schema.resolve_drift("etl.events", schema.detect_drift(nested, TABLE), "add")
    with pytest.raises(ValueError, match="on_drift"):
        schema.resolve_drift("etl.events", schema.detect_drift(nested, TABLE), "ignore")


def test_widening_is_not_drift():
    narrower = pa.schema(
        [pa.field("sub_sequence", pa.int32()) if f.name == "sub_sequence" else f for f in PROCESSED_SCHEMA]
    )
    assert schema.detect_drift(narrower, TABLE).clean


# --- binary COPY encoding -------------------------------------------------------------------------
def _decode(body: bytes, kinds: list[str]) -> list[list[object]]:
    rows, pos = [], 0
    while pos < len(body):
        (count,) = struct.unpack_from(">h", body, pos)
        pos += 2
        row: list[object] = []
        for kind in kinds[:count]:
            (length,) = struct.unpack_from(">i", body, pos)
            pos += 4
            if length < 0:
                row.append(None)
                continue
            raw = body[pos : pos + length]
            pos += length
            fmt = {
                "int16": ">h",
                "int32": ">i",
                "int64": ">q",
                "float64": ">d",
                "float32": ">f",
                "timestamp": ">q",
                "date": ">i",
                "bool": ">?",
            }.get(kind)
            row.append(raw.decode() if kind == "string" else struct.unpack(fmt, raw)[0])
        rows.append(row)
    return rows


def test_binary_copy_encoding_is_postgres_wire_format():
    moment = datetime(2024, 3, 5, 12, 30, 0, 123456, tzinfo=UTC)
    table = pa.table(
        {
            "s": pa.array(["héllo ✓", None, ""], pa.large_string()),
            "t": pa.array([moment, moment, None], pa.timestamp("us", "UTC")),
            "f": pa.array([1.5, None, -0.25]),
            "i": pa.array([1, 2, 3], pa.int32()),
            "d": pa.array([DAY, DAY, DAY], pa.date32()),
        }
    ).slice(0, 3)
    kinds = ["string", "timestamp", "float64", "int64", "date"]  # int32 data into a BIGINT column
    body = bytes(pgcopy.encode_rows(table, kinds))
    micros_since_2000 = int((moment - datetime(2000, 1, 1, tzinfo=UTC)).total_seconds()) * 1_000_000 + 123456
    days_since_2000 = (DAY - date(2000, 1, 1)).days
    assert _decode(body, kinds) == [
        ["héllo ✓", micros_since_2000, 1.5, 1, days_since_2000],
        [None, micros_since_2000, None, 2, days_since_2000],
        ["", None, -0.25, 3, days_since_2000],
    ]
    chunks = b"".join(bytes(c) for c in pgcopy.copy_chunks(table, kinds, rows_per_chunk=2))
    assert chunks == pgcopy.HEADER + body + pgcopy.TRAILER


def test_encoding_refuses_values_that_do_not_fit():
    with pytest.raises(pa.ArrowInvalid):
        pgcopy.encode_rows(pa.table({"i": pa.array([2**40])}), ["int32"])
