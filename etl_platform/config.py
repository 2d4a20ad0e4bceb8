"""Deployment settings: one dataclass, two profiles.

`local` points at the loopback stack that `etl-platform stack up` runs; `aws` reads real endpoints from
environment variables (credentials come from the standard AWS chain, never from here). A missing or
malformed setting raises `ConfigError` naming the variable, at start-up rather than mid-run.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

PROFILES = ("local", "aws")
TRACE_EXPORTERS = ("none", "file", "otlp")  # etl_platform.ops.tracing
LOG_FORMATS = ("json", "text")  # etl_platform.ops.logs
# The AWS Distro for OpenTelemetry collector's OTLP/HTTP receiver, as a sidecar of each task.
DEFAULT_OTLP_ENDPOINT = "http://localhost:4318"

# Local stack ports: fixed so docs, the UI and scripts agree; overridable for parallel stacks.
LOCAL_PORTS = {
    "kinesis": ("ETL_KINESIS_PORT", 4568),
    "moto": ("ETL_MOTO_PORT", 5050),
    "postgres": ("ETL_POSTGRES_PORT", 5439),
    "opensearch": ("ETL_OPENSEARCH_PORT", 9200),
    "kafka": ("ETL_KAFKA_PORT", 9092),  # the broker's controller listens on the next port
    "dagster": ("ETL_DAGSTER_PORT", 3000),
}


class ConfigError(ValueError):
    """A deployment setting is missing or invalid; the message names the setting."""


@dataclass(frozen=True)
class Settings:
    profile: str
    aws_region: str
    stream_name: str
    lake_bucket: str
    warehouse_dialect: str  # "postgres" (local) | "redshift" (aws)
    warehouse_dsn: str  # libpq URI for postgres; redshift://user@host:port/db for redshift
    opensearch_url: str
    dagster_url: str
    # None means "the AWS default endpoint for the region" (aws profile).
    kinesis_endpoint: str | None = None
    s3_endpoint: str | None = None
    cloudwatch_endpoint: str | None = None
    sns_endpoint: str | None = None
    dynamodb_endpoint: str | None = None
    kafka_bootstrap: str | None = None  # host:port[,host:port]; MSK's bootstrap brokers in the aws profile
    lease_table: str = "etl-platform-leases"  # the consumers' lease table (DynamoDB)
    redshift_iam_role: str | None = None
    alert_webhook_url: str | None = None
    sns_topic_arn: str | None = None
    tls: bool = False
    # Alarms and the scaler read what Kinesis measures itself (AWS/Kinesis) rather than our copies;
    # only a real Kinesis publishes them (ETL_NATIVE_METRICS in the aws profile, default true).
    native_metrics: bool = False
    # Explicit static credentials only for the local emulators; AWS uses its default chain.
    local_credentials: Mapping[str, str] = field(default_factory=dict)
    # Micro-batch traces (etl_platform.ops.tracing): none | file (JSON lines) | otlp (the ADOT collector).
    trace_exporter: str = "none"
    trace_file: str | None = None  # None: traces/spans.jsonl in the local stack's directory
    otlp_endpoint: str = DEFAULT_OTLP_ENDPOINT
    log_format: str = "text"  # the platform's own python logs: json | text (etl_platform.ops.logs)

    @property
    def postgres_dsn(self) -> str:
        return self.warehouse_dsn

    def endpoints(self) -> dict[str, str | None]:
        return {
            "kinesis_endpoint": self.kinesis_endpoint,
            "s3_endpoint": self.s3_endpoint,
            "cloudwatch_endpoint": self.cloudwatch_endpoint,
            "postgres_dsn": self.warehouse_dsn if self.warehouse_dialect == "postgres" else None,
            "warehouse_dsn": self.warehouse_dsn,
            "opensearch_url": self.opensearch_url,
            "dagster_url": self.dagster_url,
        }


def env_number(env: Mapping[str, str], var: str, default: Any, kind: type, minimum: float) -> Any:
    """A numeric setting from the environment: the default when unset, else parsed and range-checked."""
    raw = env.get(var)
    if raw is None or raw == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f"{var}={raw!r} is not a {kind.__name__}") from None
    if value < minimum:
        raise ConfigError(f"{var}={raw!r} must be at least {minimum}")
    return value


def env_flag(env: Mapping[str, str], var: str, default: bool) -> bool:
    """A true/false setting (true/false, 1/0, yes/no); anything else fails naming the variable."""
    value = env.get(var, "").strip().lower()
    if not value:
        return default
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise ConfigError(f"{var}={env[var]!r} must be true or false")


def read_yaml(path: Path, what: str, error: type[ConfigError] = ConfigError, setting: str | None = None) -> Any:
    """A configuration file's YAML document; `error` names the file (and the `setting` that chose it)
    when it cannot be read or parsed."""
    import yaml

    where = f"{setting}={str(path)!r}" if setting else str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise error(f"{where}: cannot read the {what}: {exc.strerror or exc}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML: {exc}") from None


def local_port(service: str, env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    var, default = LOCAL_PORTS[service]
    raw = env.get(var)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise ConfigError(f"{var}={raw!r} is not a TCP port (1-65535)")
    return int(raw)


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Settings for the profile named by ETL_PROFILE (default: local)."""
    env = os.environ if env is None else env
    profile = env.get("ETL_PROFILE", "local") or "local"
    if profile not in PROFILES:
        raise ConfigError(f"ETL_PROFILE={profile!r} is not one of {', '.join(PROFILES)}")
    return _local(env) if profile == "local" else _aws(env)


def env_choice(env: Mapping[str, str], var: str, choices: tuple[str, ...], default: str) -> str:
    """A setting that is one of `choices`: the default when unset."""
    value = env.get(var) or default
    if value not in choices:
        raise ConfigError(f"{var}={value!r} is not one of {', '.join(choices)}")
    return value


def _observability(env: Mapping[str, str], profile: str) -> dict[str, Any]:
    """Tracing and log settings: traces to a file and text logs locally; to the collector sidecar
    (X-Ray) and JSON logs (CloudWatch Logs) in AWS."""
    local = profile == "local"
    exporter = env_choice(env, "ETL_TRACE_EXPORTER", TRACE_EXPORTERS, "file" if local else "otlp")
    endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or DEFAULT_OTLP_ENDPOINT
    parsed = urlparse(endpoint)
    if exporter == "otlp" and (parsed.scheme not in ("http", "https") or not parsed.hostname):
        raise ConfigError(f"OTEL_EXPORTER_OTLP_ENDPOINT={endpoint!r} is not an http(s):// URL")
    return {
        "trace_exporter": exporter,
        "trace_file": env.get("ETL_TRACE_FILE") or None,
        "otlp_endpoint": endpoint.rstrip("/"),
        "log_format": env_choice(env, "ETL_LOG_FORMAT", LOG_FORMATS, "text" if local else "json"),
    }


def _local(env: Mapping[str, str]) -> Settings:
    host = "127.0.0.1"
    moto = f"http://{host}:{local_port('moto', env)}"
    return Settings(
        profile="local",
        aws_region=env.get("AWS_REGION", "us-east-1"),
        stream_name=env.get("ETL_STREAM_NAME", "etl-events"),
        lake_bucket=env.get("ETL_LAKE_BUCKET", "etl-lake"),
        warehouse_dialect="postgres",
        warehouse_dsn=f"postgresql://postgres@{host}:{local_port('postgres', env)}/warehouse",
        opensearch_url=f"http://{host}:{local_port('opensearch', env)}",
        dagster_url=f"http://{host}:{local_port('dagster', env)}",
        kinesis_endpoint=f"http://{host}:{local_port('kinesis', env)}",
        s3_endpoint=moto,
        cloudwatch_endpoint=moto,
        sns_endpoint=moto,
        dynamodb_endpoint=moto,
        kafka_bootstrap=f"{host}:{local_port('kafka', env)}",
        lease_table=env.get("ETL_LEASE_TABLE", "etl-platform-leases"),
        alert_webhook_url=env.get("ETL_ALERT_WEBHOOK_URL") or None,
        sns_topic_arn=None,
        tls=False,
        local_credentials={"aws_access_key_id": "testing", "aws_secret_access_key": "testing"},
        **_observability(env, "local"),
    )


def _require(env: Mapping[str, str], var: str) -> str:
    value = env.get(var, "")
    if not value:
        raise ConfigError(f"{var} is required for ETL_PROFILE=aws but is not set")
    return value


def _https_url(env: Mapping[str, str], var: str) -> str:
    value = _require(env, var)
    parsed = urlparse(value)
    if parsed.scheme != "https" or not parsed.hostname:
        raise ConfigError(f"{var}={value!r} must be an https:// URL (TLS is required in the aws profile)")
    return value.rstrip("/")


def _aws(env: Mapping[str, str]) -> Settings:
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or ""
    if not region:
        raise ConfigError("AWS_REGION (or AWS_DEFAULT_REGION) is required for ETL_PROFILE=aws but is not set")
    port = env.get("ETL_REDSHIFT_PORT", "5439")
    if not port.isdigit():
        raise ConfigError(f"ETL_REDSHIFT_PORT={port!r} is not a TCP port")
    role = _require(env, "ETL_REDSHIFT_IAM_ROLE")
    if not role.startswith("arn:aws:iam::"):
        raise ConfigError(f"ETL_REDSHIFT_IAM_ROLE={role!r} is not an IAM role ARN")
    dsn = (
        f"redshift://{_require(env, 'ETL_REDSHIFT_USER')}@{_require(env, 'ETL_REDSHIFT_HOST')}:{port}/"
        f"{_require(env, 'ETL_REDSHIFT_DATABASE')}?sslmode=verify-full"
    )
    webhook = env.get("ETL_ALERT_WEBHOOK_URL") or None
    if webhook and not webhook.startswith("https://"):
        raise ConfigError(f"ETL_ALERT_WEBHOOK_URL={webhook!r} must be https:// in the aws profile")
    return Settings(
        profile="aws",
        aws_region=region,
        stream_name=_require(env, "ETL_STREAM_NAME"),
        lake_bucket=_require(env, "ETL_LAKE_BUCKET"),
        warehouse_dialect="redshift",
        warehouse_dsn=dsn,
        opensearch_url=_https_url(env, "ETL_OPENSEARCH_URL"),
        dagster_url=env.get("ETL_DAGSTER_URL", ""),
        redshift_iam_role=role,
        alert_webhook_url=webhook,
        sns_topic_arn=env.get("ETL_ALERT_SNS_TOPIC_ARN") or None,
        lease_table=env.get("ETL_LEASE_TABLE", "etl-platform-leases"),
        kafka_bootstrap=env.get("ETL_KAFKA_BOOTSTRAP") or None,
        tls=True,
        native_metrics=env_flag(env, "ETL_NATIVE_METRICS", True),
        **_observability(env, "aws"),
    )
