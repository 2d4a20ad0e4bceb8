"""End-to-end fixtures: demo traffic on a fresh stream, `dagster dev` on a free port, headless Chromium.

`dagster dev` runs from the repository root with a throw-away DAGSTER_HOME (a copy of
config/dagster.local.yaml), pointed at the test's own Kinesis stream and S3 bucket, in its own
process group that teardown always kills. Chromium is Debian's `/usr/bin/chromium`, driven by
Playwright's Python package with a fresh profile; Playwright's own browser downloads are never used.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
import requests

from etl_platform.stream.producer import KinesisProducer
from etl_platform.stream.sources import demo_mix

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1440, "height": 900}

# Demo traffic straddling midnight, so the lake gets two daily partitions and the UI backfill of
# processed_events covers two of them (the launch dialog starts a plain run for a single partition).
EVENTS = 300
EVENTS_SEED = 7
EVENTS_START = datetime(2026, 6, 1, 23, 59, 57, tzinfo=UTC)
BACKFILL_DAYS = ("2026-06-01", "2026-06-02")

SERVER_START_TIMEOUT_S = 120  # webserver up and the code location loaded, on a loaded 2-core machine
STOP_GRACE_S = 10

_http = requests.Session()
_http.trust_env = False  # loopback only: never through a proxy from the environment


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: drives the Dagster UI in headless Chromium (needs the local stack)")


@dataclass
class DagsterUI:
    url: str
    log_path: Path
    stream: str
    bucket: str

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"(no dagster log: {exc})"
        return "\n".join(text.splitlines()[-lines:])

    def graphql(self, query: str, variables: dict | None = None, timeout: float = 30) -> dict:
        response = _http.post(
            f"{self.url}/graphql", json={"query": query, "variables": variables or {}}, timeout=timeout
        )
        response.raise_for_status()
        body = response.json()
        if body.get("errors"):
            raise AssertionError(f"GraphQL errors: {body['errors']}")
        return body["data"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_group(args: list[str], env: dict[str, str], log) -> subprocess.Popen:
    """A server from the repository root in its own process group (so `_stop_group` reaches all of
    it), its output into `log`."""
    return subprocess.Popen(
        args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
    )


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the whole process group (webserver, daemon, code servers, runs), then SIGKILL what is left."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # stragglers (run workers, resource tracker) even after a clean exit
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)


_LOCATIONS_QUERY = """
{ workspaceOrError { __typename
    ... on Workspace { locationEntries { name loadStatus
        locationOrLoadError { __typename ... on PythonError { message causes { message } } } } }
    ... on PythonError { message } } }
"""


def _wait_until_ready(ui: DagsterUI, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    last = "no answer yet"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(
                f"dagster dev exited with code {proc.returncode} before serving:\n{ui.log_tail()}", pytrace=False
            )
        try:
            _http.get(f"{ui.url}/server_info", timeout=5).raise_for_status()
            entries = ui.graphql(_LOCATIONS_QUERY, timeout=10)["workspaceOrError"].get("locationEntries") or []
        except (requests.RequestException, AssertionError, ValueError) as exc:
            last = repr(exc)
            time.sleep(1)
            continue
        loaded = [e for e in entries if e["loadStatus"] == "LOADED"]
        if entries and len(loaded) == len(entries):
            errors = [e for e in entries if e["locationOrLoadError"]["__typename"] == "PythonError"]
            if errors:
                pytest.fail(
                    "code location failed to load in dagster dev:\n"
                    + "\n".join(
                        f"{e['name']}: {e['locationOrLoadError']['message']}"
                        + "".join(
                            f"\n  caused by: {c['message']}" for c in e["locationOrLoadError"].get("causes") or []
                        )
                        for e in errors
                    ),
                    pytrace=False,
                )
            return
        last = f"location entries: {entries}"
        time.sleep(1)
    pytest.fail(
        f"dagster dev at {ui.url} not ready after {SERVER_START_TIMEOUT_S}s ({last}):\n{ui.log_tail()}", pytrace=False
    )


@pytest.fixture
def demo_events(kinesis, stream) -> list[dict]:
    """A few hundred seeded demo events on the test stream, produced before Dagster starts."""
    last_day = date.fromisoformat(BACKFILL_DAYS[-1])
    assert date.today() > last_day, (
        f"the clock says {date.today()}, before the demo day {last_day}: its daily partition does not exist yet"
    )
    events = list(demo_mix(EVENTS, seed=EVENTS_SEED, start=EVENTS_START))
    stats = KinesisProducer(kinesis, stream).send(events)
    assert stats.sent == len(events), f"producer did not put every event: {stats.summary()}"
    return events


SEED_RECORDS = 60


@pytest.fixture
def seed_stream(kinesis, unique_name) -> Iterator[str]:
    """The shipped `seed` pipeline's own stream for the test, with records the seed's producer put."""
    from etl_platform.ops.provisioning import ensure_stream
    from tests.integration.seed_producer import compress_and_send_data

    name = f"{unique_name}-seed"
    ensure_stream(kinesis, name, shards=1)
    endpoint = kinesis.meta.endpoint_url
    # boto3's default client, as the seed's code makes it, finds the local stream through the environment.
    local = {
        "AWS_ENDPOINT_URL_KINESIS": endpoint,
        "AWS_DEFAULT_REGION": kinesis.meta.region_name,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }
    saved = {k: os.environ.get(k) for k in local}
    os.environ.update(local)
    try:
        for i in range(SEED_RECORDS):
            user = f"user-{i % 4}"
            when = datetime(2026, 6, 2, 8, tzinfo=UTC).replace(second=i % 60).isoformat()
            data = {"user_id": user, "event_type": "click", "timestamp": when, "value": 10.0 + i % 7}
            compress_and_send_data(name, {**data, "partition_key": user})
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
    yield name
    kinesis.delete_stream(StreamName=name, EnforceConsumerDeletion=True)


@pytest.fixture
def dagster_ui(stream, seed_stream, bucket, demo_events, tmp_path) -> Iterator[DagsterUI]:
    """`dagster dev` (webserver + daemon) on a free loopback port, against the test's stream and bucket,
    with the shipped pipelines (the default one and `seed`, on its own test stream) side by side."""
    import yaml

    pipelines = yaml.safe_load((REPO / "config" / "pipelines.yaml").read_text())
    pipelines["pipelines"]["seed"]["stream"]["name"] = seed_stream
    pipelines["pipelines"].pop("msk-events", None)  # Kafka has its own tests (tests/integration/test_kafka_pipeline.py)
    pipelines_file = tmp_path / "pipelines.yaml"
    pipelines_file.write_text(yaml.safe_dump(pipelines))
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "config" / "dagster.local.yaml", home / "dagster.yaml")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETL_")}  # no ETL_PROFILE, default ports
    env.update(
        DAGSTER_HOME=str(home),
        ETL_STREAM_NAME=stream,
        ETL_LAKE_BUCKET=bucket,
        ETL_PIPELINES_FILE=str(pipelines_file),
        ETL_BUFFER_INTERVAL_S="1",
        # Shard workers hand their shard over after a few seconds, so the tour sees them succeed (and the
        # supervisor start the next ones).
        ETL_WORKER_BUDGET_S="8",
        ETL_DAGSTER_PORT=str(port),
        PYTHONUNBUFFERED="1",
    )
    dagster = Path(sys.executable).with_name("dagster")
    log_path = tmp_path / "dagster-dev.log"
    ui = DagsterUI(url=f"http://127.0.0.1:{port}", log_path=log_path, stream=stream, bucket=bucket)
    with log_path.open("wb") as log:
        proc = _start_group([str(dagster), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)], env, log)
        try:
            _wait_until_ready(ui, proc)
            yield ui
        finally:
            _stop_group(proc)


@pytest.fixture
def page(tmp_path):
    """A Playwright page in headless Debian Chromium with a fresh, temporary profile."""
    assert CHROMIUM.exists(), (
        f"{CHROMIUM} is missing: the UI test needs Debian's chromium package "
        "(scripts/install.sh installs it; by hand: apt-get install -y chromium)"
    )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        pytest.fail(
            f"the playwright package is missing from .venv ({exc}); `make install` installs it",
            pytrace=False,
        )
    with (
        tempfile.TemporaryDirectory(prefix="e2e-chromium-", ignore_cleanup_errors=True) as profile,
        sync_playwright() as pw,
    ):
        context = pw.chromium.launch_persistent_context(
            profile,
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport=VIEWPORT,
        )
        # Dagster's one-time "Join the Dagster community" dialog would cover every page and screenshot.
        context.add_init_script("window.localStorage.setItem('communityNux', JSON.stringify('1'));")
        context.set_default_timeout(30_000)
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()


# --- the live dashboard page (etl_platform.dashboard) -----------------------------------------------
DASHBOARD_START_TIMEOUT_S = 60  # imports and first answer on a loaded 2-core machine


@dataclass
class DashboardPage:
    url: str
    log_path: Path
    prefix: str  # the test's index prefix: the default pipeline's indices
    stream: str  # the default pipeline's stream (its leases are the shards panel)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError as exc:
            return f"(no dashboard log: {exc})"


@pytest.fixture
def dashboard(prefix, unique_name, tmp_path) -> Iterator[DashboardPage]:
    """`python -m etl_platform.dashboard` on a free loopback port, as `make dev` starts it, reading the
    test's index prefix and stream name (the repo's pipelines file), in its own process group."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETL_")}  # the local profile, default ports
    env.update(
        ETL_OPENSEARCH_INDEX_PREFIX=prefix,
        ETL_STREAM_NAME=unique_name,
        ETL_DASHBOARD_PORT=str(port),
        PYTHONUNBUFFERED="1",
    )
    page = DashboardPage(f"http://127.0.0.1:{port}", tmp_path / "dashboard.log", prefix, unique_name)
    with page.log_path.open("wb") as log:
        proc = _start_group([sys.executable, "-m", "etl_platform.dashboard"], env, log)
        try:
            deadline = time.monotonic() + DASHBOARD_START_TIMEOUT_S
            while True:
                if proc.poll() is not None:
                    pytest.fail(f"the dashboard exited with code {proc.returncode}:\n{page.log_tail()}", pytrace=False)
                try:
                    if _http.get(page.url, timeout=2).ok:
                        break
                except requests.RequestException:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"the dashboard at {page.url} did not answer:\n{page.log_tail()}", pytrace=False)
                time.sleep(0.2)
            yield page
        finally:
            _stop_group(proc)
