"""The production stack: network, storage, monitoring, IAM, the analytics stores and Dagster, put
together in dependency order, and the outputs an operator needs.

Environment-agnostic (no account or region, no lookups): it synthesizes anywhere, offline, and
deploys to whichever account and region the deploying credentials name.
"""

from __future__ import annotations

from typing import Any

from aws_cdk import Aws, CfnOutput, Duration, Fn, RemovalPolicy, Stack
from aws_cdk import aws_ecr as ecr
from constructs import Construct

from etl_platform_cdk.dagster import DagsterServices
from etl_platform_cdk.iam import PlatformRoles
from etl_platform_cdk.monitoring import Alarms, AlertTopic, LogGroups
from etl_platform_cdk.network import REDSHIFT_PORT, Network
from etl_platform_cdk.settings import StackSettings
from etl_platform_cdk.storage import Storage
from etl_platform_cdk.stores import Search, Warehouse


class EtlPlatformStack(Stack):
    """Everything the platform runs on in AWS (docs/deploy.md, "Production as code")."""

    def __init__(self, scope: Construct, construct_id: str, settings: StackSettings, **kwargs: Any) -> None:
        super().__init__(
            scope,
            construct_id,
            description=f"{settings.prefix}: streaming ETL on Dagster (deploy/cdk)",
            **kwargs,
        )
        self.settings = settings
        s = settings
        logs = LogGroups(self, "Logs", s)
        flow_logs = logs.group("FlowLogs", f"/{s.prefix}/vpc/flow-logs")
        ecs_groups = {"Webserver": "webserver", "Daemon": "daemon", "Run": "run"}
        ecs_groups |= {f"Code-{loc.slug}": f"code-{loc.slug}" for loc in s.code_locations}
        ecs_logs = {key: logs.group(f"Ecs-{key}", s.ecs_log_group(component)) for key, component in ecs_groups.items()}
        db_logs = logs.group("DagsterDb", f"/aws/rds/instance/{s.prefix}-dagster/postgresql")
        custom_resource_logs = logs.group("CustomResources", f"/{s.prefix}/custom-resources")

        self.network = Network(self, "Network", s, flow_logs)
        groups = self.network.groups
        private = self.network.vpc.select_subnets(subnet_type=self.network.private.subnet_type)
        self.storage = Storage(
            self, "Storage", s, self.network.vpc, self.network.private, groups.msk, custom_resource_logs
        )
        key, bucket = self.storage.key, self.storage.bucket
        self.alerts = AlertTopic(self, "Alerts", s, key)
        topic = self.alerts.topic
        self.repository = ecr.Repository(
            self,
            "Repository",
            repository_name=s.repository_name,
            image_scan_on_push=True,
            removal_policy=RemovalPolicy.RETAIN,
            lifecycle_rules=[
                ecr.LifecycleRule(
                    description="untagged layers of replaced images",
                    tag_status=ecr.TagStatus.UNTAGGED,
                    max_image_age=Duration.days(14),
                )
            ],
        )

        cluster = self.storage.kafka_cluster
        self.roles = PlatformRoles(
            self,
            "Roles",
            s,
            values={
                "LakeBucket": bucket.bucket_name,
                "KmsKeyId": key.key_id,
                "AlertTopicName": topic.topic_name,
                "OpenSearchDomain": s.opensearch_domain,
                "EcsCluster": s.cluster_name,
                "EcsTaskDefinitionFamily": s.run_family,
                "EcrRepository": s.repository_name,
                "MskCluster": s.kafka_cluster_name,
                # The cluster ARN's last part (arn:...:cluster/<name>/<uuid>); unused without Kafka.
                "MskClusterUuid": Fn.select(2, Fn.split("/", cluster.attr_arn)) if cluster else "none",
            },
            run_log_group=s.ecs_log_group("run"),
            ecs_log_groups={key_: s.ecs_log_group(component) for key_, component in ecs_groups.items()},
        )
        roles = self.roles.set

        self.warehouse = Warehouse(
            self,
            "Warehouse",
            s,
            private,
            groups.redshift,
            key,
            roles.roles["redshift-copy"].role_arn,
            logs,
        )
        self.search = Search(self, "Search", s, private, groups.opensearch, key, logs)

        environment = {
            "ETL_PROFILE": "aws",
            "AWS_REGION": Aws.REGION,
            "ETL_STREAM_NAME": s.stream_name,
            "ETL_LAKE_BUCKET": bucket.bucket_name,
            "ETL_LEASE_TABLE": s.lease_table_name,
            "ETL_KMS_KEY_ARN": key.key_arn,
            "ETL_REDSHIFT_HOST": self.warehouse.host,
            "ETL_REDSHIFT_PORT": str(REDSHIFT_PORT),
            "ETL_REDSHIFT_DATABASE": s.redshift_database,
            "ETL_REDSHIFT_USER": s.redshift_user,
            "ETL_REDSHIFT_IAM_ROLE": roles.roles["redshift-copy"].role_arn,
            "ETL_REDSHIFT_PASSWORD_SECRET_ARN": self.warehouse.secret.secret_arn,
            "ETL_OPENSEARCH_URL": self.search.url,
            "ETL_OPENSEARCH_USERNAME": s.opensearch_user,
            "ETL_OPENSEARCH_PASSWORD_SECRET_ARN": self.search.secret.secret_arn,
            "ETL_ALERT_SNS_TOPIC_ARN": topic.topic_arn,
            "ETL_PIPELINES_FILE": s.repo_path_in_image(s.pipelines_file),
            "ETL_LAKE_CONFIG": s.repo_path_in_image(s.lake_config_file),
            "ETL_ALARMS_FILE": s.repo_path_in_image(s.alarms_file),
            "ETL_LOG_FORMAT": "json",  # one JSON object per line: CloudWatch Logs Insights reads the fields
            "DAGSTER_HOME": s.dagster_home,
            "DAGSTER_MAX_CONCURRENT_RUNS": str(s.max_concurrent_runs),
            "DAGSTER_COMPUTE_LOG_BUCKET": bucket.bucket_name,
        }
        if self.storage.kafka_bootstrap:
            environment["ETL_KAFKA_BOOTSTRAP"] = self.storage.kafka_bootstrap
        self.dagster = DagsterServices(
            self,
            "Dagster",
            s,
            self.network,
            key,
            roles,
            log_groups={**ecs_logs, "DagsterDb": db_logs},
            environment=environment,
            secrets={"ETL_REDSHIFT_PASSWORD": self.warehouse.secret, "ETL_OPENSEARCH_PASSWORD": self.search.secret},
            repository=self.repository,
        )
        self.alarms = Alarms(self, "Alarms", s, topic)
        self._outputs()

    def _outputs(self) -> None:
        s, roles = self.settings, self.roles.set.roles
        out = {
            "WebserverUrl": (self.dagster.url, "the Dagster UI (internal ALB; ETL_DAGSTER_URL)"),
            "LakeBucket": (self.storage.bucket.bucket_name, "ETL_LAKE_BUCKET"),
            "LeaseTable": (self.storage.lease_table.ref, "ETL_LEASE_TABLE"),
            "AlertTopicArn": (self.alerts.topic.topic_arn, "ETL_ALERT_SNS_TOPIC_ARN"),
            "KmsKeyArn": (self.storage.key.key_arn, "ETL_KMS_KEY_ARN"),
            "ImageRepositoryUri": (self.repository.repository_uri, f"push the image here, tag {s.image_tag}"),
            "ClusterName": (self.dagster.cluster.cluster_name, "ECS cluster"),
            "RunTaskDefinitionFamily": (s.run_family, "DAGSTER_RUN_TASK_DEFINITION"),
            "RedshiftEndpoint": (self.warehouse.host, "ETL_REDSHIFT_HOST"),
            "OpenSearchUrl": (self.search.url, "ETL_OPENSEARCH_URL"),
            "DagsterDbEndpoint": (self.dagster.database.db_instance_endpoint_address, "DAGSTER_PG_HOST"),
        }
        for pipeline in s.pipelines:
            stream = self.storage.streams.get(pipeline.name)
            value = stream.stream_name if stream else pipeline.stream.name
            out[f"Stream{_pascal(pipeline.name)}"] = (value, f"pipeline {pipeline.name} ({pipeline.stream.kind})")
        if self.storage.kafka_cluster is not None and self.storage.kafka_bootstrap:
            out["KafkaClusterArn"] = (self.storage.kafka_cluster.attr_arn, "MSK Serverless cluster")
            out["KafkaBootstrap"] = (self.storage.kafka_bootstrap, "ETL_KAFKA_BOOTSTRAP")
        for name, role in roles.items():
            out[f"Role{_pascal(name)}Arn"] = (role.role_arn, f"security/iam/{name}.json")
        for output_id, (value, description) in out.items():
            CfnOutput(self, output_id, value=value, description=description)


def _pascal(name: str) -> str:
    return "".join(part.capitalize() for part in name.replace("_", "-").split("-"))
