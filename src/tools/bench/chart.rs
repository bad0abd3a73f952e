//! The comparison chart: throughput and p99 latency per workload, one bar per system, on
//! log scales (the systems differ by orders of magnitude), as a PNG.
//!
//! Text is drawn with a TrueType font read from the system (DejaVu Sans, Debian's
//! `fonts-dejavu-core`), so the binary needs neither fontconfig nor a bundled font.

use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::compare::{Row, Summary};

const SIZE: (u32, u32) = (1280, 560);
const FONT_FILES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];
const COLORS: &[RGBColor] = &[
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Why no chart was drawn.
#[derive(Debug, thiserror::Error)]
pub enum ChartError {
    #[error("no TrueType font found (install fonts-dejavu-core)")]
    NoFont,
    #[error("nothing to draw")]
    Empty,
    #[error("drawing failed: {0}")]
    Draw(String),
}

fn draw_error<E: std::fmt::Debug>(error: E) -> ChartError {
    ChartError::Draw(format!("{error:?}"))
}

/// Registers a system font as "sans-serif", once.
fn ensure_font() -> Result<(), ChartError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = REGISTERED.get_or_init(|| {
        FONT_FILES.iter().any(|file| {
            let Ok(bytes) = std::fs::read(file) else {
                return false;
            };
            // Fonts live as long as the process: plotters keeps a `'static` reference.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
        })
    });
    if *ok { Ok(()) } else { Err(ChartError::NoFont) }
}

/// Draws `summary` to the PNG file `path`.
pub fn draw(summary: &Summary, path: &Path) -> Result<(), ChartError> {
    if summary.rows.is_empty() {
        return Err(ChartError::Empty);
    }
    ensure_font()?;
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(draw_error)?;
    let (left, right) = root.split_horizontally(SIZE.0 / 2);
    panel(
        &left,
        summary,
        "Throughput (ops/s, log scale, higher is better)",
        |r| Some(r.ops_per_sec),
    )?;
    panel(
        &right,
        summary,
        "p99 latency (ms, log scale, lower is better)",
        |r| r.p99_ms,
    )?;
    root.present().map_err(draw_error)
}

/// One bar chart: workloads along x, one bar per system in each workload's group.
fn panel(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    summary: &Summary,
    title: &str,
    metric: impl Fn(&Row) -> Option<f64>,
) -> Result<(), ChartError> {
    let workloads = summary.workloads();
    let systems = summary.systems();
    let bars: Vec<(usize, usize, f64)> = workloads
        .iter()
        .enumerate()
        .flat_map(|(w, workload)| {
            let summary = &summary;
            let metric = &metric;
            systems.iter().enumerate().filter_map(move |(s, system)| {
                let row = summary
                    .rows
                    .iter()
                    .find(|r| &r.system == system && &r.workload == workload)?;
                Some((w, s, metric(row).filter(|v| *v > 0.0)?))
            })
        })
        .collect();
    let (low, high) = bounds(bars.iter().map(|b| b.2));
    let slots = systems.len() + 1;
    let width = u32::try_from(workloads.len() * slots).unwrap_or(u32::MAX);
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d((0u32..width).into_segmented(), (low..high).log_scale())
        .map_err(draw_error)?;
    let label = |x: &SegmentValue<u32>| match x {
        SegmentValue::CenterOf(i) if (*i as usize) % slots == (slots - 1) / 2 => workloads
            .get(*i as usize / slots)
            .cloned()
            .unwrap_or_default(),
        _ => String::new(),
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(width as usize)
        .x_label_formatter(&label)
        .y_label_formatter(&|v| short_number(*v))
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(draw_error)?;
    let value_labels = bars.iter().map(|&(w, s, value)| {
        let x = u32::try_from(w * slots + s).unwrap_or(0);
        Text::new(
            short_number(significant(value)),
            (SegmentValue::Exact(x), value * 1.15),
            ("sans-serif", 11),
        )
    });
    chart.draw_series(value_labels).map_err(draw_error)?;
    for (s, system) in systems.iter().enumerate() {
        let color = COLORS[s % COLORS.len()];
        let series = bars.iter().filter(|b| b.1 == s).map(|&(w, s, value)| {
            let x = u32::try_from(w * slots + s).unwrap_or(0);
            Rectangle::new(
                [
                    (SegmentValue::Exact(x), low),
                    (SegmentValue::Exact(x + 1), value),
                ],
                color.filled(),
            )
        });
        chart
            .draw_series(series)
            .map_err(draw_error)?
            .label(system.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 12, y + 6)], color.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(draw_error)
}

/// A log-scale range around the values: whole decades below and above.
fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (min, max) = values.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if min > max {
        return (0.1, 10.0);
    }
    let low = 10f64.powf(min.log10().floor());
    let high = 10f64.powf((max.log10() + 0.5).ceil());
    (low, high.max(low * 10.0))
}

/// `v` rounded to two significant digits.
fn significant(v: f64) -> f64 {
    let scale = 10f64.powf(v.log10().floor() - 1.0);
    (v / scale).round() * scale
}

/// `25000` as `25k`, `0.5` as `0.5`.
fn short_number(v: f64) -> String {
    if v >= 1e6 {
        format!("{}M", trimmed(v / 1e6))
    } else if v >= 1e3 {
        format!("{}k", trimmed(v / 1e3))
    } else {
        trimmed(v)
    }
}

/// At most three decimals, without trailing zeros.
fn trimmed(v: f64) -> String {
    let text = format!("{v:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_whole_decades_around_the_values() {
        assert_eq!(
            bounds([3_000.0, 80_000.0].into_iter()),
            (1_000.0, 1_000_000.0)
        );
        assert_eq!(bounds([0.3, 11.0].into_iter()), (0.1, 100.0));
        assert_eq!(bounds(std::iter::empty()), (0.1, 10.0));
    }

    #[test]
    fn axis_numbers_are_short() {
        assert_eq!(short_number(25_000.0), "25k");
        assert_eq!(short_number(2_000_000.0), "2M");
        assert_eq!(short_number(0.5), "0.5");
        assert_eq!(short_number(significant(81_234.0)), "81k");
        assert_eq!(short_number(significant(0.3456)), "0.35");
        assert_eq!(short_number(significant(4.8123)), "4.8");
    }
}
