"""Structured logs (etl_platform.ops.logs): the JSON formatter on real log records, including the records
a real Dagster run hands to the handler deploy/dagster.yaml configures, and configure_logging."""

# No `from __future__ import annotations`: Dagster checks an op's `context` annotation as a class.
import dataclasses
import io
import json
import logging
from datetime import datetime
from pathlib import Path

import yaml
from dagster import OpExecutionContext, instance_for_test, job, op

from etl_platform.config import load_settings
from etl_platform.ops.logs import PLATFORM_LOGGER, JsonFormatter, batch_log_fields, configure_logging
from etl_platform.stream.consumer import BatchResult

REPO = Path(__file__).resolve().parents[2]
BATCH = BatchResult(
    "shardId-000000000001", first_sequence="49600001", last_sequence="49600099", records=99, events=97, errors=2
)


def logged(logger: logging.Logger, emit) -> list[dict]:
    """What `emit(logger)` writes through a JsonFormatter handler, as parsed lines."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    try:
        emit(logger)
    finally:
        logger.removeHandler(handler)
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_a_record_is_one_json_line_with_the_batch_fields_and_the_exception():
    logger = logging.getLogger("etl_platform.test_logs")
    logger.setLevel(logging.INFO)

    def emit(log: logging.Logger) -> None:
        log.info("batch committed:\n%d records", 99, extra=batch_log_fields("seed", "seed-events", BATCH))
        try:
            raise ValueError("bad payload")
        except ValueError:
            log.exception("batch failed", extra={"shard": "shardId-000000000001"})

    committed, failed = logged(logger, emit)
    assert datetime.fromisoformat(committed.pop("time")).utcoffset().total_seconds() == 0  # ISO-8601 UTC
    assert committed == {
        "level": "INFO",
        "logger": "etl_platform.test_logs",
        "message": "batch committed:\n99 records",  # newlines stay inside the one line's string
        "pipeline": "seed",
        "stream": "seed-events",
        "shard": "shardId-000000000001",
        "first_sequence": "49600001",
        "last_sequence": "49600099",
        "records": 99,
        "events": 97,
        "errors": 2,
        "millis_behind_latest": 0,
    }
    assert (failed["level"], failed["message"], failed["shard"]) == ("ERROR", "batch failed", "shardId-000000000001")
    assert failed["exception"].startswith("Traceback") and "ValueError: bad payload" in failed["exception"]
    assert "run_id" not in failed and "pipeline" not in failed  # only fields the record has


@op
def log_a_batch(context: OpExecutionContext) -> None:
    context.log.info("shard shardId-000000000001: 99 records", extra=batch_log_fields("default", "etl-events", BATCH))
    context.log.debug("below the instance's python_log_level")


@job
def logging_job() -> None:
    log_a_batch()


@op
def fail(context) -> None:
    raise RuntimeError("lease lost")


@job
def failing_job() -> None:
    fail()


def test_a_dagster_runs_records_through_the_deploy_configs_handler(capsys):
    """deploy/dagster.yaml's python_logs, on a real instance: each run record is a JSON line on stdout
    with the run's id, its job and step, and the batch fields the op passed."""
    python_logs = yaml.safe_load((REPO / "deploy" / "dagster.yaml").read_text())["python_logs"]
    with instance_for_test(overrides={"python_logs": python_logs}) as instance:
        capsys.readouterr()
        outcome = logging_job.execute_in_process(instance=instance)
        lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        failed = failing_job.execute_in_process(instance=instance, raise_on_error=False)
        failure = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert outcome.success and not failed.success
    assert lines and {line["run_id"] for line in lines} == {outcome.run_id}
    assert {line["job"] for line in lines} == {"logging_job"}
    ours = [line for line in lines if line["message"] == "shard shardId-000000000001: 99 records"]
    assert len(ours) == 1
    assert ours[0]["step"] == "log_a_batch" and ours[0]["level"] == "INFO"
    assert (ours[0]["shard"], ours[0]["first_sequence"], ours[0]["last_sequence"]) == (
        "shardId-000000000001",
        "49600001",
        "49600099",
    )
    # Nothing below INFO (Dagster's lifecycle events are DEBUG); a failure comes as an event with its error.
    assert len(lines) == 1
    step_failure = next(line for line in failure if line.get("event") == "STEP_FAILURE")
    assert (step_failure["level"], step_failure["run_id"], step_failure["step"]) == ("ERROR", failed.run_id, "fail")
    assert "RuntimeError: lease lost" in step_failure["exception"]
    assert any(line.get("event") == "PIPELINE_FAILURE" and line["run_id"] == failed.run_id for line in failure)


def test_configure_logging_follows_the_profile_and_replaces_its_handler():
    logger = logging.getLogger(PLATFORM_LOGGER)
    before, propagate = list(logger.handlers), logger.propagate  # an earlier test may have configured it
    out = io.StringIO()
    try:
        aws_like = dataclasses.replace(load_settings({}), log_format="json")
        configure_logging(aws_like, stream=io.StringIO())
        configure_logging(aws_like, stream=out)  # again: replaces, never a second copy of each line
        logging.getLogger("etl_platform.stream").info("read", extra={"shard": "shardId-000000000000"})
        (line,) = [json.loads(text) for text in out.getvalue().splitlines()]
        assert (line["logger"], line["message"], line["shard"]) == (
            "etl_platform.stream",
            "read",
            "shardId-000000000000",
        )

        text = io.StringIO()
        handler = configure_logging(load_settings({}), stream=text)  # the local profile: text
        logging.getLogger("etl_platform.stream").warning("slow read")
        assert text.getvalue().rstrip().endswith("WARNING etl_platform.stream: slow read")
        assert [h for h in logger.handlers if h.get_name() == handler.get_name()] == [handler]
    finally:
        logger.handlers[:] = before
        logger.propagate = propagate
