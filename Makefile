# Two commands: `make run` and `make test`. Both create .venv and install what they
# need first, including the Debian rabbitmq-server package (as root) when no broker
# binary exists and RABBITMQ_URL is unset.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: run test lint soak bench rabbitmq chromium prometheus clean

$(STAMP): pyproject.toml
	@$(PYTHON) -m venv $(VENV) || { echo "python3 -m venv failed; installing python3-venv"; \
	  apt-get install -y -qq python3-venv || { apt-get update -qq && apt-get install -y -qq python3-venv; }; \
	  $(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

rabbitmq:
	@if [ -z "$$RABBITMQ_URL" ] && [ ! -x /usr/lib/rabbitmq/bin/rabbitmq-server ] && ! command -v rabbitmq-server >/dev/null 2>&1; then \
	  echo "Installing rabbitmq-server (Debian package) ..."; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -qq --no-install-recommends rabbitmq-server >/dev/null || \
	  { apt-get update -qq && apt-get install -y -qq --no-install-recommends rabbitmq-server >/dev/null; }; \
	fi

# The admin pages are tested in Debian's headless Chromium (driven by playwright).
chromium:
	@if ! command -v chromium >/dev/null 2>&1; then \
	  echo "Installing chromium (Debian package) for the browser tests ..."; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -qq --no-install-recommends chromium >/dev/null || \
	  { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null; }; \
	fi

# The monitoring under deploy/prometheus is checked by Debian's prometheus and promtool.
prometheus:
	@if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then \
	  echo "Installing prometheus (Debian package) for the monitoring tests ..."; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -qq --no-install-recommends prometheus >/dev/null || \
	  { apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }; \
	fi

run: $(STAMP) rabbitmq
	$(BIN)/bfus-lime run $(if $(NODES),--nodes $(NODES))

test: $(STAMP) rabbitmq chromium prometheus lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# ruff and mypy, configured in pyproject.toml; make test runs them first.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

# 20,000 changes over 2,000 customers through 3-4 worker processes while workers are
# killed, the broker restarts and Lime fails; the checker's counts and the wall time
# are printed at the end.
soak: $(STAMP) rabbitmq
	$(BIN)/python -m sandbox.soak $(if $(NODES),--nodes $(NODES))

bench: $(STAMP) rabbitmq
	$(BIN)/python -m bench.scaling

clean:
	rm -rf $(VENV) .run .pytest_cache
