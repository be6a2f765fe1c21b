# dadam: the two set-up commands are `make demo` and `make test`; both create or reuse .venv.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: install demo test lint format bench clean

# setup.py builds the optional C record counter: a changed C source reinstalls (rebuilds) it
$(STAMP): pyproject.toml setup.py connector/dataplane/_recordcount.c
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	@$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/dadam demo

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

CODE := connector catalog contracts usage_policy metering vocab tests bench

lint: install
	$(BIN)/ruff check $(CODE)
	$(BIN)/ruff format --check $(CODE)
	$(BIN)/mypy

format: install
	$(BIN)/ruff format $(CODE)
	$(BIN)/ruff check --fix $(CODE)

BENCHES := catalog policy identity recordcount usage_totals ledger negotiation dataplane

bench: install
	@set -e; for b in $(BENCHES); do echo "== bench/$$b.py"; $(BIN)/python bench/$$b.py; done

clean:
	rm -rf .dadam .pytest_cache .mypy_cache .ruff_cache build *.egg-info connector/dataplane/_recordcount.*.so
