"""`etl-platform search …`: ask the search cluster questions, and operate the indices from a terminal.

    etl-platform search user USER_ID [--from 24h] [--to now] [--limit 100]
    etl-platform search anomalies [--from 24h] [--to now] [--event-type T] [--source S]
    etl-platform search top-users [--from 24h] [--to now] [--limit 10]
    etl-platform search index-day YYYY-MM-DD        reindex a day from processed/ in the lake
    etl-platform search replay-failed [--day D]     re-index search-failed/ backups, delete what got in
    etl-platform search templates                   create/update the index templates

Every command prints an aligned table, or JSON with --json. Times: 'now', an age (15m, 2h, 7d) or ISO
8601 (UTC when no offset is given). --prefix (default ETL_OPENSEARCH_INDEX_PREFIX) picks the indices.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from etl_platform.config import Settings
from etl_platform.pipelines import Pipeline


def add_search_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `search` and its sub-commands on the main CLI's subparsers; handler: `cmd_search`."""
    from etl_platform.cli.options import add_pipeline_option, iso_date

    search = subparsers.add_parser(
        "search",
        help="query OpenSearch (user events, anomalies, top users) and operate the indices",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print JSON instead of a table")
    common.add_argument(
        "--prefix", default=None, help="index name prefix (default: ETL_OPENSEARCH_INDEX_PREFIX + the pipeline's)"
    )
    add_pipeline_option(common)
    window = argparse.ArgumentParser(add_help=False)
    window.add_argument("--from", dest="start", default="24h", help="start (inclusive): now, 15m/2h/7d ago, or ISO")
    window.add_argument("--to", dest="end", default="now", help="end (exclusive): now, 15m/2h/7d ago, or ISO")

    actions = search.add_subparsers(dest="search_command", required=True)
    user = actions.add_parser("user", parents=[common, window], help="a user's events in a time range")
    user.add_argument("user_id")
    user.add_argument("--limit", type=int, default=100)
    anomalies = actions.add_parser(
        "anomalies", parents=[common, window], help="anomaly counts by event type and source over a window"
    )
    anomalies.add_argument("--event-type")
    anomalies.add_argument("--source")
    top = actions.add_parser("top-users", parents=[common, window], help="users with the most anomalies")
    top.add_argument("--limit", type=int, default=10)
    day = actions.add_parser("index-day", parents=[common], help="reindex one day from processed/ in the lake")
    day.add_argument("day", type=iso_date, help="YYYY-MM-DD (event-time day)")
    replay = actions.add_parser(
        "replay-failed", parents=[common], help="re-index documents backed up under search-failed/"
    )
    replay.add_argument("--day", type=iso_date, default=None, help="only this failure day")
    actions.add_parser("templates", parents=[common], help="create or update the index templates")
    search.set_defaults(func=cmd_search)
    return search


def _print(rows: Any, as_json: bool, columns: list[str] | None = None) -> None:
    from etl_platform.search.queries import format_table

    if as_json:
        print(json.dumps(rows, indent=2, default=str))
    else:
        print(format_table(rows, columns))


def cmd_search(args: argparse.Namespace, settings: Settings) -> int:
    """Run one `search` sub-command; returns the process exit code."""
    from etl_platform.cli.failures import require_stack
    from etl_platform.cli.options import selected_pipeline
    from etl_platform.search.client import make_client
    from etl_platform.search.indexer import prefix_from_env
    from etl_platform.search.indices import check_prefix

    pipeline = selected_pipeline(args, settings)
    prefix = check_prefix(args.prefix) if args.prefix is not None else prefix_from_env() + pipeline.own_index_prefix
    # index-day and replay-failed read the lake (moto) too; the lease table is there as well.
    needs_lake = args.search_command in ("index-day", "replay-failed")
    require_stack(settings, "opensearch", *(["moto"] if needs_lake else []))
    client = make_client(settings)
    try:
        return _run(args, settings, client, prefix, pipeline)
    except ValueError as exc:
        print(f"search: {exc}", file=sys.stderr)
        return 2
    finally:
        client.close()


def _run(args: argparse.Namespace, settings: Settings, client: Any, prefix: str, pipeline: Pipeline) -> int:
    from etl_platform.search import queries

    command = args.search_command
    names = queries.QueryFields.of(pipeline.contract)
    if command in ("user", "anomalies", "top-users"):
        start, end = queries.parse_time(args.start), queries.parse_time(args.end)
        if command == "user":
            rows = queries.user_events(client, args.user_id, start, end, prefix, limit=args.limit, names=names)
            _print(rows, args.json)
        elif command == "anomalies":
            rows = queries.anomaly_breakdown(client, start, end, prefix, args.event_type, args.source, names=names)
            _print(rows, args.json)
        else:
            rows = queries.top_anomalous_users(client, start, end, prefix, limit=args.limit, names=names)
            columns = [names.user, "anomalies", "event_types", "max_value", "last"]
            _print(rows, args.json, None if args.json else columns)
        return 0

    from etl_platform import aws
    from etl_platform.search.bulk import IndexerConfig
    from etl_platform.search.indexer import index_day, replay_failed
    from etl_platform.search.indices import contract_properties, ensure_templates

    def progress(text: str) -> None:
        if not args.json:
            print(text, file=sys.stderr)

    if command == "templates":
        written = ensure_templates(client, prefix, properties=contract_properties(pipeline.contract))
        _print({"written": written}, True) if args.json else print(
            f"templates written: {', '.join(written)}" if written else "templates already current"
        )
        return 0
    s3 = aws.client("s3", settings)
    if command == "index-day":
        from etl_platform.stream.leases import LeaseTable

        leases = LeaseTable(aws.client("dynamodb", settings), settings.lease_table, pipeline.stream.name)
        result = index_day(
            client,
            s3,
            settings.lake_bucket,
            args.day,
            prefix,
            IndexerConfig.from_env(),
            progress=progress,
            pending=leases.pending_objects,
            root=pipeline.lake_root,
            properties=contract_properties(pipeline.contract),
        )
        out = {
            "day": args.day.isoformat(),
            "lake_rows": result.rows,
            "lake_anomalies": result.anomalies,
            "events_count": result.events_count,
            "anomalies_count": result.anomalies_count,
            "stale_deleted": result.stale_deleted,
            **result.stats.as_dict(),
        }
        _print(
            out if args.json else [out],
            args.json,
            None
            if args.json
            else [
                "day",
                "lake_rows",
                "events_count",
                "anomalies_count",
                "indexed",
                "failed",
                "retried",
                "stale_deleted",
                "seconds",
            ],
        )
        return 0 if result.stats.failed == 0 else 1
    # replay-failed
    replayed = replay_failed(client, s3, settings.lake_bucket, args.day, IndexerConfig.from_env(), progress=progress)
    out = {
        "objects": replayed.objects,
        "documents": replayed.documents,
        "deleted": len(replayed.deleted),
        **replayed.stats.as_dict(),
    }
    _print(
        out if args.json else [out],
        args.json,
        None if args.json else ["objects", "documents", "indexed", "failed", "deleted", "seconds"],
    )
    return 0 if replayed.stats.failed == 0 else 1
