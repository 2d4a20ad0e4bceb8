"""The Dagster code locations load for both profiles, with the resources every asset and job relies on."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
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
STREAM_RESOURCES = {"kinesis", "kafka", "lake", "leases", "opensearch", "cloudwatch"}


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


def test_stream_location_holds_the_workers_and_only_their_resources(monkeypatch):
    monkeypatch.delenv("ETL_PROFILE", raising=False)
    import definitions
    import stream_definitions

    defs = importlib.reload(stream_definitions).defs
    assert set(defs.resources) == STREAM_RESOURCES
    assert defs.resolve_job_def("kinesis_microbatch_job").executor_def.name == "in_process"
    assert defs.resolve_sensor_def("kinesis_microbatch_sensor").job_name == "kinesis_microbatch_job"
    # each location owns its definitions once: the main one has neither the worker job nor its sensor
    main = importlib.reload(definitions).defs
    assert not any(sensor.name == "kinesis_microbatch_sensor" for sensor in main.sensors or [])
    assert not any(getattr(job, "name", None) == "kinesis_microbatch_job" for job in main.jobs or [])


def test_stream_location_does_not_import_dbt():
    """Every shard worker is a process importing its location: dbt (most of the main location's
    import time) must stay out of it."""
    heavy = ("dbt", "dagster_dbt", "assets.dbt", "assets.warehouse", "assets.search", "resources.dbt")
    code = f"import sys, stream_definitions; print([m for m in {heavy!r} if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", f"the stream location imports {result.stdout.strip()}"


def test_build_resources_refuses_an_unknown_name():
    from resources import build_resources

    with pytest.raises(ValueError, match="unknown resources: nope"):
        build_resources(only=["kinesis", "nope"])


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


@pytest.mark.parametrize("location", ["definitions", "stream_definitions"])
def test_a_malformed_pipelines_file_fails_loading_naming_the_field(tmp_path, location):
    bad = tmp_path / "pipelines.yaml"
    bad.write_text(
        "pipelines:\n  plant:\n    stream: {name: plant}\n    contract:\n"
        "      fields: {device: {type: string, required: true}, ts: {type: timestamp, required: true}}\n"
        "      keys: [device]\n      value: reading\n      time: ts\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", f"import {location}"],
        capture_output=True,
        text=True,
        env={"ETL_PIPELINES_FILE": str(bad), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert result.returncode != 0
    assert f"{bad}: pipelines.plant.contract.value: 'reading' is not a declared field" in result.stderr


def test_every_pipeline_has_its_assets_group_worker_and_supervisor(tmp_path, monkeypatch):
    """The shipped file's two pipelines: the seed's assets under its key prefix and in its own group,
    with their checks, its worker job and supervisor in the stream location."""
    from dagster import AssetKey

    import definitions
    import stream_definitions

    main = importlib.reload(definitions).defs
    graph = main.resolve_asset_graph()
    seed = {k.to_user_string() for k in graph.get_all_asset_keys() if k.path[0] == "seed"}
    assert seed == {
        f"seed/{name}"
        for name in (
            "kinesis_stream",
            "raw_events",
            "processed_events",
            "warehouse_events",
            "warehouse_anomalies",
            "search_index",
        )
    }
    assert {graph.get(AssetKey(["seed", n])).group_name for n in ("raw_events", "search_index")} == {"seed"}
    checks = {str(c.name) for c in graph.asset_check_keys if c.asset_key.path[0] == "seed"}
    assert checks == {
        "processed_matches_raw",
        "processed_schema_and_keys",
        "warehouse_events_match_processed",
        "warehouse_anomalies_match_processed",
        "search_index_matches_lake",
    }
    stream = importlib.reload(stream_definitions).defs
    assert stream.resolve_sensor_def("seed_kinesis_microbatch_sensor").job_name == "seed_kinesis_microbatch_job"
