"""The Dagster code location loads for both profiles, with the resources every asset relies on."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

from dagster_dbt import DbtCliResource

from tests.unit.test_config import AWS_ENV

EXPECTED_RESOURCES = {
    "kinesis",
    "s3",
    "lake",
    "warehouse",
    "opensearch",
    "dbt",
    "analytics",
    "cloudwatch",
    "alerts",
    "scaling",
}


def test_definitions_load_with_local_resources(monkeypatch):
    monkeypatch.delenv("ETL_PROFILE", raising=False)
    import definitions

    defs = importlib.reload(definitions).defs
    assert EXPECTED_RESOURCES <= set(defs.resources)
    assert defs.resources["kinesis"].endpoint_url == "http://127.0.0.1:4568"
    assert defs.resources["warehouse"].dialect == "postgres"
    assert defs.resources["kinesis"].buffer_interval_s == 10  # the local profile's lively default
    assert defs.resources["cloudwatch"].endpoint_url == "http://127.0.0.1:5050"
    # dagster-dbt's own resource, running this environment's dbt
    dbt = defs.resources["dbt"]
    assert type(dbt) is DbtCliResource and dbt.target == "postgres"
    assert Path(dbt.dbt_executable).parent == Path(sys.executable).parent
    # one process per run locally: a step per process re-imports the code location each time
    assert defs.resolve_implicit_global_asset_job_def().executor_def.name == "in_process"


def test_definitions_load_for_aws_profile(monkeypatch):
    for key, value in AWS_ENV.items():
        monkeypatch.setenv(key, value)
    import definitions

    defs = importlib.reload(definitions).defs
    assert defs.resources["warehouse"].dialect == "redshift"
    assert defs.resources["kinesis"].endpoint_url is None
    assert defs.resources["kinesis"].buffer_interval_s == 300  # Firehose's default
    assert defs.resources["alerts"].sns.region_name == "eu-west-1"
    assert defs.resources["dbt"].target == "redshift"
    assert defs.resolve_implicit_global_asset_job_def().executor_def.name == "multiprocess"
    monkeypatch.delenv("ETL_PROFILE")
    importlib.reload(definitions)


def test_dagster_validates_the_workspace(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
        capture_output=True,
        text=True,
        env={"DAGSTER_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "All code locations passed validation" in result.stdout + result.stderr


def test_a_bad_profile_fails_loading_naming_the_setting(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", "import definitions"],
        capture_output=True,
        text=True,
        env={"ETL_PROFILE": "aws", "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert result.returncode != 0
    assert "AWS_REGION" in result.stderr
