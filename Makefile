# The README's commands. Everything installs into .venv; nothing needs Docker or an AWS account.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

export SAM_CLI_TELEMETRY := 0

.PHONY: setup browser swaks postfix dovecot demo test audit audit-lock lock lint docs bench faults up down clean deploy

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP) ## create .venv with the `jetmail` command and every dependency

# headless Chromium for the dashboard's browser test: installed by apt-get when run as root, otherwise
# a note (the test skips without it)
browser:
	@command -v chromium >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  echo "note: install Debian's chromium package to run the dashboard's browser test"

# swaks, the command-line SMTP client the submission server's test sends with: installed the same way
swaks:
	@command -v swaks >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq swaks >/dev/null; } || \
	  echo "note: install Debian's swaks package to run the SMTP submission server's swaks test"

# Debian's postfix, for the test that has a real MTA bounce mail (tests/postfix.py runs a private instance of
# it): installed the same way, preseeded "No configuration" so the package neither configures nor starts the
# default instance
postfix:
	@[ -x /usr/lib/postfix/sbin/master ] || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections && \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postfix >/dev/null; } || \
	  echo "note: install Debian's postfix package to run the real-MTA bounce test"

# Debian's dovecot-imapd, for the bounce mailbox poller's test (tests/dovecot.py runs a private instance of it):
# installed the same way
dovecot:
	@[ -x /usr/sbin/dovecot ] || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dovecot-imapd >/dev/null; } || \
	  echo "note: install Debian's dovecot-imapd package to run the bounce mailbox test"

demo: setup ## start the local stack, send mail through it, show what arrived, stop
	$(BIN)/python -m jetmail.demo

test: setup browser swaks postfix dovecot audit ## lint the SAM template and the code, type-check, run the tests on a real local stack
	$(BIN)/cfn-lint template.yaml
	$(BIN)/ruff check shared functions tests bench infra
	$(BIN)/mypy
	$(BIN)/pytest -q -m "not slow" -n 2 --dist loadfile --durations=25

# known vulnerabilities with a fix in the installed dependencies (infra/audit.py); prints "audit skipped:
# vulnerability service unreachable" and passes where no advisory service answers
audit: setup
	$(BIN)/python infra/audit.py

# the same against what uv.lock pins for the Lambda layer and the worker image, installing nothing; runs
# wherever an advisory service answers (a deployer's CI: `pip install pip-audit && python infra/audit.py --lock`)
audit-lock: setup
	$(BIN)/python infra/audit.py --lock

# after changing dependencies in pyproject.toml: re-lock (uv.lock) and export shared/requirements.txt (the
# Lambda layer) and infra/worker-requirements.txt (the worker image); `make test` fails until this ran
lock: setup
	$(BIN)/python infra/lock.py --write

# after changing a setting, a command or a route: rewrite docs/reference/ (settings, CLI, OpenAPI);
# `make test` fails until this ran
docs: setup
	$(BIN)/python infra/refdocs.py --write

# the whole AWS deploy from samconfig.toml (copy samconfig.example.toml): the worker image, built and pushed
# only when its sources changed, then `sam build` and `sam deploy` (docs/operations/deploy.md)
deploy:
	$(PYTHON) infra/deploy.py

lint: setup
	$(BIN)/ruff check shared functions tests bench infra
	$(BIN)/mypy
	$(BIN)/cfn-lint template.yaml

bench: setup ## print throughput and latency figures (not a test)
	$(BIN)/python bench/run.py
	$(BIN)/python bench/bench_webhooks.py

faults: setup ## fault injection (docs/RELIABILITY.md): prints lost / duplicated counts per scenario
	$(BIN)/pytest -q -m slow -s
	$(BIN)/pytest -q -s tests/deploy/test_cluster.py

up: setup
	$(BIN)/jetmail dev up

down: setup
	$(BIN)/jetmail dev down

clean:
	-$(BIN)/jetmail dev down
	rm -rf .jetmail
