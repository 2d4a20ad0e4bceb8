"""Sensors, schedules and the jobs they launch."""

from sensors.alarms import alarm_sensors
from sensors.alerts import alert_sensors
from sensors.automation import warehouse_automation_sensor
from sensors.kinesis import kinesis_microbatch_job, kinesis_microbatch_sensor
from sensors.scaling_schedule import scaling_jobs, scaling_schedules

jobs = [kinesis_microbatch_job, *scaling_jobs]
all_sensors = [kinesis_microbatch_sensor, warehouse_automation_sensor, *alert_sensors, *alarm_sensors]
all_schedules = [*scaling_schedules]

__all__ = ["jobs", "all_sensors", "all_schedules"]
