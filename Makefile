# The two set-up commands of the README: `make demo` runs the main job, `make test` the tests.
# Both install what they need on a fresh Debian machine (system packages + a virtualenv).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo train test lint setup system-deps bench reliability dist clean

demo: setup
	$(BIN)/bitfleet demo

train: setup
	$(BIN)/bitfleet train --algo bitflip --weights binary --layers 784,512,10 \
		--dataset fashion-mnist --seed 0 --out fashion-binary.bfm

test: setup lint
	$(BIN)/pytest -q

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python scripts/typecheck.py

# The reliability suite at full size (CI runs a bounded version of each part in `make test`):
# 10^6 fuzzed frames, model files and chunks; 200k hypothesis examples; schemathesis with 500
# examples per operation against a live coordinator; hostile agents; fault tests.
reliability: setup
	$(BIN)/python scripts/fuzz-codecs.py --inputs 1000000
	BITFLEET_FUZZ_EXAMPLES=40000 $(BIN)/pytest -q tests/test_fuzz_codecs.py
	BITFLEET_SCHEMA_EXAMPLES=500 $(BIN)/pytest -q tests/test_api_schema.py
	$(BIN)/pytest -q -s tests/test_hostile_agents.py tests/test_api_hostile.py \
		tests/test_engine_faults.py tests/test_faults.py

bench: setup
	$(BIN)/bitfleet bench kernels
	$(BIN)/bitfleet bench aggregate

# An sdist and a wheel in dist/, built from this checkout without any index but PyPI's for the
# build backend: `pip install 'dist/bitfleet-VERSION-py3-none-any.whl[agent]'`.
dist: setup
	rm -rf dist
	$(BIN)/python -m build --outdir dist .

setup: system-deps $(STAMP)

system-deps:
	@scripts/install-system-deps.sh

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[agent,server,fast,dev]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache bitfleet-demo build dist
