"""The stream workers' code location: the shard worker job and the sensor that supervises it.

Kept apart from the main location (`definitions.py`) because the supervisor starts a run per worker
and every run is a fresh process that imports its code location: this one imports neither dbt nor
the warehouse and search assets. The workers still report materializations of `raw_events` and
`processed_events` (assets of the main location): asset events are keyed by asset, not by location,
so the warehouse automation follows them as before.
"""

from __future__ import annotations

from dagster import Definitions

from etl_platform.config import load_settings
from resources import build_resources
from sensors.kinesis import kinesis_microbatch_job, kinesis_microbatch_sensor

STREAM_RESOURCES = ("kinesis", "lake", "leases", "opensearch", "cloudwatch")

settings = load_settings()  # fails here, at load, with the name of any bad setting

defs = Definitions(
    jobs=[kinesis_microbatch_job],
    sensors=[kinesis_microbatch_sensor],
    resources=build_resources(settings, only=STREAM_RESOURCES),
)
