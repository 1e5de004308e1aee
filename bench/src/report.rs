//! What a scenario prints: latency percentiles from hdrhistograms, throughput figures, a
//! plain-text table, and the one-line JSON object that must be the last line under `--json`.
//!
//! Latency histograms hold nanoseconds; reports quote microseconds rounded to two decimals,
//! which is below hdrhistogram's three significant digits for anything over 100 µs and so
//! loses nothing that was measured. MB and GB are decimal (10^6, 10^9 bytes).

use hdrhistogram::Histogram;
use serde_json::Value;
use std::fmt::Write as _;
use std::time::Duration;

/// Quantiles every latency report quotes, with their labels.
pub const QUANTILES: [(f64, &str); 6] = [
    (0.5, "p50"),
    (0.9, "p90"),
    (0.99, "p99"),
    (0.999, "p99.9"),
    (0.9999, "p99.99"),
    (1.0, "max"),
];

/// Latency percentiles in microseconds, two decimals.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Percentiles {
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub p9999_us: f64,
    pub max_us: f64,
    pub samples: u64,
}

impl Percentiles {
    /// Reads the percentiles of a histogram of nanoseconds; all zero when it is empty.
    pub fn from_ns(histogram: &Histogram<u64>) -> Percentiles {
        if histogram.is_empty() {
            return Percentiles::default();
        }
        let at = |q: f64| us_from_ns(histogram.value_at_quantile(q));
        Percentiles {
            p50_us: at(0.5),
            p90_us: at(0.9),
            p99_us: at(0.99),
            p999_us: at(0.999),
            p9999_us: at(0.9999),
            max_us: us_from_ns(histogram.max()),
            samples: histogram.len(),
        }
    }

    /// The values in `QUANTILES` order.
    pub fn values_us(&self) -> [f64; 6] {
        [
            self.p50_us,
            self.p90_us,
            self.p99_us,
            self.p999_us,
            self.p9999_us,
            self.max_us,
        ]
    }
}

/// Nanoseconds to microseconds, rounded half away from zero to two decimals.
pub fn us_from_ns(ns: u64) -> f64 {
    (ns as f64 / 10.0).round() / 100.0
}

/// Microseconds as the table shows them.
pub fn format_us(us: f64) -> String {
    format!("{us:.2}")
}

/// Events (or any count) per second over `elapsed`.
pub fn per_s(count: u64, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
}

/// A count with thousands separators, for humans.
pub fn format_count(n: f64) -> String {
    let digits = format!("{:.0}", n.max(0.0));
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Rounds to `decimals` places so that JSON figures stay readable.
pub fn round_to(x: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (x * scale).round() / scale
}

/// A left-labelled table with one column per design (or one column of values); a row without
/// cells is a section heading.
#[derive(Debug, Default)]
pub struct Table {
    title: String,
    header: Vec<String>,
    rows: Vec<(String, Vec<String>)>,
}

impl Table {
    pub fn new(title: &str, columns: &[&str]) -> Table {
        Table {
            title: title.to_owned(),
            header: columns.iter().map(|c| (*c).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, label: &str, cells: Vec<String>) -> &mut Table {
        assert_eq!(
            cells.len(),
            self.header.len(),
            "row {label:?} has a cell per column"
        );
        self.rows.push((label.to_owned(), cells));
        self
    }

    /// A heading line for the rows that follow; it does not widen the label column.
    pub fn heading(&mut self, text: &str) -> &mut Table {
        self.rows.push((text.to_owned(), Vec::new()));
        self
    }

    /// Adds one row per quantile, one cell per histogram summary.
    pub fn latency_rows(&mut self, what: &str, columns: &[Percentiles]) -> &mut Table {
        for (i, (_, label)) in QUANTILES.iter().enumerate() {
            let cells = columns
                .iter()
                .map(|p| format_us(p.values_us()[i]))
                .collect();
            self.row(&format!("{what} {label} (µs)"), cells);
        }
        self
    }

    pub fn render(&self) -> String {
        let cell_rows = || self.rows.iter().filter(|(_, cells)| !cells.is_empty());
        let label_width = cell_rows()
            .map(|(l, _)| l.chars().count())
            .max()
            .unwrap_or(0);
        let widths: Vec<usize> = (0..self.header.len())
            .map(|c| {
                let cells = cell_rows().map(|(_, cells)| cells[c].chars().count());
                cells
                    .chain([self.header[c].chars().count()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = format!("{}\n", self.title);
        // A heading has no cells and prints as it is.
        let mut line = |label: &str, cells: &[String]| {
            if cells.is_empty() {
                let _ = writeln!(out, "  {label}");
                return;
            }
            let _ = write!(out, "  {label:<label_width$}");
            for (cell, width) in cells.iter().zip(&widths) {
                let _ = write!(out, "  {cell:>width$}");
            }
            out.push('\n');
        };
        line("", &self.header);
        for (label, cells) in &self.rows {
            line(label, cells);
        }
        out
    }
}

/// A JSON object printed as a single line with its fields in insertion order (serde_json's
/// own map sorts keys unless a crate-wide feature is switched on for the whole workspace).
#[derive(Debug, Default)]
pub struct JsonLine {
    fields: Vec<(String, Value)>,
}

impl JsonLine {
    pub fn field(&mut self, name: &str, value: impl Into<Value>) -> &mut JsonLine {
        assert!(
            self.fields.iter().all(|(n, _)| n != name),
            "JSON field {name:?} set twice"
        );
        self.fields.push((name.to_owned(), value.into()));
        self
    }

    /// The latency fields under `prefix` (`p50_us`, `p90_us`, `p99_us`, `p999_us`,
    /// `p9999_us`, `max_us`).
    pub fn latency(&mut self, prefix: &str, p: &Percentiles) -> &mut JsonLine {
        self.latency_or_null(prefix, Some(p))
    }

    /// The fields of `latency`, null when nothing was measured.
    pub fn latency_or_null(&mut self, prefix: &str, p: Option<&Percentiles>) -> &mut JsonLine {
        let values = p.map(Percentiles::values_us);
        for (i, (_, label)) in QUANTILES.iter().enumerate() {
            let name = format!("{prefix}{}_us", label.replace('.', ""));
            self.field(&name, values.map(|v| v[i]));
        }
        self
    }

    pub fn render(&self) -> String {
        let fields: Vec<String> = self
            .fields
            .iter()
            .map(|(name, value)| format!("{}:{value}", Value::from(name.as_str())))
            .collect();
        format!("{{{}}}", fields.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nanoseconds_become_microseconds_with_two_decimals() {
        assert_eq!(us_from_ns(0), 0.0);
        assert_eq!(us_from_ns(1_234), 1.23);
        assert_eq!(us_from_ns(1_235), 1.24);
        assert_eq!(us_from_ns(999_994), 999.99);
        assert_eq!(format_us(us_from_ns(1_500)), "1.50");
        assert_eq!(format_us(us_from_ns(12_345_678)), "12345.68");
    }

    #[test]
    fn percentiles_read_the_histogram_in_microseconds() {
        let mut h = Histogram::<u64>::new_with_max(60_000_000_000, 3).unwrap();
        for ns in 1..=10_000u64 {
            h.record(ns * 100).unwrap(); // 0.1 µs .. 1000 µs, uniform
        }
        let p = Percentiles::from_ns(&h);
        assert_eq!(p.samples, 10_000);
        assert!((p.p50_us - 500.0).abs() <= 0.5, "p50 {}", p.p50_us);
        assert!((p.p99_us - 990.0).abs() <= 1.0, "p99 {}", p.p99_us);
        assert!(p.p50_us <= p.p90_us && p.p90_us <= p.p99_us && p.p99_us <= p.p999_us);
        assert!(p.p999_us <= p.p9999_us && p.p9999_us <= p.max_us);
        assert_eq!(
            Percentiles::from_ns(&Histogram::new(3).unwrap()),
            Percentiles::default()
        );
    }

    #[test]
    fn counts_get_thousands_separators() {
        assert_eq!(format_count(0.0), "0");
        assert_eq!(format_count(999.4), "999");
        assert_eq!(format_count(1000.0), "1,000");
        assert_eq!(format_count(12_345_678.0), "12,345,678");
    }

    #[test]
    fn table_aligns_columns_and_latency_rows_follow_quantiles() {
        let mut t = Table::new("title", &["net", "baseline"]);
        t.row("events/s", vec!["1,000".into(), "10".into()]);
        t.latency_rows("latency", &[Percentiles::default(), Percentiles::default()]);
        let text = t.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "title");
        assert_eq!(lines.len(), 2 + 1 + QUANTILES.len());
        assert!(lines[2].ends_with("1,000        10"), "{:?}", lines[2]);
        assert!(lines[3].contains("latency p50 (µs)") && lines[3].ends_with("0.00"));
    }

    #[test]
    fn json_line_is_one_line_in_insertion_order() {
        let mut j = JsonLine::default();
        j.field("scenario", "ingest").field("events", 5u64);
        j.latency(
            "baseline_",
            &Percentiles {
                p50_us: 1.5,
                ..Percentiles::default()
            },
        );
        j.latency_or_null("paced_", None);
        let line = j.render();
        assert!(!line.contains('\n'));
        assert!(line.starts_with(r#"{"scenario":"ingest","events":5,"baseline_p50_us":1.5"#));
        assert!(line.contains(r#""baseline_p9999_us":0.0,"baseline_max_us":0.0,"#));
        assert!(
            line.ends_with(r#""paced_p999_us":null,"paced_p9999_us":null,"paced_max_us":null}"#)
        );
    }

    #[test]
    fn headings_stand_alone_and_do_not_widen_labels() {
        let mut t = Table::new("title", &["net"]);
        t.heading("a long section heading:")
            .row("p50", vec!["1.00".into()]);
        let text = t.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[2], "  a long section heading:");
        assert_eq!(lines[3], "  p50  1.00");
    }
}
