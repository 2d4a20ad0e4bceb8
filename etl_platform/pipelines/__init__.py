"""Pipelines: declared stream contracts, and everything a pipeline owns, by name.

Owns: the contract (`contract`: fields, types, constraints and roles, a payload to an event; and
`columnar`: the same checks over a batch of payloads, column-wise) and the
pipelines file (`catalog`: every pipeline's stream, lake prefixes, warehouse schema, search indices,
analytics and transforms), validated at start-up with errors that name the setting; user transforms
(`transforms`: Firehose's Lambda contract, Ok / Dropped / ProcessingFailed per record).
May import: `etl_platform.config`, `events`, `analytics`, polars, orjson and yaml.
"""

from etl_platform.pipelines.catalog import (
    DEFAULT_PIPELINE,
    Pipeline,
    Pipelines,
    StreamSpec,
    load_pipelines,
    parse_contract,
    parse_pipelines,
)
from etl_platform.pipelines.contract import ARRIVAL, DEFAULT_CONTRACT, Contract, FieldSpec

__all__ = [
    "ARRIVAL",
    "DEFAULT_CONTRACT",
    "DEFAULT_PIPELINE",
    "Contract",
    "FieldSpec",
    "Pipeline",
    "Pipelines",
    "StreamSpec",
    "load_pipelines",
    "parse_contract",
    "parse_pipelines",
]
