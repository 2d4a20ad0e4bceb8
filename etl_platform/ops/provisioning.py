"""Create the stream and the lake bucket the platform writes to (idempotent; run by `stack up`)."""

from __future__ import annotations

import time
from typing import Any

DEFAULT_SHARDS = 2


def ensure_stream(kinesis: Any, stream_name: str, shards: int = DEFAULT_SHARDS, timeout_s: float = 30) -> None:
    """Create the stream if absent and wait until it is ACTIVE."""
    try:
        kinesis.create_stream(StreamName=stream_name, ShardCount=shards)
    except kinesis.exceptions.ResourceInUseException:
        pass
    deadline = time.monotonic() + timeout_s
    while True:
        status = kinesis.describe_stream_summary(StreamName=stream_name)["StreamDescriptionSummary"]["StreamStatus"]
        if status == "ACTIVE":
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"stream {stream_name} still {status} after {timeout_s}s")
        time.sleep(0.1)


def ensure_topic(admin: Any, topic: str, partitions: int = DEFAULT_SHARDS, retention_hours: int | None = None) -> None:
    """Create the Kafka topic if absent, with the broker's append time as each message's timestamp
    (the record's arrival, as Kinesis' ApproximateArrivalTimestamp); an existing topic is left as it is."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import NewTopic  # pyright: ignore[reportPrivateImportUsage]

    if topic in admin.list_topics(timeout=10).topics:
        return
    config = {"message.timestamp.type": "LogAppendTime"}
    if retention_hours:
        config["retention.ms"] = str(retention_hours * 3_600_000)
    try:
        admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=-1, config=config)])[
            topic
        ].result(30)
    except KafkaException as exc:
        if "TOPIC_ALREADY_EXISTS" not in str(exc):
            raise


def ensure_bucket(s3: Any, bucket: str, region: str) -> None:
    """Create the lake bucket if absent, with public access blocked."""
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    if bucket not in existing:
        kwargs: dict[str, Any] = {"Bucket": bucket}
        if region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        s3.create_bucket(**kwargs)
    s3.put_public_access_block(
        Bucket=bucket,
        PublicAccessBlockConfiguration={
            "BlockPublicAcls": True,
            "IgnorePublicAcls": True,
            "BlockPublicPolicy": True,
            "RestrictPublicBuckets": True,
        },
    )
