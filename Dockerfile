# celery-operator image: the operator binary and the built-in scaling policies.
#   docker build -t celery-operator .
#
# Stage 1 builds the operator in release mode; stage 2 compiles the policies from source with
# the same script CI runs (policies/build.sh installs its own toolchains); the final image
# holds only the binary and the .wasm files, runs as a non-root user and has no shell.

FROM rust:1.99.1-bookworm AS operator
WORKDIR /src
COPY rust-toolchain.toml Cargo.toml Cargo.lock ./
COPY host host
COPY wit wit
COPY deploy deploy
RUN cargo build --release -p celery-operator --locked

FROM rust:1.99.1-bookworm AS policies
# Go >= 1.24 (wasmexport) and Node 20 (componentize-js): newer than Debian 12 ships.
COPY --from=golang:1.26-bookworm /usr/local/go /usr/local/go
COPY --from=node:20-bookworm-slim /usr/local/bin/node /usr/local/bin/node
COPY --from=node:20-bookworm-slim /usr/local/lib/node_modules /usr/local/lib/node_modules
RUN ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm \
    && apt-get update && apt-get install -y --no-install-recommends python3-venv \
    && rm -rf /var/lib/apt/lists/*
ENV PATH=/usr/local/go/bin:$PATH
WORKDIR /src
COPY rust-toolchain.toml ./
COPY wit wit
COPY policies policies
RUN policies/build.sh

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=operator /src/target/release/celery-operator /usr/bin/celery-operator
COPY --from=policies /src/target/policies/ /usr/lib/celery-operator/policies/
USER 65532:65532
ENTRYPOINT ["/usr/bin/celery-operator"]
CMD ["run"]
