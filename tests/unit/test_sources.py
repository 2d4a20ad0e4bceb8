"""Simulated sources: native shapes, the mapping to the envelope, determinism, spikes."""

from __future__ import annotations

import json
import statistics
from collections import Counter
from datetime import UTC, datetime

import pytest

from etl_platform.events import SOURCES, parse_event_time
from etl_platform.pipelines.contract import validate_envelope
from etl_platform.stream.sources import DEFAULT_START, demo_mix, generate

NATIVE_FIELDS = {
    "app_log": {"level", "logger", "message", "latency_ms"},
    "iot": {"device_id", "sensor", "reading", "unit", "firmware"},
    "cdc": {"op", "ts_ms", "source", "before", "after"},
    "api": {"endpoint", "method", "status_code", "response_ms"},
    "web": {"session_id", "page", "action", "duration_ms"},
}


def native_value(event: dict) -> float:
    """The documented native field each source maps to `value`."""
    a = event["attributes"]
    match event["source"]:
        case "app_log":
            return a["latency_ms"]
        case "iot":
            return a["reading"]
        case "cdc":
            return (a["after"] or a["before"])["amount"]
        case "api":
            return a["response_ms"]
        case "web":
            return a["duration_ms"] / 1000.0
    raise AssertionError(event["source"])


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_source_events_are_valid_envelopes_with_native_fields(source: str) -> None:
    events = list(generate(source, 300, seed=7))
    assert len(events) == 300
    for event in events:
        json.dumps(event, allow_nan=False)  # wire-ready as is
        checked = validate_envelope(event)
        assert checked["source"] == source and checked["event_id"] == event["event_id"]
        assert NATIVE_FIELDS[source] <= event["attributes"].keys()
        assert event["value"] == native_value(event)
    times = [parse_event_time(e["event_time"]) for e in events]
    assert times == sorted(times) and times[0] >= DEFAULT_START
    assert len({e["event_id"] for e in events}) == 300


def test_cdc_is_debezium_shaped() -> None:
    ops = Counter()
    for event in generate("cdc", 400, seed=1):
        a = event["attributes"]
        ops[a["op"]] += 1
        assert a["source"]["table"] == "orders"
        assert (a["before"] is None) == (a["op"] == "c")
        assert (a["after"] is None) == (a["op"] == "d")
        assert event["event_type"] == {"c": "order_created", "u": "order_updated", "d": "order_deleted"}[a["op"]]
    assert set(ops) == {"c", "u", "d"}


def test_deterministic_in_seed_and_start() -> None:
    start = datetime(2025, 5, 1, tzinfo=UTC)
    assert list(generate("web", 50, seed=3, start=start)) == list(generate("web", 50, seed=3, start=start))
    other_seed = list(generate("web", 50, seed=4, start=start))
    other_start = list(generate("web", 50, seed=3, start=datetime(2025, 5, 2, tzinfo=UTC)))
    ids = {e["event_id"] for e in generate("web", 50, seed=3, start=start)}
    assert ids.isdisjoint(e["event_id"] for e in other_seed)
    assert ids.isdisjoint(e["event_id"] for e in other_start)


def test_users_come_from_a_bounded_pool() -> None:
    users = {e["user_id"] for e in generate("api", 500, seed=2, users=10)}
    assert 1 < len(users) <= 10


def test_rare_spikes_stand_out() -> None:
    events = list(generate("iot", 4000, seed=11, spike_rate=0.01))
    spikes = [e for e in events if e["attributes"].get("_synthetic_spike")]
    assert 10 <= len(spikes) <= 80
    for spike in spikes:
        same = [
            e["value"]
            for e in events
            if e["event_type"] == spike["event_type"] and not e["attributes"].get("_synthetic_spike")
        ]
        mean, sd = statistics.fmean(same), statistics.stdev(same)
        assert spike["value"] > mean + 6 * sd
        assert max(same) < mean + 6 * sd  # normal traffic stays in band


def test_demo_mix_interleaves_all_sources_in_time_order() -> None:
    events = list(demo_mix(1000, seed=5))
    assert len(events) == 1000
    assert {e["source"] for e in events} == SOURCES
    times = [e["event_time"] for e in events]
    assert times == sorted(times)
    assert events == list(demo_mix(1000, seed=5))
    assert len({e["event_id"] for e in events}) == 1000


def test_bad_arguments_fail_at_the_call() -> None:
    with pytest.raises(ValueError, match="unknown source 'ftp'"):
        generate("ftp", 1, seed=0)
    with pytest.raises(ValueError, match="timezone-aware"):
        generate("iot", 1, seed=0, start=datetime(2024, 1, 1))
    with pytest.raises(ValueError, match="unknown source"):
        demo_mix(1, sources=("iot", "ftp"))
