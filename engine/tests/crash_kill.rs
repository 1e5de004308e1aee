//! Crash test: a child process appends with `fsync: every_batch` and reports every event the
//! bus acknowledged as durable; the parent SIGKILLs it at random moments, reopens the data
//! dir, and checks that every acknowledged event is present byte for byte, that sequences are
//! contiguous, and that no garbage record is served.
//!
//! The child is this test binary re-run with `--ignored --exact child_writer` and
//! `NET_CRASH_DIR` set. `NET_CRASH_KILLS` sets the number of kills (default 50; use 1000+
//! locally), `NET_CRASH_SEED` replays a run.
#![allow(clippy::cast_possible_truncation)]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use net_engine::{Bus, Config, Cursor, FsyncPolicy, Seq};

const SHARDS: usize = 2;

fn config(dir: &std::path::Path) -> Config {
    let mut c = common::config(dir, SHARDS);
    c.storage.fsync = FsyncPolicy::EveryBatch;
    c.storage.segment_bytes = 256 << 10; // several segment rolls per run
    c
}

/// Payload of event `n` of producer `p` in run `run`: self-describing, variable length.
fn payload(run: u32, p: u32, n: u64) -> Vec<u8> {
    let mut v = common::payload(run * 16 + p, n, 20 + (n % 300) as usize);
    v[12] = 0xAB;
    v
}

/// The child: writes until killed, printing `shard seq crc` for every durable event.
#[test]
#[ignore = "run by crash_kill_preserves_every_acknowledged_event as its child process"]
fn child_writer() {
    let Ok(dir) = std::env::var("NET_CRASH_DIR") else {
        return;
    };
    let run: u32 = std::env::var("NET_CRASH_RUN").unwrap().parse().unwrap();
    let bus = Bus::start(config(dir.as_ref())).unwrap();
    // Start reading after what earlier runs stored: only this run's events are reported.
    let mut cursor = Cursor::start();
    for s in bus.stats().shards {
        cursor.set(s.shard, Seq(s.persisted_end)).unwrap();
    }
    for p in 0..2u32 {
        let mut prod = bus.producer().unwrap();
        std::thread::spawn(move || {
            for n in 0u64.. {
                if prod.send(&n.to_le_bytes(), &payload(run, p, n)).is_err() {
                    return;
                }
                if n % 64 == 0 {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        });
    }
    let mut out = std::io::stdout().lock();
    // libtest has printed `test child_writer ... ` without a newline: end that line, or the
    // first acknowledgement would be glued to it and never checked.
    writeln!(out).unwrap();
    loop {
        // Under every_batch a poll serves only records whose fdatasync completed.
        let resp = bus.poll(&cursor, 4096).unwrap();
        for e in &resp.events {
            writeln!(
                out,
                "{} {} {}",
                e.id.shard.0,
                e.id.seq.0,
                crc32c::crc32c(&e.payload)
            )
            .unwrap();
        }
        out.flush().unwrap();
        cursor = resp.next;
        if resp.events.is_empty() {
            std::thread::sleep(Duration::from_millis(1));
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

/// Runs the child once, kills it `after` its first acknowledgement (so that every run is
/// killed mid-write however slow the machine is), and returns the acknowledged events.
fn run_and_kill(dir: &std::path::Path, run: u32, after: Duration) -> Vec<(u16, u64, u32)> {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "child_writer",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("NET_CRASH_DIR", dir)
        .env("NET_CRASH_RUN", run.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (first_ack, first_ack_seen) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut acks = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let f: Vec<&str> = line.split(' ').collect();
            if f.len() == 3
                && let (Ok(s), Ok(q), Ok(c)) = (f[0].parse(), f[1].parse(), f[2].parse())
            {
                if acks.is_empty() {
                    let _ = first_ack.send(());
                }
                acks.push((s, q, c));
            }
        }
        acks
    });
    let started = first_ack_seen.recv_timeout(Duration::from_secs(30));
    assert!(
        started.is_ok(),
        "run {run}: the writer acknowledged nothing within 30 s"
    );
    std::thread::sleep(after);
    // SAFETY: kill(2) with a pid we spawned; SIGKILL cannot be caught.
    unsafe { libc::kill(i32::try_from(child.id()).unwrap(), libc::SIGKILL) };
    child.wait().unwrap();
    reader.join().unwrap()
}

/// Reads every stored event of every shard: (shard, seq) -> crc, checking contiguity.
fn read_all(bus: &Bus) -> BTreeMap<(u16, u64), u32> {
    let mut all = BTreeMap::new();
    let mut cursor = Cursor::start();
    loop {
        let resp = bus.poll(&cursor, 50_000).unwrap();
        assert!(
            resp.failed_shards.is_empty(),
            "garbage served: {:?}",
            resp.failed_shards
        );
        if resp.events.is_empty() {
            break;
        }
        for e in &resp.events {
            assert_eq!(e.payload[12], 0xAB, "not a payload the child wrote");
            all.insert((e.id.shard.0, e.id.seq.0), crc32c::crc32c(&e.payload));
        }
        cursor = resp.next;
    }
    for s in 0..SHARDS as u16 {
        let seqs: Vec<u64> = all
            .range((s, 0)..=(s, u64::MAX))
            .map(|(&(_, q), _)| q)
            .collect();
        assert!(
            seqs.iter().enumerate().all(|(i, &q)| q == i as u64),
            "shard {s}: sequence gap"
        );
    }
    all
}

#[test]
fn crash_kill_preserves_every_acknowledged_event() {
    let kills: u32 = std::env::var("NET_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let seed = std::env::var("NET_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            u64::from(std::process::id()) << 20 ^ Instant::now().elapsed().as_nanos() as u64 | 1
        });
    eprintln!("crash test: {kills} kills, NET_CRASH_SEED={seed}");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut acked: HashMap<(u16, u64), u32> = HashMap::new();
    let mut acked_runs = 0;
    for run in 0..kills {
        let after = Duration::from_millis(rng.next() % 100);
        let acks = run_and_kill(dir.path(), run, after);
        acked_runs += u32::from(!acks.is_empty());
        for (s, q, c) in acks {
            assert!(
                acked.insert((s, q), c).is_none(),
                "event {s}:{q} acknowledged twice"
            );
        }
        if run % 10 == 9 || run + 1 == kills {
            let bus = Bus::start(config(dir.path())).unwrap();
            let stored = read_all(&bus);
            for (id, crc) in &acked {
                assert_eq!(
                    stored.get(id),
                    Some(crc),
                    "acknowledged event {id:?} lost or changed after kill {run}"
                );
            }
            assert!(!bus.shutdown(Duration::from_secs(5)).lossy);
        }
    }
    assert!(
        acked_runs == kills,
        "every run acknowledged events ({acked_runs} of {kills})"
    );
    eprintln!(
        "crash test: survived {kills} kills with {} acknowledged events intact",
        acked.len()
    );
}
