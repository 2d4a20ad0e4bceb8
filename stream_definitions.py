"""The stream workers' code location: each pipeline's shard worker job and the sensor that supervises it.

Kept apart from the main location (`definitions.py`) because the supervisor starts a run per worker
and every run is a fresh process that imports its code location: this one imports neither dbt nor
the warehouse and search assets. The workers still report materializations of `raw_events` and
`processed_events` (assets of the main location): asset events are keyed by asset, not by location,
so the warehouse automation follows them as before.
"""

from __future__ import annotations

from dagster import Definitions

from etl_platform.config import load_settings
from etl_platform.ops.logs import configure_logging
from resources import build_resources, deployment_pipelines
from sensors.kinesis import stream_definitions

STREAM_RESOURCES = ("kinesis", "kafka", "lake", "leases", "opensearch", "cloudwatch")

settings = load_settings()  # fails here, at load, with the name of any bad setting
configure_logging(settings)  # the platform's own loggers: JSON lines in AWS (CloudWatch Logs), text locally

jobs, sensors = stream_definitions(deployment_pipelines())  # a worker job and its supervisor per pipeline

defs = Definitions(
    jobs=jobs,
    sensors=sensors,
    resources=build_resources(settings, only=STREAM_RESOURCES),
)
