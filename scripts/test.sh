#!/usr/bin/env bash
# Starts the local stack (unless already up), runs lint and the whole test suite, stops what it started.
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
unset ETL_PROFILE

started_here=0
if ! etl-platform stack status >/dev/null 2>&1; then
  started_here=1
fi
cleanup() { if [ "$started_here" = 1 ]; then etl-platform stack down >/dev/null || true; fi; }
trap cleanup EXIT INT TERM

start=$(date +%s)
etl-platform stack up || { echo "test: the local stack did not start" >&2; exit 1; }
echo "test: stack up in $(( $(date +%s) - start ))s"

bash scripts/lint.sh || { echo "test: lint found problems" >&2; exit 1; }
python -m pytest "$@"
