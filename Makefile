# Two commands do all set-up on a machine that has only python3 (3.11+):
#   make run    a full refresh of China on the simulated LLM backend
#   make test   lint, format check and the whole test suite
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
BENCH_STAMP := $(VENV)/.bench-stamp
LOG ?= hospital-refresh.hrlog
ARGS ?=

.PHONY: run test lint browser bench clean

$(STAMP): setup.cfg pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[test,bench]'
	touch $(BENCH_STAMP)

run: $(STAMP)
	$(VENV)/bin/hospital-refresh run --log $(LOG) $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

browser:
	bash scripts/install-browser.sh

test: lint browser
	$(PY) -m pytest

bench: $(BENCH_STAMP)
	$(PY) bench/bench_log.py
	$(PY) bench/bench_refresh.py
	$(PY) bench/bench_resume.py
	$(PY) bench/bench_http.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache .hypothesis
