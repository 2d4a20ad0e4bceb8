"""Operating the platform: metrics, alarms, alerts, shard scaling, security and provisioning.

Owns: CloudWatch metrics (`metrics`) and the alarms on them (`alarms`), anomaly and threshold alerts
with their sinks and outboxes (`alerts`), the shard-scaling policy (`scaling`), encryption and access
(`security`) and creating the stream and the lake bucket (`provisioning`).
May import: every data-path package (`stream`, `lake`, `search`, `warehouse`) and the foundation
(`config`, `aws`, `events`); nothing imports `ops` but the CLI and the Dagster layer.
"""
