#!/usr/bin/env bash
# The whole test suite: formatting, lints, every crate's tests, the loom models of the engine's
# ring, and a smoke run of the two README commands' binaries. CI (.ci/run) runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

echo "== setup"
bash scripts/setup.sh

# The real servers the adapters are tested against (redis-server, nats-server -js) on private
# loopback ports; under CI (CI=true) a server that cannot start fails the run here.
echo "== services"
bash scripts/services.sh start

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

echo "== cargo test"
cargo test --workspace

# loom model-checks the ring's protocols (engine/src/ring/loom_tests.rs). `--cfg loom` changes
# every crate's build, so it gets its own target dir and never invalidates the normal one.
loom_target="${CARGO_TARGET_DIR:-target}/loom"
echo "== loom: RUSTFLAGS=\"--cfg loom\" CARGO_TARGET_DIR=$loom_target cargo test -p net-engine --release --lib ring::loom_tests"
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR="$loom_target" \
    cargo test -p net-engine --release --lib ring::loom_tests

# A longer fuzz run of netd's socket frame decoder (the test's default is 2 s; the debug build
# of `cargo test` above is reused).
echo "== fuzz: netd frame decoder, 20 s"
NETD_FUZZ_SECS=20 cargo test -p netd --test fuzz_frames -- --nocapture 2>&1 | grep -E "fuzz_frames|test result"

echo "== net-bench smoke (release)"
cargo build --release -p net-bench
bench="${CARGO_TARGET_DIR:-target}/release/net-bench"
"$bench" demo --events 1000000
"$bench" ingest --events 200000 --json | tail -n 1 | python3 -c 'import json,sys; j=json.load(sys.stdin); assert j["scenario"]=="ingest" and j["events"]==200000, j; print("ingest json ok:", j["events_per_s"], "events/s, ratio", j["ratio"])'
# The mesh scenario, small: its JSON must carry every field the README's table quotes, and
# the mesh must allocate nothing per packet (its losses are printed: a CPU-starved receiver
# on a shared CI machine can overflow its socket buffer).
"$bench" transport --packets 200000 --pings 2000 --warmup-pings 200 --json | tail -n 1 | python3 -c 'import json,sys; j=json.load(sys.stdin); missing=[k for k in ("mesh_pps","raw_pps","baseline_pps","raw_ratio","baseline_ratio","mesh_p50_us","mesh_p99_us","raw_p99_us","p99_ratio","lost","allocs_per_packet","attack_rate_ratio") if k not in j]; assert not missing, missing; assert j["allocs_per_packet"]==0, j; print("transport json ok:", j["mesh_pps"], "packets/s, raw ratio", j["raw_ratio"], "lost", j["lost"])'
# The subscription scenario, small (two processes: this bench and its publisher child): its
# JSON must carry the fields the README's row quotes, the mirror must be exact (the bench
# also fails on its own if it is not), and the subscriber must allocate nothing per event.
"$bench" mesh --events 200000 --warmup 20000 --latency-events 50000 --json | tail -n 1 | python3 -c 'import json,sys; j=json.load(sys.stdin); missing=[k for k in ("events_per_s","durable_events_per_s","e2e_p50_us","e2e_p99_us","raw_events_per_s","raw_ratio","lost","duplicates","allocs_per_event","publisher_allocs_per_event","events","rate") if k not in j]; assert not missing, missing; assert j["scenario"]=="mesh" and j["events"]==200000, j; assert j["lost"]==0 and j["duplicates"]==0, j; assert j["allocs_per_event"]==0, j; print("mesh json ok:", j["events_per_s"], "events/s, raw ratio", j["raw_ratio"], "e2e p99", j["e2e_p99_us"], "us")'
# The adapters scenario, small, against the servers started above: its JSON must carry the
# fields the README's row quotes, and every event must reach each backend exactly once.
"$bench" adapters --events 20000 --json | tail -n 1 | python3 -c 'import json,sys; j=json.load(sys.stdin); missing=[k for k in ("redis_events_per_s","redis_raw_per_s","redis_ratio","jetstream_events_per_s","jetstream_raw_per_s","jetstream_ratio","lost","duplicates") if k not in j]; assert not missing, missing; assert j["scenario"]=="adapters" and j["lost"]==0 and j["duplicates"]==0, j; print("adapters json ok: redis ratio", j["redis_ratio"], "jetstream ratio", j["jetstream_ratio"], "lost", j["lost"])'
# The fold scenario, small: its JSON must carry the fields the README's row quotes, and the
# restored state must equal the replayed one (the bench fails on its own otherwise).
"$bench" fold --events 200000 --ingest-events 100000 --ids 10000 --rounds 1 --json | tail -n 1 | python3 -c 'import json,sys; j=json.load(sys.stdin); missing=[k for k in ("fold_events_per_s","ingest_ratio","restore_ms","replay_ms","restore_ratio") if k not in j]; assert not missing, missing; assert j["scenario"]=="fold", j; print("fold json ok:", j["fold_events_per_s"], "fold events/s, restore ratio", j["restore_ratio"])'
# The socket scenario, small: netd's Unix socket against in-process ingest, every event
# acknowledged and in the log (the bench fails on its own otherwise).
"$bench" socket --events 400000 --rounds 1 --ack-frames 200 --json | tail -n 1 | python3 -c 'import json,sys; j=json.load(sys.stdin); missing=[k for k in ("socket_events_per_s","direct_events_per_s","socket_ratio","ack_p99_us","allocs_per_event") if k not in j]; assert not missing, missing; assert j["scenario"]=="socket", j; print("socket json ok:", j["socket_events_per_s"], "events/s, socket ratio", j["socket_ratio"])'
# The report of the runs above: each wrote its archive (target/net-bench/<scenario>/), and
# `net-bench report` must render them into a markdown table and at least one SVG plot.
report_out="$(mktemp -d)"
"$bench" report --out "$report_out"
test -s "$report_out/report.md"
grep -q '^| ingest | ' "$report_out/report.md"
ls "$report_out"/*.svg >/dev/null
echo "report ok: $(ls "$report_out"/*.svg | wc -l) plots"
rm -rf "$report_out"
echo "== all tests passed"
