"""The network: a VPC over two AZs, endpoints for every AWS API the platform calls, one security
group per component with the least ingress, and flow logs.

Private subnets *with egress* (a NAT gateway per AZ by default, `nat_gateways`), not isolated ones:
the ADOT collector sidecar's image comes from public.ecr.aws, which no VPC endpoint serves, and the
alert webhook (`ETL_ALERT_WEBHOOK_URL`) is any HTTPS URL on the internet. Everything AWS is still
reached through endpoints (gateway: S3, DynamoDB; interface: the rest), so lake, stream and lease
traffic never crosses the NAT. The public subnets hold only the NAT gateways (no public IPs on launch).

Security groups: data stores and endpoints admit only the components that call them, on their one
port, and send nothing; the task groups admit only their callers (the ALB -> webserver, webserver
and daemon -> code servers) and may send anywhere (endpoints, stores, the NAT).
"""

from __future__ import annotations

from dataclasses import dataclass

from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_logs as logs
from constructs import Construct

from etl_platform_cdk.settings import StackSettings

WEBSERVER_PORT = 3000  # dagster-webserver's default
CODE_SERVER_PORT = 4000  # Dagster's conventional gRPC code server port
POSTGRES_PORT = 5432
REDSHIFT_PORT = 5439  # etl_platform.config's ETL_REDSHIFT_PORT default
HTTPS_PORT = 443
MSK_IAM_PORT = 9098  # MSK's SASL/IAM listener (ETL_KAFKA_BOOTSTRAP, docs/deploy.md)

# Interface endpoints, each for an API the platform or its tasks call (gateway endpoints: S3, DynamoDB).
INTERFACE_ENDPOINTS: dict[str, ec2.InterfaceVpcEndpointAwsService] = {
    "Kinesis": ec2.InterfaceVpcEndpointAwsService.KINESIS_STREAMS,  # producers, workers, the scaler
    "Monitoring": ec2.InterfaceVpcEndpointAwsService.CLOUDWATCH_MONITORING,  # metrics, alarms
    "Logs": ec2.InterfaceVpcEndpointAwsService.CLOUDWATCH_LOGS,  # awslogs driver, run log reads
    "Sts": ec2.InterfaceVpcEndpointAwsService.STS,  # SDK credential and identity calls
    "SecretsManager": ec2.InterfaceVpcEndpointAwsService.SECRETS_MANAGER,  # secret injection
    "Kms": ec2.InterfaceVpcEndpointAwsService.KMS,  # stream, lake, lease table encryption
    "EcrApi": ec2.InterfaceVpcEndpointAwsService.ECR,  # image pulls
    "EcrDocker": ec2.InterfaceVpcEndpointAwsService.ECR_DOCKER,
    "Ecs": ec2.InterfaceVpcEndpointAwsService.ECS,  # EcsRunLauncher: RunTask, DescribeTasks, StopTask
    "Ec2": ec2.InterfaceVpcEndpointAwsService.EC2,  # EcsRunLauncher: DescribeNetworkInterfaces
    "XRay": ec2.InterfaceVpcEndpointAwsService.XRAY,  # the ADOT collector's traces
    "Sns": ec2.InterfaceVpcEndpointAwsService.SNS,  # alerts (ETL_ALERT_SNS_TOPIC_ARN)
}


@dataclass(frozen=True)
class SecurityGroups:
    alb: ec2.SecurityGroup
    webserver: ec2.SecurityGroup
    daemon: ec2.SecurityGroup
    code: ec2.SecurityGroup
    run: ec2.SecurityGroup
    dagster_db: ec2.SecurityGroup
    redshift: ec2.SecurityGroup
    opensearch: ec2.SecurityGroup
    endpoints: ec2.SecurityGroup
    msk: ec2.SecurityGroup | None

    @property
    def tasks(self) -> tuple[ec2.SecurityGroup, ...]:
        """The groups of the ECS tasks: every caller of AWS APIs inside the VPC."""
        return (self.webserver, self.daemon, self.code, self.run)


class Network(Construct):
    """VPC, endpoints, security groups and flow logs."""

    def __init__(
        self, scope: Construct, construct_id: str, settings: StackSettings, flow_log_group: logs.ILogGroup
    ) -> None:
        super().__init__(scope, construct_id)
        self.vpc = ec2.Vpc(
            self,
            "Vpc",
            ip_addresses=ec2.IpAddresses.cidr(settings.vpc_cidr),
            max_azs=2,
            nat_gateways=settings.nat_gateways,
            subnet_configuration=[
                ec2.SubnetConfiguration(
                    name="nat", subnet_type=ec2.SubnetType.PUBLIC, cidr_mask=26, map_public_ip_on_launch=False
                ),
                ec2.SubnetConfiguration(name="private", subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS, cidr_mask=20),
            ],
        )
        self.private = ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS)
        self.vpc.add_flow_log(
            "FlowLog",
            destination=ec2.FlowLogDestination.to_cloud_watch_logs(flow_log_group),
            traffic_type=ec2.FlowLogTrafficType.ALL,
        )
        self.vpc.add_gateway_endpoint("S3", service=ec2.GatewayVpcEndpointAwsService.S3, subnets=[self.private])
        self.vpc.add_gateway_endpoint(
            "DynamoDb", service=ec2.GatewayVpcEndpointAwsService.DYNAMODB, subnets=[self.private]
        )

        self.groups = self._security_groups(settings)
        for name, service in INTERFACE_ENDPOINTS.items():
            self.vpc.add_interface_endpoint(
                name,
                service=service,
                subnets=self.private,
                security_groups=[self.groups.endpoints],
                private_dns_enabled=True,
                open=False,  # only the task groups below, not the whole VPC
            )

    def _group(self, name: str, description: str, egress: bool) -> ec2.SecurityGroup:
        return ec2.SecurityGroup(self, name, vpc=self.vpc, description=description, allow_all_outbound=egress)

    def _security_groups(self, settings: StackSettings) -> SecurityGroups:
        groups = SecurityGroups(
            alb=self._group("AlbSg", "internal ALB of the Dagster UI", egress=False),
            webserver=self._group("WebserverSg", "Dagster webserver tasks", egress=True),
            daemon=self._group("DaemonSg", "Dagster daemon task", egress=True),
            code=self._group("CodeServerSg", "Dagster code location gRPC servers", egress=True),
            run=self._group("RunSg", "Dagster run tasks (shard workers, loads, indexing, scaling)", egress=True),
            dagster_db=self._group("DagsterDbSg", "Dagster instance storage (RDS PostgreSQL)", egress=False),
            redshift=self._group("RedshiftSg", "Redshift warehouse", egress=False),
            opensearch=self._group("OpenSearchSg", "OpenSearch domain", egress=False),
            endpoints=self._group("EndpointsSg", "interface VPC endpoints", egress=False),
            msk=self._group("MskSg", "MSK Serverless cluster", egress=False) if settings.kafka_pipelines else None,
        )
        ui_peer = ec2.Peer.ipv4(settings.ui_cidr or settings.vpc_cidr)
        ui_port = HTTPS_PORT if settings.certificate_arn else 80
        groups.alb.add_ingress_rule(ui_peer, ec2.Port.tcp(ui_port), "operators reach the Dagster UI")
        # The ALB -> webserver rule comes with the listener's target (dagster.py).
        for caller in (groups.webserver, groups.daemon):
            groups.code.add_ingress_rule(caller, ec2.Port.tcp(CODE_SERVER_PORT), "workspace gRPC calls")
        # Runs write their events to the instance storage; code servers' sensors read it.
        for caller in groups.tasks:
            groups.dagster_db.add_ingress_rule(caller, ec2.Port.tcp(POSTGRES_PORT), "Dagster run/event storage")
            groups.endpoints.add_ingress_rule(caller, ec2.Port.tcp(HTTPS_PORT), "AWS APIs")
        groups.redshift.add_ingress_rule(groups.run, ec2.Port.tcp(REDSHIFT_PORT), "warehouse load runs")
        # Runs index micro-batches and days; code servers' alert sensors query anomalies.
        for caller in (groups.run, groups.code):
            groups.opensearch.add_ingress_rule(caller, ec2.Port.tcp(HTTPS_PORT), "indexing and queries")
            if groups.msk is not None:
                # Workers read partitions; the supervisor sensor lists them.
                groups.msk.add_ingress_rule(caller, ec2.Port.tcp(MSK_IAM_PORT), "Kafka over IAM")
        return groups
