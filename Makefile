# Set-up and the two jobs. `make demo` and `make test` bootstrap everything on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
WORKDIR ?= $(CURDIR)/workdir
PYTEST_ARGS ?= -n 2 --durations=30

.PHONY: install demo test bench clean browser

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
	$(BIN)/pip install -q -e ".[torch,dev,tpu,chat]"
	$(BIN)/pip install -q --no-deps timm==1.0.31
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/python -m wegen_jax.demo --workdir $(WORKDIR)

# The web UI test (tests/test_webui.py) drives Debian's headless chromium through its
# chromium-driver (no browser download): installed here when missing and this is root on a
# machine with apt-get; elsewhere a note, and that one test skips.
browser:
	@if ! command -v chromedriver >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) \
	      || echo "note: chromium could not be installed; tests/test_webui.py will skip"; \
	  else \
	    echo "note: no chromium/chromedriver (as root: apt-get install chromium chromium-driver); tests/test_webui.py will skip"; \
	  fi; \
	fi

test: install browser
	$(BIN)/python -m pytest -q $(PYTEST_ARGS) tests

clean:
	rm -rf $(VENV) workdir .pytest_cache
