#!/usr/bin/env bash
# `make dev`: local stack + Dagster UI (webserver and daemon) at http://127.0.0.1:3000 + the live dashboard
# page at http://127.0.0.1:8050 (ETL_DASHBOARD_PORT) + demo traffic.
# Ctrl-C or SIGTERM (also `kill` of `make dev`, which passes SIGTERM on) stops everything, servers included,
# within a few seconds: what has not exited ETL_DEV_STOP_SECONDS (default 5) after SIGTERM gets SIGKILL.
# ETL_DEV_SKIP_STACK=1: neither `etl-platform stack up` nor `stack down` (a stack someone else runs, and the
# test of this script); ETL_DAGSTER_HOME: the Dagster instance directory (default .dagster_home).
set -uo pipefail
# Job control: background jobs get their own process group and default signal handling (without it a
# script's background jobs ignore SIGINT, and dagster would only stop on SIGKILL).
set -m
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
export ETL_PROFILE=local
export DAGSTER_HOME="${ETL_DAGSTER_HOME:-$PWD/.dagster_home}"
mkdir -p "$DAGSTER_HOME"
cp config/dagster.local.yaml "$DAGSTER_HOME/dagster.yaml"

skip_stack=${ETL_DEV_SKIP_STACK:-0}
pids=()
stop_all() {
  # A second INT/TERM while stopping (make passes SIGTERM on, and a supervisor may also signal the whole
  # process group) must not cut the shutdown short and orphan the servers; SIGKILL still ends it.
  trap '' INT TERM PIPE  # PIPE: a closed terminal or pipe must not cut it short either
  trap - EXIT
  echo; echo "dev: stopping" || true
  for pid in "${pids[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  # One deadline for all (not one per job): each job's whole process group gets SIGKILL after it.
  local deadline=$((SECONDS + ${ETL_DEV_STOP_SECONDS:-5}))
  for pid in "${pids[@]}"; do
    while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
  done
  for pid in "${pids[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
  if [ "$skip_stack" != 1 ]; then
    etl-platform stack down 2>/dev/null || etl-platform stack down >/dev/null 2>&1 || true
  fi
  [ $# -eq 0 ] || exit "$1"  # after a signal: 128 + its number, as the shell would
}
trap 'stop_all 130' INT
trap 'stop_all 143' TERM
trap stop_all EXIT

if [ "$skip_stack" != 1 ]; then
  # In the background and waited for, so that a signal is handled at once, not after the start.
  etl-platform stack up &
  pids+=($!)
  wait "${pids[0]}" || exit 1
  pids=()
fi

port=${ETL_DAGSTER_PORT:-3000}
dagster dev -w workspace.yaml -h 127.0.0.1 -p "$port" &
pids+=($!)

# The live dashboard page (etl_platform.dashboard): every pipeline's OpenSearch aggregations, leases and metrics.
dashboard_port=${ETL_DASHBOARD_PORT:-8050}
python -m etl_platform.dashboard &
pids+=($!)

# Demo traffic from the five simulated sources; the Kinesis sensor picks it up within seconds.
etl-platform produce --source demo --rate "${ETL_DEMO_RATE:-20}" --duration 0 --gzip --quiet &
pids+=($!)
# And records shaped as the seed pipeline's contract (config/pipelines.yaml), on its own stream.
etl-platform produce --pipeline seed --source demo --rate "${ETL_SEED_DEMO_RATE:-5}" --duration 0 --gzip --quiet &
pids+=($!)
# And the envelope on the Kafka topic of the msk-events pipeline.
etl-platform produce --pipeline msk-events --source demo --rate "${ETL_KAFKA_DEMO_RATE:-5}" --duration 0 --quiet &
pids+=($!)

echo "dev: Dagster UI at http://127.0.0.1:${port}, live dashboard at http://127.0.0.1:${dashboard_port} (Ctrl-C stops everything)"
wait "${pids[0]}"
