# depproxy — see README.md.

# Pinned test tools (registry, crane, MinIO, skopeo) live outside the
# checkout, built once and reused.
DEPPROXY_TOOLS ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/depproxy-tools
export DEPPROXY_TOOLS

# Set by `make unit` alone: with it the controllers' envtest tests skip.
# Never inherited, so every other target runs every test.
unexport DEPPROXY_UNIT

GO ?= go
TOOLS_BIN := $(DEPPROXY_TOOLS)/bin
CONTROLLER_GEN := $(TOOLS_BIN)/controller-gen
KUSTOMIZE := $(TOOLS_BIN)/kustomize
CRANE := $(TOOLS_BIN)/crane

.PHONY: all run build build-manager tools test unit lint fuzz bench generate manifests bundle chart verify-generated deploy undeploy install images e2e docs

# Images for `make deploy`.
IMG ?= ghcr.io/depproxy/manager:latest
PROXY_IMG ?=
VERSION ?= 0.1.0

all: build

## run: a cache on :5000 in front of Docker Hub, stored in ./data
run:
	$(GO) run ./proxy/cmd/depproxy serve $(ARGS)

## build: bin/depproxy and bin/manager
build:
	$(GO) build -o bin/depproxy ./proxy/cmd/depproxy
	$(GO) build -o bin/manager .

# The Dockerfile's build: the same flags, entrypoints and user.
RELEASE_BUILD := CGO_ENABLED=0 $(GO) build -trimpath
REGISTRY ?= localhost:5001
TAG ?= dev

## images: both images without a Docker engine, pushed to $(REGISTRY); the
## depproxy image first, so the manager is built with its digest as the
## default --proxy-image (the node agents run it as root: never a tag)
images:
	$(RELEASE_BUILD) -ldflags=-s -o bin/release/depproxy ./proxy/cmd/depproxy
	$(GO) run ./hack/image -binary bin/release/depproxy -at /depproxy -cmd serve -tag $(REGISTRY)/depproxy/depproxy:$(TAG)
	digest="$$($(CRANE) digest $(REGISTRY)/depproxy/depproxy:$(TAG))" && \
	$(RELEASE_BUILD) -ldflags="-s -X github.com/depproxy/depproxy/controllers.DefaultImage=$(REGISTRY)/depproxy/depproxy@$$digest" -o bin/release/manager .
	$(GO) run ./hack/image -binary bin/release/manager -at /manager -tag $(REGISTRY)/depproxy/manager:$(TAG)

## generate: deepcopy code for the API types
generate: tools
	$(CONTROLLER_GEN) object paths=./api/...

## manifests: CRDs and RBAC from the markers
manifests: tools
	$(CONTROLLER_GEN) rbac:roleName=manager-role crd paths=./api/... paths=./controllers/... \
		output:crd:artifacts:config=config/crd/bases output:rbac:artifacts:config=config/rbac

## bundle: the OLM bundle in bundle/, from config/
bundle: manifests
	$(GO) run ./hack/bundle -kustomize $(KUSTOMIZE) -version $(VERSION)

## chart: the generated part of the Helm chart (dist/chart), from config/
chart: manifests
	$(GO) run ./hack/chart -kustomize $(KUSTOMIZE) -version $(VERSION)

## verify-generated: generated files are up to date (CI)
verify-generated: generate manifests bundle chart
	@git diff --exit-code -- api config bundle dist || { echo "generated files are stale: run make generate manifests bundle chart and commit"; exit 1; }
	@untracked="$$(git ls-files --others --exclude-standard -- api config bundle dist)"; if [ -n "$$untracked" ]; then echo "generated files not committed:"; echo "$$untracked"; exit 1; fi
	@test -z "$$(git status --porcelain -- api config bundle)" || { echo "untracked generated files:"; git status --porcelain -- api config bundle; exit 1; }

## install: the CRDs into the current cluster
install: manifests
	$(KUSTOMIZE) build config/crd | kubectl apply -f -

## deploy: CRDs, RBAC and the manager into the current cluster (IMG; PROXY_IMG,
## when given, overrides the manager's built-in --proxy-image and is deployed by
## its digest (crane digest), as the node agents run it as root)
deploy: manifests
	@proxy='$(PROXY_IMG)'; case "$$proxy" in ""|*@sha256:*) ;; *) \
		digest="$$($(CRANE) digest "$$proxy")" || { echo "deploy: cannot resolve PROXY_IMG=$$proxy to its digest: push it first, or give PROXY_IMG=repository@sha256:..." >&2; exit 1; }; \
		case "$${proxy##*/}" in *:*) proxy="$${proxy%:*}";; esac; proxy="$$proxy@$$digest";; esac; \
	arg=""; [ -z "$$proxy" ] || { arg="--proxy-image=$$proxy"; echo "deploy: $$arg"; }; \
	tmp="$$(mktemp -d)"; trap 'rm -rf "$$tmp"' EXIT; cp -r config "$$tmp/" && \
	(cd "$$tmp/config/manager" && $(KUSTOMIZE) edit set image controller=$(IMG) && \
		{ [ -z "$$arg" ] || $(KUSTOMIZE) edit add patch --kind Deployment --name controller-manager \
			--patch "[{\"op\":\"add\",\"path\":\"/spec/template/spec/containers/0/args/-\",\"value\":\"$$arg\"}]"; }) && \
	$(KUSTOMIZE) build "$$tmp/config/default" | kubectl apply -f -

## undeploy: remove what deploy made
undeploy:
	$(KUSTOMIZE) build config/default | kubectl delete --ignore-not-found -f -

## tools: install the pinned test tools (idempotent)
tools:
	hack/tools.sh

## test: every test, real parts included, with the race detector, then the end-to-end tests
test: tools lint verify-generated
	$(GO) test -race -count=1 -timeout 30m ./...
	hack/e2e.sh

## unit: the fast tiers, in seconds: the proxy's packages in process (an
## in-memory registry upstream, in-memory storage), the manager's dependency
## check, and the controllers' tests that need no API server (the builders;
## DEPPROXY_UNIT skips the envtest ones, which make test runs); no root, no tools
unit:
	DEPPROXY_UNIT=1 $(GO) test -count=1 . ./proxy/... ./controllers

## lint: formatting and vet
lint:
	@out="$$(gofmt -l .)"; if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags e2e ./test/e2e

## e2e: a real single-node cluster on this machine, the operator deployed, test/e2e
e2e: tools
	hack/e2e.sh

## fuzz: a short run of each fuzz target
fuzz:
	$(GO) test ./proxy/manifest -run '^$$' -fuzz FuzzMediaType -fuzztime 60s
	$(GO) test ./proxy/registry -run '^$$' -fuzz FuzzParseRoute -fuzztime 60s
	$(GO) test ./proxy/token -run '^$$' -fuzz FuzzVerify -fuzztime 60s
	$(GO) test ./proxy/registry -run '^$$' -fuzz FuzzSourceSelection -fuzztime 60s
	$(GO) test ./proxy/settings -run '^$$' -fuzz FuzzSettingsFile -fuzztime 60s
	$(GO) test ./proxy/routing -run '^$$' -fuzz FuzzRoute -fuzztime 60s
	$(GO) test ./proxy/access -run '^$$' -fuzz FuzzMatcher -fuzztime 60s

## docs: the generated parts of docs/ (the configuration page's flag table)
docs:
	DEPPROXY_UPDATE_DOCS=1 $(GO) test ./proxy/settings -run TestConfigurationPageFlags -count=1

## bench: depproxy against CNCF Distribution's proxy mode, printed as a table
bench: tools
	$(GO) run ./test/bench
