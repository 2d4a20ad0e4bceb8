"""The CLI as users meet it: each mistake is one line on stderr (what is wrong — what to do), a non-zero
exit and no traceback; `--debug` shows the traceback; `stack status` is a table; `doctor` checks the
machine; a benchmark with the stack down says so in the same words.

"The stack is down" is a real condition here, not a mock: the ETL_*_PORT variables point the CLI (in a
subprocess) at ports nothing listens on, so the shared local stack is never touched or stopped.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STACK_PORT_VARS = ("ETL_KINESIS_PORT", "ETL_MOTO_PORT", "ETL_POSTGRES_PORT", "ETL_OPENSEARCH_PORT", "ETL_KAFKA_PORT")
STACK_DOWN = "the local stack is not running"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # free once the socket closes: nothing answers there


@pytest.fixture(scope="module")
def down_env() -> dict[str, str]:
    """The local profile pointed at ports nothing listens on: the stack as a user finds it when it is down."""
    return {var: str(_closed_port()) for var in STACK_PORT_VARS}


def run(*args: str, env: dict[str, str] | None = None, module: str = "etl_platform.cli.main", timeout: float = 120):
    full = {**os.environ, **(env or {})}
    if "ETL_PROFILE" not in (env or {}):
        full.pop("ETL_PROFILE", None)
    full.pop("ETL_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        env=full,
        cwd=REPO,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def assert_one_line(result: subprocess.CompletedProcess, code: int, *expected: str) -> str:
    """Exit `code`, stderr one line containing each of `expected`, no traceback; the line."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


# --- user mistakes ---------------------------------------------------------------------------------
def test_missing_input_file(tmp_path):
    missing = tmp_path / "missing.jsonl"
    line = assert_one_line(run("produce", "--file", str(missing)), 2, "etl-platform produce:", str(missing))
    assert "no such file" in line and "check the path" in line


@pytest.mark.parametrize(
    "args",
    [
        ("produce", "--source", "demo", "--duration", "1"),
        ("produce", "--pipeline", "msk-events", "--source", "demo", "--duration", "1"),  # Kafka: never times out
        ("consume", "--until-caught-up"),
        ("search", "user", "u1"),
        ("search", "index-day", "2026-05-01"),
        ("errors", "list"),
        ("scale", "--dry-run"),
    ],
    ids=lambda a: "-".join(a[:2]),
)
def test_stack_not_running(args, down_env):
    result = run(*args, env=down_env, timeout=60)
    assert_one_line(result, 1, f"etl-platform {args[0]}:", STACK_DOWN, "run `etl-platform stack up`")


def test_stack_not_running_status_says_what_to_do(down_env):
    result = run("stack", "status", env=down_env)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "not running — run `etl-platform stack up`" in result.stderr
    assert "kinesis     DOWN" in result.stdout


def test_unknown_pipeline():
    line = assert_one_line(run("produce", "--pipeline", "nope", "--source", "demo"), 2, "unknown pipeline 'nope'")
    assert "default" in line  # lists the known ones


def test_unknown_pipeline_option_on_search():
    assert_one_line(run("search", "top-users", "--pipeline", "nope"), 2, "unknown pipeline 'nope'")


@pytest.mark.parametrize(
    "args",
    [
        ("search", "index-day", "2026-13-01"),
        ("errors", "list", "--from", "yesterday"),
        ("search", "replay-failed", "--day", "1/2/2026"),
    ],
    ids=["index-day", "errors-from", "replay-day"],
)
def test_bad_date(args):
    assert_one_line(run(*args), 2, "expected a date as YYYY-MM-DD", "--help")


def test_date_range_backwards():
    assert_one_line(
        run("errors", "list", "--from", "2026-05-03", "--to", "2026-05-01"), 2, "--from 2026-05-03 is after --to"
    )


def test_usage_error_is_one_line():
    assert_one_line(run("produce"), 2, "etl-platform produce:", "--source", "--help")
    assert_one_line(run("no-such-command"), 2, "invalid choice")


def test_bad_search_time():
    # parse_time refuses it before any server is asked
    result = run("search", "user", "u1", "--from", "last tuesday")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr


def _aws_env(**extra: str) -> dict[str, str]:
    """The aws profile, complete but with no credentials anywhere botocore looks."""
    env = {
        "ETL_PROFILE": "aws",
        "AWS_REGION": "us-east-1",
        "ETL_REDSHIFT_IAM_ROLE": "arn:aws:iam::123456789012:role/loader",
        "ETL_REDSHIFT_USER": "loader",
        "ETL_REDSHIFT_HOST": "127.0.0.1",
        "ETL_REDSHIFT_DATABASE": "warehouse",
        "ETL_STREAM_NAME": "events",
        "ETL_LAKE_BUCKET": "lake",
        "ETL_OPENSEARCH_URL": f"https://127.0.0.1:{_closed_port()}",
        "ETL_KAFKA_BOOTSTRAP": f"127.0.0.1:{_closed_port()}",
        "AWS_CONFIG_FILE": "/nonexistent/config",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/credentials",
        "AWS_EC2_METADATA_DISABLED": "true",
        **extra,
    }
    return env


@pytest.fixture
def no_aws_credentials(monkeypatch):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)


def test_aws_credentials_missing(no_aws_credentials):
    # botocore looks for credentials before it opens a connection: nothing leaves the machine
    assert_one_line(run("errors", "list", env=_aws_env()), 2, "no AWS credentials found", "AWS_PROFILE")


def test_aws_profile_names_the_unreachable_endpoint(no_aws_credentials):
    env = _aws_env()
    line = assert_one_line(run("search", "user", "u1", env=env), 1, "cannot reach OpenSearch")
    assert env["ETL_OPENSEARCH_URL"] in line and STACK_DOWN not in line


def test_configuration_error_names_the_setting():
    line = assert_one_line(run("stack", "status", env={"ETL_KINESIS_PORT": "http"}), 2, "ETL_KINESIS_PORT='http'")
    assert line.startswith("configuration error: ")  # the wording scripts (and test_seed_pipeline) match


def test_bad_load_series(tmp_path):
    series = tmp_path / "series.json"
    series.write_text("[1, 2]")  # valid JSON, not a load series
    assert_one_line(run("scale", "--replay", str(series)), 2, "configuration error:", "load series")
    assert_one_line(run("scale", "--replay", str(tmp_path / "none.json")), 2, "cannot read the load series")


def test_debug_shows_the_traceback(tmp_path):
    missing = str(tmp_path / "missing.jsonl")
    for args in (("--debug", "produce", "--file", missing), ("produce", "--debug", "--file", missing)):
        result = run(*args)
        assert result.returncode == 1
        assert "Traceback (most recent call last)" in result.stderr and "FileNotFoundError" in result.stderr


# --- stack status, doctor --------------------------------------------------------------------------
@pytest.mark.stack
def test_stack_status_table(settings):
    result = run("stack", "status")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["service", "state", "endpoint"]
    rows = {line.split()[0]: line for line in lines[2:9]}
    for name, endpoint in (
        ("kinesis", settings.kinesis_endpoint),
        ("moto", settings.s3_endpoint),
        ("postgres", settings.warehouse_dsn),
        ("opensearch", settings.opensearch_url),
        ("kafka", settings.kafka_bootstrap),
        ("dagster", settings.dagster_url),
    ):
        assert name in rows and endpoint in rows[name], result.stdout
        if name != "dagster":
            assert rows[name].split()[1] == "up"
    assert "dashboard" in rows and "http://127.0.0.1:" in rows["dashboard"]
    # every column starts at the same offset on every row
    starts = {line.index("http") for line in lines[2:9] if "http" in line}
    assert len(starts) == 1, result.stdout
    assert any(line.split()[:1] == ["pipeline"] for line in lines), result.stdout
    assert not result.stderr.strip()


def test_doctor_table_and_json(tmp_path):
    env = {"ETL_STACK_DIR": str(tmp_path / "stack")}
    table = run("doctor", env=env)
    assert table.returncode in (0, 1) and "Traceback" not in table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["check", "status", "detail", "fix"]
    as_json = run("doctor", "--json", env=env)
    report = json.loads(as_json.stdout)
    checks = {c["check"]: c for c in report["checks"]}
    assert {"python", "java", "node", "postgres", "disk", "memory"} <= set(checks)
    assert all(c["status"] in ("OK", "WARN", "FAIL") for c in checks.values())
    assert all(c["fix"] for c in checks.values() if c["status"] == "FAIL")
    assert report["ok"] == (as_json.returncode == 0) == all(c["status"] != "FAIL" for c in checks.values())
    assert table.returncode == as_json.returncode
    assert checks["python"]["status"] == "OK"


def test_doctor_flags_a_port_taken_by_another_program(tmp_path):
    # moto, as its health check speaks HTTP; kinesis-mock's is only "the port is open", so a squatter
    # there reads as "another stack" (WARN), not as a foreign program.
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        result = run("doctor", "--json", env={"ETL_MOTO_PORT": str(port), "ETL_STACK_DIR": str(tmp_path)})
    assert result.returncode == 1
    check = {c["check"]: c for c in json.loads(result.stdout)["checks"]}[f"port {port} (moto)"]
    assert check["status"] == "FAIL" and "ETL_MOTO_PORT" in check["fix"]


def test_doctor_says_free_ports_are_free(tmp_path, down_env):
    result = run("doctor", "--json", env={**down_env, "ETL_STACK_DIR": str(tmp_path)})
    checks = {c["check"]: c for c in json.loads(result.stdout)["checks"]}
    port = down_env["ETL_MOTO_PORT"]
    assert checks[f"port {port} (moto)"] == {
        "check": f"port {port} (moto)",
        "status": "OK",
        "detail": "free",
        "fix": "",
    }


# --- benchmarks ------------------------------------------------------------------------------------
@pytest.mark.parametrize("bench", ["bench_ingestion", "bench_warehouse", "bench_search", "bench_kafka"])
def test_benchmark_with_the_stack_down(bench, down_env):
    result = run(env=down_env, module=f"benchmarks.{bench}", timeout=60)
    assert_one_line(result, 1, f"benchmarks.{bench}:", STACK_DOWN, "run `etl-platform stack up`")
