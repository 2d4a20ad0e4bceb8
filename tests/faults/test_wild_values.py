"""Scenario 1 of the fault matrix (issue 14): wild values must not break the analytics.

One finite value far from the rest of its series (an epoch-millisecond timestamp sent as ``value``:
1e12; or 1e15, -1e15) used to leave the engine's block prefix sums so large that the windows after
it lost all precision: about a hundred avg_value and anomaly_status rows of that key came out wrong.
The stream is fed as the consumer feeds it, in 37-row micro-batches, and compared row for row with
the seed's SQL run by DuckDB. Unit tests (no servers); tests/unit/test_analytics.py has the rest
(overflowing squares, subnormals, jumps, any batch cuts).
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from etl_platform.analytics import RollingAnomalyDetector
from tests.unit.analytics_reference import reference

BATCH = 37
ROWS_PER_KEY = 600
# key -> {position in the key's series: value}; u3 has all three, far enough apart that no window
# holds two of them, u4 none
WILD = {
    "u0": {150: 1e12},
    "u1": {200: 1e15},
    "u2": {260: -1e15},
    "u3": {100: 1e12, 250: 1e15, 400: -1e15},
    "u4": {},
}


def wild_stream(seed: int = 14) -> pl.DataFrame:
    """N(100, 10) per key, the keys' rows interleaved at random, with the wild values placed."""
    rng = np.random.default_rng(seed)
    keys = np.repeat(np.array(list(WILD)), ROWS_PER_KEY)
    rng.shuffle(keys)
    values = rng.normal(100.0, 10.0, len(keys))
    for key, wild in WILD.items():
        rows = np.flatnonzero(keys == key)
        for position, value in wild.items():
            values[rows[position]] = value
    return pl.DataFrame({"user_id": keys, "event_type": "click", "value": values})


def mismatches(got: pl.DataFrame, want: pl.DataFrame) -> tuple[list[int], list[int]]:
    """Rows whose avg_value is off by more than 1e-9 relative, rows whose anomaly_status differs."""
    avg = [
        i
        for i, (a, b) in enumerate(zip(got["avg_value"], want["avg_value"], strict=True))
        if not math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12 if b == 0 else 0.0)
    ]
    status = [i for i, (a, b) in enumerate(zip(got["anomaly_status"], want["anomaly_status"], strict=True)) if a != b]
    return avg, status


def test_wild_values_in_37_row_batches_match_duckdb_row_for_row():
    df = wild_stream()
    det = RollingAnomalyDetector()
    got = pl.concat([det.process(df.slice(start, BATCH)) for start in range(0, df.height, BATCH)])
    want = reference(df)
    avg, status = mismatches(got, want)
    assert (len(avg), len(status)) == (0, 0), f"avg_value rows {avg[:10]}, anomaly_status rows {status[:10]}"
    # The wild values themselves are anomalies, and the rows after them are back to normal.
    flagged = got.filter(pl.col("value").abs() >= 1e12)
    assert flagged.height == 6 and (flagged["anomaly_status"] == "ANOMALY").all()
    assert (got["anomaly_status"] == "ANOMALY").sum() < 60


@pytest.mark.parametrize("batch", [1, 100, 10_000])
def test_other_batch_sizes_give_the_same_bits(batch):
    df = wild_stream(seed=15)
    det = RollingAnomalyDetector()
    cut_37 = pl.concat([det.process(df.slice(start, BATCH)) for start in range(0, df.height, BATCH)])
    det = RollingAnomalyDetector()
    got = pl.concat([det.process(df.slice(start, batch)) for start in range(0, df.height, batch)])
    assert got.equals(cut_37)
