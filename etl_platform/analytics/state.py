"""The stream analytics engine's per-key state: the fields and ring arena of analytics_kernel, in numpy.

It grows with capacity to spare (growth changes no state), and moves in and out as *history*: per key
the fields of ``HISTORY_FIELDS`` and the ring floats in use (``ring_floats(n)`` of them, in slot
order), keys in key-id order. History is what snapshots store and merges combine; where the rings
lie in the arena is not part of it, so a loaded state packs them afresh.
"""

from __future__ import annotations

import numpy as np

from etl_platform.analytics.kernel import (
    FIELDS,
    HISTORY_FIELDS,
    advance,
    arena_headroom,
    ring_capacity,
    ring_floats,
)

__all__ = ["KeyState", "ranges", "starts"]

_NF = len(FIELDS)
_N, _AT = FIELDS.index("n"), FIELDS.index("ring_at")


def starts(lengths: np.ndarray) -> np.ndarray:
    """Where each of consecutive pieces of these lengths starts (0, then running sums)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    return np.cumsum(lengths) - lengths


def ranges(first: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The indices ``first[i] .. first[i] + lengths[i] - 1``, concatenated in order."""
    lengths = np.asarray(lengths, dtype=np.int64)
    return np.repeat(np.asarray(first, dtype=np.int64) - starts(lengths), lengths) + np.arange(int(lengths.sum()))


def _new_arena(size: int) -> np.ndarray:
    """Uninitialised: the kernel writes every ring slot before it reads it, and pages never touched
    cost nothing, so generous headroom is free and growth copies rarely."""
    return np.empty(size)


class KeyState:
    """Per-key state for key ids ``0 .. keys - 1`` of a detector whose ring holds ``ring`` positions."""

    def __init__(self, ring: int) -> None:
        self.ring = ring
        self.keys = 0  # key ids with state
        self._fields = np.zeros(0)
        self._arena = np.zeros(0)
        self._used = np.zeros(1, dtype=np.int64)  # arena float64 in use (the kernel advances it)

    def nbytes(self) -> int:
        """Bytes of state in use: the keys' fields and their rings."""
        return (self.keys * _NF + int(self._used[0])) * 8

    def reserve(self, keys: int, rows: int) -> None:
        """Room for ``keys`` key ids and a batch of ``rows`` rows (capacity only: no state changes)."""
        have = len(self._fields) // _NF
        if keys > have:  # spare rows stay untouched (and cost no memory) until keys arrive
            grown = np.empty(max(keys, 2 * have, 1024) * _NF)
            grown[: self.keys * _NF] = self._fields[: self.keys * _NF]
            self._fields = grown
        if keys > self.keys:
            fresh = self._fields[self.keys * _NF : keys * _NF].reshape(-1, _NF)
            fresh[:] = 0.0
            fresh[:, _AT] = -1.0  # no ring yet
        need = int(self._used[0]) + arena_headroom(rows, self.ring)
        if need > len(self._arena):
            arena = _new_arena(max(need, 4 * len(self._arena)))
            arena[: int(self._used[0])] = self._arena[: int(self._used[0])]
            self._arena = arena

    def advance(
        self,
        kids: np.ndarray,
        xs: np.ndarray,
        keys: int,
        block: int,
        avg_rows: int,
        baseline_rows: int,
        sigmas: float,
        avg_out: np.ndarray,
        anomaly_out: np.ndarray,
    ) -> None:
        """Run the kernel over a batch whose key ids are below ``keys`` (those become the state's keys)."""
        self.reserve(keys, len(kids))
        advance(
            kids,
            xs,
            self._fields,
            self._arena,
            self._used,
            self.ring,
            block,
            avg_rows,
            baseline_rows,
            sigmas,
            avg_out,
            anomaly_out,
        )
        self.keys = max(self.keys, keys)

    def history(self, kids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The keys' ``HISTORY_FIELDS`` (one row per key) and their ring floats in use, concatenated;
        of the key ids ``kids`` only (in that order) if given, at a cost in those keys alone."""
        fields = self._fields[: self.keys * _NF].reshape(self.keys, _NF)
        if kids is not None:
            fields = fields[np.asarray(kids, dtype=np.int64)]
        used = ring_floats(fields[:, _N].astype(np.int64), self.ring)
        rings = self._arena[ranges(fields[:, _AT].astype(np.int64), used)]
        return fields[:, : len(HISTORY_FIELDS)].copy(), rings

    @classmethod
    def load(cls, ring: int, fields: np.ndarray, rings: np.ndarray) -> KeyState:
        """A state holding this history (as :meth:`history` gives it); ValueError if it does not fit."""
        fields = np.asarray(fields, dtype=np.float64)
        if fields.ndim != 2 or fields.shape[1] != len(HISTORY_FIELDS):
            raise ValueError(f"history fields must be a (keys, {len(HISTORY_FIELDS)}) array, got {fields.shape}")
        n = fields[:, _N]
        if not (np.isfinite(n).all() and (n >= 1).all() and (n == np.floor(n)).all()):
            raise ValueError("history row counts must be whole numbers >= 1")
        n = n.astype(np.int64)
        used, capacity = ring_floats(n, ring), ring_capacity(n, ring)
        if len(rings) != int(used.sum()):
            raise ValueError(f"history holds {len(rings)} ring floats, its row counts need {int(used.sum())}")
        state = cls(ring)
        state.reserve(len(fields), 0)
        at = starts(capacity)
        state._arena = np.zeros(int(capacity.sum()))  # rings packed in key order, each small while it fits
        state._used[0] = len(state._arena)
        table = state._fields[: len(fields) * _NF].reshape(len(fields), _NF)
        table[:, : len(HISTORY_FIELDS)] = fields
        table[:, _AT] = at
        state._arena[ranges(at, used)] = rings
        state.keys = len(fields)
        return state
