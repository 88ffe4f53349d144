# convoy as a container: built in one stage, run from a small image as an
# unprivileged user. Build: docker build -t convoy .
# Run:   docker run -p 3000:3000 -v convoy-data:/var/lib/convoy \
#          -e CONVOY_GITHUB_WEBHOOK_SECRET=... -e CONVOY_GITHUB_APP_ID=... \
#          -e CONVOY_GITHUB_PRIVATE_KEY_PATH=/run/secrets/convoy.pem \
#          -v /path/to/app.pem:/run/secrets/convoy.pem:ro convoy

FROM rust:1.95-bookworm AS build
# git2's https transport links the system OpenSSL.
RUN apt-get update \
 && apt-get install -y --no-install-recommends pkg-config libssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies first, so a change to convoy's own code reuses their layer.
COPY Cargo.toml Cargo.lock build.rs ./
COPY migrations migrations
RUN mkdir -p src benches && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
 && for b in intake plan; do echo 'fn main() {}' > benches/$b.rs; done \
 && cargo build --release --locked --bin convoy \
 && rm -rf src benches
COPY . .
# The stub build left newer timestamps on its outputs: make cargo rebuild
# convoy itself from the real sources.
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin convoy

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 convoy \
 && useradd --system --uid 10001 --gid convoy --home-dir /var/lib/convoy --create-home convoy
COPY --from=build /src/target/release/convoy /usr/local/bin/convoy
COPY config/convoy.toml /etc/convoy/convoy.toml
COPY config/github-app.json /etc/convoy/github-app.json
WORKDIR /var/lib/convoy
USER 10001:10001
# Listen on every interface inside the container; keep the database and the
# git cache on the volume.
ENV CONVOY_SERVER_LISTEN=0.0.0.0:3000 \
    CONVOY_SERVER_DATA_DIR=/var/lib/convoy/data \
    CONVOY_DATABASE_URL=sqlite:///var/lib/convoy/convoy.db
VOLUME ["/var/lib/convoy"]
EXPOSE 3000
ENTRYPOINT ["/usr/local/bin/convoy"]
CMD ["serve", "--config", "/etc/convoy/convoy.toml"]
