# causalkv replica image: a statically linked binary built on the host, nothing else.
#
# Build (no registry is reachable, so the binary is not built inside Docker):
#     scripts/docker-build
# which runs, from the repository root:
#     RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --target x86_64-unknown-linux-gnu --no-default-features
#     docker build -t causalkv .
# (--no-default-features leaves out the benchmark's charts: the server does not need plotters.)
#
# Run one replica (configuration comes from the environment alone):
#     docker run --rm --detach --publish=8082:8090 --net=NET --ip=10.10.0.2 --name=alice \
#         -e=SOCKET_ADDRESS=10.10.0.2:8090 -e=VIEW=10.10.0.2:8090,10.10.0.3:8090,10.10.0.4:8090 causalkv
#
# .dockerignore sends only the binary as build context.
FROM scratch
LABEL org.opencontainers.image.title="causalkv"
COPY target/x86_64-unknown-linux-gnu/release/causalkv /causalkv
EXPOSE 8090
ENTRYPOINT ["/causalkv"]
CMD ["serve"]
