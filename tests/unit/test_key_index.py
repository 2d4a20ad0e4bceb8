"""The hash index that numbers a stream's key tuples (etl_platform.analytics.key_index), in both loop modes."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from etl_platform.analytics import kernel as analytics_kernel
from etl_platform.analytics import key_index
from etl_platform.analytics.key_index import KeyIndex


@pytest.fixture(params=["interpreted", "compiled"])
def loops(request, monkeypatch):
    """Run the probe loop interpreted (a fresh process's first rows) or compiled."""
    monkeypatch.setattr(analytics_kernel, "_compiled", None)
    monkeypatch.setattr(analytics_kernel, "_interpreted_rows", 0)
    if request.param == "compiled":
        monkeypatch.setattr(analytics_kernel, "INTERPRET_ROWS", 0)
        analytics_kernel._loops(1)
        assert analytics_kernel._compiled is not None
    return request.param


def keys(users: list[str | None], types: list[str | None]) -> pl.DataFrame:
    return pl.DataFrame({"user_id": users, "event_type": types}, schema={"user_id": pl.String, "event_type": pl.String})


def test_ids_follow_first_appearance_and_stay_stable(loops):
    index = KeyIndex()
    ids, new = index.assign(keys(["a", "b", "a", None, "b", None], ["x", "x", "x", "x", "y", None]))
    assert ids.tolist() == [0, 1, 0, 2, 3, 4]
    assert new.tolist() == [0, 1, 3, 4, 5]
    ids, new = index.assign(keys([None, "c", "a", None], [None, "x", "x", "x"]))
    assert ids.tolist() == [4, 5, 0, 2]
    assert new.tolist() == [1]
    assert len(index) == 6


def test_growth_rehashes_without_renumbering(loops):
    index = KeyIndex()
    first = keys([f"u{i}" for i in range(700)], ["x"] * 700)
    assert index.assign(first)[0].tolist() == list(range(700))
    more = keys([f"u{i}" for i in range(5000)], ["x"] * 5000)  # grows the table from 1,024 slots to 16,384
    ids, new = index.assign(more)
    assert ids.tolist() == list(range(5000))
    assert new.tolist() == list(range(700, 5000))
    assert index.assign(first)[0].tolist() == list(range(700))


def test_build_refuses_keys_that_share_a_hash(monkeypatch, loops):
    distinct = keys(["a", "b", "c", "d"], ["x"] * 4)
    assert len(KeyIndex.build(distinct)) == 4
    monkeypatch.setattr(key_index, "row_hashes", lambda frame: np.arange(frame.height, dtype=np.int64) % 3)
    assert KeyIndex.build(distinct) is None  # "a" and "d" would share an id


def test_verify_compares_the_real_keys():
    table = keys(["a", "b", None], ["x", "x", None])
    assert KeyIndex.verify(keys([None, "a", "b"], [None, "x", "x"]), np.array([2, 0, 1]), table)
    assert not KeyIndex.verify(keys([None, "a", "b"], [None, "x", "y"]), np.array([2, 0, 1]), table)
    assert not KeyIndex.verify(keys(["a"], [None]), np.array([0]), table)


def test_verify_checks_new_keys_against_the_rows_that_introduced_them():
    """Ids 2 and 3 are new in the batch (introduced by rows 1 and 2): a row given id 2 must hold row
    1's key, as the grown table would; a hash collision between two new keys is caught too."""
    table = keys(["a", "b"], ["x", "x"])
    batch = keys(["a", "c", "d", "c"], ["x", "x", "x", "x"])
    assert KeyIndex.verify(batch, np.array([0, 2, 3, 2]), table, np.array([1, 2]))
    colliding = keys(["a", "c", "d", "e"], ["x", "x", "x", "x"])  # "e" got "c"'s new id
    assert not KeyIndex.verify(colliding, np.array([0, 2, 3, 2]), table, np.array([1, 2]))
    assert not KeyIndex.verify(batch, np.array([1, 2, 3, 2]), table, np.array([1, 2]))  # "a" is not "b"


def test_precompile_writes_the_cache_of_both_loops(tmp_path):
    """docs/deploy.md's image step: after it, a read-only image loads the loops instead of compiling."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    code = "from etl_platform.analytics.kernel import precompile; precompile()"
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)
    cached = {p.name.split(".")[1].split("-")[0] for p in tmp_path.rglob("*.nbc")}
    assert cached == {"_advance", "_index_keys"}
