"""Pipelines of one's own on the real stack: transforms' outcomes, a transform that raises, and a contract
that gains a field mid-stream, through the consumer and the pipeline's Dagster assets."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, date, datetime, timedelta

import polars as pl
import psycopg
import pytest
from dagster import materialize
from dagster_aws.s3 import S3Resource
from opensearchpy import OpenSearch

from assets.search import search_assets_for
from assets.warehouse import warehouse_assets_for
from etl_platform.lake import layout
from etl_platform.lake.readers import read_processed
from etl_platform.pipelines import parse_pipelines
from etl_platform.search import indices
from etl_platform.stream import dead_letters
from etl_platform.stream.consumer import ConsumerConfig, StreamConsumer
from etl_platform.stream.producer import KinesisProducer
from resources import LakeResource, OpenSearchResource, WarehouseResource

pytestmark = pytest.mark.stack

FIELDS = {
    "device": {"type": "string", "required": True, "max_length": 32},
    "event_type": {"type": "string", "required": True},
    "ts": {"type": "timestamp", "required": True},
    "reading": {"type": "float", "required": True},
}


@pytest.fixture
def names(settings, unique_name):
    schema, prefix = f"t_p_{uuid.uuid4().hex[:10]}", f"{unique_name}-"
    yield schema, prefix
    with psycopg.connect(settings.warehouse_dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    client = OpenSearch(settings.opensearch_url, timeout=30)
    indices.delete_all(client, prefix)
    client.close()


def pipeline_of(settings, stream: str, schema: str, prefix: str, fields: dict, transforms: list[str] = ()):
    value = "value" if "value" in fields else "reading"
    contract = {"fields": fields, "keys": ["device", "event_type"], "value": value, "time": "ts"}
    doc = {
        "pipelines": {
            "plant": {
                "stream": {"name": stream},
                "contract": contract,
                "warehouse_schema": schema,
                "transforms": list(transforms),
            }
        }
    }
    return parse_pipelines(doc, settings, {"ETL_OPENSEARCH_INDEX_PREFIX": prefix}, "test").get("plant")


def consumer_for(kinesis, s3, bucket, leases, client, pipeline) -> StreamConsumer:
    from etl_platform.search.indexer import search_sink

    return StreamConsumer(
        kinesis,
        s3,
        bucket,
        pipeline.stream.name,
        leases,
        ConsumerConfig(max_records=40),
        search_sink=search_sink(client, s3, bucket, pipeline.index_prefix, pipeline=pipeline),
        pipeline=pipeline,
    )


# The shipped example transform screens on `event_type` and `value`.
SCREENED_FIELDS = {**{k: v for k, v in FIELDS.items() if k != "reading"}, "value": FIELDS["reading"]}


def readings(n: int, start: datetime, value: str = "reading", **extra) -> list[dict]:
    return [
        {
            "device": f"dev-{i % 3}",
            "event_type": "temperature",
            "ts": (start + timedelta(seconds=i)).isoformat(),
            value: 20.0 + (i % 5),
            **extra,
        }
        for i in range(n)
    ]


def test_a_transforms_three_outcomes_and_a_transform_that_raises_on_a_real_stream(
    settings, kinesis, s3, stream, bucket, leases, names
):
    schema, prefix = names
    client = OpenSearch(settings.opensearch_url, timeout=30)
    screened = pipeline_of(
        settings, stream, schema, prefix, SCREENED_FIELDS, ["etl_platform.pipelines.examples.privacy_screen"]
    )
    start = datetime.now(UTC) - timedelta(minutes=5)
    sent = [
        *readings(20, start, "value", email="ops@example.com"),
        {**readings(1, start, "value")[0], "event_type": "heartbeat"},
        {**readings(1, start, "value")[0], "value": -3.0, "device": "dev-9"},
    ]
    producer = KinesisProducer(kinesis, stream, compress=True, partition_key_field="device")
    producer.send(sent)
    results = consumer_for(kinesis, s3, bucket, leases, client, screened).drain()
    assert (sum(r.events for r in results), sum(r.dropped for r in results), sum(r.errors for r in results)) == (
        20,
        1,
        1,
    )
    processed = read_processed(s3, bucket, layout.list_keys(s3, bucket, "plant/processed/"))
    assert processed.height == 20
    assert {json.loads(a)["email"] for a in processed["attributes"]} == {"***@example.com"}
    (row,) = dead_letters.summarize(s3, bucket, start.date(), datetime.now(UTC).date(), root="plant/")
    assert row["records"] == 1 and row["example"].startswith(
        "transform etl_platform.pipelines.examples.privacy_screen:"
    )

    # A transform that raises fails its records into errors/; the shard goes on past them.
    broken = pipeline_of(settings, stream, schema, prefix, SCREENED_FIELDS, ["tests.unit.test_transforms.boom"])
    producer.send(readings(10, start + timedelta(minutes=1), "value"))
    results = consumer_for(kinesis, s3, bucket, leases, client, broken).drain()
    assert sum(r.events for r in results) == 0 and sum(r.errors for r in results) == 10
    assert all(r.committed for r in results)
    producer.send(readings(5, start + timedelta(minutes=2), "value"))
    results = consumer_for(kinesis, s3, bucket, leases, client, screened).drain()
    assert sum(r.events for r in results) == 5  # only the new records: the failed ones are not re-read
    kinds = {
        r["kind"]: r["records"]
        for r in dead_letters.summarize(s3, bucket, start.date(), datetime.now(UTC).date(), root="plant/")
    }
    assert kinds == {
        "transform tests.unit.test_transforms.boom": 10,
        "transform etl_platform.pipelines.examples.privacy_screen": 1,
    }
    client.close()


def test_a_field_added_to_the_contract_mid_stream_flows_to_parquet_warehouse_and_index(
    settings, kinesis, s3, stream, bucket, leases, names
):
    schema, prefix = names
    client = OpenSearch(settings.opensearch_url, timeout=30)
    v1 = pipeline_of(settings, stream, schema, prefix, FIELDS)
    v2 = pipeline_of(settings, stream, schema, prefix, {**FIELDS, "site": {"type": "string", "max_length": 16}})
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    if start.date() != (start + timedelta(minutes=10)).date():  # keep the test's rows on one day
        start -= timedelta(hours=1)
    day = start.date()
    producer = KinesisProducer(kinesis, stream, compress=True, partition_key_field="device")

    producer.send(readings(30, start, site="north"))  # v1 does not know `site`: it is kept in attributes
    assert sum(r.events for r in consumer_for(kinesis, s3, bucket, leases, client, v1).drain()) == 30
    resources = {
        "warehouse": WarehouseResource(dialect="postgres", dsn=settings.warehouse_dsn),
        "lake": LakeResource(
            bucket=bucket,
            s3=S3Resource(
                region_name=settings.aws_region,
                endpoint_url=settings.s3_endpoint,
                use_ssl=False,
                **settings.local_credentials,
            ),
        ),
        "opensearch": OpenSearchResource(url=settings.opensearch_url, verify_certs=False, index_prefix=prefix),
    }

    def load_and_index(pipeline) -> None:
        (loads, load_checks), (search, search_checks) = warehouse_assets_for(pipeline), search_assets_for(pipeline)
        result = materialize(
            [*loads, *load_checks, *search, *search_checks], partition_key=day.isoformat(), resources=resources
        )
        assert result.success
        assert all(c.passed for c in result.get_asset_check_evaluations())

    load_and_index(v1)

    producer.send(readings(20, start + timedelta(minutes=1), site="south"))
    assert sum(r.events for r in consumer_for(kinesis, s3, bucket, leases, client, v2).drain()) == 20
    processed = read_processed(s3, bucket, layout.list_keys(s3, bucket, "plant/processed/"))  # old + new objects
    assert processed.height == 50
    assert processed.filter(pl.col("site").is_not_null())["site"].unique().to_list() == ["south"]
    load_and_index(v2)  # the table gains `site` (additive), the index mapping too

    with psycopg.connect(settings.warehouse_dsn) as conn:
        rows = conn.execute(f'SELECT site, count(*) FROM "{schema}".events GROUP BY site ORDER BY site').fetchall()
    assert rows == [("south", 20), (None, 30)]
    alias = indices.alias_name(indices.EVENTS, v2.index_prefix)
    mapping = next(iter(client.indices.get_mapping(index=alias).values()))["mappings"]["properties"]
    assert mapping["site"] == {"type": "keyword"}
    client.indices.refresh(index=alias)
    assert client.count(index=alias, body={"query": {"term": {"site": "south"}}})["count"] == 20
    assert client.count(index=alias)["count"] == 50
    client.close()
    assert day == date.fromisoformat(processed["event_time"].dt.strftime("%Y-%m-%d")[0])
