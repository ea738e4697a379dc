# syntax=docker/dockerfile:1
#
# vcbackup: a sidecar that backs up a vCluster control plane (kine SQLite or etcd).
#
#   docker buildx build --platform linux/amd64,linux/arm64 -t REGISTRY/vcbackup:TAG .
#
# Multi-arch: no architecture is named anywhere. Under BuildKit each requested
# platform builds natively in its own builder stage (QEMU emulation for the
# foreign one), so the binary always matches the runtime base of its platform.
# Cross-compiling from $BUILDPLATFORM would be faster but needs a C cross
# toolchain for bundled SQLite, zstd and aws-lc; not worth it until builds hurt.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS builder
# protoc: etcd-client generates its gRPC code at build time; libprotobuf-dev holds the
# well-known types (google/protobuf/*.proto) it imports, only a Recommends of protoc.
RUN apt-get update \
 && apt-get install -y --no-install-recommends protobuf-compiler libprotobuf-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# .dockerignore keeps target/, .git/ and the deployment files out; .cargo/config.toml
# (SQLite build flags) must come along.
COPY . .
# The cache ids carry the platform so amd64 and arm64 builds never share a target dir.
ARG TARGETPLATFORM
RUN --mount=type=cache,id=vcbackup-cargo-registry-${TARGETPLATFORM},target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=vcbackup-target-${TARGETPLATFORM},target=/src/target,sharing=locked \
    cargo build --release --locked \
 && cp target/release/vcbackup /vcbackup \
 && /vcbackup --help >/dev/null

# distroless/cc: glibc 2.36 (same Debian release as the builder), libgcc_s, CA
# certificates and tzdata; no shell, no package manager.
# The default user is root (uid 0) on purpose: vCluster's /data volume is root-owned
# and a WAL-mode SQLite reader must write the -shm file. The Helm values pair this
# with readOnlyRootFilesystem, allowPrivilegeEscalation=false and all capabilities
# dropped. Use the :nonroot tag plus fsGroup if your data volume allows it.
FROM gcr.io/distroless/cc-debian12:latest
LABEL org.opencontainers.image.title="vcbackup" \
      org.opencontainers.image.description="Consistent, encrypted backups of a vCluster control plane (kine SQLite or etcd) to S3 or a directory" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /vcbackup /vcbackup
# Metrics and health endpoints (/metrics, /livez, /readyz, /status).
EXPOSE 9464
ENTRYPOINT ["/vcbackup"]
CMD ["run"]
