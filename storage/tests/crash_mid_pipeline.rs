//! Crash test of the pipelined group commit: a process driving a log the way a shard does
//! (each batch's write with an `fdatasync` linked behind it, the next batch's write submitted
//! as soon as the previous write completed, while its sync still runs) is SIGKILLed with two
//! batches in flight, and the log it leaves must reopen with every acknowledged record intact.
//!
//! Why: the pipeline is where a crash can tear the most. At the moment of the kill one batch
//! may be written but not synced and the next one half written, both rewriting the partial
//! block where they meet; a segment may be rolling. Recovery must cut exactly the torn tail
//! and never refuse what a crash left, and no record whose sync completed may be lost.
//!
//! The child is this test binary re-run with `--ignored --exact child_pipeline`, with
//! `NET_PIPELINE_DIR` naming the data dir. It opens the log with `Log::open_shared`, drives it
//! with its own [`Ring`], and prints `ack <seq> <crc32c>` for every record of every batch whose
//! sync completed (popped with `Log::pop_completed`), and `pipelined ...` whenever a submit
//! left two or more batches in flight. The parent kills it a random 0–100 ms after its first
//! acknowledgement, then reopens the log standalone and checks: it opens (no refusal); the
//! sequence is contiguous from 0; every acknowledged record is there byte for byte; every
//! record is one some run wrote (self-describing payloads), records of earlier runs unchanged
//! (it re-reads the whole log every tenth kill and after the last, else the tail from about two
//! segments before where the run began: a crash only touches the tail); then it closes the log
//! cleanly, so later runs also crash a log that was reopened and closed.
//!
//! `NET_PIPELINE_KILLS` sets the number of kills (default 40), `NET_PIPELINE_SEED` the seed of
//! the kill delays. On failure the data dir is kept and its path printed.
#![allow(clippy::cast_possible_truncation)]

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use net_storage::{Ack, Log, LogConfig, Push, Ring, StorageError, Submit};

const CHILD: &str = "child_pipeline";
const DIR_ENV: &str = "NET_PIPELINE_DIR";
const RUN_ENV: &str = "NET_PIPELINE_RUN";
/// First byte of every payload.
const MAGIC: u8 = 0xA7;
/// Payload bytes before the filler: magic, run (u32), seq (u64).
const PAYLOAD_HEAD: usize = 13;
/// Records before a run's start that are re-read after its kill: more than a segment holds.
const RECHECK_RECORDS: u64 = 2048;

fn cfg() -> LogConfig {
    LogConfig {
        shard: 0,
        segment_bytes: 256 << 10, // a segment roll every ~17 batches
        batch_bytes_max: 16 << 10,
        batch_events_max: 64,
        ack: Ack::Synced,
        preallocate: true,
    }
}

/// Payload length of record `seq`: 16..=400 bytes, so a batch ends on either limit.
fn payload_len(seq: u64) -> usize {
    16 + (seq.wrapping_mul(7919) % 385) as usize
}

fn filler(seq: u64, i: usize) -> u8 {
    (seq as u8).wrapping_mul(31).wrapping_add(i as u8)
}

/// The payload of record `seq` written by run `run`: it describes itself.
fn payload(run: u32, seq: u64) -> Vec<u8> {
    let mut v = vec![0u8; payload_len(seq)];
    v[0] = MAGIC;
    v[1..5].copy_from_slice(&run.to_le_bytes());
    v[5..PAYLOAD_HEAD].copy_from_slice(&seq.to_le_bytes());
    for (i, b) in v.iter_mut().enumerate().skip(PAYLOAD_HEAD) {
        *b = filler(seq, i);
    }
    v
}

/// The run that wrote `p` as record `seq`, or why `p` is not a payload any run wrote there.
fn payload_run(seq: u64, p: &[u8]) -> Result<u32, String> {
    if p.len() != payload_len(seq) {
        return Err(format!("{} bytes, expected {}", p.len(), payload_len(seq)));
    }
    if p[0] != MAGIC {
        return Err(format!("first byte {:#04x}, expected {MAGIC:#04x}", p[0]));
    }
    let claimed = u64::from_le_bytes(p[5..PAYLOAD_HEAD].try_into().expect("8 bytes"));
    if claimed != seq {
        return Err(format!("it was written as seq {claimed}"));
    }
    if let Some(i) = (PAYLOAD_HEAD..p.len()).find(|&i| p[i] != filler(seq, i)) {
        return Err(format!("filler byte {i} is {:#04x}", p[i]));
    }
    Ok(u32::from_le_bytes(p[1..5].try_into().expect("4 bytes")))
}

/// The child: appends through the pipeline until killed, printing `open <next_seq>` once,
/// `ack <seq> <crc32c>` for every record whose batch's sync completed, and
/// `pipelined <batches> <first_seq>` whenever a submit leaves two or more batches in flight.
#[test]
#[ignore = "run by kill_mid_pipeline_keeps_every_acknowledged_record as its child process"]
fn child_pipeline() {
    let Ok(dir) = std::env::var(DIR_ENV) else {
        return;
    };
    let run: u32 = std::env::var(RUN_ENV).unwrap().parse().unwrap();
    let cfg = cfg();
    let (mut log, _) = Log::open_shared(Path::new(&dir), cfg).expect("child: open the log");
    let mut ring = Ring::new().expect("child: set up a ring");
    let mut out = std::io::stdout().lock();
    // The leading newline ends libtest's "test child_pipeline ... " line.
    writeln!(out, "\nopen {}", log.next_seq()).unwrap();
    out.flush().unwrap();
    // End seqs of the batches submitted and not yet completed, oldest first.
    let mut in_flight: VecDeque<u64> = VecDeque::new();
    let mut ready = Vec::new();
    loop {
        // Fill the open batch: a batch's worth, or until the log says it is full (the batch
        // is at a limit, or the segment must roll once the batches in flight complete).
        while log.open_events() < cfg.batch_events_max {
            let seq = log.next_seq();
            match log.push(seq, &payload(run, seq)).unwrap() {
                Push::Staged(s) => assert_eq!(s, seq, "child: push gave an unexpected seq"),
                Push::Full => break,
            }
        }
        submit_open(&mut log, &mut ring, &mut in_flight, &mut out);
        assert!(
            log.in_flight(),
            "child: nothing in flight and nothing could be submitted: the pipeline is stuck"
        );
        ring.wait().expect("child: wait for a completion");
        ready.clear();
        ring.reap(|tag, res| ready.push((tag, res)));
        for &(tag, res) in &ready {
            log.complete(&mut ring, tag, res)
                .expect("child: an operation of the log failed");
            while let Some(c) = log.pop_completed() {
                assert_eq!(
                    in_flight.pop_front(),
                    Some(c.end_seq),
                    "child: batches must complete in the order they were submitted"
                );
                for r in log.appended(&c).records() {
                    writeln!(out, "ack {} {}", r.seq, crc32c::crc32c(r.payload)).unwrap();
                }
                out.flush().unwrap();
            }
            // The write of the batch in flight may just have completed: the next batch's
            // write goes out now, while that batch's sync still runs.
            submit_open(&mut log, &mut ring, &mut in_flight, &mut out);
        }
    }
}

/// Submits the open batch with a linked sync, if the log takes it now; prints the marker when
/// the batch before it is still in flight (written, its sync running).
fn submit_open(
    log: &mut Log,
    ring: &mut Ring,
    in_flight: &mut VecDeque<u64>,
    out: &mut impl Write,
) {
    let first_seq = log.next_seq() - log.open_events() as u64;
    if log.open_events() == 0 || !log.submit(ring, true).expect("child: submit") {
        return;
    }
    ring.flush().expect("child: flush the ring");
    in_flight.push_back(log.next_seq());
    if in_flight.len() >= 2 {
        assert!(
            log.batches_in_flight(),
            "child: the log lost track of its batches"
        );
        writeln!(out, "pipelined {} {first_seq}", in_flight.len()).unwrap();
    }
}

/// What one child run printed.
#[derive(Debug, Default)]
struct RunOutput {
    /// The log's next seq when the child opened it.
    open: Option<u64>,
    /// Acknowledged records: (seq, crc32c of the payload), in order.
    acks: Vec<(u64, u32)>,
    /// Submits that left two or more batches in flight.
    pipelined: u32,
}

/// Kills (SIGKILL) and reaps the child when dropped, so a failing assertion never leaves it
/// running.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The data dir: removed when the test passes, kept (and its path printed) when it fails.
struct DataDir(PathBuf);

impl Drop for DataDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "crash_mid_pipeline: data dir kept for inspection: {}",
                self.0.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Runs the child once and SIGKILLs it `after` its first acknowledgement (so every run is
/// killed mid-pipeline however slow the machine is); returns what it printed.
fn run_and_kill(dir: &Path, run: u32, after: Duration) -> RunOutput {
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            CHILD,
            "--nocapture",
            "--test-threads=1",
        ])
        .env(DIR_ENV, dir)
        .env(RUN_ENV, run.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let stdout = child.0.stdout.take().unwrap();
    let mut stderr = child.0.stderr.take().unwrap();
    let errors = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let (first_ack, first_ack_seen) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut out = RunOutput::default();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let f: Vec<&str> = line.split(' ').collect();
            match f[..] {
                ["open", n] => out.open = n.parse().ok(),
                ["pipelined", _, _] => out.pipelined += 1,
                ["ack", q, c] => {
                    if let (Ok(q), Ok(c)) = (q.parse(), c.parse()) {
                        if out.acks.is_empty() {
                            let _ = first_ack.send(());
                        }
                        out.acks.push((q, c));
                    }
                }
                _ => {}
            }
        }
        out
    });
    let started = first_ack_seen.recv_timeout(Duration::from_secs(30));
    if started.is_err() {
        drop(child);
        panic!(
            "run {run}: the child acknowledged nothing within 30 s; its stderr:\n{}",
            errors.join().unwrap()
        );
    }
    std::thread::sleep(after);
    child.0.kill().unwrap(); // SIGKILL
    let status = child.0.wait().unwrap();
    let out = reader.join().unwrap();
    let errors = errors.join().unwrap();
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "run {run}: the child must die of our SIGKILL, not on its own ({status}); its \
         stderr:\n{errors}"
    );
    out
}

/// Calls `f(seq, payload)` for every record of the log from `from` on, in order.
fn for_each_record(log: &mut Log, run: u32, mut from: u64, mut f: impl FnMut(u64, &[u8])) {
    loop {
        let recs = log.read(from, 4096, 1 << 20).unwrap_or_else(|e| {
            panic!("after kill {run}: reading from seq {from} failed (garbage served?): {e}")
        });
        let Some(last) = recs.last() else {
            return;
        };
        from = last.seq + 1;
        for r in &recs {
            f(r.seq, &r.payload);
        }
    }
}

#[test]
fn kill_mid_pipeline_keeps_every_acknowledged_record() {
    let kills: u32 = std::env::var("NET_PIPELINE_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let seed: u64 = std::env::var("NET_PIPELINE_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
            (now.as_nanos() as u64 ^ u64::from(std::process::id()) << 32) | 1
        });
    let dir = DataDir(
        std::env::temp_dir().join(format!("crash-mid-pipeline-{}-{seed}", std::process::id())),
    );
    std::fs::create_dir_all(&dir.0).unwrap();
    eprintln!(
        "crash_mid_pipeline: {kills} kills, NET_PIPELINE_SEED={seed}, data dir {}",
        dir.0.display()
    );
    let started = Instant::now();
    let mut rng = Rng(seed);
    // Every record acknowledged by any run: seq -> crc32c of its payload.
    let mut acked: HashMap<u64, u32> = HashMap::new();
    // crc32c of every record stored after the last clean close, by seq.
    let mut stored: Vec<u32> = Vec::new();
    let (mut pipelined_runs, mut pipelined_total, mut torn_tails, mut cut_bytes) = (0, 0, 0, 0);
    for run in 0..kills {
        let after = Duration::from_millis(rng.next() % 101);
        let out = run_and_kill(&dir.0, run, after);
        let start = stored.len() as u64;
        assert_eq!(
            out.open,
            Some(start),
            "run {run}: the child must open the log where the last clean close left it"
        );
        pipelined_runs += u32::from(out.pipelined > 0);
        pipelined_total += out.pipelined;
        for (i, &(seq, crc)) in out.acks.iter().enumerate() {
            assert_eq!(
                seq,
                start + i as u64,
                "run {run}: acknowledgements must be contiguous from where the run began"
            );
            assert!(
                acked.insert(seq, crc).is_none(),
                "run {run}: seq {seq} acknowledged twice"
            );
        }
        let acked_end = start + out.acks.len() as u64;

        let (mut log, recovery) = Log::open(&dir.0, cfg()).unwrap_or_else(|e: StorageError| {
            panic!(
                "kill {run} (NET_PIPELINE_SEED={seed}, killed {after:?} after the first \
                 acknowledgement): recovery refused what a crash left: {e}"
            )
        });
        torn_tails += u32::from(recovery.torn_tail);
        cut_bytes += recovery.dat_bytes_cut;
        // A crash can only touch the tail: most kills re-read the last segment or so; every
        // tenth, and the last, re-read the whole log.
        let full = run % 10 == 9 || run + 1 == kills;
        let from = if full {
            log.first_seq()
        } else {
            start.saturating_sub(RECHECK_RECORDS).max(log.first_seq())
        };
        let mut end = from;
        for_each_record(&mut log, run, from, |seq, p| {
            assert_eq!(
                seq, end,
                "after kill {run}: sequence numbers must be contiguous (reading from {from})"
            );
            end += 1;
            let writer = payload_run(seq, p).unwrap_or_else(|why| {
                panic!("after kill {run}: seq {seq} is not a record any run wrote: {why}")
            });
            let crc = crc32c::crc32c(p);
            if let Some(&before) = stored.get(seq as usize) {
                assert_eq!(
                    crc, before,
                    "after kill {run}: seq {seq} changed, though the log was closed cleanly \
                     after it was stored"
                );
            } else {
                assert_eq!(
                    writer, run,
                    "after kill {run}: seq {seq} is past the last clean close, so this run \
                     wrote it"
                );
                stored.push(crc);
            }
            if let Some(&want) = acked.get(&seq) {
                assert_eq!(
                    crc, want,
                    "after kill {run}: acknowledged seq {seq} is not byte for byte what was \
                     appended"
                );
            }
        });
        assert!(
            end >= acked_end,
            "after kill {run}: acknowledged records {end}..{acked_end} are lost (recovery: \
             {recovery:?}; NET_PIPELINE_SEED={seed}, killed {after:?} after the first \
             acknowledgement)"
        );
        assert_eq!(
            end,
            stored.len() as u64,
            "after kill {run}: records {end}..{} of earlier runs, stored when the log was last \
             closed cleanly, are lost",
            stored.len()
        );
        assert_eq!(
            log.next_seq(),
            end,
            "after kill {run}: the log continues right after its last record"
        );
        log.close()
            .unwrap_or_else(|e| panic!("after kill {run}: close failed: {e}"));
    }
    eprintln!(
        "crash_mid_pipeline: survived {kills} kills in {:.1?}: {} records stored, {} \
         acknowledged, {torn_tails} torn tails cut ({cut_bytes} bytes); two batches in flight \
         {pipelined_total} times, in {pipelined_runs} of {kills} runs",
        started.elapsed(),
        stored.len(),
        acked.len(),
    );
    assert!(
        pipelined_runs > 0,
        "no run ever had two batches in flight: the test did not exercise the pipeline"
    );
}
