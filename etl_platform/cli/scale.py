"""`etl-platform scale`: run the shard scaler once (or only show what it would do), or replay a load series.

etl-platform scale --dry-run --json          inputs (shards, load, history, policy) and the decision
etl-platform scale                            the same, then applies it (UpdateShardCount)
etl-platform scale --replay config/sample_load.json   the decision sequence for a recorded series
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from etl_platform.config import ConfigError, Settings


def add_scale_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `scale` on the main CLI's sub-parsers."""
    from etl_platform.cli.options import add_pipeline_option

    p = subparsers.add_parser("scale", help="decide (and apply) the stream's shard count from CloudWatch load")
    p.add_argument("--dry-run", action="store_true", help="decide and print, change nothing")
    p.add_argument("--json", action="store_true", help="print inputs and decision as JSON")
    p.add_argument("--stream", help="stream name (default: the pipeline's)")
    add_pipeline_option(p)
    p.add_argument("--replay", metavar="FILE", help="replay a recorded load series (JSON) offline instead")
    p.add_argument(
        "--changes",
        action="store_true",
        help="with --replay: print only scalings and the first tick of each run held back by a rule",
    )
    p.add_argument("--target-utilization", type=float, help="fraction of the per-shard write limits (default 0.7)")
    p.add_argument("--min-shards", type=int)
    p.add_argument("--max-shards", type=int)
    p.add_argument("--cooldown-minutes", type=float)
    p.add_argument("--window-minutes", type=int, help="CloudWatch window the load is averaged over (default 5)")
    p.add_argument("--missing-data", choices=["hold", "zero"], help="no datapoints: hold (default) or treat as idle")
    p.set_defaults(func=cmd_scale)
    return p


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "target_utilization": args.target_utilization,
        "min_shards": args.min_shards,
        "max_shards": args.max_shards,
        "cooldown_s": None if args.cooldown_minutes is None else args.cooldown_minutes * 60,
        "window_minutes": args.window_minutes,
        "missing_data": args.missing_data,
    }


def _rate(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    return f"{value / (1024 * 1024):.2f} MiB/s" if unit == "bytes" else f"{value:,.0f} rec/s"


def cmd_replay(args: argparse.Namespace) -> int:
    from etl_platform.ops.scaling import NONE, replay

    path = Path(args.replay)
    try:
        series = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the load series: {(exc.strerror or str(exc)).lower()}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: the load series is not JSON: {exc}") from None
    steps = replay(series, _overrides(args))
    if args.json:
        print(json.dumps({"series": str(path), "steps": steps}, indent=2))
        return 0
    changes = sum(1 for s in steps if s["action"] != NONE)
    print(f"{path}: {len(steps)} samples, {changes} scalings")
    previous_rule = None
    for s in steps:
        rule = s["reason"].split(":", 1)[0] if s["action"] == NONE else None
        repeat, previous_rule = rule is not None and rule == previous_rule, rule
        if args.changes and (repeat or (rule or "").startswith(("at target", "scale-in held"))):
            continue
        moved = f"{s['current_shards']:>3}"
        if s["action"] != NONE:
            moved += f" -> {s['target_shards']:<3}"
        print(
            f"{s['at'][11:16]}  {_rate(s['records_per_s'], 'records'):>12} {_rate(s['bytes_per_s'], 'bytes'):>12}"
            f"  {s['action']:<9} {moved:<10} {s['note']:<18} {s['reason']}"
        )
    return 0


def cmd_scale(args: argparse.Namespace, settings: Settings) -> int:
    """Handler for `etl-platform scale`."""
    if args.replay:
        return cmd_replay(args)
    from etl_platform import aws
    from etl_platform.cli.failures import require_stack
    from etl_platform.cli.options import selected_pipeline
    from etl_platform.ops.scaling import ScalingHistory, ScalingPolicy, scale_stream

    pipeline = selected_pipeline(args, settings)
    if pipeline.stream.kind != "kinesis" and not args.stream:
        raise ConfigError(
            f"pipeline {pipeline.name} reads the Kafka topic {pipeline.stream.name}: shard scaling is for Kinesis "
            "streams (a topic's partitions are added with the Kafka admin tools, and the workers pick them up)"
        )
    require_stack(settings, "kinesis", "moto")
    stream = args.stream or pipeline.stream.name
    policy = ScalingPolicy.from_env(**_overrides(args))
    report = scale_stream(
        aws.client("kinesis", settings),
        aws.client("cloudwatch", settings),
        ScalingHistory(aws.client("s3", settings), settings.lake_bucket, stream),
        stream,
        policy,
        dry_run=args.dry_run,
        wait_s=0 if args.dry_run else 60,
        native=settings.native_metrics,
    )
    if args.json:
        print(json.dumps(report.as_dict(), indent=2, default=str))
        return 0
    obs, d = report.observation, report.decision
    print(
        f"stream {stream}: {obs.open_shards} open shards, {obs.stream_status}; load over "
        f"{obs.window_s / 60:.0f} min: {_rate(obs.records_per_s, 'records')}, {_rate(obs.bytes_per_s, 'bytes')}; "
        f"{len(report.history)} scalings in the last 24 h"
    )
    verb = "would" if args.dry_run else ("did" if report.applied else "will")
    print(
        f"decision: {d.action} ({d.current_shards} -> {d.target_shards}; {verb} "
        f"{'change' if d.action != 'none' else 'not change'}): {d.reason}"
    )
    return 0
