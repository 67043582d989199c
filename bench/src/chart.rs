//! Small-multiple line charts as plain SVG text, for the scaling curves.
//!
//! One panel per figure, all sharing the x values (data sizes, on a log
//! axis since the sizes grow by factors), each with its own linear y axis
//! from zero, every point labelled with its value. Written by hand because
//! the charts are simple and must stay readable on GitHub (white background,
//! no scripts, no external fonts) without pulling a plotting crate into the
//! build.

use std::fmt::Write as _;

/// Panels per row.
const COLUMNS: usize = 3;
const PANEL_WIDTH: f64 = 320.0;
const PANEL_HEIGHT: f64 = 230.0;
/// Space above the panels for the chart's title.
const HEADER: f64 = 44.0;
/// Plot area inside a panel.
const LEFT: f64 = 64.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 48.0;
/// Ticks on the y axis above zero.
const Y_TICKS: usize = 4;
const AXIS_COLOUR: &str = "#444";
const GRID_COLOUR: &str = "#ddd";
const LINE_COLOUR: &str = "#1f6fb2";

/// One panel: a figure's title, its unit and one value per x value
/// (non-finite values are left out of the panel).
pub struct Panel<'a> {
    pub title: &'a str,
    pub unit: &'a str,
    pub values: Vec<f64>,
}

/// The SVG document: `title` on top, then one panel per entry of `panels`,
/// [`COLUMNS`] to a row, each plotting its values over `xs` (positive) on a
/// log axis labelled `x_label`.
pub fn small_multiples(title: &str, x_label: &str, xs: &[f64], panels: &[Panel]) -> String {
    let rows = panels.len().div_ceil(COLUMNS).max(1);
    let width = PANEL_WIDTH * COLUMNS.min(panels.len().max(1)) as f64;
    let height = HEADER + PANEL_HEIGHT * rows as f64;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="Helvetica, Arial, sans-serif" font-size="11">"#
    );
    let _ = writeln!(
        svg,
        r#"<rect width="{width}" height="{height}" fill="white"/>"#
    );
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="26" font-size="15" font-weight="bold" text-anchor="middle">{}</text>"#,
        width / 2.0,
        escape(title)
    );
    let x_axis = LogAxis::new(xs);
    for (index, panel) in panels.iter().enumerate() {
        let left = PANEL_WIDTH * (index % COLUMNS) as f64;
        let top = HEADER + PANEL_HEIGHT * (index / COLUMNS) as f64;
        draw_panel(&mut svg, left, top, xs, &x_axis, x_label, panel);
    }
    svg.push_str("</svg>\n");
    svg
}

/// Maps x values to [0, 1] on a log scale with some room on both sides.
struct LogAxis {
    low: f64,
    high: f64,
}

impl LogAxis {
    fn new(xs: &[f64]) -> LogAxis {
        let logs: Vec<f64> = xs
            .iter()
            .filter(|x| x.is_finite() && **x > 0.0)
            .map(|x| x.log10())
            .collect();
        let min = logs.iter().copied().fold(f64::INFINITY, f64::min);
        let max = logs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if !min.is_finite() {
            return LogAxis {
                low: 0.0,
                high: 1.0,
            };
        }
        let pad = ((max - min) * 0.12).max(0.25);
        LogAxis {
            low: min - pad,
            high: max + pad,
        }
    }

    fn position(&self, x: f64) -> f64 {
        (x.max(f64::MIN_POSITIVE).log10() - self.low) / (self.high - self.low)
    }
}

/// Upper end of a linear y axis from zero that holds `max`: a round number
/// (1, 1.5, 2, 2.5, 3, 4, 5, 6 or 8 times a power of ten) times
/// [`Y_TICKS`].
fn y_top(max: f64) -> f64 {
    if !(max.is_finite() && max > 0.0) {
        return 1.0;
    }
    let raw_step = max * 1.1 / Y_TICKS as f64;
    let magnitude = 10f64.powf(raw_step.log10().floor());
    let step = [1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|step| *step >= raw_step)
        .unwrap_or(10.0 * magnitude);
    step * Y_TICKS as f64
}

fn draw_panel(
    svg: &mut String,
    left: f64,
    top: f64,
    xs: &[f64],
    x_axis: &LogAxis,
    x_label: &str,
    panel: &Panel,
) {
    let (x0, x1) = (left + LEFT, left + PANEL_WIDTH - RIGHT);
    let (y0, y1) = (top + PANEL_HEIGHT - BOTTOM, top + TOP);
    let max = panel
        .values
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    let min = panel
        .values
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .fold(0.0, f64::min);
    // Negative values (a shrinking RSS) get an axis below zero too.
    let y_high = y_top(max.max(-min));
    let y_low = if min < 0.0 { -y_high } else { 0.0 };
    let px = |x: f64| x0 + (x1 - x0) * x_axis.position(x);
    let py = |y: f64| y0 - (y0 - y1) * (y - y_low) / (y_high - y_low);

    let _ = writeln!(
        svg,
        r#"<g class="panel" data-figure="{}">"#,
        escape(panel.title)
    );
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" font-size="13" font-weight="bold" text-anchor="middle">{}</text>"#,
        (x0 + x1) / 2.0,
        top + 22.0,
        escape(panel.title)
    );
    // Horizontal grid lines and y tick labels.
    let ticks = if y_low < 0.0 { 2 * Y_TICKS } else { Y_TICKS };
    for tick in 0..=ticks {
        let value = y_low + (y_high - y_low) * tick as f64 / ticks as f64;
        let y = py(value);
        let _ = writeln!(
            svg,
            r#"<line x1="{x0}" y1="{y:.1}" x2="{x1}" y2="{y:.1}" stroke="{GRID_COLOUR}"/>"#
        );
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{:.1}" text-anchor="end" fill="{AXIS_COLOUR}">{}</text>"#,
            x0 - 5.0,
            y + 4.0,
            compact(value)
        );
    }
    // Axes.
    let _ = writeln!(
        svg,
        r#"<path d="M{x0},{y1} V{y0} H{x1}" fill="none" stroke="{AXIS_COLOUR}"/>"#
    );
    for &x in xs {
        let x = px(x);
        let _ = writeln!(
            svg,
            r#"<line x1="{x:.1}" y1="{y0}" x2="{x:.1}" y2="{}" stroke="{AXIS_COLOUR}"/>"#,
            y0 + 4.0
        );
    }
    for &x in xs {
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{}" text-anchor="middle" fill="{AXIS_COLOUR}">{}</text>"#,
            px(x),
            y0 + 16.0,
            compact(x)
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle" fill="{AXIS_COLOUR}">{} (log scale)</text>"#,
        (x0 + x1) / 2.0,
        y0 + 34.0,
        escape(x_label)
    );
    let _ = writeln!(
        svg,
        r#"<text transform="translate({},{}) rotate(-90)" text-anchor="middle" fill="{AXIS_COLOUR}">{}</text>"#,
        left + 14.0,
        (y0 + y1) / 2.0,
        escape(panel.unit)
    );
    // The line, the points and their values.
    let points: Vec<(f64, f64, f64)> = xs
        .iter()
        .zip(&panel.values)
        .filter(|(x, v)| v.is_finite() && x.is_finite())
        .map(|(&x, &v)| (px(x), py(v), v))
        .collect();
    if points.len() > 1 {
        let path: Vec<String> = points
            .iter()
            .map(|(x, y, _)| format!("{x:.1},{y:.1}"))
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline points="{}" fill="none" stroke="{LINE_COLOUR}" stroke-width="2"/>"#,
            path.join(" ")
        );
    }
    for (x, y, value) in &points {
        let _ = writeln!(
            svg,
            r#"<circle class="point" cx="{x:.1}" cy="{y:.1}" r="3.5" fill="{LINE_COLOUR}"><title>{}</title></circle>"#,
            compact(*value)
        );
        let _ = writeln!(
            svg,
            r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle" font-weight="bold" stroke="white" stroke-width="3" paint-order="stroke">{}</text>"#,
            y - 8.0,
            compact(*value)
        );
    }
    svg.push_str("</g>\n");
}

/// A number with three significant digits at most and a k / M / G suffix:
/// 12.3M, 45.6k, 5k, 789, 1.23, 0.0456.
pub fn compact(value: f64) -> String {
    let magnitude = value.abs();
    let (scaled, suffix) = if magnitude >= 1e9 {
        (value / 1e9, "G")
    } else if magnitude >= 1e6 {
        (value / 1e6, "M")
    } else if magnitude >= 1e3 {
        (value / 1e3, "k")
    } else {
        (value, "")
    };
    let digits = match scaled.abs() {
        0.0 => 0,
        m if m >= 100.0 => 0,
        m if m >= 10.0 => 1,
        m if m >= 1.0 => 2,
        // Three significant digits below 1.
        m => (2 - m.log10().floor() as i32).max(0) as usize,
    };
    let text = format!("{scaled:.digits$}");
    // 5.00k -> 5k, 2.50M -> 2.5M, 1.20 -> 1.2.
    let text = if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    };
    format!("{text}{suffix}")
}

/// `text` safe inside SVG text and attribute values.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_numbers() {
        assert_eq!(compact(0.0), "0");
        assert_eq!(compact(5_000.0), "5k");
        assert_eq!(compact(9_268.0), "9.27k");
        assert_eq!(compact(20_000.0), "20k");
        assert_eq!(compact(1_000_000.0), "1M");
        assert_eq!(compact(50_000_000.0), "50M");
        assert_eq!(compact(2_500_000.0), "2.5M");
        assert_eq!(compact(123_456.0), "123k");
        assert_eq!(compact(98_765.4), "98.8k");
        assert_eq!(compact(1.234), "1.23");
        assert_eq!(compact(12.34), "12.3");
        assert_eq!(compact(0.04567), "0.0457");
        assert_eq!(compact(-1500.0), "-1.5k");
        assert_eq!(compact(999.6), "1000");
        assert_eq!(compact(3.2e9), "3.2G");
    }

    #[test]
    fn y_axis_tops_are_round_and_hold_the_maximum() {
        for (max, top) in [(1.0, 1.2), (9.0, 10.0), (37.0, 60.0), (730.0, 1000.0)] {
            assert!((y_top(max) - top).abs() < 1e-9, "{max} -> {}", y_top(max));
        }
        for max in [0.013, 0.7, 3.3, 99.0, 1234.5, 8.1e6] {
            let top = y_top(max);
            assert!(top >= max * 1.1 && top <= max * 2.0, "{max} -> {top}");
        }
        assert_eq!(y_top(0.0), 1.0);
        assert_eq!(y_top(f64::NAN), 1.0);
    }

    #[test]
    fn log_axis_spaces_factors_evenly() {
        let axis = LogAxis::new(&[1e3, 1e4, 1e5]);
        let (a, b, c) = (axis.position(1e3), axis.position(1e4), axis.position(1e5));
        assert!(0.0 < a && a < b && b < c && c < 1.0);
        assert!(((b - a) - (c - b)).abs() < 1e-9);
        // One size alone sits in the middle.
        let single = LogAxis::new(&[5e4]);
        assert!((single.position(5e4) - 0.5).abs() < 1e-9);
    }

    #[test]
    fn one_panel_per_figure_and_one_point_per_value() {
        let xs = [1e6, 1e7, 5e7];
        let panels = [
            Panel {
                title: "ingest",
                unit: "spans/s",
                values: vec![120_000.0, 110_000.0, 95_000.0],
            },
            Panel {
                title: "p99 <by id> & more",
                unit: "ms",
                values: vec![1.5, 2.5, f64::NAN],
            },
            Panel {
                title: "RSS change",
                unit: "bytes",
                values: vec![-10.0, 20.0, 30.0],
            },
            Panel {
                title: "disk",
                unit: "MB",
                values: vec![70.0, 700.0, 3500.0],
            },
        ];
        let svg = small_multiples("traces", "spans stored", &xs, &panels);
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert_eq!(svg.matches("<svg").count(), 1);
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<g class=\"panel\"").count(), 4);
        // The non-finite value is left out.
        assert_eq!(svg.matches("<circle class=\"point\"").count(), 11);
        assert!(svg.contains("p99 &lt;by id&gt; &amp; more"));
        assert!(!svg.contains("<by id>"));
        for label in [
            "1M",
            "10M",
            "50M",
            "120k",
            "3.5k",
            "spans stored (log scale)",
            "spans/s",
        ] {
            assert!(svg.contains(&format!(">{label}")), "{label}");
        }
        // Two rows of panels (3 + 1).
        assert!(svg.contains(&format!("height=\"{}\"", HEADER + 2.0 * PANEL_HEIGHT)));
    }
}
