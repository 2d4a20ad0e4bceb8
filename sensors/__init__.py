"""Sensors, schedules and the jobs they launch."""

from sensors.alerts import alert_sensors
from sensors.kinesis import kinesis_microbatch_job, kinesis_microbatch_sensor

jobs = [kinesis_microbatch_job]
all_sensors = [kinesis_microbatch_sensor, *alert_sensors]

__all__ = ["jobs", "all_sensors"]
