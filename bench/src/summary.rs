//! `net-bench report`: reads the archived runs (`archive`), takes the newest run of each
//! scenario, and writes `report.md` (a markdown table: each headline measure of net against
//! the baselines measured in the same run, their ratio, when it ran and the command that
//! reproduces it) and SVG plots (latency by percentile of net and its baselines, one chart per
//! measured quantity; throughput bars per scenario). Earlier runs of the newest run's exact
//! command give each figure a range.
//!
//! With `--readme FILE`, the region of FILE between `BEGIN` and `END` becomes the same table,
//! linking the plots when the output directory is inside FILE's directory and outside the
//! archive (so a link never points at build output). The region depends on the archives only,
//! so a second rewrite from the same archives changes nothing.
//!
//! A file that does not parse as a run is skipped with a warning that names it.

use crate::plot::{self, BarGroup};
use crate::{Failure, archive, report};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The markers around the generated region of a markdown file.
pub const BEGIN: &str = "<!-- bench-report:begin -->";
pub const END: &str = "<!-- bench-report:end -->";

/// The markdown file written into the output directory.
pub const MARKDOWN: &str = "report.md";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The archive: a directory per scenario of timestamped JSON runs (by default
    /// `target/net-bench` of the workspace, or under `CARGO_TARGET_DIR`).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Where `report.md` and the SVG plots go (by default `<dir>/report`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// A markdown file (README.md) whose region between `<!-- bench-report:begin -->` and
    /// `<!-- bench-report:end -->` is replaced by the table.
    #[arg(long)]
    readme: Option<PathBuf>,
}

/// One archived run.
#[derive(Debug, Clone)]
pub struct Run {
    pub path: PathBuf,
    pub scenario: String,
    /// `2026-11-30T12:34:56Z`.
    pub timestamp: String,
    /// The JSON object the scenario printed under `--json`.
    pub result: Map<String, Value>,
    pub curves: Vec<Curve>,
    /// The command that reproduces the run.
    pub command: String,
    pub host: Option<String>,
    pub commit: Option<String>,
    /// The machine's 1-minute load average as the run ended.
    pub load: Option<f64>,
}

/// One archived latency curve: (nines, µs) points.
#[derive(Debug, Clone)]
pub struct Curve {
    pub plot: String,
    pub series: String,
    pub points: Vec<(f64, f64)>,
}

impl Run {
    fn number(&self, field: &str) -> Option<f64> {
        self.result.get(field).and_then(Value::as_f64)
    }

    /// `2026-11-30 12:34`.
    fn date(&self) -> String {
        self.timestamp
            .get(..16)
            .unwrap_or(&self.timestamp)
            .replace('T', " ")
    }
}

pub fn run(args: &Args) -> Result<(), Failure> {
    let dir = args.dir.clone().unwrap_or_else(archive::default_root);
    let out = args.out.clone().unwrap_or_else(|| dir.join("report"));
    let (runs, warnings) = load(&dir)?;
    for warning in &warnings {
        eprintln!("net-bench report: warning: {warning}");
    }
    let scenarios = by_scenario(runs);
    if scenarios.is_empty() {
        return Err(Failure::Verification(format!(
            "no archived runs under {} (run a scenario first)",
            dir.display()
        )));
    }
    std::fs::create_dir_all(&out).map_err(Failure::io(format!("creating {}", out.display())))?;
    let plots = write_plots(&out, &scenarios)?;
    let mut markdown = format!(
        "# net-bench report\n\n{}",
        region(&scenarios, &dir, Some(("", &plots[..])))
    );
    for p in &plots {
        let _ = write!(markdown, "\n![{}]({})\n", p.title, p.file);
    }
    let path = out.join(MARKDOWN);
    std::fs::write(&path, markdown).map_err(Failure::io(format!("writing {}", path.display())))?;
    println!(
        "wrote {} and {} plots to {}",
        MARKDOWN,
        plots.len(),
        out.display()
    );
    if let Some(readme) = &args.readme {
        let links = plot_links(readme, &out, &dir);
        let body = region(&scenarios, &dir, links.as_deref().map(|l| (l, &plots[..])));
        rewrite_file(readme, &body)?;
        println!("rewrote the bench-report region of {}", readme.display());
    }
    Ok(())
}

/// Every run under `dir` (one directory per scenario), and a warning for each file skipped.
pub fn load(dir: &Path) -> Result<(Vec<Run>, Vec<String>), Failure> {
    let mut runs = Vec::new();
    let mut warnings = Vec::new();
    for scenario_dir in sorted_entries(dir)? {
        if !scenario_dir.is_dir() {
            continue;
        }
        for path in sorted_entries(&scenario_dir)? {
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let parsed = std::fs::read_to_string(&path)
                .map_err(|e| e.to_string())
                .and_then(|text| parse_run(&path, &text));
            match parsed {
                Ok(run) => runs.push(run),
                Err(e) => warnings.push(format!("skipping {}: {e}", path.display())),
            }
        }
    }
    Ok((runs, warnings))
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, Failure> {
    let entries =
        std::fs::read_dir(dir).map_err(Failure::io(format!("reading {}", dir.display())))?;
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    Ok(paths)
}

/// One archive file.
pub fn parse_run(path: &Path, text: &str) -> Result<Run, String> {
    let doc: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let text_field = |name: &str| doc.get(name).and_then(Value::as_str).map(str::to_owned);
    let scenario = text_field("scenario").ok_or("no \"scenario\"")?;
    let timestamp = text_field("timestamp").ok_or("no \"timestamp\"")?;
    let result = doc
        .get("result")
        .and_then(Value::as_object)
        .ok_or("no \"result\" object")?
        .clone();
    let curves = doc
        .get("latency")
        .and_then(Value::as_array)
        .map(|curves| curves.iter().filter_map(parse_curve).collect())
        .unwrap_or_default();
    let command = match result.get("command").and_then(Value::as_str) {
        Some(command) => command.to_owned(),
        None => command_from_argv(doc.get("argv")),
    };
    Ok(Run {
        path: path.to_path_buf(),
        scenario,
        timestamp,
        result,
        curves,
        command,
        host: doc.get("host").map(describe_host),
        load: doc.pointer("/host/load_1m").and_then(Value::as_f64),
        commit: doc
            .pointer("/git/commit")
            .and_then(Value::as_str)
            .map(|c| c.chars().take(10).collect()),
    })
}

fn parse_curve(curve: &Value) -> Option<Curve> {
    let points = curve.get("points")?.as_array()?;
    Some(Curve {
        plot: curve.get("plot")?.as_str()?.to_owned(),
        series: curve.get("series")?.as_str()?.to_owned(),
        points: points
            .iter()
            .filter_map(|p| Some((p.get(0)?.as_f64()?, p.get(1)?.as_f64()?)))
            .collect(),
    })
}

/// `cargo run --release -p net-bench -- <the bench's arguments>`.
fn command_from_argv(argv: Option<&Value>) -> String {
    let args: Vec<&str> = argv
        .and_then(Value::as_array)
        .map(|a| a.iter().skip(1).filter_map(Value::as_str).collect())
        .unwrap_or_default();
    crate::reproduce_command(&args.join(" "), &[], None)
}

/// `2 cores, <CPU model>, Linux <kernel>`.
fn describe_host(host: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(cores) = host.get("cores").and_then(Value::as_u64) {
        parts.push(format!("{cores} cores"));
    }
    if let Some(cpu) = host.get("cpu").and_then(Value::as_str) {
        parts.push(cpu.to_owned());
    }
    if let Some(bytes) = host.get("memory_bytes").and_then(Value::as_u64) {
        parts.push(format!("{:.0} GiB", bytes as f64 / f64::from(1u32 << 30)));
    }
    if let Some(kernel) = host.get("kernel").and_then(Value::as_str) {
        parts.push(format!("Linux {kernel}"));
    }
    parts.join(", ")
}

/// The runs of each scenario, oldest first.
pub fn by_scenario(runs: Vec<Run>) -> BTreeMap<String, Vec<Run>> {
    let mut scenarios: BTreeMap<String, Vec<Run>> = BTreeMap::new();
    for run in runs {
        scenarios.entry(run.scenario.clone()).or_default().push(run);
    }
    for runs in scenarios.values_mut() {
        runs.sort_by(|a, b| (&a.timestamp, &a.path).cmp(&(&b.timestamp, &b.path)));
    }
    scenarios
}

/// How a measure's figures read.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Unit {
    /// A rate in the named unit per second (events/s, packets/s): higher is better.
    Rate(&'static str),
    MbPerS,
    GbPerS,
    /// Latency in µs: lower is better.
    Us,
    Ms,
    /// net ÷ a baseline.
    Ratio,
}

impl Unit {
    fn format(self, v: f64) -> String {
        match self {
            Unit::Rate(unit) if v >= 1e6 => format!("{:.2} M {unit}", v / 1e6),
            Unit::Rate(unit) if v >= 1e4 => format!("{:.0} k {unit}", v / 1e3),
            Unit::Rate(unit) => format!("{v:.0} {unit}"),
            Unit::MbPerS => format!("{v:.0} MB/s"),
            Unit::GbPerS => format!("{v:.2} GB/s"),
            Unit::Us if v >= 1000.0 => format!("{:.2} ms", v / 1000.0),
            Unit::Us => format!("{v:.1} µs"),
            Unit::Ms => format!("{v:.0} ms"),
            Unit::Ratio => format!("{v:.2}"),
        }
    }

    /// The unit as a chart's label says it.
    fn name(self) -> &'static str {
        match self {
            Unit::Rate(unit) => unit,
            Unit::MbPerS => "MB/s",
            Unit::GbPerS => "GB/s",
            Unit::Us => "µs",
            Unit::Ms => "ms",
            Unit::Ratio => "ratio",
        }
    }

    fn higher_is_better(self) -> bool {
        matches!(self, Unit::Rate(_) | Unit::MbPerS | Unit::GbPerS)
    }
}

/// A headline figure of a scenario: net's field, the same-run baselines' fields, and the
/// scenario's own ratio field when it is not simply net ÷ the first baseline.
#[derive(Debug)]
struct Measure {
    what: &'static str,
    unit: Unit,
    net: &'static str,
    baselines: &'static [(&'static str, &'static str)],
    ratio: Option<&'static str>,
}

const fn measure(
    what: &'static str,
    unit: Unit,
    net: &'static str,
    baselines: &'static [(&'static str, &'static str)],
) -> Measure {
    Measure {
        what,
        unit,
        net,
        baselines,
        ratio: None,
    }
}

const EVENTS: Unit = Unit::Rate("events/s");

/// The headline measures of each scenario, in the order the table lists them.
const MEASURES: &[(&str, &[Measure])] = &[
    (
        "demo",
        &[
            measure("ingest, durable, closed loop", EVENTS, "events_per_s", &[]),
            measure("poll back and verify", EVENTS, "poll_events_per_s", &[]),
        ],
    ),
    (
        "ingest",
        &[
            measure(
                "ingest → persisted, closed loop",
                EVENTS,
                "events_per_s",
                &[("tokio+mutex", "baseline_events_per_s")],
            ),
            measure(
                "ingest → persisted p99, paced",
                Unit::Us,
                "p99_us",
                &[("tokio+mutex", "baseline_p99_us")],
            ),
        ],
    ),
    (
        "latency",
        &[
            measure(
                "durable ack p99, paced",
                Unit::Us,
                "durable_p99_us",
                &[("write + fdatasync", "raw_fsync_p99_us")],
            ),
            measure(
                "send → visible p99, paced",
                Unit::Us,
                "visible_p99_us",
                &[("O_DIRECT write", "raw_write_p99_us")],
            ),
        ],
    ),
    (
        "storage",
        &[
            measure(
                "RedEX append",
                Unit::MbPerS,
                "append_mb_s",
                &[("O_DIRECT sequential", "raw_mb_s")],
            ),
            measure(
                "durable ingest, closed loop",
                EVENTS,
                "durable_events_per_s",
                &[],
            ),
            measure(
                "durable p99, paced",
                Unit::Us,
                "durable_p99_us",
                &[("write + fdatasync", "raw_fsync_p99_us")],
            ),
            measure(
                "Bus::poll, page cache dropped",
                Unit::GbPerS,
                "bus_poll_gb_s",
                &[("O_DIRECT reads", "raw_poll_files_gb_s")],
            ),
        ],
    ),
    (
        "transport",
        &[
            measure(
                "encrypted messages",
                Unit::Rate("packets/s"),
                "mesh_pps",
                &[
                    ("raw sendmmsg", "raw_pps"),
                    ("tokio + snow", "baseline_pps"),
                ],
            ),
            measure(
                "one-way latency p99",
                Unit::Us,
                "mesh_p99_us",
                &[("raw UDP ping-pong", "raw_p99_us")],
            ),
        ],
    ),
    (
        "mesh",
        &[
            measure(
                "subscription mirrored into B's log",
                EVENTS,
                "events_per_s",
                &[("raw sendmmsg", "raw_events_per_s")],
            ),
            measure("durable on both sides", EVENTS, "durable_events_per_s", &[]),
            measure("A's send → B's poll_wait p99", Unit::Us, "e2e_p99_us", &[]),
        ],
    ),
    (
        "adapters",
        &[
            measure(
                "bus → RedisSink",
                EVENTS,
                "redis_events_per_s",
                &[("raw redis client", "redis_raw_per_s")],
            ),
            measure(
                "bus → JetStreamSink",
                EVENTS,
                "jetstream_events_per_s",
                &[("raw async-nats", "jetstream_raw_per_s")],
            ),
        ],
    ),
    (
        "fold",
        &[
            measure("memories fold", EVENTS, "fold_events_per_s", &[]),
            Measure {
                ratio: Some("ingest_ratio"),
                ..measure(
                    "ingest with the fold on",
                    EVENTS,
                    "ingest_events_per_s_on",
                    &[("fold off", "ingest_events_per_s_off")],
                )
            },
            measure(
                "restore from a snapshot",
                Unit::Ms,
                "restore_ms",
                &[("full replay", "replay_ms")],
            ),
        ],
    ),
    (
        "ffi",
        &[measure(
            "ingest through the C API",
            EVENTS,
            "ffi_events_per_s",
            &[("Rust API", "rust_events_per_s")],
        )],
    ),
    (
        "socket",
        &[
            measure(
                "ingest through netd's Unix socket",
                EVENTS,
                "socket_events_per_s",
                &[("in-process", "direct_events_per_s")],
            ),
            measure(
                "acknowledged frame round trip p99",
                Unit::Us,
                "ack_p99_us",
                &[],
            ),
        ],
    ),
];

fn measures(scenario: &str) -> &'static [Measure] {
    MEASURES
        .iter()
        .find(|(name, _)| *name == scenario)
        .map_or(&[], |(_, measures)| measures)
}

/// A figure of the newest run, and its range over the runs of the same command.
fn figure(runs: &[Run], unit: Unit, value: impl Fn(&Run) -> Option<f64>) -> Option<String> {
    let newest = runs.last()?;
    let v = value(newest)?;
    let same: Vec<f64> = runs
        .iter()
        .filter(|r| r.command == newest.command)
        .filter_map(&value)
        .collect();
    let mut text = unit.format(v);
    if same.len() > 1 {
        let (lo, hi) = same
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
                (lo.min(*x), hi.max(*x))
            });
        let _ = write!(text, " ({} runs: {})", same.len(), range(unit, lo, hi));
    }
    Some(text)
}

/// `6.00–6.30 M events/s`: the unit once when both ends share it.
fn range(unit: Unit, lo: f64, hi: f64) -> String {
    let (lo, hi) = (unit.format(lo), unit.format(hi));
    match (lo.split_once(' '), hi.split_once(' ')) {
        (Some((a, unit_a)), Some((b, unit_b))) if unit_a == unit_b => format!("{a}–{b} {unit_a}"),
        _ => format!("{lo}–{hi}"),
    }
}

fn ratio_value(run: &Run, m: &Measure, baseline: &str, first: bool) -> Option<f64> {
    if let (true, Some(field)) = (first, m.ratio) {
        return run.number(field);
    }
    let (net, base) = (run.number(m.net)?, run.number(baseline)?);
    (base > 0.0).then(|| net / base)
}

/// The markdown table's rows of one scenario.
fn rows(runs: &[Run]) -> Vec<[String; 7]> {
    let Some(newest) = runs.last() else {
        return Vec::new();
    };
    let known = measures(&newest.scenario);
    let mut rows = Vec::new();
    for m in known {
        let Some(net) = figure(runs, m.unit, |r| r.number(m.net)) else {
            continue;
        };
        let mut baselines = Vec::new();
        let mut ratios = Vec::new();
        for (i, (name, field)) in m.baselines.iter().enumerate() {
            let Some(base) = figure(runs, m.unit, |r| r.number(field)) else {
                continue;
            };
            baselines.push(format!("{name}: {base}"));
            let ratio = figure(runs, Unit::Ratio, |r| ratio_value(r, m, field, i == 0));
            if let Some(ratio) = ratio {
                ratios.push(if m.baselines.len() > 1 {
                    format!("{ratio} ({name})")
                } else {
                    ratio
                });
            }
        }
        rows.push([
            newest.scenario.clone(),
            m.what.to_owned(),
            net,
            dash_if_empty(baselines.join("; ")),
            dash_if_empty(ratios.join("; ")),
            newest.date(),
            format!("`{}`", newest.command),
        ]);
    }
    if rows.is_empty() {
        rows.push([
            newest.scenario.clone(),
            "no headline measures known to `net-bench report`: see the archive".to_owned(),
            format!("`{}`", newest.path.display()),
            "—".to_owned(),
            "—".to_owned(),
            newest.date(),
            format!("`{}`", newest.command),
        ]);
    }
    rows
}

fn dash_if_empty(text: String) -> String {
    if text.is_empty() {
        "—".to_owned()
    } else {
        text
    }
}

/// The generated markdown: the table, where and when it was measured, and the plots
/// (`links`: the prefix from the markdown file to the plots, and the plots' file names).
pub fn region(
    scenarios: &BTreeMap<String, Vec<Run>>,
    dir: &Path,
    links: Option<(&str, &[Plot])>,
) -> String {
    let newest: Vec<&Run> = scenarios.values().filter_map(|r| r.last()).collect();
    let first = newest.iter().map(|r| r.date()).min().unwrap_or_default();
    let last = newest.iter().map(|r| r.date()).max().unwrap_or_default();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Generated by `net-bench report` from the newest archived run of each scenario \
         (runs of {first} to {last} UTC; archive `{}`). A range is over the archived runs of \
         the same command. The ratio is net ÷ the baseline measured in the same run (for \
         latency, above 1 is slower than the baseline).\n",
        dir.file_name().map_or_else(
            || dir.display().to_string(),
            |d| format!("…/{}", d.to_string_lossy())
        )
    );
    out.push_str(
        "| scenario | measure | net | baseline(s), same run | ratio | run (UTC) | reproduce |\n",
    );
    out.push_str("|---|---|---|---|---|---|---|\n");
    for runs in scenarios.values() {
        for row in rows(runs) {
            let cells: Vec<String> = row.iter().map(|c| c.replace('|', "\\|")).collect();
            let _ = writeln!(out, "| {} |", cells.join(" | "));
        }
    }
    let mut hosts: Vec<&str> = newest.iter().filter_map(|r| r.host.as_deref()).collect();
    hosts.sort_unstable();
    hosts.dedup();
    let mut commits: Vec<&str> = newest.iter().filter_map(|r| r.commit.as_deref()).collect();
    commits.sort_unstable();
    commits.dedup();
    if !hosts.is_empty() {
        let _ = writeln!(out, "\nHost: {}.", hosts.join("; "));
    }
    if !commits.is_empty() {
        let _ = writeln!(out, "Commits: {}.", commits.join(", "));
    }
    let loads: Vec<String> = newest
        .iter()
        .filter_map(|r| Some(format!("{} {:.1}", r.scenario, r.load?)))
        .collect();
    if !loads.is_empty() {
        let _ = writeln!(
            out,
            "Load average (1 min) as each run ended: {}.",
            loads.join(", ")
        );
    }
    if let Some((prefix, plots)) = links.filter(|(_, p)| !p.is_empty()) {
        let links: Vec<String> = plots
            .iter()
            .map(|p| format!("[{}]({prefix}{})", p.title, p.file))
            .collect();
        let _ = writeln!(out, "\nPlots: {}.", links.join(", "));
    }
    out
}

/// A plot written to the output directory.
#[derive(Debug, Clone, PartialEq)]
pub struct Plot {
    pub file: String,
    pub title: String,
}

/// Writes each scenario's plots into `out`.
fn write_plots(out: &Path, scenarios: &BTreeMap<String, Vec<Run>>) -> Result<Vec<Plot>, Failure> {
    let mut written = Vec::new();
    for (scenario, runs) in scenarios {
        let Some(newest) = runs.last() else { continue };
        for (file, title, svg) in plots(newest) {
            let path = out.join(&file);
            std::fs::write(&path, svg)
                .map_err(Failure::io(format!("writing {}", path.display())))?;
            written.push(Plot {
                file,
                title: format!("{scenario}: {title}"),
            });
        }
    }
    Ok(written)
}

/// (file name, short title, SVG) of each plot of one run: a latency chart per measured
/// quantity, and throughput bars.
fn plots(run: &Run) -> Vec<(String, String, String)> {
    let mut plots = Vec::new();
    let mut names: Vec<&str> = Vec::new();
    for curve in &run.curves {
        if !names.contains(&curve.plot.as_str()) {
            names.push(&curve.plot);
        }
    }
    for name in names {
        let series: Vec<(&str, Vec<(f64, f64)>)> = run
            .curves
            .iter()
            .filter(|c| c.plot == name)
            .map(|c| (c.series.as_str(), c.points.clone()))
            .collect();
        let title = format!(
            "{}: {name}, latency by percentile ({})",
            run.scenario,
            run.date()
        );
        plots.push((
            format!("latency-{}-{}.svg", run.scenario, slug(name)),
            format!("{name} latency"),
            plot::svg_curves(&title, &series),
        ));
    }
    let groups: Vec<BarGroup> = measures(&run.scenario)
        .iter()
        .filter(|m| m.unit.higher_is_better())
        .filter_map(|m| {
            let net = run.number(m.net)?;
            let mut bars = vec![("net".to_owned(), net)];
            for (name, field) in m.baselines {
                bars.extend(run.number(field).map(|v| ((*name).to_owned(), v)));
            }
            let format: fn(f64) -> String = match m.unit {
                Unit::GbPerS => |v| format!("{v:.2}"),
                _ => report::format_count,
            };
            Some(BarGroup {
                label: format!("{} ({})", m.what, m.unit.name()),
                bars,
                format,
            })
        })
        .collect();
    if !groups.is_empty() {
        let title = format!(
            "{}: net and its baselines, same run ({})",
            run.scenario,
            run.date()
        );
        plots.push((
            format!("throughput-{}.svg", run.scenario),
            "throughput".to_owned(),
            plot::bars(&title, &groups),
        ));
    }
    plots
}

/// `ingest → persisted, paced` → `ingest-persisted-paced`.
fn slug(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_end_matches('-').to_owned()
}

/// The prefix from `readme`'s directory to the plots in `out`, when they are inside it and
/// not in the archive (build output is not committed).
fn plot_links(readme: &Path, out: &Path, archive: &Path) -> Option<String> {
    let out = out.canonicalize().ok()?;
    let base = readme.canonicalize().ok()?.parent()?.to_path_buf();
    if archive.canonicalize().is_ok_and(|a| out.starts_with(a)) {
        return None;
    }
    let relative = out.strip_prefix(base).ok()?;
    let prefix = relative.to_string_lossy().into_owned();
    Some(if prefix.is_empty() {
        prefix
    } else {
        format!("{prefix}/")
    })
}

/// `text` with the region between `BEGIN` and `END` replaced by `body`.
pub fn rewrite_region(text: &str, body: &str) -> Result<String, String> {
    let start = text
        .find(BEGIN)
        .ok_or_else(|| format!("no {BEGIN} marker"))?
        + BEGIN.len();
    let end = text[start..]
        .find(END)
        .ok_or_else(|| format!("no {END} marker after {BEGIN}"))?
        + start;
    Ok(format!(
        "{}\n{}\n{}",
        &text[..start],
        body.trim_end(),
        &text[end..]
    ))
}

fn rewrite_file(path: &Path, body: &str) -> Result<(), Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(Failure::io(format!("reading {}", path.display())))?;
    let rewritten = rewrite_region(&text, body)
        .map_err(|e| Failure::Verification(format!("{}: {e}", path.display())))?;
    std::fs::write(path, rewritten).map_err(Failure::io(format!("writing {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive_file(scenario: &str, timestamp: &str, result: Value) -> String {
        serde_json::json!({
            "format": 1,
            "scenario": scenario,
            "timestamp": timestamp,
            "git": {"commit": "0123456789abcdef", "dirty": false},
            "host": {"cores": 2, "cpu": "Test CPU", "kernel": "6.1", "load_1m": 1.5},
            "argv": ["net-bench", scenario, "--json"],
            "result": result,
            "latency": [
                {"plot": "paced", "series": "net", "samples": 3, "points": [[0.0, 1.0], [1.0, 2.0], [5.0, 9.0]]},
                {"plot": "paced", "series": "tokio+mutex", "samples": 3, "points": [[0.0, 2.0], [5.0, 20.0]]}
            ],
        })
        .to_string()
    }

    fn ingest(events_per_s: f64, base: f64) -> Value {
        serde_json::json!({
            "scenario": "ingest",
            "events_per_s": events_per_s,
            "baseline_events_per_s": base,
            "ratio": events_per_s / base,
            "p99_us": 1200.0,
            "baseline_p99_us": 600.0,
            "command": "cargo run --release -p net-bench -- ingest --events 5000000",
        })
    }

    /// An archive with two ingest runs of one command, a fold run without a `command` field,
    /// a corrupt file, a file that is not a run, and a non-JSON file.
    fn fixture() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let put = |rel: &str, text: &str| {
            let path = dir.path().join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        };
        put(
            "ingest/2026-11-30T10-00-00Z.json",
            &archive_file("ingest", "2026-11-30T10:00:00Z", ingest(6.0e6, 1.5e6)),
        );
        put(
            "ingest/2026-11-30T11-00-00Z.json",
            &archive_file("ingest", "2026-11-30T11:00:00Z", ingest(6.3e6, 1.5e6)),
        );
        put(
            "fold/2026-11-30T12-00-00Z.json",
            &archive_file(
                "fold",
                "2026-11-30T12:00:00Z",
                serde_json::json!({"scenario": "fold", "fold_events_per_s": 437000.0,
                    "ingest_events_per_s_on": 3.75e6, "ingest_events_per_s_off": 3.75e6,
                    "ingest_ratio": 0.846, "restore_ms": 341.0, "replay_ms": 17700.0}),
            ),
        );
        put(
            "ingest/2026-11-30T12-00-00Z.json",
            "{\"scenario\": \"ingest\", trunc",
        );
        put(
            "ingest/2026-11-30T13-00-00Z.json",
            "{\"scenario\": \"ingest\"}",
        );
        put("ingest/notes.txt", "not a run");
        put("report/report.md", "# an earlier report");
        dir
    }

    #[test]
    fn corrupt_and_foreign_files_are_skipped_with_a_warning_naming_them() {
        let dir = fixture();
        let (runs, warnings) = load(dir.path()).unwrap();
        assert_eq!(runs.len(), 3);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(
            warnings[0].contains("2026-11-30T12-00-00Z.json") && warnings[0].contains("not JSON")
        );
        assert!(
            warnings[1].contains("2026-11-30T13-00-00Z.json") && warnings[1].contains("timestamp")
        );
    }

    #[test]
    fn table_has_a_row_per_measure_of_the_newest_run_with_ranges() {
        let dir = fixture();
        let scenarios = by_scenario(load(dir.path()).unwrap().0);
        let text = region(&scenarios, dir.path(), None);
        let rows: Vec<&str> = text.lines().filter(|l| l.starts_with("| ")).collect();
        // The header, then fold's three rows and ingest's two (scenarios sorted by name).
        assert_eq!(rows.len(), 1 + 3 + 2, "{text}");
        assert!(
            rows[1].starts_with(
                "| fold | memories fold | 437 k events/s | — | — | 2026-11-30 12:00 |"
            ),
            "{}",
            rows[1]
        );
        // Fold's own ratio field, not on ÷ off; its command comes from the archived argv.
        assert!(
            rows[2].contains("| fold off: 3.75 M events/s | 0.85 |"),
            "{}",
            rows[2]
        );
        assert!(rows[2].ends_with("| `cargo run --release -p net-bench -- fold --json` |"));
        assert!(
            rows[3].contains("| full replay: 17700 ms | 0.02 |"),
            "{}",
            rows[3]
        );
        assert_eq!(
            rows[4],
            "| ingest | ingest → persisted, closed loop | 6.30 M events/s (2 runs: 6.00–6.30 M events/s) \
             | tokio+mutex: 1.50 M events/s (2 runs: 1.50–1.50 M events/s) | 4.20 (2 runs: 4.00–4.20) \
             | 2026-11-30 11:00 | `cargo run --release -p net-bench -- ingest --events 5000000` |"
        );
        assert!(
            rows[5].contains("| 1.20 ms (2 runs: 1.20–1.20 ms) | tokio+mutex: 600.0 µs"),
            "{}",
            rows[5]
        );
        assert!(text.contains("Host: 2 cores, Test CPU, Linux 6.1."));
        assert!(text.contains("Commits: 0123456789."));
        assert!(
            text.contains("as each run ended: fold 1.5, ingest 1.5."),
            "{text}"
        );
        assert!(!text.contains("Plots:"));
    }

    #[test]
    fn rewriting_the_region_is_idempotent_and_keeps_the_rest() {
        let text = format!("# Title\n\nbefore\n\n{BEGIN}\nold table\n{END}\n\nafter\n");
        let once = rewrite_region(&text, "| new |\n").unwrap();
        assert_eq!(
            once,
            format!("# Title\n\nbefore\n\n{BEGIN}\n| new |\n{END}\n\nafter\n")
        );
        assert_eq!(rewrite_region(&once, "| new |\n").unwrap(), once);
        assert!(
            rewrite_region("no markers", "x")
                .unwrap_err()
                .contains(BEGIN)
        );
        assert!(
            rewrite_region(&format!("{BEGIN} only"), "x")
                .unwrap_err()
                .contains(END)
        );
    }

    #[test]
    fn the_report_writes_markdown_plots_and_the_readme_region() {
        let dir = fixture();
        let repo = tempfile::tempdir().unwrap();
        let readme = repo.path().join("README.md");
        std::fs::write(&readme, format!("# R\n\n{BEGIN}\n{END}\n")).unwrap();
        let out = repo.path().join("docs").join("bench");
        let args = Args {
            dir: Some(dir.path().to_path_buf()),
            out: Some(out.clone()),
            readme: Some(readme.clone()),
        };
        run(&args).unwrap();
        let markdown = std::fs::read_to_string(out.join(MARKDOWN)).unwrap();
        assert!(markdown.contains("| ingest | ingest → persisted, closed loop |"));
        for svg in [
            "latency-ingest-paced.svg",
            "throughput-ingest.svg",
            "throughput-fold.svg",
        ] {
            let doc = std::fs::read_to_string(out.join(svg)).unwrap();
            assert!(doc.starts_with("<svg"), "{svg}");
        }
        let rewritten = std::fs::read_to_string(&readme).unwrap();
        assert!(rewritten.contains("[ingest: paced latency](docs/bench/latency-ingest-paced.svg)"));
        run(&args).unwrap();
        assert_eq!(std::fs::read_to_string(&readme).unwrap(), rewritten);
    }

    #[test]
    fn units_and_slugs_read_well() {
        assert_eq!(EVENTS.format(6_301_234.0), "6.30 M events/s");
        assert_eq!(EVENTS.format(437_000.0), "437 k events/s");
        assert_eq!(Unit::Us.format(1234.0), "1.23 ms");
        assert_eq!(Unit::Us.format(28.04), "28.0 µs");
        assert_eq!(slug("ingest → persisted, paced"), "ingest-persisted-paced");
    }
}
