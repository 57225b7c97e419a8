# clsact: `make demo` and `make test` set themselves up (virtualenv at .venv/, pinned deps).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml docker/constraints.txt docker/install.sh | sha256sum | cut -c1-12)

.PHONY: help venv kube demo test test-image-cpu test-image-gpu lint bench study submit image image-cpu push chart-push lock clean

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

$(STAMP): pyproject.toml docker/constraints.txt docker/install.sh
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	sh docker/install.sh $(PY) -e '.[cpu,dev]'
	@rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP) ## create .venv/ and install clsact with its pinned dependencies

demo: $(STAMP) ## the whole job on a real small dataset (sklearn digits), results in demo-output/
	$(PY) -m clsact demo --workdir demo-output

kube: ## build (once, cached in ~/.cache/clsact) Kubernetes 1.20 (API server, controllers, scheduler, kubelet) + etcd for the tests
	@bash tests/infra/kubernetes.sh >/dev/null

test: ## every test (real Paddle + PaddleSlim on CPU, S3 server, Kubernetes cluster + Helm SDK, dockerd + the CPU image)
	@# the three slow inputs at once: the Go build is CPU-bound, the venv and image mostly I/O
	@$(MAKE) --no-print-directory -j3 $(STAMP) kube test-image-cpu
	@$(PY) -m pytest --durations=25 tests; status=$$?; bash tests/infra/stop-dockerd.sh; exit $$status

test-image-cpu: # (make test) the CPU image, built ahead of the tests that run it
	@bash tests/infra/cpu-image.sh

test-image-gpu: $(STAMP) ## build the GPU image and check it here (no GPU needed; ~3.5 GB of wheels)
	$(PY) -m pytest -m gpu_image tests/test_image_gpu.py

image: ## build the CUDA image [IMAGE=clsact REGISTRY= TAG= BASE_IMAGE= EXTRAS= PADDLE_GPU= PADDLE_GPU_INDEX= GPU_ARCHS=70,75,80,86]; starts dockerd if needed
	@bash docker/build.sh gpu

image-cpu: ## build the CPU image (same options)
	@bash docker/build.sh cpu

VARIANTS ?= gpu cpu
push: ## build (cached) and push the images: make push REGISTRY=registry.example.com/team [VARIANTS=cpu]
	@test -n "$(REGISTRY)" || { echo "make push: set REGISTRY=host[/path] (the images are tagged with it)" >&2; exit 2; }
	@for variant in $(VARIANTS); do name=$$(bash docker/build.sh $$variant) && /usr/bin/docker push "$$name" >&2 && echo "pushed $$name" || exit 1; done

chart-push: $(STAMP) ## package the Helm chart and push it as an OCI artifact: make chart-push REGISTRY=registry.example.com/team
	@$(PY) charts/push.py "$(REGISTRY)"

lock: ## re-resolve docker/constraints.txt (every pinned version the venv and images install)
	@bash docker/lock.sh

lint: $(STAMP) ## ruff, and the import contract (layers, no circles: docs/architecture.md)
	$(VENV)/bin/ruff check clsact tests
	$(PY) -m pytest -q -p no:cacheprovider tests/test_architecture.py

bench: $(STAMP) kube ## loader throughput vs upstream, QAT graph building, launcher latency, int8 vs fp32 through each runtime, pruned + int8 vs fp32, rank sync cost; tables + bench-results/*.json
	$(PY) -m tests.bench.loader --output bench-results/loader.json
	$(PY) -m tests.bench.graph --output bench-results/graph.json
	$(PY) -m tests.bench.launch --output bench-results/launch.json
	$(PY) -m tests.bench.deploy --output bench-results/deploy.json
	$(PY) -m tests.bench.prune --output bench-results/prune.json
	$(PY) -m tests.bench.sync --output bench-results/sync.json

study: $(STAMP) ## does the shipped QAT recipe converge on models it was not tuned on? architectures x sizes x seeds, upstream vs shipped [STUDY_ARGS=]; table + bench-results/study.{json,png}
	$(PY) -m tests.bench.study --output bench-results/study.json --plot bench-results/study.png $(STUDY_ARGS)

submit: $(STAMP) ## submit CONFIG as a PaddleJob: make submit IMAGE=reg/clsact:tag [WORKERS= GPUS= NAMESPACE= OPERATOR= VALUES= SAVE_DIR= ARGS=]
	$(PY) -m clsact submit --config $(CONFIG) $(if $(IMAGE),--image $(IMAGE)) \
	  $(if $(WORKERS),--workers $(WORKERS)) $(if $(GPUS),--gpus-per-worker $(GPUS)) \
	  $(if $(NAMESPACE),--namespace $(NAMESPACE)) $(if $(OPERATOR),--operator $(OPERATOR)) \
	  $(if $(VALUES),--values $(VALUES)) $(if $(SAVE_DIR),--save-dir $(SAVE_DIR)) $(ARGS)

clean: ## remove the virtualenv and demo/bench outputs
	rm -rf $(VENV) demo-output bench-results *.egg-info
