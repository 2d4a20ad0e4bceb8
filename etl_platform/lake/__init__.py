"""The S3 data lake: where every stage's output lands, and how it is read back.

Owns: the layout of prefixes, object names and file formats (`layout`), Firehose-style delivery of a
micro-batch (`writers`), reading objects and days back (`readers`), which objects are committed
(`visibility`), backfill by replay from raw (`replay`) and the data checks on processed data (`checks`).
May import: `etl_platform.events`, `etl_platform.analytics` (replay runs the detector), `config`.
"""
