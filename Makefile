# The two commands of the quick start, and the helpers behind them.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/ops
TEST_BROKER_URL ?= redis://127.0.0.1:6379/11
TEST_RABBITMQ_URL ?= amqp://guest:guest@127.0.0.1:5672/ops-tests

CHROMIUM ?= /usr/bin/chromium

.PHONY: hosts rabbitmq run test test-fast test-scaled test-embedded test-rabbitmq test-unit test-integration test-acceptance bench install clean browser lock lint

# Exactly the locked versions (requirements/test.txt, with hashes), then the
# project itself on top of them, editable and with no dependency of its own.
$(VENV)/.installed: pyproject.toml requirements/test.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --require-hashes -r requirements/test.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

install: $(VENV)/.installed

## Re-resolve the lockfiles from pyproject.toml, every dependency at its newest
## allowed version (uv, installed into the venv for this).
lock: install
	$(PY) -m pip install --quiet uv
	$(VENV)/bin/uv pip compile pyproject.toml --python-version 3.11 --generate-hashes --upgrade --quiet -o requirements/base.txt
	$(VENV)/bin/uv pip compile pyproject.toml --extra test --python-version 3.11 --generate-hashes --upgrade --quiet -o requirements/test.txt

## Style, types and architecture: ruff (lint and format), mypy in strict mode,
## and the import contracts between the apps (pyproject.toml). Under a minute.
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	OPS_DATA_DIR=$$(mktemp -d) $(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

## Run the embedded platform (SQLite + filesystem broker under ./var).
run: install
	$(PY) manage.py migrate --noinput
	$(PY) manage.py quickstart
	$(PY) manage.py runplatform --skip-migrate

## Debian's Chromium for the browser tests (Playwright drives it; it never downloads one).
browser:
	@test -x $(CHROMIUM) || { \
		echo "installing Debian's chromium for the browser tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	} || { echo "could not install chromium ($(CHROMIUM)): the browser tests need it" >&2; exit 1; }
	@test -x $(CHROMIUM) || { echo "$(CHROMIUM) is still missing after apt-get install chromium" >&2; exit 1; }

## socat for the tests that run worker nodes on hosts of their own (network
## namespaces, tests/integration/test_hosts.py; they skip, saying why, where
## they cannot run: not root, no iproute2).
hosts:
	@command -v socat >/dev/null || { \
		echo "installing Debian's socat for the multi-host tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq socat >/dev/null; \
	} || echo "could not install socat: the multi-host tests will skip" >&2

## Run the whole test suite: everything against PostgreSQL and Redis on
## localhost, then the lifecycle, race, API and client suites again against the
## embedded default (SQLite and the filesystem broker) and against PostgreSQL
## with RabbitMQ, real workers on all three.
test: install browser hosts test-scaled test-embedded test-rabbitmq

test-scaled: install browser hosts
	TEST_DATABASE_URL=$(TEST_DATABASE_URL) TEST_BROKER_URL=$(TEST_BROKER_URL) \
		$(PY) -m pytest $(PYTEST_ARGS)

test-embedded: install
	OPS_TEST_DEPLOYMENT=embedded $(PY) -m pytest -m embedded $(PYTEST_ARGS)

test-rabbitmq: install rabbitmq
	OPS_TEST_DEPLOYMENT=rabbitmq TEST_DATABASE_URL=$(TEST_DATABASE_URL) TEST_RABBITMQ_URL=$(TEST_RABBITMQ_URL) \
		$(PY) -m pytest -m embedded $(PYTEST_ARGS)

## RabbitMQ on localhost for the broker matrix: started when it is not running.
rabbitmq:
	@rabbitmqctl -q status >/dev/null 2>&1 || { \
		echo "starting RabbitMQ (rabbitmq-server -detached)"; \
		rabbitmq-server -detached && rabbitmqctl -q await_startup; \
	}

## One layer of the suite alone, against PostgreSQL and Redis: tests/unit (no
## worker, no broker), tests/integration (real workers), tests/acceptance (the
## served platform, the real clients, the browser).
test-unit test-integration test-acceptance: test-%: install
	$(if $(filter acceptance,$*),$(MAKE) browser)
	TEST_DATABASE_URL=$(TEST_DATABASE_URL) TEST_BROKER_URL=$(TEST_BROKER_URL) \
		$(PY) -m pytest tests/$* $(PYTEST_ARGS)

## The edit-test loop: what needs no worker process, fuzzing lighter (under a minute).
test-fast: install
	TEST_DATABASE_URL=$(TEST_DATABASE_URL) TEST_BROKER_URL=$(TEST_BROKER_URL) OPS_FUZZ_EXAMPLES=5 \
		$(PY) -m pytest -m "not workers" -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache

## Measure the hot path on PostgreSQL and Redis against bare Celery (and the
## embedded deployment against bare Celery on its broker): prints the tables,
## writes bench/results/latest.json. BENCH_ARGS=--quick for a smoke run.
bench: install
	$(PY) -m bench $(BENCH_ARGS)
