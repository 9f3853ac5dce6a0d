# Set-up is idempotent: each target below rebuilds only what changed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.quicnprotochat-installed
BINDING_SOURCES := $(wildcard openmls-bindings/Cargo.* openmls-bindings/pyproject.toml \
	openmls-bindings/src/*.rs openmls-bindings/python/openmls_bindings/*)

.PHONY: demo test setup lint clean

demo: $(STAMP)
	$(BIN)/quicnprotochat demo

test: $(STAMP)
	$(BIN)/python -m pytest

setup: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml $(BINDING_SOURCES)
	$(BIN)/pip install --quiet maturin==1.16.0
	cd openmls-bindings && VIRTUAL_ENV=$(abspath $(VENV)) PATH=$(abspath $(BIN)):$$PATH \
		maturin develop --release --locked --quiet
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	cd openmls-bindings && cargo fmt --check && cargo clippy --locked --all-targets -- -D warnings

clean:
	rm -rf $(VENV) openmls-bindings/target site
