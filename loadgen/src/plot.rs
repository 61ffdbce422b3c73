//! Charts of a run directory (plotters, SVG backend) and its one-page
//! `results.md`, written by `c10m-loadgen report DIR`:
//!
//! - `sessions.svg`: sessions open and connects/s over time;
//! - `rss.svg`: server and loadgen RSS over time (timeline.csv's
//!   `server_rss_bytes` and `loadgen_rss_bytes`, sampled each second);
//! - `rtt.svg`: RTT p50/p90/p99/p99.9/max per second (from rtt.hlog, else
//!   the timeline's p50/p99/max columns), log scale;
//! - `rtt-spectrum.svg`: the whole run's RTT percentile spectrum,
//!   HdrHistogram style: x is 1/(1-p) on a log axis, so 90 %, 99 %, 99.9 %
//!   … are evenly spaced.
//!
//! Each chart is written as SVG and, beside it, as PNG: the SVG is
//! rasterised with resvg (pure Rust), its text drawn with the system's
//! fonts found through fontdb (DejaVu on Debian). Where no font is
//! installed the PNG still has the lines and axes, without labels; the SVG
//! leaves text to the viewer.
#![forbid(unsafe_code)]

use crate::rundir::{RunDir, Timeline};
use anyhow::{anyhow, Result};
use hdrhistogram::Histogram;
use plotters::coord::ranged1d::ValueFormatter;
use plotters::prelude::*;
use std::path::Path;

const SIZE: (u32, u32) = (900, 480);
const PERCENTILES: [(f64, &str); 4] = [(0.5, "p50"), (0.9, "p90"), (0.99, "p99"), (0.999, "p99.9")];

type Series = Vec<(f64, f64)>;

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("plot: {e:?}")
}

/// Renders every chart the run has data for into `dir`; returns the file
/// names written.
pub fn render(run: &RunDir, dir: &Path) -> Result<Vec<String>> {
    let mut written = Vec::new();
    let empty = Timeline::default();
    let t = run.timeline.as_ref().unwrap_or(&empty);
    let fonts = raster_options();
    let mut chart = |name: &str, svg: Option<String>| -> Result<()> {
        if let Some(svg) = svg {
            std::fs::write(dir.join(name), &svg)?;
            written.push(name.to_string());
            let png = Path::new(name).with_extension("png");
            std::fs::write(dir.join(&png), rasterise(&svg, &fonts)?)?;
            written.push(png.display().to_string());
        }
        Ok(())
    };
    chart("sessions.svg", sessions_chart(t)?)?;
    chart("rss.svg", rss_chart(t)?)?;
    chart("rtt.svg", rtt_chart(run)?)?;
    chart("rtt-spectrum.svg", spectrum_chart(run)?)?;
    Ok(written)
}

/// Options for rasterising: the system's fonts, loaded once per report.
fn raster_options() -> resvg::usvg::Options<'static> {
    let mut options = resvg::usvg::Options::default();
    let db = options.fontdb_mut();
    db.load_system_fonts();
    // plotters writes font-family="sans-serif"; fontdb maps that generic
    // name to Arial unless told otherwise. Use the first sans family here.
    let families: Vec<String> = db
        .faces()
        .flat_map(|f| f.families.iter().map(|(name, _)| name.clone()))
        .collect();
    if let Some(sans) = ["DejaVu Sans", "Liberation Sans", "Noto Sans", "Arial"]
        .iter()
        .find(|want| families.iter().any(|f| f == *want))
    {
        db.set_sans_serif_family(*sans);
    }
    options
}

/// The PNG of an SVG chart.
fn rasterise(svg: &str, options: &resvg::usvg::Options) -> Result<Vec<u8>> {
    let tree = resvg::usvg::Tree::from_str(svg, options).map_err(err)?;
    let size = tree.size().to_int_size();
    let mut pixmap = resvg::tiny_skia::Pixmap::new(size.width(), size.height())
        .ok_or_else(|| anyhow!("plot: empty chart"))?;
    pixmap.fill(resvg::tiny_skia::Color::WHITE);
    resvg::render(
        &tree,
        resvg::tiny_skia::Transform::default(),
        &mut pixmap.as_mut(),
    );
    pixmap.encode_png().map_err(err)
}

/// `(max_x, max_y)` of some series, at least 1.
fn extent(series: &[&Series]) -> (f64, f64) {
    let all = series.iter().flat_map(|s| s.iter());
    let (x, y) = all.fold((1.0f64, 1.0f64), |(x, y), p| (x.max(p.0), y.max(p.1)));
    (x, y * 1.05)
}

fn line_chart(
    title: &str,
    y_desc: &str,
    lines: &[(&str, RGBColor, Series)],
    log_y: bool,
) -> Result<Option<String>> {
    let lines: Vec<_> = lines.iter().filter(|l| !l.2.is_empty()).collect();
    if lines.is_empty() {
        return Ok(None);
    }
    let (max_x, max_y) = extent(&lines.iter().map(|l| &l.2).collect::<Vec<_>>());
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut builder = ChartBuilder::on(&root);
        builder
            .caption(title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(80);
        if log_y {
            let chart = builder
                .build_cartesian_2d(0f64..max_x, (1f64..max_y.max(10.0)).log_scale())
                .map_err(err)?;
            draw_lines(chart, y_desc, &lines)?;
        } else {
            let chart = builder
                .build_cartesian_2d(0f64..max_x, 0f64..max_y)
                .map_err(err)?;
            draw_lines(chart, y_desc, &lines)?;
        }
        root.present().map_err(err)?;
    }
    Ok(Some(svg))
}

fn draw_lines<'a, Y>(
    mut chart: ChartContext<
        'a,
        SVGBackend<'a>,
        Cartesian2d<plotters::coord::types::RangedCoordf64, Y>,
    >,
    y_desc: &str,
    lines: &[&(&str, RGBColor, Series)],
) -> Result<()>
where
    Y: plotters::coord::ranged1d::Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    chart
        .configure_mesh()
        .x_desc("seconds since start")
        .y_desc(y_desc)
        .y_label_formatter(&|v| si(*v))
        .draw()
        .map_err(err)?;
    for (name, color, points) in lines {
        let color = *color;
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(err)?
            .label(*name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    Ok(())
}

/// 1234567 -> "1.2M".
fn si(v: f64) -> String {
    let a = v.abs();
    if a >= 1e9 {
        format!("{:.1}G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

fn sessions_chart(t: &Timeline) -> Result<Option<String>> {
    let open = t.series("sessions_open");
    let rate = t.series("connects_per_s");
    if open.is_empty() {
        return Ok(None);
    }
    let (max_x, max_open) = extent(&[&open]);
    let (_, max_rate) = extent(&[&rate]);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("sessions open and connects/s", ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(80)
            .right_y_label_area_size(80)
            .build_cartesian_2d(0f64..max_x, 0f64..max_open)
            .map_err(err)?
            .set_secondary_coord(0f64..max_x, 0f64..max_rate);
        chart
            .configure_mesh()
            .x_desc("seconds since start")
            .y_desc("sessions open")
            .y_label_formatter(&|v| si(*v))
            .draw()
            .map_err(err)?;
        chart
            .configure_secondary_axes()
            .y_desc("connects/s")
            .y_label_formatter(&|v| si(*v))
            .draw()
            .map_err(err)?;
        chart
            .draw_series(LineSeries::new(open, BLUE.stroke_width(2)))
            .map_err(err)?
            .label("sessions open (left)")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLUE.stroke_width(2)));
        chart
            .draw_secondary_series(LineSeries::new(rate, RED.stroke_width(2)))
            .map_err(err)?
            .label("connects/s (right)")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RED.stroke_width(2)));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(Some(svg))
}

fn rss_chart(t: &Timeline) -> Result<Option<String>> {
    let mib = |name: &str| -> Series {
        t.series(name)
            .into_iter()
            .filter(|p| p.1 > 0.0)
            .map(|(x, y)| (x, y / (1 << 20) as f64))
            .collect()
    };
    line_chart(
        "resident memory (VmRSS, summed over each role's processes)",
        "MiB",
        &[
            ("server", BLUE, mib("server_rss_bytes")),
            ("loadgen", RED, mib("loadgen_rss_bytes")),
        ],
        false,
    )
}

const COLORS: [RGBColor; 5] = [
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(214, 39, 40),
    RGBColor(80, 80, 80),
];

fn rtt_chart(run: &RunDir) -> Result<Option<String>> {
    let mut lines: Vec<(&str, RGBColor, Series)> = Vec::new();
    match run.hlogs.get("rtt") {
        Some(intervals) if !intervals.is_empty() => {
            let at = |q: Option<f64>| -> Series {
                intervals
                    .iter()
                    .filter(|i| !i.histogram.is_empty())
                    .map(|i| {
                        let h = &i.histogram;
                        let v = q.map_or(h.max(), |q| h.value_at_quantile(q));
                        (i.start_s + i.duration_s, v.max(1) as f64)
                    })
                    .collect()
            };
            for (i, (q, name)) in PERCENTILES.iter().enumerate() {
                lines.push((name, COLORS[i], at(Some(*q))));
            }
            lines.push(("max", COLORS[4], at(None)));
        }
        _ => {
            let t = run.timeline.as_ref();
            let col = |c: &str| -> Series {
                t.map(|t| t.series(c))
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|p| p.1 > 0.0)
                    .collect()
            };
            lines.push(("p50", COLORS[0], col("rtt_p50_us")));
            lines.push(("p99", COLORS[2], col("rtt_p99_us")));
            lines.push(("max", COLORS[4], col("rtt_max_us")));
        }
    }
    line_chart(
        "heartbeat RTT per second (from the intended send time)",
        "microseconds",
        &lines,
        true,
    )
}

/// The spectrum's points: (1/(1-p), value) for each step of the
/// histogram's quantile iteration, the last point (p = 1) left out.
pub fn spectrum(h: &Histogram<u64>) -> Series {
    h.iter_quantiles(5)
        .filter(|v| v.quantile_iterated_to() < 1.0)
        .map(|v| {
            let x = 1.0 / (1.0 - v.quantile_iterated_to());
            (x, h.highest_equivalent(v.value_iterated_to()).max(1) as f64)
        })
        .collect()
}

fn spectrum_chart(run: &RunDir) -> Result<Option<String>> {
    let Some(h) = run.total("rtt").filter(|h| !h.is_empty()) else {
        return Ok(None);
    };
    let points = spectrum(&h);
    if points.is_empty() {
        return Ok(None);
    }
    let max_x = points.iter().map(|p| p.0).fold(10.0, f64::max) * 1.5;
    let max_y = (h.max().max(10) as f64) * 1.5;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let x_axis = (1f64..max_x).log_scale();
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("RTT percentile spectrum ({} replies)", h.len()),
                ("sans-serif", 22),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(80)
            .build_cartesian_2d(x_axis, (1f64..max_y).log_scale())
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("percentile")
            .y_desc("microseconds")
            .x_label_formatter(&|x| percentile_label(*x))
            .y_label_formatter(&|v| si(*v))
            .draw()
            .map_err(err)?;
        chart
            .draw_series(LineSeries::new(points, COLORS[0].stroke_width(2)))
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(Some(svg))
}

/// x = 1/(1-p) -> "99%", "99.9%", ...
fn percentile_label(x: f64) -> String {
    if x < 1.0 {
        return String::new();
    }
    let p = 100.0 * (1.0 - 1.0 / x);
    let digits = (x.log10().floor() as i32 - 2).max(0) as usize;
    format!("{p:.digits$}%")
}

/// The one-page `results.md`: the figures table (the rows `report` prints),
/// how the run was made (command.txt, when present) and the charts.
pub fn results_md(summary: &serde_json::Value, command: Option<&str>, charts: &[String]) -> String {
    let title = summary
        .pointer("/config/description")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("run");
    let mut md = format!("# {title}\n\n| figure | value |\n| --- | --- |\n");
    for line in crate::report::table(summary).lines() {
        let line = line.trim();
        if let Some((k, v)) = line.split_once("  ") {
            md += &format!("| {} | {} |\n", k.trim(), v.trim());
        }
    }
    if let Some(cmd) = command {
        md += &format!("\n## How it was made\n\n```\n{}\n```\n", cmd.trim_end());
    }
    md +=
        "\nFull figures: [summary.json](summary.json), per second: [timeline.csv](timeline.csv), \
           histograms: `rtt.hlog`, `connect.hlog`, `send_lag.hlog` (HdrHistogram interval logs).\n";
    if !charts.is_empty() {
        md += "\n## Charts\n\n";
        // The SVGs are shown; each has a PNG twin for tools without SVG.
        for c in charts.iter().filter(|c| c.ends_with(".svg")) {
            let png = c.trim_end_matches(".svg");
            md += &format!("![{c}]({c}) ([PNG]({png}.png))\n\n");
        }
    }
    md
}
