"""Options several commands share: which pipeline a command works on, dates, `--debug`, and the parser
class whose usage errors are one line."""

from __future__ import annotations

import argparse
from datetime import date
from typing import Any, NoReturn

from etl_platform.config import Settings
from etl_platform.pipelines import DEFAULT_PIPELINE, Pipeline, load_pipelines


class CliParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line saying what is wrong and where help is (exit 2);
    sub-parsers inherit the class."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} — see `{self.prog} --help`\n")


def add_debug_option(parser: argparse.ArgumentParser, top: bool = False) -> None:
    """`--debug`: show the traceback of a failure. On sub-parsers it defaults to SUPPRESS, so that
    `etl-platform --debug produce …` and `etl-platform produce --debug …` both work."""
    parser.add_argument(
        "--debug",
        action="store_true",
        default=False if top else argparse.SUPPRESS,
        help="on failure, show the Python traceback instead of a one-line message",
    )


def iso_date(text: str) -> date:
    """argparse type for a day: a message that shows the expected form (date.fromisoformat's does not)."""
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date as YYYY-MM-DD, got {text!r}") from None


def add_pipeline_option(parser: Any) -> None:
    parser.add_argument(
        "--pipeline",
        default=None,
        help=f"the pipeline (config/pipelines.yaml or ETL_PIPELINES_FILE; default: {DEFAULT_PIPELINE})",
    )


def selected_pipeline(args: argparse.Namespace, settings: Settings) -> Pipeline:
    """The pipeline `--pipeline` names (ConfigError listing the known ones when it names none)."""
    return load_pipelines(settings).get(getattr(args, "pipeline", None))
