"""The analytics stores: the Redshift warehouse and the OpenSearch domain, in the private subnets,
and the Secrets Manager secrets holding their passwords.

Redshift is a provisioned RA3 cluster, not Serverless: a Serverless workgroup needs subnets in three
Availability Zones, and this VPC (like any environment-agnostic CDK stack) spans two. The cluster is
KMS-encrypted, not publicly accessible, uses enhanced VPC routing (COPY reads the lake through the S3
gateway endpoint) and has the redshift-copy role attached (ETL_REDSHIFT_IAM_ROLE). Its audit logs go
to CloudWatch Logs groups the stack creates first, so they have a retention.

OpenSearch: a two-node domain with zone awareness over both AZs, encryption at rest (the platform key)
and node to node, HTTPS only with a TLS 1.2 policy, fine-grained access control with an internal
master user (ETL_OPENSEARCH_USERNAME/PASSWORD: the platform authenticates with HTTP basic auth), and
its application, slow and audit logs in CloudWatch Logs.

Secrets are named `<prefix>/...` (security/iam/ecs-task-execution.json lets the ECS agent inject only
those) and use the account's Secrets Manager key, so the execution role needs no KMS grant.
"""

from __future__ import annotations

import json

from aws_cdk import Fn, RemovalPolicy, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from aws_cdk import aws_opensearchservice as opensearch
from aws_cdk import aws_redshift as redshift
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

from etl_platform_cdk.monitoring import LogGroups
from etl_platform_cdk.network import REDSHIFT_PORT
from etl_platform_cdk.settings import StackSettings

# Characters Redshift, RDS and OpenSearch refuse in passwords, or that break a libpq URI.
PASSWORD_EXCLUDE = "\"'\\/@:;?#%&+=`{}[]<>|~^, "
REDSHIFT_LOGS = ("connectionlog", "userlog")
OPENSEARCH_LOGS = ("ES_APPLICATION_LOGS", "SEARCH_SLOW_LOGS", "INDEX_SLOW_LOGS", "AUDIT_LOGS")


def platform_secret(scope: Construct, construct_id: str, name: str, username: str) -> secretsmanager.Secret:
    """A generated password for `username`, as {"username", "password"} JSON, kept with the stack's data."""
    return secretsmanager.Secret(
        scope,
        construct_id,
        secret_name=name,
        description=f"password of {username}",
        generate_secret_string=secretsmanager.SecretStringGenerator(
            secret_string_template=json.dumps({"username": username}),
            generate_string_key="password",
            exclude_characters=PASSWORD_EXCLUDE,
            password_length=32,
            require_each_included_type=True,
        ),
        removal_policy=RemovalPolicy.RETAIN,
    )


class Warehouse(Construct):
    """The Redshift cluster."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        settings: StackSettings,
        subnets: ec2.SelectedSubnets,
        group: ec2.ISecurityGroup,
        key: kms.IKey,
        copy_role_arn: str,
        log_groups: LogGroups,
    ) -> None:
        super().__init__(scope, construct_id)
        self.cluster_id = f"{settings.prefix}-warehouse"
        self.secret = platform_secret(self, "Secret", f"{settings.secret_prefix}/redshift", settings.redshift_user)
        subnet_group = redshift.CfnClusterSubnetGroup(
            self, "Subnets", description=f"{settings.prefix} warehouse", subnet_ids=subnets.subnet_ids
        )
        multi = settings.redshift_nodes > 1
        self.cluster = redshift.CfnCluster(
            self,
            "Cluster",
            cluster_identifier=self.cluster_id,
            cluster_type="multi-node" if multi else "single-node",
            node_type=settings.redshift_node_type,
            number_of_nodes=settings.redshift_nodes if multi else None,
            db_name=settings.redshift_database,
            master_username=settings.redshift_user,
            master_user_password=self.secret.secret_value_from_json("password").unsafe_unwrap(),
            port=REDSHIFT_PORT,
            encrypted=True,
            kms_key_id=key.key_id,
            publicly_accessible=False,
            enhanced_vpc_routing=True,
            availability_zone_relocation=True,
            cluster_subnet_group_name=subnet_group.ref,
            vpc_security_group_ids=[group.security_group_id],
            iam_roles=[copy_role_arn],
            automated_snapshot_retention_period=7,
            logging_properties=redshift.CfnCluster.LoggingPropertiesProperty(
                log_destination_type="cloudwatch", log_exports=list(REDSHIFT_LOGS)
            ),
        )
        self.cluster.apply_removal_policy(RemovalPolicy.SNAPSHOT)
        for log in REDSHIFT_LOGS:
            # Redshift writes to this name; created here first, it gets the stack's retention.
            group_ = log_groups.group(f"Redshift-{log}", f"/aws/redshift/cluster/{self.cluster_id}/{log}")
            self.cluster.node.add_dependency(group_)

    @property
    def host(self) -> str:
        return self.cluster.attr_endpoint_address


class Search(Construct):
    """The OpenSearch domain."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        settings: StackSettings,
        subnets: ec2.SelectedSubnets,
        group: ec2.ISecurityGroup,
        key: kms.IKey,
        log_groups: LogGroups,
    ) -> None:
        super().__init__(scope, construct_id)
        self.domain_name = settings.opensearch_domain
        self.secret = platform_secret(self, "Secret", f"{settings.secret_prefix}/opensearch", settings.opensearch_user)
        groups = {
            log: log_groups.group(f"OpenSearch-{log}", f"/aws/opensearch/{self.domain_name}/{log.lower()}")
            for log in OPENSEARCH_LOGS
        }
        # OpenSearch Service writes to the groups under this resource policy (account-wide, named).
        policy = logs.CfnResourcePolicy(
            self,
            "LogsPolicy",
            policy_name=f"{settings.prefix}-opensearch-logs",
            policy_document=Stack.of(self).to_json_string(
                {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Sid": "OpenSearchPublishesItsLogs",
                            "Effect": "Allow",
                            "Principal": {"Service": "es.amazonaws.com"},
                            "Action": ["logs:PutLogEvents", "logs:CreateLogStream"],
                            "Resource": [g.log_group_arn for g in groups.values()],
                        }
                    ],
                }
            ),
        )
        domain_arn = Fn.sub(
            f"arn:${{AWS::Partition}}:es:${{AWS::Region}}:${{AWS::AccountId}}:domain/{self.domain_name}"
        )
        self.domain = opensearch.CfnDomain(
            self,
            "Domain",
            domain_name=self.domain_name,
            engine_version=settings.opensearch_version,
            cluster_config=opensearch.CfnDomain.ClusterConfigProperty(
                instance_type=settings.opensearch_instance_type,
                instance_count=2,
                zone_awareness_enabled=True,
                zone_awareness_config=opensearch.CfnDomain.ZoneAwarenessConfigProperty(availability_zone_count=2),
            ),
            ebs_options=opensearch.CfnDomain.EBSOptionsProperty(
                ebs_enabled=True, volume_type="gp3", volume_size=settings.opensearch_volume_gb
            ),
            encryption_at_rest_options=opensearch.CfnDomain.EncryptionAtRestOptionsProperty(
                enabled=True, kms_key_id=key.key_id
            ),
            node_to_node_encryption_options=opensearch.CfnDomain.NodeToNodeEncryptionOptionsProperty(enabled=True),
            domain_endpoint_options=opensearch.CfnDomain.DomainEndpointOptionsProperty(
                enforce_https=True, tls_security_policy="Policy-Min-TLS-1-2-PFS-2023-10"
            ),
            advanced_security_options=opensearch.CfnDomain.AdvancedSecurityOptionsInputProperty(
                enabled=True,
                internal_user_database_enabled=True,
                master_user_options=opensearch.CfnDomain.MasterUserOptionsProperty(
                    master_user_name=settings.opensearch_user,
                    master_user_password=self.secret.secret_value_from_json("password").unsafe_unwrap(),
                ),
            ),
            # Fine-grained access control decides per user; the domain policy lets requests reach it
            # (the domain is reachable only inside the VPC, from the security group's members).
            access_policies={
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": {"AWS": "*"},
                        "Action": "es:ESHttp*",
                        "Resource": f"{domain_arn}/*",
                    }
                ],
            },
            vpc_options=opensearch.CfnDomain.VPCOptionsProperty(
                subnet_ids=subnets.subnet_ids, security_group_ids=[group.security_group_id]
            ),
            log_publishing_options={
                log: opensearch.CfnDomain.LogPublishingOptionProperty(
                    cloud_watch_logs_log_group_arn=groups[log].log_group_arn, enabled=True
                )
                for log in OPENSEARCH_LOGS
            },
        )
        self.domain.node.add_dependency(policy)
        self.domain.apply_removal_policy(RemovalPolicy.RETAIN)

    @property
    def url(self) -> str:
        return f"https://{self.domain.attr_domain_endpoint}"
