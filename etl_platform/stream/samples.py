"""Realistic processed frames without a stream: the demo sources run through the real detector.

For the search benchmark and tests that need volume; the documents look exactly like what the
consumer writes to `processed/` (same schema, same analytics), only the stream position is synthetic.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl

from etl_platform.analytics import AnalyticsConfig
from etl_platform.events import EVENT_SCHEMA, events_to_frame, with_depth
from etl_platform.pipelines.contract import validate_envelope
from etl_platform.stream.sources import demo_mix

SHARD = "shardId-000000000000"


def sample_processed_frame(
    n: int, seed: int = 0, start: datetime | None = None, users: int = 200, spike_rate: float = 0.005
) -> pl.DataFrame:
    """`n` processed rows from the five demo sources, analysed by the stream detector."""
    start = start or datetime(2024, 1, 1, tzinfo=UTC)
    events = []
    for i, envelope in enumerate(demo_mix(n, seed=seed, start=start, users=users, spike_rate=spike_rate)):
        event = validate_envelope(envelope)
        sequence = str(10**20 + i)
        events.append(
            {
                **event,
                "event_id": event["event_id"] or f"{SHARD}-{sequence}",
                "shard_id": SHARD,
                "sequence_number": sequence,
                "sub_sequence": 0,
                "arrival_time": event["event_time"] + timedelta(milliseconds=250),
                "partition_key": event["user_id"],
            }
        )
    frame = with_depth(events_to_frame(events), 0)
    return AnalyticsConfig().new_detector().process(frame)


# --- a small data set with known answers, for tests and demos -------------------------------------
KNOWN_ANSWERS = {
    "events_per_day": {"2024-03-01": 16, "2024-03-02": 9},
    "anomalies_per_day": {"2024-03-01": 3, "2024-03-02": 5},
    # (event_type, source, anomalies), most first, ties by event_type then source
    "breakdown": [
        ("log_error", "app_log", 3),
        ("api_call", "api", 2),
        ("click", "web", 2),
        ("temperature_reading", "iot", 1),
    ],
    # (user_id, anomalies), most first, ties by user_id
    "top_users": [("bob", 3), ("carol", 3), ("alice", 2)],
}


def known_processed_frame() -> pl.DataFrame:
    """25 processed rows over two days, three users, four (event_type, source) pairs, 8 anomalies.

    alice: 10 web clicks on 2024-03-01 from 10:00, one a minute, anomalies at minutes 3 and 7.
    bob: 6 iot temperature readings on 2024-03-01 from 11:00 (anomaly at 11:05) and 4 api calls on
    2024-03-02 from 09:00 (anomalies at 09:00 and 09:01). carol: 5 app_log errors on 2024-03-02 from
    12:00, anomalies at 12:02, 12:03 and 12:04. `KNOWN_ANSWERS` holds what searches must return.
    """
    plan = [
        ("alice", "web", "click", datetime(2024, 3, 1, 10, tzinfo=UTC), 10, {3, 7}),
        ("bob", "iot", "temperature_reading", datetime(2024, 3, 1, 11, tzinfo=UTC), 6, {5}),
        ("bob", "api", "api_call", datetime(2024, 3, 2, 9, tzinfo=UTC), 4, {0, 1}),
        ("carol", "app_log", "log_error", datetime(2024, 3, 2, 12, tzinfo=UTC), 5, {2, 3, 4}),
    ]
    rows = []
    sequence = 10**20
    for user, source, event_type, first, count, anomalies in plan:
        for i in range(count):
            sequence += 1
            when = first + timedelta(minutes=i)
            value = 1000.0 + i if i in anomalies else 10.0 + i / 10
            rows.append(
                {
                    "event_id": f"{user}-{event_type}-{i:02d}",
                    "source": source,
                    "user_id": user,
                    "event_type": event_type,
                    "event_time": when,
                    "value": value,
                    "attributes": f'{{"n":{i},"nested":{{"tag":"{user}-{i}"}}}}',
                    "shard_id": SHARD,
                    "sequence_number": str(sequence),
                    "sub_sequence": 0,
                    "arrival_time": when + timedelta(seconds=1),
                    "partition_key": user,
                    "shard_depth": 0,
                    "avg_value": 10.0 + i / 20,
                    "anomaly_status": "ANOMALY" if i in anomalies else "NORMAL",
                }
            )
    schema = {**EVENT_SCHEMA, "shard_depth": pl.Int32(), "avg_value": pl.Float64(), "anomaly_status": pl.String()}
    return pl.DataFrame(rows, schema=schema)
