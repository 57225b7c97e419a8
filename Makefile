# clsact: `make demo` and `make test` set themselves up (virtualenv at .venv/, pinned deps).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)

.PHONY: help venv kube-apiserver demo test lint bench submit clean

# make submit: each variable maps to a `clsact submit` flag; empty ones fall back to the
# values file (VALUES) and clsact's defaults. ARGS takes any other flag.
CONFIG    ?= configs/mbv3_qat_dis.yaml
IMAGE     ?=
WORKERS   ?=
GPUS      ?=
NAMESPACE ?=
OPERATOR  ?=
VALUES    ?=
SAVE_DIR  ?=
ARGS      ?=

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-15s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[cpu,dev]'
	@rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP) ## create .venv/ and install clsact with its pinned dependencies

demo: $(STAMP) ## the whole job on a real small dataset (sklearn digits), results in demo-output/
	$(PY) -m clsact demo --workdir demo-output

kube-apiserver: ## build (once, cached in ~/.cache/clsact) the real kube-apiserver + etcd the tests use
	@bash tests/infra/kube-apiserver.sh >/dev/null

test: $(STAMP) kube-apiserver ## every test (real Paddle + PaddleSlim on CPU, S3 and Kubernetes API servers)
	$(PY) -m pytest tests

lint: $(STAMP) ## ruff
	$(VENV)/bin/ruff check clsact tests

bench: $(STAMP) kube-apiserver ## loader throughput vs upstream, QAT graph building, launcher latency; tables + bench-results/*.json
	$(PY) -m clsact.bench --output bench-results/loader.json
	$(PY) -m clsact.bench_graph --output bench-results/graph.json
	$(PY) -m tests.bench_launch --output bench-results/launch.json

submit: $(STAMP) ## submit CONFIG as a PaddleJob: make submit IMAGE=reg/clsact:tag [WORKERS= GPUS= NAMESPACE= OPERATOR= VALUES= SAVE_DIR= ARGS=]
	$(PY) -m clsact submit --config $(CONFIG) $(if $(IMAGE),--image $(IMAGE)) \
	  $(if $(WORKERS),--workers $(WORKERS)) $(if $(GPUS),--gpus-per-worker $(GPUS)) \
	  $(if $(NAMESPACE),--namespace $(NAMESPACE)) $(if $(OPERATOR),--operator $(OPERATOR)) \
	  $(if $(VALUES),--values $(VALUES)) $(if $(SAVE_DIR),--save-dir $(SAVE_DIR)) $(ARGS)

clean: ## remove the virtualenv and demo/bench outputs
	rm -rf $(VENV) demo-output bench-results *.egg-info
