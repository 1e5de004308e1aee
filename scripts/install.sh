#!/usr/bin/env bash
# Builds libnet (the C API, profile release-ffi: panic = "abort") and installs
#   DIR/lib/libnet.so, DIR/lib/libnet.a, DIR/include/net.h, DIR/lib/pkgconfig/net.pc
# Usage: scripts/install.sh --prefix DIR   (then: PKG_CONFIG_PATH=DIR/lib/pkgconfig
#        cc app.c $(pkg-config --cflags --libs net), and LD_LIBRARY_PATH=DIR/lib to run)
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) prefix="${2:?--prefix needs a directory}"; shift 2 ;;
        --prefix=*) prefix="${1#--prefix=}"; shift ;;
        -h|--help) sed -n '2,5p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1 (usage: scripts/install.sh --prefix DIR)" >&2; exit 2 ;;
    esac
done
[ -n "$prefix" ] || { echo "usage: scripts/install.sh --prefix DIR" >&2; exit 2; }
mkdir -p "$prefix"
prefix="$(cd "$prefix" && pwd)"
cargo build -q -p net-ffi --lib --profile release-ffi
out="${CARGO_TARGET_DIR:-target}/release-ffi"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)"
install -d "$prefix/lib/pkgconfig" "$prefix/include"
install -m 0755 "$out/libnet.so" "$prefix/lib/libnet.so"
install -m 0644 "$out/libnet.a" "$prefix/lib/libnet.a"
install -m 0644 ffi/include/net.h "$prefix/include/net.h"
sed -e "s|@PREFIX@|$prefix|" -e "s|@VERSION@|$version|" ffi/net.pc.in >"$prefix/lib/pkgconfig/net.pc"
echo "installed libnet $version into $prefix"
