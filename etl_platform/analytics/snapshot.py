"""The analytics state's snapshot format: what a checkpoint stores, versioned, and every version it reads.

Layout: magic, ``<HI`` (version, header length), a JSON header (the detector's configuration, the
history field names, the ring slot's floats and the Arrow table's length), an Arrow IPC table with
one row per key (the key columns and ``fields``, a fixed-size list of float64), then the rings in
use, key by key: ``3 * min(n, ring)`` little-endian float64 each (E1, E2 and the value per
position), in slot order. A key seen a few times takes about 110 bytes.

Older versions are still read and turned into version 3's fields and rings on reading. Version 2's
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

SNAPSHOT_VERSION = 3
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


def encode(config: dict[str, Any], keys: pl.DataFrame | None, fields: np.ndarray, rings: np.ndarray) -> bytes:
    """Snapshot bytes (the current version) for a configuration and its keys' history."""
    if keys is None or keys.height == 0:
        table, rings = pl.DataFrame(), np.zeros(0)
    else:
        history = pl.Series("fields", fields.reshape(-1)).reshape(fields.shape)
        table = keys.with_columns(history)
    buf = io.BytesIO()
    table.write_ipc(buf, compression="uncompressed")
    ipc = buf.getvalue()
    header = {**config, "fields": list(HISTORY_FIELDS), "slot": list(SLOT), "table_bytes": len(ipc)}
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
    if version not in (1, 2, SNAPSHOT_VERSION):
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
    if table.width == 0:
        return SavedState(config, None, np.zeros((0, len(HISTORY_FIELDS))), np.zeros(0))
    if version == 1:
        column, width = "state", 2 * ring + len(_V1_LAYOUT) - 1
    else:
        column, width = "fields", len(HISTORY_FIELDS)
    if table.columns != [*keys, column] or table.schema[column] != pl.Array(pl.Float64, width):
        raise AnalyticsSnapshotError(f"snapshot table has unexpected columns {table.schema}")
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
    return SavedState(config, table.select(keys), fields, rings)
