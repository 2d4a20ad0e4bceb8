"""The platform's main code location: the lake, warehouse, dbt and search assets with their checks,
the warehouse automation, alarms, alerts and the scaling schedule, for one profile. Every pipeline of
`config/pipelines.yaml` has its lake, warehouse and search assets (another pipeline's in a group and
under a key prefix of its name); dbt models the default pipeline's tables.

The shard workers and their supervisor live in their own lean location, `stream_definitions.py`:
every worker is a fresh process that imports its location, and this one imports dbt.
"""

from __future__ import annotations

from dagster import Definitions, in_process_executor, multiprocess_executor

from assets import _dagster_preview  # noqa: F401  (first: it sets the warning filters)
from assets.dbt import dbt_assets_list
from assets.ingestion import lake_assets, lake_assets_for
from assets.lake_checks import lake_checks, lake_checks_for
from assets.search import search_assets, search_assets_for, search_checks
from assets.warehouse import warehouse_assets, warehouse_assets_for, warehouse_checks
from etl_platform.config import load_settings
from etl_platform.ops.logs import configure_logging
from resources import build_resources, deployment_pipelines
from sensors.alarms import alarm_sensors
from sensors.alerts import alert_sensors
from sensors.automation import warehouse_automation_sensor
from sensors.scaling_schedule import scaling_jobs, scaling_schedules

settings = load_settings()  # fails here, at load, with the name of any bad setting
configure_logging(settings)  # the platform's own loggers: JSON lines in AWS (CloudWatch Logs), text locally

# Locally every step of a multiprocess run is a fresh Python process that re-imports this code location
# (5-20 s each on a 2-core laptop), which made a 2-day backfill with its checks take minutes; in AWS a
# run is its own container and its steps may use its cores.
executor = in_process_executor if settings.profile == "local" else multiprocess_executor

all_assets = [*lake_assets, *warehouse_assets, *dbt_assets_list, *search_assets]
all_checks = [*lake_checks, *warehouse_checks, *search_checks]
for pipeline in deployment_pipelines():
    if not pipeline.is_default:
        (loads, load_checks), (indices, index_checks) = warehouse_assets_for(pipeline), search_assets_for(pipeline)
        all_assets += [*lake_assets_for(pipeline), *loads, *indices]
        all_checks += [*lake_checks_for(pipeline), *load_checks, *index_checks]

defs = Definitions(
    assets=all_assets,
    asset_checks=all_checks,
    jobs=scaling_jobs,
    sensors=[warehouse_automation_sensor, *alert_sensors, *alarm_sensors],
    schedules=scaling_schedules,
    resources=build_resources(settings),  # every setting and client the assets, sensors and jobs use
    executor=executor,
)
