"""The one place that maps a deployment profile (local | aws) and the environment to Dagster resources.

Every setting the Dagster layer uses is a field of one of these resources (the UI's resource page
shows them); assets, sensors, jobs and hooks read nothing from the environment themselves.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Collection, Mapping
from typing import Any

from dagster import EnvVar
from dagster_aws.s3 import S3Resource

from etl_platform.analytics import AnalyticsConfig
from etl_platform.config import ConfigError, Settings, env_number, load_settings
from etl_platform.ops.alarms import DEFAULT_PATH as DEFAULT_ALARMS_FILE
from etl_platform.ops.scaling import ScalingPolicy
from etl_platform.ops.tracing import TraceConfig
from etl_platform.pipelines import Pipelines, load_pipelines
from etl_platform.search.indexer import IndexerConfig, prefix_from_env
from etl_platform.stream.consumer import ConsumerConfig
from etl_platform.warehouse import default_drift_policy, default_schema
from resources.platform import (
    AlertsResource,
    AnalyticsResource,
    CloudWatchResource,
    KafkaResource,
    KinesisResource,
    LakeResource,
    LeaseTableResource,
    OpenSearchResource,
    ScalingResource,
    SNSResource,
    TracingResource,
    WarehouseResource,
)

__all__ = [
    "build_resources",
    "deployment_pipelines",
    "AlertsResource",
    "AnalyticsResource",
    "CloudWatchResource",
    "KafkaResource",
    "KinesisResource",
    "LakeResource",
    "LeaseTableResource",
    "OpenSearchResource",
    "SNSResource",
    "ScalingResource",
    "TracingResource",
    "WarehouseResource",
]


def build_resources(
    settings: Settings | None = None, env: Mapping[str, str] | None = None, only: Collection[str] | None = None
) -> dict[str, Any]:
    """The resources for `settings` (default: the environment's profile), with the tuning read from `env`
    (default: the process environment): ETL_BATCH_*/BUFFER_*, analytics, search, warehouse, scaling, alarms.

    `only` names the resources a code location needs (default: all of them)."""
    env = os.environ if env is None else env
    settings = settings or load_settings(env)
    aws = {"region_name": settings.aws_region, "use_ssl": settings.tls, **settings.local_credentials}
    s3 = S3Resource(endpoint_url=settings.s3_endpoint, **aws)
    consumer = ConsumerConfig.from_env(env, profile=settings.profile)
    analytics = AnalyticsResource(**_fields(AnalyticsConfig.from_env(env), "avg_rows", "baseline_rows", "sigmas"))
    indexer = IndexerConfig.from_env(env)
    search = {
        "index_prefix": prefix_from_env(env),
        "bulk_bytes": indexer.max_bulk_bytes,
        "max_wait_s": indexer.max_total_wait_s,
        "concurrency": indexer.concurrency,
    }
    budget_s = env_number(env, "ETL_WORKER_BUDGET_S", 600.0, float, 1)
    # Unset, the lead shrinks with a short budget (a third of it); set, it must fit in the budget.
    default_lead_s = min(20.0 if settings.profile == "local" else 120.0, budget_s / 3)
    lead_s = env_number(env, "ETL_HANDOVER_LEAD_S", default_lead_s, float, 0)
    if lead_s >= budget_s:
        raise ConfigError(f"ETL_HANDOVER_LEAD_S={lead_s:g} must be below ETL_WORKER_BUDGET_S={budget_s:g}")
    loads = {"schema_name": default_schema(env), "on_drift": default_drift_policy(env)}
    if settings.profile == "aws":
        warehouse = WarehouseResource(
            dialect="redshift",
            dsn=settings.warehouse_dsn,
            password=EnvVar("ETL_REDSHIFT_PASSWORD"),
            iam_role=settings.redshift_iam_role,
            **loads,
        )
        opensearch = OpenSearchResource(
            url=settings.opensearch_url,
            username=EnvVar("ETL_OPENSEARCH_USERNAME"),
            password=EnvVar("ETL_OPENSEARCH_PASSWORD"),
            verify_certs=True,
            **search,
        )
    else:
        warehouse = WarehouseResource(dialect="postgres", dsn=settings.warehouse_dsn, **loads)
        opensearch = OpenSearchResource(url=settings.opensearch_url, verify_certs=False, **search)
    leases = LeaseTableResource(endpoint_url=settings.dynamodb_endpoint, table_name=settings.lease_table, **aws)
    tracing = TracingResource.from_config(TraceConfig.from_settings(settings))
    kafka = KafkaResource(
        bootstrap_servers=settings.kafka_bootstrap, iam_auth=settings.profile == "aws", region_name=settings.aws_region
    )
    resources: dict[str, Any] = {
        "kinesis": KinesisResource(
            stream_name=settings.stream_name,
            endpoint_url=settings.kinesis_endpoint,
            analytics=analytics,
            **_fields(
                consumer, "max_records", "buffer_bytes", "buffer_interval_s", "lease_duration_s", "poll_interval_s"
            ),
            worker_budget_s=budget_s,
            handover_lead_s=lead_s,
            shards_per_worker=env_number(env, "ETL_SHARDS_PER_WORKER", 2 if settings.profile == "local" else 1, int, 1),
            tracing=tracing,
            **aws,
        ),
        "analytics": analytics,
        "tracing": tracing,
        "leases": leases,
        "kafka": kafka,
        "s3": s3,
        "lake": LakeResource(bucket=settings.lake_bucket, s3=s3, stream_name=settings.stream_name, leases=leases),
        "warehouse": warehouse,
        "opensearch": opensearch,
        "cloudwatch": CloudWatchResource(
            endpoint_url=settings.cloudwatch_endpoint,
            alarms_file=str(env.get("ETL_ALARMS_FILE") or DEFAULT_ALARMS_FILE),
            native_metrics=settings.native_metrics,
            evaluated_by="cloudwatch" if settings.profile == "aws" else "sensor",
            **aws,
        ),
        "alerts": AlertsResource(
            alert_webhook_url=settings.alert_webhook_url,
            sns_topic_arn=settings.sns_topic_arn,
            sns=SNSResource(endpoint_url=settings.sns_endpoint, **aws),
        ),
        "scaling": ScalingResource.from_policy(ScalingPolicy.from_env(env)),
    }
    if only is None or "dbt" in only:
        # Imported here: dagster-dbt and dbt-core are most of a code location's import time, and the
        # stream workers' location, which starts a process per worker, never runs dbt.
        from resources.dbt import dbt_resource, dbt_target

        resources["dbt"] = dbt_resource(dbt_target(settings.profile, env))
    if only is None:
        return resources
    unknown = sorted(set(only) - set(resources))
    if unknown:
        raise ValueError(f"unknown resources: {', '.join(unknown)}")
    return {name: resources[name] for name in only}


@functools.cache
def deployment_pipelines() -> Pipelines:
    """The deployment's pipelines (ETL_PIPELINES_FILE, default config/pipelines.yaml), loaded once per
    process: the asset graph, the workers and their supervisors are built from them at code-location
    load, which fails there naming any bad setting."""
    return load_pipelines(load_settings())


def _fields(config: Any, *names: str) -> dict[str, Any]:
    return {name: getattr(config, name) for name in names}
