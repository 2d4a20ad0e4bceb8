"""Data and storage: the platform's KMS key, every pipeline's stream, the lake bucket, the lease table.

- The key: `config/lake.yaml` kms.alias, rotation on; it encrypts streams, the lake, the lease table,
  the alert topic, the Dagster database, Redshift and OpenSearch (ETL_KMS_KEY_ARN).
- Kinesis pipelines: one stream each, with the pipeline's shard count (or on demand), retention and
  encryption (the pipeline's, else lake.yaml's stream section).
- Kafka pipelines: one MSK Serverless cluster with IAM auth in the private subnets; its bootstrap
  brokers (ETL_KAFKA_BOOTSTRAP) come from GetBootstrapBrokers, which CloudFormation does not expose.
- The lake bucket: lake.yaml's encryption (SSE-KMS with a bucket key), public access block, TLS-only
  policy and lifecycle rules, the rules being `etl_platform.ops.security.lifecycle_rules` over every
  pipeline's lake root (the bootstrap path applies the same list).
- The lease table: exactly the CreateTable request of `etl_platform.stream.leases.table_definition`,
  plus point-in-time recovery, KMS and deletion protection.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aws_cdk import CfnResource, Duration, RemovalPolicy, Stack
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_kinesis as kinesis
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from aws_cdk import aws_msk as msk
from aws_cdk import aws_s3 as s3
from aws_cdk import custom_resources as cr
from constructs import Construct

from etl_platform.ops.security import lifecycle_rules
from etl_platform_cdk.cfn import TABLE_TYPES, l1_kwargs
from etl_platform_cdk.settings import StackSettings

# The construct id of AwsCustomResource's singleton provider function (fixed by aws-cdk-lib).
PROVIDER_ID = "AWS679f53fac002430cb0da5b7982bd2287"
_RULE_KEYS = {"ID", "Filter", "Status", "Transitions", "Expiration", "AbortIncompleteMultipartUpload"}


def bucket_lifecycle_rule(rule: Mapping[str, Any]) -> s3.LifecycleRule:
    """One rule of `lifecycle_rules` (S3's PutBucketLifecycleConfiguration shape) as the L2's rule."""
    unknown = set(rule) - _RULE_KEYS
    if unknown:  # a new kind of rule must be converted here, not dropped
        raise ValueError(f"lifecycle rule {rule.get('ID')}: no conversion for {sorted(unknown)}")
    prefix = rule.get("Filter", {}).get("Prefix") or None
    expiration = rule.get("Expiration", {}).get("Days")
    abort = rule.get("AbortIncompleteMultipartUpload", {}).get("DaysAfterInitiation")
    return s3.LifecycleRule(
        id=rule["ID"],
        enabled=rule["Status"] == "Enabled",
        prefix=prefix,
        transitions=[
            s3.Transition(storage_class=s3.StorageClass(t["StorageClass"]), transition_after=Duration.days(t["Days"]))
            for t in rule.get("Transitions", [])
        ]
        or None,
        expiration=Duration.days(expiration) if expiration else None,
        abort_incomplete_multipart_upload_after=Duration.days(abort) if abort else None,
    )


class Storage(Construct):
    """The KMS key, the streams (and the MSK cluster), the lake bucket and the lease table."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        settings: StackSettings,
        vpc: ec2.IVpc,
        private: ec2.SubnetSelection,
        msk_group: ec2.ISecurityGroup | None,
        custom_resource_logs: logs.ILogGroup,
    ) -> None:
        super().__init__(scope, construct_id)
        security = settings.security
        self.key = kms.Key(
            self,
            "Key",
            alias=security.kms_alias,
            description=f"{settings.prefix}: streams, lake, lease table, alerts, warehouse, search",
            enable_key_rotation=True,
            removal_policy=RemovalPolicy.RETAIN,
        )

        self.streams: dict[str, kinesis.Stream] = {}
        on_demand = settings.on_demand_streams
        for pipeline in settings.kinesis_pipelines:
            encrypted = settings.stream_encryption(pipeline) == "KMS"
            self.streams[pipeline.name] = kinesis.Stream(
                self,
                f"Stream-{pipeline.name}",
                stream_name=pipeline.stream.name,
                stream_mode=kinesis.StreamMode.ON_DEMAND if on_demand else kinesis.StreamMode.PROVISIONED,
                shard_count=None if on_demand else pipeline.stream.shards,
                retention_period=Duration.hours(settings.stream_retention_hours(pipeline)),
                encryption=kinesis.StreamEncryption.KMS if encrypted else kinesis.StreamEncryption.UNENCRYPTED,
                encryption_key=self.key if encrypted else None,
                removal_policy=RemovalPolicy.RETAIN,
            )

        self.kafka_cluster: msk.CfnServerlessCluster | None = None
        self.kafka_bootstrap: str | None = None
        if settings.kafka_pipelines:
            if msk_group is None:
                raise ValueError("Kafka pipelines need the MSK security group")
            self.kafka_cluster_name = settings.kafka_cluster_name
            self.kafka_cluster = msk.CfnServerlessCluster(
                self,
                "Kafka",
                cluster_name=self.kafka_cluster_name,
                client_authentication=msk.CfnServerlessCluster.ClientAuthenticationProperty(
                    sasl=msk.CfnServerlessCluster.SaslProperty(iam=msk.CfnServerlessCluster.IamProperty(enabled=True))
                ),
                vpc_configs=[
                    msk.CfnServerlessCluster.VpcConfigProperty(
                        subnet_ids=vpc.select_subnets(subnet_type=private.subnet_type, one_per_az=True).subnet_ids,
                        security_groups=[msk_group.security_group_id],
                    )
                ],
            )
            self.kafka_cluster.apply_removal_policy(RemovalPolicy.RETAIN)
            call = cr.AwsSdkCall(
                service="Kafka",
                action="GetBootstrapBrokers",
                parameters={"ClusterArn": self.kafka_cluster.attr_arn},
                physical_resource_id=cr.PhysicalResourceId.of(f"{self.kafka_cluster_name}-bootstrap"),
                output_paths=["BootstrapBrokerStringSaslIam"],
            )
            brokers = cr.AwsCustomResource(
                self,
                "KafkaBootstrapBrokers",
                on_create=call,
                on_update=call,
                policy=cr.AwsCustomResourcePolicy.from_sdk_calls(resources=[self.kafka_cluster.attr_arn]),
                log_group=custom_resource_logs,
                install_latest_aws_sdk=False,  # the runtime's SDK: no download at deploy time
            )
            self.kafka_bootstrap = brokers.get_response_field("BootstrapBrokerStringSaslIam")
            # The provider function's only DependsOn is its role, which its `Role` GetAtt already orders
            # (cfn-lint W3005).
            provider = Stack.of(self).node.try_find_child(PROVIDER_ID)
            if provider is not None and isinstance(provider.node.default_child, CfnResource):
                provider.node.default_child.add_deletion_override("DependsOn")

        self.lake_rules = lifecycle_rules(security, settings.lake_roots)
        kms_bucket = security.bucket_encryption == "aws:kms"
        self.bucket = s3.Bucket(
            self,
            "Lake",
            encryption=s3.BucketEncryption.KMS if kms_bucket else s3.BucketEncryption.S3_MANAGED,
            encryption_key=self.key if kms_bucket else None,
            bucket_key_enabled=kms_bucket,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL if security.block_public_access else None,
            enforce_ssl=security.deny_insecure_transport,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            versioned=settings.lake_bucket_versioned,
            lifecycle_rules=[bucket_lifecycle_rule(rule) for rule in self.lake_rules],
            removal_policy=RemovalPolicy.RETAIN,
        )

        request = settings.lease_table
        self.lease_table = dynamodb.CfnTable(
            self,
            "LeaseTable",
            **l1_kwargs(request, TABLE_TYPES),
            point_in_time_recovery_specification=dynamodb.CfnTable.PointInTimeRecoverySpecificationProperty(
                point_in_time_recovery_enabled=True
            ),
            sse_specification=dynamodb.CfnTable.SSESpecificationProperty(
                sse_enabled=True, sse_type="KMS", kms_master_key_id=self.key.key_arn
            ),
            deletion_protection_enabled=True,
        )
        self.lease_table.apply_removal_policy(RemovalPolicy.RETAIN)
