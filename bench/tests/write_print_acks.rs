//! `net-bench write --print-acks` as a crash harness uses it: killed with SIGKILL mid-run,
//! every event it acknowledged is in the data dir with the payload it had (same IEEE CRC-32);
//! left to finish, it acknowledges exactly the events asked for, and a second run on the same
//! data dir acknowledges only its own events, continuing each shard's sequence.

use net_storage::Log;
use net_storage::verify::{repair_config, shard_dirs};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const EVENTS: u64 = 20_000;

/// Send rate of the run that is killed: 20,000 events over about 200 ms, so that a kill
/// 100 ms after the first acknowledgement lands while events are still being written.
const KILLED_RATE_PER_S: u64 = 100_000;

/// How long after its first acknowledgement the writer is killed.
const KILL_AFTER: Duration = Duration::from_millis(100);

/// Longest wait for the writer's first acknowledgement.
const FIRST_ACK_TIMEOUT: Duration = Duration::from_secs(60);

/// (shard, seq) -> CRC-32 of the payload.
type Acks = BTreeMap<(u16, u64), u32>;

/// Starts the writer on `dir`, paced at `rate_per_s` when given.
fn writer(dir: &Path, rate_per_s: Option<u64>) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_net-bench"));
    command
        .args(["write", "--fsync", "every_batch", "--print-acks"])
        .args(["--events", &EVENTS.to_string(), "--data-dir"])
        .arg(dir);
    if let Some(rate) = rate_per_s {
        command.args(["--rate", &rate.to_string()]);
    }
    command
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the net-bench binary starts")
}

/// Parses one ack line, `{"shard":S,"seq":N,"crc32":C}`; `None` if it is not one (the last
/// line of a killed writer may be cut short).
fn parse_ack(line: &str) -> Option<((u16, u64), u32)> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let field = |name: &str| v[name].as_u64();
    let shard = u16::try_from(field("shard")?).ok()?;
    let crc = u32::try_from(field("crc32")?).ok()?;
    Some(((shard, field("seq")?), crc))
}

/// Reads ack lines on a thread, signalling the first one; joins to every line read.
fn read_acks(stdout: ChildStdout) -> (mpsc::Receiver<()>, std::thread::JoinHandle<Acks>) {
    let (first, first_rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut acks = Acks::new();
        let mut cut: Option<String> = None;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // Only the very last line may be cut short by the kill.
            assert!(cut.is_none(), "a malformed ack line before others: {cut:?}");
            let Some((id, crc)) = parse_ack(&line) else {
                cut = Some(line);
                continue;
            };
            assert!(acks.insert(id, crc).is_none(), "{id:?} acknowledged twice");
            let _ = first.send(());
        }
        acks
    });
    (first_rx, reader)
}

/// Every record stored under `dir`, opened as `net-admin` opens it (recovering torn tails).
fn stored(dir: &Path) -> Acks {
    let mut all = Acks::new();
    for shard in shard_dirs(dir).expect("the data dir holds shards") {
        let (mut log, _) = Log::open(&shard.dir, repair_config(shard.shard)).expect("log opens");
        let mut next = log.first_seq();
        loop {
            let records = log.read(next, 65_536, 16 << 20).expect("log reads");
            if records.is_empty() {
                break;
            }
            for r in records {
                assert_eq!(r.seq, next, "shard {} is contiguous", shard.shard);
                all.insert((shard.shard, r.seq), crc32fast::hash(&r.payload));
                next += 1;
            }
        }
    }
    all
}

fn assert_all_stored(acks: &Acks, stored: &Acks) {
    for (id, crc) in acks {
        assert_eq!(
            stored.get(id),
            Some(crc),
            "acknowledged event {id:?} lost or changed"
        );
    }
}

#[test]
fn every_event_acknowledged_before_a_sigkill_is_stored_intact() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = writer(dir.path(), Some(KILLED_RATE_PER_S));
    let (first, reader) = read_acks(child.stdout.take().unwrap());
    first
        .recv_timeout(FIRST_ACK_TIMEOUT)
        .expect("the writer acknowledges events");
    std::thread::sleep(KILL_AFTER);
    let pid = i32::try_from(child.id()).unwrap();
    // SAFETY: kill(2) on the pid of a child we spawned and have not reaped yet.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    child.wait().unwrap();
    let acks = reader.join().unwrap();
    assert!(!acks.is_empty() && acks.len() as u64 <= EVENTS);
    eprintln!(
        "killed after {} of {EVENTS} events were acknowledged",
        acks.len()
    );
    assert_all_stored(&acks, &stored(dir.path()));
}

#[test]
fn a_finished_run_acknowledges_each_event_once_and_a_rerun_continues() {
    let dir = tempfile::tempdir().unwrap();
    let mut runs = Vec::new();
    for _ in 0..2 {
        let mut child = writer(dir.path(), None);
        let (_, reader) = read_acks(child.stdout.take().unwrap());
        assert!(child.wait().unwrap().success(), "the writer exits 0");
        let acks = reader.join().unwrap();
        assert_eq!(acks.len() as u64, EVENTS, "one ack line per event");
        runs.push(acks);
    }
    let first: BTreeSet<_> = runs[0].keys().collect();
    assert!(
        runs[1].keys().all(|id| !first.contains(id)),
        "only new events acknowledged"
    );
    let stored = stored(dir.path());
    assert_eq!(stored.len() as u64, 2 * EVENTS);
    for acks in &runs {
        assert_all_stored(acks, &stored);
    }
}
