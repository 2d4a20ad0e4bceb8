#!/usr/bin/env bash
# `make lint`, and the first step of scripts/test.sh: ruff's rules, ruff's formatting (nothing would
# change) and pyright over etl_platform/ (pyproject.toml [tool.pyright]), in that order, stopping at the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/pyright
