# Two commands do all the set-up on a fresh machine:
#   make run    build the virtualenv, install, run the main job
#   make test   build the virtualenv, install, run the test suite
# torch is installed first, pinned (a CPU build where the machine has it on disk);
# override with e.g. `make test TORCH=torch==2.5.1`.

PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check "$(TORCH)"
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/quatrix info --preset berry-q0

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

bench: $(STAMP)
	$(BIN)/python benchmarks/mixer.py --long-context 4096

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
