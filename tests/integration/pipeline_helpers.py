"""Reference results for the pipeline tests, computed independently of the consumer.

`one_pass` reads every shard of a stream straight from Kinesis (parents before children), decodes it
and runs a fresh detector over the whole stream at once: what the micro-batch path must reproduce.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import polars as pl

from etl_platform.events import arrival_order, with_depth
from etl_platform.lake import layout
from etl_platform.lake.readers import read_processed, read_raw
from etl_platform.stream.consumer import ConsumerConfig
from etl_platform.stream.decoding import decode_records
from etl_platform.stream.dedupe import SeenIds
from etl_platform.stream.reader import ShardReader
from etl_platform.stream.shards import lineage_order, list_shards, shard_depths

REPO = Path(__file__).resolve().parents[2]


def one_pass(kinesis, stream: str, config: ConsumerConfig | None = None) -> pl.DataFrame:
    config = config or ConsumerConfig()
    shards = list_shards(kinesis, stream)
    depths = shard_depths(shards)
    frames = []
    for shard in lineage_order(shards):
        records, reader = [], ShardReader(kinesis, stream, shard.shard_id, None)
        while True:
            read = reader.read(10_000, 50 * 1024 * 1024, time_budget_s=5)
            records += read.records
            if not read.records and not read.cut:
                break
        # Each event once: a later delivery of a producer id is dropped, as the consumer does.
        events, _ = SeenIds(config.dedupe_horizon_s).filter(decode_records(shard.shard_id, records).frame)
        frames.append(with_depth(events, depths[shard.shard_id]))
    return config.analytics.new_detector().process(arrival_order(pl.concat(frames)))


def lake_rows(s3, bucket: str, dataset: str) -> pl.DataFrame:
    keys = layout.list_keys(s3, bucket, f"{dataset}/")
    if dataset == layout.RAW:
        return read_raw(s3, bucket, keys)
    return read_processed(s3, bucket, keys)


def assert_same_results(actual: pl.DataFrame, expected: pl.DataFrame) -> None:
    """Row for row by event_id: no loss, no duplicate, equal analytics (avg to 1e-9 relative)."""
    assert actual["event_id"].n_unique() == actual.height, "duplicate event_ids in the output"
    assert sorted(actual["event_id"].to_list()) == sorted(expected["event_id"].to_list())
    joined = expected.join(actual, on="event_id", suffix="_actual")
    assert joined.height == expected.height
    assert (joined["anomaly_status"] == joined["anomaly_status_actual"]).all()
    assert (joined["value"] == joined["value_actual"]).all()
    diff = (joined["avg_value"] - joined["avg_value_actual"]).abs()
    tolerance = joined["avg_value"].abs() * 1e-9 + 1e-12
    assert (diff <= tolerance).all()


def remove_deployment(settings, s3, bucket: str, schema: str, index_prefix: str) -> None:
    """What a test deployment left behind: its bucket (emptied), warehouse schema and indices."""
    import psycopg
    from opensearchpy import OpenSearch

    from etl_platform.search import indices

    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": keys})
    s3.delete_bucket(Bucket=bucket)
    with psycopg.connect(settings.warehouse_dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    client = OpenSearch(settings.opensearch_url, timeout=30)
    indices.delete_all(client, index_prefix)
    client.close()


def write_jsonl(path: Path, events) -> Path:
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    return path


def cli(*args: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess:
    import os

    full_env = {**os.environ, **(env or {})}
    full_env.pop("ETL_PROFILE", None)
    result = subprocess.run(
        [sys.executable, "-m", "etl_platform.cli.main", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=REPO,
        timeout=600,
    )
    if check:
        assert result.returncode == 0, f"etl-platform {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result
