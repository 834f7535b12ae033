# Everything a fresh Linux machine needs: each target creates $(VENV) and installs
# what it uses when missing. `make serve` installs the service alone (no PyTorch, no
# test tools); test, lint and bench install everything.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
SERVE_STAMP := $(VENV)/.installed-serve

.PHONY: serve test lint bench install tools clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,train]'
	@touch $@

# What the service needs at run time: the package and the PostgreSQL driver. An up
# to date full install above includes them, so then nothing is installed; otherwise
# pip adds only what is missing and keeps whatever already satisfies a requirement.
$(SERVE_STAMP): pyproject.toml
	@if [ $(STAMP) -nt pyproject.toml ]; then \
		echo "$(VENV) has the full install"; \
	else \
		set -e; \
		test -x $(BIN)/python || $(PYTHON) -m venv $(VENV); \
		$(BIN)/python -m pip install --quiet --upgrade pip; \
		$(BIN)/python -m pip install --quiet -e '.[postgres]'; \
	fi
	@touch $@

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Servers and tools the tests run for real, from Debian's packages: Prometheus (and
# promtool) for the monitoring tests, PostgreSQL for the results store, Chromium
# and its driver for the live page.
tools:
	@missing=""; \
	command -v promtool >/dev/null 2>&1 || missing="$$missing prometheus"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null 2>&1 || missing="$$missing chromium-driver"; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian's$$missing for the tests"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

test: lint tools
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python bench/reconstruction.py
	$(BIN)/python bench/simulate.py
	$(BIN)/python bench/service.py
	$(BIN)/python bench/inference.py
	$(BIN)/python bench/pipeline.py
	$(BIN)/python bench/store.py
	$(BIN)/python -m bench.live

# The whole product: the pylon camera emulator streaming simulated SW480/SW620
# cells in flow (holograms rendered once into data/emulator), the bundled model, results in
# data/results.sqlite, the live page at http://127.0.0.1:8000/.
serve: $(SERVE_STAMP)
	$(BIN)/topgan serve

clean:
	rm -rf $(VENV) data/demo .pytest_cache .mypy_cache .ruff_cache
