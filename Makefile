# The project's entry points. Every target creates the virtualenv first if it is missing or stale.
#   make run    fresh machine -> running pipeline (Airflow UI on http://127.0.0.1:8080), Ctrl+C stops it all;
#               make run FEED=off: without the generator, for your own feed in LANDING_DIR
#   make test   the whole test suite (unit + integration against a real PostgreSQL, Spark and Airflow), 2 workers
#   make test-fast  the inner loop: unit tests + the tests against one real PostgreSQL (under 3 minutes)
#   make once   one DAG run over $LANDING_DIR, exit 0 on success and 1 on a failed run
#   make migrate    apply the analytics schema's pending revisions (the start-up of run and once does it too)
#   make migration  write the next revision: NAME="what it does", or without NAME the contract file's new columns
#   make bench  throughput vs raw COPY, empty minute, freshness, memory (own PostgreSQL; see docs/performance.md)
# run, once and env read the checkout's .env when present (the environment wins; scripts/env_file.py).
# One virtualenv serves every target, with requirements-dev.txt (the runtime pins plus pytest, selenium, ruff,
# duckdb): a checkout is a development environment. The Docker image installs requirements.txt alone.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Reinstall when the pins change.
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt constraints.txt | sha256sum | cut -c1-12)
PIP_QUIET := 2>&1 | { grep -v "^WARNING: Location" || true; }
# What the machine must provide (README "Prerequisites"), checked before minutes go into pip or a test run.
PREFLIGHT := $(SHELL) scripts/preflight.sh

.PHONY: venv run cluster once migrate migration test test-fast test-unit test-integration test-cluster lint clean env bench preflight

$(STAMP): requirements.txt requirements-dev.txt constraints.txt
	@test -x $(BIN)/python || { $(PREFLIGHT) python "$(PYTHON)" && $(PYTHON) -m venv $(VENV); }
	@echo "installing pinned requirements into $(VENV) (first time: about 2 minutes) ..."
	@$(BIN)/python -m pip install -q --upgrade pip $(PIP_QUIET)
	@$(BIN)/python -m pip install -q -r requirements-dev.txt -c constraints.txt $(PIP_QUIET)
	@rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP)

# Java (Spark) and the PostgreSQL server binaries, for the targets that start them; listed before `venv` in
# their prerequisites so a machine without them learns it before the install, not after.
preflight:
	@$(PREFLIGHT) java postgres

# FEED=off: your own feed, no generator (README "Use your own feed")
FEED ?= generator
FEED_FLAG = $(if $(filter off no none false 0,$(FEED)),--no-generator,)

run: preflight venv
	@$(BIN)/python -m scripts.pipeline run --env-file .env $(FEED_FLAG)

# `make run` as a multi-node deployment: Redis, CeleryExecutor with two workers, a Spark master and two workers
cluster: preflight venv
	@$(PREFLIGHT) redis
	@$(BIN)/python -m scripts.pipeline cluster --env-file .env $(FEED_FLAG)

once: preflight venv
	@$(BIN)/python -m scripts.pipeline once --env-file .env

# The analytics schema is versioned (docs/schema.md): migrate applies the pending revisions to the configured
# database (starting the local PostgreSQL when it is the local one); migration writes the next revision into
# include/storage/migrations/versions/, to review and commit.
migrate: preflight venv
	@$(BIN)/python -m scripts.pipeline migrate --env-file .env

migration: venv
	@$(BIN)/python -m scripts.new_migration $(if $(NAME),--name "$(NAME)")

# Two pytest workers (PYTEST_WORKERS; 0 runs in this process): each test file goes whole to one worker, the
# longest first (tests/conftest.py), and each worker has its own PostgreSQL, Airflow home and ports. Most of the
# suite waits on JVMs starting, schedulers and polls, so two workers finish in about 3/4 of the time on 2 cores.
PYTEST_WORKERS ?= 2
PARALLEL := $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder)

# what the suite needs besides Java and PostgreSQL: Chromium (UI tests), Redis (make cluster's test), the JDBC driver
TEST_PREFLIGHT := $(PREFLIGHT) chromium redis jdbc

test: preflight venv
	@$(TEST_PREFLIGHT)
	@$(BIN)/python -m pytest $(PARALLEL)

# The inner loop (under 3 minutes): unit tests plus the tests against one real PostgreSQL (no Spark, no Airflow).
test-fast: preflight venv
	@$(BIN)/python -m pytest -m "unit or db"

test-unit: preflight venv
	@$(BIN)/python -m pytest -m unit

test-integration: preflight venv
	@$(TEST_PREFLIGHT)
	@$(BIN)/python -m pytest -m integration $(PARALLEL)

test-cluster: preflight venv
	@$(PREFLIGHT) redis
	@$(BIN)/python -m pytest -m cluster

# Own PostgreSQL and Airflow home in a temp dir; knobs: BENCH_ROWS, BENCH_SCHEDULER_MINUTES, ... (docs/performance.md)
# The seed-style peer writes through PostgreSQL's JDBC driver from Debian's libpostgresql-jdbc-java: installed here
# when missing and we are root (like .ci/run installs chromium); otherwise the bench stops and says how to get it.
# BENCH_PEERS= (empty) or BENCH_PEERS=duckdb does without it. Its deployments phase runs `make cluster`, so it needs
# redis-server like that target (BENCH_DEPLOYMENT_ROWS=0 skips the phase).
JDBC_JAR := /usr/share/java/postgresql.jar
bench: preflight venv
	@if [[ ",$${BENCH_PEERS-seed_style,duckdb}," == *,seed_style,* && ! -f $(JDBC_JAR) ]] \
	  && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing libpostgresql-jdbc-java (the JDBC driver of the bench's seed-style peer) ..."; \
	  apt-get install -y -qq libpostgresql-jdbc-java >/dev/null 2>&1 \
	    || { apt-get update -qq && apt-get install -y -qq libpostgresql-jdbc-java >/dev/null; }; \
	fi
	@if [ "$${BENCH_DEPLOYMENT_ROWS:-200000}" != 0 ]; then $(PREFLIGHT) redis; fi
	@$(BIN)/python -m benchmarks.bench

lint: venv
	@$(BIN)/ruff check .

# Print the environment of the local Airflow, for using the airflow CLI by hand: eval "$(make -s env)"
env: venv
	@$(BIN)/python -m scripts.airflow_env --env-file .env

# Stop the local PostgreSQL and delete all local state (database, checkpoints, archive, Airflow home), also a
# database kept outside the checkout because the postgres user cannot enter it (root, private directory).
clean:
	-@test -x $(BIN)/python && $(BIN)/python -m scripts.local_postgres clean
	rm -rf data spark-warehouse
