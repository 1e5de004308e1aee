//! Snapshots pair a state with the sequence number it was folded to; restore loads the newest
//! good one and replays only the log after it, equals a full replay, and falls back (to an
//! older snapshot, then to a full replay) when one is damaged — saying so.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Seen, WAIT, record, shut, start_bus, with_snapshots};
use net_cortex::{Cortex, CortexConfig, FnFold, FoldError, FoldEvent, fold_fn, read_snapshot};
use net_engine::{Bus, ShardId};

type SeenFold = FnFold<Seen, fn(&mut Seen, &FoldEvent<'_>) -> Result<(), FoldError>>;

fn seen_fold() -> SeenFold {
    fold_fn(record as fn(&mut Seen, &FoldEvent<'_>) -> Result<(), FoldError>)
}

fn send(bus: &Bus, shards: usize, from: u32, n: u32) {
    let mut p = bus.producer().unwrap();
    for i in from..from + n {
        p.send_to(i as usize % shards, format!("e{i}").as_bytes())
            .unwrap();
    }
    bus.flush().unwrap();
}

fn no_shutdown_snapshot(mut c: CortexConfig) -> CortexConfig {
    if let Some(s) = &mut c.snapshot {
        s.on_shutdown = false;
    }
    c
}

fn states(c: &Cortex<SeenFold>) -> Vec<Seen> {
    c.views().iter().map(|v| v.state().clone()).collect()
}

fn snapshot_files(dir: &Path, shard: u16) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join(format!("snapshots/shard-{shard:04}")))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.retain(|p| p.extension().is_some_and(|e| e == "snap"));
    v.sort();
    v
}

#[test]
fn restore_from_a_snapshot_equals_a_full_replay_and_replays_only_the_tail() {
    let dir = tempfile::tempdir().unwrap();
    let config = no_shutdown_snapshot(with_snapshots("seen", dir.path()));
    let before = {
        let bus = start_bus(dir.path(), 2);
        let cortex = Cortex::start(&bus, seen_fold(), config.clone()).unwrap();
        send(&bus, 2, 0, 2000);
        assert!(cortex.wait_caught_up(WAIT));
        let written = cortex.snapshot().unwrap();
        assert_eq!(written.len(), 2);
        assert!(written.iter().all(|w| w.end == 1000), "{written:?}");
        send(&bus, 2, 2000, 1000);
        assert!(cortex.wait_caught_up(WAIT));
        let s = states(&cortex);
        drop(cortex);
        shut(bus);
        s
    };
    let bus = start_bus(dir.path(), 2);
    let restored = Cortex::start(&bus, seen_fold(), config).unwrap();
    for r in restored.restore_reports() {
        let (_, end) = r.snapshot.clone().expect("a snapshot was used");
        assert_eq!(end, 1000);
        assert!(!r.full_replay && !r.fell_back(), "{r:?}");
        assert_eq!(r.replayed_events, 500, "only the log after the snapshot");
    }
    assert_eq!(states(&restored), before);
    let replayed = Cortex::start(&bus, seen_fold(), CortexConfig::new("seen")).unwrap();
    for r in replayed.restore_reports() {
        assert!(r.full_replay);
        assert_eq!(r.replayed_events, 1500);
    }
    assert_eq!(states(&replayed), before, "restore equals full replay");
    drop((restored, replayed));
    shut(bus);
}

#[test]
fn every_snapshot_pairs_its_state_with_the_seq_it_was_folded_to() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = no_shutdown_snapshot(with_snapshots("seen", dir.path()));
    config.snapshot.as_mut().unwrap().keep = 64;
    let bus = start_bus(dir.path(), 1);
    let cortex = Cortex::start(&bus, seen_fold(), config).unwrap();
    let mut written = Vec::new();
    std::thread::scope(|scope| {
        let sender = scope.spawn(|| send(&bus, 1, 0, 20_000));
        // Snapshots taken while events keep landing.
        while !sender.is_finished() && written.len() < 40 {
            written.extend(cortex.snapshot().unwrap());
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    assert!(cortex.wait_caught_up(WAIT));
    written.extend(cortex.snapshot().unwrap());
    for w in &written {
        let (end, state): (u64, Seen) = read_snapshot(&w.path, "seen", 0).unwrap();
        assert_eq!(end, w.end);
        assert_eq!(
            state.0.len() as u64,
            end,
            "{}: every event below end, none past",
            w.path.display()
        );
        assert_eq!(state.0.last().map(|(s, _)| s + 1).unwrap_or(0), end);
    }
    assert_eq!(written.last().unwrap().end, 20_000);
    drop(cortex);
    shut(bus);
}

/// Three snapshots of shard 0 (ends 100, 200, 300), then 50 more events; the bus is stopped.
fn three_snapshots(dir: &Path, config: &CortexConfig) -> Seen {
    let bus = start_bus(dir, 1);
    let cortex = Cortex::start(&bus, seen_fold(), config.clone()).unwrap();
    for k in 0..3 {
        send(&bus, 1, k * 100, 100);
        assert!(cortex.wait_caught_up(WAIT));
        cortex.snapshot().unwrap();
    }
    send(&bus, 1, 300, 50);
    assert!(cortex.wait_caught_up(WAIT));
    let full = cortex.view(ShardId(0)).unwrap().state().clone();
    drop(cortex);
    shut(bus);
    full
}

fn restart(dir: &Path, config: &CortexConfig) -> (Seen, net_cortex::RestoreReport) {
    let bus = start_bus(dir, 1);
    let cortex = Cortex::start(&bus, seen_fold(), config.clone()).unwrap();
    let state = cortex.view(ShardId(0)).unwrap().state().clone();
    let report = cortex.restore_reports()[0].clone();
    assert_eq!(
        cortex.stats().shards[0].restore,
        report,
        "the stats say it too"
    );
    drop(cortex);
    shut(bus);
    (state, report)
}

fn flip_byte(path: &Path, at: usize) {
    let mut b = std::fs::read(path).unwrap();
    b[at] ^= 0x40;
    std::fs::write(path, b).unwrap();
}

fn truncate(path: &Path, by: usize) {
    let b = std::fs::read(path).unwrap();
    std::fs::write(path, &b[..b.len() - by]).unwrap();
}

#[test]
fn a_damaged_snapshot_falls_back_to_the_previous_one_then_to_a_full_replay_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let config = no_shutdown_snapshot(with_snapshots("seen", dir.path()));
    let full = three_snapshots(dir.path(), &config);
    let files = snapshot_files(dir.path(), 0);
    assert_eq!(files.len(), 3);

    let (state, report) = restart(dir.path(), &config);
    assert_eq!(report.snapshot.as_ref().unwrap().1, 300);
    assert_eq!(state, full);

    // A flipped bit in the newest one's state bytes: the previous one is used.
    let len = std::fs::read(&files[2]).unwrap().len();
    flip_byte(&files[2], len / 2);
    let (state, report) = restart(dir.path(), &config);
    assert_eq!(report.snapshot.as_ref().unwrap().1, 200);
    assert_eq!(report.rejected.len(), 1);
    assert_eq!(report.rejected[0].path, files[2]);
    assert!(report.rejected[0].reason.contains("checksum"), "{report:?}");
    assert!(report.fell_back() && !report.full_replay);
    assert_eq!(report.replayed_events, 150);
    assert_eq!(state, full, "the fallback still restores everything");

    // The one before it truncated: the oldest is used.
    truncate(&files[1], 5);
    let (state, report) = restart(dir.path(), &config);
    assert_eq!(report.snapshot.as_ref().unwrap().1, 100);
    assert_eq!(report.rejected.len(), 2);
    assert_eq!(state, full);

    // The sequence number field of the oldest flipped (the checksum covers it): full replay.
    // Header: magic 8, format 4, shard 2, name length 2, name "seen" 4; then `end`.
    flip_byte(&files[0], 20);
    let (state, report) = restart(dir.path(), &config);
    assert!(report.full_replay && report.snapshot.is_none());
    assert_eq!(report.rejected.len(), 3);
    assert_eq!(report.replayed_events, 350);
    assert_eq!(state, full);
}

#[test]
fn a_snapshot_of_another_fold_or_shard_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let config = no_shutdown_snapshot(with_snapshots("seen", dir.path()));
    three_snapshots(dir.path(), &config);
    let files = snapshot_files(dir.path(), 0);
    let err = read_snapshot::<Seen>(&files[0], "other", 0).unwrap_err();
    assert!(err.0.contains("not \"other\""), "{err}");
    let err = read_snapshot::<Seen>(&files[0], "seen", 1).unwrap_err();
    assert!(err.0.contains("not shard 1"), "{err}");
}

#[test]
fn cadence_and_shutdown_snapshots_are_written_and_old_ones_pruned() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = with_snapshots("seen", dir.path());
    {
        let s = config.snapshot.as_mut().unwrap();
        s.every_events = 500;
        s.keep = 2;
    }
    let bus = start_bus(dir.path(), 1);
    let cortex = Cortex::start(&bus, seen_fold(), config.clone()).unwrap();
    for k in 0..4 {
        send(&bus, 1, k * 600, 600);
        assert!(cortex.wait_caught_up(WAIT));
    }
    let deadline = Instant::now() + WAIT;
    while cortex.stats().shards[0].snapshots_written < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(cortex.stats().shards[0].snapshots_written >= 2);
    let done = cortex.shutdown(WAIT);
    assert!(
        done.caught_up && done.snapshot_errors.is_empty(),
        "{done:?}"
    );
    assert_eq!(done.snapshots.len(), 1);
    assert_eq!(
        done.snapshots[0].end, 2400,
        "the shutdown snapshot has everything"
    );
    assert!(
        snapshot_files(dir.path(), 0).len() <= 2,
        "only `keep` are kept"
    );
    shut(bus);
    let (_, report) = restart(dir.path(), &config);
    assert_eq!(report.snapshot.unwrap().1, 2400);
    assert_eq!(report.replayed_events, 0);
}

#[test]
fn a_snapshot_beyond_the_log_is_refused_and_says_so() {
    // Snapshots of one log, then a fresh log (another data dir) with the same snapshot dir:
    // restoring them would count events this log never had as folded.
    let dir = tempfile::tempdir().unwrap();
    let config = no_shutdown_snapshot(with_snapshots("seen", dir.path()));
    three_snapshots(dir.path(), &config);
    let other = tempfile::tempdir().unwrap();
    let bus = start_bus(other.path(), 1);
    send(&bus, 1, 0, 150); // this log ends at 150: the snapshots at 200 and 300 are beyond it
    let cortex = Cortex::start(&bus, seen_fold(), config).unwrap();
    let report = &cortex.restore_reports()[0];
    assert_eq!(report.snapshot.as_ref().unwrap().1, 100);
    assert_eq!(report.rejected.len(), 2);
    assert!(
        report
            .rejected
            .iter()
            .all(|r| r.reason.contains("beyond the log's end 150")),
        "{report:?}"
    );
    // New events are folded, not taken for folded already.
    send(&bus, 1, 150, 10);
    assert!(cortex.wait_for_seq(ShardId(0), 159, WAIT));
    drop(cortex);
    shut(bus);
}

#[test]
fn a_snapshot_dir_has_one_owner() {
    let dir = tempfile::tempdir().unwrap();
    let config = with_snapshots("seen", dir.path());
    let bus = start_bus(dir.path(), 1);
    let first = Cortex::start(&bus, seen_fold(), config.clone()).unwrap();
    let err = Cortex::start(&bus, seen_fold(), config.clone()).unwrap_err();
    assert!(err.to_string().contains("in use"), "{err}");
    drop(first);
    let again = Cortex::start(&bus, seen_fold(), config).unwrap();
    drop(again);
    shut(bus);
}
