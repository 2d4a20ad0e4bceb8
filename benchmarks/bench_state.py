"""What a commit of the analytics state costs: a full snapshot against a delta of the keys a batch touched.

    .venv/bin/python -m benchmarks.bench_state [--keys 400000] [--touched 1000] [--repeat 5] [--json]

A detector holding `--keys` keys (three rows each: small rings, ~130 bytes a key in a snapshot) is
committed to the local S3 (moto) through `StateStore`, as the consumer does:

- *full*: the whole snapshot packed with the seen ids in one object (`pack_state` + `StateStore.save`,
  what every commit wrote before chains), and a chain's base (`save_commit` with no previous state);
- *delta*: `save_commit` after a batch touching `--touched` keys (two rows each): the delta object
  and the small manifest.

Seconds are wall time of the commit (snapshot encoding + S3 puts), the median of `--repeat` commits;
bytes are what the commit put under `_state/`. Also timed: restoring the chain (base + the deltas).
Needs the local stack (`etl-platform stack up`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import uuid

import numpy as np
import polars as pl

from benchmarks.common import local_settings, stack_benchmark
from etl_platform import aws
from etl_platform.analytics import RollingAnomalyDetector
from etl_platform.ops.provisioning import ensure_bucket
from etl_platform.stream.checkpoints import StateStore, pack_state
from etl_platform.stream.dedupe import SeenIds

SHARD = "shardId-000000000000"


def rows(users: np.ndarray, repeat: int, rng: np.random.Generator) -> pl.DataFrame:
    """`repeat` rows for each of these users (one event type), the user as the partition key."""
    ids = pl.Series("user_id", [f"user-{u:07d}" for u in np.tile(users, repeat)])
    return pl.DataFrame(
        [ids, pl.Series("event_type", ["click"] * len(ids)), pl.Series("value", rng.normal(100, 10, len(ids)))]
    ).with_columns(pl.col("user_id").alias("partition_key"))


def timed(store: StateStore, commit) -> tuple[float, int, str]:
    """(seconds, bytes put, the state key) of one commit."""
    before = store.bytes_written
    started = time.perf_counter()
    key = commit()
    return time.perf_counter() - started, store.bytes_written - before, key


def measure(keys: int, touched: int, repeat: int) -> dict:
    settings = local_settings()
    s3 = aws.client("s3", settings)
    bucket = f"bench-state-{uuid.uuid4().hex[:8]}"
    ensure_bucket(s3, bucket, settings.aws_region)
    rng = np.random.default_rng(7)
    try:
        det = RollingAnomalyDetector()
        started = time.perf_counter()
        det.process(rows(np.arange(keys), 3, rng))
        build_s = time.perf_counter() - started
        seen = SeenIds(600).snapshot()
        store = StateStore(s3, bucket, bucket)

        full = [
            timed(store, lambda i=i: store.save(SHARD, f"full-{i}", pack_state(det.snapshot(), seen)))
            for i in range(repeat)
        ]
        bases = [timed(store, lambda: store.save_commit(SHARD, "1", det, seen, None)) for _ in range(repeat)]
        key = bases[-1][2]
        store.discard_superseded(None, key, det)
        deltas = []
        for i in range(repeat):
            det.process(rows(rng.choice(keys, touched, replace=False), 2, rng))
            deltas.append(timed(store, lambda i=i, key=key: store.save_commit(SHARD, str(2 + i), det, seen, key)))
            store.discard_superseded(key, deltas[-1][2], det)
            key = deltas[-1][2]
        started = time.perf_counter()
        restored, _ = StateStore(s3, bucket, bucket).load_state(key)
        restore_s = time.perf_counter() - started
        assert restored is not None and restored.snapshot() == det.snapshot()
    finally:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            objects = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if objects:
                s3.delete_objects(Bucket=bucket, Delete={"Objects": objects})
        s3.delete_bucket(Bucket=bucket)

    def summary(runs: list[tuple[float, int, str]]) -> dict:
        return {"seconds": statistics.median(r[0] for r in runs), "bytes": int(statistics.median(r[1] for r in runs))}

    out = {
        "keys": keys,
        "touched_keys": touched,
        "repeat": repeat,
        "build_s": build_s,
        "full_snapshot": summary(full),
        "chain_base": summary(bases),
        "delta": summary(deltas),
        "restore_chain_s": restore_s,
        "chain_deltas_restored": repeat,
    }
    out["ratio_full_over_delta"] = {
        "seconds": out["full_snapshot"]["seconds"] / out["delta"]["seconds"],
        "bytes": out["full_snapshot"]["bytes"] / out["delta"]["bytes"],
    }
    return out


@stack_benchmark("moto")
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=400_000)
    parser.add_argument("--touched", type=int, default=1_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print the measurements as JSON")
    args = parser.parse_args(argv)
    result = measure(args.keys, args.touched, args.repeat)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    for name in ("full_snapshot", "chain_base", "delta"):
        print(f"{name:>14}: {result[name]['seconds'] * 1000:9.1f} ms  {result[name]['bytes']:>12,} bytes")
    ratio = result["ratio_full_over_delta"]
    print(f"full / delta: {ratio['seconds']:.0f}x the time, {ratio['bytes']:.0f}x the bytes")
    print(f"restore (base + {result['chain_deltas_restored']} deltas): {result['restore_chain_s']:.2f} s")


if __name__ == "__main__":
    main()
