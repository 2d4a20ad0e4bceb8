"""Profiles: local defaults, aws from the environment, and start-up errors that name the setting."""

from __future__ import annotations

import pytest

from etl_platform.config import ConfigError, load_settings

AWS_ENV = {
    "ETL_PROFILE": "aws",
    "AWS_REGION": "eu-west-1",
    "ETL_STREAM_NAME": "events",
    "ETL_LAKE_BUCKET": "acme-lake",
    "ETL_REDSHIFT_HOST": "wh.example.internal",
    "ETL_REDSHIFT_USER": "etl",
    "ETL_REDSHIFT_DATABASE": "analytics",
    "ETL_REDSHIFT_IAM_ROLE": "arn:aws:iam::123456789012:role/etl-loader",
    "ETL_OPENSEARCH_URL": "https://search.example.internal",
    "ETL_KAFKA_BOOTSTRAP": "b-1.msk.example.internal:9098,b-2.msk.example.internal:9098",
}


def test_local_profile_is_the_default_and_points_at_loopback():
    s = load_settings({})
    assert s.profile == "local"
    assert s.kinesis_endpoint == "http://127.0.0.1:4568"
    assert s.s3_endpoint == "http://127.0.0.1:5050"
    assert s.warehouse_dsn == "postgresql://postgres@127.0.0.1:5439/warehouse"
    assert s.opensearch_url == "http://127.0.0.1:9200"
    assert s.warehouse_dialect == "postgres" and not s.tls


def test_local_ports_can_be_moved():
    s = load_settings({"ETL_KINESIS_PORT": "14568", "ETL_POSTGRES_PORT": "15439"})
    assert s.kinesis_endpoint == "http://127.0.0.1:14568"
    assert ":15439/" in s.warehouse_dsn


def test_aws_profile_reads_the_environment_with_tls():
    s = load_settings(AWS_ENV)
    assert s.profile == "aws" and s.tls
    assert s.kinesis_endpoint is None and s.s3_endpoint is None  # AWS's own endpoints
    assert s.warehouse_dialect == "redshift"
    assert s.warehouse_dsn == "redshift://etl@wh.example.internal:5439/analytics?sslmode=verify-full"
    assert s.local_credentials == {}  # the standard AWS chain, never static keys
    assert s.native_metrics  # alarms and the scaler read AWS/Kinesis
    assert not load_settings({**AWS_ENV, "ETL_NATIVE_METRICS": "false"}).native_metrics
    assert not load_settings({}).native_metrics  # kinesis-mock publishes no metrics


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"ETL_PROFILE": "prod"}, "ETL_PROFILE"),
        ({"ETL_KINESIS_PORT": "abc"}, "ETL_KINESIS_PORT"),
        ({**AWS_ENV, "ETL_LAKE_BUCKET": ""}, "ETL_LAKE_BUCKET"),
        ({k: v for k, v in AWS_ENV.items() if k != "AWS_REGION"}, "AWS_REGION"),
        ({**AWS_ENV, "ETL_OPENSEARCH_URL": "http://search.example.internal"}, "ETL_OPENSEARCH_URL"),
        ({**AWS_ENV, "ETL_REDSHIFT_IAM_ROLE": "loader"}, "ETL_REDSHIFT_IAM_ROLE"),
        ({k: v for k, v in AWS_ENV.items() if k != "ETL_REDSHIFT_HOST"}, "ETL_REDSHIFT_HOST"),
        ({**AWS_ENV, "ETL_NATIVE_METRICS": "sometimes"}, "ETL_NATIVE_METRICS"),
        ({"ETL_TRACE_EXPORTER": "jaeger"}, "ETL_TRACE_EXPORTER"),
        ({**AWS_ENV, "OTEL_EXPORTER_OTLP_ENDPOINT": "localhost:4318"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
        ({"ETL_LOG_FORMAT": "xml"}, "ETL_LOG_FORMAT"),
    ],
)
def test_bad_settings_fail_naming_the_setting(env, named):
    with pytest.raises(ConfigError, match=named):
        load_settings(env)


def test_traces_and_logs_per_profile():
    local, aws = load_settings({}), load_settings(AWS_ENV)
    # Locally: spans to a file, text logs; in AWS: spans to the collector sidecar, JSON logs (CloudWatch).
    assert (local.trace_exporter, local.trace_file, local.log_format) == ("file", None, "text")
    assert (aws.trace_exporter, aws.otlp_endpoint, aws.log_format) == ("otlp", "http://localhost:4318", "json")
    moved = load_settings({**AWS_ENV, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://adot:4318/", "ETL_LOG_FORMAT": "text"})
    assert (moved.otlp_endpoint, moved.log_format) == ("http://adot:4318", "text")
    off = load_settings({"ETL_TRACE_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "not a url"})
    assert off.trace_exporter == "none"  # the endpoint is only checked when it is used
    assert load_settings({"ETL_TRACE_FILE": "/tmp/spans.jsonl"}).trace_file == "/tmp/spans.jsonl"


def test_cli_reports_a_bad_setting_and_exits_2(monkeypatch, capsys):
    from etl_platform.cli.main import main

    monkeypatch.setenv("ETL_PROFILE", "staging")
    assert main(["stack", "status"]) == 2
    assert "ETL_PROFILE" in capsys.readouterr().err


def test_consumer_settings_fail_naming_the_variable():
    from etl_platform.stream.consumer import FIREHOSE_BUFFER_INTERVAL_S, ConsumerConfig

    assert ConsumerConfig.from_env({}, profile="aws").buffer_interval_s == FIREHOSE_BUFFER_INTERVAL_S
    assert ConsumerConfig.from_env({}, profile="local").buffer_interval_s == 10.0
    assert ConsumerConfig.from_env({"ETL_BATCH_MAX_RECORDS": "250"}).max_records == 250
    with pytest.raises(ConfigError, match="ETL_BATCH_MAX_RECORDS='lots' is not a int"):
        ConsumerConfig.from_env({"ETL_BATCH_MAX_RECORDS": "lots"})
    with pytest.raises(ConfigError, match="ETL_BASELINE_ROWS='1' must be at least 2"):
        ConsumerConfig.from_env({"ETL_BASELINE_ROWS": "1"})


def test_kafka_clients_use_msk_iam_over_tls_in_the_aws_profile_and_plaintext_locally():
    from etl_platform.stream.kafka import kafka_config

    local = kafka_config(load_settings({}))
    assert local == {"bootstrap.servers": "127.0.0.1:9092", "client.id": "etl-platform"}
    aws = kafka_config(load_settings(AWS_ENV))
    assert aws["bootstrap.servers"] == AWS_ENV["ETL_KAFKA_BOOTSTRAP"]
    assert (aws["security.protocol"], aws["sasl.mechanism"]) == ("SASL_SSL", "OAUTHBEARER")
    assert callable(aws["oauth_cb"])  # tokens from the MSK IAM SASL signer, refreshed by librdkafka


def test_a_kafka_pipeline_without_brokers_fails_start_up_naming_the_setting(tmp_path):
    from etl_platform.pipelines import load_pipelines

    env = {k: v for k, v in AWS_ENV.items() if k != "ETL_KAFKA_BOOTSTRAP"}
    with pytest.raises(ConfigError, match="pipelines.msk-events.stream: a Kafka topic needs ETL_KAFKA_BOOTSTRAP"):
        load_pipelines(load_settings(env), env)
