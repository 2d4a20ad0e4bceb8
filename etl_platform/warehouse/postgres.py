"""The PostgreSQL dialect (psycopg): Redshift's local stand-in, and the path tests run for real.

`events` and `anomalies` are range-partitioned by `event_date`. A load reads the day's processed
Parquet objects from the lake, keeps the first arrival of each event_id, checks the columns
against the table (drift), then in ONE transaction:

1. takes an advisory lock for the schema, so loads (a backfill beside the automation, or two days at
   once) run one after the other: two days' swaps each hold a share lock on the parent table and
   would deadlock asking for the exclusive lock a partition drop needs; and only then reads the lake,
   so the load that commits last read the newest committed lake state;
2. adds drift columns if `on_drift="add"` (PostgreSQL DDL is transactional: a failed load adds none);
3. creates a staging table for the day (`LIKE` the table, with a CHECK on the day) and fills it by
   binary `COPY FROM STDIN` (pgcopy), then builds its primary key in one sorted pass;
4. drops the day's old partition and attaches the staging table in its place.

Readers see the old day or the new day, never a mix; re-running leaves exactly one row per event.
Why a partition swap rather than DELETE + INSERT ... ON CONFLICT from a temp table: on a million
rows that pays index maintenance row by row (and, on a reload, the dead tuples the DELETE left) and
measured 3-4x slower end to end; the swap costs one sorted key build (BENCHMARKS.md).
The static statements live in sql/postgres/*.sql.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from functools import cache
from pathlib import Path
from typing import Any, LiteralString, cast

import psycopg
import pyarrow as pa
import pyarrow.compute as _compute
from psycopg import sql

from etl_platform.lake.visibility import PendingObjects
from etl_platform.warehouse import pgcopy, source
from etl_platform.warehouse.base import (
    LoadResult,
    PartitionMismatchError,
    Warehouse,
    WarehouseLoadError,
    check_tables,
)
from etl_platform.warehouse.schema import (
    DEFAULT_DRIFT_POLICY,
    DEFAULT_LAYOUT,
    PARTITION_COLUMN,
    TABLES,
    Column,
    TableLayout,
    detect_drift,
    resolve_drift,
    table_kinds,
)

# pyarrow.compute creates its kernel functions (sum, equal, ...) at import time and pyarrow ships no
# stubs, so the type checker cannot see them: the module is typed Any here.
pc: Any = _compute

SQL_DIR = Path(__file__).parent / "sql" / "postgres"
DDL_LOCK = "etl_platform.warehouse.ddl"


@cache
def statement(name: str) -> LiteralString:
    """A static statement from sql/postgres/<name>.sql (identifiers are filled in with psycopg.sql)."""
    # psycopg's stubs take SQL text only as LiteralString (no user input spliced in); these files are
    # part of the package, as static as a literal, but read at run time.
    return cast(LiteralString, (SQL_DIR / f"{name}.sql").read_text())


def _sql(name: str, **parts: sql.Composable) -> sql.Composed:
    return sql.SQL(statement(name)).format(**parts)


def _type_sql(column: Column) -> sql.SQL:
    """The column's PostgreSQL type as SQL text: a fixed type name and a length (schema.sql_type), as
    safe as a literal, which psycopg's stubs (SQL() takes only LiteralString) cannot see."""
    return sql.SQL(cast(LiteralString, column.sql_type("postgres")))


def column_definitions(columns: Sequence[Column]) -> sql.Composed:
    """Column DDL; event_id compares bytewise (COLLATE "C"): ids are opaque, and the per-load
    primary-key build sorts them about twice as fast as under a linguistic collation."""
    return sql.SQL(",\n    ").join(
        sql.SQL("{} {}{}{}").format(
            sql.Identifier(c.name),
            _type_sql(c),
            sql.SQL(' COLLATE "C"' if c.name == "event_id" else ""),
            sql.SQL("" if c.nullable else " NOT NULL"),
        )
        for c in columns
    )


def day_bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime.combine(day, dtime(0), tzinfo=UTC)
    return start, start + timedelta(days=1)


def check_partition(table: pa.Table, day: date) -> None:
    """Every row's event_time must fall on `day` (UTC): the lake partitions by event time."""
    if table.num_rows == 0:
        return
    if "event_time" not in table.column_names or not pa.types.is_timestamp(table.schema.field("event_time").type):
        return  # detect_drift reports a missing or mistyped column
    utc = pa.timestamp("us", "UTC")
    times = table.column("event_time").cast(utc)
    bounds = pc.min_max(times).as_py()
    start, end = day_bounds(day)
    low, high = bounds["min"], bounds["max"]
    if low is None:
        return
    if low < start or high >= end:
        off_day = pc.or_(pc.less(times, pa.scalar(start, utc)), pc.greater_equal(times, pa.scalar(end, utc)))
        outside = pc.sum(off_day).as_py()
        raise PartitionMismatchError(
            f"processed partition dt={day.isoformat()} has {outside} row(s) with event_time outside that UTC "
            f"day (range {low.isoformat()} .. {high.isoformat()}); nothing loaded"
        )


def partition_name(table: str, day: date) -> str:
    return f"{table}_d{day:%Y%m%d}"


class PostgresWarehouse(Warehouse):
    dialect = "postgres"

    def __init__(
        self,
        dsn: str,
        schema: str,
        password: str | None = None,
        connect_timeout: int = 10,
        layout: TableLayout = DEFAULT_LAYOUT,
        lake_root: str = "",
    ) -> None:
        super().__init__(schema, layout, lake_root)
        kwargs: dict[str, Any] = {"connect_timeout": connect_timeout}
        if password:
            kwargs["password"] = password
        self.conn = psycopg.connect(dsn, **kwargs)
        self.conn.execute("SET TIME ZONE 'UTC'")
        self.conn.commit()

    def close(self) -> None:
        self.conn.close()

    def _ident(self, name: str) -> sql.Composed:
        return sql.SQL("{}.{}").format(sql.Identifier(self.schema), sql.Identifier(name))

    # --- schema -----------------------------------------------------------------------------------
    def ensure_tables(self) -> None:
        with self.conn.transaction():
            # CREATE ... IF NOT EXISTS can still collide when two runs race; one lock makes it safe.
            self.conn.execute(statement("lock_partition"), {"key": DDL_LOCK})
            self.conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema)))
            for table in TABLES:
                kind = self.conn.execute(statement("relation_kind"), {"schema": self.schema, "table": table}).fetchone()
                if kind is not None and kind[0] != "p":
                    raise WarehouseLoadError(
                        f"{self.qualified(table)} exists but is not partitioned by event_date (relkind {kind[0]}); "
                        "it predates this loader: drop it and reload the partitions"
                    )
                self.conn.execute(
                    _sql("create_table", target=self._ident(table), columns=column_definitions(self.layout.columns))
                )
            # A contract's field added since the tables were made: an additive change, not drift.
            existing = self.table_columns(TABLES[0])
            self._add_columns([c for c in self.layout.data if c.name not in existing])

    def table_columns(self, table: str) -> dict[str, str]:
        with self.conn.transaction():  # its own, or a savepoint inside a load's
            rows = self.conn.execute(statement("table_columns"), {"schema": self.schema, "table": table}).fetchall()
        return {name: data_type for name, data_type in rows}

    def _add_columns(self, columns: Sequence[Column]) -> None:
        """ADD COLUMN on both tables (they stay alike), inside the caller's transaction."""
        for table in TABLES:
            for col in columns:
                self.conn.execute(
                    sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}").format(
                        self._ident(table), sql.Identifier(col.name), _type_sql(col)
                    )
                )

    # --- load -------------------------------------------------------------------------------------
    def load_day(
        self,
        s3: Any,
        bucket: str,
        day: date,
        tables: Sequence[str] = TABLES,
        on_drift: str = DEFAULT_DRIFT_POLICY,
        pending: PendingObjects | None = None,
    ) -> dict[str, LoadResult]:
        started = time.monotonic()
        self.ensure_tables()
        with self._locked_load(day, tables):
            objects = source.partition_objects(s3, bucket, day, pending, self.lake_root)
            data = source.read_objects(s3, bucket, objects)
            timings = {"read": time.monotonic() - started}
            results = self.load_table(
                data, day, tables=tables, on_drift=on_drift, objects=len(objects), started=started, timings=timings
            )
        source.record_loaded(s3, bucket, self.schema, day, objects)
        return results

    @contextmanager
    def _locked_load(self, day: date, tables: Sequence[str]) -> Iterator[None]:
        """One transaction holding the schema's load lock (module docstring, step 1); a database error
        inside rolls everything back and is raised as WarehouseLoadError."""
        try:
            with self.conn.transaction():
                self.conn.execute(statement("lock_partition"), {"key": f"{self.schema}/load"})
                yield
        except psycopg.Error as exc:
            context = (exc.diag.context or "").strip()
            raise WarehouseLoadError(
                f"loading {day.isoformat()} into {self.schema}.{'/'.join(tables)} failed and was rolled back: "
                f"{exc.diag.message_primary or exc}" + (f" ({context})" if context else "")
            ) from exc

    def load_table(
        self,
        data: pa.Table,
        day: date,
        tables: Sequence[str] = TABLES,
        on_drift: str = DEFAULT_DRIFT_POLICY,
        objects: int = 0,
        started: float | None = None,
        timings: dict[str, float] | None = None,
    ) -> dict[str, LoadResult]:
        """Load an in-memory processed partition (what load_day reads from the lake)."""
        tables = check_tables(tables)
        started = time.monotonic() if started is None else started
        timings = {} if timings is None else timings
        mark = time.monotonic()

        self.ensure_tables()
        existing = table_kinds(self.table_columns(tables[0]))
        added: tuple[Column, ...] = ()
        if data.num_columns:
            drift = detect_drift(data.schema, existing, self.layout.required)
            added = resolve_drift(self.qualified(tables[0]), drift, on_drift)
        check_partition(data, day)
        kept, duplicates = source.first_arrivals(data)
        kinds = {**existing, **{c.name: c.kind for c in added}}
        columns = [name for name in kinds if name in kept.column_names and name != PARTITION_COLUMN]
        if kept.num_rows:
            kept = kept.select(columns).append_column(
                PARTITION_COLUMN, pa.repeat(pa.scalar(day, pa.date32()), kept.num_rows)
            )
        columns.append(PARTITION_COLUMN)
        timings["prepare"] = time.monotonic() - mark

        deleted: dict[str, int] = {}
        loaded: dict[str, int] = {}
        with self._locked_load(day, tables):  # nested in load_day's: a savepoint under the same lock
            if added:
                self._add_columns(added)
            for table in tables:
                rows = kept
                if table == "anomalies" and kept.num_rows:
                    rows = kept.filter(pc.equal(kept.column("anomaly_status"), "ANOMALY"))
                deleted[table], loaded[table] = self._replace_day(
                    table, day, rows, [kinds[c] for c in columns], timings
                )
        seconds = time.monotonic() - started
        return {
            table: LoadResult(
                table=self.qualified(table),
                day=day,
                rows_loaded=loaded[table],
                rows_deleted=deleted[table],
                seconds=seconds,
                source_rows=data.num_rows if table == "events" else _anomaly_rows(data),
                duplicates_dropped=duplicates,
                objects=objects,
                added_columns=tuple(c.name for c in added),
                timings=dict(timings),
            )
            for table in tables
        }

    def _replace_day(
        self, table: str, day: date, rows: pa.Table, kinds: Sequence[str], timings: dict[str, float]
    ) -> tuple[int, int]:
        """Stage `rows` as the day's new partition of `table` and swap it in; (deleted, loaded)."""
        name = partition_name(table, day)
        load = f"{name}_load"
        day_literal, next_literal = sql.Literal(day), sql.Literal(day + timedelta(days=1))
        cur = self.conn.cursor()
        deleted_row = cur.execute(_sql("count_day", target=self._ident(table)), {"day": day}).fetchone()
        deleted = int(deleted_row[0]) if deleted_row else 0
        if rows.num_rows:
            mark = time.monotonic()
            cur.execute(
                _sql(
                    "create_load_table",
                    load=self._ident(load),
                    target=self._ident(table),
                    range_check=sql.Identifier(f"{name}_range"),
                    day=day_literal,
                    next_day=next_literal,
                )
            )
            copy_sql = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY, FREEZE)").format(
                self._ident(load), sql.SQL(", ").join(sql.Identifier(c) for c in rows.column_names)
            )
            with cur.copy(copy_sql) as copy:
                for chunk in pgcopy.copy_chunks(rows, kinds):
                    copy.write(chunk)
            timings[f"stage_{table}"] = time.monotonic() - mark
            mark = time.monotonic()
            cur.execute(_sql("add_load_key", load=self._ident(load), load_key=sql.Identifier(f"{load}_pkey")))
            timings[f"index_{table}"] = time.monotonic() - mark
        mark = time.monotonic()
        cur.execute(_sql("drop_partition", partition=self._ident(name)))
        if rows.num_rows:
            cur.execute(
                _sql(
                    "attach_partition",
                    load=self._ident(load),
                    partition_name=sql.Identifier(name),
                    load_key_qualified=self._ident(f"{load}_pkey"),
                    partition_key=sql.Identifier(f"{name}_pkey"),
                    target=self._ident(table),
                    partition=self._ident(name),
                    day=day_literal,
                    next_day=next_literal,
                )
            )
        timings[f"swap_{table}"] = time.monotonic() - mark
        return deleted, rows.num_rows

    def count_rows(self, table: str, day: date) -> tuple[int, int]:
        row = self.conn.execute(_sql("count_day_events", target=self._ident(table)), {"day": day}).fetchone()
        self.conn.commit()
        assert row is not None
        return int(row[0]), int(row[1])


def _anomaly_rows(data: pa.Table) -> int:
    if data.num_rows == 0 or "anomaly_status" not in data.column_names:
        return 0
    return int(pc.sum(pc.equal(data.column("anomaly_status"), "ANOMALY")).as_py() or 0)
