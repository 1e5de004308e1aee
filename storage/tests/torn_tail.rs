//! Torn tails and damage: what a crash can leave is repaired, keeping exactly the valid
//! prefix; what it cannot leave (damage to records a later batch declares acknowledged) is
//! refused and left untouched.
//!
//! The crash scenario builds a log that is never synced nor closed, so no record is
//! acknowledged and any damage to its last segment must be a torn tail: cut, durably. The
//! acknowledged scenario syncs every batch, so each batch's stamp covers the ones before it:
//! damage anywhere but the last batch is corruption.
#![allow(clippy::cast_possible_truncation)]

use std::path::Path;

use net_storage::scan;
use net_storage::segment::{dat_path, idx_path, list_segments};
use net_storage::{Log, LogConfig, StorageError};

const RECORDS: u64 = 300;

fn cfg() -> LogConfig {
    LogConfig {
        shard: 0,
        segment_bytes: 16 << 10,
        batch_bytes_max: 8 << 10,
        batch_events_max: 50,
        ack: net_storage::Ack::Synced,
        preallocate: true,
    }
}

fn payload(seq: u64) -> Vec<u8> {
    (0..(seq % 200) as usize + 1)
        .map(|i| (seq as usize * 7 + i) as u8)
        .collect()
}

/// A log of [`RECORDS`] records, left as a crash leaves it; with `sync_every`, every that many
/// records are synced (acknowledged).
fn build(dir: &Path, sync_every: Option<u64>) {
    let (mut log, _) = Log::open(dir, cfg()).unwrap();
    for seq in 0..RECORDS {
        log.append(seq, &payload(seq)).unwrap();
        if sync_every.is_some_and(|n| (seq + 1) % n == 0) {
            log.flush(true).unwrap();
        }
    }
    log.flush(false).unwrap();
    std::mem::forget(log); // a crash: no close
}

fn read_all(log: &mut Log) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut from = 0;
    loop {
        let recs = log.read(from, 64, 1 << 20).expect("no garbage is served");
        if recs.is_empty() {
            return out;
        }
        for r in recs {
            from = r.seq + 1;
            out.push((r.seq, r.payload.to_vec()));
        }
    }
}

/// `(seq, offset, len)` of every record of segment `base`.
fn records(dir: &Path, base: u64) -> Vec<(u64, u64, u64)> {
    let bytes = std::fs::read(dat_path(dir, base)).unwrap();
    let mut out = Vec::new();
    scan::scan(
        &bytes[..],
        bytes.len() as u64,
        0,
        base,
        1 << 16,
        &mut |h, at, _| {
            out.push((h.seq, at, h.record_bytes() as u64));
            true
        },
    )
    .unwrap();
    out
}

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

fn copy_dir(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// Applies damage kind `kind`; returns the first sequence number whose record may be lost.
fn damage(dir: &Path, kind: u64, rng: &mut Rng) -> u64 {
    let bases = list_segments(dir).unwrap();
    let last = *bases.last().unwrap();
    let recs = records(dir, last);
    let dat = dat_path(dir, last);
    let mut d = std::fs::read(&dat).unwrap();
    let data_end = recs.last().map_or(4096, |&(_, at, len)| at + len);
    let first_lost = |at: u64| {
        recs.iter()
            .find(|&&(_, off, len)| off + len > at)
            .map_or(RECORDS, |&(seq, _, _)| seq)
    };
    let sealed_idx = idx_path(dir, bases[rng.below(bases.len() as u64 - 1) as usize]);
    let mut x = std::fs::read(&sealed_idx).unwrap();
    match kind {
        0 => {
            let cut = 4096 + rng.below(data_end - 4096);
            d.truncate(cut as usize);
            std::fs::write(&dat, &d).unwrap();
            first_lost(cut)
        }
        1 => {
            let at = 4096 + rng.below(data_end - 4096);
            d[at as usize] ^= 1 << rng.below(8);
            std::fs::write(&dat, &d).unwrap();
            first_lost(at)
        }
        2 => {
            let at = data_end + rng.below(d.len() as u64 - data_end - 200);
            for (i, b) in d[at as usize..at as usize + 100].iter_mut().enumerate() {
                *b = (i * 131 + 7) as u8;
            }
            std::fs::write(&dat, &d).unwrap();
            RECORDS
        }
        3 => {
            let at = rng.below(x.len() as u64) as usize;
            x[at] ^= 0x5A;
            std::fs::write(&sealed_idx, &x).unwrap();
            RECORDS
        }
        4 => {
            x.truncate(rng.below(x.len() as u64) as usize);
            std::fs::write(&sealed_idx, &x).unwrap();
            RECORDS
        }
        _ => {
            let at = (4096 + rng.below(data_end - 4096)) & !511;
            d[at as usize..at as usize + 512].fill(0);
            std::fs::write(&dat, &d).unwrap();
            first_lost(at)
        }
    }
}

#[test]
fn recovery_keeps_the_valid_prefix_under_random_damage() {
    let reference = tempfile::tempdir().unwrap();
    build(reference.path(), None);
    assert!(list_segments(reference.path()).unwrap().len() > 2);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for round in 0..240 {
        let kind = round % 6;
        let dir = tempfile::tempdir().unwrap();
        copy_dir(reference.path(), dir.path());
        let keep_below = damage(dir.path(), kind, &mut rng);
        let (mut log, rec) = Log::open(dir.path(), cfg()).unwrap();
        let got = read_all(&mut log);
        assert_eq!(
            got.len() as u64,
            keep_below,
            "round {round} kind {kind}: exactly the records before the damage are kept"
        );
        for (i, (seq, p)) in got.iter().enumerate() {
            assert_eq!(*seq, i as u64, "round {round}: contiguous");
            assert_eq!(
                p,
                &payload(*seq),
                "round {round} kind {kind}: record {seq} altered"
            );
        }
        assert_eq!(rec.next_seq, got.len() as u64);
        drop(log);
        let (_, again) = Log::open(dir.path(), cfg()).unwrap();
        assert!(
            !again.repaired(),
            "round {round}: the repair was not durable: {again:?}"
        );
    }
}

/// Hardening: a flipped byte in the middle of the active segment used to be taken for a torn
/// tail, and every intact, acknowledged record after it was cut. Now a later batch's stamp
/// says those records were acknowledged: open refuses, names the file and offset, and cuts
/// nothing; damage inside the last batch is still a torn tail.
#[test]
fn damage_before_acknowledged_records_is_refused_and_left_untouched() {
    let reference = tempfile::tempdir().unwrap();
    build(reference.path(), Some(7));
    let last = *list_segments(reference.path()).unwrap().last().unwrap();
    let recs = records(reference.path(), last);
    assert!(
        recs.len() > 20,
        "the last segment holds several synced batches"
    );
    let mut rng = Rng(42);
    for round in 0..40 {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(reference.path(), dir.path());
        // A record well before the last two batches (each at most 7 records).
        let (seq, at, len) = recs[rng.below(recs.len() as u64 - 16) as usize];
        let path = dat_path(dir.path(), last);
        let mut d = std::fs::read(&path).unwrap();
        let flip = at + rng.below(len);
        d[flip as usize] ^= 0x10;
        std::fs::write(&path, &d).unwrap();
        match Log::open(dir.path(), cfg()) {
            Err(StorageError::Corrupt {
                path: p,
                offset,
                what,
            }) => {
                assert_eq!((p, offset), (path.clone(), at), "round {round}");
                assert!(
                    what.contains(&format!("seq {seq} was acknowledged")),
                    "{what}"
                );
            }
            other => panic!("round {round}: damage to seq {seq} must be refused, got {other:?}"),
        }
        assert_eq!(
            std::fs::read(&path).unwrap(),
            d,
            "round {round}: nothing was cut"
        );
    }
    // The very last record is in the last batch: a torn tail, cut.
    let dir = tempfile::tempdir().unwrap();
    copy_dir(reference.path(), dir.path());
    let (seq, at, _) = *recs.last().unwrap();
    let path = dat_path(dir.path(), last);
    let mut d = std::fs::read(&path).unwrap();
    d[at as usize + 40] ^= 0x10;
    std::fs::write(&path, &d).unwrap();
    let (_, rec) = Log::open(dir.path(), cfg()).unwrap();
    assert!(rec.torn_tail && rec.next_seq == seq, "{rec:?}");
}
