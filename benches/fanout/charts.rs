//! SVG charts drawn with plotters: deliveries/s vs connections, and latency percentiles.

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

/// One line on a chart.
pub struct Series {
    pub label: String,
    pub color: RGBColor,
    pub points: Vec<(f64, f64)>,
}

pub const RINGCAST: RGBColor = RGBColor(0x1f, 0x5f, 0xbf);
pub const RINGCAST_LIGHT: RGBColor = RGBColor(0x6f, 0xa8, 0xf0);
pub const BASELINE: RGBColor = RGBColor(0xc0, 0x30, 0x20);
pub const BASELINE_LIGHT: RGBColor = RGBColor(0xf0, 0x90, 0x60);
const LIGHT_GRID: RGBColor = RGBColor(0xf2, 0xf2, 0xf2);

fn e<E: std::fmt::Debug>(err: E) -> anyhow::Error {
    anyhow!("plotting: {err:?}")
}

/// Rounds a log axis range out to whole powers of ten.
fn log_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite() && *v > 0.0) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (1.0, 10.0);
    }
    let lo = 10f64.powf(lo.log10().floor());
    let mut hi = 10f64.powf(hi.log10().ceil());
    if hi <= lo {
        hi = lo * 10.0;
    }
    (lo, hi)
}

pub fn human(v: f64) -> String {
    if v >= 1e9 {
        format!("{:.3}G", v / 1e9).replace(".000", "")
    } else if v >= 1e6 {
        format!("{:.3}M", v / 1e6).replace(".000", "")
    } else if v >= 1e3 {
        format!("{:.3}k", v / 1e3).replace(".000", "")
    } else {
        format!("{v:.0}")
    }
}

/// Line chart, both axes logarithmic: x = subscriber connections, y = deliveries/s.
pub fn deliveries_vs_connections(path: &Path, title: &str, series: &[Series]) -> Result<()> {
    let root = SVGBackend::new(path, (860, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;
    // Pad x so the end points and their labels sit inside the plot.
    let xs = series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let (x_lo, x_hi) = xs.fold((f64::INFINITY, 0.0f64), |(lo, hi), x| (lo.min(x), hi.max(x)));
    let (x_lo, x_hi) = if x_lo.is_finite() { (x_lo / 1.6, x_hi * 1.6) } else { (1.0, 10.0) };
    let ys = series.iter().flat_map(|s| s.points.iter().map(|p| p.1));
    let (y_lo, y_hi) = log_range(ys);
    // A decade of headroom for the legend.
    let y_hi = y_hi * 10.0;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(18)
        .x_label_area_size(48)
        .y_label_area_size(80)
        .build_cartesian_2d((x_lo..x_hi).log_scale(), (y_lo..y_hi).log_scale())
        .map_err(e)?;
    chart
        .configure_mesh()
        .light_line_style(LIGHT_GRID)
        .x_desc("subscriber connections")
        .y_desc("deliveries / s")
        .x_label_formatter(&|v| human(*v))
        .y_label_formatter(&|v| human(*v))
        .draw()
        .map_err(e)?;
    for (i, s) in series.iter().enumerate() {
        let color = s.color;
        // Alternate labels above and below the points.
        let k = if i % 2 == 0 { 1.15 } else { 0.80 };
        chart
            .draw_series(LineSeries::new(s.points.iter().copied(), color.stroke_width(2)))
            .map_err(e)?
            .label(&s.label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 22, y)], color.stroke_width(2))
            });
        chart
            .draw_series(s.points.iter().map(|&p| Circle::new(p, 5, color.filled())))
            .map_err(e)?;
        chart
            .draw_series(s.points.iter().map(|&(x, y)| {
                Text::new(human(y), (x * 1.03, y * k), ("sans-serif", 13).into_font().color(&color))
            }))
            .map_err(e)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(e)?;
    root.present().map_err(e)?;
    Ok(())
}

pub const PERCENTILES: [&str; 4] = ["p50", "p90", "p99", "p99.9"];

/// Latency percentiles (µs, log scale) for each series at p50/p90/p99/p99.9; an optional
/// horizontal line marks the p99 bound.
pub fn latency_percentiles(
    path: &Path,
    title: &str,
    series: &[Series],
    bound_us: Option<f64>,
) -> Result<()> {
    let root = SVGBackend::new(path, (720, 460)).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;
    let ys = series.iter().flat_map(|s| s.points.iter().map(|p| p.1)).chain(bound_us);
    let (y_lo, y_hi) = log_range(ys);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(18)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(-0.3f64..3.3f64, (y_lo..y_hi).log_scale())
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_labels(4)
        .x_label_formatter(&|v| {
            let i = v.round();
            if (v - i).abs() < 1e-6 && (0.0..=3.0).contains(&i) {
                PERCENTILES[i as usize].to_string()
            } else {
                String::new()
            }
        })
        .disable_x_mesh()
        .light_line_style(LIGHT_GRID)
        .x_desc("percentile")
        .y_desc("latency")
        .y_label_formatter(&|v| fmt_us(*v))
        .draw()
        .map_err(e)?;
    if let Some(b) = bound_us {
        let grey = RGBColor(0x80, 0x80, 0x80);
        chart
            .draw_series(LineSeries::new(vec![(-0.3, b), (3.3, b)], grey.stroke_width(1)))
            .map_err(e)?
            .label(format!("p99 bound {}", fmt_us(b)))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], grey));
    }
    for (i, s) in series.iter().enumerate() {
        let color = s.color;
        let k = if i % 2 == 0 { 1.12 } else { 0.82 };
        let pts: Vec<(f64, f64)> = s.points.iter().map(|&(x, y)| (x, y.max(y_lo))).collect();
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
            .map_err(e)?
            .label(&s.label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 22, y)], color.stroke_width(2))
            });
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 5, color.filled()))).map_err(e)?;
        chart
            .draw_series(pts.iter().map(|&(x, y)| {
                Text::new(
                    fmt_us(y),
                    (x + 0.05, y * k),
                    ("sans-serif", 12).into_font().color(&color),
                )
            }))
            .map_err(e)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(e)?;
    root.present().map_err(e)?;
    Ok(())
}

/// One panel of the find-max steps chart.
pub struct Panel {
    pub title: String,
    pub series: Vec<Series>,
    pub bound_us: f64,
}

/// The find-max search itself: every step's p99 latency against its deliveries/s, one panel
/// per scenario, both axes logarithmic, the p99 bound as a grey line.
pub fn find_max_steps(path: &Path, panels: &[Panel]) -> Result<()> {
    let cols = 2usize;
    let rows = panels.len().div_ceil(cols).max(1);
    let root = SVGBackend::new(path, (1100, 380 * rows as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;
    let areas = root.split_evenly((rows, cols));
    for (panel, area) in panels.iter().zip(areas.iter()) {
        let xs = panel.series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
        let (x_lo, x_hi) = log_range(xs);
        let ys = panel
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1))
            .chain(std::iter::once(panel.bound_us));
        let (y_lo, y_hi) = log_range(ys);
        let mut chart = ChartBuilder::on(area)
            .caption(&panel.title, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d((x_lo..x_hi).log_scale(), (y_lo..y_hi).log_scale())
            .map_err(e)?;
        chart
            .configure_mesh()
            .light_line_style(LIGHT_GRID)
            .x_desc("deliveries / s (step)")
            .y_desc("p99 latency")
            .x_label_formatter(&|v| human(*v))
            .y_label_formatter(&|v| fmt_us(*v))
            .draw()
            .map_err(e)?;
        let grey = RGBColor(0x80, 0x80, 0x80);
        chart
            .draw_series(LineSeries::new(
                vec![(x_lo, panel.bound_us), (x_hi, panel.bound_us)],
                grey.stroke_width(1),
            ))
            .map_err(e)?
            .label(format!("p99 bound {}", fmt_us(panel.bound_us)))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], grey));
        for s in &panel.series {
            let color = s.color;
            chart
                .draw_series(LineSeries::new(s.points.iter().copied(), color.stroke_width(2)))
                .map_err(e)?
                .label(&s.label)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 22, y)], color.stroke_width(2))
                });
            chart
                .draw_series(s.points.iter().map(|&p| Circle::new(p, 4, color.filled())))
                .map_err(e)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .draw()
            .map_err(e)?;
    }
    root.present().map_err(e)?;
    Ok(())
}

/// Formats microseconds as µs / ms / s.
pub fn fmt_us(us: f64) -> String {
    if us >= 1e6 {
        format!("{:.2} s", us / 1e6)
    } else if us >= 1e4 {
        format!("{:.0} ms", us / 1e3)
    } else if us >= 1e3 {
        format!("{:.1} ms", us / 1e3)
    } else {
        format!("{us:.0} µs")
    }
}
