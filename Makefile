# Set-up is idempotent: each target below rebuilds only what changed.
# The project needs CPython 3.11 exactly (see pyproject.toml); override with PYTHON=/path/to/it.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.quicnprotochat-installed
BINDING_SOURCES := $(wildcard openmls-bindings/Cargo.* openmls-bindings/pyproject.toml \
	openmls-bindings/src/*.rs openmls-bindings/python/openmls_bindings/*)

.PHONY: demo test setup lint lock clean postgresql chromium

demo: $(STAMP)
	$(BIN)/quicnprotochat demo

test: $(STAMP) postgresql chromium
	$(BIN)/python -m pytest

# The relay's PostgreSQL tests start their own throwaway server; they need Debian's postgresql
# (installed here when we are root, otherwise the command to run is printed and they skip).
postgresql:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
		|| { if [ "$$(id -u)" = 0 ]; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
		else echo "PostgreSQL tests will skip: run sudo apt-get install -y postgresql"; fi; }

# The web UI's browser tests drive Debian's Chromium with Playwright (no browser download);
# installed here when we are root, otherwise the command is printed and they skip.
chromium:
	@command -v chromium >/dev/null 2>&1 \
		|| { if [ "$$(id -u)" = 0 ]; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
				--no-install-recommends chromium fonts-dejavu-core >/dev/null; \
		else echo "Browser tests will skip: run sudo apt-get install -y --no-install-recommends chromium fonts-dejavu-core"; fi; }

setup: $(STAMP)

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
		|| { echo "quicnprotochat needs Python 3.11: run make PYTHON=/path/to/python3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml requirements.lock $(BINDING_SOURCES)
	$(BIN)/pip install --quiet -r requirements.lock
	cd openmls-bindings && VIRTUAL_ENV=$(abspath $(VENV)) PATH=$(abspath $(BIN)):$$PATH \
		maturin develop --release --locked --quiet
	$(BIN)/pip install --quiet --no-deps -e .
	$(BIN)/pip check
	touch $@

# Re-resolve requirements.lock after changing dependencies in pyproject.toml.
lock: $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev]'
	{ echo "# Exact versions of every Python package the project and its tests use (make lock rewrites it)."; \
	  $(BIN)/pip freeze --exclude-editable | grep -vE '^(#|-e )' \
	  | grep -viE '^(openmls-bindings|quicnprotochat)=='; } > requirements.lock

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	cd openmls-bindings && cargo fmt --check && cargo clippy --locked --all-targets -- -D warnings

clean:
	rm -rf $(VENV) openmls-bindings/target site
