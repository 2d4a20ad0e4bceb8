"""Scenario 7 of the fault matrix: events outside the daily partitions never vanish silently.

An event time before the first daily partition (a device whose clock was never set reports 1970) or
far ahead of the record's arrival (a wrong clock, a unit mix-up) is refused at decode with a reason,
into errors/, where `etl-platform errors list` shows it; it never reaches lake or search while
missing from the warehouse. Unit tests: decoding only.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from etl_platform.events import EARLIEST_EVENT_TIME, MAX_AHEAD_OF_ARRIVAL
from etl_platform.stream.decoding import decode_records

ARRIVAL = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def decode(event_time: object) -> tuple[list, list]:
    envelope = {"source": "iot", "user_id": "dev-1", "event_type": "temp", "event_time": event_time, "value": 21.5}
    record = {
        "Data": json.dumps(envelope).encode(),
        "SequenceNumber": "1",
        "PartitionKey": "dev-1",
        "ApproximateArrivalTimestamp": ARRIVAL,
    }
    result = decode_records("shard-1", [record])
    return result.events, [e["reason"] for e in result.errors]


@pytest.mark.parametrize(
    ("event_time", "expected"),
    [
        (0, "is before 2020-01-01, the first daily partition"),  # epoch milliseconds 0: 1970
        ("1970-01-01T00:00:00Z", "is before 2020-01-01"),
        ((EARLIEST_EVENT_TIME - timedelta(microseconds=1)).isoformat(), "is before 2020-01-01"),
        ((ARRIVAL + MAX_AHEAD_OF_ARRIVAL + timedelta(seconds=1)).isoformat(), "s after the record's arrival"),
        ("2999-01-01T00:00:00Z", "s after the record's arrival"),
    ],
)
def test_event_times_outside_the_accepted_range_are_dead_lettered_with_the_reason(event_time, expected):
    events, reasons = decode(event_time)
    assert events == [] and len(reasons) == 1
    assert reasons[0].startswith("invalid event: field event_time: ") and expected in reasons[0]


@pytest.mark.parametrize(
    "event_time",
    [EARLIEST_EVENT_TIME.isoformat(), (ARRIVAL + MAX_AHEAD_OF_ARRIVAL).isoformat(), ARRIVAL.isoformat()],
)
def test_the_bounds_themselves_are_accepted(event_time):
    events, reasons = decode(event_time)
    assert reasons == [] and len(events) == 1


def test_the_first_daily_partition_is_the_earliest_accepted_day():
    from assets.partitions import daily_partitions

    assert daily_partitions.get_first_partition_key() == EARLIEST_EVENT_TIME.date().isoformat()
