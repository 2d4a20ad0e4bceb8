"""The stream analytics engine against DuckDB running the seed's window SQL (tests/unit/analytics_reference).

Results must not depend on batch cuts or snapshot/restore points, must stay exact for 1e9-magnitude
and constant series and for wild values (issue 14; where DuckDB's doubles overflow, against the exact
reference), and bad input must be rejected clearly without touching the state.
"""

from __future__ import annotations

import io
import json
import math
import random
import struct
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from etl_platform.analytics import (
    SNAPSHOT_VERSION,
    AnalyticsConfigError,
    AnalyticsInputError,
    AnalyticsSnapshotError,
    RollingAnomalyDetector,
)
from etl_platform.analytics import snapshot as snapshot_format
from tests.unit.analytics_reference import exact_reference, reference

KEYS = ("user_id", "event_type")
SMALL = {"avg_rows": 3, "baseline_rows": 12, "sigmas": 2.0}  # blocks of 32 rows, rings of 13 (small ones of 8)


def stream(
    n: int,
    users: int,
    *,
    seed: int,
    center: float = 100.0,
    noise: float = 10.0,
    spikes: float = 0.01,
    repeats: float = 0.0,
) -> pl.DataFrame:
    """A generated stream in arrival order; ``repeats`` = share of values copied from the key's last."""
    rng = random.Random(seed)
    types = ["click", "view", "buy"]
    last: dict[tuple[str, str], float] = {}
    rows = []
    for _ in range(n):
        key = (f"u{rng.randrange(users):04d}", rng.choice(types))
        if key in last and rng.random() < repeats:
            v = last[key]
        elif rng.random() < spikes:
            v = center + rng.choice((-1, 1)) * rng.uniform(20, 60) * noise
        else:
            v = center + rng.gauss(0.0, noise)
        last[key] = v
        rows.append((*key, v))
    return pl.DataFrame(rows, schema={"user_id": pl.String, "event_type": pl.String, "value": pl.Float64}, orient="row")


def run(det: RollingAnomalyDetector, df: pl.DataFrame, cuts: list[int], restore_after: set[int] = frozenset()):
    """Feed ``df`` in batches of the given sizes (cycled), optionally snapshot/restore after batch i."""
    outs, start, i = [], 0, 0
    while start < df.height or i == 0:
        size = cuts[i % len(cuts)] if cuts else df.height
        outs.append(det.process(df.slice(start, size)))
        if i in restore_after:
            det = RollingAnomalyDetector.restore(det.snapshot())
        start += size
        i += 1
        if not cuts:
            break
    return pl.concat(outs), det


def assert_matches(got: pl.DataFrame, want: pl.DataFrame) -> None:
    """anomaly_status row for row; avg_value within 1e-9 relative (absolute only where the truth is 0)."""
    assert got.height == want.height
    bad = [i for i, (a, b) in enumerate(zip(got["anomaly_status"], want["anomaly_status"], strict=True)) if a != b]
    assert not bad, f"anomaly_status differs at rows {bad[:10]}"
    for i, (a, b) in enumerate(zip(got["avg_value"], want["avg_value"], strict=True)):
        assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12 if b == 0 else 0.0), f"avg_value row {i}: {a} vs {b}"


# ---------------------------------------------------------------------------------------------- exactness


def test_one_pass_matches_duckdb_with_block_crossings():
    df = stream(3000, 4, seed=1, repeats=0.05)  # ~250 rows per key: crosses the 202-row blocks
    got, det = run(RollingAnomalyDetector(), df, [])
    want = reference(df)
    assert_matches(got, want)
    assert (want["anomaly_status"] == "ANOMALY").sum() > 10
    assert len(det) == df.select(KEYS).n_unique()


DF_CUTS = stream(700, 5, seed=2, repeats=0.1)
WANT_CUTS = reference(DF_CUTS, **SMALL)


@settings(max_examples=15, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    cuts=st.lists(st.integers(min_value=0, max_value=120), min_size=1, max_size=12).filter(any),
    restores=st.sets(st.integers(min_value=0, max_value=40), max_size=6),
)
def test_any_batch_cuts_and_restore_points_give_the_one_pass_result(cuts, restores):
    got, _ = run(RollingAnomalyDetector(keys=KEYS, **SMALL), DF_CUTS, cuts, restores)
    assert_matches(got, WANT_CUTS)


def test_default_windows_across_cuts_and_restores():
    df = stream(2500, 3, seed=3, repeats=0.05)
    want = reference(df)
    for cuts, restores in (([1, 7, 0, 333], {0, 2, 5}), ([997], {1}), ([250, 1, 1, 1], set(range(0, 60, 3)))):
        got, _ = run(RollingAnomalyDetector(), df, cuts, restores)
        assert_matches(got, want)


def test_large_magnitude_values_with_unit_noise():
    """Values near 1e9 with unit noise: naive running sums of squares would lose all precision."""
    df = stream(4000, 2, seed=4, center=1e9, noise=1.0, spikes=0.02)
    want = reference(df)
    assert 10 < (want["anomaly_status"] == "ANOMALY").sum() < 400
    for cuts in ([], [1, 13, 400], [640]):
        got, _ = run(RollingAnomalyDetector(), df, cuts, {3})
        assert_matches(got, want)
    got, _ = run(RollingAnomalyDetector(keys=KEYS, **SMALL), df, [77], {1, 4})
    assert_matches(got, reference(df, **SMALL))


def test_drifting_large_magnitude_series():
    """A random walk from 1e12 with a strong trend: the block pivots follow it."""
    rng = random.Random(5)
    v, values = 1e12, []
    for _ in range(3000):
        v += 1000.0 + rng.gauss(0, 5.0)
        values.append(v)
    df = pl.DataFrame({"user_id": ["u"] * 3000, "event_type": ["e"] * 3000, "value": values})
    got, _ = run(RollingAnomalyDetector(), df, [333], {2})
    assert_matches(got, reference(df))


def test_constant_series_has_stddev_exactly_zero():
    """0.1 is inexact in binary: the mean must still be exactly 0.1 and equal values never anomalies."""
    values = [0.1] * 150 + [0.7] * 150 + [0.7, 0.7000000000000001] + [0.1] * 120
    df = pl.DataFrame({"user_id": ["u"] * len(values), "event_type": ["e"] * len(values), "value": values})
    for cuts in ([], [1, 1, 150], [7, 50]):
        got, _ = run(RollingAnomalyDetector(), df, cuts, {0, 3})
        status = got["anomaly_status"].to_list()
        assert status[:150] == ["NORMAL"] * 150
        assert got["avg_value"][:150].to_list() == [0.1] * 150  # exactly, not 0.09999999999999999
        assert status[150] == "ANOMALY"  # first deviation from a constant baseline
        assert status[300] == "NORMAL"  # equal to the constant 0.7 baseline
        assert status[301] == "ANOMALY"  # one ulp away from it: any deviation counts
        assert_matches(got, reference(df))
    # The bare seed SQL in DuckDB gets this wrong (its AVG of a hundred 0.1s is not 0.1):
    bare = reference(df, exact_constant=False)
    assert (bare["anomaly_status"][:150] == "ANOMALY").sum() > 0


def test_constant_runs_inside_noise_and_exact_values():
    df = stream(3000, 3, seed=6, repeats=0.6, spikes=0.0)  # long runs of repeated values
    got, _ = run(RollingAnomalyDetector(keys=KEYS, **SMALL), df, [5, 1, 300], {1, 2})
    assert_matches(got, reference(df, **SMALL))
    ones = pl.DataFrame({"user_id": ["a"] * 400, "event_type": ["b"] * 400, "value": [1e9] * 399 + [1e9 + 1]})
    got, _ = run(RollingAnomalyDetector(), ones, [128])
    assert got["anomaly_status"].to_list() == ["NORMAL"] * 399 + ["ANOMALY"]
    assert got["avg_value"][:399].to_list() == [1e9] * 399


def test_many_keys_in_one_batch_and_across_batches():
    df = stream(30_000, 3000, seed=7)  # ~9,000 keys
    want = reference(df)
    got, det = run(RollingAnomalyDetector(), df, [20_000, 9_999, 1], {0})
    assert_matches(got, want)
    assert len(det) == df.select(KEYS).n_unique() > 8000


def test_results_are_bit_identical_whatever_the_cuts_prefetching_and_compilation(monkeypatch):
    """Rows are advanced one by one in arrival order, so cuts, restores, prefetching and running the
    loops interpreted or compiled change nothing, not even the last bit."""
    from etl_platform.analytics import kernel as analytics_kernel

    df = stream(12_000, 400, seed=12, repeats=0.05)
    monkeypatch.setattr(analytics_kernel, "_compiled", None)
    monkeypatch.setattr(analytics_kernel, "_interpreted_rows", 0)
    monkeypatch.setattr(analytics_kernel, "INTERPRET_ROWS", 10**12)
    interpreted, _ = run(RollingAnomalyDetector(), df, [5000, 1, 0])
    assert analytics_kernel._compiled is None
    assert_matches(interpreted, reference(df))

    monkeypatch.setattr(analytics_kernel, "INTERPRET_ROWS", 0)
    monkeypatch.setattr(analytics_kernel, "PREFETCH_ROWS", 0)
    one_pass, _ = run(RollingAnomalyDetector(), df, [])
    assert analytics_kernel._compiled is not None
    assert one_pass.equals(interpreted)
    for ahead in (1, 8, 64):
        monkeypatch.setattr(analytics_kernel, "PREFETCH_ROWS", ahead)
        for cuts, restores in (([], set()), ([1, 8000, 0, 3], {0, 2}), ([4000], {1})):
            got, _ = run(RollingAnomalyDetector(), df, cuts, restores)
            assert got.equals(one_pass)


def test_empty_and_one_row_batches():
    df = stream(150, 2, seed=8)
    want = reference(df, **SMALL)
    got, _ = run(RollingAnomalyDetector(keys=KEYS, **SMALL), df, [0, 1, 0, 1, 2], {0, 1, 7})
    assert_matches(got, want)
    empty = RollingAnomalyDetector().process(df.clear())
    assert empty.height == 0
    assert empty.schema == pl.Schema({**df.schema, "avg_value": pl.Float64, "anomaly_status": pl.String})


@pytest.mark.parametrize(
    "config",
    [
        {"avg_rows": 3, "baseline_rows": 5, "sigmas": 2.0},
        {"avg_rows": 0, "baseline_rows": 2, "sigmas": 1.0},
        {"avg_rows": 40, "baseline_rows": 7, "sigmas": 0.5},
    ],
)
def test_non_default_configuration(config):
    df = stream(1500, 4, seed=9, repeats=0.1)
    got, _ = run(RollingAnomalyDetector(keys=KEYS, **config), df, [17, 200], {2})
    assert_matches(got, reference(df, **config))


def test_single_key_column_null_keys_and_integer_values():
    rng = random.Random(10)
    df = pl.DataFrame(
        {
            "device": [rng.choice([None, 1, 2, 3]) for _ in range(800)],
            "value": [rng.randrange(-50, 50) for _ in range(800)],  # Int64 with many repeats
        }
    )
    got, det = run(RollingAnomalyDetector(keys=("device",), **SMALL), df, [33], {4})
    assert_matches(got, reference(df, keys=("device",), **SMALL))
    assert got["value"].dtype == pl.Int64 and len(det) == 4  # null is a key of its own, as in SQL


def test_input_order_and_extra_columns_are_kept():
    df = stream(500, 6, seed=11).with_columns(
        pl.int_range(pl.len()).alias("seq"),
        pl.lit("x").alias("note"),
        pl.struct(a=pl.lit(1)).alias("attrs"),
    )
    got, _ = run(RollingAnomalyDetector(), df, [123])
    assert got.columns == [*df.columns, "avg_value", "anomaly_status"]
    assert got.drop("avg_value", "anomaly_status").equals(df)
    assert got.schema["avg_value"] == pl.Float64 and got.schema["anomaly_status"] == pl.String
    assert set(got["anomaly_status"]) <= {"ANOMALY", "NORMAL"}
    # Re-processing an output frame replaces the two columns instead of duplicating them.
    again = RollingAnomalyDetector().process(got)
    assert again.columns == got.columns
    assert_matches(again, got)


# ---------------------------------------------------------------------------------------------- wild values
# One value far from the rest of its series made every later prefix sum of its block huge, and
# windows that no longer held it lost all precision (issue 14). Now each window's rounding-error bound
# is checked and a window the sums cannot give is recomputed from its values.


def one_key(values) -> pl.DataFrame:
    return pl.DataFrame(
        {"user_id": ["u"] * len(values), "event_type": ["e"] * len(values), "value": [float(v) for v in values]}
    )


def noisy(n: int, *, seed: int, center: float = 100.0, noise: float = 10.0) -> list[float]:
    rng = random.Random(seed)
    return [center + rng.gauss(0.0, noise) for _ in range(n)]


def with_values(values: list[float], at: dict[int, float]) -> list[float]:
    values = list(values)
    for i, v in at.items():
        values[i] = v
    return values


# Series DuckDB computes (no square overflows): the engine must match it row for row.
WILD = {
    "one 1e12": with_values(noisy(700, seed=50), {300: 1e12}),
    "one 1e15": with_values(noisy(700, seed=51), {300: 1e15}),
    "one -1e15": with_values(noisy(700, seed=52), {300: -1e15}),
    "at a block start": with_values(noisy(700, seed=53), {202: 1e15}),
    "several": with_values(noisy(900, seed=54), {100: 1e12, 150: 1e15, 170: -1e15, 400: 3e8, 420: -1e13, 700: 1e15}),
    "every 7th 1e15": [1e15 if i % 7 == 0 else v for i, v in enumerate(noisy(600, seed=55))],
    "huge then a run of equal values": with_values(
        noisy(600, seed=56), {200: 1e12} | dict.fromkeys(range(201, 420), 100.0)
    ),
    "huge then tiny noise": with_values(noisy(600, seed=57), {200: 1e12})[:201] + noisy(400, seed=58, noise=1e-9),
    "tiny values amid normal ones": with_values(
        noisy(600, seed=59), {100: 1e-300, 150: 5e-324, 200: 2.2250738585072014e-308, 250: 0.0, 300: -1e-300}
    ),
    "jump 100 -> 1e12 -> 100": noisy(150, seed=60) + noisy(300, seed=61, center=1e12) + noisy(300, seed=62),
    "jump 100 -> 1e12 constant -> 100": noisy(150, seed=63) + [1e12] * 300 + noisy(300, seed=64),
    "noise drops from 10 to 1e-9": noisy(150, seed=65) + noisy(450, seed=66, noise=1e-9),
    "squares near the float64 limit": with_values(noisy(600, seed=67), {300: 1e150}),
}


@pytest.mark.parametrize("name", list(WILD))
def test_wild_values_match_duckdb_however_the_stream_is_cut(name):
    df = one_key(WILD[name])
    want = reference(df)
    one_pass, _ = run(RollingAnomalyDetector(), df, [])
    assert_matches(one_pass, want)
    assert_matches(one_pass, exact_reference(df))
    for cuts, restores in (([1], {5, 301}), ([37], {3, 8}), ([100], {2, 4}), ([250, 1, 99], {0, 1, 2})):
        got, _ = run(RollingAnomalyDetector(), df, cuts, restores)
        assert got.equals(one_pass), (cuts, restores)


def test_wild_values_among_other_keys_and_small_windows():
    df = stream(6000, 6, seed=68)
    value = df["value"].to_list()
    for i, v in {40: 1e12, 700: 1e15, 710: -1e15, 2000: 1e-300, 3000: 1e150, 4500: -3e14}.items():
        value[i] = v
    df = df.with_columns(pl.Series("value", value))
    for config in ({}, SMALL, {"avg_rows": 0, "baseline_rows": 2, "sigmas": 1.0}):
        one_pass, _ = run(RollingAnomalyDetector(keys=KEYS, **config), df, [])
        assert_matches(one_pass, reference(df, **config))
        for cuts in ([1, 37], [100], [999, 1]):
            got, _ = run(RollingAnomalyDetector(keys=KEYS, **config), df, cuts, {2, 5})
            assert got.equals(one_pass)


OVERFLOW = {
    "one 1e300": with_values(noisy(600, seed=70), {300: 1e300}),
    "one 1.7e308": with_values(noisy(600, seed=71), {300: 1.7e308}),
    "one -1.7e308": with_values(noisy(600, seed=72), {300: -1.7e308}),
    "one 1e200": with_values(noisy(600, seed=73), {300: 1e200}),
    "jump 100 -> 1e300 -> 100": noisy(150, seed=74)
    + noisy(300, seed=75, center=1e300, noise=1e297)
    + noisy(300, seed=76),
    "extremes of both signs": random.Random(77).choices([1.7e308, -1.7e308, 1.0, 100.0], k=500),
}


@pytest.mark.parametrize("name", list(OVERFLOW))
def test_where_squares_overflow_duckdb_raises_and_the_engine_is_exact(name):
    """Documented in the engine: DuckDB's STDDEV_SAMP raises "out of range" (and its AVG may be inf)
    once a square overflows; the engine answers what exact arithmetic answers."""
    df = one_key(OVERFLOW[name])
    with pytest.raises(duckdb.OutOfRangeException, match="STDDEV_SAMP is out of range"):
        reference(df)
    one_pass, _ = run(RollingAnomalyDetector(), df, [])
    assert_matches(one_pass, exact_reference(df))
    assert one_pass["avg_value"].is_finite().all()
    for cuts in ([1], [37], [100]):
        got, _ = run(RollingAnomalyDetector(), df, cuts, {1, 3})
        assert got.equals(one_pass)


def test_avg_where_duckdb_overflows_or_loses_what_huge_values_cancel_to():
    """Documented in the engine: DuckDB's AVG is inf once a window's plain sum overflows, and loses
    the small values that huge ones cancel to; the engine's mean is exact but for its final rounding."""
    values = [1.0, 1.7e308, 1.7e308, 1.0, 1.0, 1.0]
    got = RollingAnomalyDetector(avg_rows=2, baseline_rows=2).process(one_key(values))["avg_value"].to_list()
    assert got == exact_reference(one_key(values), avg_rows=2, baseline_rows=2)["avg_value"].to_list()
    assert got[2] == got[3] == 1.1333333333333334e308 and all(map(math.isfinite, got))
    con = duckdb.connect()
    duck = [
        row[0]
        for row in con.execute(
            "SELECT AVG(v) OVER (ORDER BY i ROWS BETWEEN 2 PRECEDING AND CURRENT ROW) FROM "
            "(SELECT unnest(range(6)) AS i, unnest(?::DOUBLE[]) AS v) ORDER BY i",
            [values],
        ).fetchall()
    ]
    assert math.isinf(duck[2]) and math.isinf(duck[3])

    cancel = one_key([1e16, 1.0, -1e16] + noisy(20, seed=78))
    got = RollingAnomalyDetector().process(cancel)
    assert got["avg_value"][2] == 1 / 3
    assert reference(cancel)["avg_value"][2] == 0.0  # DuckDB's plain sum
    assert_matches(got, exact_reference(cancel))


def test_spread_below_what_squares_can_hold_follows_duckdb():
    """Documented in the engine: a series whose spread is below ~1e-154 has squared deviations that
    underflow, so its sample variance is 0 in float64, for DuckDB and the engine alike."""
    rng = random.Random(79)
    df = one_key([rng.gauss(0.0, 1e-300) for _ in range(400)])
    got, _ = run(RollingAnomalyDetector(), df, [37], {2})
    assert_matches(got, reference(df))
    assert (got["anomaly_status"] == "ANOMALY").sum() > 300  # exact arithmetic sees the spread:
    assert (exact_reference(df)["anomaly_status"] == "ANOMALY").sum() < 10


def test_values_a_few_ulps_apart_are_decided_exactly():
    """Documented in the engine: 1e9 +/- 1e-6 are ~8 ulps apart, so a baseline's mean is no double.
    DuckDB's rounded AVG tips rows near the band's edge; the engine compares the exact |value - mean|."""
    df = one_key(noisy(2000, seed=82, center=1e9, noise=1e-6))
    for config in (SMALL, {"avg_rows": 0, "baseline_rows": 2, "sigmas": 1.0}):
        got, _ = run(RollingAnomalyDetector(keys=KEYS, **config), df, [37], {3})
        assert_matches(got, exact_reference(df, **config))
        assert (got["anomaly_status"] != reference(df, **config)["anomaly_status"]).sum() > 0


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    wild=st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=399),
            st.sampled_from([1e12, -1e12, 1e15, -1e15, 1e300, -1.7e308, 1.7e308, 1e-300, 5e-324, 0.0, 1e160, 3e8]),
        ),
        max_size=6,
    ),
    cuts=st.lists(st.integers(min_value=1, max_value=120), min_size=1, max_size=6),
    restores=st.sets(st.integers(min_value=0, max_value=40), max_size=4),
)
def test_any_wild_values_any_cuts_match_exact_arithmetic(wild, cuts, restores):
    values = with_values(noisy(400, seed=80), dict(wild))
    df = pl.concat([one_key(values), one_key(noisy(400, seed=81)).with_columns(pl.lit("v").alias("user_id"))])
    df = df.sort(pl.int_range(pl.len()) % 400, maintain_order=True)  # the two keys interleaved
    one_pass, _ = run(RollingAnomalyDetector(keys=KEYS, **SMALL), df, [])
    assert_matches(one_pass, exact_reference(df, **SMALL))
    got, _ = run(RollingAnomalyDetector(keys=KEYS, **SMALL), df, cuts, restores)
    assert got.equals(one_pass)


def test_wild_values_are_bit_identical_interpreted_and_compiled(monkeypatch):
    from etl_platform.analytics import kernel as analytics_kernel

    df = pl.concat([one_key(v).with_columns(pl.lit(name).alias("user_id")) for name, v in (WILD | OVERFLOW).items()])
    df = df.sort(pl.int_range(pl.len()).over("user_id"), maintain_order=True)  # the keys interleaved
    monkeypatch.setattr(analytics_kernel, "_compiled", None)
    monkeypatch.setattr(analytics_kernel, "_interpreted_rows", 0)
    monkeypatch.setattr(analytics_kernel, "INTERPRET_ROWS", 10**12)
    interpreted, _ = run(RollingAnomalyDetector(), df, [37])
    assert analytics_kernel._compiled is None
    assert_matches(interpreted, exact_reference(df))
    monkeypatch.setattr(analytics_kernel, "INTERPRET_ROWS", 0)
    for cuts, restores in (([], set()), ([1, 100], {3}), ([37], {1, 10})):
        got, _ = run(RollingAnomalyDetector(), df, cuts, restores)
        assert analytics_kernel._compiled is not None
        assert got.equals(interpreted)


# ---------------------------------------------------------------------------------------------- bad input


def _bad_value_column(values: list) -> pl.DataFrame:
    return pl.DataFrame({"user_id": ["u"] * len(values), "event_type": ["e"] * len(values), "value": values})


@pytest.mark.parametrize(
    ("batch", "column", "row", "words"),
    [
        (pl.DataFrame({"user_id": ["u"], "value": [1.0]}), "event_type", None, "missing"),
        (pl.DataFrame({"event_type": ["e"], "value": [1.0]}), "user_id", None, "missing"),
        (pl.DataFrame({"user_id": ["u"], "event_type": ["e"]}), "value", None, "missing"),
        (_bad_value_column(["1.5", "2", "2.5", "abc", "x"]), "value", 3, "numeric"),
        (_bad_value_column([True, False]), "value", 0, "numeric"),
        (_bad_value_column([1.0, 2.0, None, 4.0]), "value", 2, "null"),
        (_bad_value_column([1.0, 2.0, 3.0, float("nan")]), "value", 3, "nan"),
        (_bad_value_column([1.0, float("inf")]), "value", 1, "inf"),
        (pl.DataFrame({"user_id": [7], "event_type": ["e"], "value": [1.0]}), "user_id", 0, "dtype"),
    ],
)
def test_bad_batches_are_rejected_and_leave_the_state_unchanged(batch, column, row, words):
    good = stream(600, 3, seed=12)
    first, second = good.slice(0, 300), good.slice(300)
    det = RollingAnomalyDetector(keys=KEYS, **SMALL)
    det.process(first)
    before = det.snapshot()
    with pytest.raises(AnalyticsInputError) as info:
        det.process(batch)
    err = info.value
    assert isinstance(err, ValueError)
    assert err.column == column and err.row == row
    message = str(err).lower()
    assert f"'{column}'" in message and words in message
    if row is not None:
        assert f"row {row}" in message
    assert det.snapshot() == before
    fresh = RollingAnomalyDetector(keys=KEYS, **SMALL)
    fresh.process(first)
    assert det.process(second).equals(fresh.process(second))


def test_not_a_dataframe():
    with pytest.raises(AnalyticsInputError, match="polars DataFrame"):
        RollingAnomalyDetector().process([{"user_id": "u"}])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [
        ({"avg_rows": -1}, "avg_rows"),
        ({"avg_rows": 2.5}, "avg_rows"),
        ({"baseline_rows": 1}, "baseline_rows"),
        ({"sigmas": 0}, "sigmas"),
        ({"sigmas": -1.0}, "sigmas"),
        ({"sigmas": float("nan")}, "sigmas"),
        ({"keys": ()}, "keys"),
        ({"keys": "user_id"}, "keys"),
        ({"keys": ("a", "a")}, "keys"),
        ({"keys": ("value",)}, "keys"),
    ],
)
def test_invalid_configuration_names_the_setting(kwargs, setting):
    with pytest.raises(AnalyticsConfigError, match=setting) as info:
        RollingAnomalyDetector(**kwargs)
    assert isinstance(info.value, ValueError)


# ---------------------------------------------------------------------------------------------- state


def test_snapshot_round_trip_is_deterministic_and_keeps_the_config():
    df = stream(900, 5, seed=13)
    det = RollingAnomalyDetector(keys=KEYS, **SMALL)
    det.process(df)
    blob = det.snapshot()
    again = RollingAnomalyDetector.restore(blob)
    assert again.snapshot() == blob
    assert (again.avg_rows, again.baseline_rows, again.sigmas, again.keys) == (3, 12, 2.0, KEYS)
    assert again.state_keys().equals(det.state_keys())
    empty = RollingAnomalyDetector.restore(RollingAnomalyDetector().snapshot())
    assert len(empty) == 0 and empty.process(df).equals(RollingAnomalyDetector().process(df))


def test_restore_rejects_unknown_versions_and_foreign_bytes():
    blob = RollingAnomalyDetector().snapshot()
    magic = blob[:7]
    future = magic + struct.pack("<H", 99) + blob[9:]
    with pytest.raises(AnalyticsSnapshotError, match="version 99"):
        RollingAnomalyDetector.restore(future)
    with pytest.raises(AnalyticsSnapshotError, match="magic"):
        RollingAnomalyDetector.restore(b"PK\x03\x04 not a snapshot")
    with pytest.raises(AnalyticsSnapshotError, match="corrupt"):
        RollingAnomalyDetector.restore(magic + struct.pack("<HI", 1, 1) + b"{" + blob[9:])
    det = RollingAnomalyDetector()
    det.process(stream(50, 2, seed=14))
    with pytest.raises(AnalyticsSnapshotError, match="corrupt"):
        RollingAnomalyDetector.restore(det.snapshot()[:-40])


def test_state_is_bounded_by_keys_not_rows():
    det = RollingAnomalyDetector()
    det.process(stream(2000, 2, seed=15))
    size = det.state_bytes()
    for seed in range(16, 20):
        det.process(stream(5000, 2, seed=seed))
    assert len(det) == 6 and det.state_bytes() == size
    assert len(det.snapshot()) < 6 * (3 * 101 + 9) * 8 + 4096


def test_keys_seen_a_few_times_keep_small_rings_until_they_outgrow_them():
    """A key's ring starts at 8 slots and moves to a full one on its 9th row; snapshots keep only the
    ring floats in use. So sparse keys cost ~260 bytes in memory and ~110 in a snapshot, not ~2.5 kB."""
    sparse = pl.DataFrame(
        {
            "user_id": [f"u{i:05d}" for i in range(10_000)],
            "event_type": ["click"] * 10_000,
            "value": [float(i % 97) for i in range(10_000)],
        }
    )
    det = RollingAnomalyDetector()
    det.process(sparse)
    assert len(det) == 10_000
    assert det.state_bytes() < 10_000 * 300
    assert len(det.snapshot()) < 10_000 * 120
    dense = RollingAnomalyDetector()
    dense.process(pl.concat([sparse] * 9))  # the 9th row of every key moves it to a full ring
    assert dense.state_bytes() > 10_000 * (3 * 101 + 8) * 8


@pytest.mark.parametrize("rows_before", [7, 8, 9, 13, 14])
def test_restores_and_cuts_around_the_move_to_a_full_ring(rows_before):
    df = stream(400, 2, seed=24, repeats=0.1)  # 6 keys, ~67 rows each
    indexed = df.with_row_index("row")
    first = indexed.group_by(KEYS, maintain_order=True).head(rows_before).get_column("row")  # every key at the boundary
    head, rest = indexed.filter(pl.col("row").is_in(first)), indexed.filter(~pl.col("row").is_in(first))
    reordered = pl.concat([head, rest]).drop("row")
    want, _ = run(RollingAnomalyDetector(keys=KEYS, **SMALL), reordered, [])
    assert_matches(want, reference(reordered, **SMALL))
    for cuts, restores in (([head.height], {0}), ([1], set(range(0, 400, 7))), ([head.height - 1, 1, 1], {0, 1, 2})):
        got, _ = run(RollingAnomalyDetector(keys=KEYS, **SMALL), reordered, cuts, restores)
        assert got.equals(want)


def assert_same_state_values_rebuilt(restored: RollingAnomalyDetector, live: RollingAnomalyDetector) -> None:
    """The state of a detector restored from a version 1 or 2 snapshot against one that saw the rows:
    the same fields and prefix sums; the values put back within a rounding of the prefix sums, NaN
    only where a full ring's oldest position lost its predecessor (never read again)."""
    got, want = snapshot_format.decode(restored.snapshot()), snapshot_format.decode(live.snapshot())
    assert got.keys is not None and want.keys is not None and got.keys.equals(want.keys)
    assert np.array_equal(got.fields, want.fields)
    rings, truth = got.rings.reshape(-1, 3), want.rings.reshape(-1, 3)
    assert np.array_equal(rings[:, :2], truth[:, :2])
    lost = np.isnan(rings[:, 2])
    assert lost.sum() <= (got.fields[:, 0] > restored._ring).sum()  # one per wrapped ring at most
    assert np.allclose(rings[~lost, 2], truth[~lost, 2], rtol=1e-13, atol=0)


def as_version_2(blob: bytes) -> bytes:
    """A current snapshot rewritten as version 2 wrote it: rings of (E1, E2) pairs, no values."""
    saved = snapshot_format.decode(blob)
    ipc = io.BytesIO()
    table = (
        pl.DataFrame()
        if saved.keys is None
        else saved.keys.with_columns(pl.Series("fields", saved.fields.reshape(-1)).reshape(saved.fields.shape))
    )
    table.write_ipc(ipc, compression="uncompressed")
    config = {k: v for k, v in saved.config.items() if k not in ("slot", "table_bytes")}
    head = json.dumps({**config, "table_bytes": len(ipc.getvalue())}, sort_keys=True).encode()
    pairs = saved.rings.reshape(-1, 3)[:, :2].reshape(-1)
    return blob[:7] + struct.pack("<HI", 2, len(head)) + head + ipc.getvalue() + pairs.astype("<f8").tobytes()


def test_version_1_snapshots_restore_and_continue_exactly():
    """tests/unit/data/analytics_snapshot_v1.bin was written by the engine before snapshot version 2,
    after the first 2,900 rows of this stream (keys with 1 to ~200 rows: small, full and wrapped rings)."""
    df = pl.concat(
        [stream(2000, 3, seed=40), stream(300, 40, seed=41), stream(600, 8, seed=42), stream(1500, 45, seed=43)]
    )
    blob = (Path(__file__).parent / "data" / "analytics_snapshot_v1.bin").read_bytes()
    assert struct.unpack_from("<H", blob, 7) == (1,)
    det = RollingAnomalyDetector.restore(blob)
    assert len(det) == 111
    one = RollingAnomalyDetector()
    one.process(df.slice(0, 2900))
    assert_same_state_values_rebuilt(det, one)
    assert struct.unpack_from("<H", det.snapshot(), 7) == (SNAPSHOT_VERSION,)
    # The values are read only for windows the prefix sums cannot give, which this stream never has.
    assert det.process(df.slice(2900)).equals(one.process(df.slice(2900)))
    got, _ = run(RollingAnomalyDetector(), df, [])
    assert_matches(got, reference(df))


@pytest.mark.parametrize("config", [{}, SMALL])
def test_version_2_snapshots_restore_and_continue_exactly(config):
    df = pl.concat([stream(1500, 3, seed=44, repeats=0.1), stream(600, 60, seed=45)])  # small, full and wrapped rings
    live = RollingAnomalyDetector(keys=KEYS, **config)
    live.process(df.slice(0, 1800))
    old = as_version_2(live.snapshot())
    assert struct.unpack_from("<H", old, 7) == (2,)
    det = RollingAnomalyDetector.restore(old)
    assert_same_state_values_rebuilt(det, live)
    assert det.process(df.slice(1800)).equals(live.process(df.slice(1800)))
    with pytest.raises(AnalyticsSnapshotError, match="corrupt"):
        RollingAnomalyDetector.restore(old[:-16])


def test_merge_of_shards_continues_like_one_detector():
    df = stream(3000, 8, seed=20)
    left = df.filter(pl.col("user_id") < "u0004")
    right = df.filter(pl.col("user_id") >= "u0004")
    a, b = RollingAnomalyDetector(keys=KEYS, **SMALL), RollingAnomalyDetector(keys=KEYS, **SMALL)
    a.process(left.slice(0, 1000))
    b.process(right.slice(0, 900))
    merged = RollingAnomalyDetector.merge([RollingAnomalyDetector.restore(a.snapshot()), b])
    assert len(merged) == len(a) + len(b)
    rest = pl.concat([left.slice(1000), right.slice(900)])
    one = RollingAnomalyDetector(keys=KEYS, **SMALL)
    one.process(pl.concat([left.slice(0, 1000), right.slice(0, 900)]))
    assert merged.process(rest).equals(one.process(rest))


def test_merge_after_a_split_keeps_the_copy_that_went_on():
    df = stream(1200, 2, seed=21)
    parent = RollingAnomalyDetector(keys=KEYS, **SMALL)
    parent.process(df.slice(0, 600))
    blob = parent.snapshot()
    owner, stale = RollingAnomalyDetector.restore(blob), RollingAnomalyDetector.restore(blob)
    owner.process(df.slice(600, 300))
    merged = RollingAnomalyDetector.merge([stale, owner])
    parent.process(df.slice(600, 300))
    assert merged.process(df.slice(900)).equals(parent.process(df.slice(900)))
    with pytest.raises(AnalyticsConfigError, match="different configurations"):
        RollingAnomalyDetector.merge([owner, RollingAnomalyDetector()])


# ---------------------------------------------------------------------------------------------- key lookup


def _user_only_hash(frame: pl.DataFrame):
    """A weak key hash: every event type of a user collides (a stand-in for a 64-bit collision)."""
    return frame.get_column("user_id").hash().to_numpy().view("int64")


@pytest.mark.parametrize("cuts", [[700], [1, 300, 2000], [5000]])
def test_hash_collisions_fall_back_to_the_exact_join(monkeypatch, cuts):
    from etl_platform.analytics import key_index

    clicks = stream(1500, 30, seed=22).filter(pl.col("event_type") == "click")
    df = pl.concat([clicks, stream(3000, 30, seed=23)])  # other event types appear later, and collide
    want, _ = run(RollingAnomalyDetector(keys=KEYS, **SMALL), df, [])
    monkeypatch.setattr(key_index, "row_hashes", _user_only_hash)
    det = RollingAnomalyDetector(keys=KEYS, **SMALL)
    first, det = run(det, clicks, [clicks.height])
    assert det._index is not None and not det._hash_collision  # no collision among the clicks yet
    rest, det = run(det, df.slice(clicks.height), cuts, {1, 3})
    assert det._hash_collision and det._index is None
    assert pl.concat([first, rest]).equals(want)
    assert_matches(want, reference(df, **SMALL))
    assert det.state_keys().equals(df.select(KEYS).unique(maintain_order=True))


@pytest.mark.parametrize("collisions", [False, True])
@pytest.mark.parametrize("dtype", [pl.String, pl.Binary])
def test_key_table_does_not_keep_the_batches_that_brought_new_keys(monkeypatch, collisions, dtype):
    """Polars gathers of strings point into the batch's whole string buffer; the key table copies."""
    from etl_platform.analytics import key_index

    if collisions:  # the exact-join path
        monkeypatch.setattr(key_index, "row_hashes", lambda frame: frame.hash_rows().to_numpy().view("int64") % 2)
    det = RollingAnomalyDetector(keys=("session",))
    for b in range(20):
        sessions = [f"session-{b:04d}-{'x' * 60}"] + [f"session-{(b + 1):04d}-{i:05d}-{'y' * 60}" for i in range(999)]
        det.process(
            pl.DataFrame(
                {"session": pl.Series(sessions[:1] * 1000).cast(dtype), "value": [1.0] * 1000, "payload": sessions}
            )
        )
    assert len(det) == 20 and det._hash_collision == collisions
    keys = det.state_keys()
    assert keys.schema["session"] == dtype and keys.height == 20
    held = keys.to_arrow(compat_level=pl.CompatLevel.newest()).get_total_buffer_size()
    assert held < 20 * 200, f"the key table holds {held:,} bytes for 20 keys of 72 bytes"


def test_ring_slots_are_written_before_they_are_read(monkeypatch):
    """The ring arena grows uninitialised; fill it with NaN instead and nothing may change."""
    from etl_platform.analytics import state as analytics_state

    df = stream(6000, 40, seed=25, repeats=0.05)
    want, _ = run(RollingAnomalyDetector(keys=KEYS, **SMALL), df, [])
    monkeypatch.setattr(analytics_state, "_new_arena", lambda size: np.full(size, np.nan))
    for config, cuts, restores in ((SMALL, [700, 1], {0, 3}), ({}, [6000], set()), ({}, [1, 2000], {1})):
        got, _ = run(RollingAnomalyDetector(keys=KEYS, **config), df, cuts, restores)
        if config:
            assert got.equals(want)
        else:
            assert_matches(got, reference(df))


# ---------------------------------------------------------------------------------------------- resharding and deltas

HALF = 2**127  # a split of the whole hash-key space into two children


def routed_stream(n: int, users: int, *, seed: int) -> pl.DataFrame:
    """A stream whose partition key is the user, as the producer sets it."""
    return stream(n, users, seed=seed, repeats=0.05).with_columns(pl.col("user_id").alias("partition_key"))


def md5_hash_key(partition_key: str) -> int:
    import hashlib

    return int.from_bytes(hashlib.md5(partition_key.encode()).digest(), "big")


def test_a_split_child_keeps_exactly_the_keys_of_its_hash_range():
    df = routed_stream(4000, 40, seed=60)
    parent = RollingAnomalyDetector(keys=KEYS, **SMALL)
    parent.process(df.slice(0, 2500))
    restored = RollingAnomalyDetector.restore(parent.snapshot())  # routes survive the snapshot
    children = {
        (0, HALF - 1): RollingAnomalyDetector.merge([restored], hash_range=(0, HALF - 1)),
        (HALF, 2**128 - 1): RollingAnomalyDetector.merge([restored], hash_range=(HALF, 2**128 - 1)),
    }
    held = set()
    for (first, last), child in children.items():
        users = set(child.state_keys()["user_id"].to_list())
        want = {u for u in parent.state_keys()["user_id"].to_list() if first <= md5_hash_key(u) <= last}
        assert users == want and 0 < len(child) < len(parent)
        rest = df.slice(2500, 800).filter(pl.col("user_id").is_in(sorted(want)))
        twin = RollingAnomalyDetector.restore(parent.snapshot())
        assert child.process(rest).equals(twin.process(rest))  # the child goes on exactly
        held |= {tuple(k) for k in child.state_keys().iter_rows()}
    assert held == {tuple(k) for k in parent.state_keys().iter_rows()}
    # Two children merging into one keep the union (each key has a single copy).
    merged = RollingAnomalyDetector.merge(list(children.values()), hash_range=(0, 2**128 - 1))
    assert len(merged) == len(parent)
    parent.process(df.slice(2500, 800))
    assert merged.process(df.slice(3300)).equals(parent.process(df.slice(3300)))


def test_keys_without_a_known_route_go_to_every_child_and_the_route_follows_the_last_row():
    df = stream(600, 6, seed=61)  # no partition_key column: routes unknown
    det = RollingAnomalyDetector(keys=KEYS, **SMALL)
    det.process(df)
    assert len(RollingAnomalyDetector.merge([det], hash_range=(0, 0))) == len(det)
    moved = df.head(1).with_columns(pl.lit("elsewhere").alias("partition_key"))
    det.process(moved)
    routes, routed = det.routes()
    kid = (
        det.state_keys()
        .with_row_index()
        .filter((pl.col("user_id") == moved["user_id"][0]) & (pl.col("event_type") == moved["event_type"][0]))["index"][
            0
        ]
    )
    assert routed.sum() == 1 and routed[kid]
    assert (int(routes[kid, 0]) << 64) | int(routes[kid, 1]) == md5_hash_key("elsewhere")


class Chain:
    """Commits as StateStore makes them, in memory: a base, then deltas of the keys touched."""

    def __init__(self, det: RollingAnomalyDetector) -> None:
        self.base, self.deltas = det.snapshot(), []
        det.mark_saved()

    def commit(self, det: RollingAnomalyDetector) -> None:
        self.deltas.append(det.delta_snapshot())
        det.mark_saved()

    def restore(self) -> RollingAnomalyDetector:
        return RollingAnomalyDetector.restore_chain(self.base, self.deltas)


@settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    cuts=st.lists(st.integers(min_value=0, max_value=150), min_size=1, max_size=10).filter(any),
    commits=st.sets(st.integers(min_value=0, max_value=40), min_size=1, max_size=12),
    restores=st.sets(st.integers(min_value=0, max_value=40), max_size=5),
)
def test_delta_commits_restore_bit_for_bit_whatever_the_cuts(cuts, commits, restores):
    df = routed_stream(1500, 30, seed=62)
    want = RollingAnomalyDetector(keys=KEYS, **SMALL)
    expected = want.process(df)
    det = RollingAnomalyDetector(keys=KEYS, **SMALL)
    chain, outs, start, i = Chain(det), [], 0, 0
    while start < df.height:
        size = cuts[i % len(cuts)]
        outs.append(det.process(df.slice(start, size)))
        start += size
        if i in commits or i in restores:
            chain.commit(det)
            assert len(chain.deltas[-1]) <= len(det.snapshot()) + 1024
        if i in restores:  # a crash: the next worker starts from the committed chain
            det = chain.restore()
            assert det.touched_keys() == 0
        i += 1
    assert pl.concat(outs).equals(expected)
    chain.commit(det)
    assert chain.restore().snapshot() == want.snapshot() == det.snapshot()


def test_a_delta_holds_only_the_keys_touched_and_is_rejected_alone():
    det = RollingAnomalyDetector()
    det.process(routed_stream(20_000, 2000, seed=63))
    base = det.snapshot()
    det.mark_saved()
    few = routed_stream(50, 5, seed=64)
    det.process(few)
    assert det.touched_keys() == few.select(KEYS).n_unique()
    delta = det.delta_snapshot()
    assert len(delta) < len(base) / 50
    assert snapshot_format.decode(delta).kids is not None
    with pytest.raises(AnalyticsSnapshotError, match="delta"):
        RollingAnomalyDetector.restore(delta)
    with pytest.raises(AnalyticsSnapshotError, match="key ids"):
        RollingAnomalyDetector.restore_chain(RollingAnomalyDetector().snapshot(), [delta])
    assert RollingAnomalyDetector.restore_chain(base, [delta]).snapshot() == det.snapshot()
    det.mark_saved()
    empty = det.delta_snapshot()
    assert RollingAnomalyDetector.restore_chain(base, [delta, empty]).snapshot() == det.snapshot()


def test_version_3_snapshots_restore_with_unknown_routes():
    df = routed_stream(2000, 20, seed=65)
    live = RollingAnomalyDetector(keys=KEYS, **SMALL)
    live.process(df.drop("partition_key").slice(0, 1200))
    blob = live.snapshot()  # no route known: the version 3 layout
    old = blob[:7] + struct.pack("<H", 3) + blob[9:]
    det = RollingAnomalyDetector.restore(old)
    assert det.snapshot() == blob and det.routes()[1].sum() == 0
    assert det.process(df.slice(1200)).equals(live.process(df.slice(1200)))
    assert det.routes()[1].all()  # the rows after the restore set the routes


# ---------------------------------------------------------------------------------------------- the state store


class FakeS3:
    """The few S3 calls StateStore makes, in memory."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.puts: list[tuple[str, int]] = []

    def put_object(self, Bucket: str, Key: str, Body: bytes) -> None:  # noqa: N803 (boto3's names)
        self.objects[Key] = bytes(Body)
        self.puts.append((Key, len(Body)))

    def get_object(self, Bucket: str, Key: str) -> dict:  # noqa: N803
        return {"Body": io.BytesIO(self.objects[Key])}

    def delete_object(self, Bucket: str, Key: str) -> None:  # noqa: N803
        self.objects.pop(Key, None)

    def get_paginator(self, name: str):
        s3 = self

        class Pages:
            def paginate(self, Bucket: str, Prefix: str):  # noqa: N803
                yield {"Contents": [{"Key": k} for k in sorted(s3.objects) if k.startswith(Prefix)]}

        return Pages()


def test_state_store_chains_compact_and_keep_the_committed_state_loadable():
    from etl_platform.stream.checkpoints import SavedState, StateStore, pack_state

    s3 = FakeS3()
    store = StateStore(s3, "b", "s", max_deltas=3)
    df = routed_stream(6000, 300, seed=66)
    det = RollingAnomalyDetector(keys=KEYS, **SMALL)
    det.process(df.slice(0, 3000))
    committed = store.save_commit("shard-0", "100", det, b"ids-1", None)
    store.discard_superseded(None, committed, det)
    assert s3.puts[0][0].endswith(".base")
    assert store.last_saved == SavedState(committed, "base", s3.puts[0][1], s3.puts[1][1])
    start = 3000
    for seq, size in enumerate([40, 40, 40, 40, 40, 2000], start=101):
        det.process(df.slice(start, size))
        start += size
        s3.puts.clear()
        key = store.save_commit("shard-0", str(seq), det, b"ids-%d" % seq, committed)
        # A crash here (no lease commit): the committed state still loads, whole.
        again, ids = StateStore(s3, "b", "s").load_state(committed)
        assert again is not None and ids == b"ids-%d" % (seq - 1 if seq > 101 else 1)
        store.discard_superseded(committed, key, det)
        committed = key
        loaded, ids = StateStore(s3, "b", "s").load_state(committed)
        assert loaded is not None and loaded.snapshot() == det.snapshot() and ids == b"ids-%d" % seq
        kinds = [k.rsplit(".", 1)[1] for k, _ in s3.puts]
        assert kinds in (["delta", "bin"], ["base", "bin"])
        # What the commit reports having written (BatchResult.state_bytes): the snapshot's bytes as put.
        assert store.last_saved == SavedState(key, kinds[0], s3.puts[0][1], s3.puts[1][1])
        if seq in (102, 103):
            assert kinds == ["delta", "bin"]
    assert kinds == ["base", "bin"]  # 2,000 rows: the deltas outgrow the base
    assert sorted(s3.objects) == sorted([committed, committed[:-4] + ".base"])  # superseded ones deleted
    # States written before chains still load: a packed snapshot, or a snapshot alone.
    for old in (pack_state(det.snapshot(), b"old-ids"), det.snapshot()):
        s3.objects["_state/s/shard-0/200.bin"] = old
        loaded, ids = store.load_state("_state/s/shard-0/200.bin")
        assert loaded is not None and loaded.snapshot() == det.snapshot()
        assert ids == (b"old-ids" if old.startswith(b"ETLSTATE") else None)
        assert store.load(committed) == pack_state(det.snapshot(), b"ids-106")  # the old entry point
