# The goldrelay image: both binaries (`goldrelay` and `smoke`) on a small Debian.
# Docker cannot run on the build machines, so the build below uses the same
# `cargo build --release` CI runs; tests/api/fly_toml.rs checks what matters
# about the image (the binaries in it, its user, its command).

# --- build -------------------------------------------------------------------
FROM rust:1-bookworm AS builder
WORKDIR /app

# Dependencies first, in a layer of their own: it is rebuilt only when a manifest
# or the lock file changes. Cargo reads every workspace member's manifest, and
# wants a source file for each target it builds (and for any target declared
# without a path), so those get empty stand-ins here: a new target in a
# manifest needs one more line here.
COPY Cargo.toml Cargo.lock ./
COPY smoke/Cargo.toml smoke/Cargo.toml
COPY bench/Cargo.toml bench/Cargo.toml
RUN mkdir -p src smoke/src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && echo 'fn main() {}' > smoke/src/main.rs \
    && cargo build --release

# Then the whole project (.dockerignore leaves out target/ and local databases):
# migrations/ is compiled into the binary by sqlx::migrate!, and whatever else the
# build reads later comes along without anyone having to remember it here.
# COPY keeps the files' old timestamps, which can be older than the stand-ins
# built above: touching the sources makes cargo rebuild the real crates.
COPY . .
RUN find src smoke/src -name '*.rs' -exec touch {} + \
    && cargo build --release

# --- run ---------------------------------------------------------------------
FROM debian:bookworm-slim

# ca-certificates: Chatwoot and the database are reached over TLS.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --system --user-group --uid 10001 --home-dir /data --no-create-home goldrelay \
    && mkdir -p /data \
    && chown goldrelay:goldrelay /data

COPY --from=builder /app/target/release/goldrelay /app/target/release/smoke /usr/local/bin/

# fly.toml's SQLite alternative mounts its volume here, and the default
# DATABASE_URL (sqlite://goldrelay.db) is relative to this directory. With
# PostgreSQL nothing is written here.
WORKDIR /data
# Outside a container goldrelay binds loopback only; in one it must take
# connections from outside (`docker run -p 8080:8080` as well as Fly's proxy).
ENV GOLDRELAY_LISTEN=0.0.0.0:8080
EXPOSE 8080

# For the SQLite alternative, Fly mounts a volume at /data owned by root, where
# the goldrelay user could not write. So the container starts as root only to
# hand /data to goldrelay, then runs the command as goldrelay: `setpriv`
# (util-linux, in every Debian image) switches user and `exec` keeps goldrelay
# the process that receives SIGTERM.
# Started as another user already (docker run --user), it runs the command as is.
ENTRYPOINT ["/bin/sh", "-c", "if [ \"$(id -u)\" = 0 ]; then chown -R goldrelay:goldrelay /data && exec setpriv --reuid=goldrelay --regid=goldrelay --init-groups -- \"$@\"; else exec \"$@\"; fi", "goldrelay-entrypoint"]
CMD ["goldrelay", "serve"]
