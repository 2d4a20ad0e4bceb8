"""Dagster on ECS Fargate: the cluster, the instance's PostgreSQL (RDS), the
webserver behind an internal ALB, the daemon (exactly one task), one gRPC code server per code
location of `workspace.yaml` (found through Cloud Map), and the run task definition that
`deploy/dagster.yaml`'s EcsRunLauncher starts every run from.

The image (one for all of them, from the stack's ECR repository, tag from context) holds the
repository under `code_dir` and `deploy/dagster.yaml` as `$DAGSTER_HOME/dagster.yaml`. The webserver
and the daemon load a workspace of the code servers (`grpc_server` entries, written from
DAGSTER_WORKSPACE_YAML at start); each code server serves one location with `dagster code-server`.

Every app container gets the environment of docs/deploy.md (ETL_PROFILE=aws, the stream, lake,
lease table, warehouse, search, alert topic, Dagster storage and run launcher settings, ETL_LOG_FORMAT=
json) and the three secrets from Secrets Manager; the launcher forwards the required ones into runs.
Code servers (they evaluate the sensors) and run tasks carry the ADOT collector sidecar, receiving
OTLP on localhost:4318 and exporting to X-Ray; their app containers trace to it.

Network: runs are started with the daemon's network configuration (`use_current_ecs_task_config`), so
the daemon service carries the run security group as well as its own; the stores admit the run group.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping

import yaml
from aws_cdk import CfnResource, Duration, RemovalPolicy, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecr as ecr
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from aws_cdk import aws_rds as rds
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import aws_servicediscovery as servicediscovery
from constructs import Construct

from etl_platform.config import DEFAULT_OTLP_ENDPOINT
from etl_platform_cdk.iam import RoleSet
from etl_platform_cdk.network import CODE_SERVER_PORT, POSTGRES_PORT, WEBSERVER_PORT, Network
from etl_platform_cdk.settings import CodeLocation, StackSettings
from etl_platform_cdk.stores import platform_secret

DAGSTER_DB = "dagster"
DAGSTER_DB_USER = "dagster"
WORKSPACE_FILE = "/tmp/workspace.yaml"
OTEL_CONTAINER = "aws-otel-collector"
# The collector: OTLP over HTTP from the task's own containers only (localhost), traces to X-Ray.
OTEL_CONFIG = {
    "extensions": {"health_check": {}},
    "receivers": {"otlp": {"protocols": {"http": {"endpoint": DEFAULT_OTLP_ENDPOINT.removeprefix("http://")}}}},
    "processors": {"batch/traces": {"timeout": "1s", "send_batch_size": 50}},
    "exporters": {"awsxray": {}},
    "service": {
        "extensions": ["health_check"],
        "pipelines": {"traces": {"receivers": ["otlp"], "processors": ["batch/traces"], "exporters": ["awsxray"]}},
    },
}


class DagsterServices(Construct):
    """Cluster, instance storage, services and the run task definition."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        settings: StackSettings,
        network: Network,
        key: kms.IKey,
        roles: RoleSet,
        log_groups: Mapping[str, logs.ILogGroup],
        environment: Mapping[str, str],
        secrets: Mapping[str, secretsmanager.ISecret],
        repository: ecr.IRepository,
    ) -> None:
        super().__init__(scope, construct_id)
        self.settings = settings
        self.network = network
        groups = network.groups
        self.image = ecs.ContainerImage.from_ecr_repository(repository, settings.image_tag)
        self.execution_role = roles.immutable("ecs-task-execution")
        self.log_groups = log_groups

        self.cluster = ecs.Cluster(
            self,
            "Cluster",
            cluster_name=settings.cluster_name,
            vpc=network.vpc,
            container_insights_v2=ecs.ContainerInsights.ENABLED,
        )
        self.namespace = servicediscovery.PrivateDnsNamespace(
            self, "Namespace", name=f"{settings.prefix}.internal", vpc=network.vpc
        )

        # The UI's internal load balancer (its URL is ETL_DAGSTER_URL).
        self.alb = elbv2.ApplicationLoadBalancer(
            self,
            "Alb",
            load_balancer_name=f"{settings.prefix}-ui",
            vpc=network.vpc,
            internet_facing=False,
            vpc_subnets=network.private,
            security_group=groups.alb,
            drop_invalid_header_fields=True,
        )
        if settings.certificate_arn:
            self.listener = self.alb.add_listener(
                "Https",
                port=443,
                protocol=elbv2.ApplicationProtocol.HTTPS,
                certificates=[elbv2.ListenerCertificate.from_arn(settings.certificate_arn)],
                ssl_policy=elbv2.SslPolicy.RECOMMENDED_TLS,
                open=False,
            )
            self.url = f"https://{self.alb.load_balancer_dns_name}"
        else:
            self.listener = self.alb.add_listener("Http", port=80, protocol=elbv2.ApplicationProtocol.HTTP, open=False)
            self.url = f"http://{self.alb.load_balancer_dns_name}"

        # The Dagster instance's storage.
        self.db_secret = platform_secret(self, "DbSecret", f"{settings.secret_prefix}/dagster-db", DAGSTER_DB_USER)
        db_id = f"{settings.prefix}-dagster"
        db_log = log_groups["DagsterDb"]
        self.database = rds.DatabaseInstance(
            self,
            "Database",
            instance_identifier=db_id,
            engine=rds.DatabaseInstanceEngine.postgres(version=rds.PostgresEngineVersion.VER_16_9),
            instance_type=ec2.InstanceType(settings.dagster_db_instance_class.removeprefix("db.")),
            vpc=network.vpc,
            vpc_subnets=network.private,
            security_groups=[groups.dagster_db],
            credentials=rds.Credentials.from_secret(self.db_secret),
            database_name=DAGSTER_DB,
            port=POSTGRES_PORT,
            storage_encrypted=True,
            storage_encryption_key=key,
            multi_az=settings.dagster_db_multi_az,
            publicly_accessible=False,
            deletion_protection=True,
            allocated_storage=50,
            max_allocated_storage=500,
            backup_retention=Duration.days(7),
            cloudwatch_logs_exports=["postgresql"],
            auto_minor_version_upgrade=True,
            removal_policy=RemovalPolicy.SNAPSHOT,
        )
        self.database.node.add_dependency(db_log)

        # The code servers' workspace, for the webserver and the daemon (written at their start).
        self.workspace_yaml = yaml.safe_dump(
            {
                "load_from": [
                    {
                        "grpc_server": {
                            "host": f"{self._code_service_name(location)}.{self.namespace.namespace_name}",
                            "port": CODE_SERVER_PORT,
                            "location_name": location.name,
                        }
                    }
                    for location in settings.code_locations
                ]
            },
            sort_keys=False,
        )
        # One environment for every app container (docs/deploy.md): each loads deploy/dagster.yaml,
        # whose settings all come from it.
        self.environment = {
            **environment,
            "DAGSTER_PG_HOST": self.database.db_instance_endpoint_address,
            "DAGSTER_PG_PORT": self.database.db_instance_endpoint_port,
            "DAGSTER_PG_DB": DAGSTER_DB,
            "DAGSTER_PG_USERNAME": DAGSTER_DB_USER,
            "DAGSTER_PG_PASSWORD_SECRET_ARN": self.db_secret.secret_arn,
            # The family, not a revision's ARN: the launcher uses the latest revision after a deploy.
            "DAGSTER_RUN_TASK_DEFINITION": settings.run_family,
            "DAGSTER_WORKSPACE_YAML": self.workspace_yaml,
            "ETL_DAGSTER_URL": self.url,
        }
        self.secrets = {
            **{name: ecs.Secret.from_secrets_manager(secret, "password") for name, secret in secrets.items()},
            "DAGSTER_PG_PASSWORD": ecs.Secret.from_secrets_manager(self.db_secret, "password"),
        }

        # Runs: the task definition EcsRunLauncher starts (container name from deploy/dagster.yaml).
        launcher = settings.run_launcher
        self.run_task = self._task(
            "RunTask",
            family=settings.run_family,
            role=roles.immutable("consumer"),
            cpu=launcher.cpu,
            memory=launcher.memory_mib,
        )
        self._app_container(self.run_task, launcher.container_name, "Run", traced=True, command=None)

        # Code servers, one per location; the webserver and the daemon reach them by DNS.
        self.code_services = {
            location.name: self._code_server(location, groups.code, roles) for location in settings.code_locations
        }

        # The daemon: exactly one task, ever (no overlap during deploys).
        daemon_task = self._task("DaemonTask", family=f"{settings.prefix}-daemon", role=roles.immutable("orchestrator"))
        self._app_container(
            daemon_task, "daemon", "Daemon", traced=False, command=self._with_workspace("dagster-daemon run")
        )
        self.daemon = ecs.FargateService(
            self,
            "Daemon",
            cluster=self.cluster,
            service_name=f"{settings.prefix}-daemon",
            task_definition=daemon_task,
            desired_count=1 if settings.start_services else 0,
            min_healthy_percent=0,
            max_healthy_percent=100,
            # The run launcher copies this task's network into every run: hence the run group too.
            security_groups=[groups.daemon, groups.run],
            vpc_subnets=network.private,
            assign_public_ip=False,
            circuit_breaker=ecs.DeploymentCircuitBreaker(rollback=True),
        )

        # The webserver, behind an internal ALB.
        web_task = self._task(
            "WebserverTask", family=f"{settings.prefix}-webserver", role=roles.immutable("orchestrator")
        )
        web = self._app_container(
            web_task,
            "webserver",
            "Webserver",
            traced=False,
            command=self._with_workspace(f"dagster-webserver -h 0.0.0.0 -p {WEBSERVER_PORT}"),
        )
        web.add_port_mappings(ecs.PortMapping(container_port=WEBSERVER_PORT))
        self.webserver = ecs.FargateService(
            self,
            "Webserver",
            cluster=self.cluster,
            service_name=f"{settings.prefix}-webserver",
            task_definition=web_task,
            desired_count=settings.webserver_tasks if settings.start_services else 0,
            min_healthy_percent=100,  # a deploy starts the new task before stopping the old
            security_groups=[groups.webserver],
            vpc_subnets=network.private,
            assign_public_ip=False,
            circuit_breaker=ecs.DeploymentCircuitBreaker(rollback=True),
            health_check_grace_period=Duration.seconds(120),
        )
        self.listener.add_targets(
            "Webserver",
            port=WEBSERVER_PORT,
            protocol=elbv2.ApplicationProtocol.HTTP,
            targets=[self.webserver.load_balancer_target(container_name="webserver", container_port=WEBSERVER_PORT)],
            health_check=elbv2.HealthCheck(path="/server_info", healthy_http_codes="200"),
            deregistration_delay=Duration.seconds(30),
        )
        # The service must wait for the listener (ECS refuses a target group no load balancer uses);
        # CDK also lists the target group, which its `LoadBalancers` Ref already orders (cfn-lint W3005).
        service = self.webserver.node.default_child
        listener = self.listener.node.default_child
        if isinstance(service, CfnResource) and isinstance(listener, CfnResource):
            stack = Stack.of(self)
            task_role = web_task.task_role.node.default_child
            needed = [listener, *([task_role] if isinstance(task_role, CfnResource) else [])]
            service.add_override("DependsOn", [stack.get_logical_id(r) for r in needed])

    # --- building blocks --------------------------------------------------------------------------
    def _task(
        self, construct_id: str, family: str, role: iam.IRole, cpu: int = 1024, memory: int = 2048
    ) -> ecs.FargateTaskDefinition:
        return ecs.FargateTaskDefinition(
            self,
            construct_id,
            family=family,
            cpu=cpu,
            memory_limit_mib=memory,
            task_role=role,
            execution_role=self.execution_role,
            runtime_platform=ecs.RuntimePlatform(
                operating_system_family=ecs.OperatingSystemFamily.LINUX, cpu_architecture=ecs.CpuArchitecture.X86_64
            ),
        )

    def _app_container(
        self,
        task: ecs.FargateTaskDefinition,
        name: str,
        log_key: str,
        traced: bool,
        command: list[str] | None,
        health_check: ecs.HealthCheck | None = None,
    ) -> ecs.ContainerDefinition:
        environment = {**self.environment, "OTEL_SERVICE_NAME": f"{self.settings.prefix}-{name}"}
        if traced:
            environment |= {"ETL_TRACE_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": DEFAULT_OTLP_ENDPOINT}
        else:
            environment["ETL_TRACE_EXPORTER"] = "none"  # no collector in this task
        log_group = self.log_groups[log_key]
        container = task.add_container(
            name,
            container_name=name,
            image=self.image,
            command=command,
            essential=True,
            environment=environment,
            secrets=dict(self.secrets),
            logging=ecs.LogDrivers.aws_logs(stream_prefix=name, log_group=log_group),
            health_check=health_check,
        )
        if traced:
            collector = task.add_container(
                OTEL_CONTAINER,
                container_name=OTEL_CONTAINER,
                image=ecs.ContainerImage.from_registry(self.settings.adot_collector_image),
                essential=False,  # a collector failure loses traces, never the run
                environment={"AOT_CONFIG_CONTENT": yaml.safe_dump(OTEL_CONFIG, sort_keys=False)},
                logging=ecs.LogDrivers.aws_logs(stream_prefix="otel", log_group=log_group),
                memory_reservation_mib=64,
            )
            container.add_container_dependencies(
                ecs.ContainerDependency(container=collector, condition=ecs.ContainerDependencyCondition.START)
            )
        return container

    def _with_workspace(self, command: str) -> list[str]:
        """`command -w <workspace>` after writing the code servers' workspace from the environment."""
        return [
            "sh",
            "-c",
            f'printf "%s" "$DAGSTER_WORKSPACE_YAML" > {WORKSPACE_FILE} && exec {command} -w {WORKSPACE_FILE}',
        ]

    def _code_service_name(self, location: CodeLocation) -> str:
        return f"code-{location.slug}"

    def _code_server(self, location: CodeLocation, group: ec2.ISecurityGroup, roles: RoleSet) -> ecs.FargateService:
        settings = self.settings
        name = self._code_service_name(location)
        task = self._task(
            f"CodeTask-{location.slug}", family=f"{settings.prefix}-{name}", role=roles.immutable("orchestrator")
        )
        working_directory = posixpath.normpath(posixpath.join(settings.code_dir, location.working_directory))
        command = [
            "dagster",
            "code-server",
            "start",
            "-h",
            "0.0.0.0",
            "-p",
            str(CODE_SERVER_PORT),
            "-m",
            location.module,
            "-d",
            working_directory,
            "--location-name",
            location.name,
            "--log-format",
            "json",
        ]
        container = self._app_container(
            task,
            "code",
            f"Code-{location.slug}",
            traced=True,
            command=command,
            # No load balancer checks a gRPC server: ECS replaces one that stops answering.
            health_check=ecs.HealthCheck(
                command=["CMD-SHELL", f"dagster api grpc-health-check -p {CODE_SERVER_PORT}"],
                start_period=Duration.seconds(120),
            ),
        )
        container.add_port_mappings(ecs.PortMapping(container_port=CODE_SERVER_PORT))
        return ecs.FargateService(
            self,
            f"Code-{location.slug}",
            cluster=self.cluster,
            service_name=f"{settings.prefix}-{name}",
            task_definition=task,
            desired_count=settings.code_server_tasks if settings.start_services else 0,
            min_healthy_percent=100,  # the workspace keeps a live server through deploys
            security_groups=[group],
            vpc_subnets=self.network.private,
            assign_public_ip=False,
            circuit_breaker=ecs.DeploymentCircuitBreaker(rollback=True),
            cloud_map_options=ecs.CloudMapOptions(
                cloud_map_namespace=self.namespace,
                name=name,
                dns_record_type=servicediscovery.DnsRecordType.A,
                dns_ttl=Duration.seconds(10),
            ),
        )
