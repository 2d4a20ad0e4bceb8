"""Options several commands share: which pipeline a command works on."""

from __future__ import annotations

import argparse
from typing import Any

from etl_platform.config import Settings
from etl_platform.pipelines import DEFAULT_PIPELINE, Pipeline, load_pipelines


def add_pipeline_option(parser: Any) -> None:
    parser.add_argument(
        "--pipeline",
        default=None,
        help=f"the pipeline (config/pipelines.yaml or ETL_PIPELINES_FILE; default: {DEFAULT_PIPELINE})",
    )


def selected_pipeline(args: argparse.Namespace, settings: Settings) -> Pipeline:
    """The pipeline `--pipeline` names (ConfigError listing the known ones when it names none)."""
    return load_pipelines(settings).get(getattr(args, "pipeline", None))
