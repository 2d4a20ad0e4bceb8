# The README's two commands are `make dev` and `make test`; the rest are building blocks.
.PHONY: install dev test test-e2e bench lint stack-up stack-down

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
	@.venv/bin/ruff check .

stack-up: install
	@.venv/bin/etl-platform stack up

stack-down:
	@.venv/bin/etl-platform stack down
