"""The CLI's error boundary and its one-line messages, without servers: `run`, `describe`, the parser's
usage errors, the date type, the `stack status` table and the progress line."""

from __future__ import annotations

import argparse
import errno

import pytest

from etl_platform.cli.failures import EXIT_INTERRUPTED, UserError, describe, run
from etl_platform.cli.main import Progress, build_parser, status_table
from etl_platform.cli.options import iso_date
from etl_platform.config import ConfigError


def _raise(exc: BaseException):
    def body() -> int:
        raise exc

    return body


def test_unexpected_exception_is_one_line_without_traceback(capsys):
    assert run("etl-platform x", _raise(RuntimeError("boom\nsecond line"))) == 1
    err = capsys.readouterr().err
    assert err == "etl-platform x: internal error: RuntimeError: boom (run with --debug for the traceback)\n"


def test_debug_re_raises():
    with pytest.raises(RuntimeError, match="boom"):
        run("etl-platform x", _raise(RuntimeError("boom")), debug=True)


def test_keyboard_interrupt_is_quiet_130(capsys):
    assert run("etl-platform x", _raise(KeyboardInterrupt())) == EXIT_INTERRUPTED
    assert capsys.readouterr().err == ""


def test_user_error_and_config_error(capsys):
    assert run("etl-platform x", _raise(UserError("it is wrong", "do this", 2))) == 2
    assert run("etl-platform x", _raise(ConfigError("ETL_X='y' is not a port"))) == 2
    assert capsys.readouterr().err.splitlines() == [
        "etl-platform x: it is wrong — do this",
        "configuration error: ETL_X='y' is not a port",
    ]


def test_missing_file():
    exc = FileNotFoundError(errno.ENOENT, "No such file or directory", "events.jsonl")
    assert describe(exc) == (2, "cannot read events.jsonl: no such file or directory — check the path")


def test_a_wrapped_refused_connection_is_the_stack_down():
    try:
        try:
            raise ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
        except ConnectionRefusedError as inner:
            raise RuntimeError("client failed") from inner
    except RuntimeError as outer:
        code, message = describe(outer) or (0, "")
    assert code == 1 and message.startswith("the local stack is not running") and "etl-platform stack up" in message


def test_broken_pipe_is_silent(capsys):
    assert run("etl-platform x", _raise(BrokenPipeError())) == 1
    assert capsys.readouterr().err == ""


def test_usage_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["errors", "list", "--from", "2026-02-30"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == (
        "etl-platform errors: argument --from: expected a date as YYYY-MM-DD, got '2026-02-30' "
        "— see `etl-platform errors --help`\n"
    )


def test_debug_flag_before_or_after_the_command():
    parser = build_parser()
    assert parser.parse_args(["--debug", "doctor"]).debug is True
    assert parser.parse_args(["doctor", "--debug"]).debug is True
    assert parser.parse_args(["doctor"]).debug is False


def test_iso_date():
    assert iso_date("2026-05-01").isoformat() == "2026-05-01"
    with pytest.raises(argparse.ArgumentTypeError, match="expected a date as YYYY-MM-DD, got '05/01/2026'"):
        iso_date("05/01/2026")


def test_status_table_is_aligned_and_keeps_every_field():
    status = {
        "profile": "local",
        "kinesis_endpoint": "http://127.0.0.1:4568",
        "s3_endpoint": "http://127.0.0.1:5050",
        "lake_bucket": "etl-lake",
        "kafka_bootstrap": "127.0.0.1:9092",
        "dagster_url": "http://127.0.0.1:3000",
        "dashboard_url": "http://127.0.0.1:8050",
        "healthy": {"kinesis": True, "moto": False, "kafka": True, "dagster": False, "dashboard": True},
        "logs": {"kinesis": "/x/kinesis.log"},
        "pipelines": {
            "default": {
                "stream_name": "etl-events",
                "shards": 2,
                "processed_prefix": "s3://etl-lake/processed/",
                "warehouse_schema": "etl",
            }
        },
    }
    lines = status_table(status).splitlines()
    assert lines[0].split() == ["service", "state", "endpoint"]
    assert lines[2].split() == ["kinesis", "up", "http://127.0.0.1:4568"]
    assert lines[3].split() == ["moto", "DOWN", "http://127.0.0.1:5050"]
    assert lines[5].split() == ["dagster", "DOWN", "(make", "dev)", "http://127.0.0.1:3000"]
    assert lines[6].split() == ["dashboard", "up", "http://127.0.0.1:8050"]
    assert len({line.index("http") for line in lines[2:7] if "http" in line}) == 1
    text = "\n".join(lines)
    assert "etl-events" in text and "lake_bucket:" in text and "etl-lake" in text and "/x/kinesis.log" not in text


def test_progress_rewrites_one_line_on_a_terminal(capsys):
    progress = Progress()
    progress.tty = True  # as on a terminal: capsys is not one
    progress("produce: sent=10 failed=0")
    progress("produce: sent=20 failed=1")
    progress.done()
    assert capsys.readouterr().err == "\rproduce: sent=10 failed=0\033[K\rproduce: sent=20 failed=1\033[K\n"
    assert progress.per_second(0) == 0.0 and progress.per_second(1000) > 0


def test_progress_quiet_and_not_a_terminal(capsys):
    Progress(quiet=True)("hidden")
    plain = Progress()
    plain.tty = False
    plain("line")
    plain.done()
    assert capsys.readouterr().err == "line\n"
