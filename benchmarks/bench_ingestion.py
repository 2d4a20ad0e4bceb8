"""End-to-end and consumer throughput against the local stack, with same-run references.

    .venv/bin/python -m benchmarks.bench_ingestion [--events 20000] [--shards 4]

Reports events/s for: producing (our KinesisProducer vs a bare PutRecords loop), the consumer on
pre-loaded shards (vs bare GetRecords reads of the same shards), and end to end (produce ->
processed Parquet in S3), plus where the consumer's time goes by stage.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from collections import Counter
from datetime import UTC, datetime

from benchmarks.common import local_settings, stack_benchmark
from etl_platform import aws
from etl_platform.ops.provisioning import ensure_bucket, ensure_stream
from etl_platform.stream.consumer import ConsumerConfig, StreamConsumer
from etl_platform.stream.leases import LeaseTable, ensure_table
from etl_platform.stream.producer import KinesisProducer
from etl_platform.stream.reader import ShardReader
from etl_platform.stream.shards import list_shards
from etl_platform.stream.sources import demo_mix


def _fresh(settings, shards: int):
    name = f"bench-{uuid.uuid4().hex[:8]}"
    kinesis, s3 = aws.client("kinesis", settings), aws.client("s3", settings)
    ensure_stream(kinesis, name, shards=shards)
    ensure_bucket(s3, name, settings.aws_region)
    return kinesis, s3, name


def _cleanup(kinesis, s3, name):
    kinesis.delete_stream(StreamName=name, EnforceConsumerDeletion=True)
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=name):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=name, Delete={"Objects": keys})
    s3.delete_bucket(Bucket=name)


@stack_benchmark("kinesis", "moto")
def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--shards", type=int, default=4)
    args = parser.parse_args()
    settings = local_settings()
    events = list(demo_mix(args.events, seed=7, start=datetime(2026, 5, 1, tzinfo=UTC), users=500))

    # Reference producer: bare PutRecords of the same JSON, 500 per call, no retries or accounting.
    kinesis, s3, ref_name = _fresh(settings, args.shards)
    t0 = time.perf_counter()
    for i in range(0, len(events), 500):
        kinesis.put_records(
            StreamName=ref_name,
            Records=[{"Data": json.dumps(e).encode(), "PartitionKey": e["user_id"]} for e in events[i : i + 500]],
        )
    bare_put = time.perf_counter() - t0
    # Reference consumer: bare GetRecords of every shard, no decoding or delivery.
    t0 = time.perf_counter()
    read_count = 0
    for shard in list_shards(kinesis, ref_name):
        reader = ShardReader(kinesis, ref_name, shard.shard_id, None)
        while True:
            read = reader.read(10_000, 64 << 20, time_budget_s=5)
            read_count += len(read.records)
            if not read.records and not read.cut:
                break
    bare_read = time.perf_counter() - t0
    _cleanup(kinesis, s3, ref_name)

    kinesis, s3, name = _fresh(settings, args.shards)
    t_start = time.perf_counter()
    KinesisProducer(kinesis, name).send(events)
    produced = time.perf_counter() - t_start
    dynamodb = aws.client("dynamodb", settings)
    ensure_table(dynamodb, settings.lease_table)
    leases = LeaseTable(dynamodb, settings.lease_table, name)
    consumer = StreamConsumer(kinesis, s3, name, name, leases, ConsumerConfig())
    t0 = time.perf_counter()
    results = consumer.drain()
    consumed = time.perf_counter() - t0
    end_to_end = time.perf_counter() - t_start
    stages: Counter[str] = Counter()
    for r in results:
        stages.update(r.timings)
    assert sum(r.events for r in results) == len(events) == read_count
    leases.delete_all()
    _cleanup(kinesis, s3, name)

    n = len(events)
    rows = [
        ("producer (KinesisProducer)", n / produced, "bare PutRecords", n / bare_put),
        ("consumer on pre-loaded shards", n / consumed, "bare GetRecords", n / bare_read),
        (
            "end to end: produce -> processed in S3",
            n / end_to_end,
            "bare PutRecords + GetRecords",
            n / (bare_put + bare_read),
        ),
    ]
    print(f"\n{n} events, {args.shards} shards, {len(results)} batches\n")
    print("| measure | events/s | reference | reference events/s | ratio |")
    print("|---|---:|---|---:|---:|")
    for label, rate, ref, ref_rate in rows:
        print(f"| {label} | {rate:,.0f} | {ref} | {ref_rate:,.0f} | {rate / ref_rate:.2f} |")
    total = sum(v for k, v in stages.items() if k != "total")
    print("\n| consumer stage | seconds | share |")
    print("|---|---:|---:|")
    for stage in ("read", "decode", "analytics", "lease", "raw_delivery", "processed_delivery", "state", "commit"):
        print(f"| {stage} | {stages[stage]:.2f} | {stages[stage] / total:.0%} |")


if __name__ == "__main__":
    main()
