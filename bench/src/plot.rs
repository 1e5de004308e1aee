//! A latency-by-percentile plot as hand-written SVG, one line per design, in the style of
//! HdrHistogram's plotter: the x axis counts "nines" (p90 = 1, p99 = 2, ... p99.999 = 5), so
//! the tail gets as much room as the median, and the y axis is logarithmic in microseconds,
//! so a design ten times slower is still on the same chart.

use hdrhistogram::Histogram;
use std::fmt::Write as _;
use std::io;
use std::path::Path;

const WIDTH: f64 = 800.0;
const HEIGHT: f64 = 480.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 40.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;

/// Rightmost percentile plotted, in nines (5 = p99.999).
const NINES_MAX: f64 = 5.0;

/// Points per line: enough for a smooth curve, few enough to keep the file small.
const POINTS: u32 = 200;

const COLOURS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];
const TICK_LABELS: [&str; 6] = ["p0", "p90", "p99", "p99.9", "p99.99", "p99.999"];

/// Writes the plot of `series` (name, histogram of nanoseconds) to `path`.
pub fn write(path: &Path, title: &str, series: &[(&str, &Histogram<u64>)]) -> io::Result<()> {
    std::fs::write(path, svg(title, series))
}

/// The SVG document.
pub fn svg(title: &str, series: &[(&str, &Histogram<u64>)]) -> String {
    let curves: Vec<(&str, Vec<(f64, f64)>)> =
        series.iter().map(|(name, h)| (*name, curve(h))).collect();
    svg_curves(title, &curves)
}

/// The SVG document of curves already taken (`curve`: (nines, µs) points), as the archive
/// keeps them.
pub fn svg_curves(title: &str, series: &[(&str, Vec<(f64, f64)>)]) -> String {
    let lines: Vec<&Vec<(f64, f64)>> = series.iter().map(|(_, points)| points).collect();
    let all_us = lines.iter().copied().flatten().map(|(_, us)| *us);
    let low = all_us
        .clone()
        .fold(f64::INFINITY, f64::min)
        .max(0.01)
        .log10()
        .floor();
    let high = all_us.fold(0.01f64, f64::max).log10().ceil().max(low + 1.0);
    let scale = Scale { low, high };

    let mut out = header(WIDTH, HEIGHT, title);
    axes(&mut out, &scale);
    for (i, ((name, _), points)) in series.iter().zip(&lines).enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let path: Vec<String> = points
            .iter()
            .map(|(nines, us)| format!("{:.1},{:.1}", scale.x(*nines), scale.y(*us)))
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
            path.join(" ")
        );
        let y = TOP + 20.0 + 18.0 * i as f64;
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{y}" fill="{colour}">{}</text>"#,
            LEFT + 12.0,
            escape(name)
        );
    }
    out.push_str("</svg>\n");
    out
}

/// Maps (nines, µs) to the plot area.
struct Scale {
    low: f64,
    high: f64,
}

impl Scale {
    fn x(&self, nines: f64) -> f64 {
        LEFT + nines / NINES_MAX * (WIDTH - LEFT - RIGHT)
    }

    fn y(&self, us: f64) -> f64 {
        let t = (us.max(0.01).log10() - self.low) / (self.high - self.low);
        HEIGHT - BOTTOM - t * (HEIGHT - TOP - BOTTOM)
    }
}

fn axes(out: &mut String, scale: &Scale) {
    let (x0, x1) = (scale.x(0.0), scale.x(NINES_MAX));
    let (y0, y1) = (HEIGHT - BOTTOM, TOP);
    let _ = writeln!(
        out,
        r#"<path d="M{x0},{y1} V{y0} H{x1}" fill="none" stroke="black"/>"#
    );
    for (i, label) in TICK_LABELS.iter().enumerate() {
        let x = scale.x(i as f64);
        let _ = writeln!(
            out,
            r##"<line x1="{x}" y1="{y1}" x2="{x}" y2="{y0}" stroke="#ddd"/>"##
        );
        let _ = writeln!(
            out,
            r#"<text x="{x}" y="{}" text-anchor="middle">{label}</text>"#,
            y0 + 18.0
        );
    }
    let mut decade = scale.low;
    while decade <= scale.high {
        let us = 10f64.powf(decade);
        let y = scale.y(us);
        let _ = writeln!(
            out,
            r##"<line x1="{x0}" y1="{y}" x2="{x1}" y2="{y}" stroke="#ddd"/>"##
        );
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" text-anchor="end">{} µs</text>"#,
            x0 - 6.0,
            y + 4.0,
            format_decade(us)
        );
        decade += 1.0;
    }
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle">percentile</text>"#,
        (x0 + x1) / 2.0,
        HEIGHT - 10.0
    );
}

/// The document's opening: canvas, white background, centred title.
fn header(width: f64, height: f64, title: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="15">{}</text>"#,
        width / 2.0,
        escape(title)
    );
    out
}

/// One group of bars: a measure, and each design's figure for it (net first).
#[derive(Debug, Clone)]
pub struct BarGroup {
    pub label: String,
    pub bars: Vec<(String, f64)>,
    /// How a value is written next to its bar.
    pub format: fn(f64) -> String,
}

const BAR_LABEL_WIDTH: f64 = 220.0;
const BAR_HEIGHT: f64 = 18.0;
const BAR_GAP: f64 = 6.0;
const GROUP_HEADING: f64 = 26.0;

/// Horizontal bars, one group per measure, each group scaled to its own largest figure, so
/// measures in different units share a chart; the first bar of a group (net) is blue.
pub fn bars(title: &str, groups: &[BarGroup]) -> String {
    let rows: usize = groups.iter().map(|g| g.bars.len()).sum();
    let height = TOP
        + 10.0
        + groups.len() as f64 * GROUP_HEADING
        + rows as f64 * (BAR_HEIGHT + BAR_GAP)
        + 10.0;
    let mut out = header(WIDTH, height, title);
    let span = WIDTH - LEFT - BAR_LABEL_WIDTH - 110.0;
    let mut y = TOP + 10.0;
    for group in groups {
        y += GROUP_HEADING;
        let _ = writeln!(
            out,
            r#"<text x="{LEFT}" y="{}" font-weight="bold">{}</text>"#,
            y - 8.0,
            escape(&group.label)
        );
        let largest = group.bars.iter().map(|(_, v)| *v).fold(0.0, f64::max);
        for (i, (name, value)) in group.bars.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            let x0 = LEFT + BAR_LABEL_WIDTH;
            let length = if largest > 0.0 {
                value / largest * span
            } else {
                0.0
            };
            let _ = writeln!(
                out,
                r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
                x0 - 8.0,
                y + BAR_HEIGHT - 5.0,
                escape(name)
            );
            let _ = writeln!(
                out,
                r#"<rect x="{x0}" y="{y}" width="{length:.1}" height="{BAR_HEIGHT}" fill="{colour}"/>"#
            );
            let _ = writeln!(
                out,
                r#"<text x="{:.1}" y="{}">{}</text>"#,
                x0 + length + 6.0,
                y + BAR_HEIGHT - 5.0,
                escape(&(group.format)(*value))
            );
            y += BAR_HEIGHT + BAR_GAP;
        }
    }
    out.push_str("</svg>\n");
    out
}

/// (nines, µs) points of one histogram of nanoseconds.
pub fn curve(histogram: &Histogram<u64>) -> Vec<(f64, f64)> {
    if histogram.is_empty() {
        return Vec::new();
    }
    (0..=POINTS)
        .map(|i| {
            let nines = NINES_MAX * f64::from(i) / f64::from(POINTS);
            let quantile = 1.0 - 10f64.powf(-nines);
            (nines, histogram.value_at_quantile(quantile) as f64 / 1000.0)
        })
        .collect()
}

fn format_decade(us: f64) -> String {
    if us >= 1.0 {
        format!("{us:.0}")
    } else {
        format!("{us}")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_one_line_per_series_inside_the_canvas() {
        let mut fast = Histogram::<u64>::new(3).unwrap();
        let mut slow = Histogram::<u64>::new(3).unwrap();
        for i in 1..=1000 {
            fast.record(i * 10).unwrap();
            slow.record(i * 10_000).unwrap();
        }
        let doc = svg("a <b> & c", &[("fast", &fast), ("slow", &slow)]);
        assert!(doc.starts_with("<svg") && doc.ends_with("</svg>\n"));
        assert_eq!(doc.matches("<polyline").count(), 2);
        assert_eq!(
            doc,
            svg_curves(
                "a <b> & c",
                &[("fast", curve(&fast)), ("slow", curve(&slow))]
            )
        );
        assert!(doc.contains("a &lt;b&gt; &amp; c"));
        let numbers = doc.split("points=\"").skip(1).flat_map(|s| {
            s.split('"')
                .next()
                .unwrap()
                .split([' ', ','])
                .map(|n| n.parse::<f64>().unwrap())
        });
        for n in numbers {
            assert!((0.0..=WIDTH).contains(&n), "{n} off the canvas");
        }
    }

    #[test]
    fn bars_scale_each_group_to_its_largest_figure() {
        let group = |label: &str, bars: &[(&str, f64)]| BarGroup {
            label: label.to_owned(),
            bars: bars.iter().map(|(n, v)| ((*n).to_owned(), *v)).collect(),
            format: |v| format!("{v:.0}"),
        };
        let doc = bars(
            "t",
            &[
                group("events/s", &[("net", 4e6), ("baseline", 1e6)]),
                group("GB/s", &[("net", 0.5), ("raw", 2.0)]),
            ],
        );
        let widths: Vec<f64> = doc
            .split("width=\"")
            .skip(3) // what precedes the canvas, the canvas and the background
            .map(|s| s.split('"').next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(widths.len(), 4);
        assert!((widths[0] / widths[1] - 4.0).abs() < 0.01, "{widths:?}");
        assert!((widths[3] / widths[2] - 4.0).abs() < 0.01, "{widths:?}");
        assert_eq!(widths[0], widths[3]);
        assert!(doc.contains(">4000000</text>"));
    }
}
