# The gateway as one small container. Build: docker build -t gateway .
# Run (host networking, simplest for media): docker run --network host -v $PWD/gateway.toml:/etc/gateway/gateway.toml:ro gateway
# Without a configuration file (`docker run --network host gateway run`) it starts in demo mode.

# --- build: the gateway binary and the example plugins (wasm components) ---
FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
RUN rustup target add wasm32-wasip2
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p gateway --bin gateway \
 && cargo build --release --locked --target wasm32-wasip2 --workspace \
      --manifest-path plugins/Cargo.toml --target-dir target/plugins \
 && mkdir -p /out/plugins \
 && cp target/release/gateway /out/ \
 && cp target/plugins/wasm32-wasip2/release/router.wasm \
       target/plugins/wasm32-wasip2/release/compliance.wasm \
       target/plugins/wasm32-wasip2/release/recorder.wasm \
       target/plugins/wasm32-wasip2/release/crm_router.wasm /out/plugins/

# --- runtime: the binary (the web demo, the widget and libopus are built into it), a user ---
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/gateway --create-home gateway \
 && mkdir -p /etc/gateway /var/lib/gateway/recordings /var/log/gateway \
 && chown gateway /var/lib/gateway/recordings /var/log/gateway
COPY --from=build /out/gateway /usr/local/bin/gateway
COPY --from=build /out/plugins /usr/local/lib/gateway/plugins
USER gateway
WORKDIR /var/lib/gateway
# HTTP (page, widget, /ws signaling, /healthz, /metrics); the one WebRTC media port; SIP;
# the trunk-side RTP range. These must match gateway.toml ([http], [webrtc], [sip], [rtp]).
EXPOSE 8080/tcp 10000/udp 5060/udp 5060/tcp 5061/tcp 30000-30999/udp
HEALTHCHECK --interval=10s --timeout=3s CMD curl -fs http://127.0.0.1:8080/healthz || exit 1
STOPSIGNAL SIGTERM
ENTRYPOINT ["gateway"]
CMD ["run", "--config", "/etc/gateway/gateway.toml"]
