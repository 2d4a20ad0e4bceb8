"""The compiled loops of the stream analytics engine (numba): the per-row step and the key-hash probe.

The per-row step owns the per-key state layout. A key has a row of ``len(FIELDS)`` float64 in
``fields`` (at ``kid * len(FIELDS)``: 64 bytes) and a ring of (E1, E2) pairs in ``arena``
at float offset ``ring_at``:

* The key's history is cut into aligned *blocks* of ``block`` positions (``block >= 2 * ring``, so a
  window spans at most two blocks). Each block has a *pivot* ``c``, its first value, so a series that
  drifts stays close to it.
* The ring holds the block-local prefix sums ``E1 = sum(x - c)`` and ``E2 = sum((x - c)^2)`` of the
  key's last ``ring`` positions, side by side at ``ring_at + 2 * (position % ring)``.
* A key starts with a *small* ring of ``small_ring(ring)`` pairs (its positions never wrap while it is
  that short) and moves to a full ring when its history outgrows it, so a key seen a few times costs
  ~200 bytes rather than ~1.7 kB. Rings are carved from the end of the arena, in arrival order; a key
  never seen has ``ring_at = -1``.
* The fields describe the key's last row: ``n`` rows seen; ``rs`` start of the run of equal values
  ending there; ``x1`` its value; ``c`` its block's pivot; ``tp1``/``tp2``/``cp`` the previous
  block's final prefix sums and pivot; ``ring_at``. Counts and offsets are float64, exact up to 2**53.

A window's sums come from two prefix values (its end and the position before its start); a window
reaching into the previous block re-expresses that part around the current pivot. Because the sums
are of shifted values and restart every block, a 1e9-magnitude series with unit noise loses nothing
and rounding error never accumulates along the stream. A window whose values are all equal (known
from ``rs``) is answered exactly: mean = that value, stddev = 0.

Rows are processed strictly in arrival order, one O(1) step each, so the result is bit-for-bit the
same however the stream is cut into batches. The compiled step prefetches the state of the rows ahead
of it: with more keys than the CPU caches hold, waiting for memory is most of its time.
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
SMALL_RING = 8  # pairs in a new key's ring: 128 bytes, two cache lines


def small_ring(ring: int) -> int:
    """Pairs in a new key's ring (all of them when the windows are that short)."""
    return min(SMALL_RING, ring)


def ring_floats(n: np.ndarray, ring: int) -> np.ndarray:
    """Float64 in use in the ring of a key that has seen ``n`` rows (its last ``min(n, ring)`` pairs)."""
    return 2 * np.minimum(n, ring)


def ring_capacity(n: np.ndarray, ring: int) -> np.ndarray:
    """Float64 a key that has seen ``n`` rows is given on restore: a small ring while it fits."""
    small = small_ring(ring)
    return np.where(n <= small, 2 * small, 2 * ring)


def arena_headroom(rows: int, ring: int) -> int:
    """Most arena float64 a batch of ``rows`` can claim: each row starts one ring at most."""
    return 2 * ring * rows


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


def _compile() -> _Loops:
    """numba-compile the loops (compilation itself happens on each one's first call, or loads its cache)."""
    import numba

    _lower_prefetch()
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
                    _prefetch(arena, at + 2 * (p % ring))
                    if p >= 1:
                        _prefetch(arena, at + 2 * ((p - 1) % ring))
                    if p > baseline_rows:
                        _prefetch(arena, at + 2 * ((p - baseline_rows - 1) % ring))
                    if p > avg_rows:
                        _prefetch(arena, at + 2 * ((p - avg_rows - 1) % ring))
        x = xs[i]
        f = kids[i] * nf
        pos = int(fields[f + _N])
        rs = int(fields[f + _RS])
        x1, c = fields[f + _X1], fields[f + _C]
        tp1, tp2, cp = fields[f + _TP1], fields[f + _TP2], fields[f + _CP]
        base = int(fields[f + _AT])
        if base < 0:  # the key's first row: a small ring
            base = arena_used[0]
            arena_used[0] += 2 * small
        elif pos == small and small < ring:  # about to outgrow its small ring: move to a full one
            grown = arena_used[0]
            arena_used[0] += 2 * ring
            for j in range(2 * small):
                arena[grown + j] = arena[base + j]
            base = grown
        e1l = e2l = 0.0  # the prefix sums at the key's last row (its block's, which may have ended)
        if pos >= 1:
            last = base + 2 * ((pos - 1) % ring)
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
                    s = base + 2 * ((lo - 1) % ring)
                    p1, p2 = arena[s], arena[s + 1]
                if lo >= bs:
                    s1, s2 = e1l - p1, e2l - p2
                else:  # [lo, bs - 1] lies in the previous block, relative to its pivot cp
                    a1, a2 = tp1 - p1, tp2 - p2
                    na_, delta = bs - lo, cp - c
                    s1 = e1l + a1 + na_ * delta
                    s2 = e2l + a2 + delta * (2.0 * a1 + na_ * delta)
                mean = c + s1 / nb
                m2 = max(s2 - s1 * s1 / nb, 0.0)
                anomaly = abs(x - mean) > sigmas * math.sqrt(m2 / (nb - 1))

        # The avg window [loa, pos]: read the prefix before it now, before this row overwrites its slot.
        loa = pos - min(pos, avg_rows)
        pa = 0.0
        if loa >= 1:
            pa = arena[base + 2 * ((loa - 1) % ring)]

        # Advance the key by this row.
        pm = pos % block
        if pm == 0:  # a new block: remember the last one's final sums and pivot
            tp1, tp2, cp, c = e1l, e2l, c, x
            e1l = e2l = 0.0
        d = x - c
        e1l += d
        e2l += d * d
        slot = base + 2 * (pos % ring)
        arena[slot] = e1l
        arena[slot + 1] = e2l
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
            elif loa == bs:  # the window starts the block
                s1 = e1l
            else:  # [loa, bs - 1] lies in the previous block
                s1 = e1l + (tp1 - pa) + (bs - loa) * (cp - c)
            avg = c + s1 / na
        avg_out[i] = avg
        anomaly_out[i] = anomaly
