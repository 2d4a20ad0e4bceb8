"""A pipeline's source and producer for the deployment, whatever its kind (Kinesis stream or Kafka topic).

The one place that picks the client: the CLI, the re-drive of dead letters and the benchmarks ask
here; the Dagster layer builds the same objects from its resources.
"""

from __future__ import annotations

from typing import Any

from etl_platform import aws
from etl_platform.config import Settings
from etl_platform.pipelines import Pipeline
from etl_platform.stream.kafka import KafkaProducer, KafkaSource, kafka_config
from etl_platform.stream.producer import KinesisProducer
from etl_platform.stream.reader import KinesisSource, Source


def stream_source(pipeline: Pipeline, settings: Settings, kinesis: Any = None) -> Source:
    """Where the pipeline's consumer reads its shards (`kinesis`: a client to reuse)."""
    if pipeline.stream.kind == "kafka":
        return KafkaSource(kafka_config(settings), pipeline.stream.name, group_id=f"etl-platform.{pipeline.name}")
    return KinesisSource(kinesis or aws.client("kinesis", settings), pipeline.stream.name)


def stream_producer(
    pipeline: Pipeline, settings: Settings, stream: str | None = None, **kwargs: Any
) -> KinesisProducer:
    """A producer to the pipeline's source (or `stream`, a name of the same kind), keyed by its first key."""
    kwargs.setdefault("partition_key_field", pipeline.contract.keys[0])
    name = stream or pipeline.stream.name
    if pipeline.stream.kind == "kafka":
        return KafkaProducer(kafka_config(settings), name, **kwargs)
    return KinesisProducer(aws.client("kinesis", settings), name, **kwargs)
