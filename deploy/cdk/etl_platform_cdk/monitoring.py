"""Monitoring: log groups (all with retention), the alert SNS topic and the CloudWatch alarms.

The alarms are `config/alarms.yaml` once per pipeline stream, exactly as the platform defines them
(`etl_platform.ops.alarms.alarm_definitions`, the dict `put_metric_alarm` takes), converted to
`AWS::CloudWatch::Alarm` by `cfn.l1_kwargs`, with the topic as ALARM and OK action. Kinesis pipelines'
alarms read what Kinesis measures from AWS/Kinesis, Kafka pipelines' from the platform's namespace
(`StackSettings.native_metrics`, the same rule the code applies).
"""

from __future__ import annotations

from aws_cdk import RemovalPolicy
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sns as sns
from constructs import Construct

from etl_platform.ops.alarms import alarm_definitions
from etl_platform_cdk.cfn import ALARM_TYPES, l1_kwargs
from etl_platform_cdk.settings import StackSettings

ACTION_KEYS = ("ActionsEnabled", "AlarmActions", "OKActions", "InsufficientDataActions")


class LogGroups(Construct):
    """Every log group the stack writes to, each with the configured retention."""

    def __init__(self, scope: Construct, construct_id: str, settings: StackSettings) -> None:
        super().__init__(scope, construct_id)
        self.settings = settings
        self.groups: dict[str, logs.LogGroup] = {}

    def group(self, construct_id: str, name: str) -> logs.LogGroup:
        """A log group called `name` with the stack's retention (kept when the stack is deleted)."""
        group = logs.LogGroup(self, construct_id, log_group_name=name, removal_policy=RemovalPolicy.RETAIN)
        cfn = group.node.default_child
        assert isinstance(cfn, logs.CfnLogGroup)
        # Set on the L1: the L2 takes an enum of named periods; the context gives days.
        cfn.retention_in_days = self.settings.log_retention_days
        self.groups[construct_id] = group
        return group


class AlertTopic(Construct):
    """The SNS topic alerts and alarms go to (ETL_ALERT_SNS_TOPIC_ARN), encrypted with the platform key."""

    def __init__(self, scope: Construct, construct_id: str, settings: StackSettings, key: kms.IKey) -> None:
        super().__init__(scope, construct_id)
        self.topic = sns.Topic(self, "Topic", topic_name=f"{settings.prefix}-alerts", master_key=key, enforce_ssl=True)
        # CloudWatch publishes alarm notifications to the encrypted topic: it needs the key for that.
        key.add_to_resource_policy(
            iam.PolicyStatement(
                sid="CloudWatchAlarmsPublishToTheEncryptedAlertTopic",
                principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
                actions=["kms:Decrypt", "kms:GenerateDataKey*"],
                resources=["*"],
            )
        )


class Alarms(Construct):
    """config/alarms.yaml x every pipeline's stream, notifying the alert topic on ALARM and OK."""

    def __init__(self, scope: Construct, construct_id: str, settings: StackSettings, topic: sns.ITopic) -> None:
        super().__init__(scope, construct_id)
        self.alarms: dict[str, cloudwatch.CfnAlarm] = {}
        for pipeline in settings.pipelines:
            native = settings.native_metrics(pipeline)
            for request in alarm_definitions(list(settings.alarms), pipeline.stream.name, native):
                name = request["AlarmName"]
                self.alarms[name] = cloudwatch.CfnAlarm(
                    self,
                    f"{pipeline.name}-{name}",
                    **l1_kwargs(request, ALARM_TYPES, drop=ACTION_KEYS),
                    actions_enabled=True,
                    alarm_actions=[topic.topic_arn],
                    ok_actions=[topic.topic_arn],
                )
