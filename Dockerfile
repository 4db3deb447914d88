# syntax=docker/dockerfile:1
# pg2dns in a small image: built with the Rust toolchain, run on Debian 12
# slim as a non-root user. `docker compose up` (docker-compose.yml) runs it
# with PostgreSQL and BIND.
#
#   docker build --build-arg PG2DNS_GIT_REVISION=$(git rev-parse --short=10 HEAD) -t pg2dns .

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
# The build context has no .git: `pg2dns --version` names this revision.
ARG PG2DNS_GIT_REVISION=unknown
ENV PG2DNS_GIT_REVISION=${PG2DNS_GIT_REVISION}
# The registry and target caches survive between builds (BuildKit).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p pg2dns --bin pg2dns \
    && install -s -m 0755 target/release/pg2dns /usr/local/bin/pg2dns

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --user-group --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin pg2dns
COPY --from=build /usr/local/bin/pg2dns /usr/local/bin/pg2dns
COPY LICENSE-MIT LICENSE-APACHE /usr/share/doc/pg2dns/
USER pg2dns:pg2dns
ENV PG2DNS_CONFIG=/etc/pg2dns/pg2dns.toml
# /metrics, /healthz and /readyz ([metrics] listen = "0.0.0.0:9153").
EXPOSE 9153
# Healthy while streaming (GET /readyz answers 200), with bash's /dev/tcp:
# the image carries no HTTP client.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9153 && printf 'GET /readyz HTTP/1.0\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]
ENTRYPOINT ["/usr/local/bin/pg2dns"]
CMD ["run"]
