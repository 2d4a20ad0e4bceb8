"""Operating the platform: metrics, alarms, alerts, shard scaling, security, provisioning, traces and logs.

Owns: CloudWatch metrics (`metrics`) and the alarms on them (`alarms`), anomaly and threshold alerts
with their sinks and outboxes (`alerts`), the shard-scaling policy (`scaling`), encryption and access
(`security`), creating the stream and the lake bucket (`provisioning`), the micro-batches' span trees
(`tracing`) and structured JSON logs (`logs`).
May import: every data-path package (`stream`, `lake`, `search`, `warehouse`) and the foundation
(`config`, `aws`, `events`); nothing imports `ops` but the CLI and the Dagster layer.
"""
