# face2simpson — `make demo` runs the whole loop locally, `make test` runs every check.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
CARGO ?= cargo
STORE ?= $(CURDIR)/var/store
DATASET ?= datasets/demo
# Where scripts/setup.sh and scripts/setup-test.sh put what cargo cannot fetch.
DEPS := $(or $(FACE2SIMPSON_DEPS),$(CURDIR)/.deps)
PRETRAINED := $(DEPS)/pretrained/mobilenet_v2-b0353104.pth
# nasm (scripts/setup-debs.sh, when the machine has none): mozjpeg-sys assembles libjpeg-turbo's
# SIMD code with it. A build without it works, with a slower JPEG decoder and a cargo warning.
export PATH := $(PATH):$(DEPS)/nasm/bin
TRAINER := target/release/face2simpson-trainer
INFERENCE := target/release/face2simpson-inference
LISTEN ?= 127.0.0.1:8080
# ONNX Runtime and the BlazeFace face detector (scripts/setup-ort.sh): the service runs them, and
# the trainer puts every image through the same pipeline.
ORT_ENV := ORT_DYLIB_PATH=$(DEPS)/onnxruntime/libonnxruntime.so \
           FACE_DETECTOR=$(DEPS)/blazeface/face_detection_front_128x128.onnx
# Demo training settings: small enough for a few minutes on two CPU cores.
DEMO_TRAIN := --storage $(STORE) --dataset $(DATASET) --image-size 96 --epochs 6 --device auto \
              --pretrained pretrained/mobilenet_v2-b0353104.pth --promote

E2E_THREADS ?= 2
# Run one e2e scenario: make e2e E2E=bootstrap
E2E ?=

.PHONY: help setup setup-test setup-e2e e2e build demo demo-data serve test fmt fmt-check lint unit check-packaging images bench-train bench-serve bench-operator crds clean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

setup: ## fetch libtorch (CPU), the ImageNet MobileNetV2 weights, ONNX Runtime, BlazeFace, gloo's headers and nasm into .deps/ (idempotent)
	@scripts/setup.sh

build: setup ## release binaries into target/release/
	$(CARGO) build --release --workspace --bins

demo-data: build
	$(TRAINER) datagen --storage $(STORE) --dataset $(DATASET) --per-class 60 --size 128 --seed 1
	mkdir -p $(STORE)/pretrained && cp -f $(PRETRAINED) $(STORE)/pretrained/

demo: demo-data ## data, a champion, a challenger gated against it, then serve the champion
	rm -rf $(STORE)/runs $(STORE)/champion.json
	@echo "== training the first model (becomes the champion)"
	$(ORT_ENV) $(TRAINER) train $(DEMO_TRAIN) --run-id demo-1 --seed 1
	@echo "== training a challenger against it"
	$(ORT_ENV) $(TRAINER) train $(DEMO_TRAIN) --run-id demo-2 --seed 2
	@echo "== champion:" && cat $(STORE)/champion.json && echo
	$(MAKE) --no-print-directory serve

serve: build ## serve the local champion (var/store/champion.json) at http://$(LISTEN)
	@weights=$$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["weights_key"])' $(STORE)/champion.json); \
	echo "== serving $$weights at http://$(LISTEN)  (Ctrl-C to stop)"; \
	exec env $(ORT_ENV) $(INFERENCE) --model file://$(STORE)/$$weights --listen $(LISTEN)

crds: ## regenerate crds/simpsonmodel.yaml (and the chart's copy) from the operator's Rust types
	$(CARGO) run -q -p face2simpson-operator --bin crdgen > crds/simpsonmodel.yaml
	cp crds/simpsonmodel.yaml charts/face2simpson/files/simpsonmodel.crd.yaml

fmt: ## format the code
	$(CARGO) fmt --all

fmt-check:
	$(CARGO) fmt --all -- --check

lint: setup ## clippy with warnings as errors
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit: setup
	$(CARGO) test --workspace

setup-e2e: ## build the real control plane (etcd, kube-apiserver, kube-controller-manager, kubectl, helm) into .deps/e2e/bin
	@scripts/setup-e2e.sh

e2e: setup setup-e2e ## scenarios against a real API server and controllers (E2E=<name> runs one; logs in target/e2e/)
	@# The same feature resolution as `make unit`, so nothing is rebuilt and the binaries the
	@# scenarios run are the ones the unit tests built.
	$(CARGO) test --workspace --no-run
	$(CARGO) test --workspace --test cluster -- --ignored --test-threads=$(E2E_THREADS) $(E2E)

setup-test: ## what tests need beyond setup: Chromium for the page test, helm/kubernetes-validate/hadolint, tritonclient for the OIP test
	@scripts/setup-test.sh

check-packaging: ## helm lint + template, Kubernetes schema, RBAC, example and hadolint checks
	@scripts/setup-tools.sh
	$(DEPS)/tools/bin/python scripts/check-packaging.py

test: setup setup-test setup-e2e fmt-check lint check-packaging unit e2e ## everything CI runs

images: setup ## build the operator, inference and trainer images with podman and smoke-run them
	@scripts/images.sh

bench-train: setup ## training throughput, interleaved rounds: ours fp32 vs the seed's PyTorch stack, ours auto vs the strongest CPU PyTorch setup, and libtorch's raw step (400 images, 224 px, batch 32)
	@scripts/setup-bench.sh train
	$(CARGO) bench -p face2simpson-trainer --bench train_throughput

bench-operator: setup setup-e2e ## N SimpsonModels (30, 100, 300) on the real control plane: API requests per model at rest, RSS, CPU, spec→status latency (BENCH_MODELS=30 for one size)
	$(CARGO) build --release --workspace --bins
	FACE2SIMPSON_E2E_PROFILE=release $(CARGO) bench -p face2simpson-e2e --bench operator

bench-serve: setup ## the service vs two Python peers (our pipeline ported on uvicorn workers; FastAPI+Haar) with wrk at c=1, 8, 32 on a portrait and a group photo, plus per-stage and batching tables
	@command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
	@scripts/setup-bench.sh
	BENCH_PEER_PYTHON=$${BENCH_PEER_PYTHON-$(DEPS)/bench-venv/bin/python} $(CARGO) bench -p face2simpson-inference --bench serve

clean: ## remove build output, demo store and fetched dependencies
	$(CARGO) clean
	rm -rf var .deps
