#!/usr/bin/env bash
# Installs the pinned test tools into a cache outside the checkout.
# Idempotent: a tool already built at its pinned version is not rebuilt.
set -euo pipefail

TOOLS_DIR="${DEPPROXY_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/depproxy-tools}"

MINIO_VERSION="v0.0.0-20260212201848-7aac2a2c5b7c"
DISTRIBUTION_VERSION="v3.1.2"
CRANE_VERSION="v0.22.1"

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
	mv "$tmp/$(basename "$pkg")" "$TOOLS_DIR/bin/$name"
	rm -rf "$tmp"
	echo "$version" >"$stamp"
}

go_tool registry github.com/distribution/distribution/v3/cmd/registry "$DISTRIBUTION_VERSION"
go_tool crane github.com/google/go-containerregistry/cmd/crane "$CRANE_VERSION"
go_tool minio github.com/minio/minio "$MINIO_VERSION"

if ! command -v skopeo >/dev/null; then
	echo "installing skopeo from Debian" >&2
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq skopeo >/dev/null
fi

echo "$TOOLS_DIR/bin"
