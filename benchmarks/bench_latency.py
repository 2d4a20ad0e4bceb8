"""Put -> searchable and put -> processed Parquet, in a running `make dev` with its demo traffic on.

    .venv/bin/python -m benchmarks.bench_latency [--rate 20] [--seconds 60]

Uses the running `make dev` if its Dagster UI answers; otherwise starts `scripts/dev.sh` (stack, Dagster
webserver + daemon, demo traffic) and stops it afterwards. Waits until every open shard of the stream has
a live worker (a held lease), then puts `--rate` probe events a second for `--seconds` (each with its own
event_id, alongside the demo traffic) and polls OpenSearch (the `events` alias, every 0.25 s) and the
lake's processed Parquet (every 0.5 s) for them. Reports p50 / p95 / max of both latencies from the
moment PutRecords returned. Goal (the streaming-runtime issue): p95 put -> searchable <= 5 s.

Meanwhile it watches the lease table (every 0.25 s) and reports each handover of a shard from one
worker to the next and how long the shard had no owner. `--worker-budget-s` (only when the benchmark
starts `make dev` itself) shortens the workers' budget so that handovers fall inside the measurement.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from benchmarks.common import local_settings, stack_benchmark
from etl_platform import aws
from etl_platform.lake import layout
from etl_platform.search.client import make_client
from etl_platform.search.indices import EVENTS, alias_name
from etl_platform.stream.leases import LeaseTable
from etl_platform.stream.shards import list_shards

REPO = Path(__file__).resolve().parents[1]


def _ui_up(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/server_info", timeout=1) as resp:
            return resp.status == 200
    except OSError:
        return False


def _wait(what: str, check, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench_latency: timed out waiting for {what}")
        time.sleep(1)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class HandoverWatch(threading.Thread):
    """Polls the lease table; a handover is a shard held by one owner and then by another."""

    def __init__(self, leases: LeaseTable, every_s: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.leases, self.every_s = leases, every_s
        self.gaps: list[float] = []  # seconds each handover left its shard without an owner
        self.stop = threading.Event()

    def run(self) -> None:
        last: dict[str, tuple[str, float]] = {}  # shard -> (owner, last seen holding it)
        while not self.stop.wait(self.every_s):
            now = time.time()
            for sid, lease in self.leases.all().items():
                if not lease.held(now) or lease.owner is None:
                    continue
                previous = last.get(sid)
                if previous is not None and previous[0] != lease.owner:
                    self.gaps.append(now - previous[1])
                last[sid] = (lease.owner, now)


@stack_benchmark()
def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=20.0, help="probe events per second")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--worker-budget-s", type=float, help="ETL_WORKER_BUDGET_S for the make dev it starts")
    args = parser.parse_args()
    settings = local_settings()
    dev = None
    watch: HandoverWatch | None = None
    env = dict(os.environ)
    if args.worker_budget_s is not None:
        env["ETL_WORKER_BUDGET_S"] = f"{args.worker_budget_s:g}"
    if not _ui_up(settings.dagster_url):
        print("bench_latency: starting make dev (scripts/dev.sh)", file=sys.stderr)
        dev = subprocess.Popen(
            ["bash", "scripts/dev.sh"],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    elif args.worker_budget_s is not None:
        print("bench_latency: make dev is already running; --worker-budget-s is ignored", file=sys.stderr)
    try:
        kinesis, s3 = aws.client("kinesis", settings), aws.client("s3", settings)
        _wait("the Dagster UI", lambda: _ui_up(settings.dagster_url), 300)
        leases = LeaseTable(aws.client("dynamodb", settings), settings.lease_table, settings.stream_name)

        def workers_live() -> bool:
            open_shards = {s.shard_id for s in list_shards(kinesis, settings.stream_name) if not s.closed}
            now = time.time()
            held = {sid for sid, lease in leases.all().items() if lease.held(now)}
            return bool(open_shards) and open_shards <= held

        _wait("a live worker on every open shard", workers_live, 600)
        watch = HandoverWatch(leases)
        watch.start()
        search = make_client(settings)
        run = uuid.uuid4().hex[:8]
        put_at: dict[str, float] = {}
        searchable: dict[str, float] = {}
        processed: dict[str, float] = {}
        seen_objects: set[str] = set()
        interval, n = 1.0 / args.rate, int(args.rate * args.seconds)
        started = time.monotonic()
        next_search = next_lake = 0.0
        sent = 0
        while True:
            now = time.monotonic()
            if sent < n and now >= started + sent * interval:
                event_id = f"latency-{run}-{sent:06d}"
                event = {
                    "event_id": event_id,
                    "user_id": f"latency-probe-{sent % 7}",
                    "event_type": "probe",
                    "source": "api",
                    "event_time": datetime.now(UTC).isoformat(),
                    "value": 1.0,
                }
                kinesis.put_record(
                    StreamName=settings.stream_name,
                    Data=json.dumps(event).encode(),
                    PartitionKey=event["user_id"],
                )
                put_at[event_id] = time.monotonic()
                sent += 1
                continue
            if now >= next_search and len(searchable) < len(put_at):
                next_search = now + 0.25
                waiting = [i for i in put_at if i not in searchable]
                hits = search.search(
                    index=alias_name(EVENTS),
                    body={"query": {"ids": {"values": waiting[:1000]}}, "_source": False},
                    size=1000,
                    ignore_unavailable=True,
                )["hits"]["hits"]
                for hit in hits:
                    searchable.setdefault(hit["_id"], time.monotonic())
            if now >= next_lake and len(processed) < len(put_at):
                next_lake = now + 0.5
                prefix = layout.day_prefix(layout.PROCESSED, datetime.now(UTC).date())
                for key in layout.list_keys(s3, settings.lake_bucket, prefix):
                    if key in seen_objects:
                        continue
                    seen_objects.add(key)
                    ids = pl.read_parquet(io.BytesIO(layout.get(s3, settings.lake_bucket, key)))["event_id"]
                    found = time.monotonic()
                    for event_id in ids.to_list():
                        if event_id in put_at:
                            processed.setdefault(event_id, found)
            done = sent == n and len(searchable) == len(processed) == n
            if done or (sent == n and time.monotonic() - started > args.seconds + 120):
                break
            time.sleep(0.02)
    finally:
        if watch is not None:
            watch.stop.set()
        if dev is not None:
            os.killpg(dev.pid, signal.SIGINT)
            dev.wait(120)

    print(f"\n{n} probe events at {args.rate:g}/s for {args.seconds:g} s beside the demo traffic\n")
    print("| latency from PutRecords | events seen | p50 s | p95 s | max s |")
    print("|---|---:|---:|---:|---:|")
    for label, seen in (("put -> searchable (OpenSearch)", searchable), ("put -> processed Parquet (lake)", processed)):
        lat = [seen[i] - put_at[i] for i in seen]
        if not lat:
            print(f"| {label} | 0 | - | - | - |")
            continue
        row = f"| {label} | {len(lat)} | {_percentile(lat, 0.5):.2f} | {_percentile(lat, 0.95):.2f} | {max(lat):.2f} |"
        print(row)
    if watch is not None:
        gaps = watch.gaps
        summary = f"max {max(gaps):.2f} s without an owner" if gaps else "none during the measurement"
        print(f"\nhandovers between workers: {len(gaps)} ({summary})")


if __name__ == "__main__":
    main()
