"""The Dagster code location: assets, checks, sensors, schedules and resources for one profile."""

from __future__ import annotations

from dagster import Definitions

from assets import all_assets, all_checks
from etl_platform.config import load_settings
from resources import build_resources
from sensors import all_schedules, all_sensors, jobs

settings = load_settings()  # fails here, at load, with the name of any bad setting

defs = Definitions(
    assets=all_assets,
    asset_checks=all_checks,
    jobs=jobs,
    sensors=all_sensors,
    schedules=all_schedules,
    resources=build_resources(settings),
)
