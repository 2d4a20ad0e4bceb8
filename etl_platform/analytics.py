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
most two blocks). Every block has a *pivot* ``c`` (the first value of a key, then the median of the
three values before the block starts: it follows drifting series and ignores an isolated spike), and
for each position we keep the block-local prefix sums ``E1 = sum(x - c)`` and ``E2 = sum((x - c)^2)``.
A window's count, mean and M2 then come from two prefix values (the window end and the position before
its start), combined across a block boundary with Chan's parallel formula. Because the sums are of
shifted values and restart every block, a 1e9-magnitude series with unit noise loses nothing and
rounding error never accumulates along the stream. Windows whose values are all equal (tracked by the
start of the current run of equal values) are answered exactly: mean = that value, stddev = 0.0.

Per key the state is the prefix sums of the last ``max(avg_rows, baseline_rows) + 1`` positions (a
ring) plus nine scalars, so memory is bounded by keys x window. A batch is sorted by key once; window
predecessors inside the batch are plain shifts, older ones are gathered from the ring.

Input rules: the key columns and ``value`` must be present; ``value`` must be numeric, non-null and
finite (NaN and +/-inf are rejected: they have no meaningful rolling statistics and would poison the
block sums). Null keys are allowed and form their own partition, as SQL ``PARTITION BY`` does.
"""

from __future__ import annotations

import io
import json
import math
import struct
from collections.abc import Callable, Sequence

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

# Per-key scalar state, describing the key's last row: n = rows seen, rs = start position of the run
# of equal values ending there, x1..x3 = last three values, c = pivot of its block, tp1/tp2/cp = the
# previous block's final prefix sums and pivot.
_INT_STATE = ("n", "rs")
_FLOAT_STATE = ("x1", "x2", "x3", "c", "tp1", "tp2", "cp")


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
        if (
            isinstance(sigmas, bool)
            or not isinstance(sigmas, int | float)
            or not math.isfinite(sigmas)
            or sigmas <= 0
        ):
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
        if VALUE in keys:
            raise AnalyticsConfigError(f"keys must not include the {VALUE!r} column")
        self.avg_rows = avg_rows
        self.baseline_rows = baseline_rows
        self.sigmas = float(sigmas)
        self.keys = keys
        self._ring = max(avg_rows, baseline_rows) + 1
        self._block = _block_size(self._ring)
        self._keytab: pl.DataFrame | None = None  # key columns + "__kid", row i has kid i
        self._nkeys = 0
        self._cap = 0
        self._ints: dict[str, pl.Series] = {k: pl.Series(k, [], pl.Int64) for k in _INT_STATE}
        self._floats: dict[str, pl.Series] = {k: pl.Series(k, [], pl.Float64) for k in _FLOAT_STATE}
        self._e1 = pl.Series("e1", [], pl.Float64)  # ring of E1, slot kid * ring + pos % ring
        self._e2 = pl.Series("e2", [], pl.Float64)
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

    def __repr__(self) -> str:
        return (
            f"RollingAnomalyDetector(avg_rows={self.avg_rows}, baseline_rows={self.baseline_rows}, "
            f"sigmas={self.sigmas}, keys={self.keys!r}, state_keys={self._nkeys})"
        )

    # ------------------------------------------------------------------ validation
    def _validate(self, batch: pl.DataFrame) -> pl.Series:
        """Check a batch before anything changes; returns ``value`` as Float64."""
        if not isinstance(batch, pl.DataFrame):
            raise AnalyticsInputError(
                f"batch must be a polars DataFrame, got {type(batch).__name__}", column="<batch>"
            )
        for col in (*self.keys, VALUE):
            if col not in batch.columns:
                raise AnalyticsInputError(
                    f"batch is missing required column {col!r} (required: {', '.join((*self.keys, VALUE))})",
                    column=col,
                )
        raw = batch.get_column(VALUE)
        if not raw.dtype.is_numeric():
            casted = raw.cast(pl.Float64, strict=False) if raw.dtype == pl.String else None
            if casted is not None:
                bad = (casted.is_null() & raw.is_not_null()).arg_true()
                row = int(bad[0]) if len(bad) else 0
            else:
                row = 0
            shown = raw[row] if len(raw) else None
            raise AnalyticsInputError(
                f"column {VALUE!r} must be numeric, got dtype {raw.dtype} "
                f"(first offending row {row}: {shown!r})",
                column=VALUE,
                row=row,
            )
        value = raw.cast(pl.Float64)
        if value.null_count():
            row = int(value.is_null().arg_true()[0])
            raise AnalyticsInputError(
                f"column {VALUE!r} has a null at row {row} (first offending row); values must be present",
                column=VALUE,
                row=row,
            )
        finite = value.is_finite()
        if not finite.all():
            row = int((~finite).arg_true()[0])
            raise AnalyticsInputError(
                f"column {VALUE!r} has a non-finite value {value[row]!r} at row {row} (first offending "
                "row); NaN and infinities are rejected",
                column=VALUE,
                row=row,
            )
        if self._keytab is not None:
            for col in self.keys:
                want, got = self._keytab.schema[col], batch.schema[col]
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
        """Grow the per-key arrays (capacity only: no semantic state changes)."""
        if nkeys <= self._cap:
            return
        cap = max(nkeys, 2 * self._cap, 1024)
        extra = cap - self._cap
        for k, s in self._ints.items():
            self._ints[k] = pl.concat([s, pl.zeros(extra, pl.Int64, eager=True)], rechunk=True).rename(k)
        for k, s in self._floats.items():
            self._floats[k] = pl.concat([s, pl.zeros(extra, pl.Float64, eager=True)], rechunk=True).rename(k)
        ring_extra = pl.zeros(extra * self._ring, pl.Float64, eager=True)
        self._e1 = pl.concat([self._e1, ring_extra], rechunk=True).rename("e1")
        self._e2 = pl.concat([self._e2, ring_extra], rechunk=True).rename("e2")
        self._cap = cap

    def _key_ids(self, batch: pl.DataFrame) -> tuple[pl.Series, pl.DataFrame | None]:
        """Map each row to its key id; returns the ids and the new key table if keys were added."""
        kf = batch.select(self.keys)
        if self._keytab is None:
            tab = kf.clear().with_columns(pl.lit(None, pl.Int64).alias("__kid"))
        else:
            tab = self._keytab
            kf = kf.cast({c: tab.schema[c] for c in self.keys if kf.schema[c] == pl.Null})
        joined = kf.join(tab, on=list(self.keys), how="left", nulls_equal=True, maintain_order="left")
        kid = joined.get_column("__kid")
        if not kid.null_count():
            return kid, None
        new = (
            joined.filter(pl.col("__kid").is_null())
            .select(self.keys)
            .unique(maintain_order=True)
            .with_columns((pl.int_range(pl.len(), dtype=pl.Int64) + self._nkeys).alias("__kid"))
        )
        newtab = pl.concat([tab, new], how="vertical")
        kid = kf.join(newtab, on=list(self.keys), how="left", nulls_equal=True, maintain_order="left")
        return kid.get_column("__kid"), newtab

    # ------------------------------------------------------------------ processing
    def process(self, batch: pl.DataFrame) -> pl.DataFrame:
        """Process the next batch (rows in arrival order); returns it plus avg_value and anomaly_status.

        A rejected batch (AnalyticsInputError) leaves the state untouched.
        """
        value = self._validate(batch)
        n = batch.height
        if n == 0:
            return batch.with_columns(
                pl.Series(AVG_VALUE, [], pl.Float64), pl.Series(ANOMALY_STATUS, [], pl.String)
            )
        kid, newtab = self._key_ids(batch)
        nkeys_after = self._nkeys if newtab is None else newtab.height
        self._reserve(nkeys_after)
        sorted_rows, commit = self._compute(kid, value)
        # Everything below mutates state; nothing below can fail on bad input.
        commit()
        if newtab is not None:
            self._keytab = newtab
            self._nkeys = nkeys_after
        perm = sorted_rows.get_column("i")
        avg = pl.zeros(n, pl.Float64, eager=True).scatter(perm, sorted_rows.get_column("avg"))
        anomaly = pl.repeat(False, n, eager=True).scatter(perm, sorted_rows.get_column("anom"))
        status = pl.select(
            pl.when(pl.lit(anomaly)).then(pl.lit("ANOMALY")).otherwise(pl.lit("NORMAL"))
        ).to_series()
        return batch.with_columns(avg.alias(AVG_VALUE), status.alias(ANOMALY_STATUS))

    def _stages(self, steps: int) -> list[list[pl.Expr]]:
        """The per-batch plan as flat expression stages (built once per scan depth, then cached).

        Rows arrive sorted by key, so "k rows earlier for the same key" is a plain shift guarded by
        ``loc >= k`` (loc = index of the row among its key's rows in this batch). Expressions stay
        flat, one stage per dependency level, because polars expands shared sub-expressions.
        """
        cached = self._plans.get(steps)
        if cached is not None:
            return cached
        B = self._block
        Wa, Wb = self.avg_rows, self.baseline_rows
        col, when, lit = pl.col, pl.when, pl.lit
        x, loc, pos, gs, bstart = (col(c) for c in ("x", "loc", "pos", "gs", "bstart"))

        def prev(name: str, k: int, fallback: pl.Expr) -> pl.Expr:
            """Value of ``name`` k rows earlier for the same key, else the fallback (from state)."""
            return when(loc >= k).then(col(name).shift(k)).otherwise(fallback)

        def carry(start_value: pl.Expr, state: str) -> pl.Expr:
            """Forward fill within a key, seeded at the key's first row with its state value."""
            return when(gs & start_value.is_null()).then(col(state)).otherwise(start_value).forward_fill()

        stages: list[list[pl.Expr]] = []
        stages.append(
            [
                (pos % B == 0).alias("bstart"),
                (pos // B).alias("blk"),
                prev("x", 1, when(col("s_n") >= 1).then(col("s_x1"))).alias("xp1"),
                prev("x", 2, when(loc == 1).then(col("s_x1")).otherwise(col("s_x2"))).alias("xp2"),
                prev(
                    "x",
                    3,
                    when(loc == 2).then(col("s_x1")).when(loc == 1).then(col("s_x2")).otherwise(col("s_x3")),
                ).alias("xp3"),
                pl.max_horizontal(pos - Wa, lit(0, pl.Int64)).alias("sa"),
                pl.min_horizontal(pos, lit(Wb, pl.Int64)).alias("nb"),
            ]
        )
        median3 = pl.max_horizontal(
            pl.min_horizontal("xp1", "xp2"), pl.min_horizontal(pl.max_horizontal("xp1", "xp2"), "xp3")
        )
        newrun = col("xp1").is_null() | (x != col("xp1"))
        r = col("r")
        stages.append(
            [
                # Block pivot: the key's first value, then the median of the 3 values before the block.
                carry(when(bstart).then(when(pos == 0).then(x).otherwise(median3)), "s_c").alias("c"),
                # Start position of the run of equal values ending at this row.
                carry(when(newrun).then(pos), "s_rs").alias("rsr"),
                (r - when(gs | bstart).then(r).forward_fill()).alias("ql"),
                (pos - col("nb")).alias("sb"),
                (pos - col("sa") + 1).alias("na"),
            ]
        )
        d = x - col("c")
        cont = gs & ~bstart
        stages.append(
            [
                when(cont).then(col("s_e1") + d).otherwise(d).alias("E1"),
                when(cont).then(col("s_e2") + d * d).otherwise(d * d).alias("E2"),
            ]
        )
        # Segmented inclusive scan (Hillis-Steele) inside each (key, block) run of rows.
        for i in range(steps):
            step = 1 << i
            has = col("ql") >= step
            stages.append(
                [
                    (col("E1") + when(has).then(col("E1").shift(step)).otherwise(0.0)).alias("E1"),
                    (col("E2") + when(has).then(col("E2").shift(step)).otherwise(0.0)).alias("E2"),
                ]
            )

        def older(name: str, k: int) -> pl.Expr:
            """Prefix value k positions back: a shift inside the batch, else the ring value gathered."""
            return when(loc >= k).then(col(name).shift(k)).otherwise(col(f"g_{name}_{k}"))

        stages.append(
            [
                prev("E1", 1, col("s_e1")).alias("E1p"),
                prev("E2", 1, col("s_e2")).alias("E2p"),
                prev("c", 1, col("s_c")).alias("cpr"),
                prev("rsr", 1, col("s_rs")).alias("rsp"),
                older("E1", Wa + 1).alias("E1a"),
                older("E1", Wb + 1).alias("E1b"),
                older("E2", Wb + 1).alias("E2b"),
            ]
        )
        stages.append(
            [
                # Final prefix sums and pivot of the block before each row's block.
                carry(when(bstart).then(col("E1p")), "s_tp1").alias("Tp1"),
                carry(when(bstart).then(col("E2p")), "s_tp2").alias("Tp2"),
                carry(when(bstart).then(col("cpr")), "s_cp").alias("cp"),
                # avg window [sa, pos]: does it reach into the previous block?
                (col("sa") // B != col("blk")).alias("xa"),
                when(col("sa") % B != 0).then(col("E1a")).otherwise(0.0).alias("e1sa"),
                # baseline window [sb, pos - 1]
                (col("sb") // B != (pos - 1) // B).alias("xb"),
                when(col("sb") % B != 0).then(col("E1b")).otherwise(0.0).alias("e1sb"),
                when(col("sb") % B != 0).then(col("E2b")).otherwise(0.0).alias("e2sb"),
            ]
        )
        # Each window = part A (tail of the previous block; empty unless crossing) + part B.
        stages.append(
            [
                prev("Tp1", 1, col("s_tp1")).alias("Tp1p"),
                prev("Tp2", 1, col("s_tp2")).alias("Tp2p"),
                prev("cp", 1, col("s_cp")).alias("cpp"),
                when(col("xa")).then(col("blk") * B - col("sa")).otherwise(0).alias("naA"),
                when(col("xa")).then(col("Tp1") - col("e1sa")).otherwise(0.0).alias("a1a"),
                when(col("xa")).then(col("E1")).otherwise(col("E1") - col("e1sa")).alias("b1a"),
                when(col("xb")).then((pos - 1) // B * B - col("sb")).otherwise(0).alias("nbA"),
                when(col("xb")).then(col("E1p")).otherwise(col("E1p") - col("e1sb")).alias("b1b"),
                when(col("xb")).then(col("E2p")).otherwise(col("E2p") - col("e2sb")).alias("b2b"),
            ]
        )
        stages.append(
            [
                when(col("rsr") <= col("sa"))
                .then(x)
                .otherwise(
                    col("c") + (col("a1a") + col("b1a") + col("naA") * (col("cp") - col("c"))) / col("na")
                )
                .alias("avg"),
                when(col("xb")).then(col("Tp1p") - col("e1sb")).otherwise(0.0).alias("a1b"),
                when(col("xb")).then(col("Tp2p") - col("e2sb")).otherwise(0.0).alias("a2b"),
                (col("nb") - col("nbA")).alias("nbB"),
            ]
        )
        stages.append(
            [
                when(col("xb")).then(col("a1b") / col("nbA")).otherwise(0.0).alias("mA"),
                (col("b1b") / col("nbB")).alias("mB"),
            ]
        )
        # Chan et al.: M2 = M2_A + M2_B + delta^2 * nA * nB / n, with both parts shifted by their pivots.
        mean = col("cpr") + (col("a1b") + col("b1b") + col("nbA") * (col("cpp") - col("cpr"))) / col("nb")
        delta = (col("cpr") - col("cpp")) + (col("mB") - col("mA"))
        constant = col("rsp") <= col("sb")
        stages.append(
            [
                when(constant).then(col("xp1")).otherwise(mean).alias("mean"),
                when(constant)
                .then(0.0)
                .otherwise(
                    (col("a2b") - col("a1b") * col("mA"))
                    + (col("b2b") - col("b1b") * col("mB"))
                    + delta * delta * (col("nbA") * col("nbB")) / col("nb")
                )
                .alias("m2"),
            ]
        )
        std = (pl.max_horizontal("m2", lit(0.0)) / (col("nb") - 1)).sqrt()
        stages.append(
            [
                ((col("nb") >= 2) & ((x - col("mean")).abs() > self.sigmas * std)).fill_null(False).alias("anom"),
                (col("kid") != col("kid").shift(-1)).fill_null(True).alias("last"),
            ]
        )
        self._plans[steps] = stages
        return stages

    def _compute(self, kid: pl.Series, value: pl.Series) -> tuple[pl.DataFrame, Callable[[], None]]:
        """Compute the windows for one batch; returns rows sorted by key and a commit closure."""
        R = self._ring
        Wa, Wb = self.avg_rows, self.baseline_rows
        col, when = pl.col, pl.when
        n = len(kid)
        w = pl.DataFrame({"kid": kid, "x": value}).with_row_index("i").sort("kid", maintain_order=True)
        skid = w.get_column("kid")
        # State of every row's key, gathered with sorted (cache-friendly) ids.
        state = [s.gather(skid).alias(f"s_{k}") for k, s in self._ints.items()]
        state += [s.gather(skid).alias(f"s_{k}") for k, s in self._floats.items()]
        w = w.hstack(state)
        r = pl.int_range(pl.len(), dtype=pl.Int64)
        gs = (col("kid") != col("kid").shift(1)).fill_null(True)
        w = w.with_columns(r.alias("r"), gs.alias("gs"), (r - when(gs).then(r).forward_fill()).alias("loc"))
        w = w.with_columns((col("s_n") + col("loc")).alias("pos"))

        def slot(k: int) -> pl.Expr:
            # Ring slot of the prefix k positions back, for rows whose predecessor precedes the batch.
            return when((col("loc") < k) & (col("pos") >= k)).then(col("kid") * R + (col("pos") - k) % R)

        last_slot = col("kid") * R + (col("s_n") + (R - 1)) % R
        slots = w.select(last_slot.alias("l"), slot(Wa + 1).alias("a"), slot(Wb + 1).alias("b"))
        w = w.hstack(
            [
                self._e1.gather(slots.get_column("l")).alias("s_e1"),
                self._e2.gather(slots.get_column("l")).alias("s_e2"),
                self._e1.gather(slots.get_column("a")).alias(f"g_E1_{Wa + 1}"),
                self._e1.gather(slots.get_column("b")).alias(f"g_E1_{Wb + 1}"),
                self._e2.gather(slots.get_column("b")).alias(f"g_E2_{Wb + 1}"),
            ]
        )
        steps = max(0, (min(self._block, n) - 1).bit_length())
        lf = w.lazy()
        for stage in self._stages(steps):
            lf = lf.with_columns(stage)
        w = lf.collect(engine="in-memory")

        # ---- state after the batch
        pos = col("pos")
        lastrows = w.filter(col("last")).select(
            "kid",
            (pos + 1).alias("n"),
            col("rsr").alias("rs"),
            col("x").alias("x1"),
            col("xp1").fill_null(0.0).alias("x2"),
            col("xp2").fill_null(0.0).alias("x3"),
            "c",
            col("Tp1").fill_null(0.0).alias("tp1"),
            col("Tp2").fill_null(0.0).alias("tp2"),
            col("cp").fill_null(0.0).alias("cp"),
        )
        n_after = when(col("last")).then(pos + 1).backward_fill()
        ringrows = w.filter(pos >= n_after - R).select((col("kid") * R + pos % R).alias("slot"), "E1", "E2")
        sorted_rows = w.select("i", "avg", "anom")

        def commit() -> None:
            ids = lastrows.get_column("kid")
            for k in _INT_STATE:
                self._ints[k].scatter(ids, lastrows.get_column(k))
            for k in _FLOAT_STATE:
                self._floats[k].scatter(ids, lastrows.get_column(k))
            slots = ringrows.get_column("slot")
            self._e1.scatter(slots, ringrows.get_column("E1"))
            self._e2.scatter(slots, ringrows.get_column("E2"))

        return sorted_rows, commit

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
        """The whole state as versioned bytes: magic, version, JSON config header, Arrow IPC table."""
        k, R = self._nkeys, self._ring
        if self._keytab is None:
            table = pl.DataFrame()
        else:
            cols: list[pl.Series] = [*self._keytab.drop("__kid").get_columns()]
            cols += [s.head(k) for s in self._ints.values()]
            cols += [s.head(k) for s in self._floats.values()]
            cols.append(self._e1.head(k * R).reshape((k, R)).alias("e1"))
            cols.append(self._e2.head(k * R).reshape((k, R)).alias("e2"))
            table = pl.DataFrame(cols)
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
            if det._ring != cfg["ring"] or det._block != cfg["block"]:
                raise AnalyticsSnapshotError("snapshot block layout does not match this engine")
            table = pl.read_ipc(io.BytesIO(blob[start + hlen :]))
        except AnalyticsSnapshotError:
            raise
        except Exception as exc:  # corrupt header or payload
            raise AnalyticsSnapshotError(f"corrupt snapshot: {exc}") from exc
        if table.width == 0:
            return det
        k, R = table.height, det._ring
        det._keytab = table.select(det.keys).with_columns(pl.int_range(k, dtype=pl.Int64).alias("__kid"))
        det._nkeys = k
        det._reserve(k)
        idx = pl.int_range(k, dtype=pl.Int64, eager=True)
        for name in _INT_STATE:
            det._ints[name].scatter(idx, table.get_column(name).cast(pl.Int64))
        for name in _FLOAT_STATE:
            det._floats[name].scatter(idx, table.get_column(name).cast(pl.Float64))
        ring_idx = pl.int_range(k * R, dtype=pl.Int64, eager=True)
        det._e1.scatter(ring_idx, table.get_column("e1").reshape((k * R,)))
        det._e2.scatter(ring_idx, table.get_column("e2").reshape((k * R,)))
        return det
