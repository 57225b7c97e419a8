# clsact: `make demo` and `make test` set themselves up (virtualenv at .venv/, pinned deps).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)

.PHONY: help venv demo test lint bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[cpu,dev]'
	@rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP) ## create .venv/ and install clsact with its pinned dependencies

demo: $(STAMP) ## the whole job on a real small dataset (sklearn digits), results in demo-output/
	$(PY) -m clsact demo --workdir demo-output

test: $(STAMP) ## every test (real Paddle + PaddleSlim on CPU)
	$(PY) -m pytest tests

lint: $(STAMP) ## ruff
	$(VENV)/bin/ruff check clsact tests

bench: $(STAMP) ## loader throughput vs the upstream reader; table + bench-results/loader.json
	$(PY) -m clsact.bench --output bench-results/loader.json

clean: ## remove the virtualenv and demo/bench outputs
	rm -rf $(VENV) demo-output bench-results *.egg-info
