#!/usr/bin/env bash
# make e2e: a fresh single-node cluster, the images built and pushed to the
# node's registry, the operator installed with `make deploy`, then the
# end-to-end tests in test/e2e. The cluster is torn down however it ends.
set -euo pipefail
cd "$(dirname "$0")/.."

export DEPPROXY_TOOLS="${DEPPROXY_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/depproxy-tools}"
export DEPPROXY_CLUSTER_DIR="${DEPPROXY_CLUSTER_DIR:-/var/tmp/depproxy-cluster}"
export PATH="$DEPPROXY_TOOLS/bin:$PATH"
REGISTRY=localhost:5001
TAG="e2e-$(date +%s)"

start=$(date +%s)
trap 'hack/cluster.sh down; echo "e2e: $(( $(date +%s) - start ))s in all" >&2' EXIT
KUBECONFIG="$(hack/cluster.sh up)"
export KUBECONFIG

make images REGISTRY="$REGISTRY" TAG="$TAG"
# MinIO for the tests, from the pinned binary; it runs as root in its own pod.
go run ./hack/image -binary "$DEPPROXY_TOOLS/bin/minio" -at /minio -user 0:0 -tag "$REGISTRY/e2e/minio:1"

# The node agents run the proxy image as root: `make images` built the
# manager with this digest as its default --proxy-image, and the chart is
# installed without one, so the tests see the built-in default.
PROXY_IMG="$REGISTRY/depproxy/depproxy@$(crane digest "$REGISTRY/depproxy/depproxy:$TAG")"

# The release's namespace, with the Pod Security label config/default gives it.
kubectl create namespace depproxy-system
kubectl label namespace depproxy-system pod-security.kubernetes.io/enforce=restricted
helm install depproxy dist/chart --namespace depproxy-system --wait --timeout 3m \
	--set image.repository="$REGISTRY/depproxy/manager" --set image.tag="$TAG"
kubectl -n depproxy-system rollout status deployment/depproxy-controller-manager --timeout=180s

DEPPROXY_E2E_PROXY_IMAGE="$PROXY_IMG" DEPPROXY_E2E_MINIO_IMAGE="$REGISTRY/e2e/minio:1" DEPPROXY_E2E_PAUSE_IMAGE="$REGISTRY/e2e/pause:1" \
	go test -tags e2e -count=1 -timeout 20m -v ./test/e2e
