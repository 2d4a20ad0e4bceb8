"""build_resources: the one place settings and the environment become Dagster resources (no servers)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from dagster import EnvVar

from etl_platform.config import ConfigError, load_settings
from etl_platform.ops.alerts import LogSink, WebhookSink
from etl_platform.ops.tracing import BatchTracer
from resources import OpenSearchResource, ScalingResource, TracingResource, WarehouseResource, build_resources
from tests.unit.test_config import AWS_ENV

REPO = Path(__file__).resolve().parents[2]


def test_local_defaults():
    r = build_resources(load_settings({}), env={})
    kinesis = r["kinesis"]
    assert (kinesis.stream_name, kinesis.endpoint_url, kinesis.region_name) == (
        "etl-events",
        "http://127.0.0.1:4568",
        "us-east-1",
    )
    assert kinesis.consumer_config().buffer_interval_s == 10.0  # the local profile flushes every 10 s
    assert kinesis.consumer_config().analytics == r["analytics"].config()
    assert (r["warehouse"].schema_name, r["warehouse"].on_drift) == ("etl", "fail")
    assert r["opensearch"].index_prefix == ""
    assert r["cloudwatch"].endpoint_url == r["alerts"].sns.endpoint_url == "http://127.0.0.1:5050"
    assert Path(r["cloudwatch"].alarms_file) == REPO / "config" / "alarms.yaml"
    assert r["alerts"].alert_webhook_url is None and r["alerts"].sns_topic_arn is None
    assert [type(s) for s in r["alerts"].sinks(log=print)] == [LogSink]
    assert r["scaling"].policy().target_utilization == 0.7


def test_the_environment_maps_to_resource_fields():
    env = {
        "ETL_BATCH_MAX_RECORDS": "500",
        "ETL_BUFFER_BYTES": "65536",
        "ETL_BUFFER_INTERVAL_S": "0",
        "ETL_AVG_ROWS": "4",
        "ETL_BASELINE_ROWS": "20",
        "ETL_ANOMALY_SIGMAS": "2.5",
        "ETL_OPENSEARCH_INDEX_PREFIX": "blue-",
        "ETL_SEARCH_BULK_BYTES": "2048",
        "ETL_SEARCH_MAX_WAIT_S": "5",
        "ETL_SEARCH_CONCURRENCY": "4",
        "ETL_WAREHOUSE_SCHEMA": "etl_blue",
        "ETL_WAREHOUSE_ON_DRIFT": "add",
        "ETL_ALERT_WEBHOOK_URL": "http://127.0.0.1:9/alerts",
        "ETL_ALARMS_FILE": "/etc/etl/alarms.yaml",
        "ETL_SCALING_MAX_SHARDS": "8",
        "ETL_SCALING_MISSING_DATA": "zero",
        "DBT_TARGET": "redshift",
    }
    r = build_resources(load_settings(env), env=env)
    config = r["kinesis"].consumer_config()
    assert (config.max_records, config.buffer_bytes, config.buffer_interval_s) == (500, 65536, 0.0)
    assert (config.analytics.avg_rows, config.analytics.baseline_rows, config.analytics.sigmas) == (4, 20, 2.5)
    search = r["opensearch"]
    assert search.index_prefix == "blue-"
    indexer = search.indexer_config()
    assert (indexer.max_bulk_bytes, indexer.max_total_wait_s, indexer.concurrency) == (2048, 5.0, 4)
    assert (r["warehouse"].schema_name, r["warehouse"].on_drift) == ("etl_blue", "add")
    assert r["cloudwatch"].alarms_file == "/etc/etl/alarms.yaml"
    assert [type(s) for s in r["alerts"].sinks(log=print)] == [LogSink, WebhookSink]
    policy = r["scaling"].policy()
    assert (policy.max_shards, policy.missing_data, policy.min_shards) == (8, "zero", 1)
    assert r["dbt"].target == "redshift"


def test_aws_profile_uses_the_default_chain_and_secrets_from_env_vars():
    r = build_resources(load_settings(AWS_ENV), env=AWS_ENV)
    for key in ("kinesis", "s3", "cloudwatch"):
        assert r[key].endpoint_url is None and r[key].aws_access_key_id is None and r[key].region_name == "eu-west-1"
    assert r["kinesis"].buffer_interval_s == 300  # Firehose's default
    assert r["warehouse"].dialect == "redshift" and r["dbt"].target == "redshift"
    # Secrets stay EnvVars: resolved when a run starts, never in the definitions or the UI.
    assert isinstance(r["warehouse"].password, EnvVar) and isinstance(r["opensearch"].password, EnvVar)


def test_a_malformed_setting_fails_at_load_naming_it():
    with pytest.raises(ConfigError, match="ETL_BUFFER_INTERVAL_S"):
        build_resources(load_settings({}), env={"ETL_BUFFER_INTERVAL_S": "soon"})
    with pytest.raises(ConfigError, match="max_shards"):
        build_resources(load_settings({}), env={"ETL_SCALING_MAX_SHARDS": "0"})
    with pytest.raises(ValueError, match="ETL_WAREHOUSE_SCHEMA"):
        build_resources(load_settings({}), env={"ETL_WAREHOUSE_SCHEMA": "Etl-Blue"})
    with pytest.raises(ConfigError, match="ETL_HANDOVER_LEAD_S=30 must be below ETL_WORKER_BUDGET_S=30"):
        build_resources(load_settings({}), env={"ETL_HANDOVER_LEAD_S": "30", "ETL_WORKER_BUDGET_S": "30"})
    # Unset, the lead fits a short budget by itself (as the UI tour's 8 s budget needs).
    assert build_resources(load_settings({}), env={"ETL_WORKER_BUDGET_S": "8"})["kinesis"].handover_lead_s == 8 / 3


def test_the_workers_traces_follow_the_profile():
    local = build_resources(load_settings({}), env={})
    assert (local["tracing"].exporter, local["tracing"].file_path, local["tracing"].xray_ids) == ("file", None, False)
    assert local["kinesis"].tracing == local["tracing"]  # the workers' consumers get it with the stream
    aws = build_resources(load_settings(AWS_ENV), env=AWS_ENV)["kinesis"].tracing
    assert aws is not None and (aws.exporter, aws.otlp_endpoint, aws.xray_ids) == (
        "otlp",
        "http://localhost:4318",
        True,
    )
    off = build_resources(load_settings({"ETL_TRACE_EXPORTER": "none"}), env={})["tracing"]
    assert off.batch_tracer("default", "etl-events") is None
    with pytest.raises(ValueError, match="exporter='zipkin'"):
        TracingResource(exporter="zipkin")


def test_a_workers_consumer_traces_its_batches_with_the_runs_attributes():
    from sensors.kinesis import consumer_for

    r = build_resources(load_settings({}), env={}, only=("kinesis", "kafka", "lake", "leases"))
    consumer = consumer_for(r["kinesis"], r["kafka"], r["lake"], r["leases"], run_id="run-1", job_name="worker_job")
    hook = consumer.trace_batch
    assert isinstance(hook, BatchTracer)
    assert (hook.pipeline, hook.stream) == ("default", "etl-events")
    assert hook.attributes == {"dagster.run_id": "run-1", "dagster.job_name": "worker_job"}
    unnamed = consumer_for(r["kinesis"], r["kafka"], r["lake"], r["leases"]).trace_batch
    assert isinstance(unnamed, BatchTracer) and unnamed.attributes == {}  # outside a run: no run attributes


def test_resource_fields_are_validated_naming_the_field():
    with pytest.raises(ValueError, match="schema_name 'Etl'"):
        WarehouseResource(dialect="postgres", dsn="postgresql://x/y", schema_name="Etl")
    with pytest.raises(ValueError, match="on_drift='ignore'"):
        WarehouseResource(dialect="postgres", dsn="postgresql://x/y", on_drift="ignore")
    with pytest.raises(ValueError, match="index prefix 'Blue'"):
        OpenSearchResource(url="http://127.0.0.1:9200", index_prefix="Blue")


def test_the_scaling_jobs_run_config_overrides_the_resource_defaults():
    scaling = ScalingResource(min_shards=2, max_shards=16, cooldown_s=60)
    policy = scaling.policy(max_shards=None, cooldown_s=0.0, window_minutes=10, scale_in_window_minutes=None)
    assert (policy.min_shards, policy.max_shards, policy.cooldown_s, policy.window_minutes) == (2, 16, 0.0, 10)
    with pytest.raises(ConfigError, match="below min_shards"):
        scaling.policy(max_shards=1)


def test_assets_and_sensors_read_no_settings_themselves():
    """Settings and clients reach the Dagster layer through resources only (resources/__init__.py)."""
    forbidden = re.compile(
        r"load_settings|from_env|aws\.client|prefix_from_env|default_schema|default_drift_policy"
        r"|os\.environ|getenv"
    )
    sources = [path for folder in ("assets", "sensors") for path in (REPO / folder).rglob("*.py")]
    offenders = [
        f"{path.relative_to(REPO)}:{n}"
        for path in sources
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if forbidden.search(line)
    ]
    assert offenders == []
