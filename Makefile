# Everything a fresh Linux machine needs: each target creates .venv and installs
# what it uses when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
REAL ?= ../shared/data/real

.PHONY: serve test lint bench install tools clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,train]'
	@touch $@

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Servers the tests run for real on 127.0.0.1, from Debian's packages: Prometheus
# (and promtool) for the monitoring tests, PostgreSQL for the results store.
tools:
	@missing=""; \
	command -v promtool >/dev/null 2>&1 || missing="$$missing prometheus"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
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

# The service with the bundled model. The camera loop is the next issue: until it
# exists the API runs alone (--camera none).
serve: $(STAMP)
	$(BIN)/topgan serve --camera none

clean:
	rm -rf $(VENV) data/demo .pytest_cache .mypy_cache .ruff_cache
