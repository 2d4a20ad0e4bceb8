"""The stream analytics engine: the seed's two Kinesis Analytics windows, computed incrementally.

Semantics (docs/architecture.md, "Stream analytics semantics"), per key, rows in arrival order
(row order across batches = ROWTIME):

* ``avg_value`` = AVG(value) over ``ROWS BETWEEN avg_rows PRECEDING AND CURRENT ROW``;
* ``anomaly_status`` = ``'ANOMALY'`` iff ``|value - AVG(prev)| > sigmas * STDDEV_SAMP(prev)`` where
  ``prev`` is ``ROWS BETWEEN baseline_rows PRECEDING AND 1 PRECEDING``; fewer than two baseline rows
  give NULL statistics and therefore ``'NORMAL'``, as in SQL.

The result is bit-for-bit the same however the stream is cut into micro-batches and wherever it is
snapshotted and restored, and exact for any finite values: ``avg_value`` within 2**-36 (1.5e-11)
relative of the exact mean, ``anomaly_status`` as exact arithmetic decides it (save a value within
~``baseline_rows`` ulps of the band's edge). That holds for 1e9-magnitude and constant series, and
for wild values: a stray 1e15 (an epoch-millisecond timestamp sent as the value), a jump to another
level, subnormals, +/-1.7e308.

Where DuckDB running the seed SQL (tests/unit/analytics_reference.py) gives out, the engine gives
what exact arithmetic gives (``exact_reference`` there), because float64 overflow in an intermediate
is an artefact, not an answer:

* a baseline whose squared deviations overflow (a value ~1.3e154 or more away from the others):
  DuckDB's STDDEV_SAMP raises "out of range" and the whole query fails; the engine decides exactly;
* an avg window whose plain sum overflows (values near +/-1.8e308): DuckDB's AVG is +/-inf; the
  engine gives the finite mean;
* huge values that cancel within an avg window (1e16, 1, -1e16): DuckDB's AVG loses what they leave
  (0.0); the engine's mean is exact but for its final rounding (1/3);
* values that differ by a few ulps (1e9 +/- 1e-6): the baseline's mean is not a double, and DuckDB's
  rounded AVG tips rows near the band's edge; the engine compares the exact ``|value - mean|``.

Where squares underflow instead (a series whose spread is below ~1e-154, e.g. values ~1e-300), the
sample variance is 0 in float64 for DuckDB and for the engine alike, and both flag any value that
differs from the mean; exact arithmetic would see the spread.

How it stays fast and exact
---------------------------
Polars does the batch-level work (validation, hashing the key rows and checking the key lookup, the
output columns). Two compiled loops (numba, :mod:`etl_platform.analytics.kernel`) do the per-row work:
one numbers each row's key through a hash table (:mod:`etl_platform.analytics.key_index`; every answer is checked
against the real keys, and an exact join takes over should two keys share a 64-bit hash), the other
advances each row's key in arrival order in O(1): windows come from block-local prefix sums around a
per-block pivot, kept with the values for the last ``max(avg_rows, baseline_rows) + 1`` positions of
each key (a key seen a few times keeps a small ring; the kernel's docstring has the layout), and it
prefetches the state of the rows ahead of it. A window whose prefix sums a wild value has made
imprecise (a rounding-error bound checked per window) is recomputed from those values instead.
:mod:`etl_platform.analytics.state` holds that state in numpy. So a batch costs O(rows), never
O(keys touched x window), and memory is bounded by keys x window whatever the stream length.

Resharding and commits
----------------------
Each key remembers its *route*: the 128-bit Kinesis hash key (MD5 of the partition key, as
``stream.shards.hash_key``) of the last row that advanced it, taken from the batch's
``partition_key`` column when it has one. :meth:`RollingAnomalyDetector.merge` with a hash-key range
keeps only the keys routed into it, so a child shard holds its own keys, not its parent's whole
state. This assumes one key's events all go to one shard: the partition key is a function of the
analytics key (by default it is the user id, and the key is (user_id, event_type)) and producers set
no ExplicitHashKey. A key whose route is unknown (a snapshot older than version 4, or rows without a
partition key) is kept by every child, as before. The detector also tracks the keys touched since
:meth:`mark_saved`; :meth:`delta_snapshot` holds those alone, and :meth:`restore_chain` rebuilds the
state from a full snapshot and the deltas taken after it, bit for bit.

Input rules: the key columns and ``value`` must be present; ``value`` must be numeric, non-null and
finite (NaN and +/-inf are rejected: they have no meaningful rolling statistics and would poison
every window they enter). Null keys are allowed and form their own partition, as SQL ``PARTITION BY``
does.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from etl_platform.analytics import snapshot as snapshot_format
from etl_platform.analytics.errors import (
    AnalyticsConfigError,
    AnalyticsError,
    AnalyticsInputError,
    AnalyticsSnapshotError,
)
from etl_platform.analytics.kernel import HISTORY_FIELDS, block_size, ring_floats
from etl_platform.analytics.key_index import KeyIndex
from etl_platform.analytics.snapshot import SavedState
from etl_platform.analytics.state import KeyState, ranges, starts

if TYPE_CHECKING:
    from polars._typing import ColumnNameOrSelector, PolarsDataType

VALUE = "value"
AVG_VALUE = "avg_value"
ANOMALY_STATUS = "anomaly_status"
PARTITION_KEY = "partition_key"  # the column a key's route is taken from (see the module docstring)


_MAX_KEY_CHUNKS = 8  # the key table is gathered from on every batch, and gathers slow down with its chunks


def route_parts(hash_key: int) -> tuple[int, int]:
    """A 128-bit hash key as the (high, low) 64-bit halves routes are kept in."""
    return hash_key >> 64, hash_key & (2**64 - 1)


def _in_range(routes: np.ndarray, first: int, last: int) -> np.ndarray:
    """Whether each (high, low) route lies in the hash-key range [first, last]."""
    (fh, fl), (lh, ll) = route_parts(first), route_parts(last)
    hi, lo = routes[:, 0], routes[:, 1]
    fh_, fl_, lh_, ll_ = np.uint64(fh), np.uint64(fl), np.uint64(lh), np.uint64(ll)
    above = (hi > fh_) | ((hi == fh_) & (lo >= fl_))
    below = (hi < lh_) | ((hi == lh_) & (lo <= ll_))
    return above & below


def _detached(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` with its strings copied out of the buffers they share with the batch they came from.

    A gather of string rows keeps pointing into the batch's whole string buffer, so a key table
    built from gathers would keep every batch that brought a new key alive.
    """

    def copied(col: pl.Series) -> pl.Series:
        if col.dtype == pl.String:
            return col + ""  # builds new strings (pyarrow would too, but its import is slow)
        if col.dtype == pl.Binary:
            return pl.Series(col.name, col.to_list(), dtype=pl.Binary)
        return col

    return pl.DataFrame([copied(col) for col in frame.get_columns()])


class RollingAnomalyDetector:
    """Incremental per-key rolling average and sigma-band anomaly detection over a stream."""

    def __init__(
        self,
        avg_rows: int = 10,
        baseline_rows: int = 100,
        sigmas: float = 3.0,
        keys: Sequence[str] = ("user_id", "event_type"),
        value: str = VALUE,
    ) -> None:
        if isinstance(avg_rows, bool) or not isinstance(avg_rows, int) or avg_rows < 0:
            raise AnalyticsConfigError(f"avg_rows must be an integer >= 0, got {avg_rows!r}")
        if isinstance(baseline_rows, bool) or not isinstance(baseline_rows, int) or baseline_rows < 2:
            raise AnalyticsConfigError(
                f"baseline_rows must be an integer >= 2 (STDDEV_SAMP needs two rows), got {baseline_rows!r}"
            )
        if isinstance(sigmas, bool) or not isinstance(sigmas, int | float) or not math.isfinite(sigmas) or sigmas <= 0:
            raise AnalyticsConfigError(f"sigmas must be a finite number > 0, got {sigmas!r}")
        if isinstance(keys, str):
            raise AnalyticsConfigError(f"keys must be a sequence of column names, not the string {keys!r}")
        keys = tuple(keys)
        if not keys:
            raise AnalyticsConfigError("keys must name at least one column")
        if not all(isinstance(k, str) and k for k in keys):
            raise AnalyticsConfigError(f"keys must be non-empty column names, got {keys!r}")
        if len(set(keys)) != len(keys):
            raise AnalyticsConfigError(f"keys must not repeat a column, got {keys!r}")
        if not isinstance(value, str) or not value:
            raise AnalyticsConfigError(f"value must be a column name, got {value!r}")
        if value in keys or "__kid" in keys:
            raise AnalyticsConfigError(f"keys must not include the {value!r} column (or the reserved '__kid')")
        self.value = value
        self.avg_rows = avg_rows
        self.baseline_rows = baseline_rows
        self.sigmas = float(sigmas)
        self.keys = keys
        self._ring = max(avg_rows, baseline_rows) + 1
        self._block = block_size(self._ring)
        self._keytab: pl.DataFrame | None = None  # key columns + "__kid"; row i has kid i
        self._nkeys = 0
        self._state = KeyState(self._ring)  # per key id: the kernel's fields and ring
        self._index: KeyIndex | None = None  # key hash -> key id; rebuilt from _keytab when stale
        self._hash_collision = False  # two keys share a hash: the exact join does every lookup
        # Per key id (capacity grows ahead of the keys): the route (hash key, high and low halves) and
        # whether it is known; whether the key was touched since mark_saved; and, to skip the MD5 when
        # a key's partition key has not changed, a Polars hash of the partition key its route came from.
        self._routes = np.zeros((0, 2), dtype=np.uint64)
        self._routed = np.zeros(0, dtype=np.bool_)
        self._touched = np.zeros(0, dtype=np.bool_)
        self._pk_hash = np.zeros(0, dtype=np.uint64)
        self._pk_known = np.zeros(0, dtype=np.bool_)

    # ------------------------------------------------------------------ introspection
    def __len__(self) -> int:
        """Number of keys with state (for metrics)."""
        return self._nkeys

    def state_keys(self) -> pl.DataFrame:
        """The keys that have state, in first-seen order (for metrics and debugging)."""
        if self._keytab is None:
            return pl.DataFrame(schema=dict.fromkeys(self.keys, pl.Null))
        return self._keytab.drop("__kid")

    def touched_keys(self) -> int:
        """Keys advanced since :meth:`mark_saved` (those a delta snapshot holds)."""
        return int(self._touched[: self._nkeys].sum())

    def routes(self) -> tuple[np.ndarray, np.ndarray]:
        """Each key's route as (keys, 2) uint64 (high, low halves of the hash key) and whether it is known."""
        return self._routes[: self._nkeys].copy(), self._routed[: self._nkeys].copy()

    def state_bytes(self) -> int:
        """Bytes of per-key state held (fields and rings in use, plus the key table), for metrics."""
        if self._keytab is None:
            return 0
        return self._state.nbytes() + int(self._keytab.estimated_size())

    def __repr__(self) -> str:
        return (
            f"RollingAnomalyDetector(avg_rows={self.avg_rows}, baseline_rows={self.baseline_rows}, "
            f"sigmas={self.sigmas}, keys={self.keys!r}, state_keys={self._nkeys})"
        )

    # ------------------------------------------------------------------ validation
    def _validate(self, batch: pl.DataFrame) -> pl.Series:
        """Check a batch before anything changes; returns ``value`` as Float64."""
        if not isinstance(batch, pl.DataFrame):
            raise AnalyticsInputError(f"batch must be a polars DataFrame, got {type(batch).__name__}", column="<batch>")
        schema = batch.schema
        column = self.value
        for col in (*self.keys, column):
            if col not in schema:
                raise AnalyticsInputError(
                    f"batch is missing required column {col!r} (required: {', '.join((*self.keys, column))})",
                    column=col,
                )
        raw = batch.get_column(column)
        if not raw.dtype.is_numeric():
            row = 0
            if raw.dtype == pl.String:  # point at the first string that is not a number
                bad = (raw.cast(pl.Float64, strict=False).is_null() & raw.is_not_null()).arg_true()
                row = int(bad[0]) if len(bad) else 0
            shown = raw[row] if len(raw) else None
            raise AnalyticsInputError(
                f"column {column!r} must be numeric, got dtype {raw.dtype} (first offending row {row}: {shown!r})",
                column=column,
                row=row,
            )
        value = raw if raw.dtype == pl.Float64 else raw.cast(pl.Float64)
        if value.null_count():
            row = int(value.is_null().arg_true()[0])
            raise AnalyticsInputError(
                f"column {column!r} has a null at row {row} (first offending row); values must be present",
                column=column,
                row=row,
            )
        finite = np.isfinite(value.to_numpy())
        if not finite.all():
            row = int(finite.argmin())
            raise AnalyticsInputError(
                f"column {column!r} has a non-finite value {value[row]!r} at row {row} (first offending "
                "row); NaN and infinities are rejected",
                column=column,
                row=row,
            )
        if self._keytab is not None:
            for col in self.keys:
                want, got = self._keytab.schema[col], schema[col]
                if got != want and got != pl.Null:
                    raise AnalyticsInputError(
                        f"key column {col!r} has dtype {got}, but this detector's state holds {want} "
                        "(first offending row 0)",
                        column=col,
                        row=0,
                    )
        return value

    # ------------------------------------------------------------------ keys
    def _key_columns(self, frame: pl.DataFrame) -> pl.DataFrame:
        """The key columns of a batch or of the key table (a select() plans a query: 5x slower)."""
        return pl.DataFrame([frame.get_column(k) for k in self.keys])

    def _key_frame(self, batch: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
        """The batch's key columns (all-null columns cast to the state's dtype) and the key table."""
        kf = self._key_columns(batch)
        if self._keytab is None:
            return kf, kf.clear().with_columns(pl.lit(None, pl.Int64).alias("__kid"))
        tab = self._keytab
        # The key type DataFrame.cast takes (Mapping keys are invariant: dict[str, ...] does not match).
        nulls: dict[ColumnNameOrSelector | PolarsDataType, PolarsDataType] = {
            c: tab.schema[c] for c in self.keys if kf.schema[c] == pl.Null
        }
        return (kf.cast(nulls) if nulls else kf), tab

    def _with_new_keys(self, tab: pl.DataFrame, new_keys: pl.DataFrame) -> pl.DataFrame:
        """The key table plus ``new_keys`` (distinct, unseen), numbered on from the table's end."""
        new = _detached(new_keys).with_columns((pl.int_range(pl.len(), dtype=pl.Int64) + tab.height).alias("__kid"))
        grown = pl.concat([tab, new], how="vertical")
        return grown.rechunk() if grown.n_chunks() > _MAX_KEY_CHUNKS else grown

    def _key_ids(self, kf: pl.DataFrame, tab: pl.DataFrame) -> pl.Series:
        """Each row's key id, in arrival order; null for keys the table does not hold yet."""
        nulls = any(kf.get_column(k).null_count() for k in self.keys)  # null-aware matching costs a third more
        return kf.join(tab, on=list(self.keys), how="left", nulls_equal=nulls, maintain_order="left").get_column(
            "__kid"
        )

    def _lookup(self, kf: pl.DataFrame, tab: pl.DataFrame) -> tuple[np.ndarray, pl.DataFrame]:
        """Each row's key id, and the key table with the batch's unseen keys appended (not yet kept).

        The hash index answers when it can (under half the cost of the join); every answer is checked
        against the real keys, and on a hash collision the index is dropped for the exact join.
        """
        if self._index is None and not self._hash_collision and KeyIndex.supports(kf.schema):
            self._index = KeyIndex.build(self._key_columns(tab))
            self._hash_collision = self._index is None
        if self._index is not None and len(self._index) == tab.height:
            ids, new_rows = self._index.assign(kf)
            if KeyIndex.verify(kf, ids, self._key_columns(tab), new_rows):
                return ids, self._with_new_keys(tab, kf[new_rows]) if len(new_rows) else tab
            self._hash_collision = True
        self._index = None  # dropped on a collision (rare: two keys sharing a 64-bit hash), or stale
        kids = self._key_ids(kf, tab)
        if kids.null_count():  # unseen keys: number them in order of first appearance, then look up again
            unseen = kf.filter(kids.is_null()).unique(maintain_order=True)
            tab = self._with_new_keys(tab, unseen)
            kids = self._key_ids(kf, tab)
        return kids.to_numpy(), tab

    # ------------------------------------------------------------------ processing
    def process(self, batch: pl.DataFrame) -> pl.DataFrame:
        """Process the next batch (rows in arrival order); returns it plus avg_value and anomaly_status.

        A rejected batch (AnalyticsInputError) leaves the state untouched.
        """
        value = self._validate(batch)
        n = batch.height
        avg = np.empty(n)
        anomaly = np.zeros(n, dtype=np.bool_)
        if n:
            kf, tab = self._key_frame(batch)
            kids, tab = self._lookup(kf, tab)
            # Only now does the state change; nothing below depends on the input's validity.
            self._state.advance(
                kids,
                value.to_numpy(),
                tab.height,
                self._block,
                self.avg_rows,
                self.baseline_rows,
                self.sigmas,
                avg,
                anomaly,
            )
            self._note_rows(batch, kids, tab.height)
            self._keytab, self._nkeys = tab, tab.height
        results = [
            pl.Series(AVG_VALUE, avg, pl.Float64),
            pl.select(
                pl.when(pl.lit(pl.Series(anomaly)))
                .then(pl.lit("ANOMALY"))
                .otherwise(pl.lit("NORMAL"))
                .alias(ANOMALY_STATUS)
            ).to_series(),
        ]
        if AVG_VALUE in batch.columns or ANOMALY_STATUS in batch.columns:
            return batch.with_columns(results)
        return batch.hstack(results)

    def _grow_meta(self, keys: int) -> None:
        """Room for ``keys`` key ids in the per-key routes and marks (new ones unknown, untouched)."""
        have = len(self._routed)
        if keys <= have:
            return
        size = max(keys, 2 * have, 1024)

        def grown(old: np.ndarray) -> np.ndarray:
            new = np.zeros((size, *old.shape[1:]), dtype=old.dtype)
            new[:have] = old
            return new

        self._routes, self._routed, self._touched = grown(self._routes), grown(self._routed), grown(self._touched)
        self._pk_hash, self._pk_known = grown(self._pk_hash), grown(self._pk_known)

    def _note_rows(self, batch: pl.DataFrame, kids: np.ndarray, keys: int) -> None:
        """Mark the batch's keys touched and set each one's route from its last row's partition key."""
        self._grow_meta(keys)
        self._touched[kids] = True
        dtype = batch.schema.get(PARTITION_KEY)
        if dtype is None or dtype == pl.Null:
            return
        pk = batch.get_column(PARTITION_KEY)
        pk = pk if dtype == pl.String else pk.cast(pl.String)
        hashes = pk.hash(seed=0).to_numpy()
        # Rows whose key's route came from another partition key (or none yet): usually only new keys,
        # so a steady stream costs a hash and a comparison per row, no MD5. Null partition keys route nothing.
        changed = ~(self._pk_known[kids] & (self._pk_hash[kids] == hashes))
        if pk.null_count():
            changed &= pk.is_not_null().to_numpy()
        if not changed.any():
            return
        rows = np.flatnonzero(np.isin(kids, kids[changed]))  # every row of those keys
        if pk.null_count():
            rows = rows[pk.gather(rows).is_not_null().to_numpy()]
        ids, first_from_end = np.unique(kids[rows][::-1], return_index=True)
        last = rows[len(rows) - 1 - first_from_end]  # each of those keys' last row in the batch
        digests = b"".join(hashlib.md5(name.encode("utf-8")).digest() for name in pk.gather(last).to_list())
        self._routes[ids] = np.frombuffer(digests, dtype=">u8").reshape(-1, 2)
        self._routed[ids] = True
        self._pk_hash[ids], self._pk_known[ids] = hashes[last], True

    # ------------------------------------------------------------------ resharding
    @classmethod
    def merge(
        cls, detectors: Sequence[RollingAnomalyDetector], hash_range: tuple[int, int] | None = None
    ) -> RollingAnomalyDetector:
        """One detector holding the keys of several (a child shard starting from its parents' state).

        With ``hash_range`` (the child's [StartingHashKey, EndingHashKey]), only the keys whose route
        lies in it are kept, and those whose route is unknown: a split hands each child its own keys.

        All must share one configuration. A key held by more than one keeps the state that has seen
        the most rows: a child that started from a whole parent state (unknown routes, or states
        merged without a range) holds stale copies of the keys its sibling owned, and when the
        children merge again the copy that went on is the one with more rows (equal counts mean the
        copies are identical).
        """
        detectors = list(detectors)
        if not detectors:
            raise AnalyticsConfigError("merge needs at least one detector")
        first = detectors[0]
        for other in detectors[1:]:
            if other._config() != first._config():
                raise AnalyticsConfigError(
                    f"cannot merge detectors with different configurations: {first._config()} vs {other._config()}"
                )
        out = cls(
            avg_rows=first.avg_rows,
            baseline_rows=first.baseline_rows,
            sigmas=first.sigmas,
            keys=first.keys,
            value=first.value,
        )
        held = [det for det in detectors if det._nkeys]
        if not held:
            return out
        histories = [det._state.history() for det in held]
        keys = pl.concat([det.state_keys() for det in held], how="vertical_relaxed")
        fields = np.concatenate([f for f, _ in histories])
        rings = np.concatenate([r for _, r in histories])
        ring_len = ring_floats(fields[:, 0].astype(np.int64), first._ring)
        ring_at = starts(ring_len)
        winners = (
            keys.with_columns(pl.Series("__n", fields[:, 0]), pl.int_range(pl.len()).alias("__order"))
            .sort("__n", "__order", descending=[True, False])
            .unique(subset=list(first.keys), keep="first", maintain_order=True)
            .sort("__order")
        )
        rows = winners.get_column("__order").to_numpy()
        routes = np.concatenate([det._routes[: det._nkeys] for det in held])
        routed = np.concatenate([det._routed[: det._nkeys] for det in held])
        keep = np.ones(len(rows), dtype=np.bool_)
        if hash_range is not None:
            keep = ~routed[rows] | _in_range(routes[rows], *hash_range)
            rows = rows[keep]
        if not len(rows):
            return out
        out._load(
            winners.select(first.keys).filter(pl.Series(keep)),
            fields[rows],
            rings[ranges(ring_at[rows], ring_len[rows])],
            routes[rows],
            routed[rows],
        )
        return out

    def _load(
        self,
        keys: pl.DataFrame,
        fields: np.ndarray,
        rings: np.ndarray,
        routes: np.ndarray | None = None,
        routed: np.ndarray | None = None,
    ) -> None:
        """Install per-key history (as KeyState.history gives it, keys in the same order); must be empty."""
        self._state = KeyState.load(self._ring, fields, rings)
        self._keytab = keys.with_columns(pl.int_range(keys.height, dtype=pl.Int64).alias("__kid"))
        self._nkeys = keys.height
        self._index = None
        self._grow_meta(self._nkeys)
        if routes is not None and routed is not None:
            self._routes[: self._nkeys], self._routed[: self._nkeys] = routes, routed

    # ------------------------------------------------------------------ snapshot / restore
    def _config(self) -> dict[str, object]:
        return {
            "avg_rows": self.avg_rows,
            "baseline_rows": self.baseline_rows,
            "sigmas": self.sigmas,
            "keys": list(self.keys),
            "block": self._block,
            "ring": self._ring,
            # only when not the default: snapshots from before the setting existed stay comparable
            **({"value": self.value} if self.value != VALUE else {}),
        }

    def snapshot(self) -> bytes:
        """The whole state as versioned bytes (format: :mod:`etl_platform.analytics.snapshot`)."""
        if self._nkeys == 0:
            return snapshot_format.encode(self._config(), None, np.zeros((0, len(HISTORY_FIELDS))), np.zeros(0))
        fields, rings = self._state.history()
        n = self._nkeys
        return snapshot_format.encode(
            self._config(), self.state_keys(), fields, rings, self._routes[:n], self._routed[:n]
        )

    def delta_snapshot(self) -> bytes:
        """The state of the keys touched since :meth:`mark_saved` (or since this detector was built),
        with their key ids: applied over the snapshot taken at that mark it gives :meth:`snapshot`'s
        state (:meth:`restore_chain`). Costs O(keys touched), however many keys the detector holds."""
        kids = np.flatnonzero(self._touched[: self._nkeys])
        if self._keytab is None or not len(kids):
            empty = np.zeros((0, len(HISTORY_FIELDS)))
            return snapshot_format.encode(
                self._config(), None, empty, np.zeros(0), kids=np.zeros(0, np.int64), total_keys=self._nkeys
            )
        fields, rings = self._state.history(kids)
        keys = self._key_columns(self._keytab)[kids]
        return snapshot_format.encode(
            self._config(), keys, fields, rings, self._routes[kids], self._routed[kids], kids, self._nkeys
        )

    def mark_saved(self) -> None:
        """The current state is committed: later delta snapshots hold only keys touched after now.
        Call it only once the snapshot (or delta) taken now is durably part of the committed state."""
        self._touched[:] = False

    @classmethod
    def restore(cls, blob: bytes) -> RollingAnomalyDetector:
        """Rebuild a detector from :meth:`snapshot` bytes (every version the format reads)."""
        return cls.restore_chain(blob)

    @classmethod
    def restore_chain(cls, base: bytes, deltas: Sequence[bytes] = ()) -> RollingAnomalyDetector:
        """Rebuild a detector from a full snapshot and the :meth:`delta_snapshot`s taken after it, in
        order (a later delta's copy of a key replaces the earlier one)."""
        saved = snapshot_format.decode(base)
        if saved.kids is not None:
            raise AnalyticsSnapshotError("a delta snapshot cannot be restored alone: it needs its base snapshot")
        det = cls._configured(saved)
        parts = [saved]
        for blob in deltas:
            part = snapshot_format.decode(blob)
            if part.kids is None:
                raise AnalyticsSnapshotError("a delta chain holds a full snapshot after its base")
            if any(part.config.get(k) != saved.config.get(k) for k in det._config()):
                raise AnalyticsSnapshotError("a delta snapshot's configuration differs from its base's")
            parts.append(part)
        held = [p for p in parts if p.keys is not None]
        if not held:
            return det
        for part in held:
            if part.keys is not None and part.keys.columns != list(det.keys):
                raise AnalyticsSnapshotError(f"snapshot table has unexpected columns {part.keys.columns}")
        if len(parts) == 1:
            assert saved.keys is not None
            try:
                det._load(saved.keys, saved.fields, saved.rings, saved.routes, saved.routed)
            except ValueError as exc:
                raise AnalyticsSnapshotError(f"corrupt snapshot: {exc}") from exc
            return det
        return det._apply_chain(held, parts[-1].total_keys)

    def _apply_chain(self, parts: list[SavedState], total: int) -> RollingAnomalyDetector:
        """Load the last copy of each key over a base and deltas (``parts``, each holding keys)."""

        def ids(part: SavedState) -> np.ndarray:
            assert part.keys is not None
            return part.kids if part.kids is not None else np.arange(part.keys.height, dtype=np.int64)

        def routes(part: SavedState) -> tuple[np.ndarray, np.ndarray]:
            n = len(part.fields)
            if part.routes is None or part.routed is None:
                return np.zeros((n, 2), dtype=np.uint64), np.zeros(n, dtype=np.bool_)
            return part.routes, part.routed

        kids = np.concatenate([ids(p) for p in parts])
        fields = np.concatenate([p.fields for p in parts])
        pool = np.concatenate([p.rings for p in parts])
        route_parts = [routes(p) for p in parts]
        all_routes = np.concatenate([r for r, _ in route_parts])
        all_routed = np.concatenate([k for _, k in route_parts])
        if not np.isfinite(fields[:, 0]).all() or (fields[:, 0] < 1).any():
            raise AnalyticsSnapshotError("corrupt snapshot: history row counts must be whole numbers >= 1")
        ring_len = ring_floats(fields[:, 0].astype(np.int64), self._ring)
        if int(ring_len.sum()) != len(pool):
            raise AnalyticsSnapshotError("corrupt snapshot: its rings do not match its row counts")
        unique, first_from_end = np.unique(kids[::-1], return_index=True)
        if not np.array_equal(unique, np.arange(len(unique))) or len(unique) != total:
            raise AnalyticsSnapshotError("corrupt delta chain: its key ids do not run 0 .. keys - 1")
        win = len(kids) - 1 - first_from_end  # each key id's last copy, in key-id order
        keys = pl.concat([p.keys for p in parts if p.keys is not None], how="vertical_relaxed")[win]
        try:
            rings = pool[ranges(starts(ring_len)[win], ring_len[win])]
            self._load(keys, fields[win], rings, all_routes[win], all_routed[win])
        except ValueError as exc:
            raise AnalyticsSnapshotError(f"corrupt snapshot: {exc}") from exc
        return self

    @classmethod
    def _configured(cls, saved: SavedState) -> RollingAnomalyDetector:
        """An empty detector with a decoded snapshot's configuration."""
        cfg = saved.config
        try:
            det = cls(
                avg_rows=cfg["avg_rows"],
                baseline_rows=cfg["baseline_rows"],
                sigmas=cfg["sigmas"],
                keys=cfg["keys"],
                value=cfg.get("value", VALUE),
            )
        except AnalyticsError as exc:
            raise AnalyticsSnapshotError(f"corrupt snapshot config: {exc}") from exc
        except (KeyError, TypeError) as exc:
            raise AnalyticsSnapshotError(f"corrupt snapshot: {exc!r}") from exc
        if (cfg["ring"], cfg["block"]) != (det._ring, det._block):
            raise AnalyticsSnapshotError("snapshot ring and block sizes do not match this engine version")
        return det
