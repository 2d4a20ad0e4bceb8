"""Dense ids for a stream's key tuples: each distinct key gets 0, 1, 2, ... in first-seen order.

A batch's key rows are hashed by Polars (``hash_rows``, 64 bits) and looked up in an open-addressing
table by a compiled loop (:func:`etl_platform.analytics_kernel.index_keys`); unseen hashes are
inserted with the next ids. With the check below, that costs under half of a join with the table of
known keys (0.7-0.9 ms against 1.8-2 ms for a 10,000-row batch of 10,000 known keys).

64-bit hashes can collide (about K**2 / 2**65 likely for K keys), so the caller verifies every
lookup against the real keys (:meth:`KeyIndex.verify`) and, should two keys ever share a hash,
drops the index and falls back to an exact join.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from etl_platform.analytics.kernel import index_keys

__all__ = ["KeyIndex", "row_hashes"]

_MIN_SLOTS = 1024


def row_hashes(keys: pl.DataFrame) -> np.ndarray:
    """Each key row's 64-bit hash (Polars' ``hash_rows``: nulls hash alike, -0.0 as 0.0), as int64."""
    return keys.hash_rows().to_numpy().view(np.int64)


class KeyIndex:
    """Hash of each key tuple -> its id; ids are dense and follow first appearance."""

    def __init__(self) -> None:
        self._count = 0  # ids given out
        self._slot_hash = np.zeros(_MIN_SLOTS, dtype=np.int64)
        self._slot_id = np.full(_MIN_SLOTS, -1, dtype=np.int64)  # -1: empty slot

    def __len__(self) -> int:
        return self._count

    @staticmethod
    def supports(schema: pl.Schema) -> bool:
        """Whether key columns of these dtypes can be hashed (all-null columns carry no dtype yet)."""
        return all(dtype not in (pl.Null, pl.Object) for dtype in schema.dtypes())

    @classmethod
    def build(cls, keys: pl.DataFrame) -> KeyIndex | None:
        """An index holding ``keys`` (distinct key rows) with ids 0..n-1; None if two share a hash."""
        index = cls()
        ids, new_rows = index.assign(keys)
        return index if len(new_rows) == keys.height else None

    def assign(self, keys: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Each row's id, numbering unseen hashes in order of appearance; and the rows that were new.

        The index keeps the new hashes; the caller keeps the key rows (``keys[new_rows]`` get ids
        ``len(self) - len(new_rows)`` onwards, in order).
        """
        n = keys.height
        hashes = row_hashes(keys)
        self._reserve(self._count + n)
        ids = np.empty(n, dtype=np.int64)
        new_rows = np.empty(n, dtype=np.int64)
        added = index_keys(hashes, self._slot_hash, self._slot_id, self._count, ids, new_rows)
        self._count += added
        return ids, new_rows[:added]

    @staticmethod
    def verify(keys: pl.DataFrame, ids: np.ndarray, table: pl.DataFrame, new_rows: np.ndarray | None = None) -> bool:
        """Whether every row of ``keys`` equals row ``ids[i]`` of ``table`` (nulls equal): no collision.

        With ``new_rows`` (from :meth:`assign`; ``table`` then holds only the keys known before the
        batch), a row whose id is new is compared with the batch row that introduced it, which is
        what the table gets as that id's key: the same check, without reading a large table at
        random for keys the batch itself holds (most of a high-cardinality batch).
        """
        if new_rows is None or not len(new_rows) or keys.schema != table.schema:
            grown = table if new_rows is None or not len(new_rows) else pl.concat([table, keys[new_rows]])
            return grown[ids].equals(keys, null_equal=True)
        known = table.height
        at = ids.copy()
        new = ids >= known
        at[new] = known + new_rows[ids[new] - known]
        return pl.concat([table, keys], how="vertical", rechunk=False)[at].equals(keys, null_equal=True)

    def _reserve(self, count: int) -> None:
        """Keep the table at most half full for ``count`` keys (short probe runs), rehashing on growth."""
        slots = len(self._slot_id)
        if 2 * count <= slots:
            return
        while 2 * count > slots:
            slots *= 2
        held = self._slot_id >= 0
        by_id = np.empty(self._count, dtype=np.int64)
        by_id[self._slot_id[held]] = self._slot_hash[held]
        self._slot_hash = np.zeros(slots, dtype=np.int64)
        self._slot_id = np.full(slots, -1, dtype=np.int64)
        ids, new_rows = np.empty(self._count, dtype=np.int64), np.empty(self._count, dtype=np.int64)
        # The held hashes are distinct, so reinserting them in id order gives each its old id back.
        index_keys(by_id, self._slot_hash, self._slot_id, 0, ids, new_rows)
