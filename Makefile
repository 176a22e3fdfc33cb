# The two commands of the quick start, and the helpers behind them.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/ops
TEST_BROKER_URL ?= redis://127.0.0.1:6379/11

.PHONY: run test bench install clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

## Run the embedded platform (SQLite + filesystem broker under ./var).
run: install
	$(PY) manage.py migrate --noinput
	$(PY) manage.py quickstart
	$(PY) manage.py runplatform --skip-migrate

## Run the whole test suite against PostgreSQL and Redis on localhost.
test: install
	DATABASE_URL=$(TEST_DATABASE_URL) CELERY_BROKER_URL=$(TEST_BROKER_URL) \
		$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache

## Measure the embedded platform against bare Celery (figures and ratios).
bench: install
	$(PY) manage.py bench $(BENCH_ARGS)
