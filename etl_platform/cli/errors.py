"""`etl-platform errors …`: the dead-lettered records in errors/, and re-driving them after a fix.

    etl-platform errors list [--from YYYY-MM-DD] [--to YYYY-MM-DD] [--json]
        records per arrival day and kind of reason, an example reason each, and how many were re-driven
    etl-platform errors replay [--from YYYY-MM-DD] [--to YYYY-MM-DD] [--json]
        decode each dead-lettered record again with today's validation and put those that now pass back
        on the stream, each once (see etl_platform.stream.dead_letters)

Days are arrival days (UTC); the default range is the last 7 days.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

from etl_platform.config import Settings


def add_errors_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `errors` and its sub-commands on the main CLI's subparsers; handler: `cmd_errors`."""
    from etl_platform.cli.options import add_pipeline_option, iso_date

    errors = subparsers.add_parser(
        "errors",
        help="list the dead-lettered records (errors/) and re-drive them after a fix",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    errors.add_argument("action", choices=["list", "replay"])
    errors.add_argument("--from", dest="first", type=iso_date, help="first arrival day (YYYY-MM-DD)")
    errors.add_argument("--to", dest="last", type=iso_date, help="last arrival day (default: today)")
    errors.add_argument("--json", action="store_true", help="print JSON")
    add_pipeline_option(errors)
    errors.set_defaults(func=cmd_errors)
    return errors


def cmd_errors(args: argparse.Namespace, settings: Settings) -> int:
    from etl_platform import aws
    from etl_platform.cli.failures import EXIT_USAGE, UserError, require_stack
    from etl_platform.cli.options import selected_pipeline
    from etl_platform.search.queries import format_table
    from etl_platform.stream import dead_letters
    from etl_platform.stream.connect import stream_producer

    pipeline = selected_pipeline(args, settings)

    last = args.last or datetime.now(UTC).date()
    first = args.first or last - timedelta(days=6)
    if first > last:
        raise UserError(f"--from {first} is after --to {last}", "give the earlier day to --from", EXIT_USAGE)
    stream_server = "kinesis" if pipeline.stream.kind == "kinesis" else "kafka"
    require_stack(settings, "moto", *([stream_server] if args.action == "replay" else []))
    s3 = aws.client("s3", settings)
    if args.action == "list":
        rows = dead_letters.summarize(s3, settings.lake_bucket, first, last, pipeline.lake_root)
        if args.json:
            print(json.dumps(rows, indent=2))
        elif rows:
            print(format_table(rows, ["day", "kind", "records", "redriven", "example"]))
        else:
            print(f"no dead-lettered records from {first} to {last}")
        return 0
    result = dead_letters.redrive(
        s3,
        settings.lake_bucket,
        aws.client("kinesis", settings),
        pipeline.stream.name,
        first,
        last,
        progress=None if args.json else lambda line: print(line, file=sys.stderr),
        root=pipeline.lake_root,
        contract=pipeline.contract,
        producer=stream_producer(pipeline, settings),
    )
    summary = {
        "objects": result.objects,
        "redriven": result.redriven,
        "redriven_before": result.redriven_before,
        "still_invalid": dict(result.still_invalid),
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        still = ", ".join(f"{kind}: {n}" for kind, n in result.still_invalid.most_common()) or "none"
        print(
            f"{result.redriven} records put back on {pipeline.stream.name} from {result.objects} error objects "
            f"({result.redriven_before} re-driven before); still refused: {still}"
        )
    return 0
