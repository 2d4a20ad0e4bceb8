"""The local stack: real servers on 127.0.0.1 standing in for the AWS services.

See docs/architecture.md, "The local stack".
"""

from __future__ import annotations

import time
from typing import Any

from etl_platform.stack.kafka import KafkaService
from etl_platform.stack.kinesis import KinesisService
from etl_platform.stack.moto import MotoService
from etl_platform.stack.opensearch import OpenSearchService
from etl_platform.stack.postgres import PostgresService
from etl_platform.stack.service import LocalService, StackError, StackPaths

__all__ = ["LocalStack", "StackError"]


class LocalStack:
    """Starts, stops and reports the local servers, and creates the stream and bucket they host."""

    def __init__(self, paths: StackPaths | None = None) -> None:
        paths = paths or StackPaths.default()
        self.services: dict[str, LocalService] = {
            svc.name: svc
            for svc in (
                KinesisService(paths),
                MotoService(paths),
                PostgresService(paths),
                OpenSearchService(paths),
                KafkaService(paths),
            )
        }

    def up(self, log=print, names: list[str] | None = None) -> dict[str, float]:
        """Start every service (or `names`), then bootstrap; returns seconds spent per service."""
        timings: dict[str, float] = {}
        for name, svc in self.services.items():
            if names and name not in names:
                continue
            started = time.monotonic()
            was_up = svc.healthy()
            svc.start()
            timings[name] = time.monotonic() - started
            log(f"{name:<11} {'already up' if was_up else 'started'} at {svc.endpoint()} ({timings[name]:.1f}s)")
        return timings

    def down(self, log=print) -> None:
        for name, svc in reversed(self.services.items()):
            svc.stop()
            log(f"{name:<11} stopped")

    def health(self) -> dict[str, bool]:
        return {name: svc.healthy() for name, svc in self.services.items()}

    def status(self, settings: Any) -> dict[str, Any]:
        """Every endpoint and resource name, plus per-service health, for scripts and people."""
        health = self.health()
        return {
            "profile": settings.profile,
            "kinesis_endpoint": settings.kinesis_endpoint,
            "s3_endpoint": settings.s3_endpoint,
            "cloudwatch_endpoint": settings.cloudwatch_endpoint,
            "lake_bucket": settings.lake_bucket,
            "stream_name": settings.stream_name,
            "postgres_dsn": settings.warehouse_dsn,
            "opensearch_url": settings.opensearch_url,
            "kafka_bootstrap": settings.kafka_bootstrap,
            "dagster_url": settings.dagster_url,
            "healthy": health,
            "logs": {name: str(svc.log_path) for name, svc in self.services.items()},
        }
