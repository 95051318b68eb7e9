#!/usr/bin/env bash
# Installs the pinned test tools into a cache outside the checkout.
# Idempotent: a tool already built at its pinned version is not rebuilt.
set -euo pipefail

TOOLS_DIR="${DEPPROXY_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/depproxy-tools}"
HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

MINIO_VERSION="v0.0.0-20260212201848-7aac2a2c5b7c"
DISTRIBUTION_VERSION="v3.1.2"
CRANE_VERSION="v0.22.1"
# envtest's control plane and the clients, matching controller-runtime v0.25.
KUBERNETES_VERSION="v1.37.2"
ETCD_VERSION="v3.6.16"
CONTROLLER_TOOLS_VERSION="v0.23.0"
KUSTOMIZE_VERSION="v5.8.1"
# The node side of the cluster mirror: containerd 2.x (its CRI image
# service, as kubelet uses it) and crictl to drive it; with its runc shim,
# the end-to-end cluster's runtime (image volumes need containerd 2.1+).
CONTAINERD2_VERSION="v2.4.2"
CRI_TOOLS_VERSION="v1.37.0"
# The chart's tests: helm lint, template, install, upgrade, uninstall.
HELM_VERSION="v4.3.1"
# A credential provider plugin nobody here wrote, run by the cache as the
# kubelet runs it.
ECR_CREDENTIAL_PROVIDER_VERSION="v1.37.1"
# Signatures and attachments through the cache: cosign v3 signs and
# verifies, oras attaches and discovers.
COSIGN_VERSION="v3.1.3"
ORAS_VERSION="v1.3.6"
# Lazy pulling: the stargz snapshotter, from its library (hack/stargz-snapshotter).
STARGZ_SNAPSHOTTER_VERSION="v0.19.1"

mkdir -p "$TOOLS_DIR/bin"

# go_tool NAME PACKAGE VERSION builds PACKAGE@VERSION as $TOOLS_DIR/bin/NAME.
go_tool() {
	local name="$1" pkg="$2" version="$3"
	local stamp="$TOOLS_DIR/bin/.$name.version"
	if [[ -x "$TOOLS_DIR/bin/$name" && "$(cat "$stamp" 2>/dev/null)" == "$version" ]]; then
		return
	fi
	echo "building $name $version" >&2
	local tmp
	tmp="$(mktemp -d)"
	GOBIN="$tmp" CGO_ENABLED=0 go install "$pkg@$version"
	mv "$tmp"/* "$TOOLS_DIR/bin/$name" # the one binary, whatever go named it
	rm -rf "$tmp"
	echo "$version" >"$stamp"
}

# go_tools: the tools `go install` builds.
go_tools() {
	go_tool registry github.com/distribution/distribution/v3/cmd/registry "$DISTRIBUTION_VERSION"
	go_tool crane github.com/google/go-containerregistry/cmd/crane "$CRANE_VERSION"
	go_tool minio github.com/minio/minio "$MINIO_VERSION"
	go_tool controller-gen sigs.k8s.io/controller-tools/cmd/controller-gen "$CONTROLLER_TOOLS_VERSION"
	go_tool containerd2 github.com/containerd/containerd/v2/cmd/containerd "$CONTAINERD2_VERSION"
	go_tool containerd2-shim-runc-v2 github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2 "$CONTAINERD2_VERSION"
	go_tool crictl sigs.k8s.io/cri-tools/cmd/crictl "$CRI_TOOLS_VERSION"
	go_tool kustomize sigs.k8s.io/kustomize/kustomize/v5 "$KUSTOMIZE_VERSION"
	go_tool helm helm.sh/helm/v4/cmd/helm "$HELM_VERSION"
	# Its go.mod replaces cel-go: built in a module that repeats that.
	throwaway_build "$ECR_CREDENTIAL_PROVIDER_VERSION" "module tools
go 1.26
require k8s.io/cloud-provider-aws $ECR_CREDENTIAL_PROVIDER_VERSION
replace github.com/google/cel-go => github.com/cel-expr/cel-go v0.31.0" k8s.io/cloud-provider-aws/cmd/ecr-credential-provider
}

# artifact_tools: the signing and lazy-pulling clients, a lane of their
# own (cosign alone builds for minutes).
artifact_tools() {
	go_tool cosign github.com/sigstore/cosign/v3/cmd/cosign "$COSIGN_VERSION"
	go_tool oras oras.land/oras/cmd/oras "$ORAS_VERSION"
	local_build containerd-stargz-grpc "$HACK_DIR/stargz-snapshotter" "$STARGZ_SNAPSHOTTER_VERSION"
}

# local_build NAME DIR VERSION builds the main package in DIR (a module of
# its own, apart from depproxy's) as $TOOLS_DIR/bin/NAME; the stamp
# records VERSION and the sources, so an edit rebuilds.
local_build() {
	local name="$1" dir="$2"
	local version="$3 $(cat "$dir"/*.go "$dir/go.mod" | sha256sum | cut -c1-12)"
	if [[ -x "$TOOLS_DIR/bin/$name" && "$(cat "$TOOLS_DIR/bin/.$name.version" 2>/dev/null)" == "$version" ]]; then
		return
	fi
	echo "building $name $version" >&2
	local tmp
	tmp="$(mktemp -d)"
	cp "$dir"/*.go "$dir/go.mod" "$tmp/"
	(cd "$tmp" && GOFLAGS=-mod=mod CGO_ENABLED=0 go build -o "$TOOLS_DIR/bin/$name" .)
	rm -rf "$tmp"
	echo "$version" >"$TOOLS_DIR/bin/.$name.version"
}

# throwaway_build VERSION GOMOD PACKAGE... builds packages of a module that
# cannot be `go install`ed (its go.mod has replace directives) inside a
# throwaway module that repeats them. $LDFLAGS, if set, is passed to the
# linker; the stamp records it so a change rebuilds.
throwaway_build() {
	local version="$1${LDFLAGS:+ ldflags-$(printf %s "$LDFLAGS" | sha256sum | cut -c1-12)}" gomod="$2"
	shift 2
	local missing=()
	for pkg in "$@"; do
		local name
		name="$(basename "$pkg")"
		[[ -x "$TOOLS_DIR/bin/$name" && "$(cat "$TOOLS_DIR/bin/.$name.version" 2>/dev/null)" == "$version" ]] || missing+=("$pkg")
	done
	[[ ${#missing[@]} -gt 0 ]] || return 0
	local tmp
	tmp="$(mktemp -d)"
	printf '%s\n' "$gomod" >"$tmp/go.mod"
	printf 'package tools\n' >"$tmp/tools.go"
	for pkg in "${missing[@]}"; do
		local name
		name="$(basename "$pkg")"
		echo "building $name $version (minutes, once)" >&2
		(cd "$tmp" && GOFLAGS=-mod=mod CGO_ENABLED=0 go build -ldflags "${LDFLAGS:-}" -o "$TOOLS_DIR/bin/$name" "$pkg")
		echo "$version" >"$TOOLS_DIR/bin/.$name.version"
	done
	rm -rf "$tmp"
}

# control_plane: etcd and Kubernetes, built in throwaway modules. (Not
# indented: the go.mod texts are written as they stand.)
control_plane() {
etcd_mod="module tools
go 1.26
require go.etcd.io/etcd/server/v3 $ETCD_VERSION
replace ("
for m in api/v3 client/pkg/v3 client/v3 pkg/v3; do
	etcd_mod+="
	go.etcd.io/etcd/$m => go.etcd.io/etcd/$m $ETCD_VERSION"
done
etcd_mod+="
)"
# go build names the binary after the package path's last element: v3.
if [[ ! -x "$TOOLS_DIR/bin/etcd" || "$(cat "$TOOLS_DIR/bin/.etcd.version" 2>/dev/null)" != "$ETCD_VERSION" ]]; then
	throwaway_build "$ETCD_VERSION" "$etcd_mod" go.etcd.io/etcd/server/v3
	mv "$TOOLS_DIR/bin/v3" "$TOOLS_DIR/bin/etcd"
	mv "$TOOLS_DIR/bin/.v3.version" "$TOOLS_DIR/bin/.etcd.version"
fi

k8s_gomod="$(go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
staging_version="v0${KUBERNETES_VERSION#v1}"
kube_mod="module tools
go 1.26
require k8s.io/kubernetes $KUBERNETES_VERSION
replace ("
for m in $(sed -n 's#^[[:space:]]*\(k8s.io/[^ ]*\) => ./staging/.*#\1#p' "$k8s_gomod"); do
	kube_mod+="
	$m => $m $staging_version"
done
kube_mod+="
)"
# Without the version stamped in, the components report
# v0.0.0-master+$Format:%H$ and anything that parses the server version fails.
kube_minor="${KUBERNETES_VERSION#v1.}"
kube_minor="${kube_minor%%.*}"
LDFLAGS=""
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	LDFLAGS+=" -X $p.gitVersion=$KUBERNETES_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$kube_minor -X $p.gitTreeState=clean"
done
LDFLAGS="${LDFLAGS# }" throwaway_build "$KUBERNETES_VERSION" "$kube_mod" \
	k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl \
	k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler \
	k8s.io/kubernetes/cmd/kube-proxy k8s.io/kubernetes/cmd/kubelet
}

# From Debian: skopeo and podman for the client tests; chromium for the
# cache browser's test; containerd 1.6 for the tests of Debian's runtime;
# runc, the CNI plugins and conntrack for the end-to-end cluster's node.
debian() {
	debian_missing=()
	for pkg in skopeo podman chromium containerd runc containernetworking-plugins conntrack iptables; do
		dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || debian_missing+=("$pkg")
	done
	if [[ ${#debian_missing[@]} -gt 0 ]]; then
		echo "installing ${debian_missing[*]} from Debian" >&2
		apt-get update -qq
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${debian_missing[@]}" >/dev/null
		# The package starts a containerd of its own; the cluster runs its own.
		systemctl disable --now containerd >/dev/null 2>&1 || true
	fi
}

# Four lanes at once: the Go builds share the two cores (one lane's
# downloads and links overlap another's compiles), while the Debian
# packages download and unpack beside them.
go_tools &
lane_go=$!
control_plane &
lane_control_plane=$!
artifact_tools &
lane_artifacts=$!
debian &
lane_debian=$!
failed=0
for lane in "$lane_go" "$lane_control_plane" "$lane_artifacts" "$lane_debian"; do
	wait "$lane" || failed=1
done
if [[ $failed -ne 0 ]]; then
	echo "make tools: a build failed (above)" >&2
	exit 1
fi

echo "$TOOLS_DIR/bin"
