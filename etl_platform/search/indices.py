"""OpenSearch index design: daily indices behind read aliases, created from composable templates.

    <prefix>events-YYYY.MM.DD      every processed event, _id = event_id    read alias <prefix>events
    <prefix>anomalies-YYYY.MM.DD   the ANOMALY rows only, same _id and doc  read alias <prefix>anomalies

Why daily indices: retention is a cheap `DELETE <prefix>events-2024.01.*`, a day's reindex (the
`search_index` asset) touches one small index, and the day matches the lake's `processed/dt=` partition
so "documents in events-D == rows in processed/dt=D" is a simple check. The day is the event-time day,
like the lake's partitions. Why templates: indices appear on first write from any path (micro-batch,
backfill, failed-document replay) with the same explicit mapping and alias, never a dynamic guess.

The mapping is explicit: keyword for ids and keys, `date` for times, `double` for values,
`flat_object` for the free-form `attributes` (OpenSearch >= 2.7: one field, searchable by dotted path,
no mapping explosion from arbitrary keys). `dynamic: false` keeps unknown columns in `_source` without
indexing them, so a new column upstream never makes documents fail. The `prefix` isolates tests and
parallel deployments that share a cluster.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from etl_platform.pipelines import Contract

EVENTS, ANOMALIES = "events", "anomalies"
FAMILIES = (EVENTS, ANOMALIES)
TEMPLATE_VERSION = 1
DAY_FORMAT = "%Y.%m.%d"

# Every field a document carries (see indexer.documents); dashboards and queries may only use these.
EVENT_PROPERTIES: dict[str, dict[str, Any]] = {
    "event_id": {"type": "keyword"},
    "source": {"type": "keyword"},
    "user_id": {"type": "keyword"},
    "event_type": {"type": "keyword"},
    "event_time": {"type": "date", "format": "strict_date_optional_time||epoch_millis"},
    "value": {"type": "double"},
    "attributes": {"type": "flat_object"},
    "shard_id": {"type": "keyword"},
    "sequence_number": {"type": "keyword"},
    "sub_sequence": {"type": "long"},
    "arrival_time": {"type": "date", "format": "strict_date_optional_time||epoch_millis"},
    "partition_key": {"type": "keyword"},
    "shard_depth": {"type": "integer"},
    "avg_value": {"type": "double"},
    "anomaly_status": {"type": "keyword"},
    # When this copy of the document was written: the alert sensor's cursor (late batches included).
    "indexed_at": {"type": "date", "format": "strict_date_optional_time||epoch_millis"},
}

_DATE = {"type": "date", "format": "strict_date_optional_time||epoch_millis"}
# A contract field's type -> its mapping (json fields are canonical JSON text: kept, not analysed).
_FIELD_MAPPINGS: dict[str, dict[str, Any]] = {
    "string": {"type": "keyword"},
    "float": {"type": "double"},
    "int": {"type": "long"},
    "bool": {"type": "boolean"},
    "timestamp": _DATE,
    "json": {"type": "keyword", "ignore_above": 32766},
}


# The fields every pipeline's documents have, whatever its contract.
_PLATFORM_FIELDS = frozenset(EVENT_PROPERTIES) - {"source", "user_id", "event_type", "value"}


def contract_properties(contract: Contract) -> dict[str, dict[str, Any]]:
    """Every field a pipeline's document carries: the platform's columns and the contract's fields
    under their names (for the default contract, exactly `EVENT_PROPERTIES`)."""
    properties: dict[str, dict[str, Any]] = {"event_id": EVENT_PROPERTIES["event_id"]}
    properties.update({f.name: dict(_FIELD_MAPPINGS[f.type]) for f in contract.column_fields})
    properties.setdefault("event_time", EVENT_PROPERTIES["event_time"])
    properties.update({k: v for k, v in EVENT_PROPERTIES.items() if k in _PLATFORM_FIELDS and k not in properties})
    return properties


_VALID_PREFIX = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


@dataclass(frozen=True)
class IndexSettings:
    """Per-index settings tuned for streaming ingest; production raises replicas (e.g. 1) for HA."""

    shards: int = 1
    replicas: int = 0
    refresh_interval: str = "1s"  # a read is searchable about a second after it is indexed (as Firehose's target)

    def as_settings(self) -> dict[str, Any]:
        return {
            "index": {
                "number_of_shards": self.shards,
                "number_of_replicas": self.replicas,
                "refresh_interval": self.refresh_interval,
            }
        }


def check_prefix(prefix: str) -> str:
    """Index names must be lowercase and start with a letter or digit: fail early, naming the prefix."""
    if prefix and not _VALID_PREFIX.match(prefix):
        raise ValueError(f"index prefix {prefix!r} must be lowercase letters, digits, '.', '_' or '-'")
    return prefix


def _day(day: date | datetime | str) -> date:
    if isinstance(day, datetime):
        return day.date()
    if isinstance(day, str):
        return date.fromisoformat(day)
    return day


def index_name(family: str, day: date | datetime | str, prefix: str = "") -> str:
    """The concrete daily index of `family` for an event-time day."""
    if family not in FAMILIES:
        raise ValueError(f"unknown index family {family!r}; expected one of {FAMILIES}")
    return f"{check_prefix(prefix)}{family}-{_day(day).strftime(DAY_FORMAT)}"


def alias_name(family: str, prefix: str = "") -> str:
    """The read alias spanning every daily index of `family`."""
    if family not in FAMILIES:
        raise ValueError(f"unknown index family {family!r}; expected one of {FAMILIES}")
    return f"{check_prefix(prefix)}{family}"


def index_pattern(family: str, prefix: str = "") -> str:
    return f"{alias_name(family, prefix)}-*"


def template_name(family: str, prefix: str = "") -> str:
    return f"{check_prefix(prefix)}etl-{family}"


def mappings(properties: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return {"dynamic": False, "properties": dict(properties or EVENT_PROPERTIES)}


def template_body(
    family: str,
    prefix: str = "",
    settings: IndexSettings | None = None,
    properties: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A composable index template: settings, mapping (`properties`: a pipeline's
    `contract_properties`, default the default pipeline's) and the read alias for every daily index."""
    settings = settings or IndexSettings()
    return {
        "index_patterns": [index_pattern(family, prefix)],
        # A longer prefix is more specific: it wins over a shorter one whose pattern also matches.
        "priority": 100 + len(prefix),
        "template": {
            "settings": settings.as_settings(),
            "mappings": mappings(properties),
            "aliases": {alias_name(family, prefix): {}},
        },
        "_meta": {"managed_by": "etl-platform", "version": TEMPLATE_VERSION, "family": family},
    }


def _normalized(body: dict[str, Any]) -> dict[str, Any]:
    """A template as the cluster returns it (settings values are strings), for an equality test."""

    def strings(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strings(v) for k, v in value.items()}
        if isinstance(value, bool):
            return str(value).lower()
        if isinstance(value, int | float):
            return str(value)
        return value

    template = body["template"]
    return {
        "index_patterns": body["index_patterns"],
        "priority": body["priority"],
        "settings": strings(template["settings"]),
        "mappings": template["mappings"],
        "aliases": template["aliases"],
        "_meta": body["_meta"],
    }


def ensure_templates(
    client: Any,
    prefix: str = "",
    settings: IndexSettings | None = None,
    properties: Mapping[str, Any] | None = None,
) -> list[str]:
    """Create or update both families' templates; returns the names written (none when already current).

    Idempotent and cheap when nothing changed (one GET per family), so every indexing path may call it.
    Existing daily indices take a changed refresh interval and replica count at once (dynamic
    settings) and fields added to the mapping (a contract's new optional field: an additive mapping
    change); a field whose type changed keeps its old type there and takes the new one from the next
    daily index.
    """
    settings = settings or IndexSettings()
    written = []
    for family in FAMILIES:
        name = template_name(family, prefix)
        body = template_body(family, prefix, settings, properties)
        current = client.indices.get_index_template(name=name, ignore=404)
        found = [t["index_template"] for t in current.get("index_templates", []) if t.get("name") == name]
        if found:
            existing = found[0]
            have = {
                "index_patterns": existing.get("index_patterns"),
                "priority": existing.get("priority"),
                "settings": existing.get("template", {}).get("settings", {}),
                "mappings": existing.get("template", {}).get("mappings", {}),
                "aliases": existing.get("template", {}).get("aliases", {}),
                "_meta": existing.get("_meta"),
            }
            if have == _normalized(body):
                continue
        client.indices.put_index_template(name=name, body=body)
        dynamic = {k: v for k, v in settings.as_settings()["index"].items() if k != "number_of_shards"}
        pattern = index_pattern(family, prefix)
        client.indices.put_settings(
            index=pattern, body={"index": dynamic}, allow_no_indices=True, ignore_unavailable=True
        )
        _add_new_fields(client, pattern, body["template"]["mappings"]["properties"])
        written.append(name)
    return written


def _add_new_fields(client: Any, pattern: str, properties: Mapping[str, Any]) -> None:
    """Put the properties existing indices of `pattern` lack (mapping changes are additive only)."""
    current = client.indices.get_mapping(index=pattern, allow_no_indices=True, ignore_unavailable=True)
    for index, body in current.items():
        have = body.get("mappings", {}).get("properties", {})
        new = {name: spec for name, spec in properties.items() if name not in have}
        if new:
            client.indices.put_mapping(index=index, body={"properties": new})


def delete_all(client: Any, prefix: str) -> None:
    """Remove a prefix's indices and templates (tests, benchmarks); refuses the empty production prefix."""
    if not prefix:
        raise ValueError("refusing to delete the unprefixed production indices")
    for family in FAMILIES:
        client.indices.delete(
            index=index_pattern(family, prefix), ignore_unavailable=True, allow_no_indices=True, expand_wildcards="all"
        )
        client.indices.delete_index_template(name=template_name(family, prefix), ignore=404)
