#!/usr/bin/env bash
# Installs what the project needs on a fresh machine (idempotent). Today that is only the Rust
# toolchain's rustfmt and clippy components, python3 (used by test.sh to check JSON), a C
# compiler and valgrind (the C API's test programs, ffi/tests/c_programs.rs). redis-server and
# nats-server are installed by scripts/services.sh when it starts them.
set -euo pipefail
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    rustup component add rustfmt clippy
fi
if ! command -v python3 >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq python3
fi
apt_updated=
apt_install() {
    if [ -z "$apt_updated" ]; then
        apt-get update -qq
        apt_updated=1
    fi
    apt-get install -y -qq "$@"
}
if ! command -v cc >/dev/null 2>&1; then
    apt_install gcc libc6-dev
fi
if ! command -v valgrind >/dev/null 2>&1; then
    apt_install valgrind
fi
