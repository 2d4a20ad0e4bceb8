"""The stream analytics engine: the seed's two Kinesis Analytics windows, computed incrementally.

Semantics (DESIGN.md §5), per key, rows in arrival order (row order across batches = ROWTIME):

* ``avg_value`` = AVG(value) over ``ROWS BETWEEN avg_rows PRECEDING AND CURRENT ROW``;
* ``anomaly_status`` = ``'ANOMALY'`` iff ``|value - AVG(prev)| > sigmas * STDDEV_SAMP(prev)`` where
  ``prev`` is ``ROWS BETWEEN baseline_rows PRECEDING AND 1 PRECEDING``; fewer than two baseline rows
  give NULL statistics and therefore ``'NORMAL'``, as in SQL.

The result does not depend on how the stream is cut into micro-batches or on snapshot/restore between
batches (up to floating-point rounding, far below 1e-9 relative).

How it stays fast and exact
---------------------------
The cost of a batch is O(rows in the batch), never O(keys touched x window). Each key's history is
split into aligned *blocks* of ``B`` positions (``B >= 2 * (max window + 1)``, so a window spans at
most two blocks). Every block has a *pivot* ``c`` (its first value, so drifting series stay close to
it), and for each position we keep the block-local prefix sums ``E1 = sum(x - c)`` and
``E2 = sum((x - c)^2)``. A window's mean and M2 then come from two prefix values (the window end and
the position before its start); a window reaching into the previous block re-expresses that part
around the current pivot. Because the sums are of shifted values and restart every block, a
1e9-magnitude series with unit noise loses nothing and rounding error never accumulates along the
stream. Windows whose values are all equal (tracked by the start of the current run of equal values)
are answered exactly: mean = that value, stddev = 0.0, so only a differing value is an anomaly.

Per key the state is the prefix sums of the last ``max(avg_rows, baseline_rows) + 1`` positions (a
ring) plus nine scalars, so memory is bounded by keys x window, whatever the stream length. A batch is
sorted by key once; window predecessors inside the batch are plain shifts, older ones are gathered
from the ring, and prefix sums inside the batch come from a segmented scan (log2 of the longest run
of one key's rows in a block). The whole batch is one vectorized Polars plan plus one scatter into the
state; only the order of floating-point additions depends on the batch cuts.

Input rules: the key columns and ``value`` must be present; ``value`` must be numeric, non-null and
finite (NaN and +/-inf are rejected: they have no meaningful rolling statistics and would poison the
block sums). Null keys are allowed and form their own partition, as SQL ``PARTITION BY`` does.
"""

from __future__ import annotations

import io
import json
import math
import struct
from collections.abc import Sequence

import polars as pl

__all__ = [
    "AnalyticsConfigError",
    "AnalyticsError",
    "AnalyticsInputError",
    "AnalyticsSnapshotError",
    "RollingAnomalyDetector",
    "SNAPSHOT_VERSION",
]

SNAPSHOT_VERSION = 1
_MAGIC = b"ETLRAD\x00"
_HEADER = struct.Struct("<HI")  # version, header length

VALUE = "value"
AVG_VALUE = "avg_value"
ANOMALY_STATUS = "anomaly_status"

# Per-key state lives in one flat Float64 array, 2 * ring + len(_FIELDS) slots per key: [ring | fields].
# The ring holds the block-local prefix sums (E1, E2 side by side) of the key's last ``ring``
# positions (slot = 2 * (position % ring)); the fields describe the key's last row: n = rows seen,
# rs = start position of the run of equal values ending there, x1 = its value, c = its block's pivot,
# tp1/tp2/cp = the previous block's final prefix sums and pivot, e1l/e2l = its prefix sums. Counts are
# stored as float64, exact up to 2**53 rows per key.
_FIELDS = ("n", "rs", "x1", "c", "tp1", "tp2", "cp", "e1l", "e2l")


class AnalyticsError(ValueError):
    """Base class of the engine's errors (a ValueError, so callers can treat it as bad input)."""


class AnalyticsConfigError(AnalyticsError):
    """A constructor setting is invalid; the message names the setting."""


class AnalyticsInputError(AnalyticsError):
    """A batch was rejected; ``column`` and ``row`` (first offending row, or None) say where."""

    def __init__(self, message: str, column: str, row: int | None = None) -> None:
        super().__init__(message)
        self.column = column
        self.row = row


class AnalyticsSnapshotError(AnalyticsError):
    """A snapshot blob is not one this version can restore."""


def _block_size(ring: int) -> int:
    """Block length: at least twice the ring so any window spans at most two blocks."""
    return max(2 * ring, 32)


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
        self._block = _block_size(self._ring)
        self._stride = 2 * self._ring + len(_FIELDS)
        self._keytab: pl.DataFrame | None = None  # key columns + "__kid"; row i has kid i
        self._nkeys = 0
        self._cap = 0
        self._mem = pl.Series("state", [], pl.Float64)
        self._plans: dict[int, list[list[pl.Expr]]] = {}

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
        """Bytes of per-key state held (state array rows in use plus the key table), for metrics."""
        if self._keytab is None:
            return 0
        return self._nkeys * self._stride * 8 + int(self._keytab.estimated_size())

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
        if len(value) and not value.is_finite().all():
            row = int(value.is_finite().not_().arg_true()[0])
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

    # ------------------------------------------------------------------ state storage
    def _reserve(self, nkeys: int) -> None:
        """Grow the state array (capacity only: no semantic state changes)."""
        if nkeys <= self._cap:
            return
        cap = max(nkeys, 2 * self._cap, 1024)
        # One spare key region at the end takes the writes that _commit discards.
        used = self._mem.head(self._cap * self._stride)
        extra = pl.zeros((cap + 1 - self._cap) * self._stride, pl.Float64, eager=True)
        self._mem = pl.concat([used, extra], rechunk=True).rename("state")
        self._cap = cap

    def _key_frame(self, batch: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
        """The batch's key columns (all-null columns cast to the state's dtype) and the key table."""
        kf = batch.select(self.keys)
        if self._keytab is None:
            return kf, kf.clear().with_columns(pl.lit(None, pl.Int64).alias("__kid"))
        tab = self._keytab
        nulls = {c: tab.schema[c] for c in self.keys if kf.schema[c] == pl.Null}
        return (kf.cast(nulls) if nulls else kf), tab

    def _with_new_keys(self, kf: pl.DataFrame, tab: pl.DataFrame) -> pl.DataFrame:
        """The key table plus the batch's unseen keys, numbered in order of first appearance."""
        new = (
            kf.join(tab, on=list(self.keys), how="anti", nulls_equal=True, maintain_order="left")
            .unique(maintain_order=True)
            .with_columns((pl.int_range(pl.len(), dtype=pl.Int64) + tab.height).alias("__kid"))
        )
        return pl.concat([tab, new], how="vertical")

    # ------------------------------------------------------------------ processing
    def process(self, batch: pl.DataFrame) -> pl.DataFrame:
        """Process the next batch (rows in arrival order); returns it plus avg_value and anomaly_status.

        A rejected batch (AnalyticsInputError) leaves the state untouched.
        """
        value = self._validate(batch)
        n = batch.height
        if n == 0:
            avg = pl.Series(AVG_VALUE, [], pl.Float64)
            status = pl.Series(ANOMALY_STATUS, [], pl.String)
        else:
            kf, tab = self._key_frame(batch)
            rows = self._sorted_rows(kf, tab, value)
            if rows.height < n:  # unseen keys: number them, then join again
                tab = self._with_new_keys(kf, tab)
                self._reserve(tab.height)  # capacity only; no semantic change yet
                rows = self._sorted_rows(kf, tab, value)
            w = self._compute(rows)
            # Only now does the state change; nothing below depends on the input's validity.
            self._commit(w)
            self._keytab, self._nkeys = tab, tab.height
            avg, status = w.get_column(AVG_VALUE), w.get_column(ANOMALY_STATUS)
        if AVG_VALUE in batch.columns or ANOMALY_STATUS in batch.columns:
            return batch.with_columns(avg, status)
        return batch.hstack([avg, status])

    def _sorted_rows(self, kf: pl.DataFrame, tab: pl.DataFrame, value: pl.Series) -> pl.DataFrame:
        """(kid, x, i) per row, sorted by key id and then arrival; rows of unseen keys are left out.

        An inner join with the key table in "right_left" order sorts by key id, stably, in one step.
        """
        return (
            kf.lazy()
            .with_columns(value.alias("x"))
            .with_row_index("i")
            .join(tab.lazy(), on=list(self.keys), how="inner", nulls_equal=True, maintain_order="right_left")
            .select(pl.col("__kid").alias("kid"), "x", "i")
            .collect(engine="in-memory")
        )

    def _compute(self, rows: pl.DataFrame) -> pl.DataFrame:
        """Run the window plan for one batch; returns its rows sorted by key with results and state.

        Rows come sorted by key, so "k rows earlier for the same key" is a plain shift guarded by
        ``loc >= k`` (loc = index of the row among its key's rows in this batch), and the state of a
        key is gathered from the flat state array. Expressions are kept flat, one stage per dependency
        level, because polars expands shared sub-expressions instead of reusing them; the number of
        operations is what costs, so every test is written in its cheapest form, and the expressions
        are built once and cached (only the few that read the state array are built per batch).
        """
        R, W = self._ring, self._stride
        ka, kb = self.avg_rows + 1, self.baseline_rows + 1
        col, when, lit = pl.col, pl.when, pl.lit
        mem = self._mem
        kw, slot, pr, r = col("kw"), col("slot"), col("pr"), col("r")
        trash = self._cap * W  # a spare key region: writes that must not land go here

        def back_slot(k: int) -> pl.Expr:
            # Ring slot of the position k back (always a valid slot; read only when needed).
            kr = k % R
            return slot if kr == 0 else when(pr >= kr).then(slot - 2 * kr).otherwise(slot + 2 * (R - kr))

        dynamic = {
            # The key's state fields (zero-copy views of the state array, gathered by key).
            1: [lit(mem.slice(2 * R + i)).gather(kw).alias(f"s_{f}") for i, f in enumerate(_FIELDS)],
            # Fields are written from the key's last row only, the ring from its last `ring` rows.
            2: [when(col("last")).then(kw + 2 * R).otherwise(trash).alias("fbase")],
            5: [
                when(col("lastr") - r < R).then(slot).otherwise(trash).alias("ridx"),
                lit(mem).gather(back_slot(ka)).alias("g_a"),
                lit(mem).gather(back_slot(kb)).alias("g_b1"),
                lit(mem.slice(1)).gather(back_slot(kb)).alias("g_b2"),
            ],
        }
        lf = rows.lazy()
        for i, stage in enumerate(self._first_stages()):
            lf = lf.with_columns(stage + dynamic.get(i, []))
        w = lf.collect(engine="in-memory")
        del dynamic  # drop the views of the state array before it is written to
        steps = int(w.get_column("ql").max()).bit_length()  # type: ignore[arg-type]
        lf = w.lazy()
        for stage in self._stages(steps):
            lf = lf.with_columns(stage)
        return lf.collect(engine="in-memory")

    def _first_stages(self) -> list[list[pl.Expr]]:
        """First half of the plan, up to the prefix-sum increments (built once, then cached)."""
        cached = self._plans.get(-1)
        if cached is not None:
            return cached
        B, R, W = self._block, self._ring, self._stride
        Wa, Wb = self.avg_rows, self.baseline_rows
        col, when, lit = pl.col, pl.when, pl.lit
        x, r, loc, pos, gs, kw = (col(c) for c in ("x", "r", "loc", "pos", "gs", "kw"))
        pm, pr = col("pm"), col("pr")
        inb = col("inb")
        d = x - col("c")
        cont = gs & (pm != 0)  # first row of the key here, continuing a block from the state
        stages = [
            [
                pl.int_range(pl.len(), dtype=pl.Int64).alias("r"),
                (col("kid") != col("kid").shift(1)).fill_null(True).alias("gs"),
                (col("kid") * W).alias("kw"),
                pl.col("i").arg_sort().alias("inv"),  # sorted position of each input row
            ],
            [
                gs.shift(-1).fill_null(True).alias("last"),
                (r - when(gs).then(r).otherwise(0).cum_max()).alias("loc"),
            ],
            [
                (col("s_n").cast(pl.Int64) + loc).alias("pos"),
                col("s_rs").cast(pl.Int64).alias("s_rsi"),
                # Row index of the key's last row in this batch.
                when(col("last")).then(r).otherwise(pl.len()).cum_min(reverse=True).alias("lastr"),
                when(loc >= 1).then(x.shift(1)).otherwise(col("s_x1")).alias("xp1"),
            ],
            [
                (pos % B).alias("pm"),  # position inside the block
                (pos % R).alias("pr"),  # ring slot number
                ((pos == 0) | (x != col("xp1"))).alias("newrun"),
                pl.min_horizontal(pos, lit(Wb, pl.Int64)).alias("nb"),  # baseline window length
                (pl.min_horizontal(pos, lit(Wa, pl.Int64)) + 1).alias("na"),  # avg window length
            ],
            [
                (kw + 2 * pr).alias("slot"),  # this row's ring slot (E1; E2 is next to it)
                (pm <= loc).alias("inb"),  # the row's block started inside this batch ...
                (r - pm).alias("j"),  # ... at this row
                pl.min_horizontal(pm, loc).alias("ql"),  # index inside the (key, block) run of rows
                when(col("newrun") | gs).then(r).otherwise(0).cum_max().alias("rstart"),
                when(col("newrun")).then(pos).otherwise(col("s_rsi")).alias("rsv"),
                # Window [pos - na + 1, pos] (avg) / [pos - nb, pos - 1] (baseline) reaches back into
                # the previous block (B > 2 * ring, so never further), or starts at a block start.
                ((pm < Wa) & (pos >= B)).alias("xa"),
                ((pm < Wb) & (pm > 0) & (pos >= B)).alias("xb"),
                ((pos <= Wa) | (pm == Wa)).alias("za"),
                ((pos <= Wb) | (pm == Wb)).alias("zb"),
            ],
            [
                # Pivot of the row's block: the block's first value.
                when(inb).then(x.gather(when(inb).then(col("j")))).otherwise(col("s_c")).alias("c"),
                col("rsv").gather(col("rstart")).alias("rsr"),  # start of the run of equal values
                when(inb).then(col("j")).alias("jn"),
            ],
            [
                when(cont).then(col("s_e1l") + d).otherwise(d).alias("E1"),
                when(cont).then(col("s_e2l") + d * d).otherwise(d * d).alias("E2"),
            ],
        ]
        self._plans[-1] = stages
        return stages

    def _stages(self, steps: int) -> list[list[pl.Expr]]:
        """Second half of the plan (no state references, so built once per scan depth and cached)."""
        cached = self._plans.get(steps)
        if cached is not None:
            return cached
        Wa, Wb = self.avg_rows, self.baseline_rows
        ka, kb = Wa + 1, Wb + 1
        col, when, lit = pl.col, pl.when, pl.lit
        x, loc, pos, pm, nb, na = (col(c) for c in ("x", "loc", "pos", "pm", "nb", "na"))
        xa, xb = col("xa"), col("xb")
        stages: list[list[pl.Expr]] = []
        # Segmented inclusive scan (Hillis-Steele) inside each (key, block) run of rows.
        for i in range(steps):
            has = col("ql") >= (1 << i)
            stages.append(
                [
                    (col("E1") + when(has).then(col("E1").shift(1 << i)).otherwise(0.0)).alias("E1"),
                    (col("E2") + when(has).then(col("E2").shift(1 << i)).otherwise(0.0)).alias("E2"),
                ]
            )

        def back(name: str, k: int, fallback: str) -> pl.Expr:
            """Value of ``name`` k rows earlier for the same key, else ``fallback`` (from the state)."""
            return when(loc >= k).then(col(name).shift(k)).otherwise(col(fallback))

        stages.append(
            [
                back("E1", 1, "s_e1l").alias("E1p"),
                back("E2", 1, "s_e2l").alias("E2p"),
                back("c", 1, "s_c").alias("cpr"),
                back("rsr", 1, "s_rsi").alias("rsp"),
                # Prefix sums just before each window's first row (0 at a block start).
                when(col("za")).then(0.0).otherwise(back("E1", ka, "g_a")).alias("e1sa"),
                when(col("zb")).then(0.0).otherwise(back("E1", kb, "g_b1")).alias("e1sb"),
                when(col("zb")).then(0.0).otherwise(back("E2", kb, "g_b2")).alias("e2sb"),
            ]
        )
        inb, jn = col("inb"), col("jn")
        stages.append(
            [
                # Final prefix sums and pivot of the previous block: the row before the block's start.
                when(inb).then(col("E1p").gather(jn)).otherwise(col("s_tp1")).alias("Tp1"),
                when(inb).then(col("E2p").gather(jn)).otherwise(col("s_tp2")).alias("Tp2"),
                when(inb).then(col("cpr").gather(jn)).otherwise(col("s_cp")).alias("cp"),
            ]
        )
        # A window = part A (tail of the previous block, relative to its pivot cp; only when
        # crossing) + part B (relative to c). Part A is re-expressed around c: with delta = cp - c,
        # sum(x - c) = A1 + nA * delta and sum((x - c)^2) = A2 + delta * (2 * A1 + nA * delta).
        e1sa, e1sb, e2sb = col("e1sa"), col("e1sb"), col("e2sb")
        stages.append(
            [
                (col("cp") - col("c")).alias("dcp"),
                when(xa).then(col("Tp1") - e1sa).otherwise(-e1sa).alias("A1a"),
                when(xb).then(col("Tp1") - e1sb).otherwise(-e1sb).alias("A1b"),
                when(xb).then(col("Tp2") - e2sb).otherwise(-e2sb).alias("A2b"),
                when(xa).then(Wa - pm).otherwise(0).alias("nAa"),
                when(xb).then(Wb - pm).otherwise(0).alias("nAb"),
            ]
        )
        dcp, A1b, nAb = col("dcp"), col("A1b"), col("nAb")
        stages.append(
            [
                (col("E1") + col("A1a") + col("nAa") * dcp).alias("S1a"),
                (col("E1p") + A1b + nAb * dcp).alias("S1b"),
                (col("E2p") + col("A2b") + when(xb).then(dcp * (2 * A1b + nAb * dcp)).otherwise(0.0)).alias("S2b"),
            ]
        )
        S1b = col("S1b")
        constant_b = col("rsp") <= pos - nb  # all baseline values equal: exact mean, stddev 0
        stages.append(
            [
                # A crossing window never ends at a block start, so the baseline pivot is c there.
                when(col("rsr") <= pos - na + 1).then(x).otherwise(col("c") + col("S1a") / na).alias("avg"),
                when(constant_b).then(col("xp1")).otherwise(col("cpr") + S1b / nb).alias("mean"),
                when(constant_b).then(0.0).otherwise(col("S2b") - S1b * S1b / nb).alias("m2"),
            ]
        )
        std = (pl.max_horizontal("m2", lit(0.0)) / (nb - 1)).sqrt()
        stages.append(
            [
                ((nb >= 2) & ((x - col("mean")).abs() > self.sigmas * std)).alias("anom"),
                (pos + 1).cast(pl.Float64).alias("nf"),
                col("rsr").cast(pl.Float64).alias("rsf"),
            ]
        )
        inv = col("inv")
        stages.append(
            [
                (col("ridx") + 1).alias("ridx2"),  # state slots written by _commit (E2, fields)
                *((col("fbase") + i).alias(f"fidx{i}") for i in range(len(_FIELDS))),
                col("avg").gather(inv).alias(AVG_VALUE),  # back in input order
                when(col("anom").gather(inv)).then(lit("ANOMALY")).otherwise(lit("NORMAL")).alias(ANOMALY_STATUS),
            ]
        )
        self._plans[steps] = stages
        return stages

    def _commit(self, w: pl.DataFrame) -> None:
        """Write the batch's ring entries and last-row fields into the state array with one scatter."""
        values = {
            "n": "nf",
            "rs": "rsf",
            "x1": "x",
            "c": "c",
            "tp1": "Tp1",
            "tp2": "Tp2",
            "cp": "cp",
            "e1l": "E1",
            "e2l": "E2",
        }
        idx = pl.concat(
            [w.get_column(c) for c in ("ridx", "ridx2", *(f"fidx{i}" for i in range(len(_FIELDS))))], rechunk=True
        )
        val = pl.concat([w.get_column(c) for c in ("E1", "E2", *(values[f] for f in _FIELDS))], rechunk=True)
        self._mem.scatter(idx, val)

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
        W = first._stride
        parts = []
        for det in detectors:
            if det._keytab is None or det._nkeys == 0:
                continue
            k = det._nkeys
            state = det._mem.head(k * W).reshape((k, W))
            parts.append(det._keytab.drop("__kid").with_columns(state.alias("state")))
        if not parts:
            return out
        table = pl.concat(parts, how="vertical_relaxed").with_row_index("__order")
        n_col = pl.col("state").arr.get(2 * first._ring + _FIELDS.index("n"))
        table = (
            table.sort(n_col, "__order", descending=[True, False])
            .unique(subset=list(first.keys), keep="first", maintain_order=True)
            .sort("__order")
            .drop("__order")
        )
        out._load_table(table)
        return out

    def _load_table(self, table: pl.DataFrame) -> None:
        """Install per-key state from a (keys..., state) table; the detector must be empty."""
        k, W = table.height, self._stride
        self._keytab = table.select(self.keys).with_columns(pl.int_range(k, dtype=pl.Int64).alias("__kid"))
        self._nkeys = k
        self._reserve(k)
        self._mem.scatter(pl.int_range(k * W, dtype=pl.Int64, eager=True), table.get_column("state").reshape((k * W,)))

    # ------------------------------------------------------------------ snapshot / restore
    def _config(self) -> dict[str, object]:
        return {
            "avg_rows": self.avg_rows,
            "baseline_rows": self.baseline_rows,
            "sigmas": self.sigmas,
            "keys": list(self.keys),
            "block": self._block,
            "ring": self._ring,
            "layout": ["ring(e1,e2)", *_FIELDS],
        }

    def snapshot(self) -> bytes:
        """The whole state as versioned bytes: magic, version, JSON config header, Arrow IPC table.

        The table has one row per key: the key columns and ``state``, a fixed-size list of
        ``2 * ring + 9`` float64 (the header's ``layout``).
        """
        k, W = self._nkeys, self._stride
        if self._keytab is None:
            table = pl.DataFrame()
        else:
            table = self._keytab.drop("__kid").with_columns(self._mem.head(k * W).reshape((k, W)).alias("state"))
        buf = io.BytesIO()
        table.write_ipc(buf, compression="uncompressed")
        header = json.dumps(self._config(), sort_keys=True).encode()
        return _MAGIC + _HEADER.pack(SNAPSHOT_VERSION, len(header)) + header + buf.getvalue()

    @classmethod
    def restore(cls, blob: bytes) -> RollingAnomalyDetector:
        """Rebuild a detector from :meth:`snapshot` bytes; rejects unknown versions and foreign blobs."""
        if not isinstance(blob, bytes | bytearray | memoryview):
            raise AnalyticsSnapshotError(f"snapshot must be bytes, got {type(blob).__name__}")
        blob = bytes(blob)
        if not blob.startswith(_MAGIC) or len(blob) < len(_MAGIC) + _HEADER.size:
            raise AnalyticsSnapshotError("not a RollingAnomalyDetector snapshot (bad magic)")
        version, hlen = _HEADER.unpack_from(blob, len(_MAGIC))
        if version != SNAPSHOT_VERSION:
            raise AnalyticsSnapshotError(
                f"unsupported snapshot version {version}; this engine reads version {SNAPSHOT_VERSION}"
            )
        start = len(_MAGIC) + _HEADER.size
        try:
            cfg = json.loads(blob[start : start + hlen])
            det = cls(
                avg_rows=cfg["avg_rows"],
                baseline_rows=cfg["baseline_rows"],
                sigmas=cfg["sigmas"],
                keys=cfg["keys"],
            )
            layout = (cfg["ring"], cfg["block"], cfg["layout"])
            table = pl.read_ipc(io.BytesIO(blob[start + hlen :]))
        except AnalyticsError as exc:
            raise AnalyticsSnapshotError(f"corrupt snapshot config: {exc}") from exc
        except Exception as exc:  # corrupt header or payload
            raise AnalyticsSnapshotError(f"corrupt snapshot: {exc!r}") from exc
        if layout != (det._ring, det._block, det._config()["layout"]):
            raise AnalyticsSnapshotError("snapshot state layout does not match this engine version")
        if table.width == 0:
            return det
        W = det._stride
        if table.columns != [*det.keys, "state"] or table.schema["state"] != pl.Array(pl.Float64, W):
            raise AnalyticsSnapshotError(f"snapshot table has unexpected columns {table.schema}")
        det._load_table(table)
        return det
