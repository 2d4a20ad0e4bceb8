"""etl-platform's core library: every stage of the data path, with no Dagster in it.

Packages by domain, lowest layer first (a package imports only from layers below it; the test
tests/unit/test_layering.py enforces it, docs/architecture.md draws it):

- `config`, `events`: deployment settings; the event envelope, its schema and validation.
- `aws`, `analytics`, `stack`: boto3 clients; the stream analytics engine; the local servers.
- `lake`: the S3 lake's layout, Firehose-style writers, readers, replay and data checks.
- `stream`, `search`, `warehouse`: the producer and the exactly-once shard consumer; OpenSearch
  indexing and queries; loading Redshift (PostgreSQL locally).
- `ops`: metrics, alarms, alerts, shard scaling, security, provisioning.
- `cli`: the `etl-platform` command.
"""
