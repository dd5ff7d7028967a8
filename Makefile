# ductape-jobs: `make demo` runs the main job, `make test` passes the tests. `make help` lists all.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CELERY := $(BIN)/celery -A workers
export DUCTAPE_HANDLERS ?= examples.handlers
# `make test` runs this many pytest processes (pytest-xdist): most e2e time is waiting on real
# processes and clocks, not CPU, so more than the cores helps. TEST_PROCS=0 runs in one process.
TEST_PROCS ?= 3
XDIST := -n $(TEST_PROCS) --dist loadgroup

.PHONY: help setup demo test test-unit test-e2e lint typecheck bench soak worker beat flower clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP) ## create .venv and install the project with its dev tools

demo: $(STAMP) ## embedded Redis (unless REDIS_URL), a worker, a beat, the seed's examples running
	$(BIN)/python -m examples.demo

test: $(STAMP) ## the whole suite against a real Redis and real celery processes
	@bash tests/setup_chromium.sh
	$(BIN)/python -m pytest $(XDIST)

test-unit: $(STAMP) ## pure tests only (no Redis)
	$(BIN)/python -m pytest tests/unit

test-e2e: $(STAMP) ## end-to-end tests with real worker and beat processes
	@bash tests/setup_chromium.sh
	$(BIN)/python -m pytest $(XDIST) -m e2e

lint: $(STAMP) ## ruff lint and format check
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

typecheck: $(STAMP) ## mypy --strict
	$(BIN)/mypy ductape_jobs workers beat

bench: $(STAMP) ## ~15 min: speed beside plain Celery and RedBeat, as ratios; curves drawn into docs/bench
	$(BIN)/python -m bench $(BENCH_ARGS); status=$$?; $(BIN)/python -m bench.charts && exit $$status

soak: $(STAMP) ## ~3 min: memory flat under a steady mix, retention shortened (bench figure 8)
	$(BIN)/python -m bench --only 8

worker: $(STAMP) ## a worker for every env, started again if it fails (REDIS_URL, DUCTAPE_* from the environment)
	@until $(CELERY) worker --loglevel INFO; do echo "worker exited with status $$?; starting it again in 1 s" >&2; sleep 1; done

beat: $(STAMP) ## the Redis-backed beat (one leader; start more as standbys)
	$(BIN)/ductape-beat --loglevel INFO

flower: $(STAMP) ## Flower on 127.0.0.1:5555; refuses to start without FLOWER_BASIC_AUTH=user:password
	$(CELERY) flower

clean: ## remove the virtual environment and caches
	rm -rf $(VENV) .demo build *.egg-info tests/output
