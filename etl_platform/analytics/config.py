"""The analytics settings of a pipeline: window sizes, the anomaly threshold and the key columns."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from etl_platform.analytics.engine import RollingAnomalyDetector
from etl_platform.config import env_number

ANALYTICS_KEYS = ("user_id", "event_type")


@dataclass(frozen=True)
class AnalyticsConfig:
    """The seed's two windows: AVG over `avg_rows` preceding rows + the current one; ANOMALY beyond
    `sigmas` sample standard deviations of the `baseline_rows` preceding rows; per `keys`."""

    avg_rows: int = 10
    baseline_rows: int = 100
    sigmas: float = 3.0
    keys: tuple[str, ...] = ANALYTICS_KEYS
    value: str = "value"  # the column the windows average

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> AnalyticsConfig:
        """ETL_AVG_ROWS, ETL_BASELINE_ROWS and ETL_ANOMALY_SIGMAS, range-checked (ConfigError names the variable)."""
        env = os.environ if env is None else env
        defaults = cls()
        return cls(
            avg_rows=env_number(env, "ETL_AVG_ROWS", defaults.avg_rows, int, 0),
            baseline_rows=env_number(env, "ETL_BASELINE_ROWS", defaults.baseline_rows, int, 2),
            sigmas=env_number(env, "ETL_ANOMALY_SIGMAS", defaults.sigmas, float, 0),
        )

    def new_detector(self) -> RollingAnomalyDetector:
        """An empty detector with these settings."""
        return RollingAnomalyDetector(
            avg_rows=self.avg_rows,
            baseline_rows=self.baseline_rows,
            sigmas=self.sigmas,
            keys=self.keys,
            value=self.value,
        )
