"""What tracing costs the consumer: draining the same events with and without batch traces.

    .venv/bin/python -m benchmarks.bench_tracing [--events 20000] [--shards 2] [--rounds 2]

Loads identical events into 2 x rounds streams on the local stack, then drains them alternately
with the consumer untraced (the reference) and traced with the file exporter (`ETL_TRACE_EXPORTER=
file`, the local default), and reports the traced / untraced ratio of wall time, plus what emitting
one batch's span tree costs (timed around the hook) and how many spans a batch has.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.bench_ingestion import _cleanup, _fresh
from benchmarks.common import local_settings, stack_benchmark
from etl_platform import aws
from etl_platform.ops.tracing import TraceConfig, batch_tracer
from etl_platform.stream.consumer import BatchResult, ConsumerConfig, StreamConsumer
from etl_platform.stream.leases import LeaseTable, ensure_table
from etl_platform.stream.producer import KinesisProducer
from etl_platform.stream.sources import demo_mix


@stack_benchmark("kinesis", "moto")
def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    settings = local_settings()
    events = list(demo_mix(args.events, seed=7, start=datetime(2026, 5, 1, tzinfo=UTC), users=500))
    dynamodb = aws.client("dynamodb", settings)
    ensure_table(dynamodb, settings.lease_table)
    trace_file = Path(tempfile.mkdtemp()) / "spans.jsonl"
    config = TraceConfig(exporter="file", file=str(trace_file))

    streams = []
    for _ in range(2 * args.rounds):
        kinesis, s3, name = _fresh(settings, args.shards)
        KinesisProducer(kinesis, name).send(events)
        streams.append((kinesis, s3, name))

    wall = {"untraced": 0.0, "traced": 0.0}
    hook_s, batches, spans_per_batch = 0.0, 0, 0
    for index, (kinesis, s3, name) in enumerate(streams):
        mode = "traced" if index % 2 else "untraced"  # alternate, so drift hits both alike
        tracer = batch_tracer(config, "default", name) if mode == "traced" else None

        def timed(result: BatchResult, error: BaseException | None = None, tracer=tracer) -> None:
            nonlocal hook_s, batches, spans_per_batch
            started = time.perf_counter()
            tracer(result, error)
            hook_s += time.perf_counter() - started
            batches += 1
            spans_per_batch = max(spans_per_batch, 1 + len(result.stage_spans))

        leases = LeaseTable(dynamodb, settings.lease_table, name)
        consumer = StreamConsumer(
            kinesis, s3, name, name, leases, ConsumerConfig(), trace_batch=timed if tracer else None
        )
        started = time.perf_counter()
        results = consumer.drain()
        wall[mode] += time.perf_counter() - started
        assert sum(r.events for r in results) == len(events)
        leases.delete_all()
        _cleanup(kinesis, s3, name)

    lines = trace_file.read_text(encoding="utf-8").splitlines()
    n = len(events) * args.rounds
    print(f"\n{len(events)} events x {args.rounds} rounds per mode, {args.shards} shards, {batches} traced batches\n")
    print("| consumer | events/s | reference | reference events/s | ratio |")
    print("|---|---:|---|---:|---:|")
    print(
        f"| traced (file exporter) | {n / wall['traced']:,.0f} | untraced | {n / wall['untraced']:,.0f} "
        f"| {wall['untraced'] / wall['traced']:.2f} |"
    )
    print(
        f"\nspan tree per batch: {hook_s / max(batches, 1) * 1000:.2f} ms to build and write, up to "
        f"{spans_per_batch} spans; {len(lines)} spans written"
    )


if __name__ == "__main__":
    main()
