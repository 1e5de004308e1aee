#!/usr/bin/env bash
# Installs what the project needs on a fresh machine (idempotent). Today that is only the Rust
# toolchain's rustfmt and clippy components and python3 (used by test.sh to check JSON);
# later issues add redis-server, nats-server and valgrind here.
set -euo pipefail
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    rustup component add rustfmt clippy
fi
if ! command -v python3 >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq python3
fi
