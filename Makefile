# The README's two commands are `make dev` and `make test`; the rest are building blocks.
.PHONY: install dev test test-e2e bench lint lock stack-up stack-down synth

install:
	@bash scripts/install.sh

dev: install
	@bash scripts/dev.sh

test: install
	@bash scripts/test.sh -q --durations=15

# Only the headless-Chromium tour of the Dagster UI (tests/e2e); `make test` runs it too.
test-e2e: install
	@bash scripts/test.sh -q tests/e2e

bench: install
	@bash scripts/bench.sh

lint: install
	@bash scripts/lint.sh

# The production stack's CloudFormation template, from the CDK app in deploy/cdk, into deploy/cdk/cdk.out/.
# Offline and without AWS credentials (docs/deploy.md, "Production as code").
synth: install
	@bash scripts/synth.sh

stack-up: install
	@.venv/bin/etl-platform stack up

stack-down:
	@.venv/bin/etl-platform stack down

# Both locks from pyproject.toml alone. Compiling over an existing lock keeps its versions unless the
# resolver must move them (run a command below with --upgrade-package NAME to move one). The dev lock
# (runtime + test + dev extras: what scripts/install.sh installs) is constrained to the runtime lock,
# so tests run exactly the versions a production image installs from requirements.lock.
lock:
	@UV=$$(command -v uv || echo "python3 -m uv"); \
	$$UV pip compile -q pyproject.toml --python-version 3.11 -o requirements.lock && \
	$$UV pip compile -q pyproject.toml --python-version 3.11 --extra test --extra dev -c requirements.lock -o requirements-dev.lock
