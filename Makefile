# The two commands a newcomer needs are `make run` and `make test`; both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test check lint typecheck bench soak clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/giftledger serve --host 127.0.0.1 --port 8080

# The /reports page is tested in a real headless chromium (tests/integration/test_reports_page.py),
# and deploy/nginx.conf in a real nginx (tests/integration/test_proxy.py). Debian puts nginx in
# /usr/sbin, which is not on every user's PATH.
test: $(STAMP)
	command -v chromium || (apt-get update -qq && apt-get install -y -qq chromium)
	command -v nginx || test -x /usr/sbin/nginx || (apt-get update -qq && apt-get install -y -qq nginx)
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

check: lint test

# Not part of `make test`: loads the real service with wrk; see bench/run.py.
bench: $(STAMP)
	command -v wrk || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python -m bench.run

# Not part of `make test`: the crash-recovery tests with many more faults and a longer load.
soak: $(STAMP)
	GIFTLEDGER_SOAK_KILLS=20 GIFTLEDGER_SOAK_DB_RESTARTS=5 GIFTLEDGER_SOAK_PAYERS=32 \
	GIFTLEDGER_SOAK_INTERVAL_SECONDS=3 $(BIN)/pytest -q -s tests/integration/test_recovery.py

clean:
	rm -rf $(VENV) .giftledger .pytest_cache
