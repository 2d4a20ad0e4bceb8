"""Declarative automation: loads the warehouse (and builds the dbt marts) when a processed day lands.

Dagster's implicit default automation sensor starts STOPPED; this one runs from the start so the
warehouse follows the lake without anyone switching it on.
"""

from dagster import AssetSelection, AutomationConditionSensorDefinition, DefaultSensorStatus

warehouse_automation_sensor = AutomationConditionSensorDefinition(
    "warehouse_automation_sensor",
    target=AssetSelection.all(),
    default_status=DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Materializes the warehouse tables and dbt marts when their processed partition updates.",
)
