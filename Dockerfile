# syntax=docker/dockerfile:1
#
# vcbackup: a sidecar that backs up a vCluster control plane (kine SQLite or etcd).
#
#   docker buildx build --platform linux/amd64,linux/arm64 -t REGISTRY/vcbackup:TAG .
#
# Multi-arch without emulation: the builder runs on the build machine's platform
# ($BUILDPLATFORM) and cross-compiles for each target platform with Debian's cross gcc
# (the bundled C code: SQLite, zstd, aws-lc, ring), so an arm64 image builds in minutes
# on an amd64 machine instead of hours under QEMU. Only the final stage is per platform.

ARG RUST_VERSION=1.95

FROM --platform=$BUILDPLATFORM rust:${RUST_VERSION}-bookworm AS builder
ARG BUILDARCH
ARG TARGETARCH
# protoc: etcd-client generates its gRPC code at build time; libprotobuf-dev holds the
# well-known types (google/protobuf/*.proto) it imports, only a Recommends of protoc.
# Rust target and C toolchain per TARGETARCH; a cross gcc and the target's libc only
# when it differs from the build machine's. The triplet-named compilers (x86_64-linux-gnu-gcc,
# aarch64-linux-gnu-gcc) are the native gcc on their own architecture, so the settings
# below hold for native and cross builds alike. ($cross is a word list: unquoted on purpose.)
# hadolint ignore=SC2086
RUN case "$TARGETARCH" in \
      amd64) echo x86_64-unknown-linux-gnu >/target-triple; cross="gcc-x86-64-linux-gnu libc6-dev-amd64-cross" ;; \
      arm64) echo aarch64-unknown-linux-gnu >/target-triple; cross="gcc-aarch64-linux-gnu libc6-dev-arm64-cross" ;; \
      *) echo "unsupported TARGETARCH=$TARGETARCH" >&2; exit 1 ;; \
    esac \
 && if [ "$TARGETARCH" = "$BUILDARCH" ]; then cross=""; fi \
 && apt-get update \
 && apt-get install -y --no-install-recommends protobuf-compiler libprotobuf-dev $cross \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add "$(cat /target-triple)"
ENV CC_x86_64_unknown_linux_gnu=x86_64-linux-gnu-gcc \
    AR_x86_64_unknown_linux_gnu=x86_64-linux-gnu-ar \
    CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER=x86_64-linux-gnu-gcc \
    CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc \
    AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar \
    CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
WORKDIR /src
# .dockerignore keeps target/, .git/ and the deployment files out; .cargo/config.toml
# (SQLite build flags) must come along.
COPY . .
# The cache ids carry the target platform so amd64 and arm64 builds never share a target dir.
# The binary runs here only when it is native.
ARG TARGETPLATFORM
RUN --mount=type=cache,id=vcbackup-cargo-registry-${TARGETPLATFORM},target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=vcbackup-target-${TARGETPLATFORM},target=/src/target,sharing=locked \
    cargo build --release --locked --target "$(cat /target-triple)" \
 && cp "target/$(cat /target-triple)/release/vcbackup" /vcbackup \
 && if [ "$TARGETARCH" = "$BUILDARCH" ]; then /vcbackup --help >/dev/null; fi

# The default user is root (uid 0) on purpose: vCluster's /data volume is root-owned
# and a WAL-mode SQLite reader must write the -shm file. The Helm values pair this
# with readOnlyRootFilesystem, allowPrivilegeEscalation=false and all capabilities
# dropped. Use the :nonroot tag plus fsGroup if your data volume allows it.
#
# distroless/cc: glibc 2.36 (same Debian release as the builder), libgcc_s, CA
# certificates and tzdata; no shell, no package manager. It is made of these Debian
# bookworm packages plus the files distroless writes itself (passwd, group, nsswitch.conf,
# os-release, /tmp, and the CA bundle from ca-certificates). scripts/image-rootfs reads
# this line to assemble the same tree, and scripts/check-image runs the binary in it and
# fails when the tree and this stage disagree (packages, Debian release, variant).
# runtime-packages: base-files netbase tzdata media-types libc6 libssl3 gcc-12-base libgcc-s1 libgomp1 libstdc++6
FROM gcr.io/distroless/cc-debian12:latest
LABEL org.opencontainers.image.title="vcbackup" \
      org.opencontainers.image.description="Consistent, encrypted backups of a vCluster control plane (kine SQLite or etcd) to S3 or a directory" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /vcbackup /vcbackup
# Metrics and health endpoints (/metrics, /livez, /readyz, /status).
EXPOSE 9464
ENTRYPOINT ["/vcbackup"]
CMD ["run"]
