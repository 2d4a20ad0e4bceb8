"""Duplicate deliveries: an event put twice with the same producer `event_id` counts once.

A producer that retries a PutRecords after a timeout (or a dead-letter re-drive run twice) can put the
same event twice. `SeenIds` remembers, per shard, the producer-supplied ids that arrived within a
horizon (`ETL_DEDUPE_HORIZON_S`, by arrival time) and drops a later delivery of one of them before the
analytics, so it is neither a second row in the lake nor a second point in the rolling windows; the
batch counts it (`duplicates`, the DuplicateEvents metric). Events without a producer id carry the id
derived from their stream position, which no other record has, so they are never remembered.

The ids are kept as 16-byte BLAKE2b digests (a collision is as likely as guessing a random 128-bit
key) with their arrival time, and are committed with the analytics state, so a retry or the next
worker drops exactly what this one would have. Duplicates are recognised within a shard: the
partition key (the user) routes both deliveries to the same shard unless the stream was resharded
between them; a child shard starts from the union of its parents' ids.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable

import numpy as np
import polars as pl

from etl_platform.events import derive_event_id

_ENTRY = struct.Struct("<16sd")  # digest, arrival (epoch seconds)
_ENTRY_DTYPE = np.dtype([("digest", "V16"), ("arrival", "<f8")])  # the same record, packed
_MAGIC = b"ETLIDS1\x00"


def _digest(event_id: str) -> bytes:
    return hashlib.blake2b(event_id.encode("utf-8"), digest_size=16).digest()


class SeenIds:
    """Producer ids seen on one shard within `horizon_s` of the newest arrival (see the module docstring)."""

    def __init__(self, horizon_s: float) -> None:
        self.horizon_s = horizon_s
        self._seen: dict[bytes, float] = {}  # in arrival order: the oldest first
        self._newest = float("-inf")

    def __len__(self) -> int:
        return len(self._seen)

    def filter(self, events: pl.DataFrame) -> tuple[pl.DataFrame, int]:
        """The events (a decoded frame) without those delivered before within the horizon, and how
        many were dropped."""
        if not events.height:
            return events, 0
        # A derived id is the SHA-1 hex of the position: only ids of that shape need the check.
        maybe_derived = events["event_id"].str.contains(r"^[0-9a-f]{40}$").to_list()
        arrivals = (events["arrival_time"].dt.epoch("us") / 1_000_000).to_list()
        dropped: list[int] = []  # row numbers of the duplicates
        seen, horizon, newest = self._seen, self.horizon_s, self._newest
        columns = [events[name].to_list() for name in ("event_id", "shard_id", "sequence_number", "sub_sequence")]
        rows = zip(columns[0], maybe_derived, *columns[1:], arrivals, strict=True)
        for row, (event_id, maybe, shard_id, sequence_number, sub_sequence, arrival) in enumerate(rows):
            if maybe and event_id == derive_event_id(shard_id, sequence_number, sub_sequence):
                continue  # no producer id: the position's, which no other record has
            digest = _digest(event_id)
            first = seen.get(digest)
            if first is not None and arrival - first <= horizon:
                dropped.append(row)
                continue
            seen.pop(digest, None)  # re-inserted last: the dict stays in arrival order
            seen[digest] = arrival
            if arrival > newest:
                newest = arrival
        self._newest = newest
        self._evict()
        if not dropped:
            return events, 0
        return events.with_row_index("_row").filter(~pl.col("_row").is_in(dropped)).drop("_row"), len(dropped)

    def _evict(self) -> None:
        cutoff = self._newest - self.horizon_s
        while self._seen:
            digest, arrival = next(iter(self._seen.items()))
            if arrival >= cutoff:
                break
            del self._seen[digest]

    def snapshot(self) -> bytes:
        """The ids and arrivals as `_ENTRY` records after `_MAGIC`, oldest first (built column-wise:
        a horizon holds tens of thousands of ids, and this runs at every commit)."""
        entries = np.empty(len(self._seen), dtype=_ENTRY_DTYPE)
        entries["digest"] = np.frombuffer(b"".join(self._seen), dtype="V16")
        entries["arrival"] = np.fromiter(self._seen.values(), dtype="<f8", count=len(self._seen))
        return _MAGIC + entries.tobytes()

    @classmethod
    def restore(cls, blob: bytes, horizon_s: float) -> SeenIds:
        if not blob.startswith(_MAGIC):
            raise ValueError("not a SeenIds snapshot")
        seen = cls(horizon_s)
        body = memoryview(blob)[len(_MAGIC) :]
        for digest, arrival in _ENTRY.iter_unpack(body):
            seen._seen[bytes(digest)] = arrival
            seen._newest = max(seen._newest, arrival)
        seen._evict()
        return seen

    @classmethod
    def merge(cls, parts: Iterable[SeenIds], horizon_s: float) -> SeenIds:
        """A child shard's ids: its parents', in arrival order."""
        entries = sorted(
            ((arrival, digest) for part in parts for digest, arrival in part._seen.items()), key=lambda e: e[0]
        )
        merged = cls(horizon_s)
        for arrival, digest in entries:
            merged._seen.setdefault(digest, arrival)  # the first delivery counts
            merged._newest = max(merged._newest, arrival)
        merged._evict()
        return merged
