"""The questions people ask the search cluster, as functions returning plain rows (list of dicts).

All of them read through the read aliases (`<prefix>events`, `<prefix>anomalies`), filter on the
event-time range [start, end) and are exact: hits are paged with `search_after`, aggregations over
several keys use `composite` (paged with `after_key`), and the top-N user ranking asks every daily
index for enough terms that the merge is exact for any realistic day (`doc_count_error_upper_bound`
is returned so a caller can see when it is not). A missing alias (nothing indexed yet) is an empty
answer, not an error.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from etl_platform.pipelines import Contract
from etl_platform.search.indices import ANOMALIES, EVENTS, alias_name

PAGE = 1000
_RELATIVE = re.compile(r"^(\d+)\s*([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}

USER_EVENT_FIELDS = ("event_time", "event_id", "source", "event_type", "value", "avg_value", "anomaly_status")


@dataclass(frozen=True)
class QueryFields:
    """Which document fields the questions use: the default pipeline's envelope, or a contract's
    (`of`): the user is its first key, the kind its second key, the value its value field."""

    user: str = "user_id"
    kind: str | None = "event_type"
    source: str | None = "source"
    value: str = "value"

    @classmethod
    def of(cls, contract: Contract) -> QueryFields:
        return cls(
            user=contract.keys[0],
            kind=contract.keys[1] if len(contract.keys) > 1 else None,
            source="source" if "source" in contract.by_name else None,
            value=contract.value,
        )

    @property
    def groups(self) -> tuple[str, ...]:
        """What anomalies are broken down by."""
        return tuple(f for f in (self.kind, self.source) if f) or (self.user,)

    @property
    def user_event_fields(self) -> tuple[str, ...]:
        named = ("event_time", "event_id", self.source, self.kind, self.value, "avg_value", "anomaly_status")
        return tuple(f for f in named if f)


DEFAULT_FIELDS = QueryFields()


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """'now', a relative age ('15m', '2h', '7d' = that long ago), an ISO date or an ISO time (UTC if naive).

    Naive times are read as UTC here (unlike event ingestion) because a person typed them at a prompt.
    """
    now = now or datetime.now(UTC)
    text = text.strip()
    if text == "now":
        return now
    match = _RELATIVE.match(text)
    if match:
        return now - timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    try:
        if len(text) == 10:
            parsed = datetime.combine(date.fromisoformat(text), datetime.min.time())
        else:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is not a time: use 'now', an age like 15m/2h/7d, or ISO 8601") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _millis(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _range(start: datetime, end: datetime) -> dict[str, Any]:
    if end <= start:
        raise ValueError(f"empty time range: {start.isoformat()} .. {end.isoformat()}")
    return {"range": {"event_time": {"gte": _millis(start), "lt": _millis(end), "format": "epoch_millis"}}}


def _search(client: Any, index: str, body: dict[str, Any]) -> dict[str, Any]:
    return client.search(index=index, body=body, ignore_unavailable=True, allow_no_indices=True)


def user_events(
    client: Any,
    user_id: str,
    start: datetime,
    end: datetime,
    prefix: str = "",
    limit: int = 100,
    fields: Sequence[str] | None = None,
    names: QueryFields = DEFAULT_FIELDS,
    newest_first: bool = False,
) -> list[dict[str, Any]]:
    """A user's events in [start, end), oldest first (ties by event_id), at most `limit`;
    `newest_first`: the latest `limit` of them, newest first (a drill-down's "recent events")."""
    fields = names.user_event_fields if fields is None else fields
    order = "desc" if newest_first else "asc"
    query = {"bool": {"filter": [{"term": {names.user: user_id}}, _range(start, end)]}}
    rows: list[dict[str, Any]] = []
    after: list[Any] | None = None
    while len(rows) < limit:
        body: dict[str, Any] = {
            "size": min(PAGE, limit - len(rows)),
            "query": query,
            "_source": list(fields),
            "sort": [{"event_time": order}, {"event_id": order}],
            "track_total_hits": False,
        }
        if after is not None:
            body["search_after"] = after
        hits = _search(client, alias_name(EVENTS, prefix), body)["hits"]["hits"]
        rows += [{name: hit["_source"].get(name) for name in fields} for hit in hits]
        if len(hits) < body["size"]:
            break
        after = hits[-1]["sort"]
    return rows


def anomaly_breakdown(
    client: Any,
    start: datetime,
    end: datetime,
    prefix: str = "",
    event_type: str | None = None,
    source: str | None = None,
    names: QueryFields = DEFAULT_FIELDS,
) -> list[dict[str, Any]]:
    """Anomalies in [start, end) per (event_type, source) (a contract's second key and source, as
    `names` has them): count, max and mean value, first and last time.

    Sorted by count (descending), then the group fields.
    """
    filters: list[dict[str, Any]] = [_range(start, end)]
    if event_type and names.kind:
        filters.append({"term": {names.kind: event_type}})
    if source and names.source:
        filters.append({"term": {names.source: source}})
    composite: dict[str, Any] = {
        "size": PAGE,
        "sources": [{name: {"terms": {"field": name}}} for name in names.groups],
    }
    aggs = {
        "max_value": {"max": {"field": names.value}},
        "mean_value": {"avg": {"field": names.value}},
        "first": {"min": {"field": "event_time"}},
        "last": {"max": {"field": "event_time"}},
    }
    rows: list[dict[str, Any]] = []
    while True:
        body = {
            "size": 0,
            "query": {"bool": {"filter": filters}},
            "aggs": {"groups": {"composite": composite, "aggs": aggs}},
        }
        result = _search(client, alias_name(ANOMALIES, prefix), body)
        groups = result.get("aggregations", {}).get("groups", {})
        for bucket in groups.get("buckets", []):
            rows.append(
                {
                    **{name: bucket["key"][name] for name in names.groups},
                    "anomalies": bucket["doc_count"],
                    "max_value": bucket["max_value"]["value"],
                    "mean_value": bucket["mean_value"]["value"],
                    "first": bucket["first"].get("value_as_string"),
                    "last": bucket["last"].get("value_as_string"),
                }
            )
        if "after_key" not in groups or len(groups.get("buckets", [])) < PAGE:
            break
        composite["after"] = groups["after_key"]
    rows.sort(key=lambda r: (-r["anomalies"], *(str(r[name]) for name in names.groups)))
    return rows


def top_anomalous_users(
    client: Any,
    start: datetime,
    end: datetime,
    prefix: str = "",
    limit: int = 10,
    names: QueryFields = DEFAULT_FIELDS,
) -> list[dict[str, Any]]:
    """Users (a contract's first key) with the most anomalies in [start, end); ties broken by the user.
    At most `limit` rows."""
    body = {
        "size": 0,
        "query": {"bool": {"filter": [_range(start, end)]}},
        "aggs": {
            "users": {
                "terms": {
                    "field": names.user,
                    "size": limit,
                    "shard_size": max(1000, limit * 50),
                    "order": [{"_count": "desc"}, {"_key": "asc"}],
                    "show_term_doc_count_error": True,
                },
                "aggs": {
                    "event_types": {"cardinality": {"field": names.kind or names.user}},
                    "max_value": {"max": {"field": names.value}},
                    "last": {"max": {"field": "event_time"}},
                },
            }
        },
    }
    result = _search(client, alias_name(ANOMALIES, prefix), body)
    buckets = result.get("aggregations", {}).get("users", {}).get("buckets", [])
    return [
        {
            names.user: b["key"],
            "anomalies": b["doc_count"],
            "event_types": b["event_types"]["value"],
            "max_value": b["max_value"]["value"],
            "last": b["last"].get("value_as_string"),
            "count_error": b.get("doc_count_error_upper_bound", 0),
        }
        for b in buckets
    ]


OTHER = "(other)"  # over_time's group for everything outside the top `limit` groups
ALL = "(all)"  # over_time's group when nothing splits the series


def over_time(
    client: Any,
    family: str,
    start: datetime,
    end: datetime,
    interval_s: int,
    by: str | None = None,
    prefix: str = "",
    limit: int = 10,
    average: str | None = None,
) -> list[dict[str, Any]]:
    """Documents of `family` (EVENTS or ANOMALIES) in [start, end) per `interval_s` bucket of event
    time, split by field `by` (None: one series, ALL): rows {time, group, count} (and `average`: the
    mean of that field), every bucket of the range present (empty ones count 0), oldest first.

    One request: a `terms` split (the top `limit` groups over the range; `shard_size` large, so exact
    for realistic cardinalities) with a `date_histogram` inside, and the unsplit histogram beside it,
    so counts outside the top groups come back as OTHER and every bucket's counts add up exactly.
    `time` is the bucket's start (ISO 8601, UTC); align `start` to `interval_s` for whole buckets.
    """
    if interval_s < 1:
        raise ValueError(f"interval_s must be at least 1, got {interval_s}")
    histogram: dict[str, Any] = {
        "date_histogram": {
            "field": "event_time",
            "fixed_interval": f"{interval_s}s",
            "min_doc_count": 0,
            "extended_bounds": {"min": _millis(start), "max": _millis(end) - 1},
        }
    }
    if average:
        histogram["aggs"] = {"average": {"avg": {"field": average}}}
    aggs: dict[str, Any] = {"total": histogram}
    if by:
        aggs["groups"] = {
            "terms": {
                "field": by,
                "size": limit,
                "shard_size": max(1000, limit * 50),
                "order": [{"_count": "desc"}, {"_key": "asc"}],
            },
            "aggs": {"time": histogram},
        }
    body = {"size": 0, "query": {"bool": {"filter": [_range(start, end)]}}, "aggs": aggs}
    found = _search(client, alias_name(family, prefix), body).get("aggregations")
    if not found:  # no index yet: the buckets the histogram would have had, empty
        if by:
            return []
        step = interval_s * 1000
        first = _millis(start) // step * step
        times = [datetime.fromtimestamp(ms / 1000, UTC) for ms in range(first, _millis(end), step)]
        return [_bucket_row(_iso(t), ALL, 0, None, average) for t in times]
    total = found["total"]["buckets"]

    def row(bucket: dict[str, Any], group: str, count: int) -> dict[str, Any]:
        value = bucket.get("average", {}).get("value") if average else None
        return _bucket_row(bucket["key_as_string"], group, count, value, average)

    if not by:
        return [row(b, ALL, b["doc_count"]) for b in total]
    rows: list[dict[str, Any]] = []
    shown = [0] * len(total)
    for group in found["groups"]["buckets"]:
        by_time = {b["key"]: b for b in group["time"]["buckets"]}
        for i, bucket in enumerate(total):
            inner = by_time.get(bucket["key"], {"key_as_string": bucket["key_as_string"], "doc_count": 0})
            inner.setdefault("key_as_string", bucket["key_as_string"])
            shown[i] += inner["doc_count"]
            rows.append(row(inner, str(group["key"]), inner["doc_count"]))
    if not average and any(b["doc_count"] > n for b, n in zip(total, shown, strict=True)):
        rows += [row(b, OTHER, b["doc_count"] - n) for b, n in zip(total, shown, strict=True)]
    rows.sort(key=lambda r: r["time"])  # stable: groups keep their rank within a bucket
    return rows


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _bucket_row(time: str, group: str, count: int, value: float | None, average: str | None) -> dict[str, Any]:
    row: dict[str, Any] = {"time": time, "group": group, "count": count}
    if average:
        row["average"] = value
    return row


def latest_anomalies(
    client: Any,
    start: datetime,
    end: datetime,
    prefix: str = "",
    limit: int = 20,
    names: QueryFields = DEFAULT_FIELDS,
) -> list[dict[str, Any]]:
    """The newest `limit` anomalies in [start, end), newest first (ties by event_id): one sorted
    top-k request (no paging: `limit` is a screenful), the user and the fields `user_events` shows."""
    fields = (names.user, *names.user_event_fields)
    body = {
        "size": limit,
        "query": {"bool": {"filter": [_range(start, end)]}},
        "_source": list(fields),
        "sort": [{"event_time": "desc"}, {"event_id": "desc"}],
        "track_total_hits": False,
    }
    hits = _search(client, alias_name(ANOMALIES, prefix), body)["hits"]["hits"]
    return [{name: hit["_source"].get(name) for name in fields} for hit in hits]


# --- presentation ---------------------------------------------------------------------------------
def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}".rstrip("0").rstrip(".") if abs(value) < 1e15 else f"{value:.6g}"
    return str(value)


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A plain aligned text table (numbers right-aligned), for the terminal."""
    if not rows:
        return "(no results)"
    columns = list(columns or rows[0].keys())
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    numeric = [all(isinstance(row.get(c), int | float) or row.get(c) is None for row in rows) for c in columns]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True)]
        return "  ".join(parts).rstrip()

    return "\n".join([line(columns), line(["-" * w for w in widths]), *(line(r) for r in cells)])
