"""The live page and the production OpenSearch Dashboards saved objects ask the same questions.

Both come from `etl_platform.dashboard.questions`: the page's data layer asks each `Question`, and
here every saved visualization or search of dashboards/opensearch-dashboards.ndjson must be one of
them, asking it of the same index family with the same aggregations on the same fields (the default
pipeline's), and the page must lay out a panel for each. Adding a chart to one side only fails here.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from etl_platform.dashboard import data
from etl_platform.dashboard.layout import page_layout
from etl_platform.dashboard.questions import QUESTIONS, Question
from etl_platform.search.indices import alias_name
from etl_platform.search.queries import DEFAULT_FIELDS
from tests.unit.test_dashboards import load

OBJECTS = {o["id"]: o for o in load()}
PATTERNS = {o["id"]: o["attributes"]["title"] for o in OBJECTS.values() if o["type"] == "index-pattern"}


def family_of(obj: dict) -> str:
    """The index family a saved object reads: its index pattern's title without the trailing '*'."""
    (ref,) = [r for r in obj["references"] if r["type"] == "index-pattern"]
    return PATTERNS[ref["id"]].removesuffix("*")


def asked_by_saved_object(obj: dict) -> dict[str, Any]:
    """What a saved visualization or search asks, in the terms of a Question."""
    if obj["type"] == "search":
        attrs = obj["attributes"]
        return {"family": family_of(obj), "columns": tuple(attrs["columns"]), "sort": attrs["sort"]}
    aggs = [a for a in json.loads(obj["attributes"]["visState"])["aggs"] if a.get("enabled", True)]
    return {
        "family": family_of(obj),
        "over_time": [a["params"]["field"] for a in aggs if a["type"] == "date_histogram"],
        "split": tuple(a["params"]["field"] for a in aggs if a["type"] == "terms"),
        "metrics": tuple((a["type"], a["params"].get("field")) for a in aggs if a["schema"] == "metric"),
    }


def asked_by_question(question: Question) -> dict[str, Any]:
    """What the page asks for the default pipeline (`queries` buckets by event_time, newest first)."""
    fields = question.fields(DEFAULT_FIELDS)
    if question.shape == "latest":
        return {"family": question.family, "columns": fields["columns"], "sort": [["event_time", "desc"]]}
    metric_fields = iter(fields["metrics"])
    return {
        "family": question.family,
        "over_time": ["event_time"] if question.shape == "over_time" else [],
        "split": fields["split"],
        "metrics": tuple((agg, next(metric_fields) if field else None) for agg, field in question.metrics),
    }


@pytest.mark.parametrize("question", QUESTIONS, ids=lambda q: q.key)
def test_each_question_has_a_saved_object_asking_the_same(question: Question):
    assert question.saved_object in OBJECTS, f"no saved object {question.saved_object} for the page's {question.key}"
    saved = OBJECTS[question.saved_object]
    assert saved["type"] == ("search" if question.shape == "latest" else "visualization")
    assert asked_by_saved_object(saved) == asked_by_question(question)
    assert alias_name(question.family) == family_of(saved)  # the page reads the alias of the same indices


def test_every_saved_chart_is_a_question_of_the_page_and_on_the_dashboard():
    charts = {o["id"] for o in OBJECTS.values() if o["type"] in ("visualization", "search")}
    assert charts == {q.saved_object for q in QUESTIONS}, "a saved chart the page does not show, or the reverse"
    dashboard = next(o for o in OBJECTS.values() if o["type"] == "dashboard")
    assert {r["id"] for r in dashboard["references"]} == charts


def _ids(component: Any) -> set[str]:
    found = {component.id} if isinstance(getattr(component, "id", None), str) else set()
    children = getattr(component, "children", None)
    for child in children if isinstance(children, list | tuple) else [children]:
        if child is not None and hasattr(child, "to_plotly_json"):
            found |= _ids(child)
    return found


def test_the_page_lays_out_and_asks_every_question():
    view = data.PipelineView("default", "", DEFAULT_FIELDS, "s", False)
    ids = _ids(page_layout({"default": view}))
    assert {q.key for q in QUESTIONS} <= ids
    assert set(data.PANELS) == {q.key for q in QUESTIONS}
