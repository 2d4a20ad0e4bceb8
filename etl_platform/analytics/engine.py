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

Input rules: the key columns and ``value`` must be present; ``value`` must be numeric, non-null and
finite (NaN and +/-inf are rejected: they have no meaningful rolling statistics and would poison
every window they enter). Null keys are allowed and form their own partition, as SQL ``PARTITION BY``
does.
"""

from __future__ import annotations

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
from etl_platform.analytics.state import KeyState, ranges, starts

if TYPE_CHECKING:
    from polars._typing import ColumnNameOrSelector, PolarsDataType

VALUE = "value"
AVG_VALUE = "avg_value"
ANOMALY_STATUS = "anomaly_status"


_MAX_KEY_CHUNKS = 8  # the key table is gathered from on every batch, and gathers slow down with its chunks


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
        if VALUE in keys or "__kid" in keys:
            raise AnalyticsConfigError(f"keys must not include the {VALUE!r} column (or the reserved '__kid')")
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

    # ------------------------------------------------------------------ introspection
    def __len__(self) -> int:
        """Number of keys with state (for metrics)."""
        return self._nkeys

    def state_keys(self) -> pl.DataFrame:
        """The keys that have state, in first-seen order (for metrics and debugging)."""
        if self._keytab is None:
            return pl.DataFrame(schema=dict.fromkeys(self.keys, pl.Null))
        return self._keytab.drop("__kid")

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
        for col in (*self.keys, VALUE):
            if col not in schema:
                raise AnalyticsInputError(
                    f"batch is missing required column {col!r} (required: {', '.join((*self.keys, VALUE))})",
                    column=col,
                )
        raw = batch.get_column(VALUE)
        if not raw.dtype.is_numeric():
            row = 0
            if raw.dtype == pl.String:  # point at the first string that is not a number
                bad = (raw.cast(pl.Float64, strict=False).is_null() & raw.is_not_null()).arg_true()
                row = int(bad[0]) if len(bad) else 0
            shown = raw[row] if len(raw) else None
            raise AnalyticsInputError(
                f"column {VALUE!r} must be numeric, got dtype {raw.dtype} (first offending row {row}: {shown!r})",
                column=VALUE,
                row=row,
            )
        value = raw if raw.dtype == pl.Float64 else raw.cast(pl.Float64)
        if value.null_count():
            row = int(value.is_null().arg_true()[0])
            raise AnalyticsInputError(
                f"column {VALUE!r} has a null at row {row} (first offending row); values must be present",
                column=VALUE,
                row=row,
            )
        finite = np.isfinite(value.to_numpy())
        if not finite.all():
            row = int(finite.argmin())
            raise AnalyticsInputError(
                f"column {VALUE!r} has a non-finite value {value[row]!r} at row {row} (first offending "
                "row); NaN and infinities are rejected",
                column=VALUE,
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
            grown = self._with_new_keys(tab, kf[new_rows]) if len(new_rows) else tab
            if KeyIndex.verify(kf, ids, self._key_columns(grown)):
                return ids, grown
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

    # ------------------------------------------------------------------ resharding
    @classmethod
    def merge(cls, detectors: Sequence[RollingAnomalyDetector]) -> RollingAnomalyDetector:
        """One detector holding the keys of several (a child shard starting from its parents' state).

        All must share one configuration. A key held by more than one keeps the state that has seen
        the most rows: after a split, each child starts from the whole parent state, so a later merge
        of the children finds stale copies of the keys the other child owned, and the copy that went
        on is the one with more rows (equal counts mean the copies are identical).
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
        out = cls(avg_rows=first.avg_rows, baseline_rows=first.baseline_rows, sigmas=first.sigmas, keys=first.keys)
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
        out._load(winners.select(first.keys), fields[rows], rings[ranges(ring_at[rows], ring_len[rows])])
        return out

    def _load(self, keys: pl.DataFrame, fields: np.ndarray, rings: np.ndarray) -> None:
        """Install per-key history (as KeyState.history gives it, keys in the same order); must be empty."""
        self._state = KeyState.load(self._ring, fields, rings)
        self._keytab = keys.with_columns(pl.int_range(keys.height, dtype=pl.Int64).alias("__kid"))
        self._nkeys = keys.height
        self._index = None

    # ------------------------------------------------------------------ snapshot / restore
    def _config(self) -> dict[str, object]:
        return {
            "avg_rows": self.avg_rows,
            "baseline_rows": self.baseline_rows,
            "sigmas": self.sigmas,
            "keys": list(self.keys),
            "block": self._block,
            "ring": self._ring,
        }

    def snapshot(self) -> bytes:
        """The whole state as versioned bytes (format: :mod:`etl_platform.analytics.snapshot`)."""
        if self._nkeys == 0:
            return snapshot_format.encode(self._config(), None, np.zeros((0, len(HISTORY_FIELDS))), np.zeros(0))
        fields, rings = self._state.history()
        return snapshot_format.encode(self._config(), self.state_keys(), fields, rings)

    @classmethod
    def restore(cls, blob: bytes) -> RollingAnomalyDetector:
        """Rebuild a detector from :meth:`snapshot` bytes (every version the format reads)."""
        saved = snapshot_format.decode(blob)
        cfg = saved.config
        try:
            det = cls(
                avg_rows=cfg["avg_rows"], baseline_rows=cfg["baseline_rows"], sigmas=cfg["sigmas"], keys=cfg["keys"]
            )
        except AnalyticsError as exc:
            raise AnalyticsSnapshotError(f"corrupt snapshot config: {exc}") from exc
        except (KeyError, TypeError) as exc:
            raise AnalyticsSnapshotError(f"corrupt snapshot: {exc!r}") from exc
        if (cfg["ring"], cfg["block"]) != (det._ring, det._block):
            raise AnalyticsSnapshotError("snapshot ring and block sizes do not match this engine version")
        if saved.keys is None:
            return det
        if saved.keys.columns != list(det.keys):
            raise AnalyticsSnapshotError(f"snapshot table has unexpected columns {saved.keys.columns}")
        try:
            det._load(saved.keys, saved.fields, saved.rings)
        except ValueError as exc:
            raise AnalyticsSnapshotError(f"corrupt snapshot: {exc}") from exc
        return det
