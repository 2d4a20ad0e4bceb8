"""The streaming runtime: draining a pre-loaded stream with shard workers, and what leases cost a batch.

    .venv/bin/python -m benchmarks.bench_runtime [--events 40000] [--shards 4]

Two fresh streams get the same events. The reference drains one with `etl-platform consume
--until-caught-up` (one process, shard after shard, a micro-batch per read). The other is drained
by shard workers as the sensor launches them: one `dagster job execute` of `kinesis_microbatch_job`
per group of `--shards-per-worker` shards (the local default, ETL_SHARDS_PER_WORKER=2), all at once
(each loads the code location, takes its shards' leases and consumes them until caught up, flushing
the lake by size or interval). Both index into OpenSearch (a throwaway index
prefix). Reported: seconds and events/s of each, their ratio (workers / reference; the issue's goal
is >= 0.8), and the reference's lease and commit cost per batch in ms.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.common import local_settings, stack_benchmark
from etl_platform import aws
from etl_platform.ops.provisioning import ensure_bucket, ensure_stream
from etl_platform.search import indices
from etl_platform.search.client import make_client
from etl_platform.stream.leases import LeaseTable, ensure_table
from etl_platform.stream.producer import KinesisProducer
from etl_platform.stream.shards import list_shards
from etl_platform.stream.sources import demo_mix

REPO = Path(__file__).resolve().parents[1]


def _fresh(settings, shards: int, events: list) -> str:
    name = f"bench-{uuid.uuid4().hex[:8]}"
    ensure_stream(aws.client("kinesis", settings), name, shards=shards)
    ensure_bucket(aws.client("s3", settings), name, settings.aws_region)
    t0 = time.perf_counter()
    KinesisProducer(aws.client("kinesis", settings), name).send(events)
    print(f"loaded {len(events)} events into {name} in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    return name


def _cleanup(settings, name: str) -> None:
    kinesis, s3 = aws.client("kinesis", settings), aws.client("s3", settings)
    LeaseTable(aws.client("dynamodb", settings), settings.lease_table, name).delete_all()
    kinesis.delete_stream(StreamName=name, EnforceConsumerDeletion=True)
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=name):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=name, Delete={"Objects": keys})
    s3.delete_bucket(Bucket=name)


def _env(name: str, prefix: str, home: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETL_")}
    env.update(ETL_STREAM_NAME=name, ETL_LAKE_BUCKET=name, ETL_OPENSEARCH_INDEX_PREFIX=prefix, DAGSTER_HOME=home)
    return env


def _mkdir(path: Path) -> str:
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


@stack_benchmark("kinesis", "moto", "opensearch")
def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--shards-per-worker", type=int, default=2)
    args = parser.parse_args()
    settings = local_settings()
    ensure_table(aws.client("dynamodb", settings), settings.lease_table)
    events = list(demo_mix(args.events, seed=9, start=datetime(2026, 5, 2, tzinfo=UTC), users=2_000))
    prefix = f"bench-{uuid.uuid4().hex[:6]}-"
    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory(prefix="bench-dagster-") as home:
        reference, workers = _fresh(settings, args.shards, events), _fresh(settings, args.shards, events)
        try:
            t0 = time.perf_counter()
            done = subprocess.run(
                [str(bin_dir / "etl-platform"), "consume", "--until-caught-up", "--quiet"],
                env=_env(reference, prefix, home),
                cwd=REPO,
                capture_output=True,
                text=True,
                check=True,
            )
            reference_s = time.perf_counter() - t0
            summary = json.loads(done.stdout)

            shard_ids = [s.shard_id for s in list_shards(aws.client("kinesis", settings), workers)]
            size = args.shards_per_worker
            groups = [shard_ids[i : i + size] for i in range(0, len(shard_ids), size)]
            homes = {group[0]: _mkdir(Path(home) / group[0]) for group in groups}
            for group_home in homes.values():  # a Dagster instance as `make dev` has one: storage made beforehand
                subprocess.run(
                    [sys.executable, "-c", "from dagster import DagsterInstance; DagsterInstance.get()"],
                    env=_env(workers, prefix, group_home),
                    check=True,
                    capture_output=True,
                )
            t0 = time.perf_counter()
            procs = []
            for group in groups:
                shard_id = group[0]
                config = Path(home) / f"{shard_id}.json"  # JSON is YAML
                config.write_text(
                    json.dumps({"ops": {"consume_shard": {"config": {"shard_ids": group, "until_caught_up": True}}}})
                )
                procs.append(
                    subprocess.Popen(
                        [
                            str(bin_dir / "dagster"),
                            "job",
                            "execute",
                            "-f",
                            "stream_definitions.py",
                            "-j",
                            "kinesis_microbatch_job",
                            "-c",
                            str(config),
                        ],
                        # A Dagster home each: SQLite storages initialised at once by several processes race.
                        env=_env(workers, prefix, homes[shard_id]),
                        cwd=REPO,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.PIPE,
                    )
                )
            for proc in procs:
                _, err = proc.communicate()
                if proc.returncode:
                    raise SystemExit(f"a worker failed:\n{err.decode()[-3000:]}")
            workers_s = time.perf_counter() - t0
            leases = LeaseTable(aws.client("dynamodb", settings), settings.lease_table, workers).all()
            consumed = sum(lease.records for lease in leases.values())
            assert consumed == summary["records"] == len(events), (consumed, summary["records"])
        finally:
            _cleanup(settings, reference)
            _cleanup(settings, workers)
            indices.delete_all(make_client(settings), prefix)

    n, batches, stages = len(events), summary["batches"], summary["stage_seconds"]
    print(f"\n{n} events on {args.shards} shards\n")
    print("| drain | seconds | events/s |")
    print("|---|---:|---:|")
    label = f"reference: `consume --until-caught-up` (1 process, {batches} batches)"
    print(f"| {label} | {reference_s:.1f} | {n / reference_s:,.0f} |")
    label = f"shard workers: {len(groups)} x `kinesis_microbatch_job`, {args.shards_per_worker} shards each"
    print(f"| {label} | {workers_s:.1f} | {n / workers_s:,.0f} |")
    print(f"\nratio workers / reference: **{reference_s / workers_s:.2f}**")
    lease_ms = 1000 * stages.get("lease", 0.0) / batches
    commit_ms = 1000 * stages.get("commit", 0.0) / batches
    state_ms = 1000 * stages.get("state", 0.0) / batches
    print("\n| per batch (reference run) | ms |")
    print("|---|---:|")
    print(f"| record pending objects in the lease (conditional write) | {lease_ms:.1f} |")
    print(f"| commit: checkpoint in the lease (conditional write) | {commit_ms:.1f} |")
    print(f"| analytics state snapshot to the lake (write + delete the old one) | {state_ms:.1f} |")
    total_ms = 1000 * sum(v for k, v in stages.items() if k != "total") / batches
    print(f"| whole batch | {total_ms:.1f} |")


if __name__ == "__main__":
    main()
