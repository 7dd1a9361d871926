# Two entry points (see README.md): `make run` and `make test`. Both build .venv first.
# Paths are taken from this file's own folder, so `make -C <clone> run` works from anywhere.
ROOT := $(patsubst %/,%,$(dir $(abspath $(lastword $(MAKEFILE_LIST)))))
PYTHON ?= python3
VENV := $(ROOT)/.venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
STAMP := $(VENV)/.installed

.PHONY: run test system-deps lint typecheck unit prepare clean

$(STAMP): $(ROOT)/pyproject.toml $(ROOT)/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c $(ROOT)/constraints.txt -e '$(ROOT)[train,hub,plot,search,test]'
	touch $(STAMP)

# The venv by its relative name too, as `make .venv/.installed` in the clone.
.venv/.installed: $(STAMP)

run: $(STAMP)
	$(BIN)/autoresearchd run --config $(ROOT)/config.example.toml

# System parts first: installed when root on Debian, else one line naming them, then stop.
test: system-deps $(STAMP) lint typecheck unit

system-deps:
	$(ROOT)/scripts/install-system-deps

lint: $(STAMP)
	cd $(ROOT) && $(BIN)/ruff check .
	cd $(ROOT) && $(BIN)/ruff format --check .

typecheck: $(STAMP)
	cd $(ROOT) && $(BIN)/mypy

unit: $(STAMP)
	cd $(ROOT) && $(BIN)/pytest

clean:
	rm -rf $(VENV) $(ROOT)/.mypy_cache $(ROOT)/.ruff_cache $(ROOT)/.pytest_cache
