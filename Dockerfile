# syntax=docker/dockerfile:1
# One image for every shopmesh service; the command picks which one runs:
#   docker build -t shopmesh:local .
#   docker run --rm -p 50052:50052 shopmesh:local serve order
# Build and runtime are both Debian 12, so the glibc the binary links against is the one it runs on.
# The exact release, not the moving `1.95` tag: symbol names carry a hash that changes with the
# compiler, and `cli/startup.order` (the start's functions placed together, which is most of the
# idle RSS goal) is recorded by name with this toolchain. A newer patch release would still
# build, with the list silently unmatched. Change it with `scripts/startup-order` (see
# docs/layout.md).
ARG RUST_VERSION=1.95.0

# cargo-chef builds the dependencies from a "recipe" (every Cargo.toml, Cargo.lock, and stub
# targets for the members, their build.rs and [[bin]]s), so that layer stays cached until a
# manifest or the lock file changes. Chosen over hand-written stub sources because the recipe
# follows the workspace by itself (no member list to keep in sync here) and because it avoids
# the stale-mtime trap of stubs: cargo can keep a stub-built workspace crate when the real source
# copied over it carries an older modification time.
FROM rust:${RUST_VERSION}-bookworm AS chef
RUN cargo install cargo-chef --locked --version 0.1.77
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS build
COPY --from=planner /src/recipe.json recipe.json
# The cached dependency layer (including the build-dependencies protox and tonic-prost-build).
RUN cargo chef cook --release --locked -p shopmesh-cli --recipe-path recipe.json
COPY . .
RUN cargo build --release --locked -p shopmesh-cli \
 && install -D -m 0755 target/release/shopmesh /out/shopmesh

# distroless/cc: glibc, libgcc and CA certificates, no shell and no package manager; the binary
# needs nothing else (SQLite is bundled, PostgreSQL is spoken in pure Rust, no OpenSSL).
FROM gcr.io/distroless/cc-debian12:nonroot
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="shopmesh" \
      org.opencontainers.image.description="shopmesh gRPC services (user, order, payment): shopmesh serve <service>" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="https://github.com/shopmesh/shopmesh" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="gcr.io/distroless/cc-debian12:nonroot"
COPY --from=build /out/shopmesh /usr/local/bin/shopmesh
# A container is reached from outside, so every service listens on all interfaces (the binary's
# default is 127.0.0.1). Setting all of them lets one image run any service with no extra flags.
# Every interface: a service then refuses to start without mutual TLS or required bearer tokens
# unless SHOPMESH_ALLOW_INSECURE=true (docs/security.md). The image does not choose: compose's dev
# stack sets it, the chart sets it only for a service without mTLS or tokens.
ENV SHOPMESH_USER_LISTEN=0.0.0.0:50051 \
    SHOPMESH_ORDER_LISTEN=0.0.0.0:50052 \
    SHOPMESH_PAYMENT_LISTEN=0.0.0.0:50053 \
    SHOPMESH_CATALOG_LISTEN=0.0.0.0:50054 \
    SHOPMESH_INVENTORY_LISTEN=0.0.0.0:50055 \
    SHOPMESH_NOTIFICATION_LISTEN=0.0.0.0:50056 \
    SHOPMESH_METRICS_LISTEN=0.0.0.0:9464
# The default SQLite URLs write ./data: the nonroot user's home is the one writable directory,
# so `docker run shopmesh:local serve user` works without a database server.
WORKDIR /home/nonroot
# Numeric, so that Kubernetes' runAsNonRoot can verify it (a user name cannot be checked).
USER 65532:65532
EXPOSE 50051 50052 50053 50054 50055 50056 9464
ENTRYPOINT ["/usr/local/bin/shopmesh"]
CMD ["serve", "user"]
# One image serves every service's port, and a HEALTHCHECK cannot read the command, so this one fits the
# default command (serve user) only. Whoever runs another service replaces it: docker-compose.yml
# gives each service a healthcheck on its own port; `docker run ... serve order` needs
# --no-healthcheck (docker run's --health-cmd runs through /bin/sh, which this image lacks);
# Kubernetes ignores HEALTHCHECK and uses the chart's gRPC probes.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["/usr/local/bin/shopmesh", "healthcheck", "127.0.0.1:50051"]
