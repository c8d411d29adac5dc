# syntax=docker/dockerfile:1
# The aether image for users: one `aether` binary that runs any of its services
# (`server`, `metad`, `blobd`, `gateway`) and its admin commands.
#
#   docker build -t aether .
#   docker run -p 9000:9000 -p 9001:9001 aether          # single node, like `aether server`
#
# compose/docker-compose.yml builds it and runs a cluster. The e2e test
# (tests/e2e/compose.sh) cannot pull the base images below on its machine, so it builds
# an equivalent image (same user, paths, entrypoint and healthcheck) from binaries built
# on the host: tests/e2e/docker/local-image.sh.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
# protoc comes from the repo (tools/protoc, via .cargo/config.toml); SQLite is bundled.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p aether-cli \
 && install -m 0755 target/release/aether /aether

FROM debian:bookworm-slim
RUN groupadd --system --gid 10001 aether \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/aether --no-create-home aether \
 && mkdir -p /var/lib/aether && chown aether:aether /var/lib/aether
COPY --from=build /aether /usr/local/bin/aether
USER aether:aether
WORKDIR /var/lib/aether
VOLUME ["/var/lib/aether"]
# 9000 S3, 9001 admin (/health /ready /metrics /cluster) of `server` and `gateway`;
# blobd: 9100 gRPC, 9101 admin; metad: 2379 client, 2380 peer, 2381 admin.
EXPOSE 9000 9001
ENV AETHER_DATA_DIR=/var/lib/aether
# `aether probe` is a tiny HTTP GET (the image has no curl); compose overrides the URL
# per service.
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=3 \
  CMD ["/usr/local/bin/aether", "probe", "http://127.0.0.1:9001/ready"]
ENTRYPOINT ["/usr/local/bin/aether"]
CMD ["server"]
