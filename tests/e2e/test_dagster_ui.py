"""The Dagster UI, end to end in headless Chromium, as a user sees it under `make dev`:

(a) the global asset lineage shows every asset of the code location;
(b) `kinesis_microbatch_sensor` is running and its runs of `kinesis_microbatch_job` succeed;
(c) a partition backfill of `processed_events`, launched from the asset page, succeeds;
(d) terminating a running shard worker (as the UI's Terminate does) hands its shard to a new worker:
    nothing lost, nothing duplicated, the analytics exact;
(e) a second pipeline (the shipped `seed`, with its own contract and stream) runs beside the default
    one: its workers succeed, its records reach its lake prefix, and its assets have their own group.

GraphQL (`/graphql`) is used only to wait for the daemon; every assertion about what users see is
made on the page. Screenshots go to .stack/screenshots/ (ETL_E2E_SCREENSHOTS=docs/screenshots refreshes
the README's tour).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import NoReturn

import pytest

from etl_platform.lake import layout
from etl_platform.stream.producer import KinesisProducer
from etl_platform.stream.sources import demo_mix
from tests.e2e.conftest import BACKFILL_DAYS, REPO, DagsterUI
from tests.integration.pipeline_helpers import assert_same_results, lake_rows, one_pass

pytestmark = [pytest.mark.e2e, pytest.mark.stack, pytest.mark.timeout(600)]

SHOTS = REPO / os.environ.get("ETL_E2E_SCREENSHOTS", ".stack/screenshots")
SENSOR = "kinesis_microbatch_sensor"
JOB = "kinesis_microbatch_job"
SHARD_TAG = "etl/shard"
SENSOR_RUNS_TIMEOUT_S = 120
BACKFILL_TIMEOUT_S = 300  # the backfill daemon wakes every 30 s; on a loaded 2-core machine it can lag minutes
UI_TIMEOUT_MS = 60_000  # first paint of a page on a loaded 2-core machine (the UI bundle is large)
MINIMAL_NODE_CHARS = 18  # zoomed out, the graph middle-truncates names to this length
RUN_ROW = 'tr, [class*="VirtualizedTable_row"]'  # run lists are virtualized <div> tables in Dagster 1.13


# --- helpers ---------------------------------------------------------------------------------------


def _page_text(page, limit: int = 4000) -> str:
    try:
        return page.inner_text("body", timeout=5_000)[:limit]
    except Exception as exc:  # best effort, only for failure messages
        return f"(page text unavailable: {exc})"


def _fail(page, ui: DagsterUI, message: str, log: bool = False) -> NoReturn:
    parts = [message, f"--- page {page.url} ---", _page_text(page)]
    if log:
        parts += ["--- dagster dev log (tail) ---", ui.log_tail()]
    pytest.fail("\n".join(parts), pytrace=False)


def _expect(page, ui: DagsterUI, check: Callable[[], None], what: str) -> None:
    """Run a Playwright `expect(...)` and turn its failure into a message with the page's text."""
    try:
        check()
        return
    except AssertionError as exc:
        error = str(exc)
    _fail(page, ui, f"{what}\n{error}")


def _shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.wait_for_timeout(750)  # let transitions (graph autocenter, toasts) settle for the picture
    page.screenshot(path=str(SHOTS / name))


def middle_truncated(text: str, max_length: int = MINIMAL_NODE_CHARS) -> str:
    """The label Dagster's zoomed-out graph shows for a long name (ui-core `withMiddleTruncation`)."""
    overflow = len(text) - max_length
    if overflow <= 0:
        return text
    pattern = "__" if "__" in text else r"[_>.\-]"
    breakpoints = [m.start() for m in re.finditer(pattern, text)]
    cut = (len(text) + overflow) // 2
    usable = next((i for i, bp in enumerate(breakpoints) if bp > overflow + 3), -1)
    if usable != -1:
        index = max(usable, len(breakpoints) // 2)
        if index < len(breakpoints):
            cut = breakpoints[index]
    return text[: max(0, cut - (overflow + 1))] + "…" + text[cut:]


def _expected_assets() -> tuple[list[str], set[str]]:
    """Display names (last key component) of every defined asset, and the asset groups."""
    import definitions

    nodes = [
        n
        for n in definitions.defs.resolve_asset_graph().asset_nodes
        if not getattr(n.assets_def, "is_auto_created_stub", False)
    ]
    assert nodes, "definitions.defs has no assets"
    return sorted(n.key.path[-1] for n in nodes), {n.group_name for n in nodes}


_RUNS_QUERY = """
query($job: String!) { runsOrError(filter: {pipelineName: $job}) { __typename
  ... on Runs { results { runId status tags { key value } } } ... on PythonError { message } } }
"""
_BACKFILL_QUERY = """
query($id: String!) { partitionBackfillOrError(backfillId: $id) { __typename
  ... on PartitionBackfill { id status error { message } } ... on PythonError { message } } }
"""
RUN_FAILED = {"FAILURE", "CANCELED", "CANCELING"}
BACKFILL_OK = {"COMPLETED", "COMPLETED_SUCCESS"}
BACKFILL_FAILED = {"FAILED", "FAILING", "COMPLETED_FAILED", "CANCELED", "CANCELING"}


def _wait_for_sensor_runs(page, ui: DagsterUI, shards: list[str], job: str = JOB) -> list[dict]:
    """Until every shard has a successful run of the job (the sensor launches one per shard with data)."""
    deadline = time.monotonic() + SENSOR_RUNS_TIMEOUT_S
    runs: list[dict] = []
    while time.monotonic() < deadline:
        result = ui.graphql(_RUNS_QUERY, {"job": job})["runsOrError"]
        if result["__typename"] != "Runs":
            _fail(page, ui, f"listing {JOB} runs: {result}", log=True)
        runs = result["results"]
        failed = [r for r in runs if r["status"] in RUN_FAILED]
        if failed:
            _fail(page, ui, f"{JOB} runs failed: {failed}", log=True)
        done = {
            sid
            for r in runs
            if r["status"] == "SUCCESS"
            for t in r["tags"]
            if t["key"] == SHARD_TAG
            for sid in t["value"].split(":")[-1].split("+")
        }
        if done >= set(shards):
            return [r for r in runs if r["status"] == "SUCCESS"]
        time.sleep(2)
    _fail(
        page,
        ui,
        f"after {SENSOR_RUNS_TIMEOUT_S}s, not every shard of {shards} has a successful {JOB} run; "
        f"runs: {[(r['runId'][:8], r['status']) for r in runs]}",
        log=True,
    )


def _wait_for_backfill(page, ui: DagsterUI, backfill_id: str) -> str:
    deadline = time.monotonic() + BACKFILL_TIMEOUT_S
    status = "unknown"
    while time.monotonic() < deadline:
        result = ui.graphql(_BACKFILL_QUERY, {"id": backfill_id})["partitionBackfillOrError"]
        if result["__typename"] != "PartitionBackfill":
            _fail(page, ui, f"backfill {backfill_id}: {result}", log=True)
        status = result["status"]
        if status in BACKFILL_OK:
            return status
        if status in BACKFILL_FAILED:
            _fail(page, ui, f"backfill {backfill_id} ended {status}: {result.get('error')}", log=True)
        time.sleep(2)
    _fail(page, ui, f"backfill {backfill_id} still {status} after {BACKFILL_TIMEOUT_S}s", log=True)


# --- the three user journeys -----------------------------------------------------------------------


def check_asset_graph(page, ui: DagsterUI) -> None:
    from playwright.sync_api import expect

    names, groups = _expected_assets()
    page.goto(f"{ui.url}/asset-groups")
    graph = page.locator("svg foreignObject")
    _expect(
        page,
        ui,
        lambda: expect(graph.first).to_be_visible(timeout=UI_TIMEOUT_MS),
        "the global asset lineage (/asset-groups) did not render a graph",
    )
    if len(groups) > 1:
        # Several groups start collapsed; the graph's "Expand all groups" shortcut (⌥E) opens them all.
        page.keyboard.press("Alt+e")
    for name in names:
        node = (
            graph.locator(f'[data-tooltip="{name}"]')
            .or_(graph.get_by_text(name, exact=True))
            .or_(graph.get_by_text(middle_truncated(name), exact=True))
        )
        _expect(
            page,
            ui,
            lambda node=node: expect(node.first).to_be_visible(timeout=30_000),
            f"asset {name!r} is not shown in the asset graph (expected all of {names})",
        )
    _shot(page, "asset-graph.png")


def check_sensor_running(page, ui: DagsterUI) -> None:
    from playwright.sync_api import expect

    page.goto(f"{ui.url}/automation")
    link = page.get_by_role("link", name=SENSOR).first
    _expect(
        page,
        ui,
        lambda: expect(link).to_be_visible(timeout=UI_TIMEOUT_MS),
        f"{SENSOR} is not listed on the Automation page",
    )
    link.click()
    _expect(
        page,
        ui,
        lambda: expect(page).to_have_url(re.compile(f"/sensors/{SENSOR}"), timeout=30_000),
        f"clicking {SENSOR} did not open its page",
    )
    switch = page.locator("tr").filter(has=page.get_by_text("Running", exact=True)).locator("input[type=checkbox]")
    _expect(
        page,
        ui,
        lambda: expect(switch).to_be_checked(timeout=30_000),
        f"{SENSOR} is not shown as Running (its 'Running' switch is off or missing)",
    )


def check_sensor_runs(page, ui: DagsterUI, runs: list[dict]) -> None:
    """The sensor page's Runs tab lists the runs it launched, each a success."""
    from playwright.sync_api import expect

    page.goto(f"{ui.url}/locations/stream/sensors/{SENSOR}")
    tab = page.get_by_role("button", name="Runs", exact=True)
    _expect(page, ui, lambda: expect(tab).to_be_visible(timeout=UI_TIMEOUT_MS), f"{SENSOR} page has no Runs tab")
    tab.click()
    for run in runs:
        row = page.locator(RUN_ROW).filter(has_text=run["runId"][:8])
        _expect(
            page,
            ui,
            lambda row=row: expect(row).to_contain_text("Success", timeout=30_000),
            f"run {run['runId'][:8]} is not shown as Success on the sensor's Runs tab",
        )
    _shot(page, "sensor.png")


def check_runs_page(page, ui: DagsterUI, runs: list[dict]) -> None:
    from playwright.sync_api import expect

    page.goto(f"{ui.url}/runs")
    for run in runs:
        row = page.locator(RUN_ROW).filter(has_text=run["runId"][:8])
        _expect(
            page,
            ui,
            lambda row=row: expect(row).to_contain_text(JOB, timeout=UI_TIMEOUT_MS),
            f"run {run['runId'][:8]} of {JOB} is not listed on the Runs page",
        )
        _expect(
            page,
            ui,
            lambda row=row: expect(row).to_contain_text("Success", timeout=30_000),
            f"run {run['runId'][:8]} is not shown as Success on the Runs page",
        )
        _expect(
            page,
            ui,
            lambda row=row: expect(row).to_contain_text(SENSOR),
            f"run {run['runId'][:8]} is not shown as launched by {SENSOR}",
        )
    _shot(page, "runs.png")


def launch_backfill(page, ui: DagsterUI) -> str:
    """Materialize… on the processed_events page, pick the demo days, launch; returns the backfill id."""
    from playwright.sync_api import expect

    page.goto(f"{ui.url}/assets/processed_events")
    # (accessible names start with the icon's label, so match the visible text instead)
    materialize = page.get_by_role("button").filter(has_text=re.compile(r"^Materialize"))
    _expect(
        page,
        ui,
        lambda: expect(materialize.first).to_be_enabled(timeout=UI_TIMEOUT_MS),
        "processed_events page has no enabled Materialize button",
    )
    materialize.first.click()
    dialog = page.get_by_role("dialog")
    _expect(
        page,
        ui,
        lambda: expect(dialog).to_contain_text("Launch runs to materialize processed_events", timeout=30_000),
        "Materialize did not open the partition launch dialog",
    )
    selection = dialog.get_by_role("textbox")
    _expect(
        page,
        ui,
        lambda: expect(selection.first).to_be_visible(timeout=30_000),
        "the launch dialog has no partition selection box",
    )
    show_all = dialog.get_by_role("button", name="Show all partitions")
    try:  # the dialog starts with the last 90 days of partitions; the demo days may be older
        expect(show_all).to_be_visible(timeout=5_000)
        show_all.click()
    except AssertionError:
        pass  # every partition is already in range
    selection.first.fill(f"[{BACKFILL_DAYS[0]}...{BACKFILL_DAYS[-1]}]")
    selection.first.press("Enter")
    _expect(
        page,
        ui,
        lambda: expect(dialog).to_contain_text(f"{len(BACKFILL_DAYS)} partitions", timeout=30_000),
        f"the dialog did not select the partitions {BACKFILL_DAYS}",
    )
    launch = dialog.get_by_role("button", name="Launch backfill")
    _expect(page, ui, lambda: expect(launch).to_be_enabled(timeout=30_000), "'Launch backfill' is not enabled")
    _shot(page, "backfill-launch.png")
    launch.click()

    toast = page.get_by_text(re.compile(r"Created backfill \w+"))
    _expect(
        page,
        ui,
        lambda: expect(toast.first).to_be_visible(timeout=30_000),
        "launching showed no 'Created backfill' confirmation",
    )
    match = re.search(r"Created backfill (\w+)", toast.first.inner_text())
    if not match:
        _fail(page, ui, "the 'Created backfill' confirmation names no backfill")
    return match.group(1)


def check_backfill_succeeded(page, ui: DagsterUI, backfill_id: str) -> None:
    from playwright.sync_api import expect

    _wait_for_backfill(page, ui, backfill_id)
    page.goto(f"{ui.url}/runs/b/{backfill_id}")
    # The overview's "Status" detail (the progress table also has a "Succeeded" column header).
    status = (
        page.locator("div")
        .filter(has=page.get_by_text("Status", exact=True))
        .filter(has=page.get_by_text("Succeeded", exact=True))
        .last
    )
    _expect(
        page,
        ui,
        lambda: expect(status).to_be_visible(timeout=UI_TIMEOUT_MS),
        f"backfill {backfill_id} page does not show status Succeeded",
    )
    _expect(
        page,
        ui,
        lambda: expect(page.get_by_text("100% completed")).to_be_visible(timeout=30_000),
        f"backfill {backfill_id} page does not show 100% completed",
    )
    days = re.compile(rf"{BACKFILL_DAYS[0]}(\.\.\.|…){BACKFILL_DAYS[-1]}")
    _expect(
        page,
        ui,
        lambda: expect(page.locator("body")).to_contain_text(days),
        f"backfill {backfill_id} page does not show the partition range {BACKFILL_DAYS}",
    )
    _shot(page, "backfill.png")


_TERMINATE = """
mutation($id: String!) { terminateRun(runId: $id, terminatePolicy: SAFE_TERMINATE) { __typename
  ... on TerminateRunSuccess { run { runId } } ... on TerminateRunFailure { message }
  ... on PythonError { message } } }
"""
_RUN_STATUS = """query($id: ID!) { runOrError(runId: $id) { __typename ... on Run { status } } }"""


def check_terminated_worker_hands_over(page, ui: DagsterUI, kinesis, s3, stream: str, bucket: str) -> None:
    """Terminate a STARTED worker run, keep producing, and check the lake ends up exact."""
    deadline = time.monotonic() + SENSOR_RUNS_TIMEOUT_S
    victim, answers = None, []
    while victim is None and time.monotonic() < deadline:
        runs = ui.graphql(_RUNS_QUERY, {"job": JOB})["runsOrError"]["results"]
        started = next((r for r in runs if r["status"] == "STARTED"), None)
        if started is None:
            time.sleep(0.5)
            continue
        answer = ui.graphql(_TERMINATE, {"id": started["runId"]})["terminateRun"]
        if answer["__typename"] == "TerminateRunSuccess":
            victim = started
        else:  # it ended its budget between the listing and the request: take the next one
            answers.append(answer)
    if victim is None:
        _fail(page, ui, f"no STARTED {JOB} run could be terminated ({answers[-3:]})", log=True)
    shard = next(t["value"] for t in victim["tags"] if t["key"] == SHARD_TAG).split("+")[0]
    extra = list(demo_mix(120, seed=99, start=datetime(2026, 6, 2, 12, tzinfo=UTC), users=6))
    KinesisProducer(kinesis, stream).send(extra)
    expected = one_pass(kinesis, stream)
    deadline = time.monotonic() + SENSOR_RUNS_TIMEOUT_S
    while time.monotonic() < deadline:
        status = ui.graphql(_RUN_STATUS, {"id": victim["runId"]})["runOrError"].get("status")
        processed = lake_rows(s3, bucket, layout.PROCESSED)
        if status == "CANCELED" and processed.height >= expected.height:
            break
        time.sleep(2)
    else:
        _fail(page, ui, f"after terminating {victim['runId']} ({shard}) the lake did not catch up", log=True)
    raw = lake_rows(s3, bucket, layout.RAW)
    assert raw.height == expected.height == raw["event_id"].n_unique()  # nothing lost, nothing twice
    assert_same_results(processed, expected)
    later = [
        r
        for r in ui.graphql(_RUNS_QUERY, {"job": JOB})["runsOrError"]["results"]
        if r["runId"] != victim["runId"]
        and any(t["key"] == SHARD_TAG and shard in t["value"].split("+") for t in r["tags"])
    ]
    assert later, f"no worker took {shard} over after {victim['runId']} was terminated"


def test_dagster_ui_graph_sensor_and_backfill(page, dagster_ui, kinesis, s3, stream):
    shards = [s["ShardId"] for s in kinesis.list_shards(StreamName=stream)["Shards"]]
    started = time.monotonic()

    def progress(step: str) -> None:
        print(f"e2e: {step} at +{time.monotonic() - started:.0f}s")

    check_asset_graph(page, dagster_ui)  # (a)
    progress("asset graph checked")
    check_sensor_running(page, dagster_ui)  # (b)
    runs = _wait_for_sensor_runs(page, dagster_ui, shards)
    progress("sensor runs succeeded")
    # (c) launched as soon as the raw data is in, so the backfill daemon's 30 s cycles overlap the checks below
    backfill_id = launch_backfill(page, dagster_ui)
    progress(f"backfill {backfill_id} launched")
    check_sensor_runs(page, dagster_ui, runs)
    check_backfill_succeeded(page, dagster_ui, backfill_id)
    progress("backfill succeeded")
    check_runs_page(page, dagster_ui, runs)
    progress("runs page checked")
    check_terminated_worker_hands_over(page, dagster_ui, kinesis, s3, stream, dagster_ui.bucket)  # (d)
    progress("a terminated worker's shard was taken over")
    check_second_pipeline(page, dagster_ui, kinesis, s3)  # (e)
    progress("the seed pipeline ran beside the default one")


def check_second_pipeline(page, ui: DagsterUI, kinesis, s3) -> None:
    """The seed pipeline's workers succeed, its lake prefix fills, and its group shows its own assets."""
    from playwright.sync_api import expect

    from tests.e2e.conftest import SEED_RECORDS

    seed_stream = f"{ui.stream}-seed"
    shards = [s["ShardId"] for s in kinesis.list_shards(StreamName=seed_stream)["Shards"]]
    _wait_for_sensor_runs(page, ui, shards, job=f"seed_{JOB}")
    deadline = time.monotonic() + SENSOR_RUNS_TIMEOUT_S
    while (rows := lake_rows(s3, ui.bucket, "seed/processed").height) < SEED_RECORDS:
        if time.monotonic() > deadline:
            _fail(page, ui, f"the seed pipeline's lake has {rows} of {SEED_RECORDS} rows", log=True)
        time.sleep(2)
    page.goto(f"{ui.url}/locations/etl_platform/asset-groups/seed")
    graph = page.locator("svg foreignObject")
    for name in ("raw_events", "processed_events", "warehouse_events", "search_index"):
        node = graph.locator(f'[data-tooltip="{name}"]').or_(graph.get_by_text(name, exact=True))
        _expect(
            page,
            ui,
            lambda node=node: expect(node.first).to_be_visible(timeout=UI_TIMEOUT_MS),
            f"the seed group's graph does not show {name}",
        )
    _shot(page, "seed-group.png")
