"""OpenSearch documents and bulk actions built column-wise from a processed frame (polars, not dicts).

Serialization is most of a Python indexer's cost, so one JSON line per row comes from polars
expressions, with the canonical `attributes` JSON spliced in as an object. `_id` = `event_id`, so
re-sending a document overwrites it (docs/architecture.md, "Delivery guarantees").
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import polars as pl

from etl_platform.search.indices import ANOMALIES, EVENT_PROPERTIES, EVENTS, check_prefix

TIME_FORMAT = "%Y-%m-%dT%H:%M:%S%.6fZ"
# Columns copied into a document as they are, in this order; `attributes` and `indexed_at` are added.
_ADDED = ("attributes", "indexed_at")
DOC_COLUMNS = tuple(name for name in EVENT_PROPERTIES if name not in _ADDED)


def timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def documents(frame: pl.DataFrame, indexed_at: datetime, properties: Mapping[str, Any] | None = None) -> pl.DataFrame:
    """One JSON document per row (column `doc`), plus `_id` and the event-time `_day` (YYYY.MM.DD).

    Times become ISO-8601 UTC strings with microseconds; `attributes` (canonical JSON text from
    decoding) is spliced in as an object for the `flat_object` field. Columns the mapping does not know
    are left out, so the micro-batch frame (with `shard_depth` etc.) and a replayed one index alike.
    `properties`: the pipeline's mapping (`indices.contract_properties`; default the default pipeline's).
    """
    columns = DOC_COLUMNS if properties is None else tuple(n for n in properties if n not in _ADDED)
    if "event_id" not in frame.columns or "event_time" not in frame.columns:
        raise ValueError("a processed frame needs event_id and event_time columns")
    fields = []
    for name in columns:
        if name not in frame.columns:
            continue
        expr = pl.col(name)
        if isinstance(frame.schema[name], pl.Datetime):
            expr = expr.dt.convert_time_zone("UTC").dt.strftime(TIME_FORMAT)
        fields.append(expr.alias(name))
    attributes = pl.col("attributes").fill_null("{}") if "attributes" in frame.columns else pl.lit("{}")
    body = pl.struct(fields).struct.json_encode()
    doc = pl.concat_str(
        [
            body.str.strip_suffix("}"),
            pl.lit(f',"indexed_at":"{timestamp(indexed_at)}","attributes":'),
            attributes,
            pl.lit("}"),
        ]
    )
    return frame.select(
        pl.col("event_id").alias("_id"),
        pl.col("event_time").dt.convert_time_zone("UTC").dt.strftime("%Y.%m.%d").alias("_day"),
        (pl.col("anomaly_status") == "ANOMALY").fill_null(False).alias("_anomaly")
        if "anomaly_status" in frame.columns
        else pl.lit(False).alias("_anomaly"),
        doc.alias("doc"),
    )


def bulk_lines(docs: pl.DataFrame, prefix: str = "") -> pl.DataFrame:
    """Bulk `index` actions for every doc into events-<day>, and for anomalies also into anomalies-<day>.

    Columns: `_index`, `_id`, `payload` (action line + document line, newline-terminated), `size` (bytes).
    """
    check_prefix(prefix)
    parts = []
    for family, rows in ((EVENTS, docs), (ANOMALIES, docs.filter(pl.col("_anomaly")))):
        if rows.height == 0:
            continue
        target = pl.concat_str([pl.lit(f"{prefix}{family}-"), pl.col("_day")])
        action = pl.struct(pl.struct(target.alias("_index"), pl.col("_id")).alias("index")).struct.json_encode()
        parts.append(
            rows.select(
                target.alias("_index"),
                pl.col("_id"),
                pl.concat_str([action, pl.lit("\n"), pl.col("doc"), pl.lit("\n")]).alias("payload"),
            )
        )
    if not parts:
        return pl.DataFrame(schema={"_index": pl.String, "_id": pl.String, "payload": pl.String, "size": pl.UInt32})
    out = pl.concat(parts)
    return out.with_columns(pl.col("payload").str.len_bytes().alias("size"))
