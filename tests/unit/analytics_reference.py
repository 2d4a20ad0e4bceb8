"""Reference for the stream analytics engine: the seed's Kinesis Analytics SQL, run by DuckDB.

The seed's two statements, with ROWTIME = arrival order (``seq``) and STDDEV = STDDEV_SAMP:

    AVG(value) OVER (PARTITION BY keys ROWS BETWEEN 10 PRECEDING AND CURRENT ROW)
    CASE WHEN ABS(value - AVG(value) OVER prev) > 3 * STDDEV(value) OVER prev
         THEN 'ANOMALY' ELSE 'NORMAL' END     -- prev = ROWS BETWEEN 100 PRECEDING AND 1 PRECEDING

One guard is added (``exact_constant=True``, the default): when every baseline value is equal the
standard deviation is exactly 0 and the mean is exactly that value, so the row is an ANOMALY iff it
differs from it. DuckDB's floating-point AVG of, say, a hundred 0.1s is not exactly 0.1, and the bare
SQL would then flag equal values as anomalies; docs/architecture.md ("Stream analytics semantics")
asks for the exact semantics. On windows that are not constant the guard changes nothing.

:func:`exact_reference` computes the same two windows in exact rational arithmetic (every double is
an integer multiple of 2**-1074). It is the yardstick where DuckDB's doubles give out: its
STDDEV_SAMP raises "out of range" once a square overflows, and its AVG is inf once a window's sum
does, or loses the small values when huge ones in the window cancel.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

import duckdb
import polars as pl

SEED_SQL = """
SELECT seq,
       AVG(value) OVER (PARTITION BY {keys} ORDER BY seq
                        ROWS BETWEEN {avg_rows} PRECEDING AND CURRENT ROW) AS avg_value,
       CASE {guard}
            WHEN ABS(value - AVG(value) OVER w) > {sigmas} * STDDEV_SAMP(value) OVER w THEN 'ANOMALY'
            ELSE 'NORMAL' END AS anomaly_status
FROM stream
WINDOW w AS (PARTITION BY {keys} ORDER BY seq ROWS BETWEEN {baseline_rows} PRECEDING AND 1 PRECEDING)
ORDER BY seq
"""

CONSTANT_GUARD = """
            WHEN COUNT(value) OVER w >= 2 AND MIN(value) OVER w = MAX(value) OVER w
                 THEN CASE WHEN value <> MIN(value) OVER w THEN 'ANOMALY' ELSE 'NORMAL' END"""


def reference(
    stream: pl.DataFrame,
    *,
    avg_rows: int = 10,
    baseline_rows: int = 100,
    sigmas: float = 3.0,
    keys: Sequence[str] = ("user_id", "event_type"),
    exact_constant: bool = True,
) -> pl.DataFrame:
    """avg_value and anomaly_status for every row of ``stream`` (arrival order), by DuckDB."""
    frame = stream.select(*keys, pl.col("value").cast(pl.Float64)).with_row_index("seq")
    sql = SEED_SQL.format(
        keys=", ".join(f'"{k}"' for k in keys),
        avg_rows=avg_rows,
        baseline_rows=baseline_rows,
        sigmas=repr(float(sigmas)),
        guard=CONSTANT_GUARD if exact_constant else "",
    )
    con = duckdb.connect()
    try:
        con.register("stream", frame.to_arrow())
        out = pl.from_arrow(con.execute(sql).to_arrow_table())
    finally:
        con.close()
    assert isinstance(out, pl.DataFrame)
    return out.select("avg_value", "anomaly_status")


_UNITS = 1074  # a double is an integer number of 2**-1074


def exact_reference(
    stream: pl.DataFrame,
    *,
    avg_rows: int = 10,
    baseline_rows: int = 100,
    sigmas: float = 3.0,
    keys: Sequence[str] = ("user_id", "event_type"),
) -> pl.DataFrame:
    """avg_value (the exact mean, rounded once) and anomaly_status (decided exactly) for every row."""
    values = stream.get_column("value").cast(pl.Float64).to_list()
    groups = stream.select(keys).rows()
    sig = Fraction(sigmas)
    sums: dict[tuple, tuple[list[int], list[int]]] = {}  # per key: prefix sums of X and X**2
    avg_out, status = [], []
    for key, x in zip(groups, values, strict=True):
        xi = int(Fraction(x) * 2**_UNITS)
        p1, p2 = sums.setdefault(key, ([0], [0]))
        pos = len(p1) - 1
        nb = min(pos, baseline_rows)
        anomaly = False
        if nb >= 2:
            s1, s2 = p1[pos] - p1[pos - nb], p2[pos] - p2[pos - nb]
            # (x - mean)^2 > sig^2 * M2 / (nb - 1), times nb^2 (nb - 1): all integers but sig
            anomaly = (nb * xi - s1) ** 2 * (nb - 1) > sig * sig * nb * (nb * s2 - s1 * s1)
        p1.append(p1[-1] + xi)
        p2.append(p2[-1] + xi * xi)
        na = min(pos, avg_rows) + 1
        avg_out.append(float(Fraction(p1[-1] - p1[-1 - na], na * 2**_UNITS)))
        status.append("ANOMALY" if anomaly else "NORMAL")
    return pl.DataFrame(
        {"avg_value": avg_out, "anomaly_status": status}, schema={"avg_value": pl.Float64, "anomaly_status": pl.String}
    )
