# Set-up and the two jobs. `make demo` and `make test` bootstrap everything on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
WORKDIR ?= $(CURDIR)/workdir
PYTEST_ARGS ?= -n 2

.PHONY: install demo test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip wheel setuptools

# The CPU torch wheel goes first: an unpinned torch (pulled by transformers/diffusers) would
# bring several GB of CUDA packages. timm goes last with --no-deps: its torchvision
# dependency has no CPU wheel here (tests/_torchvision_stub covers what timm imports).
# The `tpu` extra (libtpu, ~0.7 GB) lets this host compile for TPU slices ahead of time
# (wegen_jax.tools.aot, tests/test_aot.py) and makes the same install work on a TPU VM; on a
# machine without TPU chips jax skips it after a few warning lines (JAX_PLATFORMS=cpu silences them).
$(VENV)/.installed: setup.py Makefile | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[torch,dev,tpu]"
	$(BIN)/pip install -q --no-deps timm==1.0.31
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/python -m wegen_jax.demo --workdir $(WORKDIR)

test: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS) tests

clean:
	rm -rf $(VENV) workdir .pytest_cache
