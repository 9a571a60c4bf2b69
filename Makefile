# The two set-up commands of the README: `make demo` runs the main job, `make test` the tests.
# Both install what they need on a fresh Debian machine (system packages + a virtualenv).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo train test lint setup system-deps bench clean

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
	$(BIN)/mypy

bench: setup
	$(BIN)/bitfleet bench kernels
	$(BIN)/bitfleet bench aggregate

setup: system-deps $(STAMP)

system-deps:
	@scripts/install-system-deps.sh

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[agent,server,fast,dev]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache bitfleet-demo
