"""deploy/dagster.yaml against Dagster's own schemas: the instance schema (top-level keys, storage, run
retries, monitoring) and each configured class's schema (QueuedRunCoordinator, EcsRunLauncher,
S3ComputeLogManager), with env vars resolved from dummy values. A misspelled key anywhere fails."""

from __future__ import annotations

import copy
import importlib
import re
from pathlib import Path

import pytest
import yaml
from dagster._config import process_config, resolve_to_config_type
from dagster._core.errors import DagsterInvalidConfigError
from dagster._core.instance.config import dagster_instance_config, dagster_instance_config_schema
from dagster._serdes.config_class import ConfigurableClassData

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "dagster.yaml"
CLASS_SECTIONS = ("run_launcher", "run_coordinator", "compute_logs")
NUMERIC_ENV = {"DAGSTER_PG_PORT": "5432", "DAGSTER_MAX_CONCURRENT_RUNS": "40"}


def env_vars(node) -> set[str]:
    """Every {env: NAME} in the document."""
    found = set()
    if isinstance(node, dict):
        if set(node) == {"env"}:
            return {node["env"]}
        for value in node.values():
            found |= env_vars(value)
    elif isinstance(node, list):
        for value in node:
            found |= env_vars(value)
    return found


@pytest.fixture
def raw() -> dict:
    return yaml.safe_load(DEPLOY.read_text())


@pytest.fixture
def dummy_env(monkeypatch, raw):
    for name in env_vars(raw):
        monkeypatch.setenv(name, NUMERIC_ENV.get(name, f"dummy-{name.lower()}"))


def validate(config: dict, tmp_path: Path) -> dict:
    """Validate like DagsterInstance does at start-up, without connecting to anything."""
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(config))
    dagster_instance_config(str(tmp_path))  # instance schema, as written (env refs unresolved)
    result = process_config(resolve_to_config_type(dagster_instance_config_schema()), config)
    if not result.success:  # the same schema with env vars resolved
        raise DagsterInvalidConfigError("instance config", result.errors, config)
    processed = {}
    for section in CLASS_SECTIONS:
        entry = config[section]
        # The same module-name normalisation (dagster.core -> dagster._core) and lookup as rehydrate().
        data = ConfigurableClassData(entry["module"], entry["class"], yaml.safe_dump(entry.get("config") or {}))
        cls = getattr(importlib.import_module(data.module_name), data.class_name)
        outcome = process_config(resolve_to_config_type(cls.config_type()), entry.get("config") or {})
        if not outcome.success:
            raise DagsterInvalidConfigError(f"{section} ({entry['class']}) config", outcome.errors, entry)
        processed[section] = outcome.value
    # EcsRunLauncher's run_resources is Permissive in its schema; the launcher only reads these keys.
    extra = set(processed["run_launcher"].get("run_resources") or {}) - {"cpu", "memory", "ephemeral_storage"}
    if extra:
        raise DagsterInvalidConfigError(f"run_launcher.config.run_resources: unknown keys {sorted(extra)}", [], config)
    return processed


def test_deploy_config_is_valid(raw, dummy_env, tmp_path):
    processed = validate(raw, tmp_path)
    launcher, coordinator = processed["run_launcher"], processed["run_coordinator"]
    assert raw["run_launcher"]["class"] == "EcsRunLauncher"
    assert launcher["task_definition"] == {"env": "DAGSTER_RUN_TASK_DEFINITION"}  # the launcher resolves it
    assert coordinator["max_concurrent_runs"] == 40
    shard_limit = next(t for t in coordinator["tag_concurrency_limits"] if t["key"] == "etl/shard")
    assert shard_limit == {
        "key": "etl/shard",
        "value": {"applyLimitPerUniqueValue": True},
        "limit": 2,
    }  # owner + successor
    assert raw["run_retries"]["enabled"] is True and raw["run_retries"]["max_retries"] == 3
    assert set(raw["storage"]) == {"postgres"}


def test_sensor_tags_match_the_queue_limits(raw):
    """The tags the code puts on runs are the ones the queue limits."""
    from sensors.kinesis import SHARD_TAG
    from sensors.scaling_schedule import SCALER_TAG

    keys = {t["key"] for t in raw["run_coordinator"]["config"]["tag_concurrency_limits"]}
    assert {SHARD_TAG, SCALER_TAG} <= keys


@pytest.mark.parametrize(
    "path,typo",
    [
        (("run_retries",), "run_retrys"),  # top-level key
        (("run_retries", "max_retries"), "max_retry"),
        (("storage", "postgres", "postgres_db", "hostname"), "hostnme"),
        (("run_coordinator", "config", "tag_concurrency_limits"), "tag_concurrency_limit"),
        (("run_launcher", "config", "container_name"), "container_nme"),
        (("run_launcher", "config", "run_resources", "memory"), "mem"),
        (("compute_logs", "config", "prefix"), "prefx"),
        (("run_monitoring", "start_timeout_seconds"), "start_timeout_secs"),
    ],
)
def test_a_misspelled_key_fails(raw, dummy_env, tmp_path, path, typo):
    config = copy.deepcopy(raw)
    parent = config
    for key in path[:-1]:
        parent = parent[key]
    parent[typo] = parent.pop(path[-1])
    with pytest.raises(DagsterInvalidConfigError):
        validate(config, tmp_path)


def test_a_missing_env_var_fails(raw, dummy_env, monkeypatch, tmp_path):
    monkeypatch.delenv("DAGSTER_PG_HOST")
    with pytest.raises(DagsterInvalidConfigError, match="DAGSTER_PG_HOST"):
        validate(raw, tmp_path)


def test_docs_list_every_env_var(raw):
    """docs/deploy.md names every variable the instance reads and every ETL_* variable config.py reads."""
    docs = (REPO / "docs" / "deploy.md").read_text()
    source = (REPO / "etl_platform" / "config.py").read_text()
    read_by_config = set(re.findall(r"\"((?:ETL|AWS)_[A-Z_]+)\"", source))
    forwarded = set(raw["run_launcher"]["config"]["env_vars"])
    missing = sorted(v for v in env_vars(raw) | read_by_config | forwarded if f"`{v}`" not in docs)
    assert not missing, f"docs/deploy.md does not document {missing}"
