# Enclave. `make run` serves the portal with the demo; `make test` runs the whole suite on PostgreSQL and Redis.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
WEB_PORT ?= 8000

.PHONY: install run test lint bench services clean

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	@touch $@

run: install
	WEB_PORT=$(WEB_PORT) scripts/run.sh

test: install
	scripts/test.sh

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check portal tenants audit devices studies bench
	$(VENV)/bin/mypy portal tenants audit devices studies
	$(VENV)/bin/lint-imports

# Benchmarks, figures in docs/BENCHMARKS.md: ingestion (bench/ingest.py: its own database, Redis db 9), then
# query and retrieve (bench/query.py: its own database, Redis db 10), then Enclave beside Orthanc (bench/orthanc.py:
# its own database and Orthanc from Debian's packages; `BENCH_ORTHANC_ARGS=--full` for the issue's sizes).
bench: install
	scripts/services.sh
	$(PY) -m bench.ingest $(BENCH_ARGS)
	$(PY) -m bench.query $(BENCH_QUERY_ARGS)
	$(PY) -m bench.orthanc $(BENCH_ORTHANC_ARGS)

services:
	scripts/services.sh

clean:
	rm -rf var/ .pytest_cache .mypy_cache .ruff_cache
