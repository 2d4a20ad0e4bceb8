"""Shared fixtures: clients for the real local stack (started by `make test`)."""

from __future__ import annotations

import uuid

import pytest

from etl_platform import aws
from etl_platform.config import Settings, load_settings
from etl_platform.ops.provisioning import ensure_bucket, ensure_stream
from etl_platform.search import indices
from etl_platform.stack.opensearch import OpenSearchService
from etl_platform.stream.leases import LeaseTable, ensure_table


def _require_stack(settings: Settings) -> None:
    from etl_platform.stack import LocalStack

    down = [name for name, ok in LocalStack().health().items() if not ok]
    if down:
        pytest.fail(
            f"local stack services down: {', '.join(down)}. Start them with `etl-platform stack up` "
            "(or run the suite with `make test`, which does).",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def settings() -> Settings:
    s = load_settings({})  # the local profile with default ports, whatever the shell exports
    _require_stack(s)
    return s


@pytest.fixture(scope="session")
def kinesis(settings):
    return aws.client("kinesis", settings)


@pytest.fixture(scope="session")
def s3(settings):
    return aws.client("s3", settings)


@pytest.fixture(scope="session")
def cloudwatch(settings):
    return aws.client("cloudwatch", settings)


@pytest.fixture(scope="session")
def dynamodb(settings):
    return aws.client("dynamodb", settings)


@pytest.fixture(scope="session")
def lease_table(dynamodb, settings) -> str:
    """The stack's lease table (`stack up` creates it); tests use fresh stream names, so they never share items."""
    ensure_table(dynamodb, settings.lease_table)
    return settings.lease_table


@pytest.fixture
def leases(dynamodb, lease_table, stream) -> LeaseTable:
    """The lease items of the test's stream."""
    return LeaseTable(dynamodb, lease_table, stream)


@pytest.fixture
def unique_name() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def stream(kinesis, unique_name):
    """A fresh 2-shard stream, deleted afterwards."""
    ensure_stream(kinesis, unique_name, shards=2)
    yield unique_name
    kinesis.delete_stream(StreamName=unique_name, EnforceConsumerDeletion=True)


@pytest.fixture
def bucket(s3, settings, unique_name):
    """A fresh, empty bucket, emptied and deleted afterwards."""
    ensure_bucket(s3, unique_name, settings.aws_region)
    yield unique_name
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=unique_name):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=unique_name, Delete={"Objects": keys})
    s3.delete_bucket(Bucket=unique_name)


@pytest.fixture()
def node() -> OpenSearchService:
    """The local OpenSearch node."""
    service = OpenSearchService()
    if not service.healthy():
        pytest.fail(
            f"OpenSearch is not running at {service.endpoint()}; start it with `etl-platform stack up`.", pytrace=False
        )
    return service


@pytest.fixture()
def client(node):
    from opensearchpy import OpenSearch

    c = OpenSearch(node.endpoint(), timeout=30)
    yield c
    c.close()


@pytest.fixture()
def prefix(client):
    """A unique index prefix; every index, alias and template under it is deleted afterwards."""
    name = f"t-{uuid.uuid4().hex[:10]}-"
    yield name
    indices.delete_all(client, name)
