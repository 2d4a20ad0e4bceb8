"""plan_flush: raw objects hold exactly the flush's events as JSON lines, split by size, never inside a line."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from etl_platform.events import EVENT_SCHEMA, with_depth
from etl_platform.lake import layout, writers
from etl_platform.stream.decoding import decode_records

SHARD = "shardId-000000000000"
ARRIVED = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
# Characters `str.splitlines` splits on but JSON leaves unescaped inside strings.
LINE_BREAKERS = ["\u2028", "\u2029", "\x85"]


def frame_of(n: int) -> pl.DataFrame:
    records = []
    for i in range(n):
        odd = LINE_BREAKERS[i % len(LINE_BREAKERS)]
        payload = {
            "source": "api",
            "user_id": f"user{odd}{i}",
            "event_type": "api_call",
            "event_time": (ARRIVED - timedelta(minutes=90 * (i % 2))).isoformat(),
            "value": float(i),
            "attributes": {"note": f"a{odd}b", "n": i},
        }
        records.append(
            {
                "Data": json.dumps(payload, ensure_ascii=False).encode(),
                "SequenceNumber": str(1000 + i),
                "PartitionKey": "k",
                "ApproximateArrivalTimestamp": ARRIVED,
            }
        )
    result = decode_records(SHARD, records)
    assert not result.errors
    return with_depth(result.frame, 0)


@pytest.mark.parametrize("max_bytes", [64 * 1024 * 1024, 700])
def test_raw_objects_hold_every_event_once_even_with_unicode_line_breaks(max_bytes: int) -> None:
    frame = frame_of(30)
    plan = writers.plan_flush(frame, [], "stream", SHARD, "1000", max_bytes, "")
    if max_bytes == 700:
        assert len(plan.raw) > 2, "the small limit must split each hour into several objects"
    read_back = []
    for obj in plan.raw:
        assert len(obj.text) <= max_bytes or obj.text.count("\n") == 1
        text = layout.gunzip(layout.gzip_text(obj.text)).decode()
        assert text == obj.text and text.endswith("\n")
        part = pl.read_ndjson(io.StringIO(text), schema={**EVENT_SCHEMA, "shard_depth": pl.Int32})
        assert part.height == len(obj.rows)
        assert part.equals(frame[obj.rows.to_list()])
        read_back.append(part)
    assert sum(plan.rows_by_day.values()) == frame.height
    assert pl.concat(read_back).sort("sequence_number").equals(frame.sort("sequence_number"))
