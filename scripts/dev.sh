#!/usr/bin/env bash
# `make dev`: local stack + Dagster UI (webserver and daemon) at http://127.0.0.1:3000 + the live dashboard
# page at http://127.0.0.1:8050 (ETL_DASHBOARD_PORT) + demo traffic.
# Ctrl-C stops everything, servers included.
set -uo pipefail
# Job control: background jobs get their own process group and default signal handling (without it a
# script's background jobs ignore SIGINT, and dagster would only stop on SIGKILL).
set -m
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
export ETL_PROFILE=local
export DAGSTER_HOME="$PWD/.dagster_home"
mkdir -p "$DAGSTER_HOME"
cp config/dagster.local.yaml "$DAGSTER_HOME/dagster.yaml"

pids=()
stop_all() {
  trap - INT TERM EXIT
  trap '' PIPE  # a closed terminal or pipe must not cut the shutdown short
  echo; echo "dev: stopping" || true
  for pid in "${pids[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL -- "-$pid" 2>/dev/null || true
  done
  etl-platform stack down 2>/dev/null || etl-platform stack down >/dev/null 2>&1 || true
}
trap stop_all INT TERM EXIT

etl-platform stack up || exit 1

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
