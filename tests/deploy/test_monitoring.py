"""Monitoring: the alarms are config/alarms.yaml x every pipeline's stream exactly as
`alarm_definitions` defines them, notifying the KMS-encrypted alert topic; every log group has a
retention; the outputs an operator needs exist. Also the boto3 -> L1 conversion itself."""

from __future__ import annotations

import pytest

from etl_platform.ops.alarms import alarm_definitions, load_alarms
from etl_platform.ops.metrics import native_metrics_for
from tests.deploy.cfn_template import REPO, Synthesized, walk

ALARMS = load_alarms(REPO / "config" / "alarms.yaml")


def numeric(value):
    """JSON numbers compare by value (CloudFormation renders 1.0 as 1)."""
    if isinstance(value, dict):
        return {k: numeric(v) for k, v in value.items()}
    if isinstance(value, list):
        return [numeric(v) for v in value]
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


def test_alarms_are_the_alarm_file_times_every_pipeline(synthesized: Synthesized):
    s = synthesized
    topic_id, topic = s.one("AWS::SNS::Topic")
    assert topic["Properties"]["KmsMasterKeyId"] == {"Fn::GetAtt": [s.one("AWS::KMS::Key")[0], "Arn"]}
    found = {}
    for alarm in s.of_type("AWS::CloudWatch::Alarm").values():
        props = dict(alarm["Properties"])
        assert props.pop("ActionsEnabled") is True
        assert props.pop("AlarmActions") == props.pop("OKActions") == [{"Ref": topic_id}]
        found[props["AlarmName"]] = numeric(props)
    expected = {}
    natives = set()
    for pipeline in s.settings.pipelines:
        native = native_metrics_for(s.settings.settings, pipeline.stream.kind)
        natives.add((pipeline.stream.kind, native))
        for request in alarm_definitions(ALARMS, pipeline.stream.name, native):
            expected[request["AlarmName"]] = numeric(request)
    assert natives == {("kinesis", True), ("kafka", False)}  # Kinesis alarms read AWS/Kinesis
    assert len(expected) == len(ALARMS) * len(s.settings.pipelines)
    assert found == expected
    namespaces = {
        node["Namespace"] for node in walk(list(found.values())) if isinstance(node, dict) and "Namespace" in node
    }
    assert namespaces == {"AWS/Kinesis", "ETLPlatform"}
    # CloudWatch may use the key to publish to the encrypted topic.
    _, key = s.one("AWS::KMS::Key")
    services = [st["Principal"].get("Service") for st in key["Properties"]["KeyPolicy"]["Statement"]]
    assert "cloudwatch.amazonaws.com" in services


def test_every_log_group_has_the_retention(synthesized: Synthesized):
    s = synthesized
    groups = s.of_type("AWS::Logs::LogGroup")
    assert len(groups) >= 10
    for logical_id, group in groups.items():
        assert group["Properties"]["RetentionInDays"] == s.settings.log_retention_days, logical_id
    # Every log group the stack writes to is one of them: flow logs, containers, OpenSearch, Redshift,
    # RDS (the last two by name: those services pick it), the custom resource's function.
    referenced = set()
    for node in walk(s.resources):
        if isinstance(node, dict) and ("Ref" in node or "Fn::GetAtt" in node):
            referenced.add(node["Ref"] if "Ref" in node else node["Fn::GetAtt"][0])
    names = {g["Properties"]["LogGroupName"] for g in groups.values()}
    db_id = s.one("AWS::RDS::DBInstance")[1]["Properties"]["DBInstanceIdentifier"]
    assert f"/aws/rds/instance/{db_id}/postgresql" in names
    unreferenced = {k for k, g in groups.items() if k not in referenced}
    assert all(groups[k]["Properties"]["LogGroupName"].startswith("/aws/") for k in unreferenced)
    _, function = s.one("AWS::Lambda::Function")
    assert function["Properties"]["LoggingConfig"]["LogGroup"]["Ref"] in groups


def test_outputs_for_operators(synthesized: Synthesized):
    outputs = synthesized.template["Outputs"]
    for name in ("WebserverUrl", "LakeBucket", "LeaseTable", "AlertTopicArn", "KafkaBootstrap", "ImageRepositoryUri"):
        assert name in outputs
    assert {"StreamDefault", "StreamSeed", "StreamMskEvents"} <= set(outputs)
    assert {k for k in outputs if k.startswith("Role")} == {
        f"Role{n}Arn"
        for n in ("Consumer", "Orchestrator", "Loader", "Indexer", "Producer", "RedshiftCopy", "EcsTaskExecution")
    }


def test_boto3_shapes_convert_to_l1_properties():
    from aws_cdk import aws_cloudwatch as cloudwatch
    from etl_platform_cdk.cfn import ALARM_TYPES, l1_kwargs, snake_case, to_l1

    assert snake_case("OKActions") == "ok_actions"
    assert snake_case("DatapointsToAlarm") == "datapoints_to_alarm"
    assert snake_case("MetricStat") == "metric_stat"
    metric = to_l1(
        {"Metric": {"Namespace": "N", "MetricName": "M", "Dimensions": []}, "Period": 60, "Stat": "Sum"},
        ALARM_TYPES,
        "MetricStat",
    )
    assert isinstance(metric, cloudwatch.CfnAlarm.MetricStatProperty)
    assert isinstance(metric.metric, cloudwatch.CfnAlarm.MetricProperty) and metric.period == 60
    assert l1_kwargs({"AlarmName": "a", "OKActions": ["x"]}, ALARM_TYPES, drop=("OKActions",)) == {"alarm_name": "a"}
    with pytest.raises(TypeError, match="Unknown"):
        to_l1({"Anything": 1}, ALARM_TYPES, "Unknown")
