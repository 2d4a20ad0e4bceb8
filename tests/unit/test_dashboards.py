"""The Dashboards saved objects only use fields the index mappings define, and their references resolve.

There is no Dashboards server in the local stack, so this is the guard against a renamed field
silently breaking a production chart.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from etl_platform.search.indices import ANOMALIES, EVENTS, mappings

NDJSON = Path(__file__).resolve().parents[2] / "dashboards" / "opensearch-dashboards.ndjson"
MAPPED = mappings()["properties"]
KQL_FIELD = re.compile(r"([A-Za-z_][\w.]*)\s*:")


def load() -> list[dict]:
    return [json.loads(line) for line in NDJSON.read_text().splitlines() if line.strip()]


def mapped(field: str) -> bool:
    """A top-level mapped field, or a dotted path inside the `flat_object` attributes."""
    if field in MAPPED:
        return True
    root = field.split(".", 1)[0]
    return "." in field and MAPPED.get(root, {}).get("type") == "flat_object"


def fields_used(obj: dict) -> list[str]:
    attrs = obj["attributes"]
    used: list[str] = []
    if obj["type"] == "index-pattern":
        used.append(attrs["timeFieldName"])
    if obj["type"] == "visualization":
        state = json.loads(attrs["visState"])
        used += [agg["params"]["field"] for agg in state["aggs"] if "field" in agg.get("params", {})]
    if obj["type"] == "search":
        used += attrs["columns"] + [name for name, _ in attrs["sort"]]
    source = json.loads(attrs.get("kibanaSavedObjectMeta", {}).get("searchSourceJSON", "{}"))
    used += KQL_FIELD.findall(source.get("query", {}).get("query", ""))
    return used


def test_the_file_is_ndjson_of_saved_objects_with_unique_ids():
    objects = load()
    assert {o["type"] for o in objects} == {"index-pattern", "visualization", "search", "dashboard"}
    ids = [(o["type"], o["id"]) for o in objects]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("obj", load(), ids=lambda o: o["id"])
def test_every_field_exists_in_the_mapping(obj):
    used = fields_used(obj)
    missing = [f for f in used if not mapped(f)]
    assert not missing, f"{obj['id']} uses fields not in indices.EVENT_PROPERTIES: {missing}"


def test_the_charts_use_the_fields_they_are_about():
    by_id = {o["id"]: o for o in load()}
    assert fields_used(by_id["etl-events-per-minute"]) == ["event_time", "source"]
    per_minute = json.loads(by_id["etl-events-per-minute"]["attributes"]["visState"])
    assert per_minute["aggs"][1]["params"]["interval"] == "m"
    assert "avg_value" in fields_used(by_id["etl-rolling-average"])
    assert "event_type" in fields_used(by_id["etl-rolling-average"])
    assert "anomaly_status" in fields_used(by_id["etl-latest-anomalies"])


def test_references_resolve_and_index_patterns_match_the_index_families():
    objects = load()
    known = {(o["type"], o["id"]) for o in objects}
    for obj in objects:
        for ref in obj.get("references", []):
            assert (ref["type"], ref["id"]) in known, f"{obj['id']} references missing {ref}"
    patterns = {o["attributes"]["title"] for o in objects if o["type"] == "index-pattern"}
    assert patterns == {f"{EVENTS}*", f"{ANOMALIES}*"}
    dashboard = next(o for o in objects if o["type"] == "dashboard")
    panels = json.loads(dashboard["attributes"]["panelsJSON"])
    refs = {r["name"] for r in dashboard["references"]}
    assert [p["panelRefName"] for p in panels] == sorted(refs) and len(panels) == 6
    assert dashboard["attributes"]["refreshInterval"] == {"pause": False, "value": 5000}
