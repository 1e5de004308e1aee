//! `net-bench ffi`: ingest through the C API (`libnet.a`, `net_ingest`) against the Rust API
//! (`Producer::send`) in the same run, on the same workload and configuration.
//!
//! The bench builds `libnet.a` with cargo (same profile and target directory as itself),
//! compiles `bench/c/ffi_bench.c` against it with `cc -O2` and runs it. The C program links
//! with `-Wl,--wrap=malloc,...` so that its `__wrap_*` functions count every allocation of
//! the process, Rust's included (Rust's global allocator is the system malloc); the Rust side
//! counts with the bench's counting allocator (`alloc`). Calls glibc makes internally are
//! counted by neither.
//!
//! Both sides start a bus from the same JSON (`fsync: never`, `pin: false`, `--shards`
//! shards) in their own scratch directory, run `--threads` threads that each ingest a share of
//! `--warmup` events (creating their producer), wait on a barrier, then each ingest
//! `events / threads` events of 100 bytes with 8-byte keys. The window runs from the release
//! until the threads are joined and a flush returned; allocations are counted over it. The
//! figure to quote is `ffi_ratio` = C API events/s / Rust API events/s.

use crate::report::{self, JsonLine, Table};
use crate::{Failure, alloc, archive, parse_positive, progress};
use net_engine::{Bus, Config, SendError};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

/// Bytes per payload and per key, on both sides (the C program has the same constants).
const PAYLOAD_BYTES: usize = 100;
const KEY_BYTES: usize = 8;

/// Time the Rust side's bus gets to drain at shutdown; everything is flushed by then.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Events each side ingests in the measured window (rounded down to a multiple of threads).
    #[arg(long, default_value_t = 5_000_000, value_parser = parse_positive)]
    events: u64,
    /// Ingesting threads on each side.
    #[arg(long, default_value_t = 2, value_parser = parse_positive)]
    threads: u64,
    /// Shards of each side's bus.
    #[arg(long, default_value_t = 2, value_parser = parse_positive)]
    shards: u64,
    /// Events each side ingests before the window (spread over the threads).
    #[arg(long, default_value_t = 100_000)]
    warmup: u64,
    /// Directory under which each side gets its own temporary directory.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print the figures as one JSON object on the last line too.
    #[arg(long)]
    json: bool,
}

/// What one side measured.
#[derive(Debug, Clone, Copy)]
struct Side {
    events: u64,
    elapsed: Duration,
    allocations: u64,
}

impl Side {
    fn events_per_s(&self) -> f64 {
        report::per_s(self.events, self.elapsed)
    }

    fn allocs_per_event(&self) -> f64 {
        self.allocations as f64 / self.events.max(1) as f64
    }
}

pub fn run(args: &Args) -> Result<(), Failure> {
    if args.threads > args.events {
        return Err(Failure::Verification(
            "--events must be at least --threads".to_owned(),
        ));
    }
    let exe = build_c_program()?;

    let ffi_dir = crate::scratch_dir(args.dir.as_deref(), "ffi")?;
    let ffi = progress::during("C API (a C program)", || run_c(args, &exe, ffi_dir.path()))?;
    ffi_dir
        .close()
        .map_err(Failure::io("removing the C side's scratch directory"))?;

    let rust_dir = crate::scratch_dir(args.dir.as_deref(), "rust")?;
    let rust = progress::during("Rust API", || run_rust(args, rust_dir.path()))?;
    rust_dir
        .close()
        .map_err(Failure::io("removing the Rust side's scratch directory"))?;

    if ffi.events != rust.events {
        return Err(Failure::Verification(format!(
            "the C side ingested {} events, the Rust side {}",
            ffi.events, rust.events
        )));
    }
    print_report(args, &ffi, &rust);
    Ok(())
}

/// The bus configuration both sides start from.
fn config_json(args: &Args, dir: &Path) -> String {
    let dir = serde_json::Value::from(dir.display().to_string());
    format!(
        r#"{{"data_dir":{dir},"shards":{},"pin":false,"storage":{{"fsync":"never"}}}}"#,
        args.shards
    )
}

/// `<target>/<profile>` of this binary.
fn profile_dir() -> Result<PathBuf, Failure> {
    let exe = std::env::current_exe().map_err(Failure::io("locating net-bench"))?;
    exe.parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| Failure::Verification(format!("{} has no parent", exe.display())))
}

/// Builds `libnet.a` in this binary's target directory and profile, then compiles the C side
/// against it; returns the program's path.
fn build_c_program() -> Result<PathBuf, Failure> {
    let profile_dir = profile_dir()?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .or_else(|| profile_dir.parent().map(Path::to_path_buf))
        .ok_or_else(|| Failure::Verification("no target directory".to_owned()))?;
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev".to_owned(),
        Some(p) => p.to_owned(),
    };
    let bench_root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .args([
            "build",
            "-q",
            "-p",
            "net-ffi",
            "--lib",
            "--profile",
            &profile,
        ])
        .env("CARGO_TARGET_DIR", &target)
        .current_dir(bench_root)
        .status()
        .map_err(Failure::io(format!("running {cargo} build -p net-ffi")))?;
    if !status.success() {
        return Err(Failure::Verification(format!(
            "cargo build -p net-ffi --lib failed ({status})"
        )));
    }
    let lib = target
        .join(profile_dir.file_name().unwrap_or_default())
        .join("libnet.a");
    let exe = profile_dir.join("ffi_bench");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let status = Command::new(&cc)
        .args(["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror"])
        .arg("-I")
        .arg(bench_root.join("../ffi/include"))
        .arg(bench_root.join("c/ffi_bench.c"))
        .arg(&lib)
        .args([
            "-lpthread",
            "-ldl",
            "-lm",
            "-Wl,--wrap=malloc,--wrap=calloc,--wrap=realloc,--wrap=posix_memalign,--wrap=aligned_alloc",
            "-o",
        ])
        .arg(&exe)
        .status()
        .map_err(Failure::io(format!("running the C compiler `{cc}`")))?;
    if !status.success() {
        return Err(Failure::Verification(format!(
            "compiling bench/c/ffi_bench.c against {} failed ({status})",
            lib.display()
        )));
    }
    Ok(exe)
}

/// Runs the C side and parses its `events=<n> seconds=<s> allocs=<a>` line.
fn run_c(args: &Args, exe: &Path, dir: &Path) -> Result<Side, Failure> {
    let output = Command::new(exe)
        .arg(config_json(args, dir))
        .arg(args.events.to_string())
        .arg(args.threads.to_string())
        .arg(args.warmup.to_string())
        .output()
        .map_err(Failure::io(format!("running {}", exe.display())))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(Failure::Verification(format!(
            "the C side failed ({}): {}{}",
            output.status,
            stdout,
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    parse_c_line(stdout.lines().last().unwrap_or_default())
        .ok_or_else(|| Failure::Verification(format!("unexpected C side output: {stdout:?}")))
}

fn parse_c_line(line: &str) -> Option<Side> {
    let mut events = None;
    let mut seconds = None;
    let mut allocations = None;
    for field in line.split_whitespace() {
        match field.split_once('=')? {
            ("events", v) => events = v.parse::<u64>().ok(),
            ("seconds", v) => seconds = v.parse::<f64>().ok(),
            ("allocs", v) => allocations = v.parse::<u64>().ok(),
            _ => return None,
        }
    }
    Some(Side {
        events: events?,
        elapsed: Duration::try_from_secs_f64(seconds?).ok()?,
        allocations: allocations?,
    })
}

/// The same workload through `Bus` and `Producer::send`, in this process.
fn run_rust(args: &Args, dir: &Path) -> Result<Side, Failure> {
    let config = Config::from_json(&config_json(args, dir))
        .map_err(|e| Failure::engine("reading the config", e))?;
    let bus = Bus::start(config).map_err(|e| Failure::engine("starting the bus", e))?;
    let threads = usize::try_from(args.threads).expect("thread count fits usize");
    let per_thread = args.events / args.threads;
    let warmup_per_thread = args.warmup / args.threads;
    let warmed = Arc::new(Barrier::new(threads + 1));
    let release = Arc::new(Barrier::new(threads + 1));
    let mut handles = Vec::with_capacity(threads);
    for t in 0..threads {
        let mut producer = bus
            .producer()
            .map_err(|e| Failure::engine("creating a producer", e))?;
        let (warmed, release) = (Arc::clone(&warmed), Arc::clone(&release));
        let t = u64::try_from(t).expect("thread index fits u64");
        let handle = thread::Builder::new()
            .name(format!("ffi-rust-{t}"))
            .spawn(move || -> Result<(), SendError> {
                let mut payload = [0x5a_u8; PAYLOAD_BYTES];
                let mut ingest = |from: u64, count: u64| -> Result<(), SendError> {
                    for i in from..from + count {
                        let key = ((t << 32) | (i & 0xffff_ffff)).to_ne_bytes();
                        payload[..KEY_BYTES].copy_from_slice(&key);
                        loop {
                            match producer.send(&key, &payload) {
                                Ok(_) => break,
                                Err(SendError::Full(_)) => {}
                                Err(e) => return Err(e),
                            }
                        }
                    }
                    Ok(())
                };
                ingest(0, warmup_per_thread)?;
                warmed.wait();
                release.wait();
                ingest(warmup_per_thread, per_thread)
            })
            .map_err(Failure::io("spawning a producer thread"))?;
        handles.push(handle);
    }
    warmed.wait();
    bus.flush()
        .map_err(|e| Failure::engine("flushing the warm-up", e))?;

    let before = alloc::snapshot();
    let start = Instant::now();
    release.wait();
    for handle in handles {
        handle
            .join()
            .map_err(|_| Failure::Engine("a producer thread panicked".to_owned()))?
            .map_err(|e| Failure::engine("sending", e))?;
    }
    bus.flush().map_err(|e| Failure::engine("flushing", e))?;
    let elapsed = start.elapsed();
    let allocations = alloc::snapshot().since(before).allocations;
    crate::shut_down_cleanly(bus, SHUTDOWN_DEADLINE)?;
    Ok(Side {
        events: per_thread * args.threads,
        elapsed,
        allocations,
    })
}

fn print_report(args: &Args, ffi: &Side, rust: &Side) {
    let ratio = ffi.events_per_s() / rust.events_per_s();
    let title = format!(
        "ingest through the C API vs the Rust API: {} events x {PAYLOAD_BYTES} B, {KEY_BYTES}-byte \
         keys, {} threads, {} shards, fsync never",
        report::format_count(ffi.events as f64),
        args.threads,
        args.shards
    );
    let mut table = Table::new(&title, &["C API", "Rust API"]);
    let both = |f: &dyn Fn(&Side) -> String| vec![f(ffi), f(rust)];
    table
        .row(
            "events/s",
            both(&|s| report::format_count(s.events_per_s())),
        )
        .row(
            "elapsed (s)",
            both(&|s| format!("{:.3}", s.elapsed.as_secs_f64())),
        )
        .row("allocations", both(&|s| s.allocations.to_string()))
        .row(
            "allocations/event",
            both(&|s| format!("{:.4}", s.allocs_per_event())),
        );
    print!("{}", table.render());
    println!("  ratio (C API / Rust API events/s): {ratio:.3}x");
    let command = command(args);
    println!("  reproduce: {command}");
    let mut json = JsonLine::default();
    json.field("scenario", "ffi")
        .field("events", ffi.events)
        .field("threads", args.threads)
        .field("shards", args.shards)
        .field("ffi_events_per_s", report::round_to(ffi.events_per_s(), 0))
        .field(
            "rust_events_per_s",
            report::round_to(rust.events_per_s(), 0),
        )
        .field("ffi_ratio", report::round_to(ratio, 3))
        .field("allocs_per_event", ffi.allocs_per_event())
        .field("rust_allocs_per_event", rust.allocs_per_event())
        .field(
            "ffi_elapsed_s",
            report::round_to(ffi.elapsed.as_secs_f64(), 4),
        )
        .field(
            "rust_elapsed_s",
            report::round_to(rust.elapsed.as_secs_f64(), 4),
        )
        .field("command", command);
    archive::emit(json.render(), args.json);
}

fn command(args: &Args) -> String {
    let mut flags = vec![
        ("events", args.events.to_string()),
        ("threads", args.threads.to_string()),
        ("shards", args.shards.to_string()),
        ("warmup", args.warmup.to_string()),
    ];
    if args.json {
        flags.push(("json", String::new()));
    }
    crate::reproduce_command("ffi", &flags, args.dir.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_c_line_parses_and_anything_else_is_refused() {
        let side = parse_c_line("events=10 seconds=0.5 allocs=3").unwrap();
        assert_eq!((side.events, side.allocations), (10, 3));
        assert_eq!(side.elapsed, Duration::from_millis(500));
        assert!(parse_c_line("events=10 seconds=0.5").is_none());
        assert!(parse_c_line("events=10 seconds=x allocs=3").is_none());
        assert!(parse_c_line("hello").is_none());
    }

    #[test]
    fn both_sides_read_the_same_config() {
        let args: Args = crate::parse_args("ffi", &[]);
        let json = config_json(&args, Path::new("/tmp/a \"b\""));
        let config = Config::from_json(&json).unwrap();
        assert_eq!(config.shards, Some(2));
        assert_eq!(config.data_dir, Path::new("/tmp/a \"b\""));
    }
}
