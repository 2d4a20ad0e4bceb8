"""Scenario 6 of the fault matrix: concurrent warehouse loads all succeed and the newest lake state wins.

Against the local PostgreSQL. Two days loaded at once used to deadlock (each swap holds a share lock
on the parent table and then asks for the exclusive lock a partition drop needs); a load used to read
the lake before taking its lock, so one that waited could commit an older snapshot last.
"""

from __future__ import annotations

import threading
import uuid
from datetime import date
from typing import Any

import psycopg
import pytest

from etl_platform.warehouse import connect
from tests.integration.test_warehouse import processed_day, write_partition

pytestmark = pytest.mark.stack

DAYS = [date(2024, 4, 1), date(2024, 4, 2), date(2024, 4, 3)]


@pytest.fixture
def schema(settings) -> Any:
    name = f"t_wh_{uuid.uuid4().hex[:10]}"
    yield name
    with psycopg.connect(settings.warehouse_dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def count(settings, schema: str, day: date) -> int:
    with connect("postgres", settings.warehouse_dsn, schema=schema) as wh:
        return wh.count_rows("events", day)[0]


def test_loads_of_several_days_at_once_all_succeed(settings, s3, bucket, schema):
    sizes = {day: 300 + 50 * i for i, day in enumerate(DAYS)}
    for day, n in sizes.items():
        write_partition(s3, bucket, processed_day(day, n=n, seed=day.day))
    errors: list[BaseException] = []

    def load(day: date) -> None:
        try:
            with connect("postgres", settings.warehouse_dsn, schema=schema) as wh:
                wh.load_day(s3, bucket, day)
        except BaseException as exc:  # collected: a deadlock would surface here
            errors.append(exc)

    for _ in range(4):  # several rounds: a deadlock needs the two swaps to interleave
        threads = [threading.Thread(target=load, args=(day,)) for day in DAYS for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    assert errors == []
    assert {day: count(settings, schema, day) for day in DAYS} == sizes


def test_a_load_that_waited_for_another_reads_the_lake_after_it(settings, s3, bucket, schema):
    day = DAYS[0]
    write_partition(s3, bucket, processed_day(day, n=200, seed=1))
    with connect("postgres", settings.warehouse_dsn, schema=schema) as wh:
        wh.ensure_tables()
    # Another load is under way: it holds the schema's load lock.
    blocker = psycopg.connect(settings.warehouse_dsn)
    blocker.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"{schema}/load",))
    done = threading.Event()

    def load() -> None:
        with connect("postgres", settings.warehouse_dsn, schema=schema) as wh:
            wh.load_day(s3, bucket, day)
        done.set()

    thread = threading.Thread(target=load)
    thread.start()
    assert not done.wait(2), "the load did not wait for the lock"
    # The stream commits more of the day meanwhile; the waiting load must load it too.
    write_partition(s3, bucket, processed_day(day, n=100, seed=2, first=200))
    blocker.commit()
    blocker.close()
    thread.join(120)
    assert done.is_set() and count(settings, schema, day) == 300


def test_two_redshift_loads_of_a_day_never_share_a_manifest(s3, bucket):
    """Redshift reads a manifest while its COPY runs: two loads of one day (a backfill beside the
    automation) each get their own, and remove it when they end. Redshift is the named fake here."""
    from tests.integration.test_warehouse import FakeRedshiftConnection, fake_redshift

    write_partition(s3, bucket, processed_day(DAYS[0], n=50, seed=5))
    first, second = FakeRedshiftConnection(fail_copy=False, s3=s3), FakeRedshiftConnection(fail_copy=False, s3=s3)
    fake_redshift(first).load_day(s3, bucket, DAYS[0])
    fake_redshift(second).load_day(s3, bucket, DAYS[0])
    assert first.manifests and second.manifests and not set(first.manifests) & set(second.manifests)
    assert s3.list_objects_v2(Bucket=bucket, Prefix="_manifests/warehouse/processed/").get("KeyCount", 0) == 0


def test_a_failed_warehouse_load_is_retried():
    from dagster import AssetKey

    import definitions

    node = definitions.defs.resolve_asset_graph().get(AssetKey("warehouse_events"))
    policy = node.assets_def.op.retry_policy
    assert policy is not None and policy.max_retries >= 3
