"""`make dev` (scripts/dev.sh) stops everything it started within a few seconds of SIGTERM, as on Ctrl-C.

The shared local stack is left alone: ETL_DEV_SKIP_STACK=1 skips `stack up`/`stack down`, the stack's
ports point at closed ports (so the demo producers touch no real stream), and Dagster and the dashboard
get free ports and a throwaway Dagster instance. Real processes: dagster dev (webserver, daemon, code
server), the dashboard, the producers. Every process the script starts inherits a marker variable, so
the test finds them all in /proc however they are grouped or re-parented.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from etl_platform.stack.service import http_ok

REPO = Path(__file__).resolve().parents[2]
MARKER = "ETL_DEV_TEST_MARKER"
STOP_BUDGET_S = 12.0  # dev.sh's SIGKILL deadline is 5 s; the rest is slack for a busy 2-core machine


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _marked(marker: str) -> set[int]:
    """Live processes whose environment carries the marker (zombies have none to read)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes()
        except OSError:
            continue
        if f"{MARKER}={marker}".encode() in env.split(b"\0"):
            found.add(int(entry.name))
    return found


@pytest.fixture
def dev_env(tmp_path):
    marker = uuid.uuid4().hex
    ports = {var: str(_free_port()) for var in ("ETL_DAGSTER_PORT", "ETL_DASHBOARD_PORT")}
    closed = {
        var: str(_free_port())
        for var in ("ETL_KINESIS_PORT", "ETL_MOTO_PORT", "ETL_POSTGRES_PORT", "ETL_OPENSEARCH_PORT", "ETL_KAFKA_PORT")
    }
    env = {
        **os.environ,
        **ports,
        **closed,
        MARKER: marker,
        "ETL_DEV_SKIP_STACK": "1",
        "ETL_DAGSTER_HOME": str(tmp_path / "dagster_home"),
        "ETL_STACK_DIR": str(tmp_path / "stack"),
        "ETL_PROFILE": "local",
    }
    yield env, marker, ports
    for pid in _marked(marker):  # only on failure: nothing of this test may outlive it
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.parametrize("signals", [1, 2], ids=["sigterm", "sigterm-twice"])
def test_sigterm_stops_everything_within_seconds(dev_env, tmp_path, signals):
    """`signals`=2: `make dev` passes SIGTERM on to the script and a supervisor (`timeout`, systemd) may
    signal the whole process group as well; the second must not cut the shutdown short."""
    env, marker, ports = dev_env
    log = tmp_path / "dev.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["bash", "scripts/dev.sh"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # as `make dev` in its own terminal; our own group stays out of it
        )
    try:
        # The hard case: dagster dev fully up (webserver, daemon, code server), not a half-started one.
        dagster = f"http://127.0.0.1:{ports['ETL_DAGSTER_PORT']}/server_info"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not http_ok(dagster):
            assert proc.poll() is None, log.read_text(errors="replace")
            time.sleep(1)
        assert http_ok(dagster), "dagster dev did not come up:\n" + log.read_text(errors="replace")
        started = _marked(marker)
        assert len(started) >= 4, started  # bash, dagster dev and its servers, the dashboard, producers

        sent = time.monotonic()
        for _ in range(signals):
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.3)
        code = proc.wait(timeout=60)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    output = log.read_text(errors="replace")
    assert code == 128 + signal.SIGTERM, output
    assert took < STOP_BUDGET_S, f"dev.sh took {took:.1f}s to stop:\n{output}"
    assert "dev: stopping" in output
    # What exited last may still be in the kernel's hands for a moment.
    left = _marked(marker)
    for _ in range(20):
        if not left:
            break
        time.sleep(0.1)
        left = _marked(marker)
    assert not left, {pid: Path(f"/proc/{pid}/cmdline").read_bytes() for pid in left}
    assert not http_ok(dagster)
