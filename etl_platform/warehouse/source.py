"""What the warehouse loads: one day's processed Parquet objects in the lake, and their manifests.

The PostgreSQL dialect pulls the objects through this process (parallel GETs, Arrow tables); the
Redshift dialect only needs their keys, sizes and Parquet schemas (read from each object's footer
with two ranged GETs) because Redshift's COPY reads the objects itself, through a manifest.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, cast

import polars as pl
import pyarrow as pa
import pyarrow.compute as _compute
import pyarrow.parquet as pq

from etl_platform.lake import layout
from etl_platform.lake.visibility import PendingObjects, committed
from etl_platform.warehouse.schema import ARRIVAL_ORDER, SEQUENCE_WIDTH, SchemaDriftError

# pyarrow.compute creates its kernel functions (sum, equal, ...) at import time and pyarrow ships no
# stubs, so the type checker cannot see them: the module is typed Any here.
pc: Any = _compute

MANIFESTS = "_manifests"
READ_WORKERS = 8


@dataclass(frozen=True)
class LakeObject:
    key: str
    size: int


def partition_objects(
    s3: Any, bucket: str, day: date, pending: PendingObjects | None = None, root: str = ""
) -> list[LakeObject]:
    """The committed processed Parquet objects of one event-time day of the pipeline with lake `root`,
    in key order (lake.visibility)."""
    prefix = layout.day_prefix(root + layout.PROCESSED, day)
    found: list[LakeObject] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        found += [
            LakeObject(o["Key"], int(o["Size"])) for o in page.get("Contents", []) if o["Key"].endswith(".parquet")
        ]
    kept = set(committed((o.key for o in found), pending))
    return sorted((o for o in found if o.key in kept), key=lambda o: o.key)


def _parallel(fn: Any, items: Sequence[Any]) -> list[Any]:
    if len(items) <= 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(READ_WORKERS, len(items))) as pool:
        return list(pool.map(fn, items))


def read_objects(s3: Any, bucket: str, objects: Sequence[LakeObject], columns: Sequence[str] | None = None) -> pa.Table:
    """All rows of `objects` as one Arrow table; objects written before a new column get NULLs in it."""

    def one(obj: LakeObject) -> pa.Table:
        data = layout.get(s3, bucket, obj.key)
        if columns is None:
            return pq.read_table(io.BytesIO(data))
        present = [c for c in columns if c in pq.read_schema(io.BytesIO(data)).names]
        return pq.read_table(io.BytesIO(data), columns=present)

    tables = _parallel(one, objects)
    if not tables:
        return pa.table({})
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise SchemaDriftError(
            f"processed objects of one partition have incompatible column types ({exc}); objects: "
            + ", ".join(o.key for o in objects)
        ) from exc


class _RangeFile(io.RawIOBase):
    """A read-only file over an S3 object that fetches only the byte ranges Parquet asks for."""

    def __init__(self, s3: Any, bucket: str, obj: LakeObject, tail: int = 64 * 1024) -> None:
        self.s3, self.bucket, self.obj, self.pos = s3, bucket, obj, 0
        start = max(0, obj.size - tail)
        self._tail_start, self._tail = start, self._get(start, obj.size) if obj.size else b""

    def _get(self, start: int, end: int) -> bytes:
        resp = self.s3.get_object(Bucket=self.bucket, Key=self.obj.key, Range=f"bytes={start}-{end - 1}")
        return resp["Body"].read()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.obj.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, buffer: Any) -> int:
        end = min(self.obj.size, self.pos + len(buffer))
        if end <= self.pos:
            return 0
        if self.pos >= self._tail_start:
            chunk = self._tail[self.pos - self._tail_start : end - self._tail_start]
        else:
            chunk = self._get(self.pos, end)
        buffer[: len(chunk)] = chunk
        self.pos += len(chunk)
        return len(chunk)


def read_schema(s3: Any, bucket: str, obj: LakeObject) -> pa.Schema:
    """An object's Parquet schema from its footer, without downloading the data."""
    with _RangeFile(s3, bucket, obj) as handle:
        return pq.read_schema(handle)


def read_schemas(s3: Any, bucket: str, objects: Sequence[LakeObject]) -> list[pa.Schema]:
    return _parallel(lambda obj: read_schema(s3, bucket, obj), objects)


def union_schema(schemas: Sequence[pa.Schema]) -> pa.Schema:
    """The columns of all objects (first-seen order); conflicting types are drift, named."""
    try:
        return pa.unify_schemas(list(schemas), promote_options="permissive") if schemas else pa.schema([])
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise SchemaDriftError(f"processed objects of one partition have incompatible column types: {exc}") from exc


def manifest(bucket: str, objects: Sequence[LakeObject]) -> dict[str, Any]:
    """A Redshift COPY manifest; columnar COPY requires meta.content_length for every entry."""
    return {
        "entries": [
            {"url": f"s3://{bucket}/{obj.key}", "mandatory": True, "meta": {"content_length": obj.size}}
            for obj in objects
        ]
    }


def manifest_key(day: date, group: int, load_id: str) -> str:
    """One load's manifest: `load_id` keeps two loads of a day at once from sharing (and overwriting)
    manifests; the load removes its own when it ends."""
    return f"{MANIFESTS}/warehouse/{layout.PROCESSED}/dt={day.isoformat()}/{load_id}/group-{group:02d}.manifest"


def write_manifest(s3: Any, bucket: str, key: str, objects: Sequence[LakeObject]) -> str:
    body = json.dumps(manifest(bucket, objects), indent=1).encode()
    layout.put(s3, bucket, key, body)
    return key


def first_arrivals(table: pa.Table) -> tuple[pa.Table, int]:
    """One row per event_id, the first in stream order (a producer retry delivers an event twice).

    Returns the table (unchanged, without a copy, when ids are already unique) and the number of
    duplicate rows dropped. Row order is otherwise preserved.
    """
    if table.num_rows == 0 or pc.count_distinct(table.column("event_id")).as_py() == table.num_rows:
        return table, 0
    # pl.from_arrow is typed DataFrame | Series (polars cannot overload on pyarrow's unstubbed types):
    # a Table always gives a DataFrame.
    frame = cast(pl.DataFrame, pl.from_arrow(table)).with_row_index("_row")
    order = [
        pl.col(c).str.zfill(SEQUENCE_WIDTH) if c == "sequence_number" else pl.col(c)
        for c in ARRIVAL_ORDER
        if c in frame.columns
    ]
    kept = frame.sort([*order, "_row"]).unique("event_id", keep="first", maintain_order=True).sort("_row").drop("_row")
    return kept.to_arrow(), table.num_rows - kept.height


@dataclass(frozen=True)
class PartitionCounts:
    """Row counts of one processed partition, as the warehouse should hold them."""

    rows: int  # rows in the Parquet objects
    events: int  # distinct event_id: what the events table holds after de-duplication
    anomalies: int  # distinct event_id among ANOMALY rows: what the anomalies table holds


def partition_counts(
    s3: Any,
    bucket: str,
    day: date,
    pending: PendingObjects | None = None,
    only: Sequence[str] | None = None,
    root: str = "",
) -> PartitionCounts:
    """Counts computed from the lake alone (two columns read), for reconciliation checks: over the
    day's committed objects of the pipeline with lake `root`, or over those of them named in `only`
    (what a load read)."""
    columns = ["event_id", "anomaly_status", *ARRIVAL_ORDER]
    objects = partition_objects(s3, bucket, day, pending, root)
    if only is not None:
        named = set(only)
        objects = [o for o in objects if o.key in named]
    table = read_objects(s3, bucket, objects, columns=columns)
    if table.num_rows == 0:
        return PartitionCounts(0, 0, 0)
    kept, _ = first_arrivals(table)
    anomalies = pc.sum(pc.equal(kept.column("anomaly_status"), "ANOMALY")).as_py() or 0
    return PartitionCounts(rows=table.num_rows, events=kept.num_rows, anomalies=int(anomalies))


def loaded_key(schema: str, day: date) -> str:
    """Where a load records the lake objects it read (`record_loaded`)."""
    return f"{MANIFESTS}/warehouse/loaded/{schema}/dt={day.isoformat()}.json"


def record_loaded(s3: Any, bucket: str, schema: str, day: date, objects: Sequence[LakeObject]) -> None:
    """After a load committed: the objects it read, so that its check compares the warehouse with
    exactly those, and tells a wrong load from a lake that has moved on since."""
    body = {"objects": [o.key for o in objects], "loaded_at": datetime.now(UTC).isoformat()}
    layout.put(s3, bucket, loaded_key(schema, day), json.dumps(body).encode())


def read_loaded(s3: Any, bucket: str, schema: str, day: date) -> list[str] | None:
    """The objects the day's last load read; None when no load recorded them."""
    try:
        return json.loads(layout.get(s3, bucket, loaded_key(schema, day)))["objects"]
    except s3.exceptions.NoSuchKey:
        return None
