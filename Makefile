# The two set-up commands of the README: `make demo` runs the main job, `make test` the tests.
# Both install what they need on a fresh Debian machine (system packages + a virtualenv).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# The lowest numpy pyproject.toml allows (Debian bookworm's, the 32-bit Pi path), in a venv
# of its own without numba: what we declare is what we test.
FLOOR_VENV ?= .venv-numpy-floor
FLOOR_BIN := $(FLOOR_VENV)/bin
FLOOR_STAMP := $(FLOOR_VENV)/.installed
NUMPY_FLOOR = $(shell sed -n 's/.*"numpy>=\([0-9][0-9.]*\)".*/\1/p' pyproject.toml)
# The tests that need numpy alone (no broker, coordinator or server extra): kernels, bit-flip
# and forward-gradient training, tallies, frames and model files, data sets, partitions, fixed point, the
# local CLI. --noconftest: tests/conftest.py makes a TLS CA for the cluster tests, which
# would need the server extra.
FLOOR_TESTS := tests/test_kernels.py tests/test_bitflip.py tests/test_forwardgrad.py \
	tests/test_fixedpoint.py tests/test_tally.py tests/test_wire.py tests/test_frames.py \
	tests/test_fuzz_codecs.py tests/test_datasets.py tests/test_partition.py \
	tests/test_shifts.py tests/test_cli.py tests/test_eval.py tests/test_lastmile_cli.py
FLOOR_ENV := BITFLEET_NO_NUMBA=1

.PHONY: demo train test lint setup system-deps bench reliability dist clean numpy-floor

demo: setup
	$(BIN)/bitfleet demo

train: setup
	$(BIN)/bitfleet train --algo bitflip --weights binary --layers 784,512,10 \
		--dataset fashion-mnist --seed 0 --out fashion-binary.bfm

# -n auto: one pytest worker per core; every test takes its own ports and directories.
test: setup lint
	$(BIN)/pytest -q -n auto
	@$(MAKE) --no-print-directory numpy-floor

# The numpy-only tests, then a real train, eval and agent self-test, on the floor numpy.
numpy-floor: system-deps $(FLOOR_STAMP)
	$(FLOOR_ENV) $(FLOOR_BIN)/bitfleet train --dataset digits --epochs 2 --out $(FLOOR_VENV)/m.bfm
	$(FLOOR_ENV) $(FLOOR_BIN)/bitfleet eval $(FLOOR_VENV)/m.bfm --dataset digits
	$(FLOOR_ENV) $(FLOOR_BIN)/bitfleet-agent selftest --samples 2000
	$(FLOOR_ENV) BITFLEET_FUZZ_EXAMPLES=500 $(FLOOR_BIN)/pytest -q --noconftest $(FLOOR_TESTS)

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

# numpy pinned to the floor's last patch release, wheels only (numpy 1.24 has them up to
# Python 3.11, bookworm's); scikit-learn only for the digits file inside its wheel.
$(FLOOR_STAMP): pyproject.toml
	@test -n "$(NUMPY_FLOOR)" || { echo 'no "numpy>=X.Y" in pyproject.toml' >&2; exit 1; }
	rm -rf $(FLOOR_VENV)
	$(PYTHON) -m venv $(FLOOR_VENV)
	$(FLOOR_BIN)/pip install --quiet --disable-pip-version-check --only-binary numpy \
		"numpy==$(NUMPY_FLOOR).*" -e '.[agent]' pytest hypothesis
	$(FLOOR_BIN)/pip install --quiet --disable-pip-version-check --no-deps scikit-learn
	$(FLOOR_BIN)/python -c 'import numpy; assert numpy.__version__.startswith("$(NUMPY_FLOOR).")'
	touch $(FLOOR_STAMP)

clean:
	rm -rf $(VENV) $(FLOOR_VENV) .pytest_cache .mypy_cache .ruff_cache bitfleet-demo build dist
