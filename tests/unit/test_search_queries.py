"""Index naming, templates, time parsing and table formatting (no node needed)."""

from __future__ import annotations

import argparse
from datetime import UTC, date, datetime

import pytest

from etl_platform.cli.search import add_search_parser
from etl_platform.search import indices
from etl_platform.search.queries import format_table, parse_time

NOW = datetime(2026, 5, 10, 12, 0, tzinfo=UTC)


def test_index_names_aliases_and_prefixes():
    assert indices.index_name("events", date(2024, 3, 1)) == "events-2024.03.01"
    assert indices.index_name("anomalies", "2024-03-01", "t-x-") == "t-x-anomalies-2024.03.01"
    assert indices.index_name("events", datetime(2024, 3, 1, 23, 59, tzinfo=UTC)) == "events-2024.03.01"
    assert indices.alias_name("events", "t-x-") == "t-x-events"
    assert indices.index_pattern("anomalies") == "anomalies-*"
    with pytest.raises(ValueError, match="lowercase"):
        indices.index_name("events", "2024-03-01", "Bad-")
    with pytest.raises(ValueError, match="family"):
        indices.alias_name("logs")


def test_templates_carry_mapping_settings_and_alias():
    body = indices.template_body("anomalies", "t-x-", indices.IndexSettings(replicas=1, refresh_interval="1s"))
    assert body["index_patterns"] == ["t-x-anomalies-*"]
    assert body["template"]["aliases"] == {"t-x-anomalies": {}}
    assert body["template"]["settings"]["index"] == {
        "number_of_shards": 1,
        "number_of_replicas": 1,
        "refresh_interval": "1s",
    }
    props = body["template"]["mappings"]["properties"]
    assert props["event_time"]["type"] == "date" and props["avg_value"]["type"] == "double"
    assert props["anomaly_status"]["type"] == "keyword" and props["attributes"]["type"] == "flat_object"
    assert body["priority"] > indices.template_body("anomalies")["priority"]  # the specific prefix wins
    with pytest.raises(ValueError, match="production"):
        indices.delete_all(object(), "")


@pytest.mark.parametrize(
    "text,expected",
    [
        ("now", NOW),
        ("15m", datetime(2026, 5, 10, 11, 45, tzinfo=UTC)),
        ("2h", datetime(2026, 5, 10, 10, 0, tzinfo=UTC)),
        ("7d", datetime(2026, 5, 3, 12, 0, tzinfo=UTC)),
        ("2024-03-01", datetime(2024, 3, 1, tzinfo=UTC)),
        ("2024-03-01T10:02:00Z", datetime(2024, 3, 1, 10, 2, tzinfo=UTC)),
        ("2024-03-01T12:02:00+02:00", datetime(2024, 3, 1, 10, 2, tzinfo=UTC)),
        ("2024-03-01T10:02:00", datetime(2024, 3, 1, 10, 2, tzinfo=UTC)),
    ],
)
def test_parse_time(text, expected):
    assert parse_time(text, NOW) == expected


def test_parse_time_rejects_nonsense():
    with pytest.raises(ValueError, match="not a time"):
        parse_time("yesterday-ish", NOW)


def test_format_table_aligns_and_right_aligns_numbers():
    table = format_table(
        [
            {"user_id": "bob", "anomalies": 3, "max_value": 1001.0},
            {"user_id": "alice", "anomalies": 12, "max_value": 2.5},
        ]
    )
    assert table.splitlines() == [
        "user_id  anomalies  max_value",
        "-------  ---------  ---------",
        "bob              3       1001",
        "alice           12        2.5",
    ]
    assert format_table([]) == "(no results)"


def test_cli_parser():
    parser = argparse.ArgumentParser()
    add_search_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["search", "user", "alice", "--from", "1h", "--limit", "5", "--json"])
    assert (args.search_command, args.user_id, args.start, args.end, args.limit, args.json) == (
        "user",
        "alice",
        "1h",
        "now",
        5,
        True,
    )
    args = parser.parse_args(["search", "index-day", "2024-03-01", "--prefix", "t-"])
    assert args.day == date(2024, 3, 1) and args.prefix == "t-" and callable(args.func)
    args = parser.parse_args(["search", "top-users"])
    assert (args.start, args.limit, args.prefix) == ("24h", 10, None)
