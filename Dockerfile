# syntax=docker/dockerfile:1
# Images of Strand and of the example shop, from one build:
#
#   docker build --target strand -t strand:0.1.0 .
#   docker build --target shop -t strand-shop:0.1.0 .
#
# or `docker compose up --build` (see docker-compose.yml).

FROM rust:1-bookworm AS builder
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p strand -p shop \
    && mkdir -p /out \
    && cp target/release/strand target/release/shop /out/

# What both images share: a small Debian, curl for the health checks, and an
# unprivileged user (uid 10001, the uid the Kubernetes manifests run as).
FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 strand \
    && useradd --system --uid 10001 --gid strand --home-dir /nonexistent --no-create-home strand

FROM runtime AS strand
COPY --from=builder /out/strand /usr/local/bin/strand
RUN mkdir -p /var/lib/strand && chown strand:strand /var/lib/strand
ENV STRAND_LISTEN=0.0.0.0 \
    STRAND_DATA_DIR=/var/lib/strand
VOLUME ["/var/lib/strand"]
USER 10001:10001
# OTLP/gRPC, OTLP/HTTP, UI and APIs (/healthz, /readyz)
EXPOSE 4317 4318 7070
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=5 \
    CMD curl -fsS http://127.0.0.1:7070/readyz || exit 1
ENTRYPOINT ["strand"]
CMD ["serve"]

FROM runtime AS shop
COPY --from=builder /out/shop /usr/local/bin/shop
# One data directory per service with a database (SHOP_DATA_DIR), owned by
# the runtime user so that fresh volumes mounted there are writable.
RUN mkdir -p /var/lib/shop/order /var/lib/shop/inventory /var/lib/shop/payment \
    && chown -R strand:strand /var/lib/shop
WORKDIR /var/lib/shop
USER 10001:10001
# gateway 8080, order 8081, inventory 8082, payment 8083: each container runs
# one (`shop gateway`, ...) and sets its SHOP_*_ADDR to 0.0.0.0:<port>.
EXPOSE 8080 8081 8082 8083
ENTRYPOINT ["shop"]
CMD ["--help"]
