"""The dbt_redshift project as Dagster assets: staging views and marts downstream of the warehouse.

The manifest is made when this module loads if it is missing or older than any project file
(`dbt parse`, offline, a few seconds), and on every load under `dagster dev`: a clean clone, where
target/ is git-ignored, loads as is. A deployment image can run `dbt parse` at build time so that
loading never parses.

The dbt sources `warehouse.events` / `warehouse.anomalies` map to the `warehouse_events` /
`warehouse_anomalies` assets, so the models sit downstream of the loads in the lineage graph, and
share their daily partitions: a partition run passes `--vars '{"event_date": "<day>"}'` and the
incremental marts rebuild that day only.
"""

import json
import os
import subprocess
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from dagster import AssetExecutionContext, AssetKey, AutomationCondition, BackfillPolicy, PreviewWarning
from dagster_dbt import DagsterDbtTranslator, DagsterDbtTranslatorSettings, DbtCliResource, DbtProject, dbt_assets
from dagster_dbt.dbt_project import using_dagster_dev

from assets.partitions import daily_partitions
from assets.warehouse import WAREHOUSE_AUTOMATION, WAREHOUSE_KEYS
from resources.dbt import DBT_EXECUTABLE, dbt_project

WAREHOUSE_SOURCE = "warehouse"  # the dbt source whose tables are the warehouse load assets


def _manifest_is_stale(project: DbtProject) -> bool:
    manifest = Path(project.manifest_path)
    if not manifest.exists():
        return True
    built = manifest.stat().st_mtime
    skip = {"target", "logs", "dbt_packages"}
    for path in Path(project.project_dir).rglob("*"):
        if path.is_file() and not skip.intersection(path.relative_to(project.project_dir).parts):
            if path.suffix in {".sql", ".yml", ".yaml", ".md", ".csv"} and path.stat().st_mtime > built:
                return True
    return False


def parse_project(project: DbtProject) -> Path:
    """`dbt parse` into a private folder, then move the artifacts into target/ atomically, so a
    concurrent loader never reads a half-written manifest."""
    target = Path(project.project_dir) / project.target_path
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target, prefix=".parse-") as tmp:
        cmd = [DBT_EXECUTABLE, "parse", "--quiet", "--project-dir", os.fspath(project.project_dir),
               "--profiles-dir", os.fspath(project.profiles_dir), "--target-path", tmp]
        if project.target:
            cmd += ["--target", project.target]
        result = subprocess.run(cmd, capture_output=True, text=True, cwd=project.project_dir, timeout=600)
        if result.returncode != 0 or not (Path(tmp) / "manifest.json").exists():
            raise RuntimeError(f"dbt parse failed for {project.project_dir}:\n{result.stdout}\n{result.stderr}")
        for name in ("partial_parse.msgpack", "manifest.json"):  # the manifest last: it is what we wait on
            if (Path(tmp) / name).exists():
                os.replace(Path(tmp) / name, target / name)
    return Path(project.manifest_path)


def prepare_manifest(project: DbtProject = dbt_project) -> Path:
    """The project's manifest, parsed now if missing, older than a project file, or under `dagster dev`."""
    if using_dagster_dev() or _manifest_is_stale(project):
        return parse_project(project)
    return Path(project.manifest_path)


class WarehouseDbtTranslator(DagsterDbtTranslator):
    """Sources become the warehouse load assets; models group as `dbt_<folder>` and follow them."""

    def get_asset_key(self, dbt_resource_props: Mapping[str, Any]) -> AssetKey:
        if dbt_resource_props["resource_type"] == "source" and dbt_resource_props["source_name"] == WAREHOUSE_SOURCE:
            table = dbt_resource_props["name"]
            if table in WAREHOUSE_KEYS:
                return WAREHOUSE_KEYS[table]
        return super().get_asset_key(dbt_resource_props)

    def get_group_name(self, dbt_resource_props: Mapping[str, Any]) -> str | None:
        fqn = dbt_resource_props.get("fqn") or []
        return f"dbt_{fqn[1]}" if len(fqn) > 2 else "dbt"

    def get_automation_condition(self, dbt_resource_props: Mapping[str, Any]) -> AutomationCondition | None:
        # Marts refresh after their day's warehouse load, like the load follows the lake.
        return WAREHOUSE_AUTOMATION


def partition_vars(partition_key: str) -> str:
    """The --vars JSON for one daily partition."""
    return json.dumps({"event_date": partition_key})


def dbt_redshift_models(context: AssetExecutionContext, dbt: DbtCliResource) -> Iterator[Any]:
    """`dbt build` of the selected models and their tests for the run's event_date."""
    yield from dbt.cli(["build", "--vars", partition_vars(context.partition_key)], context=context).stream()


# dbt tests become asset checks; on partitioned models those are partitioned checks, a Dagster 1.13
# preview feature (see assets/warehouse.py).
with warnings.catch_warnings():
    warnings.simplefilter("ignore", PreviewWarning)
    dbt_redshift_models = dbt_assets(
        manifest=prepare_manifest(),
        project=dbt_project,
        dagster_dbt_translator=WarehouseDbtTranslator(DagsterDbtTranslatorSettings(enable_asset_checks=True)),
        partitions_def=daily_partitions,
        backfill_policy=BackfillPolicy.multi_run(max_partitions_per_run=1),
        name="dbt_redshift_models",
    )(dbt_redshift_models)


dbt_assets_list = [dbt_redshift_models]
