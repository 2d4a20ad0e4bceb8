"""The analytics state's snapshot format: what a checkpoint stores, versioned, and every version it reads.

Layout: magic, ``<HI`` (version, header length), a JSON header (the detector's configuration, the
history field names, the ring slot's floats and the Arrow table's length), an Arrow IPC table with
one row per key (the key columns and ``fields``, a fixed-size list of float64), then the rings in
use, key by key: ``3 * min(n, ring)`` little-endian float64 each (E1, E2 and the value per
position), in slot order. A key seen a few times takes about 110 bytes.

Older versions are still read (routes unknown) and turned into version 3's fields and rings on reading. Version 2's
rings held (E1, E2) only; the values are put back from them (``kernel.rings_from_sums``), within a
rounding of the prefix sums, which is all the engine that wrote them knew. Version 1 also kept each
key's whole ring inside the table (column ``state``).
"""

from __future__ import annotations

import io
import json
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from etl_platform.analytics.errors import AnalyticsSnapshotError
from etl_platform.analytics.kernel import HISTORY_FIELDS, SLOT, rings_from_sums

SNAPSHOT_VERSION = 4
_MAGIC = b"ETLRAD\x00"
_HEADER = struct.Struct("<HI")  # version, header length
_V1_LAYOUT = ["ring(e1,e2)", "n", "rs", "x1", "c", "tp1", "tp2", "cp", "e1l", "e2l"]


@dataclass(frozen=True)
class SavedState:
    """A decoded snapshot: the detector's configuration and, unless it held no key, its per-key history."""

    config: dict[str, Any]
    keys: pl.DataFrame | None  # the key columns, one row per key; None for an empty detector
    fields: np.ndarray  # (keys, len(HISTORY_FIELDS)) float64
    rings: np.ndarray  # the rings in use, concatenated in key order
    routes: np.ndarray | None = None  # (keys, 2) uint64: each key's route (hi, lo); None: none known
    routed: np.ndarray | None = None  # (keys,) bool: whether the key's route is known
    kids: np.ndarray | None = None  # a delta's key ids (int64); None for a full snapshot
    total_keys: int = 0  # a delta: the detector's key count when it was taken


def encode(
    config: dict[str, Any],
    keys: pl.DataFrame | None,
    fields: np.ndarray,
    rings: np.ndarray,
    routes: np.ndarray | None = None,
    routed: np.ndarray | None = None,
    kids: np.ndarray | None = None,
    total_keys: int = 0,
) -> bytes:
    """Snapshot bytes (the current version) for a configuration and its keys' history; with ``kids``,
    a delta of those keys (see the module docstring)."""
    if keys is None or keys.height == 0:
        table, rings = pl.DataFrame(), np.zeros(0)
    else:
        columns = [pl.Series("fields", fields.reshape(-1)).reshape(fields.shape)]
        if routes is not None and routed is not None and routed.any():
            for i, name in enumerate(("route_hi", "route_lo")):
                column = pl.Series(name, routes[:, i], dtype=pl.UInt64)
                columns.append(column.set(pl.Series(~routed), None) if not routed.all() else column)
        if kids is not None:
            columns.append(pl.Series("kid", kids, dtype=pl.Int64))
        table = keys.with_columns(columns).rechunk()  # one record batch: the same state, the same bytes
    buf = io.BytesIO()
    table.write_ipc(buf, compression="uncompressed")
    ipc = buf.getvalue()
    header = {**config, "fields": list(HISTORY_FIELDS), "slot": list(SLOT), "table_bytes": len(ipc)}
    if kids is not None:
        header.update(delta=True, total_keys=int(total_keys))
    head = json.dumps(header, sort_keys=True).encode()
    return _MAGIC + _HEADER.pack(SNAPSHOT_VERSION, len(head)) + head + ipc + rings.astype("<f8").tobytes()


def decode(blob: bytes) -> SavedState:
    """The state in snapshot bytes of any version this format reads; rejects others and foreign blobs."""
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise AnalyticsSnapshotError(f"snapshot must be bytes, got {type(blob).__name__}")
    blob = bytes(blob)
    if not blob.startswith(_MAGIC) or len(blob) < len(_MAGIC) + _HEADER.size:
        raise AnalyticsSnapshotError("not a RollingAnomalyDetector snapshot (bad magic)")
    version, hlen = _HEADER.unpack_from(blob, len(_MAGIC))
    if version not in (1, 2, 3, SNAPSHOT_VERSION):
        raise AnalyticsSnapshotError(
            f"unsupported snapshot version {version}; this engine reads versions 1 to {SNAPSHOT_VERSION}"
        )
    start = len(_MAGIC) + _HEADER.size
    body = blob[start + hlen :]
    try:
        config = json.loads(blob[start : start + hlen])
        ring, block = int(config["ring"]), int(config["block"])
        keys = [str(k) for k in config["keys"]]
        if version == 1:
            if config["layout"] != _V1_LAYOUT:
                raise AnalyticsSnapshotError("snapshot state layout does not match this engine version")
            table, rings = pl.read_ipc(io.BytesIO(body)), None
        else:
            if config["fields"] != list(HISTORY_FIELDS) or (version > 2 and config["slot"] != list(SLOT)):
                raise AnalyticsSnapshotError("snapshot state fields do not match this engine version")
            cut = config["table_bytes"]
            table, rings = pl.read_ipc(io.BytesIO(body[:cut])), np.frombuffer(body[cut:], dtype="<f8")
    except AnalyticsSnapshotError:
        raise
    except Exception as exc:  # corrupt header or payload
        raise AnalyticsSnapshotError(f"corrupt snapshot: {exc!r}") from exc
    delta = bool(config.get("delta", False))
    total = int(config.get("total_keys", 0))
    if table.width == 0:
        empty = np.zeros(0, dtype=np.int64) if delta else None
        return SavedState(config, None, np.zeros((0, len(HISTORY_FIELDS))), np.zeros(0), kids=empty, total_keys=total)
    if version == 1:
        column, width = "state", 2 * ring + len(_V1_LAYOUT) - 1
    else:
        column, width = "fields", len(HISTORY_FIELDS)
    extra = [c for c in ("route_hi", "route_lo", "kid") if c in table.columns] if version > 3 else []
    if (
        table.columns != [*keys, column, *extra]
        or table.schema[column] != pl.Array(pl.Float64, width)
        or ("kid" in extra) != delta
        or ("route_hi" in extra) != ("route_lo" in extra)
    ):
        raise AnalyticsSnapshotError(f"snapshot table has unexpected columns {table.schema}")
    routes = routed = kids = None
    if "route_hi" in extra:
        hi, lo = table.get_column("route_hi"), table.get_column("route_lo")
        routed = hi.is_not_null().to_numpy()
        routes = np.stack([hi.fill_null(0).to_numpy(), lo.fill_null(0).to_numpy()], axis=1).astype(np.uint64)
    if delta:
        kids = table.get_column("kid").to_numpy().astype(np.int64)
    matrix = table.get_column(column).to_numpy().reshape(table.height, width)
    if version == 1:  # [ring | fields]: keep the (E1, E2) pairs in use and the history fields
        ring_part = 2 * ring
        fields = matrix[:, ring_part : ring_part + len(HISTORY_FIELDS)]
        used = 2 * np.minimum(np.nan_to_num(fields[:, 0]).astype(np.int64), ring)
        rings = matrix[:, :ring_part][np.arange(ring_part) < used[:, None]]
    else:
        fields = matrix
    assert rings is not None
    if version < 3:
        n = np.nan_to_num(fields[:, 0]).astype(np.int64)
        if len(rings) != int(2 * np.minimum(n, ring).sum()) or not (n >= 1).all():
            raise AnalyticsSnapshotError("corrupt snapshot: its rings do not match its row counts")
        rings = rings_from_sums(fields, rings, ring, block)
    return SavedState(config, table.select(keys), fields, rings, routes, routed, kids, total)
