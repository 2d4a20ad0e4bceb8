"""The pipelines file (`config/pipelines.yaml`, or ETL_PIPELINES_FILE): every pipeline, validated at start-up.

A pipeline is a stream contract plus where its data goes. Each has its own stream, leases and
analytics state (both keyed by the stream), lake prefixes, warehouse schema and search indices:

    pipeline  stream            lake                  warehouse schema      search indices
    default   ETL_STREAM_NAME   raw/ processed/ ...   ETL_WAREHOUSE_SCHEMA  <prefix>events-*
    seed      from the file     seed/raw/ ...         seed                  <prefix>seed-events-*

The default pipeline keeps the deployment's names, so a deployment that declares nothing else runs
as before. A mistake in the file raises `ConfigError` naming the file and the setting's path
(`pipelines.seed.contract.fields.value.type: ...`) when the code location or the CLI starts.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from etl_platform.analytics import AnalyticsConfig
from etl_platform.config import ConfigError, Settings, read_yaml
from etl_platform.pipelines.contract import (
    ARRIVAL,
    DEFAULT_CONTRACT,
    DERIVED_COLUMNS,
    FIELD_NAME_RE,
    FIELD_TYPES,
    FORMATS,
    NAIVE_POLICIES,
    POSITION_COLUMNS,
    UNKNOWN_FIELD_POLICIES,
    Contract,
    FieldSpec,
)

DEFAULT_PIPELINE = "default"
DEFAULT_PATH = Path(__file__).resolve().parents[2] / "config" / "pipelines.yaml"
PIPELINE_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
# The default pipeline's schema when ETL_WAREHOUSE_SCHEMA is unset (warehouse.DEFAULT_SCHEMA; a unit
# test keeps the two equal: the warehouse layer sits above this one).
DEFAULT_WAREHOUSE_SCHEMA = "etl"
# Top-level lake prefixes and schemas of the default pipeline and the platform: no pipeline is named so.
# Index families too: `<prefix>events-events-*` would fall under the default pipeline's `<prefix>events-*`.
RESERVED_NAMES = frozenset({"raw", "processed", "errors", "search-failed", "etl", "public", "events", "anomalies"})
STREAM_ENCRYPTIONS = ("KMS", "NONE")


@dataclass(frozen=True)
class StreamSpec:
    """The source: a Kinesis stream or a Kafka topic, and what `stack up` (and the deploy) create it with."""

    name: str  # the Kinesis stream, or the Kafka topic
    shards: int = 2  # Kinesis shards, or the topic's partitions
    retention_hours: int | None = None  # None: config/lake.yaml's stream.retention_hours (Kafka: the broker's)
    encryption: str | None = None  # KMS | NONE; None: config/lake.yaml's stream.encryption (Kinesis only)
    kind: str = "kinesis"  # kinesis | kafka


@dataclass(frozen=True)
class Pipeline:
    """One pipeline: its contract, analytics and the names of everything it owns."""

    name: str
    stream: StreamSpec
    contract: Contract
    analytics: AnalyticsConfig
    lake_root: str  # "" for the default pipeline, else "<name>/"
    warehouse_schema: str
    index_prefix: str  # prepended to the deployment's index prefix's families
    transforms: tuple[str, ...] = ()
    description: str = ""

    @property
    def is_default(self) -> bool:
        return self.name == DEFAULT_PIPELINE

    @property
    def own_index_prefix(self) -> str:
        """What the pipeline adds to the deployment's index prefix: nothing for the default pipeline."""
        return "" if self.is_default else f"{self.name}-"

    def dataset(self, name: str) -> str:
        """A lake dataset's prefix for this pipeline: `raw`, `seed/raw`, ..."""
        return f"{self.lake_root}{name}"


@dataclass(frozen=True)
class Pipelines:
    """Every pipeline of a deployment, by name, the default first."""

    by_name: Mapping[str, Pipeline]
    source: str = ""

    def __iter__(self) -> Iterator[Pipeline]:
        return iter(self.by_name.values())

    def __len__(self) -> int:
        return len(self.by_name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.by_name)

    @property
    def default(self) -> Pipeline:
        return self.by_name[DEFAULT_PIPELINE]

    def get(self, name: str | None) -> Pipeline:
        """The pipeline called `name` (None: the default); ConfigError listing the known ones."""
        name = name or DEFAULT_PIPELINE
        if name not in self.by_name:
            raise ConfigError(f"unknown pipeline {name!r}; the pipelines are: {', '.join(self.by_name)}")
        return self.by_name[name]


# --- validation helpers ---------------------------------------------------------------------------
def _mapping(value: Any, where: str, allowed: tuple[str, ...], required: tuple[str, ...] = ()) -> Mapping[str, Any]:
    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: must be a mapping, got {type(value).__name__}")
    unknown = sorted(str(k) for k in value if k not in allowed)
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown setting; expected one of {', '.join(allowed)}")
    for key in required:
        if key not in value:
            raise ConfigError(f"{where}.{key}: missing (required)")
    return value


def _int(value: Any, where: str, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}: must be an integer, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
        raise ConfigError(f"{where}: must be {bound}, got {value}")
    return value


def _number(value: Any, where: str, minimum: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where}: must be a number, got {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{where}: must be at least {minimum:g}, got {value}")
    return float(value)


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: must be a non-empty string, got {value!r}")
    return value


def _one_of(value: Any, where: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(allowed)}")
    return value


def _field_name(value: Any, where: str, fields: Mapping[str, FieldSpec]) -> str:
    name = _string(value, where)
    if name not in fields:
        raise ConfigError(f"{where}: {name!r} is not a declared field (fields: {', '.join(fields)})")
    return name


# --- parsing ----------------------------------------------------------------------------------------
_FIELD_KEYS = ("type", "required", "max_length", "values", "min", "max", "naive_timestamps", "description")
_CONTRACT_KEYS = ("format", "fields", "keys", "value", "time", "event_id", "attributes", "unknown_fields")
_PIPELINE_KEYS = ("description", "stream", "contract", "analytics", "warehouse_schema", "transforms")
_STREAM_KEYS = ("kind", "name", "shards", "retention_hours", "encryption")
_KAFKA_KEYS = ("kind", "topic", "partitions", "retention_hours")
SOURCE_KINDS = ("kinesis", "kafka")
_ANALYTICS_KEYS = ("avg_rows", "baseline_rows", "sigmas")


def parse_field(name: Any, data: Any, where: str) -> FieldSpec:
    if not isinstance(name, str) or not FIELD_NAME_RE.match(name):
        raise ConfigError(f"{where}: field name {name!r} must be lower-case letters, digits and _ (at most 63)")
    where = f"{where}.{name}"
    if name in POSITION_COLUMNS or name in DERIVED_COLUMNS:
        raise ConfigError(f"{where}: {name!r} is a column the platform adds; give the field another name")
    data = _mapping(data, where, _FIELD_KEYS, required=("type",))
    kind = _one_of(data["type"], f"{where}.type", FIELD_TYPES)
    required = data.get("required", False)
    if not isinstance(required, bool):
        raise ConfigError(f"{where}.required: must be true or false, got {required!r}")
    max_length = data.get("max_length")
    values = data.get("values")
    minimum, maximum = data.get("min"), data.get("max")
    if kind != "string" and (max_length is not None or values is not None):
        raise ConfigError(f"{where}.{'max_length' if max_length is not None else 'values'}: only for string fields")
    if kind not in ("float", "int") and (minimum is not None or maximum is not None):
        raise ConfigError(f"{where}.{'min' if minimum is not None else 'max'}: only for float and int fields")
    if max_length is not None:
        max_length = _int(max_length, f"{where}.max_length", 1, 65_535)
    if values is not None:
        if not isinstance(values, list) or not values or not all(isinstance(v, str) and v for v in values):
            raise ConfigError(f"{where}.values: must be a non-empty list of strings")
        values = tuple(values)
    naive = _one_of(data.get("naive_timestamps", "reject"), f"{where}.naive_timestamps", NAIVE_POLICIES)
    if naive != "reject" and kind != "timestamp":
        raise ConfigError(f"{where}.naive_timestamps: only for timestamp fields")
    return FieldSpec(
        name=name,
        type=kind,
        required=required,
        max_length=max_length,
        values=values,
        minimum=None if minimum is None else _number(minimum, f"{where}.min"),
        maximum=None if maximum is None else _number(maximum, f"{where}.max"),
        naive_timestamps=naive,
        description=str(data.get("description", "")),
    )


def parse_contract(data: Any, where: str) -> Contract:
    """A contract from its YAML mapping; every error names the setting's path under `where`."""
    data = _mapping(data, where, _CONTRACT_KEYS, required=("fields", "keys", "value", "time"))
    fmt = _one_of(data.get("format", "json"), f"{where}.format", FORMATS)
    raw_fields = data["fields"]
    if not isinstance(raw_fields, Mapping) or not raw_fields:
        raise ConfigError(f"{where}.fields: must be a non-empty mapping of field name to its type")
    fields = {name: parse_field(name, spec, f"{where}.fields") for name, spec in raw_fields.items()}

    keys = data["keys"]
    if not isinstance(keys, list) or not keys:
        raise ConfigError(f"{where}.keys: must be a non-empty list of field names")
    for i, key in enumerate(keys):
        name = _field_name(key, f"{where}.keys[{i}]", fields)
        if fields[name].type not in ("string", "int", "bool"):
            kind = fields[name].type
            raise ConfigError(f"{where}.keys[{i}]: {name!r} is a {kind} field; keys are string, int or bool")
    if len(set(keys)) != len(keys):
        raise ConfigError(f"{where}.keys: a field is named twice")

    value = _field_name(data["value"], f"{where}.value", fields)
    if fields[value].type not in ("float", "int") or not fields[value].required:
        raise ConfigError(f"{where}.value: {value!r} must be a required float or int field")
    if value in keys:
        raise ConfigError(f"{where}.value: {value!r} is also an analytics key")

    time = _string(data["time"], f"{where}.time")
    if time != ARRIVAL:
        _field_name(time, f"{where}.time", fields)
        if fields[time].type != "timestamp" or not fields[time].required:
            raise ConfigError(f"{where}.time: {time!r} must be a required timestamp field, or `arrival`")
    elif "event_time" in fields:
        raise ConfigError(f"{where}.fields.event_time: with `time: arrival` no field may be called event_time")

    event_id = data.get("event_id")
    if event_id is not None:
        event_id = _field_name(event_id, f"{where}.event_id", fields)
        if fields[event_id].type != "string":
            raise ConfigError(f"{where}.event_id: {event_id!r} must be a string field")
    elif "event_id" in fields:
        raise ConfigError(f"{where}.fields.event_id: a field called event_id must be the contract's `event_id`")

    attributes = data.get("attributes")
    if attributes is not None:
        attributes = _field_name(attributes, f"{where}.attributes", fields)
        if fields[attributes].type != "object":
            raise ConfigError(f"{where}.attributes: {attributes!r} must be an object field")
    for name, spec in fields.items():
        if spec.type == "object" and name != attributes:
            raise ConfigError(f"{where}.fields.{name}.type: only the `attributes` field is an object; use json")
        if name == "attributes" and name != attributes:
            raise ConfigError(f"{where}.fields.attributes: a field so named must be the contract's `attributes`")
        if name == "event_time" and time not in (ARRIVAL, "event_time"):
            raise ConfigError(f"{where}.fields.event_time: the platform's event_time is {time!r}; rename the field")
    unknown = _one_of(data.get("unknown_fields", "attributes"), f"{where}.unknown_fields", UNKNOWN_FIELD_POLICIES)
    return Contract(
        fields=tuple(fields.values()),
        keys=tuple(keys),
        value=value,
        time=time,
        event_id=event_id,
        attributes=attributes,
        unknown_fields=unknown,
        format=fmt,
    )


def _stream(data: Any, where: str, default_name: str | None) -> StreamSpec:
    """A pipeline's source: a Kinesis stream (`name`, `shards`, `retention_hours`, `encryption`) or,
    with `kind: kafka`, a topic (`topic`, `partitions`, `retention_hours`). The default pipeline's is
    the deployment's Kinesis stream (`default_name`)."""
    kind = "kinesis" if data is None or not isinstance(data, Mapping) else data.get("kind", "kinesis")
    kind = _one_of(kind, f"{where}.kind", SOURCE_KINDS)
    if default_name is not None and kind != "kinesis":
        raise ConfigError(f"{where}.kind: the default pipeline reads the deployment's Kinesis stream")
    data = _mapping(data, where, _KAFKA_KEYS if kind == "kafka" else _STREAM_KEYS)
    name_key, count_key = ("topic", "partitions") if kind == "kafka" else ("name", "shards")
    if default_name is not None:
        name = default_name  # ETL_STREAM_NAME: the deployment's stream
    elif name_key not in data:
        raise ConfigError(f"{where}.{name_key}: missing (required)")
    else:
        name = _string(data[name_key], f"{where}.{name_key}")
    retention = data.get("retention_hours")
    encryption = data.get("encryption")
    return StreamSpec(
        name=name,
        shards=_int(data.get(count_key, 2), f"{where}.{count_key}", 1, 500),
        retention_hours=None
        if retention is None
        else _int(retention, f"{where}.retention_hours", 1 if kind == "kafka" else 24, 8760),
        encryption=None if encryption is None else _one_of(encryption, f"{where}.encryption", STREAM_ENCRYPTIONS),
        kind=kind,
    )


def _analytics(data: Any, where: str, base: AnalyticsConfig, contract: Contract) -> AnalyticsConfig:
    data = _mapping(data, where, _ANALYTICS_KEYS)
    config = replace(base, keys=contract.keys, value=contract.value)
    if "avg_rows" in data:
        config = replace(config, avg_rows=_int(data["avg_rows"], f"{where}.avg_rows", 0))
    if "baseline_rows" in data:
        config = replace(config, baseline_rows=_int(data["baseline_rows"], f"{where}.baseline_rows", 2))
    if "sigmas" in data:
        config = replace(config, sigmas=_number(data["sigmas"], f"{where}.sigmas", 0))
    return config


def _transforms(data: Any, where: str) -> tuple[str, ...]:
    """Dotted paths, each imported now: a transform that cannot be found fails start-up, naming it."""
    from etl_platform.pipelines.transforms import resolve

    if data is None:
        return ()
    if not isinstance(data, list):
        raise ConfigError(f"{where}: must be a list of dotted paths (package.module.function)")
    for i, path in enumerate(data):
        if not isinstance(path, str) or "." not in path or not all(p.isidentifier() for p in path.split(".")):
            raise ConfigError(f"{where}[{i}]: {path!r} is not a dotted path (package.module.function)")
        resolve(path, f"{where}[{i}]")
    return tuple(data)


def parse_pipelines(data: Any, settings: Settings, env: Mapping[str, str], source: str = "pipelines") -> Pipelines:
    """Every pipeline of the parsed file; the default pipeline is added (the original envelope) when
    the file does not declare it. Names come from `settings` and `env` for the default pipeline."""
    data = _mapping(data, source, ("pipelines",))
    declared = data.get("pipelines") or {}
    if not isinstance(declared, Mapping):
        raise ConfigError(f"{source}: pipelines: must be a mapping of pipeline name to its settings")
    base = AnalyticsConfig.from_env(env)
    index_prefix = env.get("ETL_OPENSEARCH_INDEX_PREFIX", "")
    default_schema = env.get("ETL_WAREHOUSE_SCHEMA") or DEFAULT_WAREHOUSE_SCHEMA
    pipelines: dict[str, Pipeline] = {}
    streams: dict[str, str] = {}
    names = [DEFAULT_PIPELINE, *(n for n in declared if n != DEFAULT_PIPELINE)]
    for name in names:
        where = f"{source}: pipelines.{name}"
        if not isinstance(name, str) or not PIPELINE_NAME_RE.match(name):
            raise ConfigError(f"{where}: a pipeline name is lower-case letters, digits, _ and - (at most 32)")
        if name in RESERVED_NAMES:
            raise ConfigError(f"{where}: {name!r} is reserved (a lake prefix or schema of the platform)")
        spec = _mapping(declared.get(name), where, _PIPELINE_KEYS)
        is_default = name == DEFAULT_PIPELINE
        if "contract" in spec:
            contract = parse_contract(spec["contract"], f"{where}.contract")
        elif is_default:
            contract = DEFAULT_CONTRACT
        else:
            raise ConfigError(f"{where}.contract: missing (required)")
        stream = _stream(spec.get("stream"), f"{where}.stream", settings.stream_name if is_default else None)
        if stream.kind == "kafka" and not settings.kafka_bootstrap:
            raise ConfigError(
                f"{where}.stream: a Kafka topic needs ETL_KAFKA_BOOTSTRAP (its brokers), which is not set"
            )
        if stream.name in streams:
            raise ConfigError(f"{where}.stream: {stream.name!r} is already the stream of {streams[stream.name]}")
        streams[stream.name] = name
        schema = spec.get("warehouse_schema", default_schema if is_default else name.replace("-", "_"))
        if not isinstance(schema, str) or not FIELD_NAME_RE.match(schema):
            raise ConfigError(f"{where}.warehouse_schema: {schema!r} must be lower-case letters, digits and _")
        pipelines[name] = Pipeline(
            name=name,
            stream=stream,
            contract=contract,
            analytics=_analytics(spec.get("analytics"), f"{where}.analytics", base, contract),
            lake_root="" if is_default else f"{name}/",
            warehouse_schema=schema,
            index_prefix=index_prefix + ("" if is_default else f"{name}-"),
            transforms=_transforms(spec.get("transforms"), f"{where}.transforms"),
            description=str(spec.get("description", "")).strip(),
        )
    schemas: dict[str, str] = {}
    for pipeline in pipelines.values():
        other = schemas.setdefault(pipeline.warehouse_schema, pipeline.name)
        if other != pipeline.name:
            raise ConfigError(
                f"{source}: pipelines.{pipeline.name}.warehouse_schema: {pipeline.warehouse_schema!r} is "
                f"already the schema of {other}"
            )
    return Pipelines(pipelines, source)


def load_pipelines(
    settings: Settings, env: Mapping[str, str] | None = None, path: str | Path | None = None
) -> Pipelines:
    """The deployment's pipelines from ETL_PIPELINES_FILE (default `config/pipelines.yaml`)."""
    env = os.environ if env is None else env
    path = Path(path or env.get("ETL_PIPELINES_FILE") or DEFAULT_PATH)
    data = read_yaml(path, "pipelines file", setting="ETL_PIPELINES_FILE")
    return parse_pipelines(data, settings, env, str(path))
