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
    lake_rows: int
    lake_anomalies: int
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
    client: Any, s3: Any, bucket: str, day: date, prefix: str = "", pending: PendingObjects | None = None
) -> DayCounts:
    """Processed rows (and anomalies) of the day in the lake vs documents in its two daily indices.

    Refreshes the two indices first so documents written moments ago are counted.
    """
    import polars as pl

    rows = anomalies = 0
    for key in committed(layout.list_keys(s3, bucket, layout.day_prefix(layout.PROCESSED, day)), pending):
        status = layout.read_parquet(layout.get(s3, bucket, key)).select("anomaly_status")
        rows += status.height
        anomalies += status.filter(pl.col("anomaly_status") == "ANOMALY").height
    events_index, anomalies_index = index_name(EVENTS, day, prefix), index_name(ANOMALIES, day, prefix)
    client.indices.refresh(index=f"{events_index},{anomalies_index}", ignore_unavailable=True, allow_no_indices=True)
    return DayCounts(
        day, rows, anomalies, count_documents(client, events_index), count_documents(client, anomalies_index)
    )
