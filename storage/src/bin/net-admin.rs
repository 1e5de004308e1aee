//! `net-admin`: the operator's tool for a net data dir, offline.
//!
//! `verify` checks every segment of every shard and changes nothing; `dump` prints records as
//! JSON lines; `repair` opens each shard's log so that recovery does what a crash explains,
//! and with `--accept-data-loss` also moves damage aside; `compact` rewrites each shard's log
//! into full-size segments, atomically. The logic lives in `net_storage::verify` and its
//! siblings, so that tests call it directly; this file only parses arguments, prints, and maps
//! outcomes to exit codes: 0 clean, 1 damage found (or left unrepaired), 2 usage or I/O
//! errors (a data dir in use included). Arguments are parsed by hand: four subcommands with a
//! few options do not need a parser crate.

use std::ffi::OsString;
use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use net_storage::StorageError;
use net_storage::verify::{self, DumpOptions, RepairOptions, RepairOutcome};

const USAGE: &str = "\
usage: net-admin verify <data-dir>
       net-admin dump <data-dir> [--shard S] [--from SEQ] [--limit N]
       net-admin repair <data-dir> [--accept-data-loss]
       net-admin compact <data-dir> [--segment-bytes N]

<data-dir> is a bus's data dir (holding shard-NNNN directories) or one shard directory.
verify  checks every segment and changes nothing.
dump    prints one JSON object per record, in (shard, seq) order; --from skips lower
        sequence numbers in every shard, --limit caps the records printed in all.
repair  opens each shard's log (cutting a torn tail, rebuilding indexes) and verifies it;
        exit 1 if damage remains. Damage a crash cannot explain (a missing segment, a
        damaged acknowledged record) is refused unless --accept-data-loss is given: then
        damaged files are moved or copied to <shard>/quarantine/, the events they held are
        recorded as lost, and the log continues without them. Takes the data dir's lock.
compact rewrites each shard's log into segments of N bytes (default 128 MiB), keeping every
        record; a crash leaves the old or the new set, never a mix. The bus must be stopped.
Exit status: 0 clean, 1 damage found or left unrepaired, 2 usage or I/O error.";

const EXIT_DAMAGE: u8 = 1;
/// Segment size `compact` writes unless told otherwise (the bus's default).
const DEFAULT_SEGMENT_BYTES: u64 = 128 << 20;
const EXIT_USAGE: u8 = 2;

#[derive(Debug)]
enum Command {
    Verify(PathBuf),
    Dump(PathBuf, DumpOptions),
    Repair(PathBuf, RepairOptions),
    Compact(PathBuf, u64),
    Help,
}

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let code = match parse(&args) {
        Ok(Command::Verify(dir)) => run_verify(&dir),
        Ok(Command::Dump(dir, opts)) => run_dump(&dir, &opts),
        Ok(Command::Repair(dir, opts)) => run_repair(&dir, opts),
        Ok(Command::Compact(dir, segment_bytes)) => run_compact(&dir, segment_bytes),
        Ok(Command::Help) => {
            println!("{USAGE}");
            0
        }
        Err(what) => {
            eprintln!("net-admin: {what}\n\n{USAGE}");
            EXIT_USAGE
        }
    };
    ExitCode::from(code)
}

fn parse(args: &[OsString]) -> Result<Command, String> {
    let mut args = args.iter();
    let command = match args.next().map(|a| a.to_str()) {
        None => return Err("no command given".into()),
        Some(Some("-h" | "--help" | "help")) => return Ok(Command::Help),
        Some(Some(c @ ("verify" | "dump" | "repair" | "compact"))) => c,
        Some(other) => {
            let other = other.map_or("(not UTF-8)".into(), |o| format!("'{o}'"));
            return Err(format!("unknown command {other}"));
        }
    };
    let dir = PathBuf::from(
        args.next()
            .ok_or(format!("{command}: no <data-dir> given"))?,
    );
    let rest: Vec<&OsString> = args.collect();
    match command {
        "dump" => Ok(Command::Dump(dir, parse_dump_options(&rest)?)),
        "compact" => Ok(Command::Compact(dir, parse_segment_bytes(&rest)?)),
        "repair" => match rest.as_slice() {
            [] => Ok(Command::Repair(dir, RepairOptions::default())),
            [flag] if flag.to_str() == Some("--accept-data-loss") => Ok(Command::Repair(
                dir,
                RepairOptions {
                    accept_data_loss: true,
                },
            )),
            _ => Err(format!("repair: unexpected {:?}", rest[0])),
        },
        _ if !rest.is_empty() => Err(format!("{command}: unexpected {:?}", rest[0])),
        _ => Ok(Command::Verify(dir)),
    }
}

fn parse_dump_options(args: &[&OsString]) -> Result<DumpOptions, String> {
    let mut opts = DumpOptions::default();
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        let flag = flag.to_str().unwrap_or_default();
        let value = args
            .next()
            .and_then(|v| v.to_str())
            .ok_or(format!("dump: {flag:?} needs a value"))?;
        let number = |what: &str| -> Result<u64, String> {
            value
                .parse()
                .map_err(|_| format!("dump: {flag} '{value}' is not {what}"))
        };
        match flag {
            "--shard" => {
                let shard = value.parse();
                let what = "a shard number (0..=65535)";
                opts.shard =
                    Some(shard.map_err(|_| format!("dump: --shard '{value}' is not {what}"))?);
            }
            "--from" => opts.from_seq = number("a sequence number")?,
            "--limit" => opts.limit = Some(number("a record count")?),
            _ => return Err(format!("dump: unknown option {flag:?}")),
        }
    }
    Ok(opts)
}

fn parse_segment_bytes(args: &[&OsString]) -> Result<u64, String> {
    match args {
        [] => Ok(DEFAULT_SEGMENT_BYTES),
        [flag, value] if flag.to_str() == Some("--segment-bytes") => value
            .to_str()
            .and_then(|v| v.parse().ok())
            .filter(|&n| n >= net_storage::SEGMENT_BYTES_MIN)
            .ok_or(format!(
                "compact: --segment-bytes needs a byte count of at least {}",
                net_storage::SEGMENT_BYTES_MIN
            )),
        _ => Err(format!("compact: unexpected {:?}", args[0])),
    }
}

fn run_compact(dir: &std::path::Path, segment_bytes: u64) -> u8 {
    let shards = match verify::shard_dirs(dir) {
        Ok(shards) => shards,
        Err(e) => {
            eprintln!("net-admin compact: {e}");
            return EXIT_USAGE;
        }
    };
    let _lock = match verify::lock_data_dir(dir) {
        Ok(lock) => lock,
        Err(e) => {
            eprintln!("net-admin compact: {e}");
            return EXIT_USAGE;
        }
    };
    let mut code = 0;
    for shard in shards {
        let cfg = net_storage::LogConfig {
            segment_bytes,
            ..verify::repair_config(shard.shard)
        };
        match net_storage::compaction::compact_in_place(&shard.dir, cfg) {
            Ok(done) => println!(
                "shard {} ({}): {} records, {} segments -> {}",
                shard.shard,
                shard.dir.display(),
                done.records,
                done.segments_before,
                done.segments_after
            ),
            Err(e) => {
                eprintln!("net-admin compact: shard {}: {e}", shard.shard);
                code = EXIT_DAMAGE;
            }
        }
    }
    code
}

fn run_verify(dir: &std::path::Path) -> u8 {
    let report = match verify::verify(dir) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("net-admin verify: {e}");
            return EXIT_USAGE;
        }
    };
    let mut out = io::stdout().lock();
    for shard in &report.shards {
        // A closed stdout (`| head`) must not turn a verdict into a panic.
        let _ = writeln!(out, "{shard}");
    }
    let problems = report.problems().count();
    let verdict = match problems {
        0 => "verify: clean".to_owned(),
        1 => format!("verify: 1 problem in {}", dir.display()),
        n => format!("verify: {n} problems in {}", dir.display()),
    };
    let _ = writeln!(out, "{verdict}");
    if report.has_io_errors() {
        EXIT_USAGE
    } else if problems > 0 {
        EXIT_DAMAGE
    } else {
        0
    }
}

fn run_dump(dir: &std::path::Path, opts: &DumpOptions) -> u8 {
    let stdout = io::stdout().lock();
    let mut out = io::BufWriter::new(stdout);
    match verify::dump(dir, opts, &mut out) {
        Ok(report) if report.problems.is_empty() => 0,
        Ok(report) => {
            for p in &report.problems {
                eprintln!("net-admin dump: {p}");
            }
            let io = report
                .problems
                .iter()
                .any(|p| matches!(p, StorageError::Io { .. }));
            if io { EXIT_USAGE } else { EXIT_DAMAGE }
        }
        Err(StorageError::Io { source, .. }) if source.kind() == io::ErrorKind::BrokenPipe => 0,
        Err(e) => {
            eprintln!("net-admin dump: {e}");
            EXIT_USAGE
        }
    }
}

fn run_repair(dir: &std::path::Path, opts: RepairOptions) -> u8 {
    let repairs = match verify::repair(dir, opts) {
        Ok(repairs) => repairs,
        Err(e) => {
            eprintln!("net-admin repair: {e}");
            return EXIT_USAGE;
        }
    };
    let mut out = io::stdout().lock();
    let mut code = 0;
    for repair in &repairs {
        let _ = writeln!(out, "{repair}");
        code = code.max(match &repair.outcome {
            RepairOutcome::Failed(e) if is_io(e) => EXIT_USAGE,
            RepairOutcome::Failed(_) | RepairOutcome::Unrepaired(_) => EXIT_DAMAGE,
            RepairOutcome::Recovered(_) | RepairOutcome::NoSegments => 0,
        });
    }
    code
}

/// Whether an error is about reaching the files rather than what they hold.
fn is_io(e: &StorageError) -> bool {
    matches!(
        e,
        StorageError::Io { .. } | StorageError::Uring(_) | StorageError::Locked { .. }
    )
}
