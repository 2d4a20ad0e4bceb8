"""The questions the live page and the OpenSearch Dashboards saved objects both ask, in one place.

Each `Question` names its index family, its shape (a series over event time, a ranking, a table, the
newest documents), what splits it and what it measures, in terms of a pipeline's roles (`user`,
`kind`, `source`, `value`: `queries.QueryFields`) or platform fields (`avg_value`). The page's data
layer (`dashboard.data`) asks exactly these; `tests/unit/test_dashboard_saved_objects.py` checks that
`dashboards/opensearch-dashboards.ndjson` has one saved object per question asking the same thing of
the default pipeline's fields, so the production dashboard and the page cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass

from etl_platform.search.indices import ANOMALIES, EVENTS
from etl_platform.search.queries import QueryFields

ROLES = ("user", "kind", "source", "value")  # QueryFields attributes; any other name is a document field
SHAPES = ("over_time", "ranking", "table", "latest")


@dataclass(frozen=True)
class Question:
    key: str  # the page's component id
    saved_object: str  # the id of its saved object in dashboards/opensearch-dashboards.ndjson
    title: str
    family: str  # EVENTS | ANOMALIES
    shape: str  # one of SHAPES
    split: tuple[str, ...] = ()  # roles or fields the answer is broken down by
    metrics: tuple[tuple[str, str | None], ...] = (("count", None),)  # (aggregation, role or field)
    columns: tuple[str, ...] = ()  # `latest`: the fields shown per document

    def fields(self, names: QueryFields) -> dict[str, tuple[str, ...]]:
        """The document fields this question uses for a pipeline's `names` (roles it lacks are left out)."""
        return {
            "split": _resolve(self.split, names),
            "metrics": _resolve(tuple(f for _, f in self.metrics if f), names),
            "columns": _resolve(self.columns, names),
        }


def field_of(name: str, names: QueryFields) -> str | None:
    """A role's field for `names` (None when the pipeline has no such role), or the field itself."""
    return getattr(names, name) if name in ROLES else name


def _resolve(items: tuple[str, ...], names: QueryFields) -> tuple[str, ...]:
    return tuple(f for f in (field_of(i, names) for i in items) if f)


EVENT_RATE = Question(
    key="event_rate",
    saved_object="etl-events-per-minute",
    title="Events per second by source",
    family=EVENTS,
    shape="over_time",
    split=("source",),
)
ROLLING_AVERAGE = Question(
    key="rolling_average",
    saved_object="etl-rolling-average",
    title="Rolling average value per event type",
    family=EVENTS,
    shape="over_time",
    split=("kind",),
    metrics=(("avg", "avg_value"),),
)
ANOMALIES_OVER_TIME = Question(
    key="anomalies_over_time",
    saved_object="etl-anomalies-over-time",
    title="Anomalies over time by event type",
    family=ANOMALIES,
    shape="over_time",
    split=("kind",),
)
TOP_USERS = Question(
    key="top_users",
    saved_object="etl-top-users",
    title="Top users by anomalies",
    family=ANOMALIES,
    shape="ranking",
    split=("user",),
)
ANOMALY_BREAKDOWN = Question(
    key="anomaly_breakdown",
    saved_object="etl-anomalies-by-type",
    title="Anomalies by event type and source",
    family=ANOMALIES,
    shape="table",
    split=("kind", "source"),
    metrics=(("count", None), ("max", "value")),
)
LATEST_ANOMALIES = Question(
    key="latest_anomalies",
    saved_object="etl-latest-anomalies",
    title="Recent anomalies",
    family=ANOMALIES,
    shape="latest",
    columns=("user", "kind", "source", "value", "avg_value", "anomaly_status"),
)

QUESTIONS: tuple[Question, ...] = (
    EVENT_RATE,
    ANOMALIES_OVER_TIME,
    ROLLING_AVERAGE,
    TOP_USERS,
    ANOMALY_BREAKDOWN,
    LATEST_ANOMALIES,
)
