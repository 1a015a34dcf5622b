# syntax=docker/dockerfile:1
# publication-consumer: Reference Prompt Publication consumer: batch-ingested events into an embargo-aware state database.
#
# Built here by deploy/images/build (buildah). Build from the repository root (the whole
# workspace is the context):
#   docker build -f deploy/images/publication-consumer.Dockerfile -t publication-consumer .
# Offline, from vendored sources (run `cargo vendor --locked vendor` at the root first, with
# network; the build then reads only vendor/ and Cargo.lock):
#   docker build -f deploy/images/publication-consumer.Dockerfile --build-arg OFFLINE=1 -t publication-consumer .
# See deploy/README.md ("Images").

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm
# Where the binary comes from: `build`, compiled in the build stage below, or `prebuilt`, a binary
# built outside that is the build context's only file (deploy/images/build --prebuilt, which CI
# uses to check the runtime stage without compiling the workspace again).
ARG BINARY_FROM=build

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS build
# librdkafka is built from its bundled sources (C, make) against the system OpenSSL (SCRAM-SHA-512
# and TLS) and zlib; zstd is built by its crate.
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ make pkg-config libssl-dev zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
ARG OFFLINE=0
# Where TLS to crates.io passes a proxy with its own root certificate, a CA bundle that trusts it
# (deploy/images/build mounts the build machine's); unset, cargo trusts the image's bundle.
ARG CARGO_HTTP_CAINFO
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    if [ "$OFFLINE" = "1" ]; then \
        set -- --offline \
            --config 'source.crates-io.replace-with="vendored-sources"' \
            --config 'source.vendored-sources.directory="vendor"'; \
    fi \
    && cargo build --release --locked "$@" -p publication-consumer --bin publication-consumer \
    && install -D -m 0755 target/release/publication-consumer /out/publication-consumer

FROM scratch AS prebuilt
COPY publication-consumer /out/publication-consumer

# hadolint ignore=DL3006
FROM ${BINARY_FROM} AS binary

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# libssl3: librdkafka's OpenSSL; ca-certificates: TLS to S3 and to brokers; zlib1g: librdkafka.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 1000 lsst \
    && useradd --uid 1000 --gid 1000 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin lsst
COPY --from=binary /out/publication-consumer /usr/local/bin/publication-consumer
# The image refuses to build if the binary cannot start here (a missing shared library).
RUN ["/usr/local/bin/publication-consumer", "--version"]
# Nothing is written outside /tmp at run time, so the root filesystem can be read-only; the
# charts mount an emptyDir on /tmp.
ENV HOME=/tmp
WORKDIR /tmp
USER 1000:1000
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/publication-consumer"]
CMD ["serve"]
