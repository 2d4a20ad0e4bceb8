"""`etl-platform` command line: the local stack and the non-UI ways into the platform."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace

from etl_platform import aws
from etl_platform.cli.failures import STACK_UP
from etl_platform.config import ConfigError, Settings, load_settings
from etl_platform.stack.service import http_ok


def _dagster_up(url: str) -> bool:
    return http_ok(f"{url}/server_info")


def bootstrap(settings: Settings, log=print) -> None:
    """Create every pipeline's stream, the lake bucket and the lease table, encrypt them, set
    retention/lifecycle, apply the alarms."""
    from etl_platform.ops.alarms import apply_alarms, load_alarms
    from etl_platform.ops.provisioning import ensure_bucket, ensure_stream, ensure_topic
    from etl_platform.ops.security import load_security_config, secure_platform
    from etl_platform.pipelines import load_pipelines
    from etl_platform.stream.leases import ensure_table

    pipelines = load_pipelines(settings)
    kinesis = aws.client("kinesis", settings)
    for pipeline in pipelines:
        spec = pipeline.stream
        if spec.kind == "kafka":
            from confluent_kafka.admin import AdminClient

            from etl_platform.stream.kafka import kafka_config

            ensure_topic(AdminClient(kafka_config(settings)), spec.name, spec.shards, spec.retention_hours)
        else:
            ensure_stream(kinesis, spec.name, spec.shards)
    ensure_table(aws.client("dynamodb", settings), settings.lease_table)
    ensure_bucket(aws.client("s3", settings), settings.lake_bucket, settings.aws_region)
    from etl_platform.ops.metrics import native_metrics_for

    alarms = load_alarms()
    security = load_security_config()
    cloudwatch = aws.client("cloudwatch", settings)
    applied = 0
    for pipeline in pipelines:
        spec = pipeline.stream
        native = native_metrics_for(settings, spec.kind)
        if spec.kind != "kinesis":
            applied += len(apply_alarms(cloudwatch, alarms, spec.name, native=native))
            continue
        config = replace(
            security,
            stream_encryption=spec.encryption or security.stream_encryption,
            retention_hours=spec.retention_hours or security.retention_hours,
        )
        # The bucket's lifecycle rules cover every pipeline's lake root (the CDK stack applies the same).
        secure_platform(settings, config, stream=spec.name, log=log, lake_roots=[p.lake_root for p in pipelines])
        applied += len(apply_alarms(cloudwatch, alarms, pipeline.stream.name, native=native))
    streams = ", ".join(f"{p.stream.name} ({p.name})" for p in pipelines)
    log(
        f"streams {streams}, bucket {settings.lake_bucket} and lease table {settings.lease_table} ready; "
        f"{applied} alarms applied"
    )


def cmd_stack(args: argparse.Namespace, settings: Settings) -> int:
    from etl_platform.stack import LocalStack

    if settings.profile != "local":
        raise ConfigError("`etl-platform stack` manages the local stack; unset ETL_PROFILE or set it to local")
    stack = LocalStack()
    if args.action == "up":
        stack.up(names=args.services or None)
        if not args.services:
            bootstrap(settings)
        return 0
    if args.action == "down":
        stack.down()
        return 0
    status = stack.status(settings)
    status["pipelines"] = pipelines_status(settings)
    status["healthy"]["dagster"] = _dagster_up(settings.dagster_url)
    from etl_platform.dashboard import dashboard_url

    status["dashboard_url"] = dashboard_url()
    status["healthy"]["dashboard"] = http_ok(status["dashboard_url"])
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        print(status_table(status))
    # Dagster and the dashboard are optional for `status` (they only run under `make dev`).
    core = {k: v for k, v in status["healthy"].items() if k not in OPTIONAL_SERVICES}
    down = sorted(name for name, ok in core.items() if not ok)
    if down and not args.json:
        print(f"etl-platform stack: {', '.join(down)} not running — {STACK_UP}", file=sys.stderr)
    return 0 if not down else 1


# Where each service of `stack status` answers (keys of its dict); dagster and the dashboard only run
# under `make dev`, so their being down is not a failure of the stack.
SERVICE_ENDPOINTS = {
    "kinesis": "kinesis_endpoint",
    "moto": "s3_endpoint",
    "postgres": "postgres_dsn",
    "opensearch": "opensearch_url",
    "kafka": "kafka_bootstrap",
    "dagster": "dagster_url",
    "dashboard": "dashboard_url",
}
OPTIONAL_SERVICES = ("dagster", "dashboard")


def status_table(status: dict) -> str:
    """`stack status` for people: services with state and endpoint, then the pipelines and the names."""
    from etl_platform.search.queries import format_table

    services = [
        {
            "service": name,
            "state": ("up" if ok else "DOWN") + (" (make dev)" if name in OPTIONAL_SERVICES and not ok else ""),
            "endpoint": status.get(SERVICE_ENDPOINTS.get(name, f"{name}_url"), "") or "",
        }
        for name, ok in status["healthy"].items()
    ]
    pipelines = [
        {
            "pipeline": name,
            "stream": p["stream_name"],
            "shards": p["shards"],
            "processed": p["processed_prefix"],
            "schema": p["warehouse_schema"],
        }
        for name, p in status.get("pipelines", {}).items()
    ]
    shown = ("healthy", "logs", "pipelines", *SERVICE_ENDPOINTS.values())
    rest = [f"{key + ':':<20} {value}" for key, value in status.items() if key not in shown]
    parts = [format_table(services, ["service", "state", "endpoint"])]
    if pipelines:
        parts.append(format_table(pipelines))
    return "\n\n".join([*parts, "\n".join(rest)])


class Progress:
    """One self-rewriting status line on stderr (a plain line per update when not a terminal), and the
    rate of a count since the command started."""

    def __init__(self, quiet: bool = False) -> None:
        import time

        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.started = time.monotonic()

    def per_second(self, count: int) -> float:
        """`count` over the seconds since this Progress was made."""
        import time

        elapsed = time.monotonic() - self.started
        return count / elapsed if elapsed > 0 else 0.0

    def __call__(self, text: str) -> None:
        if self.quiet:
            return
        if self.tty:
            sys.stderr.write(f"\r{text}\033[K")
        else:
            sys.stderr.write(text + "\n")
        sys.stderr.flush()

    def done(self) -> None:
        if self.tty and not self.quiet:
            sys.stderr.write("\n")


def _events_from_file(path: str):
    """Envelope events, one JSON object per line; '-' reads stdin. Blank lines are skipped.

    The file is opened here, before anything is sent, so a wrong path fails at once.
    """
    from etl_platform.cli.failures import EXIT_USAGE, UserError

    stream = sys.stdin if path == "-" else open(path, encoding="utf-8")  # noqa: SIM115

    def events():
        with stream:
            for number, line in enumerate(stream, 1):
                if not line.strip():
                    continue
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as exc:
                    raise UserError(f"{path}:{number}: not a JSON object: {exc}", "fix that line", EXIT_USAGE) from None

    return events()


def pipelines_status(settings: Settings) -> dict:
    """Per pipeline: its stream and where its data lives (for `stack status --json` and scripts)."""
    from etl_platform.lake import layout
    from etl_platform.pipelines import load_pipelines

    bucket = settings.lake_bucket
    return {
        p.name: {
            "stream_name": p.stream.name,
            "shards": p.stream.shards,
            "raw_prefix": f"s3://{bucket}/{p.dataset(layout.RAW)}/",
            "processed_prefix": f"s3://{bucket}/{p.dataset(layout.PROCESSED)}/",
            "errors_prefix": f"s3://{bucket}/{p.dataset(layout.ERRORS)}/",
            "warehouse_schema": p.warehouse_schema,
            "index_prefix": p.index_prefix,
            "keys": list(p.contract.keys),
            "value": p.contract.value,
            "time": p.contract.time,
        }
        for p in load_pipelines(settings)
    }


def _demo_events(rate: float, duration: float, seed: int, pipeline):
    """Live demo traffic at about `rate` events/s (forever when duration is 0): the five demo sources
    for the default pipeline, records shaped by the contract for any other."""
    import time
    from datetime import UTC, datetime

    from etl_platform.stream.sources import contract_records, demo_mix

    started = time.monotonic()
    tick = 0
    while duration <= 0 or time.monotonic() - started < duration:
        batch = max(1, round(rate))
        start = datetime.now(UTC)
        if pipeline.is_default:
            yield from demo_mix(batch, seed=seed * 1_000_003 + tick, start=start)
        else:
            yield from contract_records(pipeline.contract, batch, seed=seed * 1_000_003 + tick, start=start)
        tick += 1
        time.sleep(max(0.0, started + tick - time.monotonic()))


def cmd_produce(args: argparse.Namespace, settings: Settings) -> int:
    from etl_platform.cli.failures import require_stack
    from etl_platform.cli.options import selected_pipeline
    from etl_platform.ops.metrics import ProducerMetricsReporter, native_metrics_for
    from etl_platform.stream.connect import stream_producer
    from etl_platform.stream.producer import ProducerError

    progress = Progress(args.quiet)
    pipeline = selected_pipeline(args, settings)
    events = _events_from_file(args.file) if args.file else None
    require_stack(settings, "moto", "kinesis" if pipeline.stream.kind == "kinesis" else "kafka")
    stream = args.stream or pipeline.stream.name
    # IncomingRecords/IncomingBytes for CloudWatch: the shard scaler and the throttling alarm read them
    # (from AWS/Kinesis instead where Kinesis measures them: then the reporter publishes nothing).
    native = native_metrics_for(settings, pipeline.stream.kind)
    reporter = ProducerMetricsReporter(aws.client("cloudwatch", settings), stream, native=native)

    def on_progress(stats) -> None:
        # What a user watches first, then the rest of ProducerStats.summary().
        progress(
            f"produce: sent={stats.sent} failed={stats.failed} events/s={progress.per_second(stats.sent):.1f} "
            f"retried={stats.retried} rejected={len(stats.rejected)} requests={stats.requests} bytes={stats.bytes}"
        )
        reporter.update(stats)

    producer = stream_producer(pipeline, settings, stream, compress=args.gzip, progress=on_progress)
    # KPL aggregation packs per Kinesis shard; a Kafka topic gets one message per event (the Kafka
    # client batches messages itself, and its partitioner is not Kinesis' hash ranges).
    aggregate = pipeline.stream.kind == "kinesis" and not args.no_kpl
    if args.kpl and not aggregate:
        print(f"produce: --kpl ignored: {pipeline.stream.kind} pipelines send one record per event", file=sys.stderr)
    if events is None:
        events = _demo_events(args.rate, args.duration, args.seed, pipeline)
    try:
        if aggregate:
            stats = producer.send_kpl_aggregated(events)  # lazily, each event sent within 100 ms
        else:
            stats = producer.send(events)  # lazily: live demo events flow as generated
    except ProducerError as exc:
        progress.done()
        print(f"produce: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        progress.done()
        return 0
    progress.done()
    reporter.flush(stats)
    for rejected in stats.rejected[:10]:
        print(f"rejected: {rejected.reason}", file=sys.stderr)
    print(
        json.dumps(
            {
                "sent": stats.sent,
                "failed": stats.failed,
                "retried": stats.retried,
                "rejected": len(stats.rejected),
                "requests": stats.requests,
                "bytes": stats.bytes,
                "records": stats.records,
                "aggregated": aggregate,
                "shard_map_refreshes": stats.shard_map_refreshes,
                "misrouted": stats.misrouted,
            }
        )
    )
    return 0 if not stats.rejected else 1


def make_consumer(settings: Settings, on_stage=None, index: bool = True, pipeline=None):
    """The shard consumer of `pipeline` (default: the default pipeline), as the Dagster workers build it
    (its batches traced as `settings` say, marked as the CLI's)."""
    from etl_platform.ops.tracing import TraceConfig, batch_tracer
    from etl_platform.pipelines import load_pipelines
    from etl_platform.search.bulk import IndexerConfig
    from etl_platform.search.client import make_client
    from etl_platform.search.indexer import search_sink
    from etl_platform.stream.connect import stream_source
    from etl_platform.stream.consumer import ConsumerConfig, StreamConsumer
    from etl_platform.stream.leases import LeaseTable

    pipeline = pipeline or load_pipelines(settings).default
    stream = pipeline.stream.name
    s3 = aws.client("s3", settings)
    kinesis = aws.client("kinesis", settings)
    return StreamConsumer(
        kinesis,
        s3,
        settings.lake_bucket,
        stream,
        LeaseTable(aws.client("dynamodb", settings), settings.lease_table, stream),
        ConsumerConfig.from_env(profile=settings.profile),
        on_stage=on_stage,
        search_sink=search_sink(
            make_client(settings), s3, settings.lake_bucket, pipeline.index_prefix, IndexerConfig.from_env(), pipeline
        )
        if index
        else None,
        pipeline=pipeline,
        source=stream_source(pipeline, settings, kinesis),
        trace_batch=batch_tracer(TraceConfig.from_settings(settings), pipeline.name, stream, {"etl.worker": "cli"}),
    )


def _fault_injector(stage_name: str | None):
    """ETL_FAULT_KILL_AFTER=<stage>: SIGKILL this process right after that stage of a batch, one of
    analysed (read, decoded, analysed), indexed (in search), raw, processed (in the lake), state (the
    analytics snapshot saved, the commit not yet made) or committed.

    A real crash for the exactly-once tests; unset in every normal run.
    """
    if not stage_name:
        return None
    import signal

    def on_stage(stage: str, result) -> None:
        if stage == stage_name:
            os.kill(os.getpid(), signal.SIGKILL)

    return on_stage


def cmd_consume(args: argparse.Namespace, settings: Settings) -> int:
    import time

    from etl_platform.cli.failures import EXIT_USAGE, UserError, require_stack
    from etl_platform.cli.options import selected_pipeline

    if not (args.shard or args.until_caught_up):
        raise UserError("nothing to do", "give --until-caught-up, or --shard ID to be one shard's worker", EXIT_USAGE)
    pipeline = selected_pipeline(args, settings)
    stream_server = "kinesis" if pipeline.stream.kind == "kinesis" else "kafka"
    require_stack(settings, "moto", stream_server, *([] if args.no_index else ["opensearch"]))
    progress = Progress(args.quiet)
    consumer = make_consumer(
        settings,
        on_stage=_fault_injector(os.environ.get("ETL_FAULT_KILL_AFTER")),
        index=not args.no_index,
        pipeline=pipeline,
    )
    totals = {"batches": 0, "records": 0, "events": 0, "errors": 0, "dropped": 0, "anomalies": 0}
    stage_seconds: dict[str, float] = {}
    shards_seen: set[str] = set()
    lag_ms: dict[str, int] = {}  # MillisBehindLatest of each shard's last batch
    started = time.monotonic()

    def report(result) -> None:
        totals["batches"] += 1
        for name in ("records", "events", "errors", "dropped", "anomalies"):
            totals[name] += getattr(result, name)
        shards_seen.add(result.shard_id)
        lag_ms[result.shard_id] = result.millis_behind_latest
        for stage, seconds in result.timings.items():
            stage_seconds[stage] = stage_seconds.get(stage, 0.0) + seconds
        progress(
            # lag: the largest MillisBehindLatest of the shards' last batches (0 once caught up)
            f"consume: batches={totals['batches']} lag={max(lag_ms.values()) / 1000:.1f}s "
            f"events={totals['events']} events/s={progress.per_second(totals['events']):.1f} "
            f"records={totals['records']} errors={totals['errors']} anomalies={totals['anomalies']} "
            f"shard={result.shard_id}"
        )

    extra: dict = {}
    if args.shard:
        import signal

        from etl_platform.stream.consumer import WorkBudget

        stop = []  # SIGTERM/SIGINT: flush what is buffered, commit, release the lease, exit
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.append(True))
        budget = WorkBudget(seconds=args.seconds, until_caught_up=args.until_caught_up)
        outcome = consumer.work(args.shard, budget, should_stop=lambda: bool(stop), on_batch=report)
        extra = {"stopped": outcome.stop_reason, "reads": outcome.reads}
    else:
        consumer.drain(progress=report)
    progress.done()
    elapsed = time.monotonic() - started
    now = time.time()
    busy = {lease.shard_id: lease.owner for lease in consumer.readable() if lease.held(now)}
    for shard_id, owner in sorted(busy.items()):
        print(f"consume: shard {shard_id} is leased by {owner}; left to it", file=sys.stderr)
    print(
        json.dumps(
            {
                **totals,
                "shards": sorted(shards_seen),
                "leased_elsewhere": sorted(busy),
                "seconds": round(elapsed, 3),
                "events_per_s": round(totals["events"] / elapsed, 1) if elapsed else None,
                "stage_seconds": {k: round(v, 3) for k, v in sorted(stage_seconds.items())},
                **extra,
            }
        )
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    from etl_platform.cli.options import CliParser, add_debug_option, add_pipeline_option

    parser = CliParser(prog="etl-platform", description=__doc__)
    add_debug_option(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True)

    stack = sub.add_parser("stack", help="local stack of real servers (Kinesis, S3, PostgreSQL, OpenSearch)")
    stack.add_argument("action", choices=["up", "down", "status"])
    stack.add_argument("--json", action="store_true", help="status as JSON")
    stack.add_argument("services", nargs="*", help="only these services (up)")
    stack.set_defaults(func=cmd_stack)

    produce = sub.add_parser("produce", help="put events on the stream (demo sources or a JSONL file)")
    what = produce.add_mutually_exclusive_group(required=True)
    what.add_argument("--source", choices=["demo"], help="simulated traffic from the five source kinds")
    what.add_argument("--file", help="envelope events, one JSON object per line ('-' for stdin)")
    produce.add_argument("--rate", type=float, default=50.0, help="demo events per second")
    produce.add_argument("--duration", type=float, default=10.0, help="demo seconds (0 = until Ctrl-C)")
    produce.add_argument("--seed", type=int, default=0)
    produce.add_argument("--gzip", action="store_true", help="gzip each record, as the seed's producer does")
    kpl = produce.add_mutually_exclusive_group()
    kpl.add_argument(
        "--no-kpl",
        action="store_true",
        help="one Kinesis record per event (default: KPL-aggregate per shard, as the KPL does; Kafka: never)",
    )
    kpl.add_argument("--kpl", action="store_true", help="KPL-aggregate records (the default; kept for old scripts)")
    produce.add_argument("--stream", help="stream name (default: the pipeline's)")
    produce.add_argument("--quiet", action="store_true", help="no progress line")
    add_pipeline_option(produce)
    produce.set_defaults(func=cmd_produce)

    consume = sub.add_parser(
        "consume", help="consume the stream in-process with the shard workers' code (taking their leases)"
    )
    consume.add_argument(
        "--until-caught-up",
        action="store_true",
        help="micro-batches on every shard not leased by a running worker until all are caught up, then exit "
        "(with --shard: that shard's worker stops once it is caught up)",
    )
    consume.add_argument("--shard", help="be this shard's worker (as a Dagster worker run is) until --seconds pass")
    consume.add_argument("--seconds", type=float, default=600.0, help="the --shard worker's budget (default 600)")
    consume.add_argument("--quiet", action="store_true", help="no progress line")
    consume.add_argument("--no-index", action="store_true", help="skip near-real-time OpenSearch indexing")
    add_pipeline_option(consume)
    consume.set_defaults(func=cmd_consume)

    from etl_platform.cli.doctor import add_doctor_parser
    from etl_platform.cli.errors import add_errors_parser
    from etl_platform.cli.scale import add_scale_parser
    from etl_platform.cli.search import add_search_parser

    add_search_parser(sub)
    add_scale_parser(sub)
    add_errors_parser(sub)
    add_doctor_parser(sub)
    _add_debug_everywhere(parser)
    return parser


def _add_debug_everywhere(parser: argparse.ArgumentParser) -> None:
    from etl_platform.cli.options import add_debug_option

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                add_debug_option(child)
                _add_debug_everywhere(child)


def main(argv: list[str] | None = None) -> int:
    """The `etl-platform` command: the one error boundary (etl_platform.cli.failures.run) around every
    command, so a mistake is one line and an exit code, not a traceback."""
    from etl_platform.cli.failures import debug_from_env, run

    parser = build_parser()
    args = parser.parse_args(argv)
    loaded: list[Settings] = []

    def body() -> int:
        settings = load_settings()
        loaded.append(settings)
        from etl_platform.ops.logs import configure_logging

        configure_logging(settings)
        return int(args.func(args, settings) or 0)

    return run(
        f"etl-platform {args.command}",
        body,
        debug=args.debug or debug_from_env(),
        settings=lambda: loaded[0] if loaded else None,
    )


if __name__ == "__main__":
    sys.exit(main())
