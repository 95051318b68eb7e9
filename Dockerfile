# Builds both images from one source tree, the depproxy image first: the
# manager's default --proxy-image is that image by its digest, as
# `make images` does (the node agents run it as root: never a tag):
#   docker build --target depproxy -t ghcr.io/depproxy/depproxy . && docker push ghcr.io/depproxy/depproxy
#   docker build --target manager -t ghcr.io/depproxy/manager \
#     --build-arg PROXY_IMAGE=ghcr.io/depproxy/depproxy@$(crane digest ghcr.io/depproxy/depproxy) .
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# The same build as `make images`, which the end-to-end tests use.
ARG PROXY_IMAGE=""
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s ${PROXY_IMAGE:+-X github.com/depproxy/depproxy/controllers.DefaultImage=$PROXY_IMAGE}" -o /out/manager . && \
    CGO_ENABLED=0 go build -trimpath -ldflags=-s -o /out/depproxy ./proxy/cmd/depproxy

FROM gcr.io/distroless/static:nonroot AS manager
COPY --from=build /out/manager /manager
USER 65532:65532
ENTRYPOINT ["/manager"]

FROM gcr.io/distroless/static:nonroot AS depproxy
COPY --from=build /out/depproxy /depproxy
USER 65532:65532
ENTRYPOINT ["/depproxy"]
CMD ["serve"]
