"""The shard-scaling policy as a table of cases, plus the replay of the recorded load series."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from etl_platform.config import ConfigError
from etl_platform.ops.scaling import (
    NONE,
    SCALE_IN,
    SCALE_OUT,
    SHARD_BYTES_PER_S,
    ScalingPolicy,
    decide,
    replay,
    required_shards,
)

NOW = datetime(2026, 4, 2, 12, 0, tzinfo=UTC)
MiB = SHARD_BYTES_PER_S
REPO = Path(__file__).resolve().parents[2]


def ago(minutes: float) -> datetime:
    return NOW - timedelta(minutes=minutes)


CASES = [
    # id, current, records/s, bytes/s, history (minutes ago), policy overrides, peak (rec, bytes),
    #     expected (action, target, reason fragment)
    ("sustained load above target scales out", 2, 2400, 1.0 * MiB, [], {}, None, (SCALE_OUT, 4, "need 4 shards")),
    ("at target holds", 4, 2400, 1.0 * MiB, [], {}, None, (NONE, 4, "at target")),
    ("idle scales in (halving cap)", 4, 50, 20_000, [], {}, None, (SCALE_IN, 2, "at most halving")),
    ("idle scales in to min_shards", 2, 50, 20_000, [], {"min_shards": 1}, None, (SCALE_IN, 1, "scale_in 2 -> 1")),
    ("doubling cap", 2, 9000, 1.0 * MiB, [], {}, None, (SCALE_OUT, 4, "at most doubling")),
    ("halving cap rounds up for odd counts", 5, 10, 1000, [], {}, None, (SCALE_IN, 3, "capped at 3")),
    (
        "max_shards clamps",
        8,
        20_000,
        1.0 * MiB,
        [],
        {"max_shards": 10},
        None,
        (SCALE_OUT, 10, "clamped to 10 by max_shards"),
    ),
    (
        "at max_shards holds even when overloaded",
        10,
        20_000,
        1.0 * MiB,
        [],
        {"max_shards": 10},
        None,
        (NONE, 10, "clamped to 10 by max_shards"),
    ),
    ("min_shards clamps", 6, 10, 1000, [], {"min_shards": 3}, None, (SCALE_IN, 3, "clamped to 3 by min_shards")),
    ("cool-down blocks scale-out", 2, 2400, 1.0 * MiB, [10], {}, None, (NONE, 2, "cool-down")),
    ("cool-down over allows scale-out", 2, 2400, 1.0 * MiB, [16], {}, None, (SCALE_OUT, 4, "scale_out 2 -> 4")),
    ("10 per 24 h cap", 2, 2400, 1.0 * MiB, [60 + 30 * i for i in range(10)], {}, None, (NONE, 2, "daily cap")),
    (
        "scalings older than 24 h do not count",
        2,
        2400,
        1.0 * MiB,
        [24 * 60 + 1 + i for i in range(10)],
        {},
        None,
        (SCALE_OUT, 4, "scale_out"),
    ),
    (
        "scale-in keeps a reserve of the daily budget",
        8,
        10,
        1000,
        [60 * (i + 1) for i in range(8)],
        {},
        None,
        (NONE, 8, "scale-in budget"),
    ),
    (
        "scale-out may use the reserve",
        2,
        2400,
        1.0 * MiB,
        [60 * (i + 1) for i in range(8)],
        {},
        None,
        (SCALE_OUT, 4, "scale_out"),
    ),
    ("bytes-bound: few large records", 2, 300, 3.0 * MiB, [], {}, None, (SCALE_OUT, 4, "(bytes-bound)")),
    ("records-bound: many small records", 2, 2800, 0.1 * MiB, [], {}, None, (SCALE_OUT, 4, "(records-bound)")),
    (
        "scale-in headroom: hovering just under target holds",
        3,
        1300,
        0.1 * MiB,
        [],
        {},
        None,
        (NONE, 3, "scale-in held"),
    ),
    (
        "recent peak blocks scale-in after a burst",
        8,
        300,
        0.1 * MiB,
        [],
        {},
        (5000, 2.0 * MiB),
        (NONE, 8, "30 min peak"),
    ),
    ("no datapoints holds by default", 4, None, None, [], {}, None, (NONE, 4, "no IncomingRecords")),
    (
        "no datapoints as idle when missing_data=zero",
        4,
        None,
        None,
        [],
        {"missing_data": "zero"},
        None,
        (SCALE_IN, 2, "scale_in 4 -> 2"),
    ),
]


@pytest.mark.parametrize(
    "current,records,size,history,overrides,peak,expected",
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_policy(current, records, size, history, overrides, peak, expected):
    policy = ScalingPolicy(**overrides)
    peak_records, peak_bytes = peak or (None, None)
    decision = decide(
        current,
        records,
        size,
        NOW,
        [ago(m) for m in history],
        policy,
        peak_records_per_s=peak_records,
        peak_bytes_per_s=peak_bytes,
    )
    action, target, fragment = expected
    assert (decision.action, decision.target_shards) == (action, target), decision.reason
    assert fragment in decision.reason
    assert decision.current_shards == current


def test_stream_not_active_holds():
    decision = decide(2, 5000, MiB, NOW, stream_status="UPDATING")
    assert decision.action == NONE and "UPDATING" in decision.reason


@pytest.mark.parametrize(
    "records,size,util,expected",
    [
        (0, 0, 0.7, (1, "records")),
        (700, 0, 0.7, (1, "records")),
        (701, 0, 0.7, (2, "records")),
        (2100, 0, 0.7, (3, "records")),  # exactly 3.0 despite float noise
        (0, 0.7 * MiB, 0.7, (1, "bytes")),
        (100, 7 * MiB, 0.7, (10, "bytes")),
        (1000, 0, 1.0, (1, "records")),
    ],
)
def test_required_shards(records, size, util, expected):
    assert required_shards(records, size, util) == expected


@pytest.mark.parametrize(
    "kwargs,fragment",
    [
        ({"target_utilization": 0}, "target_utilization"),
        ({"target_utilization": 1.5}, "target_utilization"),
        ({"min_shards": 0}, "min_shards"),
        ({"min_shards": 4, "max_shards": 2}, "max_shards"),
        ({"max_scalings_per_day": 11}, "max_scalings_per_day"),
        ({"missing_data": "guess"}, "missing_data"),
        ({"scale_out_reserve": 10}, "scale_out_reserve"),
    ],
)
def test_policy_validation(kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment):
        ScalingPolicy(**kwargs)


def test_policy_from_env():
    policy = ScalingPolicy.from_env(
        {"ETL_SCALING_MIN_SHARDS": "2", "ETL_SCALING_TARGET_UTILIZATION": "0.5"}, max_shards=8, cooldown_s=None
    )
    assert (policy.min_shards, policy.target_utilization, policy.max_shards, policy.cooldown_s) == (2, 0.5, 8, 900)
    with pytest.raises(ConfigError, match="ETL_SCALING_MAX_SHARDS"):
        ScalingPolicy.from_env({"ETL_SCALING_MAX_SHARDS": "many"})


def test_replay_of_the_recorded_series():
    """The committed sample day: every rule shows up, and the daily limit is never exceeded."""
    series = json.loads((REPO / "config" / "sample_load.json").read_text())
    steps = replay(series)
    assert len(steps) == len(series["samples"])
    scalings = [(s["at"][11:16], s["current_shards"], s["target_shards"]) for s in steps if s["action"] != NONE]
    assert scalings[:3] == [("07:00", 2, 4), ("08:00", 4, 8), ("08:15", 8, 10)]
    assert len(scalings) <= 10
    reasons = " ".join(s["reason"] for s in steps)
    for fragment in (
        "at most doubling",
        "cool-down",
        "bytes-bound",
        "at most halving",
        "30 min peak",
        "no IncomingRecords",
        "scale-in budget",
    ):
        assert fragment in reasons
    # Replaying is deterministic.
    assert replay(series) == steps
