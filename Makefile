# Enclave. `make run` serves the portal with the demo, as production runs it; `make test` runs the whole suite.
# Both use PostgreSQL and Redis: DATABASE_URL and REDIS_URL when set, else the embedded ones (scripts/stack.py).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: install run dev stack-stop test lint audit-deps bench services clean

install: $(VENV)/.installed

# --no-compile: Python compiles what it imports on first use; compiling every installed module up front took longer
# than the rest of the first `make run`.
$(VENV)/.installed: requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-compile -r requirements.txt
	@touch $@

# gunicorn, Celery worker and beat, the DICOM listener; WEB_PORT (8000) and DICOM_PORT (11112). Ctrl-C stops all.
run: install
	scripts/run.sh

# The same with Django's development server: DEBUG on, autoreload.
dev: install
	scripts/run.sh --dev

# Stop an embedded PostgreSQL and Valkey left running in var/ (make run stops its own on Ctrl-C).
stack-stop: install
	$(PY) scripts/stack.py stop

test: install
	scripts/test.sh

# bandit: nothing above low severity, or each finding explained in place (`# nosec <id>` and the reason beside it).
# detect-secrets: no secret in any file of the tree beyond .secrets.baseline, whose entries are audited false
# positives (test passwords, the demo's, EICAR's base64); after a real change: `detect-secrets scan --baseline
# .secrets.baseline`, then mark each new entry in it.
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check portal tenants audit devices studies training bench scripts
	$(VENV)/bin/mypy portal tenants audit devices studies training
	$(VENV)/bin/lint-imports
	$(VENV)/bin/bandit -c pyproject.toml -r portal tenants audit devices studies training scripts bench -q --severity-level medium
	git ls-files -z --cached --others --exclude-standard | xargs -0 $(VENV)/bin/detect-secrets-hook --baseline .secrets.baseline
	$(MAKE) --no-print-directory audit-deps

# pip-audit on every pin of requirements.txt (SECURITY.md G14): a known vulnerability fails. pip-audit lives in its
# own environment under var/ (made from PyPI on first use), not in the project's. Where the vulnerability service
# cannot be reached it says NOT AUDITED and passes (nothing was found, nothing was proven); AUDIT_DEPS_STRICT=1
# fails then too. Not part of `make test`, so CI does not depend on that service.
PIP_AUDIT_VENV := var/tools/pip-audit
PIP_AUDIT := $(PIP_AUDIT_VENV)/bin/pip-audit

$(PIP_AUDIT):
	$(PYTHON) -m venv $(PIP_AUDIT_VENV)
	$(PIP_AUDIT_VENV)/bin/pip install --quiet --disable-pip-version-check "pip-audit==2.10.1"

audit-deps: install $(PIP_AUDIT)
	$(PY) scripts/audit_deps.py --pip-audit $(PIP_AUDIT) requirements.txt

# Benchmarks, figures in docs/BENCHMARKS.md: ingestion (bench/ingest.py: its own database, Redis db 9), then
# query and retrieve (bench/query.py: its own database, Redis db 10), then Enclave beside Orthanc (bench/orthanc.py:
# its own database and Orthanc from Debian's packages, clamd when installed; `BENCH_ORTHANC_ARGS=--full` for the
# issue's sizes, `--small-cstore` for the 20,000 small instances into Enclave, `--large` for the 200,000-instance
# index; `--profile`, on by default, adds py-spy on the listener and the worker), then the
# audit browser's queries and audit_verify's rate (bench/audit.py: its own database, 10 million events by default;
# `BENCH_AUDIT_ARGS=--events 1000000` for a quicker run), then the load test (bench/load.py: locust, 50 users on the
# browser pages and the API against gunicorn for 60 s, its own database, Redis db 12; `BENCH_LOAD_ARGS`), and the
# receive side with 1 and `nproc` listener processes sharing the port (bench/receive.py: Redis db 13).
# Not in `make bench`, run by hand to explain a figure (each says how in its docstring): bench/request_cost.py,
# bench/http_cost.py and bench/search_cost.py (a search's CPU, statements and plans), bench/wado_cpu.py (a series
# retrieval's CPU), bench/stow.py (STOW-RS alone), bench/small_cost.py (PostgreSQL's CPU per small instance).
BENCH_ORTHANC_ARGS ?= --profile
bench: install
	scripts/services.sh
	$(PY) -m bench.ingest $(BENCH_ARGS)
	$(PY) -m bench.query $(BENCH_QUERY_ARGS)
	$(PY) -m bench.orthanc $(BENCH_ORTHANC_ARGS)
	$(PY) -m bench.audit $(BENCH_AUDIT_ARGS)
	$(PY) -m bench.load $(BENCH_LOAD_ARGS)
	$(PY) -m bench.receive $(BENCH_RECEIVE_ARGS)

# PostgreSQL and Redis of the machine (Debian's packages) on loopback, for the benchmarks.
services:
	scripts/services.sh

clean: stack-stop
	rm -rf var/ .pytest_cache .mypy_cache .ruff_cache
