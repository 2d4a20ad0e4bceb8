"""Shard discovery and lineage: which shards may be read now, and in what order.

A child shard is read only after every parent (one for a split, two for a merge) is fully consumed,
so each key's events are seen in stream order across resharding. Closure is detected by the presence
of `EndingSequenceNumber` (never its value: emulators report 2^63-1 for every closed shard).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Shard:
    shard_id: str
    parents: tuple[str, ...]
    closed: bool
    starting_sequence_number: str
    hash_key_range: tuple[int, int]

    @classmethod
    def from_api(cls, raw: Mapping[str, Any]) -> Shard:
        parents = tuple(p for p in (raw.get("ParentShardId"), raw.get("AdjacentParentShardId")) if p)
        seq = raw["SequenceNumberRange"]
        keys = raw["HashKeyRange"]
        return cls(
            shard_id=raw["ShardId"],
            parents=parents,
            closed="EndingSequenceNumber" in seq,
            starting_sequence_number=seq["StartingSequenceNumber"],
            hash_key_range=(int(keys["StartingHashKey"]), int(keys["EndingHashKey"])),
        )


def list_shards(kinesis: Any, stream_name: str) -> list[Shard]:
    """Every shard the stream still retains, open and closed."""
    shards: list[Shard] = []
    kwargs: dict[str, Any] = {"StreamName": stream_name}
    while True:
        resp = kinesis.list_shards(**kwargs)
        shards += [Shard.from_api(s) for s in resp["Shards"]]
        token = resp.get("NextToken")
        if not token:
            return shards
        kwargs = {"NextToken": token}


def lineage_order(shards: Iterable[Shard]) -> list[Shard]:
    """Shards sorted so every parent comes before its children (ties by shard id, for stability)."""
    by_id = {s.shard_id: s for s in shards}
    ordered: list[Shard] = []
    seen: set[str] = set()

    def visit(shard: Shard) -> None:
        if shard.shard_id in seen:
            return
        seen.add(shard.shard_id)
        for parent in shard.parents:
            if parent in by_id:
                visit(by_id[parent])
        ordered.append(shard)

    for shard in sorted(by_id.values(), key=lambda s: s.shard_id):
        visit(shard)
    return ordered


def readable_shards(shards: Iterable[Shard], finished: set[str]) -> list[Shard]:
    """Shards that may be read now: not yet finished, with every retained parent finished.

    A parent missing from the listing has aged out of retention, so nothing of it can be read and
    it does not block its children.
    """
    shards = list(shards)
    retained = {s.shard_id for s in shards}
    return [
        s
        for s in lineage_order(shards)
        if s.shard_id not in finished and all(p in finished or p not in retained for p in s.parents)
    ]


def shard_depths(shards: list[Shard]) -> dict[str, int]:
    """Generation of each shard: 0 for the original ones, 1 + deepest parent otherwise."""
    depth: dict[str, int] = {}
    for shard in lineage_order(shards):
        depth[shard.shard_id] = 1 + max((depth[p] for p in shard.parents if p in depth), default=-1)
    return depth


def hash_key(partition_key: str) -> int:
    """The 128-bit hash Kinesis routes a partition key by (MD5, big-endian)."""
    import hashlib

    return int.from_bytes(hashlib.md5(partition_key.encode("utf-8")).digest(), "big")
