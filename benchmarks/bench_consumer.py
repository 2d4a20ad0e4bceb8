"""The consumer's own work per event: every stage but GetRecords, over records served from memory.

    .venv/bin/python -m benchmarks.bench_consumer [--events 200000] [--shards 4] [--gzip] [--json]

Builds `--events` demo events (the default pipeline's envelope, 500 users), encodes them as the
producer does (JSON, gzip with `--gzip`), routes them to `--shards` in-memory shards by partition key
and drains them with `StreamConsumer.drain`: leases in the local DynamoDB (moto), raw / processed /
errors objects and analytics state in the local S3 (moto), no search indexing. Records come from
memory, so GetRecords is not measured; what is measured is the consumer process's CPU time
(`time.process_time`, every thread) over the drain: its own stages plus its S3 and DynamoDB client
calls (the servers run in other processes and are not counted). That is the steady state of a
worker: its start-up (the compiled analytics loops, a first small drain) is measured apart, before,
and reported as `startup_cpu_s`.

The input records are moved out of the garbage collector's generations (`gc.freeze`) once built: a
worker holds one read at a time, not the whole stream, and its full collections should not walk it.

Reference in the same run: a bare loop of `json.loads` over the same payloads (gunzip first with
`--gzip`), the floor any consumer pays to look at the events.

Prints a per-stage table (wall and CPU seconds from the batches' stage timings) and, as its last
line, one JSON object with `events`, `own_cpu_s`, `own_events_per_s_per_core`, the reference and the
stages.
"""

from __future__ import annotations

import argparse
import gc
import gzip
import hashlib
import json
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from benchmarks.common import local_settings, stack_benchmark
from etl_platform import aws
from etl_platform.analytics import kernel
from etl_platform.ops.provisioning import ensure_bucket
from etl_platform.stream.consumer import BatchResult, ConsumerConfig, StreamConsumer
from etl_platform.stream.leases import LeaseTable, ensure_table
from etl_platform.stream.reader import ReadBatch, ReadResult
from etl_platform.stream.shards import Shard
from etl_platform.stream.sources import demo_mix

HASH_SPACE = 2**128


class MemoryReader:
    """One in-memory shard read in order after a position, as `ShardReader` reads a Kinesis shard."""

    def __init__(self, records: Sequence[dict[str, Any]], after: str | None) -> None:
        self.records = records
        self.position = (
            0 if after is None else next(i + 1 for i, r in enumerate(records) if r["SequenceNumber"] == after)
        )

    def read(self, max_records: int, max_bytes: int, time_budget_s: float) -> ReadResult:
        batch = ReadBatch(max_records, max_bytes)
        rest = batch.take(list(self.records[self.position : self.position + max_records]))
        self.position += len(batch.records)
        behind = self.position < len(self.records)
        return ReadResult(batch.records, ended=False, cut=bool(rest) or behind, millis_behind_latest=1000 * behind)

    def mirror_commit(self, sequence_number: str) -> None:
        pass

    def close(self) -> None:
        pass


class MemorySource:
    """Open shards whose records are in memory (the consumer's `Source` protocol)."""

    def __init__(self, shards: dict[str, list[dict[str, Any]]]) -> None:
        self.shards = shards

    def list_shards(self) -> list[Shard]:
        step = HASH_SPACE // len(self.shards)
        return [
            Shard(
                shard_id,
                (),
                False,
                "0",
                (i * step, HASH_SPACE - 1 if i == len(self.shards) - 1 else (i + 1) * step - 1),
            )
            for i, shard_id in enumerate(self.shards)
        ]

    def reader(self, shard_id: str, after: str | None) -> MemoryReader:
        return MemoryReader(self.shards[shard_id], after)


def build_shards(events: list[dict[str, Any]], shards: int, compress: bool) -> dict[str, list[dict[str, Any]]]:
    """Records as GetRecords returns them, routed by the MD5 of the partition key as Kinesis routes them."""
    out: dict[str, list[dict[str, Any]]] = {f"shardId-{i:012d}": [] for i in range(shards)}
    ids = list(out)
    start = datetime(2026, 5, 1, tzinfo=UTC)
    for n, event in enumerate(events):
        key = event["user_id"]
        shard = ids[int.from_bytes(hashlib.md5(key.encode()).digest(), "big") * shards // HASH_SPACE]
        data = json.dumps(event).encode()
        out[shard].append(
            {
                "SequenceNumber": f"{49_000_000_000_000_000_000 + n:d}",
                "ApproximateArrivalTimestamp": start + timedelta(milliseconds=n),
                "Data": gzip.compress(data, mtime=0) if compress else data,
                "PartitionKey": key,
            }
        )
    return out


def bare_parse_cpu(shards: dict[str, list[dict[str, Any]]], compress: bool) -> float:
    started = time.process_time()
    for records in shards.values():
        for record in records:
            json.loads(gzip.decompress(record["Data"]) if compress else record["Data"])
    return time.process_time() - started


WARMUP_EVENTS = 5_000


def drain(s3: Any, dynamodb: Any, settings: Any, shards: dict[str, list[dict[str, Any]]]) -> list[BatchResult]:
    """`StreamConsumer.drain` over in-memory shards into a new bucket and lease namespace, removed after."""
    name = f"bench-{uuid.uuid4().hex[:8]}"
    ensure_bucket(s3, name, settings.aws_region)
    leases = LeaseTable(dynamodb, settings.lease_table, name)
    consumer = StreamConsumer(None, s3, name, name, leases, ConsumerConfig(), source=MemorySource(shards))
    try:
        return consumer.drain()
    finally:
        leases.delete_all()
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=name):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                s3.delete_objects(Bucket=name, Delete={"Objects": keys})
        s3.delete_bucket(Bucket=name)


@stack_benchmark("moto")
def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--gzip", action="store_true", help="gzip each record, as the seed's producer does")
    parser.add_argument("--json", action="store_true", help="only the JSON line (no tables)")
    args = parser.parse_args()
    settings = local_settings()
    events = [e.to_dict() if hasattr(e, "to_dict") else dict(e) for e in demo_mix(args.events, seed=7, users=500)]
    shards = build_shards(events, args.shards, args.gzip)
    reference_cpu = bare_parse_cpu(shards, args.gzip)
    # The records stand for the stream, not for the consumer's memory: kept out of the garbage
    # collector's generations, so a full collection does not walk 200,000 inputs a worker never holds.
    gc.freeze()

    s3, dynamodb = aws.client("s3", settings), aws.client("dynamodb", settings)
    ensure_table(dynamodb, settings.lease_table)
    # Start-up, once per worker process, measured apart: the compiled analytics loops (a process
    # interprets its first rows and compiles after; here they are loaded at once) and a first small
    # drain (Polars' first calls, the S3 and DynamoDB connections).
    startup_started = time.process_time()
    kernel.precompile()
    warmup = build_shards(events[:WARMUP_EVENTS], args.shards, args.gzip)
    drain(s3, dynamodb, settings, warmup)
    startup_cpu = time.process_time() - startup_started

    wall_started, cpu_started = time.perf_counter(), time.process_time()
    results = drain(s3, dynamodb, settings, shards)
    own_cpu = time.process_time() - cpu_started
    wall = time.perf_counter() - wall_started
    assert sum(r.events for r in results) == len(events), "every event must come out once"

    stage_wall: Counter[str] = Counter()
    stage_cpu: defaultdict[str, float] = defaultdict(float)
    for result in results:
        stage_wall.update({k: v for k, v in result.timings.items() if k != "total"})
        for span in result.stage_spans:
            stage_cpu[span.name] += span.cpu_s
    n = len(events)
    summary = {
        "events": n,
        "shards": args.shards,
        "gzip": args.gzip,
        "batches": len(results),
        "wall_s": round(wall, 3),
        "own_cpu_s": round(own_cpu, 3),
        "own_events_per_s_per_core": round(n / own_cpu),
        "startup_cpu_s": round(startup_cpu, 3),
        "reference": "bare json.loads" + (" after gunzip" if args.gzip else ""),
        "reference_cpu_s": round(reference_cpu, 3),
        "own_cpu_vs_reference": round(own_cpu / reference_cpu, 2),
        "stages_cpu_s": {k: round(v, 3) for k, v in sorted(stage_cpu.items(), key=lambda kv: -kv[1])},
    }
    if not args.json:
        print(f"\n{n} events, {args.shards} shards, {len(results)} batches, gzip={args.gzip}; S3 and DynamoDB: moto\n")
        print("| measure | value |")
        print("|---|---:|")
        print(f"| consumer own CPU (s) | {own_cpu:.2f} |")
        print(f"| events/s per core | {n / own_cpu:,.0f} |")
        print(f"| start-up CPU, once per process (s) | {startup_cpu:.2f} |")
        print(f"| reference CPU, {summary['reference']} (s) | {reference_cpu:.2f} |")
        print(f"| own CPU / reference | {own_cpu / reference_cpu:.1f} |")
        total_cpu = sum(stage_cpu.values())
        print("\n| stage | wall s | CPU s | CPU share | µs CPU per event |")
        print("|---|---:|---:|---:|---:|")
        for stage, cpu in sorted(stage_cpu.items(), key=lambda kv: -kv[1]):
            print(f"| {stage} | {stage_wall[stage]:.2f} | {cpu:.2f} | {cpu / total_cpu:.0%} | {cpu / n * 1e6:.1f} |")
        print()
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
