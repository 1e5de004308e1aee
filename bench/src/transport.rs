//! `net-bench transport`: net's encrypted UDP mesh against two references measured in the
//! same run over loopback (127.0.0.1), with the same payloads (`--payload-bytes`, 1200 by
//! default), one sender thread and one receiver thread pinned to different cores when the
//! machine has two:
//!
//! - the raw limit (`raw::raw_limit`): plaintext `sendmmsg` → `recvmmsg` in batches of
//!   `--batch` (64), non-blocking sockets with 8 MiB buffers, no crypto, no framing beyond a
//!   sequence number; nothing a UDP design on this kernel can beat;
//! - a conventional baseline (`tokio_snow::tokio_snow_baseline`): a tokio `UdpSocket` per side,
//!   one datagram per `send_to`/`recv_from`, each payload sealed with snow's default (pure
//!   Rust) resolver after a real Noise `NKpsk0_25519_ChaChaPoly_BLAKE2s` handshake;
//! - the latency floor (`raw::raw_ping_pong`): a blocking raw UDP ping-pong, one-way latency
//!   taken as half the round trip.
//!
//! Throughput counts received packets over the time from the first send to the last receive;
//! the receiver stops once it has seen every packet or after `IDLE` without one, and what
//! never arrived is reported as lost. Every datagram carries its sequence number in its first
//! eight bytes and every receiver checks that none arrives twice.
//!
//! The net side (`mesh::run`): encrypted packets/s through two net buses, the mesh's one-way
//! latency, its losses and allocations per packet. The ratios to quote are `raw_ratio` (mesh
//! / raw packets/s), `baseline_ratio` (mesh / baseline packets/s) and `p99_ratio` (mesh /
//! raw one-way p99).

mod mesh;
mod raw;
mod tokio_snow;

use crate::alloc;
use crate::report::{self, JsonLine, Table};
use crate::workload::StartLine;
use crate::{Failure, archive, parse_positive, progress};
use std::sync::{Arc, Barrier};
use std::time::Duration;

pub use raw::{
    Buffers, PingResult, Placement, RawResult, bound_socket, raw_limit, raw_ping_pong, receive_raw,
    send_raw,
};
pub use tokio_snow::{BaselineResult, tokio_snow_baseline};

/// A receiver that has seen nothing for this long stops: what it has not seen is lost.
pub const IDLE: Duration = Duration::from_secs(1);

/// Bytes of the sequence number at the head of every datagram.
pub const SEQ_BYTES: usize = 8;

/// Largest UDP payload over IPv4 (65535 - 20 - 8), less the baseline's sequence number and
/// Poly1305 tag, so that every design can carry the same payload.
pub const PAYLOAD_BYTES_MAX: usize = 65_507 - SEQ_BYTES - tokio_snow::TAG_BYTES;

/// The baseline sends `--packets / BASELINE_SHARE` unless told otherwise.
const BASELINE_SHARE: u64 = 4;

/// Largest `--batch`: the kernel's `UIO_MAXIOV`, the most `sendmmsg` takes in one call.
const BATCH_MAX: u64 = 1024;

const RAW: &str = "raw UDP";
const BASELINE: &str = "tokio+snow";
const MESH: &str = "net mesh";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Packets the mesh and the raw limit send.
    #[arg(long, default_value_t = 2_000_000, value_parser = parse_positive)]
    packets: u64,
    /// Packets the tokio + snow baseline sends; by default a quarter of --packets (it runs
    /// 3-5x slower than the raw limit, and its rate is what is compared).
    #[arg(long, value_parser = parse_positive)]
    baseline_packets: Option<u64>,
    /// Bytes of payload per packet (at least 8: the sequence number).
    #[arg(long, default_value_t = 1200, value_parser = parse_datagram_payload)]
    payload_bytes: usize,
    /// Datagrams per sendmmsg/recvmmsg call of the raw limit.
    #[arg(long, default_value_t = 64, value_parser = parse_batch)]
    batch: usize,
    /// SO_SNDBUF and SO_RCVBUF asked for on every socket (the *FORCE options first, as root);
    /// 0 leaves the kernel's defaults.
    #[arg(long, default_value_t = 8 << 20)]
    socket_buffer: usize,
    /// Measured round trips of the raw ping-pong.
    #[arg(long, default_value_t = 20_000, value_parser = parse_positive)]
    pings: u64,
    /// Round trips before the measured ones.
    #[arg(long, default_value_t = 1_000)]
    warmup_pings: u64,
    /// Print the figures as one JSON object on the last line too.
    #[arg(long)]
    json: bool,
    /// Measure the mesh alone (no references, no ratios): for profiling it.
    #[arg(long)]
    mesh_only: bool,
}

impl Args {
    /// What the baseline sends: `--baseline-packets`, or a quarter of `--packets`.
    pub fn baseline_packets(&self) -> u64 {
        self.baseline_packets
            .unwrap_or((self.packets / BASELINE_SHARE).max(1))
    }
}

/// Clap parser for `--payload-bytes`: room for the sequence number, and small enough for one
/// UDP datagram once the baseline adds its tag.
fn parse_datagram_payload(text: &str) -> Result<usize, String> {
    let n: usize = text.parse().map_err(|e| format!("{e}"))?;
    if (SEQ_BYTES..=PAYLOAD_BYTES_MAX).contains(&n) {
        Ok(n)
    } else {
        Err(format!(
            "must be between {SEQ_BYTES} and {PAYLOAD_BYTES_MAX}"
        ))
    }
}

fn parse_batch(text: &str) -> Result<usize, String> {
    match parse_positive(text)? {
        n if n <= BATCH_MAX => usize::try_from(n).map_err(|e| e.to_string()),
        _ => Err(format!("must be at most {BATCH_MAX}")),
    }
}

/// What `mesh::run(&args)` reports: net's encrypted mesh, packets between two net buses over
/// loopback (written separately, plugged into `run`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MeshResult {
    /// Received packets per second, first send to last receive.
    pub mesh_pps: f64,
    /// Payload MB/s (10^6 bytes) at `mesh_pps`.
    pub mesh_mbps: f64,
    /// One-way latency percentiles, µs.
    pub mesh_p50_us: f64,
    pub mesh_p99_us: f64,
    /// Packets sent and never received.
    pub lost: u64,
    /// Allocations of the whole process in the measured window per packet sent.
    pub allocs_per_packet: f64,
    /// The same throughput run while an attacker sprays the receiving node: packets/s,
    /// what the attacker sent, and what the receiver dropped (the attack must be rejected
    /// in full and the session keep its rate).
    pub attacked_pps: f64,
    pub attack_sent: u64,
    pub attack_dropped: u64,
    pub attacked_lost: u64,
}

pub fn run(args: &Args) -> Result<(), Failure> {
    if args.mesh_only {
        let m = mesh::run(args)?;
        println!("{m:?}");
        return Ok(());
    }
    let raw = progress::during("raw sendmmsg → recvmmsg", || {
        raw_limit(
            args.packets,
            args.payload_bytes,
            args.batch,
            args.socket_buffer,
        )
    })?;
    let baseline = progress::during("tokio + snow baseline", || {
        tokio_snow_baseline(
            args.baseline_packets(),
            args.payload_bytes,
            args.socket_buffer,
        )
    })?;
    let pings = |placement| {
        raw_ping_pong(
            args.pings,
            args.warmup_pings,
            args.payload_bytes,
            args.socket_buffer,
            placement,
        )
    };
    let (ping, ping_one_core) = progress::during("raw UDP ping-pong", || {
        Ok::<_, Failure>((pings(Placement::TwoCores)?, pings(Placement::OneCore)?))
    })?;

    let mesh = Some(progress::during(
        "net mesh: throughput, under attack, ping-pong",
        || mesh::run(args),
    )?);

    let figures = Figures {
        raw: &raw,
        baseline: &baseline,
        ping: &ping,
        ping_one_core: &ping_one_core,
        mesh: mesh.as_ref(),
    };
    print_report(args, &figures);
    Ok(())
}

// ---- what a throughput run delivered ------------------------------------------------------

/// The figures every throughput run (raw, baseline) derives its rates from.
#[derive(Debug, Clone, Copy)]
pub struct DeliveryParts {
    pub sent: u64,
    pub received: u64,
    pub payload: usize,
    /// First send to last receive.
    pub elapsed: Duration,
    pub allocations: alloc::Snapshot,
}

/// Rates and losses of a throughput run, computed the same way for every design.
pub trait Delivery {
    fn parts(&self) -> DeliveryParts;

    /// Received packets per second.
    fn pps(&self) -> f64 {
        let p = self.parts();
        report::per_s(p.received, p.elapsed)
    }

    /// Payload MB/s (10^6 bytes).
    fn mbps(&self) -> f64 {
        self.pps() * self.parts().payload as f64 / 1e6
    }

    fn lost(&self) -> u64 {
        let p = self.parts();
        p.sent.saturating_sub(p.received)
    }

    fn allocs_per_packet(&self) -> f64 {
        let p = self.parts();
        allocs_per_packet(p.allocations, p.sent)
    }
}

// ---- allocation windows ------------------------------------------------------------------

/// Runs `f` and returns its value with the allocations the whole process made while it ran
/// (every thread: whoever measures threads makes sure they are the only ones running).
pub fn allocations_during<T>(f: impl FnOnce() -> T) -> (T, alloc::Snapshot) {
    let before = alloc::snapshot();
    let value = f();
    (value, alloc::snapshot().since(before))
}

/// Allocations per packet, exact: all of a window's allocations over the packets sent in it.
pub fn allocs_per_packet(allocations: alloc::Snapshot, packets: u64) -> f64 {
    allocations.allocations as f64 / packets.max(1) as f64
}

/// `Failure::io` for measured loops: `Failure::io(context)` builds its `String` when it is
/// called, so `map_err(Failure::io(..))` allocates on every call, success or not; this
/// allocates only on an error.
pub fn io_failure(context: &'static str) -> impl FnOnce(std::io::Error) -> Failure {
    move |source| Failure::Io {
        context: context.to_owned(),
        source,
    }
}

/// A measured window across worker threads: the workers finish their set-up (and its
/// allocations) before it opens and stop touching anything before it closes; the measuring
/// thread takes the allocator's readings in between (`measure`). Every worker takes a
/// `WorkerPass`, whose drop passes the barriers it has not passed, so a worker that fails
/// early never leaves the others waiting.
#[derive(Debug)]
pub struct Window {
    start: Arc<StartLine>,
    done: Barrier,
}

impl Window {
    pub fn new(workers: usize) -> Window {
        Window {
            start: StartLine::new(workers),
            done: Barrier::new(workers + 1),
        }
    }

    /// A worker's pass through the window; one per worker.
    pub fn worker(&self) -> WorkerPass<'_> {
        WorkerPass {
            window: self,
            stage: Stage::SettingUp,
        }
    }

    /// The measuring thread: waits until every worker is set up, releases them, waits until
    /// all have finished their measured work, and returns the allocations in between.
    pub fn measure(&self) -> alloc::Snapshot {
        self.start.wait_ready();
        let ((), allocations) = allocations_during(|| {
            self.start.release();
            self.done.wait();
        });
        allocations
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    SettingUp,
    Measured,
    Finished,
}

/// One worker's progress through a `Window`.
#[derive(Debug)]
pub struct WorkerPass<'w> {
    window: &'w Window,
    stage: Stage,
}

impl WorkerPass<'_> {
    /// Set-up is over: waits for the window to open.
    pub fn start(&mut self) {
        if self.stage == Stage::SettingUp {
            self.window.start.wait();
            self.stage = Stage::Measured;
        }
    }

    /// The measured work is over: waits for the window to close.
    pub fn finish(&mut self) {
        self.start();
        if self.stage == Stage::Measured {
            self.window.done.wait();
            self.stage = Stage::Finished;
        }
    }
}

impl Drop for WorkerPass<'_> {
    fn drop(&mut self) {
        self.finish();
    }
}

// ---- shared by the designs ---------------------------------------------------------------

/// The sender's and the receiver's cores: the first two this process may use, when there are
/// two.
pub fn two_cores() -> Option<[core_affinity::CoreId; 2]> {
    let mut cores = core_affinity::get_core_ids().unwrap_or_default();
    cores.sort_unstable_by_key(|c| c.id);
    match cores[..] {
        [a, b, ..] => Some([a, b]),
        _ => None,
    }
}

/// Pins the calling thread to `core`, if any; returns whether it did.
pub fn pin(core: Option<core_affinity::CoreId>) -> bool {
    core.is_some_and(core_affinity::set_for_current)
}

/// Which sequence numbers below a limit a receiver has seen; sized before a measured window
/// and never grown in it.
#[derive(Debug)]
pub struct Seen {
    words: Vec<u64>,
    limit: u64,
}

/// What one received sequence number was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    New,
    Duplicate,
    OutOfRange,
}

impl Seen {
    pub fn new(limit: u64) -> Seen {
        let words = usize::try_from(limit.div_ceil(64)).expect("a bitmap of `limit` bits fits");
        Seen {
            words: vec![0; words],
            limit,
        }
    }

    pub fn mark(&mut self, seq: u64) -> Mark {
        if seq >= self.limit {
            return Mark::OutOfRange;
        }
        let word = usize::try_from(seq / 64).expect("below limit, whose words fit");
        let bit = 1u64 << (seq % 64);
        let word = &mut self.words[word];
        if *word & bit != 0 {
            return Mark::Duplicate;
        }
        *word |= bit;
        Mark::New
    }
}

/// What a receiver counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Distinct, well-formed packets.
    pub received: u64,
    pub duplicates: u64,
    /// Wrong length, truncated, sequence number out of range, or (sealed) not authentic.
    pub malformed: u64,
}

impl Tally {
    /// Counts a packet with sequence number `seq` that passed the receiver's other checks.
    pub fn count(&mut self, seen: &mut Seen, seq: u64) {
        match seen.mark(seq) {
            Mark::New => self.received += 1,
            Mark::Duplicate => self.duplicates += 1,
            Mark::OutOfRange => self.malformed += 1,
        }
    }

    /// Fails unless every packet was distinct and well formed.
    pub fn verify(&self, design: &str) -> Result<(), Failure> {
        if self.duplicates == 0 && self.malformed == 0 {
            return Ok(());
        }
        Err(Failure::Verification(format!(
            "{design}: {} duplicated and {} malformed packets beside {} good ones",
            self.duplicates, self.malformed, self.received
        )))
    }
}

// ---- the report --------------------------------------------------------------------------

/// Everything one run measured.
#[derive(Debug)]
struct Figures<'a> {
    raw: &'a RawResult,
    baseline: &'a BaselineResult,
    /// The scenario's latency reference: pinger and ponger on different cores.
    ping: &'a PingResult,
    /// The same on one core, to show what the cross-core wake-ups cost.
    ping_one_core: &'a PingResult,
    mesh: Option<&'a MeshResult>,
}

fn print_report(args: &Args, figures: &Figures<'_>) {
    let command = command(args);
    print!("{}", table(args, figures).render());
    for line in notes(args, figures) {
        println!("  {line}");
    }
    println!("  reproduce: {command}");
    archive::emit(json(args, figures, command), args.json);
}

/// A ratio of two rates or latencies; null (None) when the denominator is zero.
fn ratio(numerator: f64, denominator: f64) -> Option<f64> {
    (denominator > 0.0).then(|| report::round_to(numerator / denominator, 3))
}

fn table(args: &Args, f: &Figures<'_>) -> Table {
    let title = format!(
        "loopback UDP, {} B payloads, 1 sender + 1 receiver thread{}",
        args.payload_bytes,
        if f.raw.pinned { ", pinned" } else { "" },
    );
    let dash = || "—".to_owned();
    let (raw, base, ping) = (f.raw, f.baseline, f.ping.percentiles);
    // One column per design: the mesh's first when it ran.
    let mut columns = Vec::new();
    let mut rows: Vec<(&str, Vec<String>)> = [
        "packets sent",
        "packets/s (received)",
        "payload MB/s",
        "lost",
        "datagram bytes",
        "allocations/packet",
        "one-way p50 (µs)",
        "one-way p99 (µs)",
        "one-way p99.9 (µs)",
    ]
    .into_iter()
    .map(|label| (label, Vec::new()))
    .collect();
    let mut column = |name: &'static str, cells: [String; 9]| {
        columns.push(name);
        for ((_, row), cell) in rows.iter_mut().zip(cells) {
            row.push(cell);
        }
    };
    let count = |n: u64| report::format_count(n as f64);
    if let Some(mesh) = f.mesh {
        column(
            MESH,
            [
                count(args.packets),
                report::format_count(mesh.mesh_pps),
                format!("{:.1}", mesh.mesh_mbps),
                mesh.lost.to_string(),
                dash(),
                format!("{:.4}", mesh.allocs_per_packet),
                report::format_us(mesh.mesh_p50_us),
                report::format_us(mesh.mesh_p99_us),
                dash(),
            ],
        );
    }
    column(
        RAW,
        [
            count(raw.sent),
            report::format_count(raw.pps()),
            format!("{:.1}", raw.mbps()),
            raw.lost().to_string(),
            raw.payload.to_string(),
            format!("{:.4}", raw.allocs_per_packet()),
            report::format_us(ping.p50_us),
            report::format_us(ping.p99_us),
            report::format_us(ping.p999_us),
        ],
    );
    column(
        BASELINE,
        [
            count(base.sent),
            report::format_count(base.pps()),
            format!("{:.1}", base.mbps()),
            base.lost().to_string(),
            base.datagram_bytes().to_string(),
            format!("{:.4}", base.allocs_per_packet()),
            dash(),
            dash(),
            dash(),
        ],
    );
    let mut table = Table::new(&title, &columns);
    for (label, cells) in rows {
        table.row(label, cells);
    }
    table
}

/// Lines under the table: how each figure was taken, the ratios, and any warning.
fn notes(args: &Args, f: &Figures<'_>) -> Vec<String> {
    let (raw, base, ping) = (f.raw, f.baseline, f.ping);
    let mut notes = Vec::new();
    if let Some(m) = f.mesh {
        notes.push(format!(
            "net mesh: two buses, one shard each (pinned to the sender's and the receiver's \
             core), Peer::send -> shard seals, sendmmsg -> shard recvmmsg, opens -> inbox; \
             under attack ({} forged initiations, forged data packets and garbage, from {} \
             source ports at {} datagrams/s): {} packets/s ({:.3} of unattacked), {} lost, \
             {} of {} attack datagrams counted as dropped (the rest never left the kernel's \
             socket buffer)",
            "a third each of",
            mesh::ATTACK_SOCKETS,
            count_text(mesh::ATTACK_PPS),
            report::format_count(m.attacked_pps),
            m.attacked_pps / m.mesh_pps.max(1e-9),
            m.attacked_lost,
            count_text(m.attack_dropped),
            count_text(m.attack_sent),
        ));
    }
    notes.extend([
        format!(
            "raw: sendmmsg -> recvmmsg, {} datagrams per call, non-blocking; {} in {:.3} s \
             (sender done in {:.3} s)",
            args.batch,
            report::format_count(raw.tally.received as f64),
            raw.elapsed.as_secs_f64(),
            raw.send_elapsed.as_secs_f64(),
        ),
        format!(
            "tokio+snow: current-thread runtime per side, send_to/recv_from per datagram, \
             Noise_NKpsk0_25519_ChaChaPoly_BLAKE2s with snow's DefaultResolver; {} packets{} \
             in {:.3} s",
            report::format_count(base.sent as f64),
            match args.baseline_packets {
                _ if base.sent == args.packets => " (as many as raw)".to_owned(),
                None => format!(
                    " (default: 1/{BASELINE_SHARE} of raw's {})",
                    count_text(args.packets)
                ),
                Some(_) => format!(
                    " (--baseline-packets; raw sent {})",
                    count_text(args.packets)
                ),
            },
            base.elapsed.as_secs_f64(),
        ),
        format!(
            "latency: raw UDP ping-pong, blocking sockets, one-way = RTT/2, {} round trips \
             after {} warm-up; RTT p50 {} µs",
            count_text(ping.percentiles.samples),
            count_text(ping.warmup),
            report::format_us(ping.percentiles.p50_us * 2.0),
        ),
        format!(
            "latency, both threads on one core (no cross-core wake-up): one-way p50 {} µs, \
             p99 {} µs, p99.9 {} µs",
            report::format_us(f.ping_one_core.percentiles.p50_us),
            report::format_us(f.ping_one_core.percentiles.p99_us),
            report::format_us(f.ping_one_core.percentiles.p999_us),
        ),
        format!("sockets: {}", raw.buffers),
    ]);
    match f.mesh {
        Some(mesh) => {
            let show = |r: Option<f64>| r.map_or_else(|| "n/a".to_owned(), |r| format!("{r:.3}"));
            notes.push(format!(
                "ratios: mesh/raw packets/s {}, mesh/baseline packets/s {}, mesh/raw p99 {}",
                show(ratio(mesh.mesh_pps, raw.pps())),
                show(ratio(mesh.mesh_pps, base.pps())),
                show(ratio(mesh.mesh_p99_us, ping.percentiles.p99_us)),
            ));
        }
        None => notes.push("net mesh: not measured in this build (references only)".to_owned()),
    }
    if !(raw.pinned && base.pinned && ping.pinned && f.ping_one_core.pinned) {
        notes.push("warning: fewer than 2 CPUs, sender and receiver are not pinned".to_owned());
    }
    notes
}

fn count_text(n: u64) -> String {
    report::format_count(n as f64)
}

fn json(args: &Args, f: &Figures<'_>, command: String) -> String {
    let (raw, base, ping) = (f.raw, f.baseline, f.ping);
    let mut json = JsonLine::default();
    json.field("scenario", "transport")
        .field("payload_bytes", args.payload_bytes)
        .field("packets", args.packets);
    if let Some(mesh) = f.mesh {
        mesh_json(&mut json, mesh, raw, base, ping);
    }
    json.field("raw_pps", report::round_to(raw.pps(), 0))
        .field("raw_mbps", report::round_to(raw.mbps(), 2))
        .field("raw_lost", raw.lost())
        .field("baseline_pps", report::round_to(base.pps(), 0))
        .field("baseline_mbps", report::round_to(base.mbps(), 2))
        .field("baseline_lost", base.lost())
        .field("baseline_packets", base.sent)
        .latency("raw_", &ping.percentiles)
        .field("raw_one_core_p50_us", f.ping_one_core.percentiles.p50_us)
        .field("raw_one_core_p99_us", f.ping_one_core.percentiles.p99_us)
        .field("raw_one_core_p999_us", f.ping_one_core.percentiles.p999_us)
        .field("raw_allocs_per_packet", raw.allocs_per_packet())
        .field("baseline_allocs_per_packet", base.allocs_per_packet())
        .field("batch", args.batch)
        .field(
            "raw_elapsed_s",
            report::round_to(raw.elapsed.as_secs_f64(), 4),
        )
        .field(
            "baseline_elapsed_s",
            report::round_to(base.elapsed.as_secs_f64(), 4),
        )
        .field("pings", ping.percentiles.samples)
        .field("sndbuf_bytes", raw.buffers.sndbuf)
        .field("rcvbuf_bytes", raw.buffers.rcvbuf)
        .field("pinned", raw.pinned)
        .field("command", command);
    json.render()
}

/// The mesh's fields and its ratios to the references, one line each.
fn mesh_json(
    json: &mut JsonLine,
    mesh: &MeshResult,
    raw: &RawResult,
    base: &BaselineResult,
    ping: &PingResult,
) {
    json.field("mesh_pps", report::round_to(mesh.mesh_pps, 0))
        .field("mesh_mbps", report::round_to(mesh.mesh_mbps, 2))
        .field("raw_ratio", ratio(mesh.mesh_pps, raw.pps()))
        .field("baseline_ratio", ratio(mesh.mesh_pps, base.pps()))
        .field("mesh_p50_us", mesh.mesh_p50_us)
        .field("mesh_p99_us", mesh.mesh_p99_us)
        .field(
            "p99_ratio",
            ratio(mesh.mesh_p99_us, ping.percentiles.p99_us),
        )
        .field("lost", mesh.lost)
        .field("allocs_per_packet", mesh.allocs_per_packet)
        .field("attacked_pps", report::round_to(mesh.attacked_pps, 0))
        .field("attack_rate_ratio", ratio(mesh.attacked_pps, mesh.mesh_pps))
        .field("attack_sent", mesh.attack_sent)
        .field("attack_dropped", mesh.attack_dropped)
        .field("attacked_lost", mesh.attacked_lost);
}

fn command(args: &Args) -> String {
    let mut flags = vec![
        ("packets", args.packets.to_string()),
        ("baseline-packets", args.baseline_packets().to_string()),
        ("payload-bytes", args.payload_bytes.to_string()),
        ("batch", args.batch.to_string()),
        ("socket-buffer", args.socket_buffer.to_string()),
        ("pings", args.pings.to_string()),
        ("warmup-pings", args.warmup_pings.to_string()),
    ];
    if args.json {
        flags.push(("json", String::new()));
    }
    crate::reproduce_command("transport", &flags, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &[&str]) -> Args {
        crate::parse_args("transport", line)
    }

    #[test]
    fn defaults_and_limits() {
        let a = args(&[]);
        assert_eq!((a.packets, a.payload_bytes, a.batch), (2_000_000, 1200, 64));
        assert_eq!(
            (a.pings, a.warmup_pings, a.socket_buffer),
            (20_000, 1_000, 8 << 20)
        );
        assert_eq!(a.baseline_packets(), 500_000);
        assert_eq!(args(&["--packets", "3"]).baseline_packets(), 1);
        assert_eq!(args(&["--baseline-packets", "7"]).baseline_packets(), 7);
        assert!(parse_datagram_payload("7").is_err());
        assert!(parse_datagram_payload(&PAYLOAD_BYTES_MAX.to_string()).is_ok());
        assert!(parse_datagram_payload(&(PAYLOAD_BYTES_MAX + 1).to_string()).is_err());
        assert!(parse_batch("0").is_err() && parse_batch("1025").is_err());
        assert_eq!(parse_batch("1024"), Ok(1024));
        let cmd = command(&args(&["--json"]));
        assert!(cmd.contains("transport --packets 2000000 --baseline-packets 500000"));
        assert!(cmd.ends_with("--warmup-pings 1000 --json"), "{cmd}");
    }

    #[test]
    fn seen_marks_each_number_once() {
        let mut seen = Seen::new(130);
        let mut tally = Tally::default();
        for seq in [0, 129, 64, 0, 130, 129] {
            tally.count(&mut seen, seq);
        }
        assert_eq!(
            tally,
            Tally {
                received: 3,
                duplicates: 2,
                malformed: 1
            }
        );
        assert!(tally.verify("test").is_err());
        assert!(Tally::default().verify("test").is_ok());
    }

    #[test]
    fn a_failed_worker_does_not_strand_the_window() {
        let window = Window::new(2);
        std::thread::scope(|s| {
            s.spawn(|| drop(window.worker()));
            s.spawn(|| {
                let mut pass = window.worker();
                pass.start();
                pass.finish();
            });
            let _ = window.measure();
        });
    }

    /// The references over loopback, small: they deliver, count and time.
    #[test]
    fn references_run_over_loopback() {
        let raw = raw_limit(20_000, 1200, 64, 8 << 20).unwrap();
        assert_eq!(raw.sent, 20_000);
        assert!(raw.tally.received > 0 && raw.pps() > 0.0);
        let base = tokio_snow_baseline(5_000, 1200, 8 << 20).unwrap();
        assert_eq!(base.sent, 5_000);
        assert!(base.tally.received > 0 && base.pps() > 0.0);
        for placement in [Placement::TwoCores, Placement::OneCore] {
            let ping = raw_ping_pong(200, 10, 1200, 0, placement).unwrap();
            assert_eq!((ping.percentiles.samples, ping.warmup), (200, 10));
            assert!(ping.percentiles.p50_us > 0.0);
        }
    }

    #[test]
    fn json_has_the_mesh_fields_only_with_a_mesh() {
        let raw = raw_limit(2_000, 100, 64, 0).unwrap();
        let base = tokio_snow_baseline(1_000, 100, 0).unwrap();
        let ping = raw_ping_pong(50, 5, 100, 0, Placement::TwoCores).unwrap();
        let a = args(&["--packets", "2000", "--payload-bytes", "100", "--json"]);
        let mut figures = Figures {
            raw: &raw,
            baseline: &base,
            ping: &ping,
            ping_one_core: &ping,
            mesh: None,
        };
        let without: serde_json::Value =
            serde_json::from_str(&json(&a, &figures, command(&a))).unwrap();
        assert_eq!(without["scenario"], "transport");
        assert_eq!(without["packets"], 2000);
        for field in [
            "raw_pps",
            "baseline_pps",
            "raw_p50_us",
            "raw_p99_us",
            "raw_p999_us",
        ] {
            assert!(without[field].is_number(), "{field}: {without}");
        }
        assert!(without.get("mesh_pps").is_none() && without.get("raw_ratio").is_none());

        let mesh = MeshResult {
            mesh_pps: raw.pps() / 2.0,
            mesh_mbps: 1.0,
            mesh_p50_us: 10.0,
            mesh_p99_us: ping.percentiles.p99_us * 3.0,
            lost: 0,
            allocs_per_packet: 0.0,
            attacked_pps: raw.pps() / 2.0,
            attack_sent: 10,
            attack_dropped: 10,
            attacked_lost: 0,
        };
        figures.mesh = Some(&mesh);
        let with: serde_json::Value =
            serde_json::from_str(&json(&a, &figures, command(&a))).unwrap();
        for field in [
            "mesh_pps",
            "raw_pps",
            "baseline_pps",
            "raw_ratio",
            "baseline_ratio",
            "mesh_p50_us",
            "mesh_p99_us",
            "raw_p99_us",
            "p99_ratio",
            "lost",
            "allocs_per_packet",
            "attack_rate_ratio",
        ] {
            assert!(with[field].is_number(), "{field}: {with}");
        }
        assert!((with["raw_ratio"].as_f64().unwrap() - 0.5).abs() < 0.01);
        assert!((with["p99_ratio"].as_f64().unwrap() - 3.0).abs() < 0.01);
        assert!(table(&a, &figures).render().contains(MESH));
    }
}
