"""Dagster resources: every setting and client the Dagster layer uses, as fields the UI's resource page shows.

`build_resources` (resources/__init__.py) fills them from the profile's settings and the environment;
assets, sensors, jobs and hooks take them as parameters and hand etl_platform the clients, names and
config objects it needs. Nothing under assets/ or sensors/ reads a setting any other way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import boto3
from dagster import ConfigurableResource, EnvVar
from dagster_aws.s3 import S3Resource
from dagster_aws.utils import ResourceWithBoto3Configuration, construct_boto_client_retry_config
from pydantic import Field, field_validator

from etl_platform.analytics import AnalyticsConfig
from etl_platform.config import DEFAULT_OTLP_ENDPOINT, TRACE_EXPORTERS, ConfigError
from etl_platform.lake.visibility import PendingObjects
from etl_platform.ops.alarms import Alarm, load_alarms
from etl_platform.ops.alerts import Sink, build_sinks
from etl_platform.ops.scaling import ScalingPolicy
from etl_platform.ops.tracing import BatchTracer, TraceConfig, batch_tracer
from etl_platform.pipelines import Pipeline
from etl_platform.search.bulk import IndexerConfig, IndexStats
from etl_platform.search.indexer import search_sink
from etl_platform.search.indices import check_prefix, contract_properties
from etl_platform.stream.consumer import FIREHOSE_BUFFER_BYTES, FIREHOSE_BUFFER_INTERVAL_S, ConsumerConfig
from etl_platform.stream.kafka import kafka_client_config
from etl_platform.stream.leases import LeaseTable
from etl_platform.warehouse import DEFAULT_SCHEMA, Warehouse, connect, table_layout
from etl_platform.warehouse.schema import DEFAULT_DRIFT_POLICY, check_policy, validate_identifier


def _check_literal(value: Any, check: Callable[[str], str]) -> Any:
    """Validate a string field's value as given; an EnvVar is checked when Dagster resolves it at run time
    (the resource is then built again from the value)."""
    return check(value) if isinstance(value, str) and not isinstance(value, EnvVar) else value


class Boto3ClientResource(ResourceWithBoto3Configuration):
    """A boto3 client of one AWS service, configured like dagster-aws's S3Resource (region, endpoint,
    retries, static keys for the local emulators only; in AWS the default credential chain)."""

    def _client(self, service: str) -> Any:
        session = boto3.Session(profile_name=self.profile_name)
        return session.client(
            service,
            region_name=self.region_name,
            endpoint_url=self.endpoint_url,
            use_ssl=self.use_ssl,
            verify=self.verify,
            aws_access_key_id=self.aws_access_key_id,
            aws_secret_access_key=self.aws_secret_access_key,
            aws_session_token=self.aws_session_token,
            config=construct_boto_client_retry_config(self.max_attempts),
        )


class AnalyticsResource(ConfigurableResource):
    """The stream analytics' windows and threshold (ETL_AVG_ROWS, ETL_BASELINE_ROWS, ETL_ANOMALY_SIGMAS)."""

    avg_rows: int = Field(default=AnalyticsConfig.avg_rows, description="rows before the current one in avg_value")
    baseline_rows: int = Field(default=AnalyticsConfig.baseline_rows, description="baseline rows of the anomaly test")
    sigmas: float = Field(default=AnalyticsConfig.sigmas, description="anomaly threshold in standard deviations")

    def config(self) -> AnalyticsConfig:
        return AnalyticsConfig(avg_rows=self.avg_rows, baseline_rows=self.baseline_rows, sigmas=self.sigmas)


class TracingResource(ConfigurableResource):
    """Where the shard workers' micro-batch traces go (etl_platform.ops.tracing)."""

    exporter: str = Field(
        default="none", description="none | file (JSON lines) | otlp (the ADOT collector) (ETL_TRACE_EXPORTER)"
    )
    file_path: str | None = Field(
        default=None, description="the file exporter's path (ETL_TRACE_FILE; default .stack/traces/spans.jsonl)"
    )
    otlp_endpoint: str = Field(
        default=DEFAULT_OTLP_ENDPOINT, description="OTLP/HTTP base URL of the collector (OTEL_EXPORTER_OTLP_ENDPOINT)"
    )
    xray_ids: bool = Field(default=False, description="X-Ray-compatible trace ids (the aws profile)")

    @field_validator("exporter", mode="before")
    @classmethod
    def _known_exporter(cls, value: Any) -> Any:
        def check(exporter: str) -> str:
            if exporter not in TRACE_EXPORTERS:
                raise ConfigError(f"exporter={exporter!r} is not one of {', '.join(TRACE_EXPORTERS)}")
            return exporter

        return _check_literal(value, check)

    @classmethod
    def from_config(cls, config: TraceConfig) -> TracingResource:
        return cls(
            exporter=config.exporter,
            file_path=config.file,
            otlp_endpoint=config.otlp_endpoint,
            xray_ids=config.xray_ids,
        )

    def config(self) -> TraceConfig:
        return TraceConfig(self.exporter, self.file_path, self.otlp_endpoint, self.xray_ids)

    def batch_tracer(
        self, pipeline: str, stream: str, attributes: dict[str, str | None] | None = None
    ) -> BatchTracer | None:
        """The consumer's `trace_batch` hook for a pipeline's stream, with these attributes on every batch's
        root span (None when tracing is off)."""
        return batch_tracer(self.config(), pipeline, stream, attributes)


class KinesisResource(Boto3ClientResource):
    """The event stream: its name, a Kinesis client, and how the micro-batch consumer reads it."""

    stream_name: str
    max_records: int = Field(default=10_000, description="records per micro-batch (ETL_BATCH_MAX_RECORDS)")
    buffer_bytes: int = Field(
        default=FIREHOSE_BUFFER_BYTES,
        description="max bytes per batch read and per delivered object (ETL_BUFFER_BYTES)",
    )
    buffer_interval_s: float = Field(
        default=FIREHOSE_BUFFER_INTERVAL_S,
        description="a shard's next batch is "
        "launched at most this often unless its buffer is full (ETL_BUFFER_INTERVAL_S)",
    )
    analytics: AnalyticsResource
    lease_duration_s: float = Field(
        default=10.0, description="a dead worker's shard is taken over within this long (ETL_LEASE_DURATION_S)"
    )
    poll_interval_s: float = Field(
        default=1.0, description="a caught-up worker reads its shard this often (ETL_POLL_INTERVAL_S)"
    )
    shards_per_worker: int = Field(
        default=1,
        description="shards one worker run owns (ETL_SHARDS_PER_WORKER; "
        "local default 2: one process serves a 2-shard stream)",
    )
    worker_budget_s: float = Field(
        default=600.0,
        description="a shard worker run hands its shard over after "
        "this long; the sensor starts the next (ETL_WORKER_BUDGET_S)",
    )
    handover_lead_s: float = Field(
        default=20.0,
        description="the sensor starts a worker's successor this long before its budget ends, so it "
        "waits for the lease instead of the shard waiting for a run to start (ETL_HANDOVER_LEAD_S; "
        "local default 20, aws 120: an ECS task takes 30-60 s to start)",
    )
    # The consumers' batch traces; None: not traced.
    tracing: TracingResource | None = None

    def client(self) -> Any:
        return self._client("kinesis")

    def consumer_config(self) -> ConsumerConfig:
        return ConsumerConfig(
            max_records=self.max_records,
            buffer_bytes=self.buffer_bytes,
            buffer_interval_s=self.buffer_interval_s,
            analytics=self.analytics.config(),
            lease_duration_s=self.lease_duration_s,
            poll_interval_s=self.poll_interval_s,
        )


class KafkaResource(ConfigurableResource):
    """The Kafka brokers Kafka pipelines read (Amazon MSK in the aws profile: TLS and IAM authentication)."""

    bootstrap_servers: str | None = Field(
        default=None, description="host:port[,host:port] (ETL_KAFKA_BOOTSTRAP; locally the stack's broker)"
    )
    iam_auth: bool = Field(default=False, description="MSK IAM authentication over TLS (the aws profile)")
    region_name: str | None = Field(default=None, description="the region MSK IAM tokens are signed for")

    def config(self) -> dict[str, Any]:
        """librdkafka settings for the brokers (ConfigError when none is configured)."""
        return kafka_client_config(self.bootstrap_servers, self.iam_auth, self.region_name)


class LeaseTableResource(Boto3ClientResource):
    """The consumers' lease table (DynamoDB): one owner per shard, fenced commits, checkpoints."""

    table_name: str = Field(description="the lease table (ETL_LEASE_TABLE)")

    def table(self, stream_name: str) -> LeaseTable:
        return LeaseTable(self._client("dynamodb"), self.table_name, stream_name)


class CloudWatchResource(Boto3ClientResource):
    """CloudWatch: where every stage publishes its metrics, and the alarms evaluated against them."""

    alarms_file: str = Field(description="the alarm definitions (ETL_ALARMS_FILE, default config/alarms.yaml)")
    native_metrics: bool = Field(
        default=False, description="read what Kinesis measures from AWS/Kinesis (aws profile: ETL_NATIVE_METRICS)"
    )
    evaluated_by: str = Field(
        default="sensor",
        description="who evaluates the alarms: `sensor` (locally: the alarm sensor, from raw statistics) or "
        "`cloudwatch` (aws profile: CloudWatch does, and its actions notify SNS; the sensor relays states)",
    )

    def client(self) -> Any:
        return self._client("cloudwatch")

    def alarms(self) -> list[Alarm]:
        return load_alarms(self.alarms_file)


class SNSResource(Boto3ClientResource):
    """An SNS client (the alert topic's)."""

    def client(self) -> Any:
        return self._client("sns")


class AlertsResource(ConfigurableResource):
    """Where alerts go besides the Dagster log: a webhook and (aws profile) an SNS topic."""

    alert_webhook_url: str | None = Field(default=None, description="JSON POST, retried (ETL_ALERT_WEBHOOK_URL)")
    sns_topic_arn: str | None = Field(default=None, description="SNS topic (ETL_ALERT_SNS_TOPIC_ARN)")
    sns: SNSResource

    def sinks(self, log: Callable[[str], None], webhook_kwargs: dict[str, Any] | None = None) -> list[Sink]:
        """The log sink always; the webhook and SNS when configured (an SNS client only then)."""
        sns = self.sns.client() if self.sns_topic_arn else None
        return build_sinks(self, log=log, sns=sns, webhook_kwargs=webhook_kwargs)


class LakeResource(ConfigurableResource):
    """The S3 data lake: bucket plus the dagster-aws S3 resource that reaches it, and the stream's lease
    table, which knows the objects of flushes not yet committed (readers skip them)."""

    bucket: str
    s3: S3Resource
    stream_name: str | None = Field(default=None, description="the stream whose consumers write the lake")
    leases: LeaseTableResource | None = None

    def client(self) -> Any:
        return self.s3.get_client()

    def pending_objects(self, stream_name: str | None = None) -> PendingObjects | None:
        """What lake readers pass as `pending` for the lake datasets of `stream_name`'s pipeline (default:
        this resource's stream, the default pipeline's); None without a lease table: every object is read."""
        stream_name = stream_name or self.stream_name
        if self.leases is None or stream_name is None:
            return None
        return self.leases.table(stream_name).pending_objects


class WarehouseResource(ConfigurableResource):
    """Redshift in production, PostgreSQL locally (two dialects behind one interface: etl_platform.warehouse)."""

    dialect: str = Field(description="postgres | redshift")
    dsn: str = Field(description="libpq URI (postgres) or redshift://user@host:port/db")
    password: str | None = Field(default=None, description="from an EnvVar; never committed")
    iam_role: str | None = Field(default=None, description="Redshift COPY role ARN")
    schema_name: str = Field(
        default=DEFAULT_SCHEMA, description="schema of the events and anomalies tables (ETL_WAREHOUSE_SCHEMA)"
    )
    on_drift: str = Field(
        default=DEFAULT_DRIFT_POLICY,
        description="processed data has a column the table lacks: "
        "'fail' or 'add' (ETL_WAREHOUSE_ON_DRIFT); a load's run config may override it",
    )

    @field_validator("schema_name", mode="before")
    @classmethod
    def _schema_is_an_identifier(cls, value: Any) -> Any:
        return _check_literal(value, lambda v: validate_identifier(v, "schema_name"))

    @field_validator("on_drift", mode="before")
    @classmethod
    def _known_drift_policy(cls, value: Any) -> Any:
        return _check_literal(value, check_policy)

    def schema_for(self, pipeline: Pipeline | None = None) -> str:
        """The pipeline's schema: the default pipeline's is this resource's `schema_name`."""
        return self.schema_name if pipeline is None or pipeline.is_default else pipeline.warehouse_schema

    def open(self, pipeline: Pipeline | None = None) -> Warehouse:
        """A connected etl_platform warehouse for this dialect and the pipeline's schema and tables
        (default: the default pipeline's), as a context manager."""
        if pipeline is None:
            return connect(
                self.dialect, self.dsn, schema=self.schema_name, password=self.password, iam_role=self.iam_role
            )
        return connect(
            self.dialect,
            self.dsn,
            schema=self.schema_for(pipeline),
            password=self.password,
            iam_role=self.iam_role,
            layout=table_layout(pipeline.contract),
            lake_root=pipeline.lake_root,
        )


class OpenSearchResource(ConfigurableResource):
    """The search cluster, the index prefix of this deployment, and how bulk indexing is tuned."""

    url: str
    username: str | None = None
    password: str | None = None
    verify_certs: bool = True
    index_prefix: str = Field(
        default="", description="prefix of every index, alias and template (ETL_OPENSEARCH_INDEX_PREFIX)"
    )
    bulk_bytes: int = Field(
        default=IndexerConfig.max_bulk_bytes, description="bytes per bulk request (ETL_SEARCH_BULK_BYTES)"
    )
    max_wait_s: float = Field(
        default=IndexerConfig.max_total_wait_s,
        description="all retry sleeping in one indexing call (ETL_SEARCH_MAX_WAIT_S)",
    )
    concurrency: int = Field(
        default=IndexerConfig.concurrency, description="bulk requests in flight (ETL_SEARCH_CONCURRENCY)"
    )

    @field_validator("index_prefix", mode="before")
    @classmethod
    def _valid_prefix(cls, value: Any) -> Any:
        return _check_literal(value, check_prefix)

    def client(self) -> Any:
        from opensearchpy import OpenSearch

        auth = (self.username, self.password) if self.username else None
        return OpenSearch(
            hosts=[self.url],
            http_auth=auth,
            verify_certs=self.verify_certs and self.url.startswith("https"),
            timeout=30,
            max_retries=3,
            retry_on_timeout=True,
        )

    def indexer_config(self) -> IndexerConfig:
        return IndexerConfig(
            max_bulk_bytes=self.bulk_bytes, max_total_wait_s=self.max_wait_s, concurrency=self.concurrency
        )

    def prefix_for(self, pipeline: Pipeline | None = None) -> str:
        """The pipeline's index prefix: this resource's, then the pipeline's own part (`seed-`)."""
        return self.index_prefix + (pipeline.own_index_prefix if pipeline is not None else "")

    def properties_for(self, pipeline: Pipeline | None = None) -> dict[str, Any] | None:
        """The pipeline's document mapping (None: the default pipeline's)."""
        return contract_properties(pipeline.contract) if pipeline is not None else None

    def search_sink(self, s3: Any, bucket: str, pipeline: Pipeline | None = None) -> Callable[[Any], IndexStats]:
        """The consumer's near-real-time indexing step (failed documents are backed up to the lake)."""
        return search_sink(self.client(), s3, bucket, self.prefix_for(pipeline), self.indexer_config(), pipeline)


class ScalingResource(ConfigurableResource):
    """The shard-scaling policy's defaults (ETL_SCALING_*); the scaling job's run config overrides them."""

    target_utilization: float = Field(
        default=ScalingPolicy.target_utilization, description="fraction of the per-shard write limits to aim for"
    )
    min_shards: int = ScalingPolicy.min_shards
    max_shards: int = ScalingPolicy.max_shards
    cooldown_s: float = Field(default=ScalingPolicy.cooldown_s, description="no scaling within this long of the last")
    max_scalings_per_day: int = Field(
        default=ScalingPolicy.max_scalings_per_day, description="scalings per rolling 24 h (UpdateShardCount allows 10)"
    )
    window_minutes: int = Field(default=ScalingPolicy.window_minutes, description="load window for scale-out")
    missing_data: str = Field(default=ScalingPolicy.missing_data, description="no datapoints: hold | zero")
    scale_in_headroom: float = Field(
        default=ScalingPolicy.scale_in_headroom, description="scale in only to a count running at <= target - headroom"
    )
    scale_in_window_minutes: int = Field(
        default=ScalingPolicy.scale_in_window_minutes,
        description="scale-in must fit the busiest window of this look-back",
    )
    scale_out_reserve: int = Field(
        default=ScalingPolicy.scale_out_reserve, description="daily scalings scale-in may not use"
    )

    @classmethod
    def from_policy(cls, policy: ScalingPolicy) -> ScalingResource:
        return cls(**dataclasses.asdict(policy))

    def policy(self, **overrides: Any) -> ScalingPolicy:
        """The policy with these defaults, then the non-None overrides (validated: ConfigError names the field)."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(ScalingPolicy)}
        return ScalingPolicy(**{**values, **{k: v for k, v in overrides.items() if v is not None}})
