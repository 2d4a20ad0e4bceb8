"""Firehose's "failed documents only" S3 backup: documents OpenSearch refused, kept in the lake.

`search-failed/dt=…/hour=…/<digest>-<part>.jsonl.gz` holds, per document, the index, `_id`, index
prefix, status, error, failure time and the document itself: counted, never dropped.
`indexer.replay_failed` re-indexes them later and deletes each object once delivered.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime
from typing import Any

from etl_platform.lake import layout
from etl_platform.search.bulk import MIB, Failure
from etl_platform.search.documents import timestamp

FAILED = "search-failed"


def failed_prefix(day: date | str | None = None) -> str:
    return f"{FAILED}/" if day is None else layout.day_prefix(FAILED, day)


def backup_failures(
    s3: Any,
    bucket: str,
    failures: Sequence[Failure],
    payloads: Sequence[str],
    indices: Sequence[str],
    ids: Sequence[str],
    prefix: str,
    now: datetime,
    max_object_bytes: int = 5 * MIB,
) -> list[str]:
    """Write failed documents to the lake; returns the object keys. Same failures, same keys."""
    if not failures:
        return []
    failed_at = timestamp(now)
    lines = []
    for failure in sorted(failures, key=lambda f: f.position):
        doc = payloads[failure.position].split("\n", 1)[1].rstrip("\n")
        error = failure.error if isinstance(failure.error, str | dict | list) else str(failure.error)
        lines.append(
            f'{{"index":{json.dumps(indices[failure.position])},"id":{json.dumps(ids[failure.position])},'
            f'"prefix":{json.dumps(prefix)},"status":{json.dumps(failure.status)},'
            f'"error":{json.dumps(error)},"failed_at":"{failed_at}","doc":{doc}}}'
        )
    digest = hashlib.sha1(
        "\n".join(sorted(f"{indices[f.position]}/{ids[f.position]}" for f in failures)).encode()
    ).hexdigest()[:16]
    hour = layout.HourPartition.of(now.astimezone(UTC))
    keys = []
    part_lines: list[str] = []
    size = 0
    for line in [*lines, None]:
        if line is None or (part_lines and size + len(line) + 1 > max_object_bytes):
            key = f"{hour.prefix(FAILED)}{digest}-{len(keys):04d}.jsonl.gz"
            layout.put(s3, bucket, key, layout.gzip_lines(part_lines))
            keys.append(key)
            part_lines, size = [], 0
        if line is not None:
            part_lines.append(line)
            size += len(line) + 1
    return keys


def iter_failed(s3: Any, bucket: str, day: date | str | None = None) -> Iterable[dict[str, Any]]:
    """Every backed-up failed document record (index, id, prefix, status, error, failed_at, doc)."""
    for key in layout.list_keys(s3, bucket, failed_prefix(day)):
        yield from layout.read_jsonl_gz(layout.get(s3, bucket, key))
