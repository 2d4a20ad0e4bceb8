"""Kafka (Amazon MSK) as a pipeline's source: partitions are shards, offsets are sequence numbers.

A topic's partition `p` is the shard `<topic>-<p>` (no parents: partitions never split or merge, and
partitions added to a topic appear as new shards); an offset is the sequence number, a decimal string
whose zero-padded order is its numeric order, so everything downstream (leases, checkpoints, the
analytics' stream order, object names) works unchanged. A message becomes the record shape decoding
takes: `Data` its value, `PartitionKey` its key (UTF-8; none: ""), `SequenceNumber` its offset and
`ApproximateArrivalTimestamp` its timestamp (the broker's append time on the topics `stack up` makes).

Positions are the lease's checkpoints, committed with the analytics state after the outputs are
durable, exactly as for Kinesis; the consumer group's offsets are only mirrored afterwards (best
effort) for lag tools. `kafka_config` holds the client settings: plaintext on the local broker,
TLS with IAM authentication (the MSK IAM SASL signer, OAUTHBEARER) in the aws profile.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from etl_platform.config import Settings
from etl_platform.stream.producer import KinesisProducer, ProducerError, ProducerStats, _Entry
from etl_platform.stream.reader import ReadBatch, ReadResult
from etl_platform.stream.shards import Shard

FULL_HASH_RANGE = (0, 2**128 - 1)  # a partition is never split: a key's state never moves
PAGE = 10_000
POLL_S = 0.1  # one fetch wait while the partition has records behind the position


def kafka_config(settings: Settings) -> dict[str, Any]:
    """librdkafka settings to reach the deployment's brokers: plaintext locally, MSK's IAM over TLS in
    the aws profile (ConfigError when no broker is configured)."""
    return kafka_client_config(settings.kafka_bootstrap, settings.profile == "aws", settings.aws_region)


def kafka_client_config(bootstrap: str | None, iam_auth: bool, region: str | None) -> dict[str, Any]:
    """librdkafka settings for `bootstrap`; with `iam_auth`, SASL/OAUTHBEARER over TLS with tokens from
    the MSK IAM SASL signer (the default AWS credential chain, signed for `region`)."""
    from etl_platform.config import ConfigError

    if not bootstrap:
        raise ConfigError("ETL_KAFKA_BOOTSTRAP is required for a Kafka pipeline but is not set")
    config: dict[str, Any] = {"bootstrap.servers": bootstrap, "client.id": "etl-platform"}
    if iam_auth:
        if not region:
            raise ConfigError("AWS_REGION is required to sign MSK IAM tokens but is not set")

        def token(_config: str) -> tuple[str, float]:
            from aws_msk_iam_sasl_signer import MSKAuthTokenProvider

            value, expiry_ms = MSKAuthTokenProvider.generate_auth_token(region)
            return value, expiry_ms / 1000

        config.update({"security.protocol": "SASL_SSL", "sasl.mechanism": "OAUTHBEARER", "oauth_cb": token})
    return config


def shard_id(topic: str, partition: int) -> str:
    return f"{topic}-{partition}"


def partition_of(topic: str, shard: str) -> int:
    prefix = f"{topic}-"
    if not shard.startswith(prefix) or not shard[len(prefix) :].isdigit():
        raise ValueError(f"{shard!r} is not a partition of topic {topic!r}")
    return int(shard[len(prefix) :])


class KafkaSource:
    """One topic as a stream of shards (see the module docstring)."""

    def __init__(self, config: dict[str, Any], topic: str, group_id: str | None = None) -> None:
        self.config, self.topic = config, topic
        self.group_id = group_id or f"etl-platform.{topic}"
        self._admin: Any = None

    def admin(self) -> Any:
        if self._admin is None:
            from confluent_kafka.admin import AdminClient

            self._admin = AdminClient(self.config)
        return self._admin

    def list_shards(self) -> list[Shard]:
        metadata = self.admin().list_topics(topic=self.topic, timeout=10)
        topic = metadata.topics.get(self.topic)
        if topic is None or topic.error is not None:
            raise LookupError(f"Kafka topic {self.topic!r} not found at {self.config['bootstrap.servers']}")
        return [Shard(shard_id(self.topic, p), (), False, "0", FULL_HASH_RANGE) for p in sorted(topic.partitions)]

    def reader(self, shard_id: str, after: str | None) -> KafkaPartitionReader:
        return KafkaPartitionReader(self, partition_of(self.topic, shard_id), after)


class KafkaPartitionReader:
    """Sequential reads of one partition after offset `after` (from the earliest retained when None),
    with `ShardReader`'s contract: `read` returns the next records cut by count and bytes; a partition
    never ends; `millis_behind_latest` is 0 once the position reaches the high watermark."""

    def __init__(self, source: KafkaSource, partition: int, after: str | None) -> None:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        self.source, self.partition = source, partition
        self.consumer = Consumer(
            {
                **source.config,
                "group.id": source.group_id,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "enable.partition.eof": False,
                "auto.offset.reset": "earliest",
                "fetch.wait.max.ms": 100,
            }
        )
        if after is None:
            # The earliest retained offset, asked for explicitly: assigning the logical OFFSET_BEGINNING
            # costs an offset lookup that delays the first fetch by about half a second.
            start, _high = self.consumer.get_watermark_offsets(TopicPartition(source.topic, partition), timeout=10)
        else:
            start = int(after) + 1
        self.tp = TopicPartition(source.topic, partition, start if start >= 0 else OFFSET_BEGINNING)
        self.consumer.assign([self.tp])
        self.next_offset = None if after is None else int(after) + 1
        self.carry: list[dict[str, Any]] = []
        self.behind = 0

    def _lag(self, fresh: bool = False) -> int:
        """Records between the position and the high watermark: the one the last fetch response carried
        (the consumer keeps fetching in the background), or asked of the broker when there is none."""
        from confluent_kafka import TopicPartition

        tp = TopicPartition(self.source.topic, self.partition)
        low, high = (-1, -1) if fresh else self.consumer.get_watermark_offsets(tp, cached=True)
        if low < 0 or high < 0:
            low, high = self.consumer.get_watermark_offsets(tp, timeout=10)
        position = self.next_offset if self.next_offset is not None else low
        return max(0, high - max(position, low))

    def _record(self, message: Any) -> dict[str, Any]:
        key = message.key()
        kind, millis = message.timestamp()
        arrival = datetime.fromtimestamp(millis / 1000, UTC) if kind and millis >= 0 else datetime.now(UTC)
        return {
            "Data": message.value() or b"",
            "SequenceNumber": str(message.offset()),
            "PartitionKey": "" if key is None else key.decode("utf-8", errors="replace"),
            "ApproximateArrivalTimestamp": arrival,
        }

    def read(self, max_records: int, max_bytes: int, time_budget_s: float) -> ReadResult:
        batch = ReadBatch(max_records, max_bytes)
        records = batch.records
        pending, self.carry = self.carry, []
        self.carry = batch.take(pending)
        deadline = time.monotonic() + time_budget_s
        while not batch.full and len(records) < max_records:
            lag = self._lag()
            if lag == 0 or time.monotonic() >= deadline:
                break
            # As many as are there (up to the page): `consume` returns once it has them, not at the timeout.
            wanted = min(PAGE, max_records - len(records), lag)
            messages = self.consumer.consume(num_messages=wanted, timeout=POLL_S)
            fetched = []
            for message in messages:
                if message.error() is not None:
                    raise RuntimeError(f"Kafka {self.source.topic}[{self.partition}]: {message.error()}")
                fetched.append(self._record(message))
                self.next_offset = int(message.offset() or 0) + 1
            self.carry = batch.take(fetched) + self.carry
        lag = self._lag(fresh=not records) + len(self.carry)
        self.behind = 0
        if lag and records:
            newest = records[-1]["ApproximateArrivalTimestamp"]
            self.behind = max(1, int((datetime.now(UTC) - newest).total_seconds() * 1000))
        elif lag:
            self.behind = 1
        # Cut: stopped at the count or byte cap with more waiting now (as `ShardReader` reports it).
        cut = batch.full or bool(self.carry) or (len(records) >= max_records and lag > 0)
        return ReadResult(records=records, ended=False, cut=cut, millis_behind_latest=self.behind)

    def mirror_commit(self, sequence_number: str) -> None:
        """Mirror a committed checkpoint into the consumer group's offsets (best effort: lag tools only)."""
        from confluent_kafka import TopicPartition

        try:
            self.consumer.commit(
                offsets=[TopicPartition(self.source.topic, self.partition, int(sequence_number) + 1)],
                asynchronous=True,
            )
        except Exception:  # the checkpoint is the lease's; a failed mirror changes nothing
            pass

    def close(self) -> None:
        self.consumer.close()


class KafkaProducer(KinesisProducer):
    """`KinesisProducer`'s events, encoding and checks, produced to a Kafka topic (`stream_name`):
    one message per event keyed by `partition_key_field` (Kafka has no KPL aggregates), idempotently."""

    def __init__(self, config: dict[str, Any], topic: str, **kwargs: Any) -> None:
        from confluent_kafka import Producer

        client = Producer({**config, "enable.idempotence": True, "linger.ms": 5, "compression.type": "none"})
        super().__init__(client, topic, **kwargs)

    def _send_entries(self, entries: Iterable[_Entry], stats: ProducerStats) -> None:
        failed: list[Any] = []
        errors: list[str] = []

        def delivered(entry: _Entry) -> Callable[[Any, Any], None]:
            def callback(error: Any, _message: Any) -> None:
                if error is not None:
                    errors.append(str(error))
                    failed.extend(entry.events)
                else:
                    stats.sent += len(entry.events)
                    stats.records += 1
                    stats.bytes += entry.size

            return callback

        for n, entry in enumerate(entries, start=1):
            while True:
                try:
                    self.client.produce(
                        self.stream_name, key=entry.partition_key, value=entry.data, on_delivery=delivered(entry)
                    )
                    break
                except BufferError:  # the local queue is full: let deliveries drain it
                    self.client.poll(0.1)
            stats.requests += 1
            if n % 1000 == 0:
                self.client.poll(0)
                self._report(stats)
        remaining = self.client.flush(60)
        self._report(stats)
        if remaining or failed:
            stats.failed += len(failed) + remaining
            raise ProducerError(
                f"{len(failed) + remaining} message(s) not delivered to {self.stream_name} "
                f"({errors[0] if errors else 'timed out'}); {stats.sent} sent",
                stats,
                failed,
            )
