"""User transforms: Firehose's Lambda data transformation, vectorized over a micro-batch.

A pipeline names transforms by dotted path (`pipelines.<name>.transforms`). Each is a function that
takes the batch's decoded events as a Polars frame and returns a frame:

    def my_transform(events: pl.DataFrame) -> pl.DataFrame: ...

The input has the contract's event columns and `record_id` (the row's identity, as Firehose's
`recordId`). The output must carry every input `record_id` exactly once, with the event columns
(changed or not) and optionally `result` (`Ok` | `Dropped` | `ProcessingFailed`, null meaning Ok)
and `error` (the reason of a ProcessingFailed row). As in Firehose's contract:

- `Ok` rows go on, and must still satisfy the contract (types, required fields, constraints); a row
  that does not is ProcessingFailed, naming the field;
- `Dropped` rows are counted and go nowhere (a filter);
- `ProcessingFailed` rows go to errors/ with the transform's reason, and can be re-driven;
- a transform that raises, or returns a frame that breaks the contract as a whole (a `record_id`
  missing or repeated, a stream-position column changed), fails the rows it was given, never the shard.

Transforms run in order, after decoding and de-duplication and before analytics; raw/ holds what the
pipeline accepted (after them), so a backfill from raw recomputes the same rows without rerunning them.
"""

from __future__ import annotations

import base64
import importlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

import polars as pl

from etl_platform.config import ConfigError
from etl_platform.pipelines.contract import ARRIVAL, Contract

OK, DROPPED, FAILED = "Ok", "Dropped", "ProcessingFailed"
RESULTS = (OK, DROPPED, FAILED)
RECORD_ID, RESULT, ERROR = "record_id", "result", "error"
# What a transform may not change: the record's identity and stream position.
POSITION = ("event_id", "shard_id", "sequence_number", "sub_sequence", "arrival_time", "partition_key")

Transform = Callable[[pl.DataFrame], pl.DataFrame]


def resolve(path: str, where: str = "transforms") -> Transform:
    """The function at a dotted path (`package.module.function`); ConfigError naming `where` otherwise."""
    module_name, _, name = path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # an ImportError, or whatever the user's module raised while loading
        raise ConfigError(f"{where}: cannot import {module_name!r} ({type(exc).__name__}: {exc})") from None
    function = getattr(module, name, None)
    if not callable(function):
        raise ConfigError(f"{where}: {module_name!r} has no function {name!r}")
    return cast(Transform, function)


@dataclass
class TransformResult:
    """What a batch became: the events that go on, the failed records (error rows) and a count of dropped."""

    events: pl.DataFrame
    errors: list[dict[str, Any]] = field(default_factory=list)
    dropped: int = 0


class Transforms:
    """A pipeline's transforms, applied in order to each batch (see the module docstring)."""

    def __init__(self, contract: Contract, paths: Sequence[str]) -> None:
        self.contract = contract
        self.paths = tuple(paths)
        self.functions = [resolve(path, f"transforms[{i}]") for i, path in enumerate(self.paths)]

    def __bool__(self) -> bool:
        return bool(self.functions)

    def apply(self, events: pl.DataFrame) -> TransformResult:
        result = TransformResult(events)
        for path, function in zip(self.paths, self.functions, strict=True):
            if result.events.height == 0:
                break
            result = self._one(path, function, result)
        return result

    def _one(self, path: str, function: Transform, before: TransformResult) -> TransformResult:
        given = before.events.select(list(self.contract.event_schema())).with_row_index(RECORD_ID)
        out = TransformResult(before.events.clear(), list(before.errors), before.dropped)
        try:
            returned = function(given.clone())
            if not isinstance(returned, pl.DataFrame):
                raise TypeError(f"returned {type(returned).__name__}, not a polars DataFrame")
            returned = self._whole(returned, given)
        except Exception as exc:
            out.errors += self.error_rows(before.events, f"transform {path}: {type(exc).__name__}: {exc}")
            return out
        n = returned.height
        status = returned.get_column(RESULT).cast(pl.String) if RESULT in returned.columns else None
        status = pl.repeat(OK, n, eager=True) if status is None else status.fill_null(OK)
        given_reasons = (
            returned.get_column(ERROR).cast(pl.String, strict=False).to_list()
            if ERROR in returned.columns
            else [None] * n
        )
        out.dropped += int((status == DROPPED).sum())
        failed = status != OK
        failed &= status != DROPPED
        for i in failed.arg_true().to_list():
            result = status[i]
            reason = (
                given_reasons[i] or "no reason given"
                if result == FAILED
                else f"result {result!r} is not one of {', '.join(RESULTS)}"
            )
            out.errors += self.error_rows(returned[i], f"transform {path}: {reason}")
        events, invalid = self._contract_rows(
            returned.filter(status == OK).drop(RECORD_ID, RESULT, ERROR, strict=False)
        )
        for row, reason in invalid:
            out.errors += self.error_rows(row, f"transform {path}: output {reason}")
        out.events = events
        return out

    def _whole(self, returned: pl.DataFrame, given: pl.DataFrame) -> pl.DataFrame:
        """The returned frame in input order, or an error when it breaks the contract as a whole."""
        if RECORD_ID not in returned.columns:
            raise ValueError(f"returned no {RECORD_ID} column")
        ids = returned.get_column(RECORD_ID)
        if ids.is_duplicated().any():
            raise ValueError(f"returned {RECORD_ID} {ids.filter(ids.is_duplicated())[0]} more than once")
        missing = given.get_column(RECORD_ID).filter(~given.get_column(RECORD_ID).is_in(ids.implode()))
        if missing.len():
            raise ValueError(f"returned no row for {RECORD_ID} {missing[0]} ({missing.len()} missing)")
        extra = ids.filter(~ids.is_in(given.get_column(RECORD_ID).implode()))
        if extra.len():
            raise ValueError(f"returned {RECORD_ID} {extra[0]} that it was not given")
        absent = [c for c in given.columns if c not in returned.columns]
        if absent:
            raise ValueError(f"returned no {absent[0]} column")
        returned = given.select(RECORD_ID).join(
            returned.with_columns(pl.col(RECORD_ID).cast(pl.UInt32)), on=RECORD_ID, how="left"
        )
        for name in POSITION:
            if not returned.get_column(name).cast(given.schema[name], strict=False).equals(given.get_column(name)):
                raise ValueError(f"changed {name}, the record's identity and stream position")
        return returned

    def _contract_rows(self, kept: pl.DataFrame) -> tuple[pl.DataFrame, list[tuple[pl.DataFrame, str]]]:
        """The Ok rows that still satisfy the contract, cast to its schema; the others with the first
        reason each fails (checked column-wise; only failing rows are visited one by one)."""
        contract = self.contract
        schema = contract.event_schema()
        typed = kept.select(pl.col(name).cast(dtype, strict=False) for name, dtype in schema.items())
        if contract.time != ARRIVAL:  # the event time follows the time field
            typed = typed.with_columns(pl.col(contract.time).alias("event_time"))
        reasons: dict[int, str] = {}

        def check(failing: pl.Series, text: str) -> None:
            for i in failing.fill_null(False).arg_true().to_list():
                reasons.setdefault(i, text)

        for name, dtype in schema.items():
            column, converted = kept.get_column(name), typed.get_column(name)
            check(converted.is_null() & column.is_not_null(), f"field {name}: is not a {dtype}")
            spec = contract.by_name.get(name)
            platform = name in ("event_time", "attributes") and spec is None
            if platform or (
                spec is not None and spec.required and name not in (contract.event_id, contract.attributes)
            ):
                check(converted.is_null(), f"field {name}: missing")
            if spec is None or name in (contract.event_id, contract.attributes):
                continue
            if spec.type == "string" and spec.values is not None:
                allowed = ", ".join(sorted(spec.values))
                check(
                    converted.is_not_null() & ~converted.is_in(list(spec.values)), f"field {name}: not one of {allowed}"
                )
            elif spec.type == "string" and spec.max_length is not None:
                check(
                    converted.str.len_chars() > spec.max_length,
                    f"field {name}: longer than {spec.max_length} characters",
                )
            if spec.type == "float":
                check(converted.is_nan() | converted.is_infinite(), f"field {name}: must be finite")
            if spec.minimum is not None:
                check(converted < spec.minimum, f"field {name}: below the minimum {spec.minimum:g}")
            if spec.maximum is not None:
                check(converted > spec.maximum, f"field {name}: above the maximum {spec.maximum:g}")
        if not reasons:
            return typed, []
        bad = pl.Series(sorted(reasons), dtype=pl.UInt32)
        invalid = [(kept[i], reasons[i]) for i in bad.to_list()]
        keep = ~pl.int_range(typed.height, eager=True, dtype=pl.UInt32).is_in(bad.implode())
        return typed.filter(keep), invalid

    def error_rows(self, events: pl.DataFrame, reason: str) -> list[dict[str, Any]]:
        """errors/ rows for events a transform failed: the stream position and the event as the
        contract's JSON payload (`raw_base64`), so a re-drive puts back what the producer sent."""
        rows = []
        for event in events.iter_rows(named=True):
            payload = json.dumps(self.contract.to_payload(event), default=_json_default, ensure_ascii=False)
            rows.append(
                {
                    "shard_id": event.get("shard_id"),
                    "sequence_number": event.get("sequence_number"),
                    "sub_sequence": event.get("sub_sequence"),
                    "arrival_time": event.get("arrival_time"),
                    "partition_key": event.get("partition_key"),
                    "raw_base64": base64.b64encode(payload.encode("utf-8")).decode("ascii"),
                    "reason": reason,
                }
            )
        return rows


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
