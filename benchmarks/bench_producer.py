"""Events per shard-second with and without KPL aggregation, under Kinesis' per-shard write limits.

    .venv/bin/python -m benchmarks.bench_producer [--events 10000] [--shards 4] [--json]

Two event shapes: the default pipeline's demo envelopes (`sources.demo_mix`, 500 users, ~320 bytes
of JSON) and small seed-like records (user_id, event_type, timestamp, value, partition_key, as the
seed pipeline's producer sends them, ~130 bytes of JSON), each as plain JSON and gzip-compressed
(`produce --gzip`, as the seed's producer does). Each is sent to a fresh `--shards` stream of the
local Kinesis emulator twice: one record per event (`KinesisProducer.send`, `produce --no-kpl`) and
KPL-aggregated per shard (`send_kpl_aggregated`, the default: AggregationMaxSize 51,200 bytes,
RecordMaxBufferedTime 100 ms).

The emulator enforces no write limits, so capacity is computed from what was stored (the producer's
counts of the emulator's answers), not observed as throttling. A shard takes 1,000 records/s and
1 MiB/s (data + partition key), so evenly spread traffic fills a shard at

    capacity = events / max(records / 1000, bytes / 1 MiB)    events per shard-second

whichever limit binds first. Also shown: events/s per shard at 1,000 records/s with bytes ignored
(the "same records/s" figure: 1,000 x events per record), and the ratio aggregated / plain of the
capacity. The producer's CPU per event (both threads, `time.process_time`) is reported for scale;
wall time is mostly the emulator's.

Prints a markdown table, a verdict per shape, and as its last line one JSON object with every row and
the ratios.
"""

from __future__ import annotations

import argparse
import json
import random
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from benchmarks.common import local_settings, stack_benchmark
from etl_platform import aws
from etl_platform.ops.provisioning import ensure_stream
from etl_platform.stream.producer import KPL_DEFAULT_AGGREGATE_BYTES, KinesisProducer, ProducerStats
from etl_platform.stream.sources import demo_mix

RECORDS_PER_SHARD_S = 1000
BYTES_PER_SHARD_S = 1024 * 1024
START = datetime(2026, 1, 1, tzinfo=UTC)


def seed_like(n: int, seed: int, users: int = 500) -> Iterator[dict[str, Any]]:
    """What the seed architecture's producer sends: user_id, event_type, timestamp, value, partition_key."""
    rng = random.Random(seed)
    t = START
    for _ in range(n):
        t += timedelta(microseconds=rng.randrange(1, 20_000))
        user = f"user-{rng.randrange(users):04d}"
        yield {
            "user_id": user,
            "event_type": rng.choice(("click", "view", "purchase", "signup")),
            "timestamp": t.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "value": round(rng.gauss(50.0, 8.0), 2),
            "partition_key": user,
        }


def capacity(stats: ProducerStats) -> tuple[float, str]:
    """Events per shard-second at the binding limit, and which limit binds."""
    by_records = stats.records / RECORDS_PER_SHARD_S
    by_bytes = stats.bytes / BYTES_PER_SHARD_S
    return stats.sent / max(by_records, by_bytes), ("records" if by_records >= by_bytes else "bytes")


def run(kinesis: Any, shards: int, events: list[dict[str, Any]], compress: bool, aggregate: bool) -> dict[str, Any]:
    name = f"bench-producer-{uuid.uuid4().hex[:8]}"
    ensure_stream(kinesis, name, shards=shards)
    try:
        producer = KinesisProducer(kinesis, name, compress=compress)
        wall, cpu = time.perf_counter(), time.process_time()
        stats = producer.send_kpl_aggregated(events) if aggregate else producer.send(events)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        kinesis.delete_stream(StreamName=name, EnforceConsumerDeletion=True)
    assert stats.sent == len(events) and not stats.rejected and stats.misrouted == 0
    events_per_s, binding = capacity(stats)
    per_record = stats.sent / stats.records
    return {
        "mode": "kpl" if aggregate else "plain",
        "events": stats.sent,
        "records": stats.records,
        "requests": stats.requests,
        "bytes": stats.bytes,
        "bytes_per_event": round(stats.bytes / stats.sent, 1),
        "events_per_record": round(per_record, 2),
        "events_per_s_at_1000_records_per_s": round(RECORDS_PER_SHARD_S * per_record),
        "capacity_events_per_shard_s": round(events_per_s),
        "binding_limit": binding,
        "records_per_shard_s_at_capacity": round(events_per_s / per_record, 1),
        "producer_cpu_us_per_event": round(cpu / stats.sent * 1e6, 1),
        "wall_s": round(wall, 2),
    }


@stack_benchmark("kinesis")
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--json", action="store_true", help="only the JSON line")
    args = parser.parse_args()

    settings = local_settings()
    kinesis = aws.client("kinesis", settings)
    shapes = {
        "demo": list(demo_mix(args.events, seed=1)),
        "seed-like": list(seed_like(args.events, seed=1)),
    }
    rows: list[dict[str, Any]] = []
    for shape, events in shapes.items():
        for compress in (False, True):
            for aggregate in (False, True):
                row = run(kinesis, args.shards, events, compress, aggregate)
                rows.append({"shape": shape, "encoding": "gzip" if compress else "json", **row})

    ratios: dict[str, float] = {}
    for plain, kpl in zip(rows[::2], rows[1::2], strict=True):
        key = f"{plain['shape']}/{plain['encoding']}"
        ratios[key] = round(kpl["capacity_events_per_shard_s"] / plain["capacity_events_per_shard_s"], 2)

    if not args.json:
        print(
            f"\n{args.events} events per run, {args.shards}-shard stream of the local Kinesis emulator; "
            f"aggregates up to {KPL_DEFAULT_AGGREGATE_BYTES:,} bytes; limits per shard: "
            f"{RECORDS_PER_SHARD_S:,} records/s and 1 MiB/s (data + partition key)\n"
        )
        print(
            "| events | encoding | mode | records | bytes | bytes/event | events/record "
            "| events/s/shard at 1,000 records/s | capacity events/s/shard | binding limit "
            "| records/s/shard at capacity | kpl/plain | producer CPU µs/event |"
        )
        print("|---|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|")
        for row in rows:
            ratio = ratios[f"{row['shape']}/{row['encoding']}"] if row["mode"] == "kpl" else None
            print(
                f"| {row['shape']} | {row['encoding']} | {row['mode']} | {row['records']:,} | {row['bytes']:,} "
                f"| {row['bytes_per_event']:.0f} | {row['events_per_record']:.1f} "
                f"| {row['events_per_s_at_1000_records_per_s']:,} | {row['capacity_events_per_shard_s']:,} "
                f"| {row['binding_limit']} | {row['records_per_shard_s_at_capacity']:,.1f} "
                f"| {f'{ratio:.2f}x' if ratio else ''} | {row['producer_cpu_us_per_event']:.1f} |"
            )
        print()
        for plain, kpl in zip(rows[::2], rows[1::2], strict=True):
            key = f"{plain['shape']}/{plain['encoding']}"
            verdict = "meets" if ratios[key] >= 5 else "misses"
            line = (
                f"{key}: aggregated/plain = {ratios[key]:.2f}x ({verdict} the 5x goal); plain is bound by "
                f"{plain['binding_limit']}, aggregated by {kpl['binding_limit']}"
            )
            if kpl["binding_limit"] == "bytes":
                need = BYTES_PER_SHARD_S / (5 * plain["capacity_events_per_shard_s"])
                line += (
                    f": 1 MiB/s at {kpl['bytes_per_event']:.0f} bytes/event is "
                    f"{kpl['capacity_events_per_shard_s']:,} events/s; 5x would need <= {need:.0f} bytes/event"
                )
            print(line)
        print()
    print(json.dumps({"events": args.events, "shards": args.shards, "rows": rows, "kpl_vs_plain": ratios}))


if __name__ == "__main__":
    main()
