"""The compiled loops of the stream analytics engine (numba): the per-row step and the key-hash probe.

The per-row step owns the per-key state layout. A key has a row of ``len(FIELDS)`` float64 in
``fields`` (at ``kid * len(FIELDS)``: 64 bytes) and a ring of ``SLOT`` = (E1, E2, x) triples in
``arena`` at float offset ``ring_at``:

* The key's history is cut into aligned *blocks* of ``block`` positions (``block >= 2 * ring``, so a
  window spans at most two blocks). Each block has a *pivot* ``c``, its first value, so a series that
  drifts stays close to it.
* The ring holds, for each of the key's last ``ring`` positions, the block-local prefix sums
  ``E1 = sum(x - c)`` and ``E2 = sum((x - c)^2)`` and the position's value ``x``, side by side at
  ``ring_at + 3 * (position % ring)``.
* A key starts with a *small* ring of ``small_ring(ring)`` slots (its positions never wrap while it is
  that short) and moves to a full ring when its history outgrows it, so a key seen a few times costs
  ~260 bytes rather than ~2.5 kB. Rings are carved from the end of the arena, in arrival order; a key
  never seen has ``ring_at = -1``.
* The fields describe the key's last row: ``n`` rows seen; ``rs`` start of the run of equal values
  ending there; ``x1`` its value; ``c`` its block's pivot; ``tp1``/``tp2``/``cp`` the previous
  block's final prefix sums and pivot; ``ring_at``. Counts and offsets are float64, exact up to 2**53.

A window's sums come from two prefix values (its end and the position before its start); a window
reaching into the previous block re-expresses that part around the current pivot. Because the sums
are of shifted values and restart every block, a 1e9-magnitude series with unit noise loses nothing
and rounding error never accumulates along the stream. A window whose values are all equal (known
from ``rs``) is answered exactly: mean = that value, stddev = 0.

Wild values. A difference of prefix sums is only as precise as the prefix sums are small: one value
far from the rest of its block (1e12 amid N(100, 10), a jump to another level, a drop of the noise
from 10 to 1e-9) leaves every later prefix of the block huge next to the windows that no longer hold
it, for up to ``block + ring`` rows. So each window checks a rigorous first-order bound on the
rounding error of its sums. Let W be the largest squared sum the window's E1, E2 and re-pivoting
met (E2 at its end, plus the previous block's and the re-pivoting term when it reaches back): E2
only grows within a block, and ``|E1| <= sqrt(m * E2)`` over ``m`` positions (Cauchy-Schwarz), so
every step's rounding is bounded through W. While ``W <= 2**16 * m2`` (m2 the window's sum of squared
deviations) the mean's error is below ``rho_sd * stddev`` and the band's below ``rho_band * band``
(~3e-7, constants per call), and the anomaly decision stands if ``|value - mean|`` and the band are
further apart than that; an avg_value stands if ``kappa * W <= avg^2`` (error below ``2**-36``
relative). The check costs a few multiplications, no division or square root. Otherwise the window
is computed from the values in the ring: exact sums (Shewchuk's partials, as ``math.fsum``) for the
mean and for ``n |value - mean|``, the corrected two-pass variance, all scaled by 2**-600 when a
value exceeds 2**500 so that no sum or square overflows. Prefix sums that overflowed (inf, NaN) fail
the check, so any finite doubles work; the fallback costs O(window) for the few hundred rows of a key
after a wild value.

Rows are processed strictly in arrival order, one step each, so the result is bit-for-bit the
same however the stream is cut into batches (which path a window takes depends only on the state).
The compiled step prefetches the state of the rows ahead of it: with more keys than the CPU caches
hold, waiting for memory is most of its time.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import TypedDict

import numpy as np

FIELDS = ("n", "rs", "x1", "c", "tp1", "tp2", "cp", "ring_at")
_N, _RS, _X1, _C, _TP1, _TP2, _CP, _AT = range(len(FIELDS))
HISTORY_FIELDS = FIELDS[:_AT]  # what a snapshot keeps of the fields (ring_at is where, not what)
SLOT = ("e1", "e2", "x")  # the float64 a ring holds per position
_S = len(SLOT)
SMALL_RING = 8  # slots in a new key's ring: 192 bytes, three cache lines

# The error bounds of the O(1) step (see the module docstring).
_U = 2.0**-53  # unit roundoff
_TINY = 2.0**-1070  # per square: what underflow can take from E2 (keeps the Cauchy-Schwarz bound true)
_MEAN_TOL = 2.0**-36  # a mean from prefix sums stands if its error bound is this small, relative
_SPREAD = 2.0**16  # prefix sums used for a variance while their magnitude is at most this times it
_FINITE = 1.0e308  # a magnitude at least this large means inf or NaN crept in
_SCALE_AT = 2.0**500  # a window holding a value beyond this is summed scaled, so squares stay finite
_SCALE = 2.0**-600


def small_ring(ring: int) -> int:
    """Slots in a new key's ring (all of them when the windows are that short)."""
    return min(SMALL_RING, ring)


def ring_floats(n: np.ndarray, ring: int) -> np.ndarray:
    """Float64 in use in the ring of a key that has seen ``n`` rows (its last ``min(n, ring)`` slots)."""
    return _S * np.minimum(n, ring)


def ring_capacity(n: np.ndarray, ring: int) -> np.ndarray:
    """Float64 a key that has seen ``n`` rows is given on restore: a small ring while it fits."""
    small = small_ring(ring)
    return np.where(n <= small, _S * small, _S * ring)


def arena_headroom(rows: int, ring: int) -> int:
    """Most arena float64 a batch of ``rows`` can claim: each row starts one ring at most."""
    return _S * ring * rows


def rings_from_sums(fields: np.ndarray, pairs: np.ndarray, ring: int, block: int) -> np.ndarray:
    """Rings of snapshot versions 1 and 2 ((E1, E2) per position) with each position's value put back.

    ``fields`` holds ``HISTORY_FIELDS`` per key and ``pairs`` the keys' ``2 * min(n, ring)`` floats,
    in slot order. A value is its block's pivot plus the step of E1 into it: exact at a block start,
    elsewhere within a rounding of the block's prefix sums (the precision the engine that wrote them
    had). Values are only read to recompute a window the prefix sums cannot give; the oldest
    position of a full ring is never read again (the next row overwrites it), and is NaN when its
    predecessor is gone.
    """
    fields = np.asarray(fields, dtype=np.float64)
    n = fields[:, _N].astype(np.int64)
    used = np.minimum(n, ring)
    first = np.cumsum(used) - used  # each key's first slot
    key = np.repeat(np.arange(len(n)), used)
    slot = np.arange(int(used.sum())) - first[key]
    last = n[key] - 1
    pos = last - (last - slot) % ring  # the position a slot holds
    e1, e2 = pairs[0::2], pairs[1::2]
    starts_block = pos % block == 0
    pivot = np.where(pos - pos % block == last - last % block, fields[key, _C], fields[key, _CP])
    has_prev = pos - 1 >= n[key] - used[key]
    prev = first[key] + (pos - 1) % ring
    e1_prev = np.where(starts_block, 0.0, e1[np.where(has_prev, prev, 0)])
    x = np.where(starts_block | has_prev, pivot + (e1 - e1_prev), np.nan)
    return np.column_stack([e1, e2, x]).reshape(-1)


def block_size(ring: int) -> int:
    """Block length: at least twice the ring, so any window spans at most two blocks."""
    return max(2 * ring, 32)


class _Loops(TypedDict):
    """The two loops, as Python functions (interpreted) or numba dispatchers (compiled)."""

    advance: Callable[..., None]
    index_keys: Callable[..., int]


_compiled: _Loops | None = None  # the loops, once numba has compiled them
_interpreted_rows = 0
# Loading the compiled loops costs a process seconds (numba's import and LLVM start-up, even with the
# on-disk cache warm) while the interpreted step costs microseconds a row. So
# a process interprets its first rows (a short micro-batch run never pays the start-up) and compiles
# once it has done this many.
INTERPRET_ROWS = 100_000
# The per-row step is bound by memory latency (the keys' state is far larger than the CPU caches),
# so the compiled loop asks for the cache lines of the rows this far ahead.
PREFETCH_ROWS = 8


def _prefetch(array: np.ndarray, index: int) -> None:
    """Ask the CPU to start loading ``array[index]``'s cache line; compiled, a prefetch instruction."""


@functools.cache
def _lower_prefetch() -> None:
    """Teach numba to compile :func:`_prefetch` to LLVM's prefetch intrinsic (once per process)."""
    import numba
    from llvmlite import ir
    from numba.core import cgutils
    from numba.extending import intrinsic, overload

    @intrinsic
    def prefetch_line(typingctx, array, index):  # noqa: ARG001 - numba's intrinsic signature
        def codegen(context, builder, signature, args):  # noqa: ARG001
            aryty = signature.args[0]
            ary = context.make_array(aryty)(context, builder, args[0])
            ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]])
            i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]), "llvm.prefetch.p0i8"
            )
            # read, keep in all cache levels, data cache
            builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(3), i32(1)])
            return context.get_dummy_value()

        return numba.types.void(array, numba.types.intp), codegen

    @overload(_prefetch)
    def _prefetch_compiled(array, index):  # noqa: ARG001
        # numba's @intrinsic passes typingctx itself; numba has no stubs, so pyright sees the 3-argument def
        return lambda array, index: prefetch_line(array, index)  # pyright: ignore[reportCallIssue]


@functools.cache
def _register_helpers() -> None:
    """Let compiled loops call the window helpers (once per process)."""
    from numba.extending import register_jitable

    for helper in (_add_partial, _partials_total, _window_sum, _window_anomaly):
        register_jitable(helper)


def _compile() -> _Loops:
    """numba-compile the loops (compilation itself happens on each one's first call, or loads its cache)."""
    import numba

    _lower_prefetch()
    _register_helpers()
    jit = numba.njit(cache=True, nogil=True)
    return {"advance": jit(_advance), "index_keys": jit(_index_keys)}


def precompile() -> None:
    """Compile both loops now and call each once, which writes numba's on-disk cache (for images)."""
    global _compiled
    if _compiled is None:
        _compiled = _compile()
    one = np.zeros(1, dtype=np.int64)
    index_keys(one, np.zeros(2, dtype=np.int64), np.full(2, -1, dtype=np.int64), 0, one.copy(), one.copy())
    ring = 3
    fields = np.full(len(FIELDS), -1.0)
    fields[:_AT] = 0.0
    advance(
        one,
        np.zeros(1),
        fields,
        np.zeros(arena_headroom(1, ring)),
        np.zeros(1, dtype=np.int64),
        ring,
        block_size(ring),
        1,
        2,
        3.0,
        np.zeros(1),
        np.zeros(1, dtype=np.bool_),
    )


def _loops(rows: int) -> _Loops:
    """The loops to run a batch of ``rows`` with: interpreted at first, compiled from then on."""
    global _compiled, _interpreted_rows
    if _compiled is None:
        if _interpreted_rows + rows <= INTERPRET_ROWS:
            _interpreted_rows += rows
            return {"advance": _advance, "index_keys": _index_keys}
        _compiled = _compile()
    return _compiled


def index_keys(
    hashes: np.ndarray,
    slot_hash: np.ndarray,
    slot_id: np.ndarray,
    count: int,
    ids_out: np.ndarray,
    new_rows_out: np.ndarray,
) -> int:
    """Look each row's key hash up in the open-addressing table, inserting unseen ones (see :func:`_index_keys`).

    Runs compiled once :func:`advance` has started running compiled, interpreted before that (the
    rows are counted there, not here).
    """
    loop = _compiled["index_keys"] if _compiled is not None else _index_keys
    return int(loop(hashes, slot_hash, slot_id, count, ids_out, new_rows_out))


def _index_keys(
    hashes: np.ndarray,  # int64, each row's 64-bit key hash
    slot_hash: np.ndarray,  # int64, the table (a power of two long, at most half full): hash per slot
    slot_id: np.ndarray,  # int64, the id per slot, -1 for an empty slot; both updated in place
    count: int,  # ids in use; unseen hashes get count, count + 1, ...
    ids_out: np.ndarray,  # int64, per row: its key's id
    new_rows_out: np.ndarray,  # int64: the rows whose hash was inserted, in order
) -> int:
    """Linear probing from the hash's low bits; returns how many hashes were inserted."""
    mask = slot_id.shape[0] - 1
    added = 0
    for i in range(hashes.shape[0]):
        h = hashes[i]
        slot = h & mask
        while True:
            kid = slot_id[slot]
            if kid < 0:
                kid = count + added
                slot_hash[slot] = h
                slot_id[slot] = kid
                new_rows_out[added] = i
                added += 1
                break
            if slot_hash[slot] == h:
                break
            slot = (slot + 1) & mask
        ids_out[i] = kid
    return added


def advance(
    kids: np.ndarray,
    xs: np.ndarray,
    fields: np.ndarray,
    arena: np.ndarray,
    arena_used: np.ndarray,
    ring: int,
    block: int,
    avg_rows: int,
    baseline_rows: int,
    sigmas: float,
    avg_out: np.ndarray,
    anomaly_out: np.ndarray,
) -> None:
    """Advance each row's key by one position and write the row's two results (see :func:`_advance`).

    ``arena`` must have ``arena_headroom(len(kids), ring)`` float64 free after ``arena_used[0]``.
    The loop runs interpreted for a process's first ``INTERPRET_ROWS`` rows, compiled by numba after
    that; both do the same float operations in the same order, so results are bit-identical.
    """
    # One signature for the cache: polars hands out read-only views, numba types those separately.
    kids, xs = np.require(kids, np.int64, ["C", "W"]), np.require(xs, np.float64, ["C", "W"])
    loop = _loops(len(kids))["advance"]
    ahead = 0 if loop is _advance else PREFETCH_ROWS  # interpreted, a prefetch is only overhead
    # Interpreted, numpy scalars warn where the compiled loop silently overflows to inf (then checked).
    with np.errstate(all="ignore"):
        loop(
            kids,
            xs,
            fields,
            arena,
            arena_used,
            ring,
            small_ring(ring),
            block,
            avg_rows,
            baseline_rows,
            float(sigmas),
            avg_out,
            anomaly_out,
            ahead,
        )


def _add_partial(partials: np.ndarray, m: int, v: float) -> int:
    """Add ``v`` to the exact sum held by ``partials[:m]`` (Shewchuk's non-overlapping partials, as
    ``math.fsum``); returns how many partials hold it now (one more at most)."""
    k = 0
    for j in range(m):
        y = partials[j]
        if abs(v) < abs(y):
            v, y = y, v
        t = v + y
        err = y - (t - v)  # exact: what t lost of v + y
        if err != 0.0:
            partials[k] = err
            k += 1
        v = t
    partials[k] = v
    return k + 1


def _partials_total(partials: np.ndarray, m: int) -> float:
    """The exact sum the partials hold, rounded (largest first: within an ulp)."""
    total = 0.0
    for j in range(m - 1, -1, -1):
        total += partials[j]
    return total


def _window_sum(arena: np.ndarray, base: int, ring: int, lo: int, hi: int, also: float) -> tuple[float, float]:
    """The scale and the scaled sum, exact up to its rounding, of the values at positions [lo, hi].

    The scale is ``_SCALE`` if one of them (or ``also``) exceeds ``_SCALE_AT``, else 1: scaled, no sum,
    difference or square of them overflows.
    """
    big = abs(also)
    for q in range(lo, hi + 1):
        v = abs(arena[base + _S * (q % ring) + 2])
        if v > big:
            big = v
    scale = _SCALE if big > _SCALE_AT else 1.0
    partials = np.empty(hi - lo + 1)
    m = 0
    for q in range(lo, hi + 1):
        m = _add_partial(partials, m, arena[base + _S * (q % ring) + 2] * scale)
    return scale, _partials_total(partials, m)


def _window_anomaly(arena: np.ndarray, base: int, ring: int, lo: int, hi: int, x: float, sigmas: float) -> bool:
    """``|x - AVG| > sigmas * STDDEV_SAMP`` over the values at positions [lo, hi], computed from them.

    ``n |x - AVG|`` is summed exactly (each ``x - v`` split into two doubles that hold it exactly), so
    a mean that a double cannot hold (1e9 +/- 1e-6) does not tip the decision; the variance is the
    corrected two-pass one. So the decision is exact but within ~n ulps of the band's edge.
    """
    n = hi - lo + 1
    scale, total = _window_sum(arena, base, ring, lo, hi, x)
    mean = total / n
    d1 = d2 = 0.0
    for q in range(lo, hi + 1):
        d = arena[base + _S * (q % ring) + 2] * scale - mean
        d1 += d
        d2 += d * d
    m2 = d2 - d1 * d1 / n  # less the rounding of the mean
    if m2 < 0.0:
        m2 = 0.0
    xs = x * scale
    partials = np.empty(2 * n)
    m = 0
    for q in range(lo, hi + 1):
        v = -arena[base + _S * (q % ring) + 2] * scale
        t = xs + v
        tv = t - xs
        m = _add_partial(partials, m, t)
        m = _add_partial(partials, m, (xs - (t - tv)) + (v - tv))  # what t lost (TwoSum)
    return abs(_partials_total(partials, m)) > n * (sigmas * math.sqrt(m2 / (n - 1)))


def _advance(
    kids: np.ndarray,  # int64, the key id of each row, in arrival order
    xs: np.ndarray,  # float64, each row's value
    fields: np.ndarray,  # float64, len(FIELDS) per key id; updated in place
    arena: np.ndarray,  # float64, the keys' rings; updated in place
    arena_used: np.ndarray,  # int64[1], float64 of the arena in use; rings are taken from there on
    ring: int,
    small: int,
    block: int,
    avg_rows: int,
    baseline_rows: int,
    sigmas: float,
    avg_out: np.ndarray,  # float64, per row: AVG over the avg_rows preceding rows and the row
    anomaly_out: np.ndarray,  # bool, per row: outside the sigma band of the baseline_rows preceding rows
    ahead: int,  # prefetch the state of the row this far ahead (0: don't)
) -> None:
    """The per-row loop, compiled by numba on first use."""
    nf = len(FIELDS)
    rows = kids.shape[0]
    half = ahead // 2
    # Error bounds (module docstring), first order, then doubled. With W the largest squared sum a
    # window's sums met, every E1-like magnitude is at most sqrt(block * W) (Cauchy-Schwarz), s1's
    # error at most 8u (n + 2) sqrt(block * W) and m2's at most 64u (n + block) W. So while
    # W <= _SPREAD * m2, the mean (and |x - mean|) is off by less than rho_sd * stddev + 3u (|mean| +
    # |x - mean|), and the band by less than rho_band * band. An avg is off by less than
    # 16u sqrt(block * W) + u |avg|, which is within _MEAN_TOL |avg| when kappa * W <= avg^2.
    rho_sd = 2.0 * (16.0 * _U * math.sqrt(block * _SPREAD * baseline_rows) + _U * math.sqrt(_SPREAD))
    rho_band = 2.0 * (64.0 * _U * (baseline_rows + block) * _SPREAD + 4.0 * _U)
    kappa = 1024.0 * _U * _U * block / ((_MEAN_TOL - 2.0 * _U) * (_MEAN_TOL - 2.0 * _U))
    tiny = block * _TINY
    for i in range(rows):
        if ahead:
            # The fields of row i + ahead now; half-way there, with its ring and position known, the
            # ring slots it will read and write. Hints only: the results do not depend on them.
            if i + ahead < rows:
                _prefetch(fields, kids[i + ahead] * nf)
            if i + half < rows:
                g = kids[i + half] * nf
                at = int(fields[g + _AT])
                if at >= 0:
                    p = int(fields[g + _N])
                    _prefetch(arena, at + _S * (p % ring))
                    if p >= 1:
                        _prefetch(arena, at + _S * ((p - 1) % ring))
                    if p > baseline_rows:
                        _prefetch(arena, at + _S * ((p - baseline_rows - 1) % ring))
                    if p > avg_rows:
                        _prefetch(arena, at + _S * ((p - avg_rows - 1) % ring))
        x = xs[i]
        f = kids[i] * nf
        pos = int(fields[f + _N])
        rs = int(fields[f + _RS])
        x1, c = fields[f + _X1], fields[f + _C]
        tp1, tp2, cp = fields[f + _TP1], fields[f + _TP2], fields[f + _CP]
        base = int(fields[f + _AT])
        if base < 0:  # the key's first row: a small ring
            base = arena_used[0]
            arena_used[0] += _S * small
        elif pos == small and small < ring:  # about to outgrow its small ring: move to a full one
            grown = arena_used[0]
            arena_used[0] += _S * ring
            for j in range(_S * small):
                arena[grown + j] = arena[base + j]
            base = grown
        e1l = e2l = 0.0  # the prefix sums at the key's last row (its block's, which may have ended)
        if pos >= 1:
            last = base + _S * ((pos - 1) % ring)
            e1l, e2l = arena[last], arena[last + 1]

        # Baseline: positions [pos - nb, pos - 1], read from the state as of the key's last row.
        nb = min(pos, baseline_rows)
        anomaly = False
        if nb >= 2:
            lo = pos - nb
            if rs <= lo:  # every baseline value equals x1: exact mean, stddev 0
                anomaly = x != x1
            else:
                hi = pos - 1
                bs = hi - hi % block  # start of the block holding hi (pivot c)
                p1 = p2 = 0.0  # prefix sums just before the window (0 when it starts the block)
                if lo != bs:
                    s = base + _S * ((lo - 1) % ring)
                    p1, p2 = arena[s], arena[s + 1]
                if lo >= bs:
                    s1, s2 = e1l - p1, e2l - p2
                    w = e2l + tiny
                else:  # [lo, bs - 1] lies in the previous block, relative to its pivot cp
                    a1, a2 = tp1 - p1, tp2 - p2
                    na_, delta = bs - lo, cp - c
                    s1 = e1l + a1 + na_ * delta
                    s2 = e2l + a2 + delta * (2.0 * a1 + na_ * delta)
                    w = e2l + tp2 + abs(delta) * (2.0 * abs(a1) + na_ * abs(delta)) + tiny
                mean = c + s1 / nb
                m2 = s2 - s1 * s1 / nb
                decided = False
                if m2 > 0.0 and w <= _SPREAD * m2 and w < _FINITE:
                    dev = abs(x - mean)
                    sd = math.sqrt(m2 / (nb - 1))
                    band = sigmas * sd
                    if abs(dev - band) > rho_sd * sd + rho_band * band + 3.0 * _U * (abs(mean) + dev):
                        anomaly = dev > band
                        decided = True
                if not decided:  # the sums may be off by more than decides: ask the values
                    anomaly = _window_anomaly(arena, base, ring, lo, hi, x, sigmas)

        # The avg window [loa, pos]: read the prefix before it now, before this row overwrites its slot.
        loa = pos - min(pos, avg_rows)
        pa = 0.0
        if loa >= 1:
            pa = arena[base + _S * ((loa - 1) % ring)]

        # Advance the key by this row.
        pm = pos % block
        if pm == 0:  # a new block: remember the last one's final sums and pivot
            tp1, tp2, cp, c = e1l, e2l, c, x
            e1l = e2l = 0.0
        d = x - c
        e1l += d
        e2l += d * d
        slot = base + _S * (pos % ring)
        arena[slot] = e1l
        arena[slot + 1] = e2l
        arena[slot + 2] = x
        if pos == 0 or x != x1:
            rs = pos
        fields[f + _N] = pos + 1
        fields[f + _RS] = rs
        fields[f + _X1] = x
        fields[f + _C] = c
        fields[f + _TP1] = tp1
        fields[f + _TP2] = tp2
        fields[f + _CP] = cp
        fields[f + _AT] = base

        na = pos - loa + 1
        if rs <= loa:  # every value in the window equals x
            avg = x
        else:
            bs = pos - pm
            if loa > bs:
                s1 = e1l - pa
                w = e2l + tiny
            elif loa == bs:  # the window starts the block
                s1 = e1l
                w = e2l + tiny
            else:  # [loa, bs - 1] lies in the previous block
                a1, delta = tp1 - pa, cp - c
                shift = (bs - loa) * delta
                s1 = e1l + a1 + shift
                w = e2l + tp2 + abs(delta) * (2.0 * abs(a1) + abs(shift)) + tiny
            avg = c + s1 / na
            if not (kappa * w <= avg * avg and w < _FINITE):
                scale, total = _window_sum(arena, base, ring, loa, pos, 0.0)
                avg = total / na / scale
        avg_out[i] = avg
        anomaly_out[i] = anomaly
