"""What the stack is built from: CDK context (names, sizes, the image tag) and the project's own
config files and code, read through the platform's loaders so nothing is repeated here.

- pipelines: `config/pipelines.yaml` via `etl_platform.pipelines.load_pipelines`, with `Settings` for
  the aws profile built from placeholder values (the default pipeline's stream is `stream_name`);
- stream/lake security and lifecycle: `config/lake.yaml` via `load_security_config`;
- alarms: `config/alarms.yaml` via `load_alarms`;
- the lease table's schema: `etl_platform.stream.leases.table_definition` (what `ensure_table` sends);
- the run tasks' size, container name and compute-log prefix: `deploy/dagster.yaml`;
- the code locations: `workspace.yaml`;
- the OpenSearch engine: the version the local node runs (`services/opensearch/pom.xml`).

Nothing here touches AWS or the network: `StackSettings.load` is plain Python, so tests can build it
without synthesizing anything.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from etl_platform.config import ConfigError, Settings, load_settings
from etl_platform.ops.alarms import Alarm, load_alarms
from etl_platform.ops.metrics import native_metrics_for
from etl_platform.ops.scaling import ScalingPolicy
from etl_platform.ops.security import SecurityConfig, load_security_config
from etl_platform.pipelines import Pipeline, Pipelines, load_pipelines
from etl_platform.stream.leases import table_definition

REPO = Path(__file__).resolve().parents[3]
# CloudWatch Logs accepts only these retention periods (days).
LOG_RETENTION_DAYS = (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922)
NAME_RE = re.compile(r"^[a-z][a-z0-9-]{1,19}$")  # short enough for every name derived from it (OpenSearch: 28)


class ContextError(ConfigError):
    """A CDK context value is invalid; the message names the key."""


@dataclass(frozen=True)
class CodeLocation:
    """One code location of `workspace.yaml`, served by its own gRPC code server."""

    name: str
    module: str
    working_directory: str

    @property
    def slug(self) -> str:
        """The location's name as it may appear in AWS names (service, DNS, log group)."""
        return re.sub(r"[^a-z0-9-]", "-", self.name.lower())


@dataclass(frozen=True)
class RunLauncher:
    """What `deploy/dagster.yaml`'s EcsRunLauncher expects of the run task definition."""

    container_name: str
    cpu: int
    memory_mib: int
    forwarded_env: tuple[str, ...]  # env_vars the launcher copies from the daemon into each run
    secrets: tuple[str, ...]  # secret env names the run container gets
    compute_log_prefix: str


@dataclass(frozen=True)
class StackSettings:
    """Everything the stack needs, validated; `load` reads it."""

    prefix: str
    stream_name: str
    image_tag: str
    on_demand_streams: bool
    nat_gateways: int
    vpc_cidr: str
    ui_cidr: str | None  # None: the VPC's own range
    certificate_arn: str | None
    log_retention_days: int
    lake_bucket_versioned: bool
    redshift_node_type: str
    redshift_nodes: int
    redshift_database: str
    redshift_user: str
    opensearch_instance_type: str
    opensearch_volume_gb: int
    opensearch_version: str
    opensearch_user: str
    dagster_db_instance_class: str
    dagster_db_multi_az: bool
    webserver_tasks: int
    code_server_tasks: int
    start_services: bool  # false: services at 0 tasks (the first deploy, before an image is pushed)
    max_concurrent_runs: int
    adot_collector_image: str
    code_dir: str
    dagster_home: str
    pipelines_file: Path
    lake_config_file: Path
    alarms_file: Path
    settings: Settings = field(repr=False)
    pipelines: Pipelines = field(repr=False)
    security: SecurityConfig = field(repr=False)
    alarms: tuple[Alarm, ...] = field(repr=False)
    lease_table: Mapping[str, Any] = field(repr=False)  # leases.table_definition: CreateTable's request
    run_launcher: RunLauncher = field(repr=False)
    code_locations: tuple[CodeLocation, ...] = field(repr=False)

    # --- derived names ----------------------------------------------------------------------------
    @property
    def kinesis_pipelines(self) -> tuple[Pipeline, ...]:
        return tuple(p for p in self.pipelines if p.stream.kind == "kinesis")

    @property
    def kafka_pipelines(self) -> tuple[Pipeline, ...]:
        return tuple(p for p in self.pipelines if p.stream.kind == "kafka")

    @property
    def lake_roots(self) -> tuple[str, ...]:
        return tuple(p.lake_root for p in self.pipelines)

    @property
    def lease_table_name(self) -> str:
        return self.settings.lease_table

    @property
    def secret_prefix(self) -> str:
        return self.prefix

    # Names the IAM documents' placeholders must match (so they are made here, once).
    @property
    def cluster_name(self) -> str:
        return self.prefix

    @property
    def run_family(self) -> str:
        return f"{self.prefix}-run"

    @property
    def opensearch_domain(self) -> str:
        return f"{self.prefix}-search"

    @property
    def kafka_cluster_name(self) -> str:
        return f"{self.prefix}-kafka"

    @property
    def repository_name(self) -> str:
        return self.prefix

    def ecs_log_group(self, component: str) -> str:
        """The log group of one ECS component (`webserver`, `daemon`, `code-<location>`, `run`)."""
        return f"/{self.prefix}/ecs/{component}"

    def native_metrics(self, pipeline: Pipeline) -> bool:
        """Whether the pipeline's alarms read AWS/Kinesis (as the aws profile's code does)."""
        return native_metrics_for(self.settings, pipeline.stream.kind)

    def stream_encryption(self, pipeline: Pipeline) -> str:
        return pipeline.stream.encryption or self.security.stream_encryption

    def stream_retention_hours(self, pipeline: Pipeline) -> int:
        return pipeline.stream.retention_hours or self.security.retention_hours

    def repo_path_in_image(self, path: Path) -> str:
        """Where a repository file is inside the image (the code directory mirrors the repository)."""
        return f"{self.code_dir.rstrip('/')}/{path.resolve().relative_to(REPO).as_posix()}"

    # --- loading ----------------------------------------------------------------------------------
    @classmethod
    def load(cls, context: Callable[[str], Any] | Mapping[str, Any] | None = None) -> StackSettings:
        """Read CDK context (`app.node.try_get_context`, or a mapping in tests) and the project files."""
        get = _getter(context)
        prefix = _string(get, "prefix", "etl-platform", NAME_RE)
        stream_name = _string(get, "stream_name", "etl-platform-events", re.compile(r"^[A-Za-z0-9_.-]{1,128}$"))
        redshift_database = _string(get, "redshift_database", "warehouse", re.compile(r"^[a-z][a-z0-9_]{0,63}$"))
        redshift_user = _string(get, "redshift_user", "etl_loader", re.compile(r"^[a-z][a-z0-9_]{0,63}$"))
        opensearch_user = _string(get, "opensearch_user", "etl-platform", re.compile(r"^[A-Za-z0-9_-]{1,64}$"))
        pipelines_file = _repo_file(get, "pipelines_file", "config/pipelines.yaml")
        lake_config_file = _repo_file(get, "lake_config_file", "config/lake.yaml")
        alarms_file = _repo_file(get, "alarms_file", "config/alarms.yaml")
        # The aws profile's settings with placeholders for what only the deployed stack knows: the
        # pipelines catalog needs them (the default pipeline's stream is ETL_STREAM_NAME; a Kafka
        # pipeline needs brokers), and the lease table's default name is theirs.
        env = {
            "ETL_PROFILE": "aws",
            "AWS_REGION": "us-east-1",
            "ETL_STREAM_NAME": stream_name,
            "ETL_LAKE_BUCKET": "placeholder-lake-bucket",
            "ETL_REDSHIFT_HOST": "placeholder.redshift.amazonaws.com",
            "ETL_REDSHIFT_DATABASE": redshift_database,
            "ETL_REDSHIFT_USER": redshift_user,
            "ETL_REDSHIFT_IAM_ROLE": "arn:aws:iam::000000000000:role/placeholder",
            "ETL_OPENSEARCH_URL": "https://placeholder.es.amazonaws.com",
            "ETL_KAFKA_BOOTSTRAP": "placeholder.kafka-serverless.amazonaws.com:9098",
        }
        lease_table = get("lease_table")
        if lease_table is not None:
            env["ETL_LEASE_TABLE"] = _string(get, "lease_table", "", re.compile(r"^[A-Za-z0-9_.-]{3,255}$"))
        settings = load_settings(env)
        pipelines = load_pipelines(settings, env, pipelines_file)
        launcher = _run_launcher(REPO / "deploy" / "dagster.yaml")
        max_shards = ScalingPolicy.from_env({}).max_shards
        # One worker run per shard at most (a shard worker and its successor briefly), plus headroom
        # for warehouse, search, scaling and backfill runs (docs/deploy.md: max shards + 8).
        default_runs = sum(max_shards if p.stream.kind == "kinesis" else p.stream.shards for p in pipelines) + 8
        return cls(
            prefix=prefix,
            stream_name=stream_name,
            image_tag=_string(get, "image_tag", "latest", re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")),
            on_demand_streams=_choice(get, "stream_mode", ("provisioned", "on_demand"), "provisioned") == "on_demand",
            nat_gateways=_int(get, "nat_gateways", 2, 1, 2),
            vpc_cidr=_string(get, "vpc_cidr", "10.40.0.0/16", re.compile(r"^\d+\.\d+\.\d+\.\d+/(1[6-9]|2[0-4])$")),
            ui_cidr=_optional(get, "ui_cidr", re.compile(r"^\d+\.\d+\.\d+\.\d+/\d{1,2}$")),
            certificate_arn=_optional(get, "certificate_arn", re.compile(r"^arn:aws[a-z-]*:acm:[a-z0-9-]+:\d{12}:")),
            log_retention_days=_int(get, "log_retention_days", 30, 1, 2922, allowed=LOG_RETENTION_DAYS),
            lake_bucket_versioned=_bool(get, "lake_bucket_versioned", False),
            redshift_node_type=_string(get, "redshift_node_type", "ra3.large", re.compile(r"^[a-z0-9]+\.[a-z0-9]+$")),
            redshift_nodes=_int(get, "redshift_nodes", 1, 1, 128),
            redshift_database=redshift_database,
            redshift_user=redshift_user,
            opensearch_instance_type=_string(
                get, "opensearch_instance_type", "r7g.large.search", re.compile(r"^[a-z0-9]+\.[a-z0-9]+\.search$")
            ),
            opensearch_volume_gb=_int(get, "opensearch_volume_gb", 100, 10, 16384),
            opensearch_version=_string(
                get, "opensearch_version", _local_opensearch_version(), re.compile(r"^OpenSearch_\d+\.\d+$")
            ),
            opensearch_user=opensearch_user,
            dagster_db_instance_class=_string(
                get, "dagster_db_instance_class", "db.t4g.medium", re.compile(r"^db\.[a-z0-9]+\.[a-z0-9]+$")
            ),
            dagster_db_multi_az=_bool(get, "dagster_db_multi_az", True),
            webserver_tasks=_int(get, "webserver_tasks", 1, 1, 10),
            code_server_tasks=_int(get, "code_server_tasks", 1, 1, 10),
            start_services=_bool(get, "start_services", True),
            max_concurrent_runs=_int(get, "max_concurrent_runs", default_runs, 1, 10_000),
            adot_collector_image=_string(
                get,
                "adot_collector_image",
                "public.ecr.aws/aws-observability/aws-otel-collector:v0.47.0",
                re.compile(r"^[a-z0-9./-]+:v?[0-9][A-Za-z0-9_.-]*$"),  # a pinned tag, never `latest`
            ),
            code_dir=_string(get, "code_dir", "/opt/etl-platform", re.compile(r"^/[A-Za-z0-9_./-]*$")),
            dagster_home=_string(get, "dagster_home", "/opt/dagster/dagster_home", re.compile(r"^/[A-Za-z0-9_./-]*$")),
            pipelines_file=pipelines_file,
            lake_config_file=lake_config_file,
            alarms_file=alarms_file,
            settings=settings,
            pipelines=pipelines,
            security=load_security_config(lake_config_file),
            alarms=tuple(load_alarms(alarms_file)),
            lease_table=table_definition(settings.lease_table),
            run_launcher=launcher,
            code_locations=_code_locations(REPO / "workspace.yaml"),
        )


# --- the project's files --------------------------------------------------------------------------
def _run_launcher(path: Path) -> RunLauncher:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    launcher = data["run_launcher"]
    if launcher.get("class") != "EcsRunLauncher":
        raise ConfigError(f"{path}: run_launcher is {launcher.get('class')!r}; the stack runs EcsRunLauncher")
    config = launcher["config"]
    resources = config.get("run_resources") or {}
    compute = data.get("compute_logs", {}).get("config", {})
    return RunLauncher(
        container_name=config["container_name"],
        cpu=int(resources.get("cpu", 1024)),
        memory_mib=int(resources.get("memory", 2048)),
        forwarded_env=tuple(config.get("env_vars") or ()),
        secrets=tuple(s["name"] for s in config.get("secrets") or ()),
        compute_log_prefix=str(compute.get("prefix", "dagster/compute-logs")).strip("/"),
    )


def _code_locations(path: Path) -> tuple[CodeLocation, ...]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    locations = []
    for entry in data.get("load_from") or ():
        module = entry.get("python_module")
        if not isinstance(module, Mapping):
            raise ConfigError(f"{path}: every location must be a python_module (the stack serves each over gRPC)")
        locations.append(
            CodeLocation(
                name=module["location_name"],
                module=module["module_name"],
                working_directory=str(module.get("working_directory", ".")),
            )
        )
    if not locations:
        raise ConfigError(f"{path}: no code locations")
    return tuple(locations)


def _local_opensearch_version() -> str:
    """`OpenSearch_<major>.<minor>` of the node the tests run (services/opensearch/pom.xml)."""
    pom = ET.parse(REPO / "services" / "opensearch" / "pom.xml").getroot()
    ns = {"m": pom.tag.split("}")[0].strip("{")} if pom.tag.startswith("{") else {}
    node = pom.find("m:properties/m:opensearch.version", ns) if ns else pom.find("properties/opensearch.version")
    if node is None or not node.text:
        raise ConfigError("services/opensearch/pom.xml has no opensearch.version")
    major, minor = node.text.strip().split(".")[:2]
    return f"OpenSearch_{major}.{minor}"


# --- context values -------------------------------------------------------------------------------
def _getter(context: Callable[[str], Any] | Mapping[str, Any] | None) -> Callable[[str], Any]:
    if context is None:
        return lambda _key: None
    if isinstance(context, Mapping):
        return context.get
    return context


def _string(get: Callable[[str], Any], key: str, default: str, pattern: re.Pattern[str]) -> str:
    value = get(key)
    value = default if value is None or value == "" else value
    if not isinstance(value, str) or not pattern.match(value):
        raise ContextError(f"context {key}={value!r} must match {pattern.pattern}")
    return value


def _optional(get: Callable[[str], Any], key: str, pattern: re.Pattern[str]) -> str | None:
    value = get(key)
    if value is None or value == "":
        return None
    return _string(get, key, "", pattern)


def _int(
    get: Callable[[str], Any],
    key: str,
    default: int,
    minimum: int,
    maximum: int,
    allowed: tuple[int, ...] | None = None,
) -> int:
    raw = get(key)
    value = default if raw is None or raw == "" else raw
    if isinstance(value, str) and value.isdigit():  # `cdk synth -c key=3` passes strings
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise ContextError(f"context {key}={raw!r} must be an integer in {minimum}..{maximum}")
    if allowed is not None and value not in allowed:
        raise ContextError(f"context {key}={value} must be one of {', '.join(map(str, allowed))}")
    return value


def _bool(get: Callable[[str], Any], key: str, default: bool) -> bool:
    value = get(key)
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ContextError(f"context {key}={value!r} must be true or false")


def _choice(get: Callable[[str], Any], key: str, choices: tuple[str, ...], default: str) -> str:
    value = get(key) or default
    if value not in choices:
        raise ContextError(f"context {key}={value!r} must be one of {', '.join(choices)}")
    return value


def _repo_file(get: Callable[[str], Any], key: str, default: str) -> Path:
    """A config file of the repository (the image carries the same tree under `code_dir`)."""
    value = get(key) or default
    path = (REPO / str(value)).resolve()
    if not path.is_file() or not path.is_relative_to(REPO):
        raise ContextError(f"context {key}={value!r} is not a file of the repository")
    return path
