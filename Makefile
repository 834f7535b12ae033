# Everything a fresh Linux machine needs: each target creates .venv and installs
# what it uses when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
REAL ?= ../shared/data/real

.PHONY: serve test lint bench install clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python bench/reconstruction.py
	$(BIN)/python bench/simulate.py

# Until the service and the camera loop exist (they are the next issues), `make
# serve` runs what exists: the reconstruction of the real holograms.
serve: $(STAMP)
	@echo "topgan: the HTTP service and camera loop are not built yet; reconstructing the real holograms in $(REAL) into data/demo instead."
	@if [ -d "$(REAL)" ]; then \
		$(BIN)/topgan reconstruct $(REAL)/hl60_hologram_with_bg.npz $(REAL)/single_cell_hologram.tif \
			--out data/demo --crops data/demo/crops-632nm.h5 && \
		$(BIN)/topgan reconstruct $(REAL)/single_cell_hologram_meta.h5 \
			--out data/demo --crops data/demo/crops-532nm.h5 && \
		echo "OPD maps (nm) and crops are in data/demo"; \
	else \
		echo "no real holograms at $(REAL): nothing to reconstruct"; \
	fi

clean:
	rm -rf $(VENV) data/demo .pytest_cache .mypy_cache .ruff_cache
