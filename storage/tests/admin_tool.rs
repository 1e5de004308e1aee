//! The `net-admin` operator tool: `verify` names every kind of damage by file and offset and
//! passes clean (and crash-padded) data dirs, `dump` returns every record byte for byte and
//! honours its filters, `repair` cuts a torn tail without creating anything and refuses what a
//! crash cannot explain unless told to accept the loss, no garbage file named like a segment
//! makes any of them panic, and the binary's exit codes.
#![allow(clippy::cast_possible_truncation)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::Engine as _;
use net_storage::index::{INDEX_ENTRY_BYTES, IndexEntry};
use net_storage::segment::{self, SEGMENT_HEADER_BYTES, SegmentHeader};
use net_storage::verify::{self, DumpOptions, RepairOptions, RepairOutcome};
use net_storage::{Log, LogConfig, StorageError, record};
use proptest::prelude::*;

const SEGMENT_BYTES: u64 = 64 << 10;
/// Records written per shard by [`build`]: enough for several 64 KiB segments.
const SHARD_RECORDS: [(u16, u64); 2] = [(0, 1500), (1, 800)];

/// Runs the `net-admin` binary with `args`.
fn net_admin<S: AsRef<std::ffi::OsStr>>(args: impl IntoIterator<Item = S>) -> Output {
    Command::new(env!("CARGO_BIN_EXE_net-admin"))
        .args(args)
        .output()
        .unwrap()
}

fn cfg(shard: u16) -> LogConfig {
    LogConfig {
        shard,
        segment_bytes: SEGMENT_BYTES,
        batch_bytes_max: 16 << 10,
        batch_events_max: 64,
        ack: net_storage::Ack::Synced,
        preallocate: true,
    }
}

fn payload(shard: u16, seq: u64) -> Vec<u8> {
    let n = (seq.wrapping_mul(7).wrapping_add(u64::from(shard)) % 200) as usize;
    (0..n)
        .map(|i| {
            (seq as usize)
                .wrapping_mul(31)
                .wrapping_add(i + usize::from(shard) * 7) as u8
        })
        .collect()
}

fn ts(shard: u16, seq: u64) -> u64 {
    seq.wrapping_mul(1000)
        .wrapping_add(1_700_000_000_000_000_000 + u64::from(shard))
}

fn shard_dir(root: &Path, shard: u16) -> PathBuf {
    root.join(format!("shard-{shard:04}"))
}

/// Appends `n` records and writes them.
fn append(log: &mut Log, shard: u16, n: u64) {
    for _ in 0..n {
        let seq = log.next_seq();
        log.append(ts(shard, seq), &payload(shard, seq)).unwrap();
    }
    log.flush(false).unwrap();
}

/// A data dir with [`SHARD_RECORDS`], every log closed cleanly.
fn build() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    for (shard, n) in SHARD_RECORDS {
        let (mut log, _) = Log::open(&shard_dir(root.path(), shard), cfg(shard)).unwrap();
        append(&mut log, shard, n);
        log.close().unwrap();
    }
    root
}

fn segments(root: &Path, shard: u16) -> Vec<u64> {
    segment::list_segments(&shard_dir(root, shard)).unwrap()
}

/// `(seq, offset, len)` of every record of a segment, from its `.dat`.
fn records(root: &Path, shard: u16, base: u64) -> Vec<(u64, u64, u64)> {
    let bytes = std::fs::read(segment::dat_path(&shard_dir(root, shard), base)).unwrap();
    let mut out = Vec::new();
    let len = bytes.len() as u64;
    net_storage::scan::scan(&bytes[..], len, shard, base, 1 << 16, &mut |h, at, _| {
        out.push((h.seq, at, h.record_bytes() as u64));
        true
    })
    .unwrap();
    out
}

/// A data dir like [`build`]'s whose writer crashed (no close, nothing synced): damage to its
/// last segment is a torn tail.
fn build_crashed() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    for (shard, n) in SHARD_RECORDS {
        let (mut log, _) = Log::open(&shard_dir(root.path(), shard), cfg(shard)).unwrap();
        append(&mut log, shard, n);
        std::mem::forget(log);
    }
    root
}

fn flip(path: &Path, offset: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[offset as usize] ^= 0x40;
    std::fs::write(path, bytes).unwrap();
}

/// Cuts the shard's last `.dat` in the middle of its last record; returns (file, record offset).
fn tear_last_record(root: &Path, shard: u16) -> (PathBuf, u64) {
    let base = *segments(root, shard).last().unwrap();
    let &(_, at, len) = records(root, shard, base).last().unwrap();
    let dat = segment::dat_path(&shard_dir(root, shard), base);
    let f = std::fs::OpenOptions::new().write(true).open(&dat).unwrap();
    f.set_len(at + len / 2).unwrap();
    (dat, at)
}

/// The one problem of a report, as (file, offset, message).
fn only_problem(report: &net_storage::VerifyReport) -> (PathBuf, u64, String) {
    let problems: Vec<_> = report.problems().collect();
    assert_eq!(problems.len(), 1, "{problems:#?}");
    match problems[0] {
        StorageError::Corrupt { path, offset, what } => (path.clone(), *offset, what.clone()),
        other => panic!("expected corruption, got {other}"),
    }
}

#[test]
fn verify_passes_a_clean_data_dir_and_a_single_shard_dir() {
    let root = build();
    let report = verify::verify(root.path()).unwrap();
    assert!(report.is_clean(), "{:#?}", report.shards);
    assert_eq!(report.shards.len(), 2);
    for (s, (shard, n)) in report.shards.iter().zip(SHARD_RECORDS) {
        assert_eq!(
            (s.shard.shard, s.records, s.first_seq, s.end_seq),
            (shard, n, 0, n)
        );
        assert!(s.segments >= 2, "{s}");
        assert!(s.bytes > n * 32, "{s}");
    }
    let one = verify::verify(&shard_dir(root.path(), 1)).unwrap();
    assert_eq!(one.shards.len(), 1);
    assert_eq!((one.shards[0].shard.shard, one.shards[0].records), (1, 800));
    assert!(one.is_clean());
}

#[test]
fn verify_accepts_the_zero_padding_of_a_crashed_writer() {
    let root = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(&shard_dir(root.path(), 0), cfg(0)).unwrap();
    append(&mut log, 0, 300);
    std::mem::forget(log); // no close: the last block of both files stays zero-padded
    let report = verify::verify(root.path()).unwrap();
    assert!(report.is_clean(), "{}", report.shards[0]);
    assert_eq!(report.shards[0].records, 300);
}

#[test]
fn a_garbled_record_in_a_sealed_segment_is_reported_at_its_offset() {
    let root = build();
    let bases = segments(root.path(), 0);
    let (_, at, _) = records(root.path(), 0, bases[0])[10];
    let dat = segment::dat_path(&shard_dir(root.path(), 0), bases[0]);
    flip(&dat, at + 20);
    let report = verify::verify(root.path()).unwrap();
    let (path, offset, what) = only_problem(&report);
    assert_eq!((path, offset), (dat, at));
    assert!(
        what.contains("sealed segment") && what.contains("checksum"),
        "{what}"
    );
    assert!(report.shards[1].is_clean());
    let text = report.shards[0].to_string();
    assert!(text.contains(&format!("at byte {at}")), "{text}");
}
#[test]
fn a_crashed_writers_truncated_last_segment_is_a_torn_tail() {
    let root = build_crashed();
    let (dat, at) = tear_last_record(root.path(), 1);
    let report = verify::verify(root.path()).unwrap();
    let (path, offset, what) = only_problem(&report);
    assert_eq!((path, offset), (dat, at));
    assert!(what.starts_with("torn tail"), "{what}");
    assert_eq!(report.shards[1].records, 799);
}

/// Hardening: after a clean shutdown every record was acknowledged, so a cut end is damage:
/// verify says so, a plain repair refuses (exit 1, never "nothing to repair"), and only an
/// explicit acceptance continues without the lost records, past every number handed out.
#[test]
fn a_cut_end_after_a_clean_close_is_refused_until_the_loss_is_accepted() {
    let root = build();
    let (dat, at) = tear_last_record(root.path(), 1);
    let report = verify::verify(root.path()).unwrap();
    let (path, offset, what) = only_problem(&report);
    assert_eq!((path, offset), (dat, at));
    assert!(what.contains("seq 799 was acknowledged"), "{what}");
    let repairs = verify::repair(root.path(), RepairOptions::default()).unwrap();
    assert!(
        matches!(
            &repairs[1].outcome,
            RepairOutcome::Failed(StorageError::Corrupt { .. })
        ),
        "{}",
        repairs[1]
    );
    let accept = RepairOptions {
        accept_data_loss: true,
    };
    let repairs = verify::repair(root.path(), accept).unwrap();
    assert!(
        matches!(&repairs[1].outcome, RepairOutcome::Recovered(_)),
        "{}",
        repairs[1]
    );
    let text = repairs[1].to_string();
    assert!(
        text.contains("accepted loss") && text.contains("quarantine"),
        "{text}"
    );
    let (mut log, rec) = Log::open(&shard_dir(root.path(), 1), cfg(1)).unwrap();
    assert!(rec.next_seq >= 800, "no number handed out twice: {rec:?}");
    let got = log.read(0, 10_000, 1 << 30).unwrap();
    assert_eq!(got.len(), 799, "every intact record is kept");
    log.close().unwrap();
    assert!(verify::verify(root.path()).unwrap().is_clean());
}
/// Hardening: a damaged `.idx` entry of a sealed segment made intact records unreadable, and
/// repair did not rebuild it. The index is derived data: reads fall back to `.dat`, verify
/// names the entry, and repair rebuilds the index.
#[test]
fn a_garbled_index_entry_is_reported_read_around_and_rebuilt() {
    let root = build();
    let base = segments(root.path(), 1)[0];
    let idx = segment::idx_path(&shard_dir(root.path(), 1), base);
    let entries = std::fs::metadata(&idx).unwrap().len() / INDEX_ENTRY_BYTES as u64;
    assert!(
        entries >= 2,
        "a sparse index has its first and last record at least"
    );
    flip(&idx, 3);
    flip(&idx, (entries - 1) * INDEX_ENTRY_BYTES as u64 + 3);
    let report = verify::verify(root.path()).unwrap();
    let problems: Vec<String> = report.problems().map(ToString::to_string).collect();
    assert!(
        problems
            .iter()
            .any(|p| p.contains(".idx at byte 0: entry fails its checksum")),
        "{problems:#?}"
    );
    {
        let (mut log, _) = Log::open(&shard_dir(root.path(), 1), cfg(1)).unwrap();
        let got = log.read(0, 10_000, 1 << 30).unwrap();
        assert_eq!(
            got.len(),
            800,
            "every record is readable around the bad entries"
        );
        std::mem::forget(log);
    }
    let repairs = verify::repair(root.path(), RepairOptions::default()).unwrap();
    assert!(
        matches!(repairs[1].outcome, RepairOutcome::Recovered(_)),
        "{}",
        repairs[1]
    );
    assert!(verify::verify(root.path()).unwrap().is_clean());
}
/// Hardening: deleting a segment's `.dat` lost its events silently (verify passed, repair
/// deleted the orphan index, the bus served fewer events). Now it is damage everywhere until
/// an operator accepts the loss; readers then skip the gap and say so.
#[test]
fn a_missing_segment_is_damage_until_the_loss_is_accepted() {
    let root = build();
    let dir = shard_dir(root.path(), 0);
    let bases = segments(root.path(), 0);
    std::fs::remove_file(segment::dat_path(&dir, bases[1])).unwrap();
    let report = verify::verify(root.path()).unwrap();
    let problems: Vec<String> = report.problems().map(ToString::to_string).collect();
    let orphan = segment::idx_path(&dir, bases[1]).display().to_string();
    assert!(
        problems
            .iter()
            .any(|p| p.contains(&orphan) && p.contains("missing")),
        "{problems:#?}"
    );
    let gap = format!(
        "starts at seq {} but segment {} before it ends at {}",
        bases[2], bases[0], bases[1]
    );
    assert!(problems.iter().any(|p| p.contains(&gap)), "{problems:#?}");
    let err = Log::open(&dir, cfg(0)).unwrap_err().to_string();
    assert!(err.contains(&orphan), "{err}");
    let repairs = verify::repair(root.path(), RepairOptions::default()).unwrap();
    assert!(
        matches!(repairs[0].outcome, RepairOutcome::Failed(_)),
        "{}",
        repairs[0]
    );
    assert!(
        segment::idx_path(&dir, bases[1]).exists(),
        "a plain repair destroys no evidence"
    );

    let accept = RepairOptions {
        accept_data_loss: true,
    };
    let repairs = verify::repair(root.path(), accept).unwrap();
    assert!(
        matches!(repairs[0].outcome, RepairOutcome::Recovered(_)),
        "{}",
        repairs[0]
    );
    assert!(
        repairs[0]
            .accepted
            .iter()
            .any(|a| a.contains("accepted gap")),
        "{:?}",
        repairs[0].accepted
    );
    let report = verify::verify(root.path()).unwrap();
    assert!(report.is_clean(), "{}", report.shards[0]);
    let (log, _) = Log::open(&dir, cfg(0)).unwrap();
    let mut reader = log.view().reader();
    let first = reader.read(0, 10_000, 1 << 30).unwrap();
    assert_eq!(first.records.last().unwrap().seq, bases[1] - 1);
    let after = reader.read(first.next, 10_000, 1 << 30).unwrap();
    assert!(after.skipped, "the lost range is reported");
    assert_eq!(after.records.first().unwrap().seq, bases[2]);
    assert_eq!(after.records.last().unwrap().seq, 1499);
}

/// Deleting or renaming the newest segment (the example of the hardening issue: 20 000
/// events, `rm shard-0001/00000000000000000000.dat`) is refused, and accepted only explicitly,
/// continuing past every number the lost segment could have handed out.
#[test]
fn a_deleted_or_renamed_newest_segment_is_refused() {
    let root = build();
    let dir = shard_dir(root.path(), 1);
    let bases = segments(root.path(), 1);
    let newest = *bases.last().unwrap();
    let renamed = segment::dat_path(&dir, newest + 5);
    std::fs::rename(segment::dat_path(&dir, newest), &renamed).unwrap();
    let err = Log::open(&dir, cfg(1)).unwrap_err().to_string();
    assert!(err.contains("records between are missing"), "{err}");
    std::fs::rename(&renamed, dir.join("moved-away.dat.bak")).unwrap();
    let err = Log::open(&dir, cfg(1)).unwrap_err().to_string();
    assert!(err.contains("MANIFEST") && err.contains("missing"), "{err}");
    let report = verify::verify(root.path()).unwrap();
    assert!(!report.is_clean());
    assert!(
        report.shards[1].to_string().contains("moved-away.dat.bak"),
        "{}",
        report.shards[1]
    );
    let accept = RepairOptions {
        accept_data_loss: true,
    };
    let repairs = verify::repair(root.path(), accept).unwrap();
    assert!(
        matches!(repairs[1].outcome, RepairOutcome::Recovered(_)),
        "{}",
        repairs[1]
    );
    let (_, rec) = Log::open(&dir, cfg(1)).unwrap();
    assert!(rec.next_seq > newest + 1_000_000, "{rec:?}");

    // The only segment of a shard deleted: nothing left, refused.
    let root = tempfile::tempdir().unwrap();
    let dir = shard_dir(root.path(), 0);
    let (mut log, _) = Log::open(
        &dir,
        LogConfig {
            segment_bytes: 1 << 30,
            ..cfg(0)
        },
    )
    .unwrap();
    append(&mut log, 0, 2000);
    log.close().unwrap();
    std::fs::remove_file(segment::dat_path(&dir, 0)).unwrap();
    let err = Log::open(&dir, cfg(0)).unwrap_err().to_string();
    assert!(err.contains("no segment is left"), "{err}");
    let out = net_admin(["verify".as_ref(), root.path().as_os_str()]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Hardening: `repair` said "nothing to repair" while verify still found damage, and a `.dat`
/// cut below its header made it exit 2 (I/O) instead of 1 (damage).
#[test]
fn repair_reports_damage_it_leaves_and_exits_1() {
    let root = build();
    let bases = segments(root.path(), 0);
    let dat = segment::dat_path(&shard_dir(root.path(), 0), bases[0]);
    let mut bytes = std::fs::read(&dat).unwrap();
    bytes[5000..5400].fill(0);
    std::fs::write(&dat, &bytes).unwrap();
    let out = net_admin(["repair".as_ref(), root.path().as_os_str()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let shard0 = stdout.lines().find(|l| l.starts_with("shard 0")).unwrap();
    assert!(shard0.contains("problem(s) remain"), "{stdout}");
    let f = std::fs::OpenOptions::new().write(true).open(&dat).unwrap();
    f.set_len(1000).unwrap();
    let out = net_admin(["repair".as_ref(), root.path().as_os_str()]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Hardening: repair and compact take the data dir's lock; verify and dump read without it.
#[test]
fn repair_and_compact_refuse_a_data_dir_in_use() {
    let root = build();
    let _held = net_storage::DirLock::acquire(root.path()).unwrap();
    for cmd in ["repair", "compact"] {
        let out = net_admin([cmd.as_ref(), root.path().as_os_str()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{cmd}: {err}");
        assert!(
            err.contains(&format!("in use by pid {}", std::process::id())),
            "{err}"
        );
    }
    let one_shard = shard_dir(root.path(), 0);
    assert!(matches!(
        verify::repair(&one_shard, RepairOptions::default()),
        Err(StorageError::Locked { .. })
    ));
    for cmd in ["verify", "dump"] {
        let out = net_admin([cmd.as_ref(), root.path().as_os_str()]);
        assert_eq!(out.status.code(), Some(0), "{cmd} reads without the lock");
    }
}
/// One dumped record: (shard, seq, ts, payload).
type Dumped = (u16, u64, u64, Vec<u8>);

/// Runs `dump` and parses its lines, checking `len`; returns the records and the problem count.
fn dump_records(root: &Path, opts: DumpOptions) -> (Vec<Dumped>, usize) {
    let mut out = Vec::new();
    let report = verify::dump(root, &opts, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    let records: Vec<_> = text
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let b64 = v["payload_b64"].as_str().unwrap();
            let payload = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap();
            assert_eq!(v["len"].as_u64().unwrap(), payload.len() as u64, "{line}");
            let shard = u16::try_from(v["shard"].as_u64().unwrap()).unwrap();
            (
                shard,
                v["seq"].as_u64().unwrap(),
                v["ts"].as_u64().unwrap(),
                payload,
            )
        })
        .collect();
    assert_eq!(report.records, records.len() as u64);
    (records, report.problems.len())
}

#[test]
fn dump_returns_every_record_byte_exact_in_shard_and_seq_order() {
    let root = build();
    let (records, problems) = dump_records(root.path(), DumpOptions::default());
    assert_eq!(problems, 0);
    let expected: Vec<_> = SHARD_RECORDS
        .iter()
        .flat_map(|&(shard, n)| (0..n).map(move |seq| (shard, seq)))
        .map(|(shard, seq)| (shard, seq, ts(shard, seq), payload(shard, seq)))
        .collect();
    assert_eq!(records.len(), expected.len());
    assert!(records == expected, "dump differs from what was appended");
}

#[test]
fn dump_honours_shard_from_and_limit() {
    let root = build();
    let keys = |opts| -> Vec<(u16, u64)> {
        let (records, problems) = dump_records(root.path(), opts);
        assert_eq!(problems, 0);
        records.into_iter().map(|(s, seq, _, _)| (s, seq)).collect()
    };
    let one = DumpOptions {
        shard: Some(1),
        from_seq: 123,
        limit: Some(7),
    };
    assert_eq!(keys(one), (123..130).map(|s| (1, s)).collect::<Vec<_>>());
    let from = DumpOptions {
        from_seq: 790,
        ..DumpOptions::default()
    };
    let expected: Vec<_> = (790..1500)
        .map(|s| (0, s))
        .chain((790..800).map(|s| (1, s)))
        .collect();
    assert_eq!(keys(from), expected);
    let limited = DumpOptions {
        limit: Some(10),
        ..from
    };
    assert_eq!(
        keys(limited),
        (790..800).map(|s| (0, s)).collect::<Vec<_>>()
    );
    let beyond = DumpOptions {
        from_seq: 5000,
        ..DumpOptions::default()
    };
    assert!(keys(beyond).is_empty());
    let missing = DumpOptions {
        shard: Some(9),
        ..DumpOptions::default()
    };
    let err = verify::dump(root.path(), &missing, &mut Vec::new()).unwrap_err();
    assert!(err.to_string().contains("no shard-0009"), "{err}");
}

#[test]
fn dump_ends_a_damaged_shard_at_the_damage_and_goes_on_with_the_next() {
    let root = build();
    let base = segments(root.path(), 0)[0];
    let (_, at, _) = records(root.path(), 0, base)[10];
    flip(
        &segment::dat_path(&shard_dir(root.path(), 0), base),
        at + 40,
    );
    let mut out = Vec::new();
    let report = verify::dump(root.path(), &DumpOptions::default(), &mut out).unwrap();
    assert_eq!(report.records, 10 + 800);
    assert_eq!(report.problems.len(), 1);
    let problem = report.problems[0].to_string();
    assert!(problem.contains(&format!("00000000000000000000.dat at byte {at}")));
}

#[test]
fn repair_cuts_a_torn_tail_and_verify_is_then_clean() {
    let root = build_crashed();
    tear_last_record(root.path(), 0);
    std::fs::create_dir(shard_dir(root.path(), 2)).unwrap();
    let repairs = verify::repair(root.path(), RepairOptions::default()).unwrap();
    assert_eq!(repairs.len(), 3);
    let RepairOutcome::Recovered(r) = &repairs[0].outcome else {
        panic!("{}", repairs[0]);
    };
    assert!(
        r.torn_tail && r.dat_bytes_cut > 0 && r.next_seq == 1499,
        "{r:?}"
    );
    let RepairOutcome::Recovered(_) = &repairs[1].outcome else {
        panic!("{}", repairs[1]);
    };
    assert!(matches!(repairs[2].outcome, RepairOutcome::NoSegments));
    let empty = std::fs::read_dir(shard_dir(root.path(), 2))
        .unwrap()
        .count();
    assert_eq!(
        empty, 0,
        "repair must not create segments in an empty shard dir"
    );
    let report = verify::verify(root.path()).unwrap();
    assert!(report.is_clean(), "{}", report.shards[0]);
    assert_eq!(report.shards[0].records, 1499);
}

#[test]
fn repair_creates_no_directory() {
    let root = tempfile::tempdir().unwrap();
    let missing = root.path().join("shard-0004");
    assert!(verify::repair(&missing, RepairOptions::default()).is_err());
    let none = verify::repair(root.path(), RepairOptions::default());
    assert!(none.is_err(), "no shard dirs in it");
    assert!(!missing.exists());
    assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0);
}

/// A damage applied to generated segment bytes.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Truncate(usize),
    Append(Vec<u8>),
    Overwrite(usize, Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1u8..).prop_map(|(at, x)| Mutation::Flip(at, x)),
        any::<usize>().prop_map(Mutation::Truncate),
        proptest::collection::vec(any::<u8>(), 1..100).prop_map(Mutation::Append),
        (
            any::<usize>(),
            proptest::collection::vec(any::<u8>(), 1..40)
        )
            .prop_map(|(at, b)| Mutation::Overwrite(at, b)),
    ]
}

fn mutate(bytes: &mut Vec<u8>, mutations: &[Mutation]) {
    for m in mutations {
        let n = bytes.len().max(1);
        match m {
            Mutation::Flip(at, x) if !bytes.is_empty() => bytes[at % n] ^= x,
            Mutation::Flip(..) => {}
            Mutation::Truncate(at) => bytes.truncate(at % n),
            Mutation::Append(b) => bytes.extend_from_slice(b),
            Mutation::Overwrite(at, b) => {
                let at = at % n;
                let end = (at + b.len()).min(bytes.len());
                bytes[at.min(end)..end].copy_from_slice(&b[..end - at.min(end)]);
            }
        }
    }
}

/// A valid segment of `records` records (header naming `shard`) and its index.
fn segment_files(shard: u16, base: u64, records: u64) -> (Vec<u8>, Vec<u8>) {
    let mut dat = vec![0u8; SEGMENT_HEADER_BYTES];
    SegmentHeader {
        shard,
        base_seq: base,
    }
    .encode(&mut dat);
    let mut idx = Vec::new();
    for i in 0..records {
        let seq = base.wrapping_add(i);
        let p = payload(shard, seq);
        let at = dat.len();
        dat.resize(at + record::record_bytes(p.len()), 0);
        let meta = record::RecordMeta {
            seq,
            ts_ns: ts(shard, seq),
            flags: if i == 0 { record::FLAG_BATCH_FIRST } else { 0 },
            committed: 0,
        };
        record::encode(&mut dat[at..], &meta, &p);
        let len = record::record_bytes(p.len()) as u32;
        let mut e = [0u8; INDEX_ENTRY_BYTES];
        IndexEntry {
            seq,
            offset: at as u64,
            len,
        }
        .encode(&mut e);
        idx.extend_from_slice(&e);
    }
    (dat, idx)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn garbage_files_never_panic(
        records in 0u64..12,
        header_shard in 0u16..2,
        base in prop_oneof![Just(0u64), any::<u64>(), Just(u64::MAX - 3), Just(u64::MAX)],
        dat_damage in proptest::collection::vec(mutation(), 0..4),
        idx_damage in proptest::collection::vec(mutation(), 0..3),
        raw in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..9000)),
        next_records in proptest::option::of(0u64..4),
    ) {
        let root = tempfile::tempdir().unwrap();
        let dir = shard_dir(root.path(), 0);
        std::fs::create_dir(&dir).unwrap();
        let (mut dat, mut idx) = segment_files(header_shard, base, records);
        mutate(&mut dat, &dat_damage);
        mutate(&mut idx, &idx_damage);
        std::fs::write(segment::dat_path(&dir, base), raw.unwrap_or(dat)).unwrap();
        std::fs::write(segment::idx_path(&dir, base), idx).unwrap();
        if let Some(n) = next_records.filter(|_| base < u64::MAX - 20) {
            let (dat, idx) = segment_files(0, base + records, n);
            std::fs::write(segment::dat_path(&dir, base + records), dat).unwrap();
            std::fs::write(segment::idx_path(&dir, base + records), idx).unwrap();
        }

        let report = verify::verify(root.path()).unwrap();
        let text = report.shards[0].to_string();
        for p in report.problems() {
            let StorageError::Corrupt { path, .. } = p else {
                panic!("unexpected non-corruption problem {p}");
            };
            prop_assert!(path.starts_with(&dir), "{}", text);
        }
        let mut out = Vec::new();
        let dumped = verify::dump(root.path(), &DumpOptions::default(), &mut out).unwrap();
        prop_assert!(dumped.records <= report.shards[0].records, "{}", text);
        if report.is_clean() {
            prop_assert!(dumped.problems.is_empty(), "{:?}", dumped.problems);
            prop_assert_eq!(dumped.records, report.shards[0].records);
        }
    }
}

#[test]
fn the_binary_exits_0_clean_1_damaged_2_on_usage_errors() {
    let run = |args: &[&std::ffi::OsStr]| net_admin(args);
    let root = build_crashed();
    let dir = root.path().as_os_str();

    let clean = run(&["verify".as_ref(), dir]);
    let stdout = String::from_utf8_lossy(&clean.stdout);
    assert_eq!(clean.status.code(), Some(0), "{stdout}");
    let summary = "1500 valid records, seq 0..=1499";
    assert!(
        stdout.contains("shard 0 (") && stdout.contains(summary),
        "{stdout}"
    );
    assert!(stdout.ends_with("verify: clean\n"), "{stdout}");

    let dump = run(&[
        "dump".as_ref(),
        dir,
        "--shard".as_ref(),
        "1".as_ref(),
        "--limit".as_ref(),
        "3".as_ref(),
    ]);
    assert_eq!(dump.status.code(), Some(0));
    let lines: Vec<_> = std::str::from_utf8(&dump.stdout).unwrap().lines().collect();
    assert_eq!(lines.len(), 3);
    assert!(
        lines[2].starts_with(r#"{"shard":1,"seq":2,"ts":"#),
        "{}",
        lines[2]
    );

    let (dat, at) = tear_last_record(root.path(), 0);
    let damaged = run(&["verify".as_ref(), dir]);
    let stdout = String::from_utf8_lossy(&damaged.stdout);
    assert_eq!(damaged.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(&format!("{} at byte {at}: torn tail", dat.display())),
        "{stdout}"
    );
    let dumped = run(&["dump".as_ref(), dir]);
    assert_eq!(dumped.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&dumped.stderr).contains("at byte"));

    let repaired = run(&["repair".as_ref(), dir]);
    let stdout = String::from_utf8_lossy(&repaired.stdout);
    assert_eq!(repaired.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("torn record: yes"), "{stdout}");
    assert_eq!(run(&["verify".as_ref(), dir]).status.code(), Some(0));

    assert_eq!(run(&[]).status.code(), Some(2));
    assert_eq!(run(&["verify".as_ref()]).status.code(), Some(2));
    assert_eq!(
        run(&["dump".as_ref(), dir, "--limit".as_ref(), "x".as_ref()])
            .status
            .code(),
        Some(2)
    );
    let nowhere = root.path().join("nowhere");
    let missing = run(&["verify".as_ref(), nowhere.as_os_str()]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("nowhere"));
}

#[test]
fn compact_merges_segments_and_keeps_every_record() {
    let root = build();
    let before = dump_records(root.path(), DumpOptions::default()).0;
    let segments_before = segments(root.path(), 0).len();
    let out = net_admin([
        "compact".as_ref(),
        root.path().as_os_str(),
        "--segment-bytes".as_ref(),
        "1048576".as_ref(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("1500 records, {segments_before} segments -> 1")),
        "{text}"
    );
    assert_eq!(segments(root.path(), 0).len(), 1);
    assert_eq!(
        dump_records(root.path(), DumpOptions::default()).0,
        before,
        "every record kept"
    );
    assert_eq!(verify::verify(root.path()).unwrap().problems().count(), 0);
    let bad = net_admin([
        "compact".as_ref(),
        root.path().as_os_str(),
        "--segment-bytes".as_ref(),
        "10".as_ref(),
    ]);
    assert_eq!(
        bad.status.code(),
        Some(2),
        "a too-small segment size is a usage error"
    );
}
