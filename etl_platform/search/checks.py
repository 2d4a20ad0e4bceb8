"""Does a day's search index equal the lake? Counts on both sides, for the asset check and the CLI."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

from etl_platform.lake import layout
from etl_platform.lake.visibility import PendingObjects, committed
from etl_platform.search.indexer import count_documents
from etl_platform.search.indices import ANOMALIES, EVENTS, index_name


@dataclass(frozen=True)
class DayCounts:
    day: date
    lake_rows: int  # distinct event ids
    lake_anomalies: int  # distinct event ids with an ANOMALY row
    indexed_docs: int
    indexed_anomalies: int

    @property
    def matches(self) -> bool:
        return self.lake_rows == self.indexed_docs and self.lake_anomalies == self.indexed_anomalies

    def describe(self) -> str:
        verdict = "match" if self.matches else "MISMATCH"
        return (
            f"{self.day}: {verdict}: lake {self.lake_rows} rows / {self.lake_anomalies} anomalies, "
            f"index {self.indexed_docs} docs / {self.indexed_anomalies} anomalies"
        )


def day_counts(
    client: Any,
    s3: Any,
    bucket: str,
    day: date,
    prefix: str = "",
    pending: PendingObjects | None = None,
    root: str = "",
) -> DayCounts:
    """The day's distinct events (and distinct events with an ANOMALY row) in the lake's committed
    processed objects vs documents in its two daily indices.

    Distinct, because a document is keyed by `event_id`: an event delivered twice (a producer retry)
    is two rows in the lake and one document. Refreshes the two indices first so documents written
    moments ago are counted.
    """
    import polars as pl

    keys = committed(layout.list_keys(s3, bucket, layout.day_prefix(root + layout.PROCESSED, day)), pending)
    frames = [layout.read_parquet(layout.get(s3, bucket, key)).select("event_id", "anomaly_status") for key in keys]
    lake = pl.concat(frames) if frames else pl.DataFrame(schema={"event_id": pl.String, "anomaly_status": pl.String})
    rows = lake["event_id"].n_unique()
    anomalies = lake.filter(pl.col("anomaly_status") == "ANOMALY")["event_id"].n_unique()
    events_index, anomalies_index = index_name(EVENTS, day, prefix), index_name(ANOMALIES, day, prefix)
    client.indices.refresh(index=f"{events_index},{anomalies_index}", ignore_unavailable=True, allow_no_indices=True)
    return DayCounts(
        day, rows, anomalies, count_documents(client, events_index), count_documents(client, anomalies_index)
    )
