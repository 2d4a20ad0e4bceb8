"""The `seed` pipeline takes what the seed architecture's own producer sends, end to end.

The producer function (`seed_producer.py`) is copied exactly as the seed document prints it (boto3's
default client, a gzip-compressed JSON object per record, `put_record`), pointed at the local Kinesis by
boto3's standard environment variables. Its records flow through `etl-platform consume --pipeline
seed` into the pipeline's lake prefix, its warehouse schema and its search indices, and the analytics
equal the seed's two Kinesis Analytics statements run by DuckDB over the same rows in stream order.
"""

from __future__ import annotations

import json
import random
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb
import polars as pl
import pytest
import yaml
from opensearchpy import OpenSearch

from etl_platform.lake import layout
from etl_platform.lake.readers import read_processed
from etl_platform.pipelines import load_pipelines
from etl_platform.search import indices
from etl_platform.warehouse import connect, table_layout
from tests.integration.pipeline_helpers import cli, remove_deployment
from tests.integration.seed_producer import compress_and_send_data

pytestmark = pytest.mark.stack


# The seed's two statements (Real-time Aggregation, Anomaly Detection), ROWTIME as each record's
# position in its shard: DuckDB needs the window order spelled out.
SEED_SQL = """
WITH aggregation AS (
    SELECT shard_id, sequence_number, user_id, event_type,
        AVG(value) OVER (
            PARTITION BY user_id, event_type ORDER BY rowtime
            ROWS BETWEEN 10 PRECEDING AND CURRENT ROW
        ) AS avg_value
    FROM input_stream
), anomaly_detection AS (
    SELECT shard_id, sequence_number,
        CASE
            WHEN ABS(value - AVG(value) OVER (
                PARTITION BY user_id, event_type ORDER BY rowtime
                ROWS BETWEEN 100 PRECEDING AND 1 PRECEDING
            )) > 3 * STDDEV(value) OVER (
                PARTITION BY user_id, event_type ORDER BY rowtime
                ROWS BETWEEN 100 PRECEDING AND 1 PRECEDING
            ) THEN 'ANOMALY'
            ELSE 'NORMAL'
        END AS anomaly_status
    FROM input_stream
)
SELECT a.shard_id, a.sequence_number, a.avg_value, d.anomaly_status
FROM aggregation a JOIN anomaly_detection d USING (shard_id, sequence_number)
"""


@pytest.fixture
def seed_deployment(tmp_path: Path, settings, kinesis, s3, unique_name):
    """A deployment whose pipelines file has the shipped `seed` pipeline on a fresh stream, bucket,
    warehouse schema and index prefix; everything is removed afterwards."""
    shipped = yaml.safe_load(Path("config/pipelines.yaml").read_text())
    seed = shipped["pipelines"]["seed"]
    seed["stream"]["name"] = f"{unique_name}-seed"
    seed["warehouse_schema"] = f"t_seed_{uuid.uuid4().hex[:10]}"
    pipelines_file = tmp_path / "pipelines.yaml"
    pipelines_file.write_text(yaml.safe_dump({"pipelines": {"seed": seed}}))
    env = {
        "ETL_PIPELINES_FILE": str(pipelines_file),
        "ETL_LAKE_BUCKET": unique_name,
        "ETL_STREAM_NAME": f"{unique_name}-default",
        "ETL_OPENSEARCH_INDEX_PREFIX": f"{unique_name}-",
        "ETL_BUFFER_INTERVAL_S": "0",
    }
    cli("stack", "up", env=env)  # the stack is up: this creates the deployment's streams and bucket
    yield env, load_pipelines(settings, env).get("seed")
    for stream in (seed["stream"]["name"], env["ETL_STREAM_NAME"]):
        kinesis.delete_stream(StreamName=stream, EnforceConsumerDeletion=True)
    remove_deployment(settings, s3, unique_name, seed["warehouse_schema"], env["ETL_OPENSEARCH_INDEX_PREFIX"])


def seed_records(n: int, now: datetime) -> list[dict]:
    """Records as the seed's producer is given them: a few users and event types, a value, an
    ISO-8601 timestamp without offset (`datetime.utcnow().isoformat()`), the user as partition key."""
    rng = random.Random(7)
    records = []
    for i in range(n):
        user = f"user-{rng.randrange(6)}"
        spike = rng.random() < 0.03
        records.append(
            {
                "user_id": user,
                "event_type": rng.choice(["click", "view", "purchase"]),
                "timestamp": (now - timedelta(seconds=n - i)).replace(tzinfo=None).isoformat(),
                "value": round(rng.gauss(50, 5) * (8 if spike else 1), 3),
                "partition_key": user,
            }
        )
    return records


def test_the_seeds_producer_reaches_processed_warehouse_and_search_with_the_seeds_analytics(
    seed_deployment, monkeypatch, settings, s3
):
    env, pipeline = seed_deployment
    # boto3's default client, as the seed's code makes it, finds the local stream through the environment.
    monkeypatch.setenv("AWS_ENDPOINT_URL_KINESIS", settings.kinesis_endpoint or "")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", settings.aws_region)
    records = seed_records(300, datetime.now(UTC))
    sent = []
    for rowtime, data in enumerate(records):
        response = compress_and_send_data(pipeline.stream.name, data)
        sent.append(
            {**data, "shard_id": response["ShardId"], "sequence_number": response["SequenceNumber"], "rowtime": rowtime}
        )

    status = json.loads(cli("stack", "status", "--json", env=env, check=False).stdout)
    processed_prefix = status["pipelines"]["seed"]["processed_prefix"]
    assert processed_prefix == f"s3://{env['ETL_LAKE_BUCKET']}/seed/processed/"
    assert status["pipelines"]["seed"]["stream_name"] == pipeline.stream.name

    summary = json.loads(cli("consume", "--pipeline", "seed", "--until-caught-up", "--quiet", env=env).stdout)
    assert summary["events"] == 300 and summary["errors"] == 0, summary

    # processed: every record once, the contract's fields under their names, the seed's analytics
    bucket, _, prefix = processed_prefix.removeprefix("s3://").partition("/")
    processed = read_processed(s3, bucket, layout.list_keys(s3, bucket, prefix))
    assert processed.height == 300 and processed["event_id"].n_unique() == 300
    for column in (
        "event_id",
        "shard_id",
        "sequence_number",
        "avg_value",
        "anomaly_status",
        "user_id",
        "event_type",
        "timestamp",
        "value",
    ):
        assert column in processed.columns, column
    assert processed["timestamp"].dtype == pl.Datetime("us", "UTC")
    attributes = [json.loads(a) for a in processed["attributes"].to_list()]
    assert all(a["partition_key"] == u for a, u in zip(attributes, processed["user_id"], strict=True))

    duck = duckdb.connect()
    duck.register("input_stream", pl.DataFrame(sent).drop("timestamp", "partition_key").to_arrow())
    expected = duck.sql(SEED_SQL).pl()
    joined = expected.join(processed, on=["shard_id", "sequence_number"], suffix="_platform")
    assert joined.height == 300
    assert (joined["anomaly_status"] == joined["anomaly_status_platform"]).all()
    assert ((joined["avg_value"] - joined["avg_value_platform"]).abs() <= 1e-9 * joined["avg_value"].abs()).all()
    assert int((joined["anomaly_status"] == "ANOMALY").sum()) > 0  # the spikes were found

    # warehouse: the pipeline's schema, tables shaped by its contract, every row once
    days = sorted({date.fromisoformat(d) for d in processed["event_time"].dt.strftime("%Y-%m-%d").to_list()})
    with connect(
        "postgres",
        settings.warehouse_dsn,
        schema=pipeline.warehouse_schema,
        layout=table_layout(pipeline.contract),
        lake_root=pipeline.lake_root,
    ) as wh:
        for day in days:
            wh.load_day(s3, bucket, day)
        assert "timestamp" in wh.table_columns("events")
        assert sum(wh.count_rows("events", day)[0] for day in days) == 300
        anomalies = int((processed["anomaly_status"] == "ANOMALY").sum())
        assert sum(wh.count_rows("anomalies", day)[0] for day in days) == anomalies

    # search: the pipeline's indices, its fields mapped by type
    client = OpenSearch(settings.opensearch_url, timeout=30)
    alias = indices.alias_name(indices.EVENTS, pipeline.index_prefix)
    assert alias == f"{env['ETL_OPENSEARCH_INDEX_PREFIX']}seed-events"
    client.indices.refresh(index=alias)
    assert client.count(index=alias)["count"] == 300
    mapping = next(iter(client.indices.get_mapping(index=alias).values()))["mappings"]["properties"]
    assert mapping["timestamp"]["type"] == "date" and mapping["user_id"]["type"] == "keyword"
    hits = client.search(index=alias, body={"query": {"term": {"user_id": "user-1"}}, "size": 1})["hits"]["hits"]
    assert hits and "timestamp" in hits[0]["_source"]
    client.close()

    # the CLI works on the pipeline it is told
    found = json.loads(cli("search", "user", "user-1", "--pipeline", "seed", "--from", "2h", "--json", env=env).stdout)
    assert found and all(row["event_type"] in ("click", "view", "purchase") for row in found)
    assert "source" not in found[0] and "avg_value" in found[0]
    scale = json.loads(cli("scale", "--pipeline", "seed", "--dry-run", "--json", env=env).stdout)
    assert scale["stream"] == pipeline.stream.name
    listed = json.loads(cli("errors", "list", "--pipeline", "seed", "--json", env=env).stdout)
    assert listed == []  # nothing of the seed's was refused


def test_an_unknown_pipeline_or_a_malformed_pipelines_file_is_one_line_naming_it(tmp_path):
    unknown = cli("consume", "--pipeline", "nope", "--until-caught-up", check=False)
    assert unknown.returncode == 2
    known = "default, seed, msk-events"
    assert unknown.stderr.strip() == f"configuration error: unknown pipeline 'nope'; the pipelines are: {known}"
    broken = tmp_path / "pipelines.yaml"
    broken.write_text(
        "pipelines:\n  iot:\n    stream: {name: iot}\n    contract:\n"
        "      fields: {t: {type: timestamp, required: true}}\n"
        "      keys: [t]\n      value: reading\n      time: t\n"
    )
    failed = cli(
        "produce", "--pipeline", "iot", "--source", "demo", env={"ETL_PIPELINES_FILE": str(broken)}, check=False
    )
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    assert f"{broken}: pipelines.iot.contract.keys[0]: 't' is a timestamp field" in failed.stderr
