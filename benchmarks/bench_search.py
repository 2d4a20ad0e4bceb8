"""OpenSearch indexing throughput: our indexer vs a plain `opensearchpy.helpers.bulk`, same run, same docs.

    .venv/bin/python -m benchmarks.bench_search [--docs 200000] [--rounds 1]

Documents: `--docs` processed rows from the demo sources through the real detector; each row goes to
events-<day>, and each anomaly a second time to anomalies-<day> (the same actions for every method).
Each method writes into fresh indices (own prefix, same templates) on the local node.
The reference gets its actions ready-made as Python dicts (untimed), so only the
serialization and transport of `helpers.bulk` (500 actions per request) is timed; ours is timed from
the polars frame, document building included. Reports docs/s and the ratio to the reference.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from datetime import UTC, datetime

from opensearchpy import helpers

from benchmarks.common import local_settings, stack_benchmark
from etl_platform.search import indices
from etl_platform.search.bulk import IndexerConfig
from etl_platform.search.client import make_client
from etl_platform.search.documents import bulk_lines, documents
from etl_platform.search.indexer import index_processed_frame
from etl_platform.stream.samples import sample_processed_frame


def _reference_actions(frame, prefix: str) -> list[dict]:
    """The same index actions as ours, as the dicts a helpers.bulk user would write."""
    lines = bulk_lines(documents(frame, datetime.now(UTC)), prefix)
    actions = []
    for payload in lines["payload"].to_list():
        action, doc = payload.splitlines()
        meta = json.loads(action)["index"]
        actions.append({"_index": meta["_index"], "_id": meta["_id"], "_source": json.loads(doc)})
    return actions


def _count(client, prefix: str) -> int:
    client.indices.refresh(index=f"{prefix}*")
    return int(client.count(index=f"{prefix}*")["count"])


@stack_benchmark("opensearch")
def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=1, help="repeat each method; the best round is kept")
    args = parser.parse_args()
    settings = local_settings()
    client = make_client(settings, timeout=120)
    run_id = uuid.uuid4().hex[:8]

    t0 = time.perf_counter()
    frame = sample_processed_frame(args.docs, seed=11, users=2_000)
    anomalies = int((frame["anomaly_status"] == "ANOMALY").sum())
    actions = args.docs + anomalies
    print(
        f"generated {args.docs} processed rows ({anomalies} anomalies) in {time.perf_counter() - t0:.1f}s; "
        f"{actions} index actions per method"
    )

    # Warm the node (JIT, index creation paths) so the first timed method is not penalised.
    warm = f"bench-{run_id}-warm-"
    index_processed_frame(client, frame.head(5_000), None, None, warm)
    indices.delete_all(client, warm)

    methods = {
        "helpers.bulk (reference)": None,
        "ours, 1 request in flight": IndexerConfig(concurrency=1),
        "ours, 2 requests in flight (default)": IndexerConfig(),
    }
    results: dict[str, dict] = {}
    for name, config in methods.items():
        best = None
        for round_ in range(args.rounds):
            prefix = f"bench-{run_id}-{len(results)}{round_}-"
            indices.ensure_templates(client, prefix)
            if config is None:
                ref_actions = _reference_actions(frame, prefix)
                started = time.perf_counter()
                ok, errors = helpers.bulk(client, ref_actions, request_timeout=120)
                seconds = time.perf_counter() - started
                row = {"indexed": ok, "failed": len(errors), "requests": -(-len(ref_actions) // 500)}
                del ref_actions
            else:
                started = time.perf_counter()
                stats = index_processed_frame(client, frame, None, None, prefix, config)
                seconds = time.perf_counter() - started
                row = {"indexed": stats.indexed, "failed": stats.failed, "requests": stats.requests}
            row["count"] = _count(client, prefix)
            row["seconds"] = seconds
            indices.delete_all(client, prefix)
            if best is None or seconds < best["seconds"]:
                best = row
            print(
                f"{name} round {round_ + 1}: {row['indexed']} in {seconds:.2f}s "
                f"({row['indexed'] / seconds:,.0f} docs/s), {row['count']} searchable"
            )
        assert best is not None and best["count"] == actions, f"{name}: {best} != {actions} actions"
        results[name] = best

    reference = results["helpers.bulk (reference)"]
    ref_rate = reference["indexed"] / reference["seconds"]
    print()
    print("| method | actions | requests | seconds | docs/s | vs helpers.bulk |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, row in results.items():
        rate = row["indexed"] / row["seconds"]
        print(
            f"| {name} | {row['indexed']:,} | {row['requests']:,} | {row['seconds']:.2f} | {rate:,.0f} | "
            f"{rate / ref_rate:.2f}x |"
        )
    client.close()


if __name__ == "__main__":
    main()
