# Builds both images from one source tree:
#   docker build --target manager  -t ghcr.io/depproxy/manager .
#   docker build --target depproxy -t ghcr.io/depproxy/depproxy .
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# The same build as `make images`, which the end-to-end tests use.
RUN CGO_ENABLED=0 go build -trimpath -ldflags=-s -o /out/manager . && \
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
