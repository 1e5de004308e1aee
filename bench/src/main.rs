//! `net-bench`: runs a net scenario and, in the same process and run, its baseline, then
//! prints throughput, hdrhistogram latency percentiles and allocations per event as a table
//! (with the exact command to reproduce) and, under `--json`, as one JSON object on the last
//! line. Ratios between designs measured in one run are the figures to quote: the machines are
//! shared and noisy, absolute times are not comparable between runs.

mod adapters;
mod alloc;
mod archive;
mod baseline;
mod cpu;
mod demo;
mod disk;
mod durable;
mod feed;
mod ffi;
mod fold;
mod ingest;
mod latency;
mod ledger;
mod mesh;
mod pace;
mod payload;
mod plot;
mod progress;
mod readback;
mod record;
mod redex;
mod report;
mod socket;
mod storage;
mod summary;
mod transport;
mod workload;
mod writer;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "net-bench",
    version,
    about = "net benchmarks with same-run baselines"
)]
struct Cli {
    /// Do not keep this run's JSON under target/net-bench/<scenario>/ (`net-bench report`
    /// reads those archives).
    #[arg(long, global = true)]
    no_archive: bool,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Bus -> Redis Streams and bus -> JetStream sinks against the raw clients of those
    /// servers (redis, async-nats), in one run.
    Adapters(adapters::Args),
    /// Ingest, persist, read back and verify every event on the embedded default config.
    Demo(demo::Args),
    /// Ingest through the C API against the Rust API in the same run.
    Ffi(ffi::Args),
    /// The memories fold: fold events/s, ingest with the fold on over off, restore from a
    /// snapshot against a full replay.
    Fold(fold::Args),
    /// Ingest-to-persisted throughput and latency of net against a tokio + mutex baseline.
    Ingest(ingest::Args),
    /// Durable, visible and ingest latency of one paced shard against the raw disk.
    Latency(latency::Args),
    /// A subscription mirroring a publisher process's log over the mesh: events/s, durable
    /// events/s and end-to-end latency against plaintext UDP, with exactness and allocations.
    Mesh(mesh::Args),
    /// The publisher process of `mesh` (started by it).
    #[command(hide = true)]
    MeshNode(mesh::NodeArgs),
    /// Render the archived runs: report.md (a table of net against its baselines) and SVG
    /// plots, optionally rewriting README.md's generated region.
    Report(summary::Args),
    /// RedEX append and read throughput and net's durable ingest against the raw disk.
    Storage(storage::Args),
    /// Ingest through netd's local Unix socket against in-process ingest in the same run.
    Socket(socket::Args),
    /// Encrypted mesh packets/s and latency against plaintext sendmmsg and a tokio + snow baseline.
    Transport(transport::Args),
    /// Write events to a data dir and print each one acknowledged durable (for crash tests).
    Write(writer::Args),
}

/// Why a scenario failed; each variant says which side of the bench went wrong.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("net engine: {0}")]
    Engine(String),
    #[error("net storage: {0}")]
    Storage(String),
    #[error("verification failed: {0}")]
    Verification(String),
}

impl Failure {
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Failure {
        let context = context.into();
        move |source| Failure::Io { context, source }
    }

    pub fn engine(context: &str, error: impl std::fmt::Display) -> Failure {
        Failure::Engine(format!("{context}: {error}"))
    }

    pub fn storage(context: &str) -> impl FnOnce(net_storage::StorageError) -> Failure {
        move |error| Failure::Storage(format!("{context}: {error}"))
    }
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let outcome = match &cli.scenario {
        Scenario::Adapters(args) => adapters::run(args),
        Scenario::Demo(args) => demo::run(args),
        Scenario::Ffi(args) => ffi::run(args),
        Scenario::Socket(args) => socket::run(args),
        Scenario::Fold(args) => fold::run(args),
        Scenario::Ingest(args) => ingest::run(args),
        Scenario::Latency(args) => latency::run(args),
        Scenario::Mesh(args) => mesh::run(args),
        Scenario::Report(args) => summary::run(args),
        Scenario::MeshNode(args) => mesh::run_node(args),
        Scenario::Storage(args) => storage::run(args),
        Scenario::Transport(args) => transport::run(args),
        Scenario::Write(args) => writer::run(args),
    };
    match outcome {
        Ok(()) => {
            if !cli.no_archive {
                let scenario = matches.subcommand_name().unwrap_or("unknown");
                archive::keep(scenario, &std::env::args().collect::<Vec<_>>());
            }
            ExitCode::SUCCESS
        }
        Err(failure) => {
            eprintln!("net-bench: {failure}");
            ExitCode::FAILURE
        }
    }
}

/// Shuts `bus` down, giving it `deadline` to drain, and fails unless nothing was lost and no
/// shard panicked or failed.
pub fn shut_down_cleanly(bus: net_engine::Bus, deadline: Duration) -> Result<(), Failure> {
    let shutdown = bus.shutdown(deadline);
    if shutdown.lossy || !shutdown.panicked_shards.is_empty() || !shutdown.failed_shards.is_empty()
    {
        return Err(Failure::Verification(format!(
            "shutdown was not clean: {shutdown:?}"
        )));
    }
    Ok(())
}

/// Clap parser for `--payload-bytes`: a payload must hold the 12-byte identity that the
/// read-back verification relies on, and fit a record's u32 length.
pub fn parse_payload_bytes(text: &str) -> Result<usize, String> {
    let n: usize = text.parse().map_err(|e| format!("{e}"))?;
    let max = 16 << 20;
    if (payload::IDENTITY_BYTES..=max).contains(&n) {
        Ok(n)
    } else {
        Err(format!(
            "must be between {} and {max}",
            payload::IDENTITY_BYTES
        ))
    }
}

/// Clap parser for counts that must be at least one (`--events`, `--producers`, `--shards`).
pub fn parse_positive(text: &str) -> Result<u64, String> {
    match text.parse::<u64>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// A fresh directory for one design's files under `base` (`--dir`, or the system temp dir),
/// removed when dropped.
pub fn scratch_dir(base: Option<&Path>, design: &str) -> Result<tempfile::TempDir, Failure> {
    let base = base.map_or_else(std::env::temp_dir, Path::to_path_buf);
    tempfile::Builder::new()
        .prefix(&format!("net-bench-{design}-"))
        .tempdir_in(&base)
        .map_err(Failure::io(format!(
            "creating a scratch directory under {}",
            base.display()
        )))
}

/// The command line that reproduces a run, with every default spelled out; a flag with an
/// empty value is a switch.
pub fn reproduce_command(
    scenario: &str,
    flags: &[(&str, String)],
    dir: Option<&PathBuf>,
) -> String {
    let mut command = format!("cargo run --release -p net-bench -- {scenario}");
    for (flag, value) in flags {
        command.push_str(&format!(" --{flag}"));
        if !value.is_empty() {
            command.push_str(&format!(" {value}"));
        }
    }
    if let Some(dir) = dir {
        command.push_str(&format!(" --dir {}", dir.display()));
    }
    command
}

/// Parses a scenario's arguments from `line` (without the binary's name), as its tests do.
#[cfg(test)]
pub fn parse_args<A: clap::Args>(scenario: &str, line: &[&str]) -> A {
    #[derive(Debug, Parser)]
    struct Cli<A: clap::Args> {
        #[command(flatten)]
        args: A,
    }
    Cli::<A>::try_parse_from([&[scenario], line].concat())
        .expect("valid arguments")
        .args
}
