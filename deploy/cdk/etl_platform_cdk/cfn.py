"""boto3 request shapes to CloudFormation L1 properties, generically.

The platform's code describes some resources as the keyword arguments of a boto3 call
(`etl_platform.ops.alarms.alarm_definitions` -> `put_metric_alarm`, `leases.table_definition` ->
`create_table`). CloudFormation's properties for the same resources use the same PascalCase names
and nesting, so the stack converts those dicts instead of restating them: keys become the L1
constructor's snake_case arguments, and nested dicts become the L1's property classes (named per key).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from aws_cdk import CfnTag
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_dynamodb as dynamodb

_WORD_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def snake_case(name: str) -> str:
    """`DatapointsToAlarm` -> `datapoints_to_alarm`, `OKActions` -> `ok_actions`, `MetricStat` -> `metric_stat`."""
    return _WORD_BOUNDARY.sub("_", name).lower()


# Which L1 property class a nested value becomes, by its key: one table per resource type.
ALARM_TYPES: Mapping[str, type] = {
    "Dimensions": cloudwatch.CfnAlarm.DimensionProperty,
    "Metrics": cloudwatch.CfnAlarm.MetricDataQueryProperty,
    "MetricStat": cloudwatch.CfnAlarm.MetricStatProperty,
    "Metric": cloudwatch.CfnAlarm.MetricProperty,
    "Tags": CfnTag,
}
TABLE_TYPES: Mapping[str, type] = {
    "KeySchema": dynamodb.CfnTable.KeySchemaProperty,
    "AttributeDefinitions": dynamodb.CfnTable.AttributeDefinitionProperty,
    "ProvisionedThroughput": dynamodb.CfnTable.ProvisionedThroughputProperty,
    "Tags": CfnTag,
}


def to_l1(value: Any, types: Mapping[str, type], key: str | None = None) -> Any:
    """`value` (a boto3 request value) as an L1 argument: dicts become the property class `types[key]`
    names (an error if none is known: a shape this table has not seen must not pass silently), lists
    are converted item by item, scalars stay."""
    if isinstance(value, Mapping):
        if key is None or key not in types:
            raise TypeError(f"no L1 property type for the nested value under {key!r}; add it to the table")
        return types[key](**{snake_case(k): to_l1(v, types, k) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return [to_l1(item, types, key) for item in value]
    return value


def l1_kwargs(request: Mapping[str, Any], types: Mapping[str, type], drop: tuple[str, ...] = ()) -> dict[str, Any]:
    """The L1 constructor's keyword arguments for a boto3 request (less the keys in `drop`)."""
    return {snake_case(k): to_l1(v, types, k) for k, v in request.items() if k not in drop}
