# hotpool as a container image: the static `hotpool` binary FROM scratch, nothing
# else. There is no registry to pull a Rust image from, so the binary is built on
# the host first; `scripts/hotpool-image` does both steps:
#
#   RUSTFLAGS='-C target-feature=+crt-static' CARGO_TARGET_DIR=target/image \
#     cargo build --release --bin hotpool --target x86_64-unknown-linux-gnu
#   docker build --tag hotpool:dev .
#
# It runs `hotpool serve` with the config at /etc/hotpool/hotpool.toml. The
# container needs the engine's socket, the runtime directory at the same path
# as on the host (the direct transport bind-mounts directories under it into
# the function containers by their host path), the host's PIDs and cgroups
# (per-call counters and OOM verdicts; without them the engine's samples and
# its OOMKilled are used):
#
#   docker run -d --name hotpool --network host --pid host --cgroupns host \
#     -v /var/run/docker.sock:/var/run/docker.sock \
#     -v /run/hotpool:/run/hotpool \
#     -v /sys/fs/cgroup:/sys/fs/cgroup:ro \
#     -v "$PWD/hotpool.toml:/etc/hotpool/hotpool.toml:ro" \
#     hotpool:dev
#
# `docker stop -t 45 hotpool` (SIGTERM) drains it: give it more than its
# [pool] shutdown_timeout.
FROM scratch
COPY target/image/hotpool /hotpool
ENTRYPOINT ["/hotpool"]
CMD ["serve", "--config", "/etc/hotpool/hotpool.toml"]
