// Built by hack/tools.sh (`make tools`), apart from depproxy's module.
module containerd-stargz-grpc

go 1.26

require github.com/containerd/stargz-snapshotter v0.19.1
