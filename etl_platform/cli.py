"""`etl-platform` command line: the local stack and the non-UI ways into the platform."""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request

from etl_platform import aws
from etl_platform.config import ConfigError, Settings, load_settings


def _dagster_up(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/server_info", timeout=1) as resp:
            return resp.status == 200
    except OSError:
        return False


def bootstrap(settings: Settings, log=print) -> None:
    """Create the stream and the lake bucket the platform writes to."""
    from etl_platform.provisioning import ensure_bucket, ensure_stream

    ensure_stream(aws.client("kinesis", settings), settings.stream_name)
    ensure_bucket(aws.client("s3", settings), settings.lake_bucket, settings.aws_region)
    log(f"stream {settings.stream_name} and bucket {settings.lake_bucket} ready")


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
    status["healthy"]["dagster"] = _dagster_up(settings.dagster_url)
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        for key, value in status.items():
            if key not in ("healthy", "logs"):
                print(f"{key:<20} {value}")
        for name, ok in status["healthy"].items():
            print(f"{name:<20} {'healthy' if ok else 'DOWN'}")
    # Dagster is optional for `status` (it only runs under `make dev`).
    core = {k: v for k, v in status["healthy"].items() if k != "dagster"}
    return 0 if all(core.values()) else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="etl-platform", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    stack = sub.add_parser("stack", help="local stack of real servers (Kinesis, S3, PostgreSQL, OpenSearch)")
    stack.add_argument("action", choices=["up", "down", "status"])
    stack.add_argument("--json", action="store_true", help="status as JSON")
    stack.add_argument("services", nargs="*", help="only these services (up)")
    stack.set_defaults(func=cmd_stack)

    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
        return int(args.func(args, settings) or 0)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
