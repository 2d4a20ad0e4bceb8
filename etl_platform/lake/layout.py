"""The S3 lake's layout and object I/O: one place that knows every prefix and file format.

    [<pipeline>/]raw/dt=YYYY-MM-DD/hour=HH/<shard>-<first seq>-<part>.jsonl.gz  decoded events + stream position
    [<pipeline>/]processed/dt=YYYY-MM-DD/hour=HH/<shard>-<first seq>-<part>.parquet  + avg_value, anomaly_status
    [<pipeline>/]errors/dt=YYYY-MM-DD/hour=HH/<shard>-<first seq>-<part>.jsonl.gz  rejected records, reason
    _state/<stream>/<shard>/<generation>-<seq>.bin|.base|.delta   committed analytics state chains
    _checkpoints/<stream>/<shard>.json                          checkpoints of older versions (stream/checkpoints.py)

A pipeline other than the default one has its datasets under its name (`seed/raw/...`): a *dataset*
below is the prefix with that root (`raw` or `seed/raw`), and `dataset_name` its last part.

Object names derive from the stream position a micro-batch starts at (never from wall-clock time or
a random id), so a retried batch, which starts at the same committed checkpoint and reads the same
records or a superset, overwrites its earlier objects instead of adding duplicates.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import polars as pl
import pyarrow.parquet as pq
from isal import igzip

RAW, PROCESSED, ERRORS = "raw", "processed", "errors"
PARTITION_RE = re.compile(r"dt=(\d{4}-\d{2}-\d{2})/hour=(\d{2})/")


@dataclass(frozen=True)
class HourPartition:
    day: date
    hour: int

    @classmethod
    def of(cls, moment: datetime) -> HourPartition:
        return cls(moment.date(), moment.hour)

    def prefix(self, dataset: str) -> str:
        return f"{dataset}/dt={self.day.isoformat()}/hour={self.hour:02d}/"


def day_prefix(dataset: str, day: date | str) -> str:
    day_text = day if isinstance(day, str) else day.isoformat()
    return f"{dataset}/dt={day_text}/"


def dataset_name(dataset: str) -> str:
    """`raw`, `processed` or `errors`: a dataset prefix without its pipeline root."""
    return dataset.rsplit("/", 1)[-1]


def object_key(dataset: str, partition: HourPartition, shard_id: str, first_sequence: str, part: int) -> str:
    suffix = {RAW: "jsonl.gz", ERRORS: "jsonl.gz", PROCESSED: "parquet"}[dataset_name(dataset)]
    return f"{partition.prefix(dataset)}{shard_id}-{first_sequence}-{part:04d}.{suffix}"


def processed_key_for(raw_key: str) -> str:
    """The processed object that holds exactly the events of a raw object (same root, partition and name)."""
    root, sep, rest = raw_key.partition(f"{RAW}/dt=")
    if not sep or (root and not root.endswith("/")) or not raw_key.endswith(".jsonl.gz"):
        raise ValueError(f"not a raw object key: {raw_key}")
    return f"{root}{PROCESSED}/dt={rest[: -len('.jsonl.gz')]}.parquet"


def list_keys(s3: Any, bucket: str, prefix: str) -> list[str]:
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [obj["Key"] for obj in page.get("Contents", [])]
    return sorted(keys)


# --- formats --------------------------------------------------------------------------------------
# ISA-L (isal) writes standard gzip; its level 1 takes about a ninth of zlib level 6's CPU for objects
# about a quarter larger: chosen by measurement (BENCHMARKS.md, "Consumer throughput").
GZIP_LEVEL = 1


def gzip_lines(lines: Iterable[str]) -> bytes:
    """The lines, each ended by a newline, as one gzip member compressed in one call."""
    lines = list(lines)
    return gzip_text("\n".join(lines) + "\n" if lines else "")


def gzip_text(text: str) -> bytes:
    """Text (UTF-8) as one gzip member compressed in one call."""
    # mtime=0: identical content gives identical bytes, so a retried write is byte-for-byte the same.
    return igzip.compress(text.encode(), compresslevel=GZIP_LEVEL, mtime=0)


def jsonl_gz(rows: Iterable[dict[str, Any]]) -> bytes:
    return gzip_lines(json.dumps(row, separators=(",", ":"), default=str) for row in rows)


def gunzip(data: bytes) -> bytes:
    """A lake object's gzip bytes, decompressed (ISA-L: any gzip, a few times faster than zlib)."""
    return igzip.decompress(data)


def read_jsonl_gz(data: bytes) -> Iterator[dict[str, Any]]:
    for line in gunzip(data).splitlines():
        if line:
            yield json.loads(line)


def parquet_bytes(frame: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    frame.write_parquet(buf, compression="zstd", statistics=True)
    return buf.getvalue()


def read_parquet(data: bytes) -> pl.DataFrame:
    return pl.from_arrow(pq.read_table(io.BytesIO(data)))  # type: ignore[return-value]


def put(s3: Any, bucket: str, key: str, body: bytes) -> None:
    s3.put_object(Bucket=bucket, Key=key, Body=body)


def get(s3: Any, bucket: str, key: str) -> bytes:
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()
