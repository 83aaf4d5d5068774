# Two entry points (see README):
#   make demo   set up .venv and run the short real demo (train -> collapse -> resume -> report)
#   make test   set up .venv and run lint, type checks, the layers contract and the test suite
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint

# The pinned, tested stack first, then pufferfiber itself, editable and without dependencies
# (they are the pinned ones): the `pufferfiber` command, `python -m pufferfiber`, the benchmarks
# and the notebook then import this checkout from any directory.
$(BIN)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade --quiet pip
	$(BIN)/pip install --quiet -r requirements-dev.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

setup: $(BIN)/.installed

# The guide's three steps on the fast `cartpole` env (about a minute here): train, collapse at
# tau = 0.3 and resume, then the report. Runs and figures land in $(DEMO)/; the dashboards
# are also captured in ./log.out and ./log_collapsed.out, as in the guide.
DEMO := experiments/demo
demo: setup
	$(BIN)/python demo.py --mode train --env cartpole --train.data-dir $(DEMO) \
		2> log.err | tee log.out
	$(BIN)/python demo.py --mode train --env cartpole --train.data-dir $(DEMO) \
		--collapse 0.3 --collapse-epoch 20 2> log_collapsed.err | tee log_collapsed.out
	$(BIN)/pufferfiber report $(DEMO) -o $(DEMO)/report.html
	$(BIN)/pufferfiber report $(DEMO) -o $(DEMO)/report.png -q
	@echo "demo done: $(DEMO)/report.html, $(DEMO)/report.png, run folders in $(DEMO)/"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint
	$(BIN)/python -m pytest -q
