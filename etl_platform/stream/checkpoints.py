"""Per-shard consumer checkpoints, committed together with the analytics state.

The commit is two S3 writes: the state snapshot to a key named by the checkpoint's sequence number,
then the checkpoint JSON that points at it. A single-object PUT is atomic, so the checkpoint JSON is
the commit point: a crash before it leaves the previous checkpoint (and its state) in force, and the
retried batch re-reads from there. Checkpoints hold sequence numbers, never shard iterators (those
expire after five minutes).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from etl_platform.lake import layout


@dataclass(frozen=True)
class Checkpoint:
    shard_id: str
    sequence_number: str | None = None  # last record consumed; None = nothing yet (TRIM_HORIZON)
    finished: bool = False  # a closed shard read to its end: its children may start
    state_key: str | None = None  # lake key of the analytics snapshot taken at this checkpoint
    records: int = 0  # records consumed from this shard so far (valid + rejected)
    more_available: bool = False  # the last batch stopped at its size cap: launch the next one now
    millis_behind_latest: int = 0
    committed_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())


class CheckpointStore:
    def __init__(self, s3: Any, bucket: str, stream_name: str) -> None:
        self.s3, self.bucket, self.stream_name = s3, bucket, stream_name
        self.prefix = f"_checkpoints/{stream_name}/"

    def _key(self, shard_id: str) -> str:
        return f"{self.prefix}{shard_id}.json"

    def load(self, shard_id: str) -> Checkpoint | None:
        try:
            body = layout.get(self.s3, self.bucket, self._key(shard_id))
        except self.s3.exceptions.NoSuchKey:
            return None
        return Checkpoint(**json.loads(body))

    def load_all(self) -> dict[str, Checkpoint]:
        found = {}
        for key in layout.list_keys(self.s3, self.bucket, self.prefix):
            cp = Checkpoint(**json.loads(layout.get(self.s3, self.bucket, key)))
            found[cp.shard_id] = cp
        return found

    def load_state(self, checkpoint: Checkpoint | None) -> bytes | None:
        if checkpoint is None or checkpoint.state_key is None:
            return None
        return layout.get(self.s3, self.bucket, checkpoint.state_key)

    def commit(self, checkpoint: Checkpoint, state: bytes, previous: Checkpoint | None = None) -> Checkpoint:
        """Write the state, then the checkpoint (the commit point); then drop the superseded state."""
        state_key = f"_state/{self.stream_name}/{checkpoint.shard_id}/{checkpoint.sequence_number or 'start'}.bin"
        layout.put(self.s3, self.bucket, state_key, state)
        committed = Checkpoint(**{**asdict(checkpoint), "state_key": state_key})
        layout.put(self.s3, self.bucket, self._key(checkpoint.shard_id), json.dumps(asdict(committed)).encode())
        if previous is not None and previous.state_key and previous.state_key != state_key:
            self.s3.delete_object(Bucket=self.bucket, Key=previous.state_key)
        return committed

    def reset(self) -> None:
        """Forget every checkpoint and state of this stream (tests, and replays from scratch)."""
        for prefix in (self.prefix, f"_state/{self.stream_name}/"):
            for key in layout.list_keys(self.s3, self.bucket, prefix):
                self.s3.delete_object(Bucket=self.bucket, Key=key)
