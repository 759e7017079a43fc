# Two commands for a fresh machine: `make demo` (the whole job on synthetic phantoms) and
# `make test` (every test). Both create the virtualenv and install the project first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: install demo test test-fast web lint api-types clean-cache

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,tracking]'
	touch $@

install: $(STAMP)

demo: install
	$(BIN)/cxr demo --out runs/demo-$(shell date +%Y%m%d-%H%M%S)

# The front end is built and unit-tested (Vitest) first: the browser end-to-end test serves it.
web:
	cd web && npm ci --no-audit --no-fund && npm run build && npm test

test: install web
	$(BIN)/pytest -q

# No training, no browser: the quick check while editing (the full suite is `make test`).
test-fast: install
	$(BIN)/pytest -q -m "not slow"

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean-cache:
	rm -rf .cache/cxr

# The API's shapes are declared once (src/cxr/serve/schemas.py); this regenerates the OpenAPI
# document and the front end's TypeScript types from them (tests/test_api_types.py checks both).
api-types: install
	$(BIN)/python -c 'from cxr.serve.openapi import write_document; write_document("web/openapi.json")'
	cd web && npx openapi-typescript openapi.json -o src/api-schema.ts --default-non-nullable false
