# syntax=docker/dockerfile:1
#
# The kezchat image: one static binary (the web app embedded) that serves
# `operator`, `server` and `sig-server`. Each stage runs the make target CI
# runs, so the image holds what `make web build` builds:
#
#   docker build -t ghcr.io/kez-lat/kezchat:v0.1.0 \
#     --build-arg VERSION=v0.1.0 \
#     --build-arg COMMIT=$(git rev-parse --short HEAD) \
#     --build-arg DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ) .
#
# `docker buildx build --platform linux/amd64,linux/arm64` builds both
# architectures; the Go stage cross-compiles, so it runs on the build host.

ARG GO_VERSION=1.26
ARG NODE_VERSION=22

# The web app (web/dist), built by `make web`.
FROM --platform=$BUILDPLATFORM node:${NODE_VERSION}-bookworm AS web
WORKDIR /src
COPY Makefile ./
COPY web/ web/
RUN --mount=type=cache,target=/root/.npm make web

# One static kezchat binary with the web app embedded, built by `make build`
# with the version, commit and date stamped in. `-o web`: web/dist comes
# from the stage above, so `build` does not remake it (no npm here).
FROM --platform=$BUILDPLATFORM golang:${GO_VERSION}-bookworm AS build
ARG TARGETOS TARGETARCH
ARG VERSION=dev
ARG COMMIT=unknown
ARG DATE=unknown
WORKDIR /src
ENV GOTOOLCHAIN=local
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/root/go/pkg/mod go mod download
COPY . .
COPY --from=web /src/web/dist/ web/dist/
RUN --mount=type=cache,target=/root/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
	GOOS=$TARGETOS GOARCH=$TARGETARCH \
	make -o web build BIN=/out/kezchat VERSION="$VERSION" COMMIT="$COMMIT" DATE="$DATE"
# The runtime's whole filesystem besides the binary: CA certificates (Web
# Push, the sig-server's peers) and a passwd entry naming uid 10001.
RUN mkdir -p /rootfs/etc/ssl/certs \
	&& cp /etc/ssl/certs/ca-certificates.crt /rootfs/etc/ssl/certs/ \
	&& echo 'kezchat:x:10001:10001:kezchat:/nonexistent:/sbin/nologin' >/rootfs/etc/passwd \
	&& echo 'kezchat:x:10001:' >/rootfs/etc/group

# Nothing but the binary, CA certificates and uid 10001: no shell, no libc.
# Any other uid works as well (OpenShift assigns one, with the operator's
# --platform-assigns-uid): every file here is world-readable and nothing in
# the image is written, only volumes and /tmp.
FROM scratch
ARG VERSION=dev
ARG COMMIT=unknown
LABEL org.opencontainers.image.title="kezchat" \
	org.opencontainers.image.description="Self-hosted, end-to-end-encrypted chat: server, sig-server and Kubernetes operator" \
	org.opencontainers.image.version="$VERSION" \
	org.opencontainers.image.revision="$COMMIT"
COPY --from=build /rootfs/ /
COPY --from=build /out/kezchat /kezchat
USER 10001:10001
ENTRYPOINT ["/kezchat"]
CMD ["server"]
