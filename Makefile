# celery-operator: the commands a newcomer needs. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

CARGO ?= cargo
STATE ?= $(CURDIR)/.state

.PHONY: help demo test test-deps test-unit test-cluster test-real-node bench bench-peers bench-scale build crd chart policies control-plane images stop fmt lint

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

demo: ## Local control plane + operator + an example Celery app; Ctrl-C stops everything
	hack/demo.sh

test: test-deps policies ## Every test: unit, CRD drift, policies, real brokers and the real control plane
	policies/build.sh --test
	CELERY_OPERATOR_REQUIRE_BUILTINS=1 $(CARGO) test --workspace

test-deps: ## Install Redis, RabbitMQ and a Celery venv for the broker tests
	hack/install-test-deps.sh

test-unit: ## Only the tests that need no cluster
	$(CARGO) test --workspace --lib

test-cluster: ## Only the tests against the real control plane
	$(CARGO) test -p celery-operator --test cluster

test-real-node: test-deps policies ## Only the tests on the real node (real containers; root)
	$(CARGO) test -p celery-operator --test real_node

bench: test-deps policies ## Benchmarks (figures, not tests): policy cost, autoscaling reaction time and sampling cost, failover, API cost, scale-in, worker groups, trace memory
	$(CARGO) bench -p celery-operator --bench policy --bench autoscale --bench failover --bench api_cost --bench scale_in --bench groups --bench trace

bench-peers: test-deps policies ## celery-operator beside KEDA v2.21.0 (built on first use, ~20 min): reaction, backlog seen, scale-in, CPU, memory, API requests
	$(CARGO) bench -p celery-operator --bench peers

bench-scale: test-deps policies ## One operator at 1, 1,000 and 10,000 apps (APPS=…): CPU per cycle, cycles per app, RSS, API requests by verb, failover
	$(CARGO) bench -p celery-operator --bench scale

build: ## Build the operator binary
	$(CARGO) build -p celery-operator

crd: ## Regenerate deploy/crd.yaml (and the Helm chart's copy) from the Rust types
	$(CARGO) run -q -p celery-operator -- crd > deploy/crd.yaml
	cp deploy/crd.yaml deploy/helm/celery-operator/crds/celery.yaml

chart: ## Lint and render the Helm chart (Helm built from the Go module proxy, cached)
	$$(hack/build-helm.sh | tail -1) lint --strict deploy/helm/celery-operator
	$$(hack/build-helm.sh | tail -1) template celery-operator deploy/helm/celery-operator --namespace celery-operator >/dev/null

policies: ## Compile the built-in scaling policies to target/policies/*.wasm
	policies/build.sh

control-plane: ## Build (once) and start the local control plane in .state/cluster (REAL_NODE=1: with a real node)
	hack/control-plane.sh start $(STATE)/cluster
	@echo "export KUBECONFIG=$(STATE)/cluster/admin.kubeconfig"

images: policies ## Build celery-operator:dev and example-image:dev without Docker, import into .state/cluster's real node
	hack/build-images.sh $(STATE)/cluster

stop: ## Stop the local control plane
	hack/control-plane.sh stop $(STATE)/cluster

fmt: ## Format the Rust code
	$(CARGO) fmt --all

lint: ## Clippy with warnings as errors
	$(CARGO) clippy --workspace --all-targets -- -D warnings
