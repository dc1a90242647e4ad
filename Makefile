# crm-ledger: `make run` starts the service, `make test` runs every test. Both install what is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
NPM_STAMP := hardhat-local/node_modules/.installed
PY_STAMP := $(VENV)/.installed

.PHONY: install run test lint services system-packages clean chaos
.PHONY: bench bench-anchor bench-audit bench-loyalty bench-indexer bench-ingest bench-outbound bench-api bench-bulk
.PHONY: bench-soak

install: $(PY_STAMP) $(NPM_STAMP)

$(PY_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

$(NPM_STAMP): hardhat-local/package.json hardhat-local/package-lock.json
	npm --prefix hardhat-local ci --no-audit --no-fund --loglevel=error
	touch $@

# MALLOC_ARENA_MAX=2: glibc gives each thread that allocates an arena of its own, and SQLite runs
# in several; the soak's RSS grew 3 % instead of 5-9 % in the same minutes with it
# (docs/benchmarks.md, "Soak").
run: install
	MALLOC_ARENA_MAX=2 $(BIN)/crm-ledger serve

# What the tests talk to on 127.0.0.1: PostgreSQL (:5432) and NATS JetStream (:4222).
services:
	bash scripts/ensure_postgres.sh
	bash scripts/ensure_nats.sh

# Chromium (the console's browser tests) and wrk, apt-installed when missing.
system-packages:
	bash scripts/ensure_system_packages.sh

test: install services system-packages
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check src tests scripts
	$(BIN)/ruff format --check src tests scripts
	$(BIN)/mypy src

# Benchmarks print their figures and ratios against a baseline measured in the same run;
# docs/benchmarks.md records them. Each runs on 127.0.0.1 and stops by itself.
bench: bench-anchor bench-audit bench-loyalty bench-indexer bench-ingest bench-outbound bench-api bench-bulk

bench-anchor: install
	$(BIN)/python scripts/bench_anchor.py

bench-audit: install
	$(BIN)/python scripts/bench_audit.py

bench-loyalty: install
	$(BIN)/python scripts/bench_loyalty.py

bench-indexer: install
	$(BIN)/python scripts/bench_indexer.py

bench-outbound: install services
	$(BIN)/python scripts/bench_outbound.py

bench-api: install system-packages
	$(BIN)/python scripts/bench_api.py
	$(BIN)/python scripts/bench_api.py --workers 2 --no-batch
	$(BIN)/python scripts/bench_request_path.py
	$(BIN)/python scripts/bench_request_path.py --no-write
	$(BIN)/python scripts/bench_write.py

bench-bulk: install
	$(BIN)/python scripts/bench_bulk.py

# Not part of `bench`: 10 minutes of steady load (RSS, journal bytes, latency, Anvil's state
# every 10 s), then how Anvil's state file grows to 25,000 anchored batches (10-20 minutes).
bench-soak: install
	$(BIN)/python scripts/bench_soak.py
	$(BIN)/python scripts/bench_anvil_state.py

# The chaos suite (docs/reliability.md): loopback only, bounded, ~20 minutes.
chaos: install services
	$(BIN)/python scripts/chaos.py

clean:
	rm -rf $(VENV) hardhat-local/node_modules data

bench-ingest: install
	$(BIN)/python scripts/bench_ingest.py
