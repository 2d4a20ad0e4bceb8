#!/usr/bin/env bash
# `make bench`: every benchmark, each reporting ratios against a reference measured in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
unset ETL_PROFILE
etl-platform stack up >/dev/null
for module in benchmarks/bench_*.py; do
  name=$(basename "$module" .py)
  echo "== $name"
  python -m "benchmarks.$name"
done
