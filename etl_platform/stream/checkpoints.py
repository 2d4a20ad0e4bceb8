"""The analytics state behind each checkpoint, kept in the lake; and the checkpoints of older versions.

A commit writes the shard's state (the detector's snapshot and the producer ids seen lately,
`stream.dedupe`) to `_state/<stream>/<shard>/<sequence>.bin` first, then the lease item's checkpoint
points at it (`stream.leases`): the lease write is the commit point, so a crash between the two
leaves the previous checkpoint and its state in force. The superseded snapshot is deleted after the
commit. A state written before the ids were kept is the detector's snapshot alone, and still loads.

Before the lease table, checkpoints were JSON objects under `_checkpoints/<stream>/`; `legacy_checkpoints`
reads them so that a stream consumed by an older version migrates into the lease table unchanged.
"""

from __future__ import annotations

import json
import struct
from typing import Any

from etl_platform.lake import layout

_CONTAINER = b"ETLSTATE1\x00"
_LENGTH = struct.Struct("<Q")


def pack_state(analytics: bytes, seen_ids: bytes) -> bytes:
    """One shard's committed state: the analytics snapshot, then the seen producer ids."""
    return _CONTAINER + _LENGTH.pack(len(analytics)) + analytics + seen_ids


def unpack_state(blob: bytes) -> tuple[bytes, bytes | None]:
    """(analytics snapshot, seen ids or None for a state written before they were kept)."""
    if not blob.startswith(_CONTAINER):
        return blob, None
    (size,) = _LENGTH.unpack_from(blob, len(_CONTAINER))
    start = len(_CONTAINER) + _LENGTH.size
    return blob[start : start + size], blob[start + size :]


class StateStore:
    """Analytics snapshots of one stream's shards in the lake."""

    def __init__(self, s3: Any, bucket: str, stream_name: str) -> None:
        self.s3, self.bucket, self.stream_name = s3, bucket, stream_name

    def key(self, shard_id: str, sequence_number: str | None) -> str:
        return f"_state/{self.stream_name}/{shard_id}/{sequence_number or 'start'}.bin"

    def save(self, shard_id: str, sequence_number: str | None, state: bytes) -> str:
        key = self.key(shard_id, sequence_number)
        layout.put(self.s3, self.bucket, key, state)
        return key

    def load(self, key: str | None) -> bytes | None:
        return None if key is None else layout.get(self.s3, self.bucket, key)

    def discard(self, key: str | None, keep: str | None) -> None:
        """Delete a superseded snapshot (never the one in force)."""
        if key and key != keep:
            self.s3.delete_object(Bucket=self.bucket, Key=key)


def legacy_prefix(stream_name: str) -> str:
    return f"_checkpoints/{stream_name}/"


def legacy_checkpoints(s3: Any, bucket: str, stream_name: str) -> dict[str, dict[str, Any]]:
    """The lake checkpoints older versions committed, by shard id, as lease fields (`LeaseTable.sync`)."""
    found: dict[str, dict[str, Any]] = {}
    for key in layout.list_keys(s3, bucket, legacy_prefix(stream_name)):
        old = json.loads(layout.get(s3, bucket, key))
        found[old["shard_id"]] = {
            "checkpoint": old.get("sequence_number"),
            "state_key": old.get("state_key"),
            "finished": bool(old.get("finished", False)),
            "records": int(old.get("records", 0)),
            "millis_behind_latest": int(old.get("millis_behind_latest", 0)),
        }
    return found
