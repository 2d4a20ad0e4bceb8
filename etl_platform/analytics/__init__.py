"""Stream analytics: the seed's two Kinesis Analytics windows, computed incrementally and exactly.

Owns: the engine (`engine.RollingAnomalyDetector`), its compiled loops (`kernel`), per-key state
(`state`), the key hash index (`key_index`), the snapshot format checkpoints store (`snapshot`), its
settings (`config`) and errors (`errors`).
May import: numpy, numba, polars and `etl_platform.config`; nothing else of the platform.
Callers outside the package use the names below.
"""

from etl_platform.analytics.config import ANALYTICS_KEYS, AnalyticsConfig
from etl_platform.analytics.engine import ANOMALY_STATUS, AVG_VALUE, RollingAnomalyDetector
from etl_platform.analytics.errors import (
    AnalyticsConfigError,
    AnalyticsError,
    AnalyticsInputError,
    AnalyticsSnapshotError,
)
from etl_platform.analytics.snapshot import SNAPSHOT_VERSION

__all__ = [
    "ANALYTICS_KEYS",
    "ANOMALY_STATUS",
    "AVG_VALUE",
    "AnalyticsConfig",
    "AnalyticsConfigError",
    "AnalyticsError",
    "AnalyticsInputError",
    "AnalyticsSnapshotError",
    "RollingAnomalyDetector",
    "SNAPSHOT_VERSION",
]
