# The README's commands. Everything installs into .venv; nothing needs Docker or an AWS account.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

export SAM_CLI_TELEMETRY := 0

.PHONY: setup demo test lint bench faults up down clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP) ## create .venv with the `jetmail` command and every dependency

demo: setup ## start the local stack, send mail through it, show what arrived, stop
	$(BIN)/python -m jetmail.demo

test: setup ## lint the SAM template and run the test suite against a real local stack
	$(BIN)/cfn-lint template.yaml
	$(BIN)/ruff check shared functions tests bench
	$(BIN)/pytest -q -m "not slow"

lint: setup
	$(BIN)/ruff check shared functions tests bench
	$(BIN)/cfn-lint template.yaml

bench: setup ## print throughput and latency figures (not a test)
	$(BIN)/python bench/run.py

faults: setup ## fault injection: prints lost / duplicated counts
	$(BIN)/pytest -q -m slow -s

up: setup
	$(BIN)/jetmail dev up

down: setup
	$(BIN)/jetmail dev down

clean:
	-$(BIN)/jetmail dev down
	rm -rf .jetmail
