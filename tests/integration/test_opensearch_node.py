"""The embedded OpenSearch node (services/opensearch) indexes, searches and aggregates with opensearch-py."""

from __future__ import annotations

import uuid

import pytest
from opensearchpy import helpers

pytestmark = pytest.mark.stack

MAPPING = {
    "properties": {
        "sku": {"type": "keyword"},
        "ts": {"type": "date"},
        "price": {"type": "double"},
        "title": {"type": "text", "analyzer": "standard"},
    }
}

DOCS = {
    "1": {"sku": "A-1", "ts": "2026-01-01T10:00:00Z", "price": 9.5, "title": "Red running shoes"},
    "2": {"sku": "B-2", "ts": "2026-01-02T11:00:00Z", "price": 20.0, "title": "Blue rain jacket"},
    "3": {"sku": "A-1", "ts": "2026-01-02T12:30:00Z", "price": 10.5, "title": "RED wool hat"},
}


@pytest.fixture()
def index(client):
    name = f"test-node-{uuid.uuid4().hex[:12]}"
    client.indices.create(index=name, body={"settings": {"number_of_shards": 1}, "mappings": MAPPING})
    yield name
    client.indices.delete(index=name, ignore_unavailable=True)


def _ids(response) -> list[str]:
    return [hit["_id"] for hit in response["hits"]["hits"]]


def test_bulk_index_then_search_aggregate_and_delete(client, index):
    assert client.indices.get_mapping(index=index)[index]["mappings"] == MAPPING
    # One node: the stack makes replicas default to 0, so a new index goes green, not yellow.
    assert client.cluster.health(index=index, wait_for_status="green")["status"] == "green"

    indexed, errors = helpers.bulk(
        client, ({"_index": index, "_id": doc_id, **doc} for doc_id, doc in DOCS.items()), refresh="wait_for"
    )
    assert (indexed, errors) == (3, [])
    assert client.count(index=index)["count"] == 3

    # Full text through the standard analyzer: case-insensitive token match.
    by_text = client.search(index=index, body={"query": {"match": {"title": "red"}}, "sort": [{"ts": "asc"}]})
    assert by_text["hits"]["total"] == {"value": 2, "relation": "eq"}
    assert _ids(by_text) == ["1", "3"]
    assert by_text["hits"]["hits"][0]["_source"] == DOCS["1"]

    # Keyword is exact, double and date ranges filter.
    exact = client.search(index=index, body={"query": {"term": {"sku": "A-1"}}, "sort": [{"price": "desc"}]})
    assert _ids(exact) == ["3", "1"]
    assert _ids(client.search(index=index, body={"query": {"term": {"sku": "a-1"}}})) == []
    ranged = client.search(
        index=index,
        body={
            "query": {
                "bool": {
                    "filter": [
                        {"range": {"price": {"gte": 10}}},
                        {"range": {"ts": {"gte": "2026-01-02", "lt": "2026-01-03"}}},
                    ]
                }
            },
            "sort": [{"price": "asc"}],
        },
    )
    assert _ids(ranged) == ["3", "2"]

    aggs = client.search(
        index=index,
        body={
            "size": 0,
            "aggs": {
                "by_sku": {"terms": {"field": "sku"}, "aggs": {"revenue": {"sum": {"field": "price"}}}},
                "per_day": {"date_histogram": {"field": "ts", "calendar_interval": "day"}},
            },
        },
    )["aggregations"]
    assert [(b["key"], b["doc_count"], b["revenue"]["value"]) for b in aggs["by_sku"]["buckets"]] == [
        ("A-1", 2, 20.0),
        ("B-2", 1, 20.0),
    ]
    assert [(b["key_as_string"], b["doc_count"]) for b in aggs["per_day"]["buckets"]] == [
        ("2026-01-01T00:00:00.000Z", 1),
        ("2026-01-02T00:00:00.000Z", 2),
    ]

    client.indices.delete(index=index)
    assert not client.indices.exists(index=index)
