#!/usr/bin/env bash
# Installs everything the platform and its tests need, idempotently and fast when already done:
# Debian packages (PostgreSQL 15, Node.js, JDK 17, Maven), the Python venv from requirements-dev.lock
# (runtime + test + dev tools; `make lock` generates it from pyproject.toml),
# the Kinesis emulator from services/kinesis/package-lock.json and the CDK CLI from
# deploy/cdk/package-lock.json (`make synth`). The OpenSearch node and the Kafka broker are resolved from
# Maven Central by their first start (etl_platform/stack/).
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION=0.13.9

apt_missing=()
[ -x /usr/lib/postgresql/15/bin/postgres ] || apt_missing+=(postgresql-15 postgresql-client-15)
command -v node >/dev/null || apt_missing+=(nodejs)
command -v npm >/dev/null || apt_missing+=(npm)
command -v javac >/dev/null || apt_missing+=(openjdk-17-jdk-headless)
command -v mvn >/dev/null || apt_missing+=(maven)
command -v runuser >/dev/null || apt_missing+=(util-linux)
[ -x /usr/bin/chromium ] || apt_missing+=(chromium)  # the browser test drives it with Playwright
if [ ${#apt_missing[@]} -gt 0 ]; then
  echo "install: apt packages ${apt_missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${apt_missing[@]}" >/dev/null
fi
# Debian's package starts its own cluster on 5432; the platform runs its own under .stack/ instead.
if command -v pg_lsclusters >/dev/null && pg_lsclusters -h 2>/dev/null | grep -q online; then
  pg_ctlcluster 15 main stop 2>/dev/null || true
fi

PY=${PYTHON:-python3}
"$PY" -c 'import sys; assert sys.version_info >= (3, 11), sys.version' \
  || { echo "install: Python >= 3.11 is required (set PYTHON=...)" >&2; exit 1; }
if ! command -v uv >/dev/null; then
  echo "install: uv ${UV_VERSION}"
  "$PY" -m pip install -q "uv==${UV_VERSION}"
fi
UV=$(command -v uv || echo "$PY -m uv")
[ -x .venv/bin/python ] || $UV venv -q -p "$PY" .venv
stamp=.venv/.installed
if [ ! -f "$stamp" ] || [ requirements-dev.lock -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "install: python packages from requirements-dev.lock"
  $UV pip sync -q -p .venv/bin/python requirements-dev.lock
  $UV pip install -q -p .venv/bin/python --no-deps -e .
  touch "$stamp"
fi

if [ ! -f services/kinesis/node_modules/kinesis-local/main.js ]; then
  echo "install: kinesis-local (npm ci)"
  (cd services/kinesis && npm ci --no-audit --no-fund --loglevel=error)
fi
if [ ! -f deploy/cdk/node_modules/aws-cdk/package.json ] \
  || [ deploy/cdk/package-lock.json -nt deploy/cdk/node_modules/.package-lock.json ]; then
  echo "install: aws-cdk CLI (npm ci)"
  (cd deploy/cdk && npm ci --no-audit --no-fund --loglevel=error)
fi
echo "install: ok"
