# loopml — the two commands of the README:
#   make demo   fresh machine -> .venv -> the whole loop on the simulated card-fraud world
#   make test   fresh machine -> .venv (+ redis-server, postgresql, chromium) -> lint, types, the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
APT    := $(shell command -v sudo >/dev/null 2>&1 && [ "$$(id -u)" != 0 ] && echo sudo) apt-get

.PHONY: demo test install servers lint typecheck unit bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[redis,postgres,xgboost,dev]"
	touch $(STAMP)

install: $(STAMP)

# Debian packages the tests need; each test starts its own throwaway instance on a free port.
servers:
	@if ! command -v redis-server >/dev/null 2>&1; then \
	  echo "installing redis-server (Debian package)"; \
	  $(APT) update -qq && DEBIAN_FRONTEND=noninteractive $(APT) install -y -qq redis-server >/dev/null; \
	fi
	@if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  echo "installing postgresql (Debian package)"; \
	  $(APT) update -qq && DEBIAN_FRONTEND=noninteractive $(APT) install -y -qq postgresql >/dev/null; \
	fi
	@if ! command -v chromium >/dev/null 2>&1; then \
	  echo "installing chromium (Debian package, for the dashboard test)"; \
	  $(APT) update -qq && DEBIAN_FRONTEND=noninteractive $(APT) install -y -qq chromium >/dev/null; \
	fi

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: install
	$(BIN)/mypy

# two workers, one test file at a time each, in collection order (tests/conftest.py puts the slow files first)
unit: install servers
	$(BIN)/pytest -q -n 2 --dist loadfile --no-loadscope-reorder

test: lint typecheck unit

demo: install
	$(BIN)/loopml demo --workdir demo-run

bench: install
	$(BIN)/python benchmarks/foundation.py

clean:
	rm -rf $(VENV) demo-run .mypy_cache .ruff_cache .pytest_cache
