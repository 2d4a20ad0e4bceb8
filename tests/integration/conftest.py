"""Fixtures for the tests that talk to the local OpenSearch node."""

from __future__ import annotations

import uuid

import pytest
from opensearchpy import OpenSearch

from etl_platform.search import indices
from etl_platform.stack.opensearch import OpenSearchService


@pytest.fixture()
def node() -> OpenSearchService:
    service = OpenSearchService()
    if not service.healthy():
        pytest.fail(
            f"OpenSearch is not running at {service.endpoint()}; start it with `etl-platform stack up`.", pytrace=False
        )
    return service


@pytest.fixture()
def client(node):
    c = OpenSearch(node.endpoint(), timeout=30)
    yield c
    c.close()


@pytest.fixture()
def prefix(client):
    """A unique index prefix; every index, alias and template under it is deleted afterwards."""
    name = f"t-{uuid.uuid4().hex[:10]}-"
    yield name
    indices.delete_all(client, name)
