#!/usr/bin/env bash
# `make synth`: the CDK app under deploy/cdk synthesized by the pinned CDK CLI into deploy/cdk/cdk.out
# (or the folder given as $1), offline: no AWS credentials are visible to it (the stack is
# environment-agnostic, so it needs none, and the CLI would otherwise ask STS for the account), no
# instance metadata, no version check, notices or telemetry. Extra arguments go to `cdk synth`.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-deploy/cdk/cdk.out}")
shift || true

while IFS= read -r var; do unset "$var"; done < <(compgen -e | grep '^AWS_' || true)
export AWS_EC2_METADATA_DISABLED=true AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null
export CDK_DISABLE_VERSION_CHECK=1 CDK_DISABLE_CLI_TELEMETRY=1
# jsii (the Python app's bridge to aws-cdk-lib) warns on every start about node 20's support dates.
export JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION=1 JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION=20

cd deploy/cdk
exec node_modules/.bin/cdk synth --quiet --no-notices --no-version-reporting --output "$out" "$@"
