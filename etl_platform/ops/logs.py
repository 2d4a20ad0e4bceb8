"""Structured logs: one JSON object per line, for CloudWatch Logs (and Logs Insights) in AWS.

This module owns the platform's log format: `JsonFormatter` (a `logging.Formatter`), the fields a
shard worker's batch lines carry (`batch_log_fields`), and `configure_logging`, which sets up the
platform's own python loggers for the profile (`ETL_LOG_FORMAT`: json in aws, text locally).

A line has `time` (ISO-8601 UTC), `level`, `logger` and `message`; then, when present, `run_id`,
`job`, `step` and `event` from the metadata Dagster attaches to the records it hands to the handlers
of the instance's `python_logs` (`dagster_meta`, `dagster_event`), the batch fields callers pass with
`extra=` (`pipeline`, `stream`, `shard`, `first_sequence`, `last_sequence`, counts), and `exception`
(the record's traceback, or the error of a Dagster failure event such as STEP_FAILURE). Dagster logs
its step and run lifecycle events at DEBUG, so at the deployment's INFO only failures among them show.

In AWS every task's stdout and stderr go to CloudWatch Logs through the ECS `awslogs` log driver;
`deploy/dagster.yaml` attaches a stdout handler with this formatter to every run's log manager, so
each Dagster run's log lines reach CloudWatch as JSON with their run id.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any

from etl_platform.config import Settings

if TYPE_CHECKING:  # types only: the CLI configures logging before it imports the data path
    from etl_platform.pipelines import Pipeline
    from etl_platform.stream.consumer import BatchResult

# Fields a caller may pass with `extra=` that become fields of the line (others are not written:
# a record's attributes also hold internals no reader wants).
EXTRA_FIELDS = (
    "pipeline",
    "stream",
    "shard",
    "first_sequence",
    "last_sequence",
    "records",
    "events",
    "errors",
    "millis_behind_latest",
)
PLATFORM_LOGGER = "etl_platform"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_HANDLER_NAME = "etl_platform.ops.logs"  # the handler configure_logging installs (found again to replace it)


def _dagster_fields(record: logging.LogRecord) -> tuple[str | None, dict[str, Any]]:
    """(the message as logged, run_id/job/step/event) from what Dagster's log handler attached."""
    meta = getattr(record, "dagster_meta", None)
    if not isinstance(meta, Mapping):
        return None, {}
    fields: dict[str, Any] = {"run_id": meta.get("run_id"), "job": meta.get("job_name"), "step": meta.get("step_key")}
    event = meta.get("dagster_event")
    if event is not None:
        fields["event"] = getattr(event, "event_type_value", None)
        # A failure event carries its error (with the stack) beside the message, as Dagster's own text does.
        data = getattr(event, "event_specific_data", None)
        error = getattr(data, "error", None)
        if error is not None:
            fields["exception"] = getattr(data, "error_display_string", None) or error.to_string()
    # Dagster rewrites record.msg to "job - run_id - step - message"; the fields carry those already.
    return meta.get("orig_message"), {k: v for k, v in fields.items() if v is not None}


class JsonFormatter(logging.Formatter):
    """A log record as one JSON object on one line (see the module docstring for the fields)."""

    def format(self, record: logging.LogRecord) -> str:
        original, dagster = _dagster_fields(record)
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": original if original is not None else record.getMessage(),
            **dagster,
        }
        for name in EXTRA_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info:
            record.exc_text = record.exc_text or self.formatException(record.exc_info)
        if record.exc_text:
            line["exception"] = record.exc_text  # the record's own over a failure event's
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        # default=str: a field of another type (a Path, a datetime) is written, never an error.
        return json.dumps(line, default=str, ensure_ascii=False)


def batch_log_fields(pipeline: Pipeline | str, stream: str, result: BatchResult) -> dict[str, Any]:
    """The `extra=` of a shard worker's line about a batch: `context.log.info(msg, extra=...)`."""
    return {
        "pipeline": pipeline if isinstance(pipeline, str) else pipeline.name,
        "stream": stream,
        "shard": result.shard_id,
        "first_sequence": result.first_sequence,
        "last_sequence": result.last_sequence,
        "records": result.records,
        "events": result.events,
        "errors": result.errors,
        "millis_behind_latest": result.millis_behind_latest,
    }


def configure_logging(settings: Settings, stream: IO[str] | None = None, level: int = logging.INFO) -> logging.Handler:
    """Send the platform's own python loggers (`etl_platform.*`) to `stream` (default: stderr, which
    keeps the CLI's stdout for its JSON results) as JSON lines or text, by `settings.log_format`.
    Idempotent: a second call replaces the handler the first installed. Returns the handler."""
    logger = logging.getLogger(PLATFORM_LOGGER)
    for old in [h for h in logger.handlers if h.get_name() == _HANDLER_NAME]:
        logger.removeHandler(old)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else logging.Formatter(TEXT_FORMAT))
    logger.addHandler(handler)
    logger.setLevel(level)
    # Not also through the root logger's handlers (a second, differently formatted copy of each line).
    logger.propagate = False
    return handler
