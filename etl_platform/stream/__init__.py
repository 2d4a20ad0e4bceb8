"""The stream: putting events on Kinesis and consuming its shards exactly once.

Owns: the producer and the simulated sources (`producer`, `sources`, `samples`), record decoding
(`decoding`: gzip, KPL de-aggregation, envelope validation), shard discovery and lineage (`shards`),
checkpoints (`checkpoints`) and the micro-batch consumer that drives every stage of a batch
(`consumer`: read -> decode -> lake -> analytics -> lake -> search -> commit).
May import: `events`, `config`, `analytics`, `lake`; a search sink is handed in, never imported.
"""
