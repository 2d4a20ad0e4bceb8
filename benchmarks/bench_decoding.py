"""Decoding by a pipeline's contract, and a transform, against bare parsing in the same run.

    .venv/bin/python -m benchmarks.bench_decoding [--events 20000]

Records are built in memory (gzip JSON, as the seed's producer sends them; no stream, no lake), so
this measures the consumer's own decode step only. Reported per contract (the default envelope and
the shipped `seed` one): `decode_records` vs a bare loop of gunzip + `json.loads` over the same
records (the floor any decoder pays), and the shipped example transform over the decoded batch vs
building the batch's frame. The last line is one JSON object with the ratios.
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from etl_platform.config import load_settings
from etl_platform.pipelines import load_pipelines
from etl_platform.pipelines.transforms import Transforms
from etl_platform.stream.decoding import decode_records, isolate_unconvertible
from etl_platform.stream.sources import contract_records, demo_mix


def best_of(fn: Callable[[], object], repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20_000)
    args = parser.parse_args()
    pipelines = load_pipelines(load_settings({}), {})
    arrival = datetime.now(UTC)
    start = arrival - timedelta(minutes=30)
    report: dict[str, float | int] = {"events": args.events}
    print(f"{'pipeline':<10} {'decode s':>9} {'bare s':>8} {'ratio':>6} {'µs/event':>9}")
    for name in ("default", "seed"):
        contract = pipelines.get(name).contract
        payloads = (
            list(demo_mix(args.events, seed=3, start=start))
            if name == "default"
            else list(contract_records(contract, args.events, seed=3, start=start))
        )
        records = [
            {
                "Data": gzip.compress(json.dumps(p).encode(), mtime=0),
                "SequenceNumber": str(10**20 + i),
                "PartitionKey": str(p.get("user_id", i)),
                "ApproximateArrivalTimestamp": arrival,
            }
            for i, p in enumerate(payloads)
        ]
        decoded = decode_records("shardId-0", records, contract)
        assert len(decoded.events) == args.events, decoded.errors[:1]
        decode_s = best_of(lambda records=records, contract=contract: decode_records("shardId-0", records, contract))
        bare_s = best_of(lambda records=records: [json.loads(gzip.decompress(r["Data"])) for r in records])
        print(
            f"{name:<10} {decode_s:>9.3f} {bare_s:>8.3f} {decode_s / bare_s:>6.2f} {decode_s / args.events * 1e6:>9.1f}"
        )
        report[f"{name}_decode_vs_bare"] = round(decode_s / bare_s, 2)
        if name == "seed":
            frame_s = best_of(lambda d=decoded, c=contract: isolate_unconvertible(d.events, [], c))
            frame = isolate_unconvertible(decoded.events, [], contract)
            transforms = Transforms(contract, ["etl_platform.pipelines.examples.privacy_screen"])
            transform_s = best_of(lambda t=transforms, f=frame: t.apply(f))
            print(f"transform privacy_screen {transform_s:.3f}s vs building the frame {frame_s:.3f}s")
            report["transform_vs_frame"] = round(transform_s / frame_s, 2)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
