"""Warehouse loader throughput on the local stack, against a raw COPY of the same data, same run.

    .venv/bin/python -m benchmarks.bench_warehouse [--rows 1000000] [--repeat 3] [--no-encoders]
                                                   [--merge-alternative]

A processed day of --rows events (one Parquet object per hour and shard, as the consumer writes
them) goes to a fresh moto bucket. Each repeat, in a fresh schema, times:

- raw:    S3 read of the same objects + one binary `COPY FROM STDIN` into a plain table (no key,
          no index, no partitioning): the floor any loader of this data pays;
- load:   `PostgresWarehouse.load_day` end to end into empty tables (S3 read, de-duplication,
          drift and day checks, staging COPY, primary-key build, partition swap, anomalies table);
- reload: the same call again, replacing the day's rows (the idempotent path a retry or a
          backfill takes).

Reported: median wall seconds and rows/s, and each path relative to raw; also CPU seconds (this
process + the PostgreSQL backend serving it, read from /proc), which on a machine shared with
other jobs varies far less than wall time. --encoders (default on) also times three ways of feeding
the same rows to COPY, the choice `pgcopy` is based on. --merge-alternative also times the design
the PostgreSQL dialect does not use (temp staging table, then DELETE the day + INSERT ... ON
CONFLICT into one unpartitioned table keyed on event_id), first load and reload.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime

import polars as pl
import psycopg
import pyarrow as pa
from psycopg import sql

from benchmarks.common import local_settings, stack_benchmark
from etl_platform import aws
from etl_platform.lake import layout
from etl_platform.ops.provisioning import ensure_bucket
from etl_platform.warehouse import connect, pgcopy, source
from etl_platform.warehouse.schema import TABLE_COLUMNS

DAY = date(2024, 3, 5)
SHARDS = 4


def processed_frame(rows: int, day: date = DAY) -> pl.DataFrame:
    """Processed rows with realistic widths: 40-char ids, 40-digit sequence numbers, JSON attributes."""
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    i = pl.int_range(0, rows, eager=True).alias("i")
    return (
        pl.DataFrame(i)
        .with_columns(
            pl.concat_str(
                [pl.col("i").hash(1).cast(pl.String).str.zfill(20), pl.col("i").hash(2).cast(pl.String).str.zfill(20)]
            ).alias("event_id"),
            pl.col("i")
            .mod(5)
            .replace_strict({0: "app_log", 1: "iot", 2: "cdc", 3: "api", 4: "web"}, return_dtype=pl.String)
            .alias("source"),
            pl.format("user-{}", pl.col("i").hash(3).mod(50_000)).alias("user_id"),
            pl.format("type_{}", pl.col("i").mod(12)).alias("event_type"),
            (pl.lit(start) + pl.duration(microseconds=pl.col("i") * (86_400_000_000 // rows)))
            .dt.cast_time_unit("us")
            .dt.convert_time_zone("UTC")
            .alias("event_time"),
            (pl.col("i").hash(4).mod(400_000).cast(pl.Float64) / 4).alias("value"),
            pl.format('{{"page":"/p/{}","ok":true}}', pl.col("i").mod(997)).alias("attributes"),
            pl.format("shardId-00000000000{}", pl.col("i").mod(SHARDS)).alias("shard_id"),
            pl.format("4959{}", pl.col("i").cast(pl.String).str.zfill(36)).alias("sequence_number"),
            pl.lit(0, pl.Int64).alias("sub_sequence"),
            (pl.lit(start) + pl.duration(microseconds=pl.col("i") * (86_400_000_000 // rows) + 250_000))
            .dt.cast_time_unit("us")
            .dt.convert_time_zone("UTC")
            .alias("arrival_time"),
            pl.format("user-{}", pl.col("i").hash(3).mod(50_000)).alias("partition_key"),
            pl.lit(0, pl.Int32).alias("shard_depth"),
            (pl.col("i").hash(5).mod(400_000).cast(pl.Float64) / 4).alias("avg_value"),
            pl.when(pl.col("i").hash(6).mod(100) == 0)
            .then(pl.lit("ANOMALY"))
            .otherwise(pl.lit("NORMAL"))
            .alias("anomaly_status"),
        )
        .drop("i")
    )


def write_day(s3, bucket: str, frame: pl.DataFrame) -> int:
    """One object per (hour, shard), named as the consumer names them; returns the object count."""
    hourly = frame.with_columns(pl.col("event_time").dt.truncate("1h").alias("_hour"))
    count = 0
    for (moment, shard), part in hourly.group_by("_hour", "shard_id", maintain_order=True):
        part = part.drop("_hour")
        key = layout.object_key(layout.PROCESSED, layout.HourPartition.of(moment), shard, part["sequence_number"][0], 0)
        layout.put(s3, bucket, key, layout.parquet_bytes(part))
        count += 1
    return count


def _plain_table(conn: psycopg.Connection, schema: str, name: str, temp: bool = False) -> sql.Composable:
    columns = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(c.name), sql.SQL(c.sql_type("postgres")))
        for c in TABLE_COLUMNS
        if c.name != "event_date"
    )
    table = sql.Identifier(name) if temp else sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(name))
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table))
    conn.execute(sql.SQL("CREATE {} TABLE {} ({})").format(sql.SQL("TEMP" if temp else ""), table, columns))
    return table


KINDS = [c.kind for c in TABLE_COLUMNS if c.name != "event_date"]
_TICK = os.sysconf("SC_CLK_TCK")


def backend_cpu(conn: psycopg.Connection) -> float:
    """CPU seconds the PostgreSQL backend of `conn` has used (0 if its /proc entry is unreadable)."""
    try:
        with open(f"/proc/{conn.info.backend_pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime


class Meter:
    """Wall and CPU (this process + a backend) seconds of one timed block."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> Meter:
        self.wall, self.cpu = time.perf_counter(), time.process_time() + backend_cpu(self.conn)
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() + backend_cpu(self.conn) - self.cpu


def raw_copy(dsn: str, s3, bucket: str, schema: str) -> tuple[float, float]:
    """S3 read + binary COPY into a plain table, committed: (wall, cpu) seconds."""
    with psycopg.connect(dsn) as conn:
        table = _plain_table(conn, schema, "raw_copy")
        conn.commit()
        with Meter(conn) as meter:
            data = source.read_objects(s3, bucket, source.partition_objects(s3, bucket, DAY))
            with conn.cursor().copy(sql.SQL("COPY {} FROM STDIN (FORMAT BINARY)").format(table)) as copy:
                for chunk in pgcopy.copy_chunks(data, KINDS):
                    copy.write(chunk)
            conn.commit()
        return meter.wall, meter.cpu


def encoder_timings(dsn: str, data: pa.Table) -> dict[str, tuple[float, float]]:
    """The same rows into a temp table three ways (data already in memory; COPY + encoding only)."""
    frame = pl.from_arrow(data)
    naive = frame.with_columns(pl.col("event_time", "arrival_time").dt.replace_time_zone(None))
    pg_types = [
        "varchar",
        "varchar",
        "varchar",
        "varchar",
        "timestamp",
        "float8",
        "text",
        "varchar",
        "varchar",
        "int8",
        "timestamp",
        "varchar",
        "int4",
        "float8",
        "varchar",
    ]

    def vectorised(cur: psycopg.Cursor, table: sql.Composable) -> None:
        with cur.copy(sql.SQL("COPY {} FROM STDIN (FORMAT BINARY)").format(table)) as copy:
            for chunk in pgcopy.copy_chunks(data, KINDS):
                copy.write(chunk)

    def write_row(cur: psycopg.Cursor, table: sql.Composable) -> None:
        with cur.copy(sql.SQL("COPY {} FROM STDIN (FORMAT BINARY)").format(table)) as copy:
            copy.set_types(pg_types)
            for row in naive.iter_rows():
                copy.write_row(row)

    def csv(cur: psycopg.Cursor, table: sql.Composable) -> None:
        text = naive.write_csv(include_header=False, datetime_format="%Y-%m-%d %H:%M:%S%.6f").encode()
        with cur.copy(sql.SQL("COPY {} FROM STDIN (FORMAT CSV)").format(table)) as copy:
            for start in range(0, len(text), 8 << 20):
                copy.write(text[start : start + (8 << 20)])

    timings = {}
    ways: dict[str, Callable[[psycopg.Cursor, sql.Composable], None]] = {
        "binary COPY, vectorised Arrow encoder (pgcopy)": vectorised,
        "binary COPY, psycopg write_row + set_types": write_row,
        "CSV COPY of a polars write_csv buffer": csv,
    }
    for label, way in ways.items():
        with psycopg.connect(dsn) as conn:
            table = _plain_table(conn, "", "enc", temp=True)
            with Meter(conn) as meter:
                way(conn.cursor(), table)
                conn.commit()
            timings[label] = (meter.wall, meter.cpu)
            count = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table)).fetchone()
            assert count is not None and count[0] == data.num_rows, (label, count)
    return timings


def merge_alternative(dsn: str, s3, bucket: str, schema: str) -> list[tuple[str, float, float]]:
    """Staging + DELETE day + INSERT ... ON CONFLICT into a plain keyed table, loaded twice."""
    columns = [c.name for c in TABLE_COLUMNS if c.name != "event_date"]
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    target = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier("merged"))
    results = []
    with psycopg.connect(dsn) as conn:
        definitions = sql.SQL(", ").join(
            sql.SQL("{} {}").format(sql.Identifier(c.name), sql.SQL(c.sql_type("postgres"))) for c in TABLE_COLUMNS
        )
        conn.execute(sql.SQL("CREATE TABLE {} ({}, PRIMARY KEY (event_id))").format(target, definitions))
        conn.execute(sql.SQL("CREATE INDEX ON {} (event_date)").format(target))
        conn.commit()
        for phase in ("first load", "reload"):
            with Meter(conn) as meter:
                data = source.read_objects(s3, bucket, source.partition_objects(s3, bucket, DAY)).select(columns)
                conn.execute(
                    sql.SQL("CREATE TEMP TABLE stage ON COMMIT DROP AS SELECT {} FROM {} WITH NO DATA").format(
                        cols, target
                    )
                )
                with conn.cursor().copy(sql.SQL("COPY stage ({}) FROM STDIN (FORMAT BINARY)").format(cols)) as copy:
                    for chunk in pgcopy.copy_chunks(data, KINDS):
                        copy.write(chunk)
                conn.execute(sql.SQL("DELETE FROM {} WHERE event_date = %s").format(target), (DAY,))
                updates = sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in columns)
                conn.execute(
                    sql.SQL(
                        "INSERT INTO {} ({}, event_date) SELECT {}, event_time::date FROM stage "
                        "ON CONFLICT (event_id) DO UPDATE SET {}"
                    ).format(target, cols, cols, updates)
                )
                conn.commit()
            results.append((phase, meter.wall, meter.cpu))
    return results


@stack_benchmark("moto", "postgres")
def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--encoders", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--merge-alternative", action="store_true")
    args = parser.parse_args()
    settings = local_settings()
    s3 = aws.client("s3", settings)
    bucket = f"bench-wh-{uuid.uuid4().hex[:8]}"
    ensure_bucket(s3, bucket, settings.aws_region)
    dsn = settings.warehouse_dsn

    t0 = time.perf_counter()
    frame = processed_frame(args.rows)
    objects = write_day(s3, bucket, frame)
    print(
        f"wrote {args.rows:,} processed rows as {objects} Parquet objects to s3://{bucket} "
        f"in {time.perf_counter() - t0:.1f}s"
    )

    samples: dict[str, list[tuple[float, float]]] = {"raw": [], "load": [], "reload": []}
    breakdown: dict[str, list[dict[str, float]]] = {"load": [], "reload": []}
    schemas = []
    try:
        for r in range(args.repeat):
            schema = f"bench_wh_{uuid.uuid4().hex[:8]}"
            schemas.append(schema)
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
            if r % 2 == 0:  # alternate the order so drift in machine load favours neither side
                samples["raw"].append(raw_copy(dsn, s3, bucket, schema))
            with connect("postgres", dsn, schema=schema) as wh:
                for phase in ("load", "reload"):
                    with Meter(wh.conn) as meter:  # type: ignore[attr-defined]
                        result = wh.load_day(s3, bucket, DAY)["events"]
                    samples[phase].append((meter.wall, meter.cpu))
                    breakdown[phase].append(dict(result.timings))
                    assert result.rows_loaded == args.rows, result
                assert wh.count_rows("events", DAY) == (args.rows, args.rows)
            if r % 2 == 1:
                samples["raw"].append(raw_copy(dsn, s3, bucket, schema))
            print(
                f"repeat {r + 1}: "
                + ", ".join(f"{k} {v[-1][0]:.2f}s wall / {v[-1][1]:.2f}s cpu" for k, v in samples.items())
            )
        encoders = (
            encoder_timings(dsn, source.read_objects(s3, bucket, source.partition_objects(s3, bucket, DAY)))
            if args.encoders
            else {}
        )
        merged = merge_alternative(dsn, s3, bucket, schemas[-1]) if args.merge_alternative else []
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            for schema in schemas:
                conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                s3.delete_objects(Bucket=bucket, Delete={"Objects": keys})
        s3.delete_bucket(Bucket=bucket)

    def med(values: list[tuple[float, float]], i: int) -> float:
        return statistics.median(v[i] for v in values)

    raw_wall, raw_cpu = med(samples["raw"], 0), med(samples["raw"], 1)
    labels = {
        "raw": "raw: S3 read + binary COPY into a plain table (reference)",
        "load": "loader, first load of the day (`load_day`, end to end)",
        "reload": "loader, reload replacing the day (`load_day`, end to end)",
    }
    print(
        f"\n{args.rows:,} rows, {objects} objects, median of {args.repeat}; load average "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs\n"
    )
    print("| path | wall s | rows/s | wall vs raw | CPU s (client + PostgreSQL) | CPU vs raw |")
    print("|---|---:|---:|---:|---:|---:|")
    for key, label in labels.items():
        wall, cpu = med(samples[key], 0), med(samples[key], 1)
        print(
            f"| {label} | {wall:.2f} | {args.rows / wall:,.0f} | {wall / raw_wall:.2f}x | {cpu:.2f} | "
            f"{cpu / raw_cpu:.2f}x |"
        )
    for phase in ("load", "reload"):
        steps = {k: statistics.median(b.get(k, 0.0) for b in breakdown[phase]) for k in breakdown[phase][0]}
        print(f"\n{phase} breakdown (median wall s): " + ", ".join(f"{k} {v:.2f}" for k, v in steps.items()))
    if merged:
        print(
            "\n| alternative: staging + DELETE day + INSERT ON CONFLICT, unpartitioned | wall s | rows/s | "
            "wall vs raw | CPU s | CPU vs raw |"
        )
        print("|---|---:|---:|---:|---:|---:|")
        for phase, wall, cpu in merged:
            print(
                f"| {phase} | {wall:.2f} | {args.rows / wall:,.0f} | {wall / raw_wall:.2f}x | {cpu:.2f} | "
                f"{cpu / raw_cpu:.2f}x |"
            )
    if encoders:
        fastest_cpu = min(cpu for _, cpu in encoders.values())
        print("\n| COPY encoder (same rows, in memory, temp table) | wall s | rows/s | CPU s | CPU vs fastest |")
        print("|---|---:|---:|---:|---:|")
        for label, (wall, cpu) in encoders.items():
            print(f"| {label} | {wall:.2f} | {args.rows / wall:,.0f} | {cpu:.2f} | {cpu / fastest_cpu:.2f}x |")


if __name__ == "__main__":
    main()
