//! Torn and garbled tails: cut or damage the end of the last `.dat` or `.idx` at random
//! offsets, reopen, and check that recovery keeps exactly the valid prefix, serves no garbage,
//! rebuilds the index, and that its repair is durable (a second open finds nothing to fix).
#![allow(clippy::cast_possible_truncation)]

use std::path::Path;

use net_storage::segment::{dat_path, idx_path, list_segments};
use net_storage::{Log, LogConfig};

const RECORDS: u64 = 300;

fn cfg() -> LogConfig {
    LogConfig {
        shard: 0,
        segment_bytes: 16 << 10,
        batch_bytes_max: 8 << 10,
        batch_events_max: 50,
    }
}

fn payload(seq: u64) -> Vec<u8> {
    (0..(seq % 200) as usize + 1)
        .map(|i| (seq as usize * 7 + i) as u8)
        .collect()
}

fn build(dir: &Path) {
    let (mut log, _) = Log::open(dir, cfg()).unwrap();
    for seq in 0..RECORDS {
        log.append(seq, &payload(seq)).unwrap();
    }
    log.flush(false).unwrap();
    log.close().unwrap();
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

/// Applies damage kind `kind` to the last segment; returns the first sequence number whose
/// record may be lost (records below it must survive).
fn damage(dir: &Path, kind: u64, rng: &mut Rng) -> u64 {
    let last = *list_segments(dir).unwrap().last().unwrap();
    let dat = dat_path(dir, last);
    let idx = idx_path(dir, last);
    let mut d = std::fs::read(&dat).unwrap();
    let mut x = std::fs::read(&idx).unwrap();
    let count = x.len() as u64 / 24;
    let offset_of = |i: u64, x: &[u8]| {
        u64::from_le_bytes(
            x[i as usize * 24 + 8..i as usize * 24 + 16]
                .try_into()
                .unwrap(),
        )
    };
    let first_lost_at = |cut: u64, x: &[u8]| {
        (0..count)
            .find(|&i| offset_of(i, x) + 40 > cut)
            .map_or(RECORDS, |i| last + i)
    };
    match kind {
        0 => {
            let cut = 4096 + rng.below(d.len() as u64 - 4096);
            d.truncate(cut as usize);
            let lost = (0..count).find(|&i| {
                let len = u64::from(u32::from_le_bytes(
                    x[i as usize * 24 + 16..i as usize * 24 + 20]
                        .try_into()
                        .unwrap(),
                ));
                offset_of(i, &x) + len > cut
            });
            std::fs::write(&dat, &d).unwrap();
            return lost.map_or(RECORDS, |i| last + i);
        }
        1 => {
            let at = 4096 + rng.below(d.len() as u64 - 4096);
            d[at as usize] ^= 1 << rng.below(8);
            std::fs::write(&dat, &d).unwrap();
            return first_lost_at(at, &x).min(
                (0..count)
                    .rev()
                    .find(|&i| offset_of(i, &x) <= at)
                    .map_or(RECORDS, |i| last + i),
            );
        }
        2 => {
            x.truncate(rng.below(x.len() as u64) as usize);
            std::fs::write(&idx, &x).unwrap();
        }
        3 => {
            let at = rng.below(x.len() as u64) as usize;
            x[at] ^= 0x5A;
            std::fs::write(&idx, &x).unwrap();
        }
        4 => {
            d.extend((0..rng.below(5000) + 1).map(|i| (i * 131 + 7) as u8));
            std::fs::write(&dat, &d).unwrap();
        }
        _ => {
            x.extend(std::iter::repeat_n(0xEE, rng.below(100) as usize + 1));
            std::fs::write(&idx, &x).unwrap();
        }
    }
    RECORDS
}

#[test]
fn recovery_keeps_the_valid_prefix_under_random_damage() {
    let reference = tempfile::tempdir().unwrap();
    build(reference.path());
    assert!(list_segments(reference.path()).unwrap().len() > 2);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for round in 0..240 {
        let kind = round % 6;
        let dir = tempfile::tempdir().unwrap();
        copy_dir(reference.path(), dir.path());
        let keep_below = damage(dir.path(), kind, &mut rng);
        let (mut log, rec) = Log::open(dir.path(), cfg()).unwrap();
        let got = read_all(&mut log);
        assert!(
            got.len() as u64 >= keep_below.min(RECORDS),
            "round {round} kind {kind}: lost records below {keep_below}: kept {}",
            got.len()
        );
        for (i, (seq, p)) in got.iter().enumerate() {
            assert_eq!(*seq, i as u64, "round {round}: contiguous");
            assert_eq!(
                p,
                &payload(*seq),
                "round {round} kind {kind}: record {seq} served altered"
            );
        }
        if kind >= 2 && kind != 4 {
            assert_eq!(
                got.len() as u64,
                RECORDS,
                "round {round}: index damage loses nothing"
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
