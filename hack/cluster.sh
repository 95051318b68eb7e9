#!/usr/bin/env bash
# A real single-node cluster for the end-to-end tests, on this machine:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy
# (iptables) and a kubelet on containerd 2.x + runc with a CNI bridge, plus a
# registry on loopback that the node pulls the test images from.
#
#   hack/cluster.sh up     start from fresh state; prints the kubeconfig path
#   hack/cluster.sh down   stop everything and remove all it left on the host
#
# Test traffic never leaves the machine: blackhole routes for the service
# CIDR and the pod supernet go in before anything starts, so an address
# that nothing has programmed fails here instead of being routed out.
set -euo pipefail

TOOLS_BIN="${DEPPROXY_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/depproxy-tools}/bin"
DIR="${DEPPROXY_CLUSTER_DIR:-/var/tmp/depproxy-cluster}"
SERVICE_CIDR=10.96.0.0/16
API_SERVICE_IP=10.96.0.1
POD_SUPERNET=10.244.0.0/16
POD_CIDR=10.244.0.0/24
BRIDGE=depproxy0
IMAGES_REGISTRY=127.0.0.1:5001 # the node pulls cluster images from here
PAUSE_IMAGE=localhost:5001/e2e/pause:1
NODE_NAME=depproxy-node
BRIDGE_NF=/proc/sys/net/bridge/bridge-nf-call-iptables
ROOT="$(cd "$(dirname "$0")/.." && pwd)"

node_ip() {
	ip -4 -o addr show scope global | awk -v b="$BRIDGE" '$2 != b && $2 !~ /^(cni|veth)/ {sub("/.*", "", $4); print $4; exit}'
}

log() { echo "cluster: $*" >&2; }

# start NAME CMD... runs a component in the background, its log and pid in $DIR.
start() {
	local name="$1"
	shift
	"$@" >"$DIR/log/$name.log" 2>&1 &
	echo $! >"$DIR/run/$name.pid"
}

wait_for() {
	local what="$1" tries="$2"
	shift 2
	for _ in $(seq "$tries"); do
		"$@" >/dev/null 2>&1 && return 0
		sleep 1
	done
	log "timed out waiting for $what; logs in $DIR/log"
	return 1
}

up() {
	down
	mkdir -p "$DIR"/{log,run,pki,etcd,kubelet,pods-log,containerd/root,containerd/state,containerd/certs.d,cni/net.d,registry}
	local ip
	ip="$(node_ip)"
	[[ -n "$ip" ]] || { log "no global IPv4 address for the node"; return 1; }
	echo "$ip" >"$DIR/node-ip"

	ip route replace blackhole "$SERVICE_CIDR"
	ip route replace blackhole "$POD_SUPERNET"
	cat /proc/sys/net/ipv4/ip_forward >"$DIR/run/ip_forward.orig"
	echo 1 >/proc/sys/net/ipv4/ip_forward
	# Pods reaching a Service whose endpoint is on the same bridge need the
	# bridge's traffic to pass through kube-proxy's rules.
	modprobe br_netfilter 2>/dev/null || true
	if [[ -e "$BRIDGE_NF" ]]; then
		cat "$BRIDGE_NF" >"$DIR/run/bridge-nf.orig"
		echo 1 >"$BRIDGE_NF"
	fi

	pki "$ip"

	cat >"$DIR/registry.yaml" <<YAML
version: 0.1
log: {level: warn}
storage: {filesystem: {rootdirectory: $DIR/registry}}
http: {addr: $IMAGES_REGISTRY}
YAML
	start registry "$TOOLS_BIN/registry" serve "$DIR/registry.yaml"
	start etcd "$TOOLS_BIN/etcd" --data-dir "$DIR/etcd" --listen-client-urls http://127.0.0.1:23790 \
		--advertise-client-urls http://127.0.0.1:23790 --listen-peer-urls http://127.0.0.1:23800 \
		--initial-advertise-peer-urls http://127.0.0.1:23800 --initial-cluster default=http://127.0.0.1:23800 \
		--unsafe-no-fsync
	wait_for etcd 30 curl -sf http://127.0.0.1:23790/health

	# It reaches the kubelet (logs, exec) at the node's address: no DNS
	# knows the node's name.
	start kube-apiserver "$TOOLS_BIN/kube-apiserver" --etcd-servers=http://127.0.0.1:23790 \
		--bind-address="$ip" --advertise-address="$ip" --secure-port=6443 \
		--tls-cert-file="$DIR/pki/apiserver.crt" --tls-private-key-file="$DIR/pki/apiserver.key" \
		--client-ca-file="$DIR/pki/ca.crt" --token-auth-file="$DIR/pki/tokens.csv" --authorization-mode=RBAC \
		--service-cluster-ip-range="$SERVICE_CIDR" --service-account-issuer=https://kubernetes.default.svc \
		--service-account-key-file="$DIR/pki/sa.pub" --service-account-signing-key-file="$DIR/pki/sa.key" \
		--allow-privileged=true --cert-dir="$DIR/pki/apiserver" --kubelet-preferred-address-types=InternalIP
	wait_for kube-apiserver 90 "$TOOLS_BIN/kubectl" --kubeconfig "$DIR/kubeconfig" get --raw /readyz

	start kube-controller-manager "$TOOLS_BIN/kube-controller-manager" --kubeconfig="$DIR/kubeconfig" \
		--service-account-private-key-file="$DIR/pki/sa.key" --root-ca-file="$DIR/pki/ca.crt" \
		--leader-elect=false --bind-address=127.0.0.1 --cluster-cidr="$POD_SUPERNET" \
		--service-cluster-ip-range="$SERVICE_CIDR" --use-service-account-credentials=false
	start kube-scheduler "$TOOLS_BIN/kube-scheduler" --kubeconfig="$DIR/kubeconfig" --leader-elect=false --bind-address=127.0.0.1

	containerd_config
	start containerd "$TOOLS_BIN/containerd2" --config "$DIR/containerd/config.toml"
	wait_for containerd 30 test -S "$DIR/containerd/containerd.sock"
	wait_for registry 30 curl -sf "http://$IMAGES_REGISTRY/v2/"
	(cd "$ROOT" && CGO_ENABLED=0 go build -trimpath -ldflags=-s -o "$DIR/run/pause" ./hack/pause &&
		go run ./hack/image -binary "$DIR/run/pause" -at /pause -user 65535:65535 -tag "$PAUSE_IMAGE")

	cni_config
	kubelet_config "$ip"
	start kubelet "$TOOLS_BIN/kubelet" --config="$DIR/kubelet/config.yaml" --kubeconfig="$DIR/kubeconfig" \
		--container-runtime-endpoint="unix://$DIR/containerd/containerd.sock" --root-dir="$DIR/kubelet/root" \
		--hostname-override="$NODE_NAME" --node-ip="$ip" --cert-dir="$DIR/kubelet/pki"

	cat >"$DIR/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection: {kubeconfig: $DIR/kubeconfig}
hostnameOverride: $NODE_NAME
clusterCIDR: $POD_SUPERNET
bindAddress: 127.0.0.1
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
nodePortAddresses: ["$ip/32"]
iptables: {localhostNodePorts: false}
conntrack: {maxPerCore: 0}
YAML
	start kube-proxy "$TOOLS_BIN/kube-proxy" --config="$DIR/kube-proxy.yaml"

	wait_for "node Ready" 120 sh -c "'$TOOLS_BIN/kubectl' --kubeconfig '$DIR/kubeconfig' get node $NODE_NAME -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -qx True"
	wait_for "default service account" 60 "$TOOLS_BIN/kubectl" --kubeconfig "$DIR/kubeconfig" get serviceaccount default
	log "up: node $NODE_NAME at $ip"
	echo "$DIR/kubeconfig"
}

pki() {
	local ip="$1" p="$DIR/pki"
	openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=depproxy-e2e-ca \
		-keyout "$p/ca.key" -out "$p/ca.crt" 2>/dev/null
	openssl req -newkey rsa:2048 -nodes -subj /CN=kube-apiserver -keyout "$p/apiserver.key" -out "$p/apiserver.csr" 2>/dev/null
	printf 'subjectAltName=IP:%s,IP:%s,IP:127.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:localhost\n' \
		"$ip" "$API_SERVICE_IP" >"$p/san.ext"
	openssl x509 -req -in "$p/apiserver.csr" -CA "$p/ca.crt" -CAkey "$p/ca.key" -CAcreateserial -days 2 \
		-extfile "$p/san.ext" -out "$p/apiserver.crt" 2>/dev/null
	openssl genrsa -out "$p/sa.key" 2048 2>/dev/null
	openssl rsa -in "$p/sa.key" -pubout -out "$p/sa.pub" 2>/dev/null
	local token
	token="$(openssl rand -hex 24)"
	echo "$token,admin,admin,system:masters" >"$p/tokens.csv"
	cat >"$DIR/kubeconfig" <<YAML
apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster: {server: "https://$ip:6443", certificate-authority: $p/ca.crt}
users:
- name: admin
  user: {token: $token}
contexts:
- name: e2e
  context: {cluster: e2e, user: admin}
current-context: e2e
YAML
}

containerd_config() {
	local c="$DIR/containerd"
	# containerd 2.x, built by `make tools` with its runc shim (named apart
	# from Debian's 1.6 one, which stays first on PATH): image volumes need
	# 2.1 or later. NRI is off: its socket is one per machine.
	cat >"$c/config.toml" <<TOML
version = 3
root = "$c/root"
state = "$c/state"
disabled_plugins = ["io.containerd.nri.v1.nri"]
[grpc]
  address = "$c/containerd.sock"
[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "$PAUSE_IMAGE"
  [plugins.'io.containerd.cri.v1.images'.registry]
    config_path = "$c/certs.d"
[plugins.'io.containerd.cri.v1.runtime']
  restrict_oom_score_adj = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      runtime_path = "$TOOLS_BIN/containerd2-shim-runc-v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "$DIR/cni/net.d"
TOML
	mkdir -p "$c/certs.d/localhost:5001"
	cat >"$c/certs.d/localhost:5001/hosts.toml" <<TOML
server = "http://$IMAGES_REGISTRY"
TOML
}

cni_config() {
	cat >"$DIR/cni/net.d/10-depproxy.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "depproxy-e2e",
  "plugins": [
    {"type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": true, "hairpinMode": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_CIDR"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
JSON
}

kubelet_config() {
	local ip="$1"
	cat >"$DIR/kubelet/config.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $ip
failCgroupV1: false
cgroupDriver: cgroupfs
failSwapOn: false
podCIDR: $POD_CIDR
podLogsDir: $DIR/pods-log
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
staticPodPath: ""
resolvConf: ""
imageGCHighThresholdPercent: 100
evictionHard: {}
YAML
}

down() {
	# Components, kubelet first so that it does not restart pods.
	for name in kubelet kube-proxy kube-scheduler kube-controller-manager kube-apiserver containerd etcd registry; do
		local pidf="$DIR/run/$name.pid"
		[[ -f "$pidf" ]] && kill "$(cat "$pidf")" 2>/dev/null || true
	done
	# Pods' shims and processes outlive containerd; they are ours by their path.
	pkill -f "shim-runc-v2 .*-address $DIR/containerd" 2>/dev/null || true
	sleep 1
	for name in kubelet kube-proxy kube-scheduler kube-controller-manager kube-apiserver containerd etcd registry; do
		local pidf="$DIR/run/$name.pid"
		[[ -f "$pidf" ]] && kill -9 "$(cat "$pidf")" 2>/dev/null || true
	done
	pkill -9 -f "shim-runc-v2 .*-address $DIR/containerd" 2>/dev/null || true
	# Pod cgroups: kill what is left in them, then remove them deepest first.
	for ctl in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
		[[ -d "$ctl" ]] || continue
		find "$ctl" -name cgroup.procs -exec cat {} + 2>/dev/null | xargs -r kill -9 2>/dev/null || true
		sleep 0.2
		find "$ctl" -depth -type d -exec rmdir {} + 2>/dev/null || true
	done
	# Mounts under the cluster's dirs (overlay rootfs, secrets, shm, netns).
	local m
	for m in $(awk '{print $2}' /proc/mounts | grep -E "^($DIR|/run/containerd|/run/netns)" | sort -r); do
		umount -l "$m" 2>/dev/null || true
	done
	# Network: pods' namespaces, the bridge, kube-proxy's and CNI's chains.
	for ns in /run/netns/cni-*; do
		[[ -e "$ns" ]] && ip netns delete "$(basename "$ns")" 2>/dev/null || true
	done
	ip link delete "$BRIDGE" 2>/dev/null || true
	local table chain
	for table in filter nat mangle; do
		{ iptables-save -t "$table" 2>/dev/null | grep -E '^-A .*-j (KUBE|CNI)-' || true; } | sed 's/^-A/-D/' | while read -r rule; do
			eval "iptables -t $table $rule" 2>/dev/null || true
		done
		for chain in $(iptables-save -t "$table" 2>/dev/null | sed -n 's/^:\(\(KUBE\|CNI\)-[^ ]*\).*/\1/p'); do
			iptables -t "$table" -F "$chain" 2>/dev/null || true
		done
		for chain in $(iptables-save -t "$table" 2>/dev/null | sed -n 's/^:\(\(KUBE\|CNI\)-[^ ]*\).*/\1/p'); do
			iptables -t "$table" -X "$chain" 2>/dev/null || true
		done
	done
	ip route del blackhole "$SERVICE_CIDR" 2>/dev/null || true
	ip route del blackhole "$POD_SUPERNET" 2>/dev/null || true
	if [[ -f "$DIR/run/ip_forward.orig" ]]; then
		cat "$DIR/run/ip_forward.orig" >/proc/sys/net/ipv4/ip_forward
	fi
	if [[ -f "$DIR/run/bridge-nf.orig" ]]; then
		cat "$DIR/run/bridge-nf.orig" >"$BRIDGE_NF"
	fi
	# Paths the components use whatever their flags say.
	rm -rf /var/lib/kubelet/device-plugins /var/log/containers /var/log/pods /var/lib/cni /run/containerd/s \
		/run/containerd/io.containerd.runtime.v2.task /run/containerd/runc
	rmdir /var/lib/kubelet 2>/dev/null || true
	rm -rf "$DIR"
}

if [[ $EUID -ne 0 ]]; then
	echo "cluster: must run as root (containerd, kubelet, iptables and routes)" >&2
	exit 1
fi

case "${1:-}" in
up) up ;;
down) down ;;
*)
	echo "usage: $0 up|down" >&2
	exit 2
	;;
esac
