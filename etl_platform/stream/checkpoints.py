"""The analytics state behind each checkpoint, kept in the lake; and the checkpoints of older versions.

A commit writes the shard's state first, then the lease item's checkpoint points at it
(`stream.leases`): the lease write of `state_key` is the commit point, so a crash anywhere before it
leaves the previous checkpoint and its state in force, and a retry from there (with any batch size)
rebuilds bit-identical analytics. Objects the new state no longer refers to are deleted only after
the commit (`StateStore.discard_superseded`).

The state is a *chain* (`StateStore.save_commit`), so that a commit costs what its batch touched,
not what the shard holds:

- a *base*: the detector's full snapshot, `_state/<stream>/<shard>/<generation>-<seq>.base`;
- *deltas*: the keys touched since the previous commit (`RollingAnomalyDetector.delta_snapshot`),
  `<generation>-<seq>.delta`, in order;
- the *manifest*, `<generation>-<seq>.bin`, which the lease's `state_key` names: the chain (base,
  deltas and their sizes) packed with the producer ids seen lately (`pack_state`, `stream.dedupe`).

Restoring loads the base and applies the deltas in order (`RollingAnomalyDetector.restore_chain`).
When the deltas together outgrow the base (or number `MAX_DELTAS`), the commit writes a new base
instead. The generation counts the commits of the chain's lineage, so a new commit's objects never
share a name with the chain in force (a commit at an unchanged checkpoint, e.g. a closed shard's
final empty flush, included); a retry of a crashed attempt overwrites or orphans only objects no
committed chain refers to, and orphans are swept when a new base is committed.

A state written before chains is one object, `<seq>.bin`: the detector's snapshot packed with the
seen ids (`pack_state`), or the snapshot alone (before the ids were kept). Both still load, and the
first commit after them writes a base.

Before the lease table, checkpoints were JSON objects under `_checkpoints/<stream>/`; `legacy_checkpoints`
reads them so that a stream consumed by an older version migrates into the lease table unchanged.
"""

from __future__ import annotations

import json
import re
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from etl_platform.analytics import RollingAnomalyDetector
from etl_platform.lake import layout

_CONTAINER = b"ETLSTATE1\x00"
_LENGTH = struct.Struct("<Q")
_CHAIN = b"ETLCHAIN1\x00"
# A chain is compacted into a new base at this many deltas: a restore gets them all (in parallel), and
# a base every MAX_DELTAS commits adds base_bytes / MAX_DELTAS to each commit's cost at worst.
MAX_DELTAS = 128
_FETCHERS = 16  # parallel GETs of a chain's deltas
_CHAIN_OBJECT = re.compile(r"^(\d{10})-.*\.(bin|base|delta)$")


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


@dataclass(frozen=True)
class Chain:
    """A committed state's objects: a base snapshot and the deltas after it, in order."""

    generation: int
    base: str
    base_bytes: int
    deltas: tuple[str, ...] = ()
    delta_bytes: int = 0

    def encode(self) -> bytes:
        body = {
            "generation": self.generation,
            "base": self.base,
            "base_bytes": self.base_bytes,
            "deltas": list(self.deltas),
            "delta_bytes": self.delta_bytes,
        }
        return _CHAIN + json.dumps(body, sort_keys=True).encode()

    @classmethod
    def decode(cls, blob: bytes) -> Chain | None:
        """The chain in a manifest's analytics part; None for a snapshot (a state written before chains)."""
        if not blob.startswith(_CHAIN):
            return None
        body = json.loads(blob[len(_CHAIN) :])
        return cls(
            int(body["generation"]),
            body["base"],
            int(body["base_bytes"]),
            tuple(body["deltas"]),
            int(body["delta_bytes"]),
        )

    def objects(self) -> set[str]:
        return {self.base, *self.deltas}


@dataclass(frozen=True)
class SavedState:
    """What one `save_commit` wrote: the manifest's key, and the bytes of the snapshot it wrote (a base
    or a delta) and of the manifest."""

    key: str
    kind: str  # "base" | "delta"
    snapshot_bytes: int
    manifest_bytes: int


class StateStore:
    """The committed analytics states of one stream's shards in the lake (see the module docstring)."""

    def __init__(self, s3: Any, bucket: str, stream_name: str, max_deltas: int = MAX_DELTAS) -> None:
        self.s3, self.bucket, self.stream_name = s3, bucket, stream_name
        self.max_deltas = max_deltas
        self._chains: dict[str, Chain | None] = {}  # state_key -> its chain (None: a pre-chain state)
        self.bytes_written = 0  # state bytes put by this store (metrics, benchmarks)
        self.last_saved: SavedState | None = None  # what the latest save_commit wrote (BatchResult.state_bytes)

    def prefix(self, shard_id: str) -> str:
        return f"_state/{self.stream_name}/{shard_id}/"

    def key(self, shard_id: str, sequence_number: str | None) -> str:
        """A pre-chain state's key (`save`)."""
        return f"{self.prefix(shard_id)}{sequence_number or 'start'}.bin"

    def _put(self, key: str, body: bytes) -> None:
        layout.put(self.s3, self.bucket, key, body)
        self.bytes_written += len(body)

    # --- chains -------------------------------------------------------------------------------------
    def save_commit(
        self,
        shard_id: str,
        checkpoint: str | None,
        detector: RollingAnomalyDetector,
        seen_ids: bytes,
        previous_state_key: str | None,
    ) -> str:
        """Write the state at `checkpoint` (the detector's, and the seen ids) as a new chain after the
        one `previous_state_key` names, and return its key for the lease commit. Nothing the previous
        chain refers to is touched. The delta holds the keys touched since `detector.mark_saved()`
        (`discard_superseded` calls it after the commit), so the detector must be the one restored
        from `previous_state_key` and advanced since; with no previous chain, it writes a base.
        `last_saved` then tells what it wrote."""
        previous = self.chain(previous_state_key)
        generation = previous.generation + 1 if previous else 1
        name = f"{self.prefix(shard_id)}{generation:010d}-{checkpoint or 'start'}"
        chain: Chain | None = None
        kind, snapshot_bytes = "delta", 0
        if previous is not None and len(previous.deltas) < self.max_deltas:
            delta = detector.delta_snapshot()
            if previous.delta_bytes + len(delta) <= previous.base_bytes:
                self._put(f"{name}.delta", delta)
                snapshot_bytes = len(delta)
                chain = Chain(
                    generation,
                    previous.base,
                    previous.base_bytes,
                    (*previous.deltas, f"{name}.delta"),
                    previous.delta_bytes + len(delta),
                )
        if chain is None:  # the first commit, or the deltas would outgrow the base: a new base
            base = detector.snapshot()
            self._put(f"{name}.base", base)
            chain = Chain(generation, f"{name}.base", len(base))
            kind, snapshot_bytes = "base", len(base)
        key = f"{name}.bin"
        manifest = pack_state(chain.encode(), seen_ids)
        self._put(key, manifest)
        self._chains[key] = chain
        self.last_saved = SavedState(key, kind, snapshot_bytes, len(manifest))
        return key

    def chain(self, state_key: str | None) -> Chain | None:
        """The chain a state key names; None for none or a state written before chains."""
        if state_key is None:
            return None
        if state_key not in self._chains:
            analytics, _ = unpack_state(layout.get(self.s3, self.bucket, state_key))
            self._chains[state_key] = Chain.decode(analytics)
        return self._chains[state_key]

    def load_state(self, state_key: str | None) -> tuple[RollingAnomalyDetector | None, bytes | None]:
        """(the detector, the seen ids or None if the state predates them) of a committed state, of
        any version; (None, None) for no state."""
        if state_key is None:
            return None, None
        analytics, seen_ids = unpack_state(layout.get(self.s3, self.bucket, state_key))
        chain = Chain.decode(analytics)
        self._chains[state_key] = chain
        if chain is None:
            return RollingAnomalyDetector.restore(analytics), seen_ids

        def get(key: str) -> bytes:
            return layout.get(self.s3, self.bucket, key)

        with ThreadPoolExecutor(max_workers=min(_FETCHERS, 1 + len(chain.deltas))) as pool:
            blobs = list(pool.map(get, [chain.base, *chain.deltas]))
        return RollingAnomalyDetector.restore_chain(blobs[0], blobs[1:]), seen_ids

    def discard_superseded(
        self, previous: str | None, current: str, detector: RollingAnomalyDetector | None = None
    ) -> None:
        """After the lease committed `current`: the detector's touched keys are in the committed chain
        (`mark_saved`), and the objects of `previous` that `current` does not use are deleted. A new
        base also sweeps this shard's chain objects of earlier generations that `current` does not use
        (left by attempts that crashed before their commit); later generations (another worker's
        attempt after this one) are never touched."""
        if detector is not None:
            detector.mark_saved()
        now = self.chain(current)
        keep = {current, *(now.objects() if now else ())}
        doomed: set[str] = set()
        if previous is not None and previous != current:
            before = self.chain(previous)
            doomed |= ({previous, *(before.objects() if before else ())}) - keep
            self._chains.pop(previous, None)
        if now is not None and not now.deltas:
            shard_prefix = current[: current.rindex("/") + 1]
            for key in layout.list_keys(self.s3, self.bucket, shard_prefix):
                found = _CHAIN_OBJECT.match(key[len(shard_prefix) :])
                if found and int(found.group(1)) <= now.generation and key not in keep:
                    doomed.add(key)
        for key in sorted(doomed):
            self.s3.delete_object(Bucket=self.bucket, Key=key)

    # --- single-object states (before chains; still used by callers that pack their own) ---------
    def save(self, shard_id: str, sequence_number: str | None, state: bytes) -> str:
        key = self.key(shard_id, sequence_number)
        self._put(key, state)
        return key

    def load(self, key: str | None) -> bytes | None:
        """A state as one `pack_state` blob (a chain is rebuilt into its full snapshot)."""
        if key is None:
            return None
        blob = layout.get(self.s3, self.bucket, key)
        analytics, seen_ids = unpack_state(blob)
        if not analytics.startswith(_CHAIN):
            return blob
        detector, _ = self.load_state(key)
        assert detector is not None
        return pack_state(detector.snapshot(), seen_ids or b"")


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
