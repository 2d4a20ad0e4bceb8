"""The consumer on Kafka vs on Kinesis over the same events, and its Kafka reads vs a bare client loop.

    .venv/bin/python -m benchmarks.bench_kafka [--events 10000] [--partitions 4]

The same demo events are put on a fresh topic of the local broker (a plain confluent-kafka producer)
and on a fresh stream of the local Kinesis emulator with as many shards. Measured in the same run:

- the consumer (`StreamConsumer.drain`, what `consume --until-caught-up` runs: leases, decode,
  analytics, raw/processed/state in the local S3, commits; no search indexing) on each source;
- reading the topic with the consumer's partition readers alone vs a bare confluent-kafka loop
  (assign every partition from the start, `consume` until every event is in).

The last line is one JSON object with the ratios.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from benchmarks.common import local_settings, stack_benchmark
from etl_platform import aws
from etl_platform.ops.provisioning import ensure_bucket, ensure_stream, ensure_topic
from etl_platform.pipelines import load_pipelines
from etl_platform.stream.consumer import ConsumerConfig, StreamConsumer
from etl_platform.stream.kafka import KafkaSource, kafka_config
from etl_platform.stream.leases import LeaseTable, ensure_table
from etl_platform.stream.producer import KinesisProducer
from etl_platform.stream.reader import KinesisSource
from etl_platform.stream.sources import demo_mix


def drain(settings, source, name: str, bucket: str, pipeline) -> float:
    consumer = StreamConsumer(
        None,
        aws.client("s3", settings),
        bucket,
        name,
        LeaseTable(aws.client("dynamodb", settings), settings.lease_table, name),
        ConsumerConfig(),
        pipeline=pipeline,
        source=source,
    )
    started = time.perf_counter()
    events = sum(r.events for r in consumer.drain())
    return events / (time.perf_counter() - started)


def read_with_readers(source: KafkaSource, n: int) -> float:
    started, got = time.perf_counter(), 0
    for shard in source.list_shards():
        reader = source.reader(shard.shard_id, None)
        while True:
            read = reader.read(10_000, 50 * 1024 * 1024, 5)
            got += len(read.records)
            if not read.records and not read.cut:
                break
        reader.close()
    assert got == n, (got, n)
    return n / (time.perf_counter() - started)


def read_bare(config: dict, topic: str, partitions: int, n: int) -> float:
    consumer = Consumer({**config, "group.id": f"bare-{uuid.uuid4().hex[:6]}", "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    started, got = time.perf_counter(), 0
    while got < n:
        got += sum(1 for m in consumer.consume(num_messages=10_000, timeout=1.0) if m.error() is None)
    consumer.close()
    return n / (time.perf_counter() - started)


@stack_benchmark("kafka", "kinesis", "moto")
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--partitions", type=int, default=4)
    args = parser.parse_args()
    settings = local_settings()
    pipeline = load_pipelines(settings, {}).default  # the envelope contract on either source
    name = f"bench-kafka-{uuid.uuid4().hex[:8]}"
    stream = f"{name}-stream"  # leases are keyed by the source's name: the two must differ
    config = kafka_config(settings)
    admin, kinesis, s3 = AdminClient(config), aws.client("kinesis", settings), aws.client("s3", settings)
    ensure_table(aws.client("dynamodb", settings), settings.lease_table)
    buckets = {kind: f"{name}-{kind}" for kind in ("kafka", "kinesis")}
    for bucket in buckets.values():
        ensure_bucket(s3, bucket, settings.aws_region)
    events = list(demo_mix(args.events, seed=11))
    payloads = [(e["user_id"].encode(), json.dumps(e).encode()) for e in events]
    try:
        ensure_topic(admin, name, args.partitions)
        producer = Producer(config)
        for key, value in payloads:
            producer.produce(name, key=key, value=value)
            producer.poll(0)
        assert producer.flush(60) == 0
        ensure_stream(kinesis, stream, args.partitions)
        print(f"loading {args.events} events into the Kinesis emulator (it stores a few thousand a second)...")
        KinesisProducer(kinesis, stream).send(events)

        source = KafkaSource(config, name)
        bare = read_bare(config, name, args.partitions, args.events)
        readers = read_with_readers(source, args.events)
        on_kafka = drain(settings, source, name, buckets["kafka"], pipeline)
        on_kinesis = drain(settings, KinesisSource(kinesis, stream), stream, buckets["kinesis"], pipeline)
    finally:
        admin.delete_topics([name])
        kinesis.delete_stream(StreamName=stream, EnforceConsumerDeletion=True)
        for bucket in buckets.values():
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                if keys:
                    s3.delete_objects(Bucket=bucket, Delete={"Objects": keys})
            s3.delete_bucket(Bucket=bucket)
    print(f"{'measure':<44} {'events/s':>10}")
    print(f"{'consumer on Kafka':<44} {on_kafka:>10,.0f}")
    print(f"{'consumer on Kinesis (same events)':<44} {on_kinesis:>10,.0f}")
    print(f"{'Kafka reads: the consumer partition readers':<44} {readers:>10,.0f}")
    print(f"{'Kafka reads: bare confluent-kafka loop':<44} {bare:>10,.0f}")
    print(
        json.dumps(
            {
                "events": args.events,
                "kafka_vs_kinesis_consumer": round(on_kafka / on_kinesis, 2),
                "readers_vs_bare_client": round(readers / bare, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
