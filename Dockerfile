# pifleet for machines with registry access: `docker compose build` or
# `docker build -t pifleet:latest .` (on a Raspberry Pi this yields an arm64 image; elsewhere use
# `docker buildx build --platform linux/arm64,linux/amd64`).
# Without registry access use docker/build-local-image.sh, which needs no base image.
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --bins

FROM debian:bookworm-slim
COPY --from=build /src/target/release/pifleet-broker /src/target/release/pifleet-agent /src/target/release/pifleet /usr/local/bin/
RUN mkdir -p /var/lib/pifleet && chown 65534:65534 /var/lib/pifleet
# /var/lib/pifleet: the named volume of docker-compose.yml (certificates, credentials, state).
EXPOSE 8883
USER 65534:65534
CMD ["pifleet-broker"]
