"""Kinesis GetRecords records of one shard -> decoded events, plus error rows for whatever cannot be decoded.

A record is one of: a KPL aggregate (magic F3 89 9A C2), gzip-compressed JSON (magic 1F 8B), or plain
JSON; each KPL sub-record is again gzip or plain JSON. Nothing raises and nothing is dropped: every
record or sub-record becomes either an event or an error dict with its stream position, raw bytes
(base64) and a precise reason ("kpl: ...", "gzip: ...", "json: ...", "invalid event: field X: ...").
What an event is comes from the pipeline's contract (`pipelines.contract`; default: the original envelope).

Record-level checks, KPL unpacking and gunzip run record by record; the payloads are then parsed by
orjson and validated a batch at a time, column-wise (`pipelines.columnar`). Rows that path cannot
clear, and payloads orjson refuses, are decided one by one by the reference path (json.loads and
`Contract.to_event`), so every error reason is the reference's and accepted rows equal its events.

KPL aggregates are unpacked with the aws_kinesis_agg protobuf message and constants rather than its
`deaggregator` module, because that module passes a corrupt aggregate (bad MD5 or protobuf) through
as if it were a plain record, and on a bad sub-record prints to stderr and silently drops the rest of
the aggregate; both would break "never dropped silently". The unit tests check that the two agree on
valid aggregates.
"""

from __future__ import annotations

import base64
import hashlib
import json
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aws_kinesis_agg
import aws_kinesis_agg.deaggregator  # noqa: F401  puts its folder on sys.path for messages_pb2's imports
import orjson
import polars as pl
from aws_kinesis_agg import messages_pb2
from google.protobuf.message import DecodeError

from etl_platform.events import InvalidEvent, check_text, derive_event_id, events_to_frame
from etl_platform.pipelines.columnar import ColumnBuilder, arrival_series
from etl_platform.pipelines.contract import DEFAULT_CONTRACT, Contract

KPL_MAGIC: bytes = aws_kinesis_agg.MAGIC
GZIP_MAGIC = b"\x1f\x8b"
# A 1 MiB record can inflate enormously; cap it so one hostile record cannot exhaust memory.
MAX_DECOMPRESSED_BYTES = 16 * 1024 * 1024
MAX_PARTITION_KEY_LEN = 256  # Kinesis' limit, and the warehouse column's


@dataclass(eq=False)
class DecodeResult:
    """Events (a frame of the contract's `event_schema`, in stream order, sub-records in aggregate
    order) and error rows for the error prefix."""

    frame: pl.DataFrame
    errors: list[dict[str, Any]] = field(default_factory=list)
    decoded_bytes: int = 0  # payload bytes after decompression
    record_bytes: int = 0  # the records' Data and PartitionKey, as Kinesis counts them (`reader.record_size`)

    @property
    def events(self) -> list[dict[str, Any]]:
        """The events as dicts (for callers that handle a few events one by one)."""
        return self.frame.to_dicts()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DecodeResult):
            return NotImplemented
        return (
            self.frame.equals(other.frame)
            and self.errors == other.errors
            and self.decoded_bytes == other.decoded_bytes  # what was decoded, not how it came (record_bytes)
        )

    __hash__ = None  # type: ignore[assignment]  # mutable, as a dataclass with eq would be


@dataclass
class DecodedChunk:
    """Consecutive records of a read and what they decoded to."""

    records: Sequence[Mapping[str, Any]]
    result: DecodeResult


class _Bad(Exception):
    """Internal: carries the precise reason of a record that cannot become an event."""


def _gunzip(data: bytes) -> bytes:
    out: list[bytes] = []
    total = 0
    rest = data
    while rest:  # concatenated gzip members are valid gzip
        if rest[:2] != GZIP_MAGIC:
            raise _Bad(f"gzip: {len(rest)} trailing bytes after the gzip stream")
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            chunk = inflater.decompress(rest, MAX_DECOMPRESSED_BYTES - total + 1)
        except zlib.error as exc:
            raise _Bad(f"gzip: {exc}") from None
        total += len(chunk)
        if total > MAX_DECOMPRESSED_BYTES:
            raise _Bad(f"gzip: decompressed size exceeds {MAX_DECOMPRESSED_BYTES} bytes")
        if not inflater.eof:
            raise _Bad("gzip: truncated stream (compressed data ended before the end-of-stream marker)")
        out.append(chunk)
        rest = inflater.unused_data
    return b"".join(out)


def _parse(payload: bytes, contract: Contract, arrival: datetime) -> dict[str, Any]:
    """Decompressed JSON bytes -> the contract's columns of the event (`Contract.to_event`)."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Bad(f"json: payload is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _Bad(f"json: {exc}") from None
    except RecursionError:
        raise _Bad("json: nesting too deep") from None
    if not isinstance(obj, dict):
        raise _Bad(f"json: expected an object, got {type(obj).__name__}")
    try:
        return contract.to_event(obj, arrival)
    except InvalidEvent as exc:
        raise _Bad(f"invalid event: {exc.reason}") from None


def _arrival(raw: Any) -> datetime:
    if isinstance(raw, datetime):
        return raw.replace(tzinfo=UTC) if raw.tzinfo is None else raw.astimezone(UTC)
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        return datetime.fromtimestamp(raw, tz=UTC)  # JSON wire format: epoch seconds
    raise _Bad(f"record: ApproximateArrivalTimestamp must be a datetime or epoch seconds, got {raw!r}")


class _Shard:
    """Accumulates one shard's records: record-level checks, KPL unpacking and gunzip as each record
    comes, then `finish` parses and validates every payload together (see `_validate`)."""

    def __init__(self, shard_id: str, contract: Contract) -> None:
        self.shard_id = shard_id
        self.contract = contract
        self.decoded_bytes = 0
        self.record_bytes = 0
        self.ordinal = 0  # stream order of events and errors alike
        self.errors: list[tuple[int, dict[str, Any]]] = []
        # One entry per payload to validate, in stream order.
        self.ordinals: list[int] = []
        self.sequences: list[str] = []
        self.subs: list[int] = []
        self.arrivals: list[datetime] = []
        self.keys: list[str] = []
        self.payloads: list[bytes] = []  # as they came (what an error row carries)
        self.decoded: list[bytes] = []  # decompressed
        self.columns = ColumnBuilder(contract)

    def error(
        self, seq: str | None, sub: int, arrival: datetime | None, key: str | None, raw: bytes, reason: str
    ) -> None:
        self.errors.append((self.ordinal, _error_row(self.shard_id, seq, sub, arrival, key, raw, reason)))
        self.ordinal += 1

    def one(self, seq: str, sub: int, arrival: datetime, key: str, payload: bytes) -> None:
        """A payload (a record's, or a KPL sub-record's) to validate with the batch."""
        try:
            data = _gunzip(payload) if payload[:2] == GZIP_MAGIC else payload
        except _Bad as exc:
            self.error(seq, sub, arrival, key, payload, str(exc))
            return
        self._queue(seq, sub, arrival, key, payload, data)

    def _queue(self, seq: str, sub: int, arrival: datetime, key: str, payload: bytes, data: bytes) -> None:
        """A payload (as it came, and decompressed) into the batch: parsed now, validated at `finish`."""
        self.decoded_bytes += len(data)
        self.ordinals.append(self.ordinal)
        self.ordinal += 1
        self.sequences.append(seq)
        self.subs.append(sub)
        self.arrivals.append(arrival)
        self.keys.append(key)
        self.payloads.append(payload)
        self.decoded.append(data)
        self.columns.add(_loads(data))

    def aggregate(self, seq: str, arrival: datetime, key: str, data: bytes) -> None:
        body = data[len(KPL_MAGIC) :]
        if len(body) <= aws_kinesis_agg.DIGEST_SIZE:
            raise _Bad(f"kpl: aggregate of {len(data)} bytes is too short for magic + message + MD5 digest")
        message, digest = body[: -aws_kinesis_agg.DIGEST_SIZE], body[-aws_kinesis_agg.DIGEST_SIZE :]
        if hashlib.md5(message).digest() != digest:
            raise _Bad("kpl: MD5 digest mismatch (aggregate corrupt or truncated)")
        # protoc-generated module without a .pyi: its message classes are created at import time
        agg = messages_pb2.AggregatedRecord()  # pyright: ignore[reportAttributeAccessIssue]
        try:
            agg.ParseFromString(message)
        except DecodeError as exc:
            raise _Bad(f"kpl: protobuf decode failed: {exc}") from None
        if not agg.records:
            raise _Bad("kpl: aggregate holds no user records")
        keys = agg.partition_key_table
        for sub, user_record in enumerate(agg.records):
            index = user_record.partition_key_index
            if index >= len(keys):
                self.error(
                    seq,
                    sub,
                    arrival,
                    key,
                    user_record.data,
                    f"kpl: sub-record {sub} partition_key_index {index} out of range ({len(keys)} keys in table)",
                )
                continue
            self.one(seq, sub, arrival, keys[index], user_record.data)

    def record(self, record: Mapping[str, Any]) -> None:
        raw, seq, key = record.get("Data"), record.get("SequenceNumber"), record.get("PartitionKey")
        arrival = record.get("ApproximateArrivalTimestamp")
        # The common record (a plain payload, well-formed metadata) checked inline: `_checked_record`
        # gives the same verdict for it, at several calls' cost per record.
        if (
            type(raw) is bytes
            and type(seq) is str
            and type(key) is str
            and type(arrival) is datetime
            and arrival.tzinfo is not None
            and seq.isdigit()
            and seq.isascii()
            and key.isascii()
            and len(key) <= MAX_PARTITION_KEY_LEN
            and "\x00" not in key
            and raw[:2] != GZIP_MAGIC
            and raw[: len(KPL_MAGIC)] != KPL_MAGIC
        ):
            self.record_bytes += len(raw) + len(key)
            self._queue(seq, 0, arrival.astimezone(UTC), key, raw, raw)
            return
        self._checked_record(record)

    def _checked_record(self, record: Mapping[str, Any]) -> None:
        raw = record.get("Data")
        data = bytes(raw) if isinstance(raw, bytes | bytearray | memoryview) else b""
        seq = record.get("SequenceNumber")
        seq = None if seq is None else str(seq)
        key = record.get("PartitionKey")
        self.record_bytes += len(data) + (len(key) if isinstance(key, str) else 0)
        arrival: datetime | None = None
        try:
            arrival = _arrival(record.get("ApproximateArrivalTimestamp"))
            if seq is None or not (seq.isascii() and seq.isdigit()):
                raise _Bad(f"record: SequenceNumber must be decimal digits, got {seq!r}")
            if not isinstance(key, str):
                raise _Bad(f"record: PartitionKey must be a string, got {type(key).__name__}")
            if len(key) > MAX_PARTITION_KEY_LEN:
                raise _Bad(f"record: PartitionKey longer than {MAX_PARTITION_KEY_LEN} characters ({len(key)})")
            try:
                check_text("PartitionKey", key)
            except InvalidEvent as exc:
                raise _Bad(f"record: {exc.reason}") from None
            if not isinstance(raw, bytes | bytearray | memoryview):
                raise _Bad(f"record: Data must be bytes, got {type(raw).__name__}")
            if data[: len(KPL_MAGIC)] == KPL_MAGIC:
                self.aggregate(seq, arrival, key, data)
            else:
                self.one(seq, 0, arrival, key, data)
        except _Bad as exc:
            self.error(seq, 0, arrival, key if isinstance(key, str) else None, data, str(exc))
        except Exception as exc:  # a decoder bug must not stop the shard either
            self.error(
                seq, 0, arrival, key if isinstance(key, str) else None, data, f"internal: {type(exc).__name__}: {exc}"
            )

    def finish(self) -> DecodeResult:
        """Every payload parsed and validated: the events frame and the error rows, in stream order."""
        frame, payload_errors = self._validate()
        errors = sorted([*self.errors, *payload_errors], key=lambda item: item[0])
        return DecodeResult(frame, [row for _, row in errors], self.decoded_bytes, self.record_bytes)

    def _validate(self) -> tuple[pl.DataFrame, list[tuple[int, dict[str, Any]]]]:
        """The batch's payloads (parsed by orjson as they came) checked column-wise
        (`pipelines.columnar`); the rows that path cannot clear, and payloads orjson refuses, go one
        by one through `_parse`, the reference path, which gives each its event or its precise reason."""
        schema = self.contract.event_schema()
        n = len(self.decoded)
        arrivals = arrival_series(self.arrivals)
        checked = self.columns.columns(arrivals)
        position = {
            "shard_id": pl.Series([self.shard_id] * n, dtype=pl.String),
            "sequence_number": pl.Series(self.sequences, dtype=pl.String),
            "sub_sequence": pl.Series(self.subs, dtype=pl.Int64),
            "arrival_time": arrivals,
            "partition_key": pl.Series(self.keys, dtype=pl.String),
        }
        ordinals = pl.Series(_ORDINAL, self.ordinals, dtype=pl.Int64)
        fast = (
            pl.DataFrame({**checked.columns, **position, _ORDINAL: ordinals})
            .filter(~checked.flagged)
            .select([*schema, _ORDINAL])
        )
        fast = self._with_derived_ids(fast)
        errors: list[tuple[int, dict[str, Any]]] = []
        slow_events: list[dict[str, Any]] = []
        for i in checked.flagged.arg_true().to_list():
            seq, sub, arrival, key = self.sequences[i], self.subs[i], self.arrivals[i], self.keys[i]
            try:
                event = _parse(self.decoded[i], self.contract, arrival)
            except _Bad as exc:
                reason = str(exc)
            except Exception as exc:  # a decoder bug must not drop the batch's other records
                reason = f"internal: {type(exc).__name__}: {exc}"
            else:
                event["event_id"] = event["event_id"] or derive_event_id(self.shard_id, seq, sub)
                event.update(shard_id=self.shard_id, sequence_number=seq, sub_sequence=sub)
                event.update(arrival_time=arrival, partition_key=key, **{_ORDINAL: self.ordinals[i]})
                slow_events.append(event)
                continue
            errors.append(
                (self.ordinals[i], _error_row(self.shard_id, seq, sub, arrival, key, self.payloads[i], reason))
            )
        if not slow_events:
            return fast.drop(_ORDINAL), errors
        unconvertible: list[dict[str, Any]] = []
        slow = isolate_unconvertible(slow_events, unconvertible, self.contract, extra={_ORDINAL: pl.Int64()})
        errors += [(self.ordinal, row) for row in unconvertible]
        return pl.concat([fast, slow]).sort(_ORDINAL).drop(_ORDINAL), errors

    def _with_derived_ids(self, frame: pl.DataFrame) -> pl.DataFrame:
        """Ids from the stream position for events whose payload has none."""
        missing = frame["event_id"].is_null()
        if not missing.any():
            return frame
        rows = frame.filter(missing).select("sequence_number", "sub_sequence")
        derived = [
            derive_event_id(self.shard_id, seq, sub)
            for seq, sub in zip(rows["sequence_number"], rows["sub_sequence"], strict=True)
        ]
        ids = frame["event_id"].scatter(missing.arg_true(), derived)
        return frame.with_columns(ids)


_ORDINAL = "__ordinal"  # a payload's place among the shard's events and errors, while decoding


def _loads(data: bytes) -> Any:
    """A payload parsed by orjson, or None for whatever it refuses (the reference path then decides)."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None


def _error_row(
    shard_id: str, seq: str | None, sub: int, arrival: datetime | None, key: str | None, raw: bytes, reason: str
) -> dict[str, Any]:
    return {
        "shard_id": shard_id,
        "sequence_number": seq,
        "sub_sequence": sub,
        "arrival_time": arrival,
        "partition_key": key,
        "raw_base64": base64.b64encode(raw).decode("ascii"),
        "reason": reason,
    }


def decode_records(
    shard_id: str, records: Iterable[Mapping[str, Any]], contract: Contract = DEFAULT_CONTRACT
) -> DecodeResult:
    """Decode one shard's GetRecords `Records` by `contract`; never raises for bad data, never drops a record."""
    shard = _Shard(shard_id, contract)
    for record in records:
        shard.record(record)
    return shard.finish()


def decode_chunks(
    shard_id: str,
    records: Sequence[Mapping[str, Any]],
    max_decoded_bytes: int,
    contract: Contract = DEFAULT_CONTRACT,
) -> Iterator[DecodedChunk]:
    """`decode_records` in chunks of consecutive records, each cut once its payloads decompress to
    `max_decoded_bytes` (so at most that plus one record, itself capped at MAX_DECOMPRESSED_BYTES): a
    read of small records that inflate enormously is decoded a chunk at a time, never all at once."""
    shard, start = _Shard(shard_id, contract), 0
    for i, record in enumerate(records):
        shard.record(record)
        if shard.decoded_bytes >= max_decoded_bytes:
            yield DecodedChunk(records[start : i + 1], shard.finish())
            shard, start = _Shard(shard_id, contract), i + 1
    if start < len(records):
        yield DecodedChunk(records[start:], shard.finish())


def isolate_unconvertible(
    events: list[dict[str, Any]],
    errors: list[dict[str, Any]],
    contract: Contract = DEFAULT_CONTRACT,
    extra: Mapping[str, pl.DataType] | None = None,
) -> pl.DataFrame:
    """The events as a frame (`events_to_frame`); should some event fail the conversion all the same
    (validation is meant to refuse anything that would), the batch is split in halves until each
    offending event is isolated, and those become error rows appended to `errors` instead of failing
    the batch again on every retry (a poison batch). Bisection costs O(k log n) conversions for k bad
    events. `extra` columns, which the events also carry, follow the contract's."""
    schema = {**contract.event_schema(), **(extra or {})}
    try:
        return events_to_frame(events, schema)
    except Exception as exc:
        if len(events) > 1:
            middle = len(events) // 2
            return pl.concat(
                [
                    isolate_unconvertible(events[:middle], errors, contract, extra),
                    isolate_unconvertible(events[middle:], errors, contract, extra),
                ]
            )
        event = events[0]
        decoded = {k: v for k, v in event.items() if k not in (extra or {})}
        errors.append(
            {
                "shard_id": event["shard_id"],
                "sequence_number": event["sequence_number"],
                "sub_sequence": event["sub_sequence"],
                "arrival_time": event["arrival_time"],
                "partition_key": event["partition_key"],
                # the decoded event, as JSON with \\u escapes (it may hold what UTF-8 cannot)
                "raw_base64": base64.b64encode(json.dumps(decoded, default=str).encode("ascii")).decode("ascii"),
                "reason": f"internal: event cannot become a row ({type(exc).__name__}: {exc})",
            }
        )
        return events_to_frame([], schema)
