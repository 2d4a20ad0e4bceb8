"""The Dagster code location: assets, checks, sensors, schedules and resources for one profile."""

from __future__ import annotations

from dagster import Definitions, in_process_executor, multiprocess_executor

from assets import all_assets, all_checks  # first: assets/_dagster_preview.py sets the warning filters
from etl_platform.config import load_settings
from resources import build_resources
from sensors import all_schedules, all_sensors, jobs

settings = load_settings()  # fails here, at load, with the name of any bad setting

# Locally every step of a multiprocess run is a fresh Python process that re-imports this code location
# (5-20 s each on a 2-core laptop), which made a 2-day backfill with its checks take minutes; in AWS a
# run is its own container and its steps may use its cores.
executor = in_process_executor if settings.profile == "local" else multiprocess_executor

defs = Definitions(
    assets=all_assets,
    asset_checks=all_checks,
    jobs=jobs,
    sensors=all_sensors,
    schedules=all_schedules,
    resources=build_resources(settings),  # every setting and client the assets, sensors and jobs use
    executor=executor,
)
