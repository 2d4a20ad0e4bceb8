"""The page: a Dash app over the data layer (`dashboard.data`), refreshed by the browser every second.

Layout and callbacks only; every number comes from `data`. Figures are plain plotly dicts (no
figure validation on the refresh path). Each panel's source fails on its own: OpenSearch down
puts a banner over the last answers and the page recovers at the next tick that gets one; the lease
table or CloudWatch down shows in their panels. Dash serves its JS bundles from the installed
package (`serve_locally`), and the CSS is inline: the page needs nothing from the internet.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from dash import ALL, Dash, Input, Output, State, ctx, dcc, html, no_update

from etl_platform.dashboard import data
from etl_platform.dashboard.data import PipelineView, Sources, Window
from etl_platform.dashboard.questions import (
    ANOMALIES_OVER_TIME,
    ANOMALY_BREAKDOWN,
    EVENT_RATE,
    LATEST_ANOMALIES,
    QUESTIONS,
    ROLLING_AVERAGE,
    TOP_USERS,
    Question,
)
from etl_platform.search.queries import ALL as ALL_GROUPS

REFRESH_MS = 1000  # new documents are searchable ~1 s after indexing (refresh_interval): on the page within ~2 s
METRICS_REFRESH_MS = 15_000  # CloudWatch keeps one datapoint a minute; asking every second would only cost
ANOMALY_ROW = "anomaly-row"

STYLE = """
body { margin: 0; font: 14px system-ui, sans-serif; color: #1f2933; background: #f3f5f7; }
.bar { display: flex; gap: 24px; align-items: center; padding: 10px 20px; background: #1f2933; color: #fff; }
.bar h1 { font-size: 18px; margin: 0 12px 0 0; }
.bar label { display: flex; align-items: center; gap: 8px; color: #fff; }
.bar label * { color: inherit; }
.bar .pipeline { width: 180px; color: #1f2933; }
.bar .updated { margin-left: auto; opacity: .8; font-variant-numeric: tabular-nums; }
.banner { margin: 12px 20px 0; padding: 10px 14px; border-radius: 6px; background: #fde8e8; color: #8a1c1c;
          border: 1px solid #f5b5b5; font-weight: 600; }
.grid { display: grid; grid-template-columns: 1fr 1fr; gap: 14px; padding: 14px 20px; }
.card { background: #fff; border-radius: 8px; padding: 10px 14px; box-shadow: 0 1px 2px rgba(0,0,0,.08);
        min-width: 0; }
.card.wide { grid-column: 1 / -1; }
.card h2 { font-size: 15px; margin: 2px 0 6px; }
.card .hint { font-size: 12px; color: #64748b; margin: -4px 0 6px; }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
th, td { text-align: left; padding: 2px 6px; font-size: 13px; border-bottom: 1px solid #e5e9ef; white-space: nowrap; }
th { font-weight: 600; color: #52606d; }
td.num, th.num { text-align: right; }
.scroll { max-height: 300px; overflow: auto; }
tr.clickable { cursor: pointer; }
tr.clickable:hover { background: #eef4ff; }
tr.anomaly td { color: #b42318; }
tr.selected td { font-weight: 700; background: #fff4e5; }
.state { padding: 1px 8px; border-radius: 10px; font-size: 12px; }
.state.working { background: #dcfce7; } .state.free { background: #e5e7eb; }
.state.expired { background: #fee2e2; } .state.finished { background: #dbeafe; }
.empty, .error { color: #64748b; margin: 8px 0; } .error { color: #b42318; }
.tiles { display: grid; grid-template-columns: repeat(6, 1fr); gap: 10px; }
.tile { background: #f8fafc; border-radius: 6px; padding: 8px 10px; }
.tile .label { font-size: 12px; color: #52606d; }
.tile .value { font-size: 20px; font-weight: 600; font-variant-numeric: tabular-nums; }
"""

INDEX = (
    "<!DOCTYPE html><html><head>{%metas%}<title>{%title%}</title>{%favicon%}{%css%}<style>"
    + STYLE
    + "</style></head><body>{%app_entry%}<footer>{%config%}{%scripts%}{%renderer%}</footer></body></html>"
)


# --- formatting -----------------------------------------------------------------------------------
def _plot_time(iso: str) -> str:
    """ISO UTC -> the naive text plotly plots as given (its axis is labelled UTC)."""
    return iso.replace("T", " ").removesuffix("Z")


def _short_time(iso: str | None) -> str:
    return _plot_time(iso)[:19] if iso else ""


def _number(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def describe_outage(url: str, exc: Exception) -> str:
    """One sentence for the banner: which cluster, and what went wrong (no traceback)."""
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        what = f"answered HTTP {status} ({getattr(exc, 'error', '') or type(exc).__name__})"
    else:
        cause = str(getattr(exc, "info", "") or exc)
        reason = "timed out" if "timeout" in cause.lower() or "timed out" in cause.lower() else "is not reachable"
        what = f"{reason} ({type(exc).__name__})"
    return (
        f"OpenSearch at {url} {what}. The panels below show the last answers they had; "
        "the page keeps asking every second and recovers by itself."
    )


# --- figures --------------------------------------------------------------------------------------
def _empty_figure(text: str) -> dict[str, Any]:
    return {
        "data": [],
        "layout": {
            "margin": {"l": 40, "r": 10, "t": 10, "b": 30},
            "xaxis": {"visible": False},
            "yaxis": {"visible": False},
            "annotations": [{"text": text, "showarrow": False, "font": {"color": "#64748b"}}],
        },
    }


def _layout(ytitle: str, revision: str, **extra: Any) -> dict[str, Any]:
    return {
        "margin": {"l": 50, "r": 10, "t": 28, "b": 40},
        "uirevision": revision,  # keeps a user's zoom and hidden series across refreshes
        "legend": {"orientation": "h", "x": 0, "y": 1.0, "yanchor": "bottom"},
        "xaxis": {"title": {"text": "event time (UTC)"}, "type": "date"},
        "yaxis": {"title": {"text": ytitle}, "rangemode": "tozero"},
        "plot_bgcolor": "#fff",
        **extra,
    }


def series_figure(
    rows: Sequence[Mapping[str, Any]], value: str, ytitle: str, revision: str, bars: bool = False
) -> dict[str, Any]:
    """One trace per group (in the order the rows rank them), x = bucket start. Empty buckets count 0;
    an average has no value there and its line joins the buckets around (a rolling average carries on)."""
    if not rows or not any(r.get("count") for r in rows):
        return _empty_figure("no documents in this window yet")
    by_group: dict[str, tuple[list[str], list[Any]]] = {}
    for row in rows:
        xs, ys = by_group.setdefault(row["group"], ([], []))
        xs.append(_plot_time(row["time"]))
        ys.append(row.get(value))
    traces = [
        {
            "type": "bar" if bars else "scatter",
            "mode": "lines",
            "name": "all" if group == ALL_GROUPS else group,
            "x": xs,
            "y": ys,
            **({} if bars else {"line": {"width": 2}, "connectgaps": True}),
        }
        for group, (xs, ys) in by_group.items()
    ]
    if bars:
        for trace in traces:
            trace.pop("mode")
    return {"data": traces, "layout": _layout(ytitle, revision, **({"barmode": "stack"} if bars else {}))}


def top_users_figure(rows: Sequence[Mapping[str, Any]], user_field: str, revision: str) -> dict[str, Any]:
    if not rows:
        return _empty_figure("no anomalies in this window yet")
    users = [str(r[user_field]) for r in rows]
    trace = {
        "type": "bar",
        "orientation": "h",
        "x": [r["anomalies"] for r in rows],
        "y": users,
        "customdata": users,
        "hovertemplate": "%{y}: %{x} anomalies<extra>click to drill down</extra>",
        "marker": {"color": "#d9480f"},
    }
    layout = _layout("", revision, margin={"l": 110, "r": 10, "t": 10, "b": 40}, showlegend=False)
    layout["xaxis"] = {"title": {"text": "anomalies"}, "rangemode": "tozero"}
    layout["yaxis"] = {"autorange": "reversed", "type": "category"}
    return {"data": [trace], "layout": layout}


# --- tables ---------------------------------------------------------------------------------------
def _table(header: Sequence[tuple[str, bool]], rows: Sequence[Any]) -> html.Table:
    """`header`: (title, numeric) per column; `rows`: html.Tr elements."""
    head = html.Tr([html.Th(title, className="num" if numeric else None) for title, numeric in header])
    return html.Table([html.Thead(head), html.Tbody(list(rows))])


def _cells(values: Sequence[tuple[Any, bool]]) -> list[html.Td]:
    return [
        html.Td(_number(v) if numeric else ("" if v is None else str(v)), className="num" if numeric else None)
        for v, numeric in values
    ]


def breakdown_table(rows: Sequence[Mapping[str, Any]], view: PipelineView) -> Any:
    if not rows:
        return html.P("no anomalies in this window yet", className="empty")
    groups = view.names.groups
    header = [(g, False) for g in groups] + [("anomalies", True), ("max value", True), ("last", False)]
    body = [
        html.Tr(
            _cells([*((r[g], False) for g in groups), (r["anomalies"], True), (r["max_value"], True)])
            + [html.Td(_short_time(r["last"]))]
        )
        for r in rows
    ]
    return html.Div(_table(header, body), className="scroll")


def _event_columns(view: PipelineView) -> list[tuple[str, str, bool]]:
    """(field, title, numeric) of the fields a row of events shows."""
    names = view.names
    fields = [(names.kind, names.kind, False), (names.source, names.source, False)]
    fields += [(names.value, names.value, True), ("avg_value", "rolling avg", True)]
    return [(f, t or "", n) for f, t, n in fields if f]


def latest_table(rows: Sequence[Mapping[str, Any]], view: PipelineView, selected: str | None = None) -> Any:
    if not rows:
        return html.P("no anomalies in this window yet", className="empty")
    columns = _event_columns(view)
    header = [("event time (UTC)", False), (view.names.user, False), *((t, n) for _, t, n in columns)]
    body = []
    for r in rows:
        user = str(r[view.names.user])
        event_id = str(r["event_id"])
        body.append(
            html.Tr(
                [html.Td(_short_time(r["event_time"])), html.Td(user)] + _cells([(r.get(f), n) for f, _, n in columns]),
                id={"type": ANOMALY_ROW, "event": event_id, "user": user},
                n_clicks=0,
                className="clickable selected" if event_id == selected else "clickable",
                title=f"{user}'s recent events",
            )
        )
    return html.Div(_table(header, body), className="scroll")


def drilldown_table(rows: Sequence[Mapping[str, Any]], view: PipelineView, event_id: str | None) -> Any:
    if not rows:
        return html.P("no events of this user in this window", className="empty")
    columns = _event_columns(view) + [("anomaly_status", "status", False)]
    header = [("event time (UTC)", False), ("event id", False), *((t, n) for _, t, n in columns)]
    body = []
    for r in rows:
        classes = " ".join(
            c
            for c, on in (("anomaly", r.get("anomaly_status") == "ANOMALY"), ("selected", r["event_id"] == event_id))
            if on
        )
        body.append(
            html.Tr(
                [html.Td(_short_time(r["event_time"])), html.Td(str(r["event_id"]))]
                + _cells([(r.get(f), n) for f, _, n in columns]),
                className=classes or None,
            )
        )
    return html.Div(_table(header, body), className="scroll")


def shards_table(rows: Sequence[Mapping[str, Any]]) -> Any:
    if not rows:
        return html.P("no leases yet: no worker has started on this stream", className="empty")
    header = [
        ("shard", False),
        ("worker", False),
        ("owner", False),
        ("behind (ms)", True),
        ("last commit (s ago)", True),
        ("records", True),
        ("checkpoint", False),
    ]
    body = [
        html.Tr(
            [
                html.Td(r["shard"]),
                html.Td(html.Span(r["state"], className=f"state {r['state']}")),
                html.Td(r["owner"] or "–"),
            ]
            + _cells([(r["behind_ms"], True), (r["committed_s_ago"], True), (r["records"], True)])
            + [html.Td(_tail(r["checkpoint"]), title=r["checkpoint"] or "")]
        )
        for r in rows
    ]
    return html.Div(_table(header, body), className="scroll")


def _tail(text: str | None, keep: int = 14) -> str:
    if not text:
        return "–"
    return text if len(text) <= keep else "…" + text[-keep:]


def metrics_tiles(rows: Sequence[Mapping[str, Any]]) -> Any:
    tiles = [
        html.Div(
            [html.Div(r["metric"], className="label"), html.Div(_number(r["value"], 1), className="value")],
            className="tile",
        )
        for r in rows
    ]
    return html.Div(tiles, className="tiles")


# --- the page -------------------------------------------------------------------------------------
def _card(question: Question, body: Any, hint: str | None = None) -> html.Section:
    children = [html.H2(question.title)] + ([html.P(hint, className="hint")] if hint else []) + [body]
    return html.Section(children, className="card", id=f"card-{question.key}")


def _graph(question: Question) -> dcc.Graph:
    # The card fixes the height and plotly fills it (responsive), so refreshes never resize the page.
    return dcc.Graph(
        id=question.key,
        config={"displaylogo": False, "responsive": True},
        figure=_empty_figure("loading…"),
        style={"height": "260px"},
    )


def page_layout(views: Mapping[str, PipelineView], refresh_ms: int = REFRESH_MS) -> html.Div:
    names = list(views)
    return html.Div(
        [
            html.Header(
                [
                    html.H1("etl-platform · live"),
                    html.Label(
                        [
                            "pipeline",
                            dcc.Dropdown(
                                id="pipeline",
                                options=names,
                                value=names[0],
                                clearable=False,
                                searchable=False,
                                className="pipeline",
                            ),
                        ]
                    ),
                    html.Label(
                        [
                            "window",
                            dcc.RadioItems(
                                id="window", options=list(data.WINDOWS), value=data.DEFAULT_WINDOW, inline=True
                            ),
                        ]
                    ),
                    html.Span(id="updated", className="updated"),
                ],
                className="bar",
            ),
            html.Div(id="banner", className="banner", role="alert", hidden=True),
            dcc.Interval(id="tick", interval=refresh_ms),
            dcc.Interval(id="slow-tick", interval=METRICS_REFRESH_MS),
            dcc.Store(id="selected"),
            html.Div(
                [
                    _card(EVENT_RATE, _graph(EVENT_RATE)),
                    _card(ANOMALIES_OVER_TIME, _graph(ANOMALIES_OVER_TIME)),
                    _card(TOP_USERS, _graph(TOP_USERS), hint="click a bar: that user's recent events below"),
                    _card(
                        LATEST_ANOMALIES,
                        html.Div(id=LATEST_ANOMALIES.key),
                        hint="click a row: that user's recent events below",
                    ),
                    html.Section(
                        [
                            html.H2("Drill-down", id="drilldown-title"),
                            html.Div(
                                html.P("Click a recent anomaly or a top user.", className="empty"), id="drilldown"
                            ),
                        ],
                        className="card wide",
                        id="card-drilldown",
                    ),
                    _card(ROLLING_AVERAGE, _graph(ROLLING_AVERAGE)),
                    _card(ANOMALY_BREAKDOWN, html.Div(id=ANOMALY_BREAKDOWN.key)),
                    html.Section(
                        [html.H2("Shards and workers (lease table)"), html.Div(id="shards")],
                        className="card wide",
                        id="card-shards",
                    ),
                    html.Section(
                        [
                            html.H2(f"Stream metrics (CloudWatch, last {data.METRICS_MINUTES} min)"),
                            html.Div(id="metrics"),
                        ],
                        className="card wide",
                        id="card-metrics",
                    ),
                ],
                className="grid",
            ),
        ]
    )


def _search_outputs(rows: Mapping[str, list[dict]], view: PipelineView, win: Window, selected: str | None) -> list[Any]:
    revision = f"{view.name}/{win.label}"
    render: dict[str, Callable[[list[dict]], Any]] = {
        EVENT_RATE.key: lambda r: series_figure(r, "per_second", "events / s", revision),
        ANOMALIES_OVER_TIME.key: lambda r: series_figure(
            r, "count", f"anomalies / {win.bucket_s} s", revision, bars=True
        ),
        ROLLING_AVERAGE.key: lambda r: series_figure(r, "average", "rolling avg", revision),
        TOP_USERS.key: lambda r: top_users_figure(r, view.names.user, revision),
        ANOMALY_BREAKDOWN.key: lambda r: breakdown_table(r, view),
        LATEST_ANOMALIES.key: lambda r: latest_table(r, view, selected),
    }
    return [render[q.key](rows[q.key]) for q in QUESTIONS]


def _output_prop(question: Question) -> str:
    return "figure" if question.shape in ("over_time", "ranking") else "children"


def refresh_search(
    sources: Sources,
    views: Mapping[str, PipelineView],
    pipeline: str,
    window_label: str,
    selected: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> list[Any]:
    """The OpenSearch panels' new contents (in QUESTIONS order), then the banner's text, whether it is
    hidden, and the "updated" stamp. OpenSearch down: the panels keep what they show (`no_update`)
    and the banner says so."""
    from opensearchpy.exceptions import OpenSearchException

    view, win = views[pipeline], data.window(window_label)
    now = now or datetime.now(UTC)
    try:
        rows = data.search_panels(sources.search, view, win, now)
    except OpenSearchException as exc:
        return [no_update] * len(QUESTIONS) + [describe_outage(sources.opensearch_url, exc), False, no_update]
    event = (selected or {}).get("event")
    return _search_outputs(rows, view, win, event) + ["", True, f"updated {now:%H:%M:%S} UTC"]


def register_callbacks(app: Dash, sources: Sources, views: Mapping[str, PipelineView]) -> None:
    from botocore.exceptions import BotoCoreError, ClientError
    from opensearchpy.exceptions import OpenSearchException

    @app.callback(
        [Output(q.key, _output_prop(q)) for q in QUESTIONS]
        + [Output("banner", "children"), Output("banner", "hidden"), Output("updated", "children")],
        Input("tick", "n_intervals"),
        Input("pipeline", "value"),
        Input("window", "value"),
        State("selected", "data"),
    )
    def refresh(_tick: Any, pipeline: str, window_label: str, selected: dict | None) -> list[Any]:
        return refresh_search(sources, views, pipeline, window_label, selected)

    @app.callback(
        Output("selected", "data"),
        Input({"type": ANOMALY_ROW, "event": ALL, "user": ALL}, "n_clicks"),
        Input(TOP_USERS.key, "clickData"),
        Input("pipeline", "value"),
        prevent_initial_call=True,
    )
    def select(_rows: Any, click: dict | None, _pipeline: str) -> Any:
        trigger = ctx.triggered_id
        if trigger == "pipeline":
            return None
        if trigger == TOP_USERS.key and click and click.get("points"):
            return {"user": str(click["points"][0]["customdata"]), "event": None}
        # Rows re-rendered by the refresh arrive here too, with n_clicks 0: only a click counts.
        if isinstance(trigger, Mapping) and any(t.get("value") for t in ctx.triggered):
            return {"user": trigger["user"], "event": trigger["event"]}
        return no_update

    @app.callback(
        Output("drilldown", "children"),
        Output("drilldown-title", "children"),
        Input("tick", "n_intervals"),
        Input("selected", "data"),
        State("pipeline", "value"),
        State("window", "value"),
    )
    def drilldown(_tick: Any, selected: dict | None, pipeline: str, window_label: str) -> tuple[Any, Any]:
        if not selected:
            return html.P("Click a recent anomaly or a top user.", className="empty"), "Drill-down"
        view, user = views[pipeline], selected["user"]
        title = f"Drill-down: {user}'s recent events (newest first, at most {data.DRILLDOWN_LIMIT})"
        try:
            rows = data.user_recent_events(sources.search, view, user, data.window(window_label))
        except OpenSearchException:
            return no_update, title
        return drilldown_table(rows, view, selected.get("event")), title

    @app.callback(Output("shards", "children"), Input("tick", "n_intervals"), Input("pipeline", "value"))
    def shards(_tick: Any, pipeline: str) -> Any:
        try:
            rows = data.shard_status(sources.dynamodb, sources.lease_table, views[pipeline])
        except (BotoCoreError, ClientError) as exc:
            return html.P(f"the lease table {sources.lease_table} cannot be read: {exc}", className="error")
        return shards_table(rows)

    @app.callback(Output("metrics", "children"), Input("slow-tick", "n_intervals"), Input("pipeline", "value"))
    def metrics(_tick: Any, pipeline: str) -> Any:
        try:
            rows = data.stream_metrics(sources.cloudwatch, views[pipeline])
        except (BotoCoreError, ClientError) as exc:
            return html.P(f"CloudWatch cannot be read: {exc}", className="error")
        return metrics_tiles(rows)


def build_app(sources: Sources, views: Mapping[str, PipelineView], refresh_ms: int = REFRESH_MS) -> Dash:
    """The Dash app for `views` (pipeline name -> view, the default first)."""
    if not views:
        raise ValueError("the page needs at least one pipeline")
    app = Dash(__name__, title="etl-platform · live", update_title="", serve_locally=True)
    app.index_string = INDEX
    app.layout = page_layout(views, refresh_ms)
    register_callbacks(app, sources, views)
    return app
