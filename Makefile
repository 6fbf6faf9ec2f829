# Two commands on a fresh clone with Python 3.11+ and pip: `make demo` and `make test`.
# uv is bootstrapped into .uv/ with pip; the project environment is .venv/, built from uv.lock.
PYTHON ?= python3
UV_VERSION := 0.13.9
UV := .uv/bin/uv
VENV := .venv
BIN := $(VENV)/bin
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1

.PHONY: help bootstrap demo ui test test-unit lint typecheck check bench docs clean

help: ## Show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(UV):
	$(PYTHON) -m venv .uv
	.uv/bin/python -m pip install --quiet "uv==$(UV_VERSION)"

# --compile-bytecode: where PYTHONDONTWRITEBYTECODE is set (this machine and CI) no .pyc is ever written,
# and every process (cycle, worker, CLI, test subprocess) compiled Prefect, pandas and the rest from
# source again: importing prefect, pandas and holidays took 8.2 s, 2.4 s with compiled bytecode.
$(VENV)/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --compile-bytecode --python "$$($(PYTHON) -c 'import sys; print(sys.executable)')"
	@touch $@

bootstrap: $(VENV)/.synced ## Install everything into .venv (idempotent)

demo: bootstrap ## Generate a demo portfolio, run a renewal cycle, grant rewards, write the KPI report
	$(BIN)/renewals demo

ui: bootstrap ## Start a local Prefect server and UI on http://127.0.0.1:4200 (shows the demo's runs)
	$(BIN)/prefect server start --host 127.0.0.1 --port 4200

test: bootstrap ## Run the whole suite, PostgreSQL tests included
	$(BIN)/pytest

test-unit: bootstrap ## Only the pure unit tests (no database, no Prefect)
	$(BIN)/pytest tests/unit

lint: bootstrap ## ruff
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: bootstrap ## mypy --strict on flows, tasks, config
	$(BIN)/mypy

check: lint typecheck test ## lint, types and tests

bench: bootstrap ## Cycle benchmark at 100k customers against PostgreSQL
	$(BIN)/python benchmarks/cycle.py --customers 100000

docs: bootstrap ## Regenerate the generated sections of docs/
	$(BIN)/python -m tests.support.docs

clean: ## Remove the environments and local state
	rm -rf .uv $(VENV) var
