"""The dbt_redshift project as Dagster assets: staging views and marts downstream of the warehouse.

The manifest comes from dagster-dbt's project preparation (resources/dbt.py, `prepare_dbt_project`):
parsed on every load under `dagster dev`, so an edited model shows up on reload, and wherever no
manifest exists yet, so a clean clone (target/ is git-ignored) loads as is. A deployment image runs
`dagster-dbt project prepare-and-package --file resources/dbt.py` (dbt on PATH) at build time so that
loading never parses.

The dbt sources `warehouse.events` / `warehouse.anomalies` map to the `warehouse_events` /
`warehouse_anomalies` assets, so the models sit downstream of the loads in the lineage graph, and
share their daily partitions: a partition run passes `--vars '{"event_date": "<day>"}'` and the
incremental marts rebuild that day only.
"""

import json
from collections.abc import Iterator, Mapping
from typing import Any

from dagster import AssetExecutionContext, AssetKey, AutomationCondition, BackfillPolicy
from dagster_dbt import DagsterDbtTranslator, DagsterDbtTranslatorSettings, DbtCliResource, dbt_assets

from assets.partitions import daily_partitions
from assets.warehouse import WAREHOUSE_AUTOMATION, WAREHOUSE_KEYS
from resources.dbt import dbt_project, prepare_dbt_project

WAREHOUSE_SOURCE = "warehouse"  # the dbt source whose tables are the warehouse load assets


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


# dbt tests become asset checks; on partitioned models those are partitioned checks, a Dagster 1.13
# preview feature (assets/_dagster_preview.py).
@dbt_assets(
    manifest=prepare_dbt_project(dbt_project),
    project=dbt_project,
    dagster_dbt_translator=WarehouseDbtTranslator(DagsterDbtTranslatorSettings(enable_asset_checks=True)),
    partitions_def=daily_partitions,
    backfill_policy=BackfillPolicy.multi_run(max_partitions_per_run=1),
    name="dbt_redshift_models",
)
def dbt_redshift_models(context: AssetExecutionContext, dbt: DbtCliResource) -> Iterator[Any]:
    """`dbt build` of the selected models and their tests for the run's event_date."""
    yield from dbt.cli(["build", "--vars", partition_vars(context.partition_key)], context=context).stream()


dbt_assets_list = [dbt_redshift_models]
