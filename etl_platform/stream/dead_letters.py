"""Dead letters: the records decoding refused, listed, and re-driven through validation after a fix.

Every refused record is a row in `errors/dt=<arrival day>/hour=<HH>/...jsonl.gz` with its shard, stream
position, partition key, raw bytes and the reason. A re-drive decodes each row again with today's
validation. A record that now passes is put back on the stream carrying an `event_id`: the producer's,
or else the id derived from its original stream position, the one it would have had. A record still
refused stays where it is, with today's reason in the report.

Exactly once: the positions an error object's re-drives put back are recorded in
`_dead_letters/<error key>.json` after the puts, and a recorded position is never re-driven again
(the records still refused are tried again by the next re-drive, after the next fix). A crash between
the puts and the record re-drives those records once more; their events then arrive twice with the
same `event_id`, and the consumer keeps the first (`stream.dedupe`).
"""

from __future__ import annotations

import base64
import gzip
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from etl_platform.events import derive_event_id
from etl_platform.lake import layout
from etl_platform.pipelines.contract import DEFAULT_CONTRACT, Contract
from etl_platform.stream.decoding import GZIP_MAGIC, decode_records
from etl_platform.stream.producer import KinesisProducer

REDRIVEN = "_dead_letters"


def redriven_key(error_key: str) -> str:
    return f"{REDRIVEN}/{error_key}.json"


def error_keys(s3: Any, bucket: str, first: date, last: date, root: str = "") -> list[str]:
    """The error objects of arrival days `first`..`last` of the pipeline with lake `root`, in key order."""
    keys: list[str] = []
    day = first
    while day <= last:
        keys += layout.list_keys(s3, bucket, layout.day_prefix(root + layout.ERRORS, day))
        day += timedelta(days=1)
    return keys


def reason_kind(reason: str) -> str:
    """A reason without its details, to group by: 'invalid event: field user_id', 'json', 'gzip'..."""
    head = reason.split(": ")
    if head[0] == "invalid event" and len(head) > 1:
        return f"invalid event: {head[1]}"
    return head[0]


def summarize(s3: Any, bucket: str, first: date, last: date, root: str = "") -> list[dict[str, Any]]:
    """Dead-lettered records per arrival day and kind of reason, with one example reason each and
    whether the day's objects were re-driven already."""
    counts: Counter[tuple[str, str]] = Counter()
    examples: dict[tuple[str, str], str] = {}
    redriven: Counter[tuple[str, str]] = Counter()
    for key in error_keys(s3, bucket, first, last, root):
        day = layout.PARTITION_RE.search(key)
        done = _redriven(s3, bucket, key)
        for row in layout.read_jsonl_gz(layout.get(s3, bucket, key)):
            group = (day.group(1) if day else "?", reason_kind(str(row.get("reason", ""))))
            counts[group] += 1
            redriven[group] += int(position(row) in done)
            examples.setdefault(group, str(row.get("reason", "")))
    return [
        {"day": d, "kind": kind, "records": n, "redriven": redriven[(d, kind)], "example": examples[(d, kind)]}
        for (d, kind), n in sorted(counts.items())
    ]


@dataclass
class RedriveResult:
    objects: int = 0  # error objects read
    redriven: int = 0  # records put back on the stream now
    redriven_before: int = 0  # records an earlier re-drive put back (skipped)
    still_invalid: Counter[str] = field(default_factory=Counter)  # today's reason kinds


def position(row: dict[str, Any]) -> str:
    """A dead-lettered record's stream position: shard, sequence number, sub-record."""
    return f"{row.get('shard_id')}:{row.get('sequence_number')}:{int(row.get('sub_sequence') or 0)}"


def _redriven(s3: Any, bucket: str, error_key: str) -> dict[str, str]:
    """position -> event_id of the records of `error_key` re-driven so far."""
    try:
        return json.loads(layout.get(s3, bucket, redriven_key(error_key)))["redriven"]
    except s3.exceptions.NoSuchKey:
        return {}


def _envelope(row: dict[str, Any], contract: Contract) -> tuple[dict[str, Any] | None, str]:
    """The row's record decoded with today's contract: (envelope to put back, "") or (None, reason)."""
    data = base64.b64decode(row.get("raw_base64") or "")
    record = {
        "Data": data,
        "SequenceNumber": row.get("sequence_number") or "0",
        "PartitionKey": row.get("partition_key") or "",
        "ApproximateArrivalTimestamp": datetime.fromisoformat(row["arrival_time"])
        if row.get("arrival_time")
        else datetime.now(UTC),
    }
    decoded = decode_records(str(row.get("shard_id") or ""), [record], contract)
    if decoded.errors:
        return None, decoded.errors[0]["reason"]
    payload = gzip.decompress(data) if data[:2] == GZIP_MAGIC else data
    envelope = json.loads(payload)
    if contract.event_id is not None and not envelope.get(contract.event_id):
        # The id the event would have had, so a second re-drive is a duplicate of the same event.
        envelope[contract.event_id] = derive_event_id(
            str(row["shard_id"]), str(row["sequence_number"]), int(row.get("sub_sequence") or 0)
        )
    return envelope, ""


def redrive(
    s3: Any,
    bucket: str,
    kinesis: Any,
    stream_name: str,
    first: date,
    last: date,
    progress: Callable[[str], None] | None = None,
    root: str = "",
    contract: Contract = DEFAULT_CONTRACT,
    producer: KinesisProducer | None = None,
) -> RedriveResult:
    """Re-drive the dead letters of arrival days `first`..`last` of the pipeline with lake `root` and
    `contract` (see the module docstring)."""
    result = RedriveResult()
    producer = producer or KinesisProducer(kinesis, stream_name, partition_key_field=contract.keys[0])
    keys = error_keys(s3, bucket, first, last, root)
    for n, key in enumerate(keys, start=1):
        done = _redriven(s3, bucket, key)
        envelopes: dict[str, dict[str, Any]] = {}
        invalid: Counter[str] = Counter()
        for row in layout.read_jsonl_gz(layout.get(s3, bucket, key)):
            if position(row) in done:
                result.redriven_before += 1
                continue
            envelope, reason = _envelope(row, contract)
            if envelope is None:
                invalid[reason_kind(reason)] += 1
            else:
                envelopes[position(row)] = envelope
        if envelopes:
            producer.send(list(envelopes.values()))
            done.update({pos: str(envelope.get(contract.event_id or "", "")) for pos, envelope in envelopes.items()})
            record = {"redriven_at": datetime.now(UTC).isoformat(), "redriven": done}
            layout.put(s3, bucket, redriven_key(key), json.dumps(record).encode())
        result.objects += 1
        result.redriven += len(envelopes)
        result.still_invalid.update(invalid)
        if progress:
            progress(f"[{n}/{len(keys)}] {key}: {len(envelopes)} re-driven, {sum(invalid.values())} still refused")
    return result
