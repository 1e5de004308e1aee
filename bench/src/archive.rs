//! Every scenario run kept on disk: `<target>/net-bench/<scenario>/<UTC timestamp>.json`
//! holds the run's JSON object (the one `--json` prints), when and where it ran (timestamp, git
//! commit, host), its command line, and the latency curves its plots need. `net-bench report`
//! (`summary`) reads them back.
//!
//! A scenario hands its JSON object to `emit` (which also prints it under `--json`) and its
//! latency histograms to `latency`; `main` writes the archive once the scenario succeeded,
//! unless `--no-archive`. Failing to write it warns and leaves the run's outcome alone.
//!
//! `<target>` is `CARGO_TARGET_DIR` when set (relative to the workspace root if relative),
//! else the workspace's `target/`, wherever the bench is started from.

use crate::plot;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

/// The archive's layout version, `format` in every file.
pub const FORMAT: u64 = 1;

/// What this run has handed over so far.
static RUN: Mutex<Recorded> = Mutex::new(Recorded {
    json: None,
    latency: Vec::new(),
});

#[derive(Debug)]
struct Recorded {
    json: Option<String>,
    latency: Vec<Value>,
}

fn recorded() -> MutexGuard<'static, Recorded> {
    RUN.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The run's JSON object, one line: printed when `print` (`--json`: it is then the last line
/// of stdout), kept for the archive either way.
pub fn emit(line: String, print: bool) {
    if print {
        println!("{line}");
    }
    recorded().json = Some(line);
}

/// Keeps the latency curve of `histogram` (ns) for the archive: `plot` names the chart it
/// belongs on (one per measured quantity), `series` the design (net, or a baseline's name).
pub fn latency(plot: &str, series: &str, histogram: &Histogram<u64>) {
    if histogram.is_empty() {
        return;
    }
    let points: Vec<[f64; 2]> = plot::curve(histogram)
        .into_iter()
        .map(|(nines, us)| {
            [
                crate::report::round_to(nines, 3),
                crate::report::round_to(us, 3),
            ]
        })
        .collect();
    recorded().latency.push(json!({
        "plot": plot,
        "series": series,
        "samples": histogram.len(),
        "points": points,
    }));
}

/// The workspace's root: the bench crate's parent.
pub fn workspace_root() -> PathBuf {
    let bench = Path::new(env!("CARGO_MANIFEST_DIR"));
    bench.parent().unwrap_or(bench).to_path_buf()
}

/// Where archives go, given `CARGO_TARGET_DIR` (`target_dir`) and the workspace root.
pub fn archive_root(target_dir: Option<&Path>, workspace: &Path) -> PathBuf {
    let target = match target_dir {
        Some(dir) if !dir.as_os_str().is_empty() => workspace.join(dir),
        _ => workspace.join("target"),
    };
    target.join("net-bench")
}

/// `archive_root` for this process.
pub fn default_root() -> PathBuf {
    let target_dir = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from);
    archive_root(target_dir.as_deref(), &workspace_root())
}

/// The file for a run of `scenario` at `unix_s`: `<root>/<scenario>/<timestamp>.json`, or
/// `<timestamp>-N.json` when a run in the same second already took that name.
pub fn run_path(root: &Path, scenario: &str, unix_s: u64) -> PathBuf {
    let dir = root.join(scenario);
    let stamp = file_stamp(unix_s);
    let mut path = dir.join(format!("{stamp}.json"));
    let mut n = 1;
    while path.exists() {
        n += 1;
        path = dir.join(format!("{stamp}-{n}.json"));
    }
    path
}

/// Writes this run's archive, if the scenario emitted a JSON object; warns on stderr on
/// failure. `argv` is the bench's command line.
pub fn keep(scenario: &str, argv: &[String]) {
    let Some(result) = recorded().json.take() else {
        return;
    };
    let latency = std::mem::take(&mut recorded().latency);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let root = default_root();
    let path = run_path(&root, scenario, now.as_secs());
    let written = serde_json::from_str::<Value>(&result)
        .map_err(|e| format!("the run's JSON does not parse: {e}"))
        .and_then(|result| {
            let document = json!({
                "format": FORMAT,
                "scenario": scenario,
                "timestamp": iso8601(now.as_secs()),
                "unix_ms": u64::try_from(now.as_millis()).unwrap_or(u64::MAX),
                "git": git(),
                "host": host(),
                "argv": argv,
                "result": result,
                "latency": latency,
            });
            write(&path, &document).map_err(|e| e.to_string())
        });
    match written {
        Ok(()) => eprintln!("net-bench: archived {}", path.display()),
        Err(e) => eprintln!(
            "net-bench: warning: could not archive the run to {}: {e}",
            path.display()
        ),
    }
}

fn write(path: &Path, document: &Value) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let text = serde_json::to_string_pretty(document).map_err(std::io::Error::other)?;
    std::fs::write(path, compact_number_arrays(&text) + "\n")
}

/// Pretty JSON with each array of numbers (a curve's point) on one line: a curve is then a
/// line per point instead of four.
fn compact_number_arrays(pretty: &str) -> String {
    let mut out = String::with_capacity(pretty.len());
    let mut rest = pretty;
    while let Some(open) = rest.find('[') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let close = after.find(['[', ']', '{', '"']);
        match close {
            Some(end) if after.as_bytes()[end] == b']' && !after[..end].trim().is_empty() => {
                let items: Vec<&str> = after[..end].split(',').map(str::trim).collect();
                out.push('[');
                out.push_str(&items.join(", "));
                out.push(']');
                rest = &after[end + 1..];
            }
            _ => {
                out.push('[');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The commit the workspace is at and whether it has uncommitted changes; null without git.
fn git() -> Value {
    let root = workspace_root();
    let run = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(&root)
            .args(args)
            .stderr(std::process::Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    match run(&["rev-parse", "HEAD"]) {
        Some(commit) => {
            let dirty =
                run(&["status", "--porcelain", "--untracked-files=no"]).map(|s| !s.is_empty());
            json!({ "commit": commit, "dirty": dirty })
        }
        None => Value::Null,
    }
}

/// The machine: cores, CPU model, memory, kernel, host name, and its 1-minute load average
/// as the run ended (the machines are shared: a loaded one explains a slow run).
fn host() -> Value {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    let cpuinfo = read("/proc/cpuinfo");
    // The machine's cores, not this process's: a scenario may have pinned the main thread.
    let cores = cpuinfo
        .as_deref()
        .map(|text| text.lines().filter(|l| l.starts_with("processor")).count())
        .filter(|n| *n > 0)
        .or_else(|| std::thread::available_parallelism().map(|n| n.get()).ok());
    let load_1m =
        read("/proc/loadavg").and_then(|text| text.split_whitespace().next()?.parse::<f64>().ok());
    let first_value = |text: Option<String>, key: &str| {
        text?.lines().find_map(|line| {
            let (k, v) = line.split_once(':')?;
            (k.trim() == key).then(|| v.trim().to_owned())
        })
    };
    let memory_kib = first_value(read("/proc/meminfo"), "MemTotal")
        .and_then(|v| v.trim_end_matches("kB").trim().parse::<u64>().ok());
    json!({
        "cores": cores,
        "cpu": first_value(cpuinfo, "model name"),
        "memory_bytes": memory_kib.map(|k| k * 1024),
        "kernel": read("/proc/sys/kernel/osrelease").map(|s| s.trim().to_owned()),
        "hostname": read("/proc/sys/kernel/hostname").map(|s| s.trim().to_owned()),
        "load_1m": load_1m,
    })
}

/// (year, month, day, hour, minute, second) in UTC of `unix_s`.
fn civil(unix_s: u64) -> (i64, u32, u32, u32, u32, u32) {
    let days = i64::try_from(unix_s / 86_400).unwrap_or(i64::MAX);
    let secs = unix_s % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let small = |x: i64| u32::try_from(x).unwrap_or(0);
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let small_u = |x: u64| u32::try_from(x).unwrap_or(0);
    (
        year,
        small(month),
        small(day),
        small_u(h),
        small_u(m),
        small_u(s),
    )
}

/// `2026-11-30T12:34:56Z`.
pub fn iso8601(unix_s: u64) -> String {
    let (y, mo, d, h, mi, s) = civil(unix_s);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

/// `2026-11-30T12-34-56Z`: the timestamp as a file name (no colons), sorting by time.
pub fn file_stamp(unix_s: u64) -> String {
    iso8601(unix_s).replace(':', "-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_and_sort_as_file_names() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(iso8601(1_798_761_599), "2026-12-31T23:59:59Z");
        assert_eq!(file_stamp(1_798_761_599), "2026-12-31T23-59-59Z");
        assert!(file_stamp(1_000_000_000) < file_stamp(1_798_761_599));
    }

    #[test]
    fn archives_go_under_the_target_dir_of_the_workspace() {
        let ws = Path::new("/w");
        assert_eq!(archive_root(None, ws), Path::new("/w/target/net-bench"));
        assert_eq!(
            archive_root(Some(Path::new("")), ws),
            Path::new("/w/target/net-bench")
        );
        assert_eq!(
            archive_root(Some(Path::new("/var/tmp/t")), ws),
            Path::new("/var/tmp/t/net-bench")
        );
        assert_eq!(
            archive_root(Some(Path::new("out")), ws),
            Path::new("/w/out/net-bench")
        );
        // The workspace is the bench crate's parent, whatever the working directory.
        assert!(workspace_root().join("bench").join("Cargo.toml").is_file());
    }

    #[test]
    fn number_arrays_go_on_one_line_and_the_json_is_unchanged() {
        let doc =
            json!({"argv": ["a", "b"], "latency": [{"points": [[0.0, 1.5], [1.0, 2.0]]}], "e": []});
        let pretty = serde_json::to_string_pretty(&doc).unwrap();
        let compact = compact_number_arrays(&pretty);
        assert!(compact.contains("[0.0, 1.5],\n"), "{compact}");
        assert!(
            compact.contains("\"a\",\n"),
            "strings stay one per line: {compact}"
        );
        assert_eq!(serde_json::from_str::<Value>(&compact).unwrap(), doc);
    }

    #[test]
    fn a_second_run_in_the_same_second_gets_its_own_file() {
        let root = tempfile::tempdir().unwrap();
        let first = run_path(root.path(), "ingest", 1_798_761_599);
        assert_eq!(
            first,
            root.path().join("ingest").join("2026-12-31T23-59-59Z.json")
        );
        std::fs::create_dir_all(first.parent().unwrap()).unwrap();
        std::fs::write(&first, "{}").unwrap();
        let second = run_path(root.path(), "ingest", 1_798_761_599);
        assert_eq!(second.file_name().unwrap(), "2026-12-31T23-59-59Z-2.json");
    }
}
