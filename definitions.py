"""The Dagster code location: assets, checks, sensors, schedules and resources for one profile."""

from __future__ import annotations

from dagster import Definitions

from etl_platform.config import load_settings
from resources import build_resources

settings = load_settings()  # fails here, at load, with the name of any bad setting

defs = Definitions(resources=build_resources(settings))
