//! The report's charts as SVG and PNG, drawn with plotters.
//!
//! Owns the chart list (names, titles, axes) and the drawing. A multi-day run
//! ([`Report::daily`]) is drawn by day: the x axis counts days, and what is counted per
//! bucket (outcomes, deliveries per source IP, queue depth and age at each day's end, the
//! most connections) is drawn as one bar per day, so thirty days read as thirty bars, not
//! as hundreds of spikes. Text in PNGs uses the DejaVu
//! Sans font committed in `assets/` (registered once; no system font is ever looked up); SVG
//! text names `sans-serif` and the viewer supplies it. Pure: returns bytes, writes no file.

use std::sync::Once;

use plotters::prelude::*;

use super::{Band, Report, Series, clock};

const WIDTH: u32 = 960;
const HEIGHT: u32 = 420;
static FONT: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");
static REGISTER: Once = Once::new();

/// Colours that stay apart on white, in series order.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// One chart, drawn both ways.
pub struct Chart {
    /// File stem: `outcomes-gmail`, `queue-depth`, …
    pub name: String,
    pub title: String,
    pub svg: String,
    pub png: Vec<u8>,
}

enum Kind<'a> {
    Lines {
        series: &'a [Series],
        y_label: &'a str,
        /// Per-bucket values drawn as bars (a multi-day run), not lines.
        bars: bool,
    },
    Bands {
        bands: &'a [Band],
    },
}

/// Every chart of a report, in the order the HTML shows them.
pub fn render(report: &Report) -> Vec<Chart> {
    REGISTER.call_once(|| {
        // The font is ours and known good; failing here is a broken build, not user input.
        plotters::style::register_font("sans-serif", FontStyle::Normal, FONT)
            .map_err(|_| "DejaVuSans.ttf")
            .expect("the committed font registers");
    });
    let duration_s = report.summary.duration_s as f64;
    let (per, age_unit) = if report.daily {
        ("per day", "hours")
    } else {
        ("per hour", "minutes")
    };
    let outcomes_label = format!("recipients {per}");
    let bars = report.daily;
    let mut specs: Vec<(String, String, Kind<'_>)> = Vec::new();
    for (provider, series) in &report.outcomes {
        specs.push((
            format!("outcomes-{provider}"),
            format!("{provider}: deliveries, deferrals and bounces"),
            Kind::Lines {
                series,
                y_label: &outcomes_label,
                bars,
            },
        ));
    }
    specs.push((
        "queue-depth".into(),
        "Recipients queued, per provider".into(),
        Kind::Lines {
            series: &report.queue_depth,
            y_label: "recipients",
            bars,
        },
    ));
    specs.push((
        "queue-age".into(),
        "Age of the oldest queued recipient, per provider".into(),
        Kind::Lines {
            series: &report.queue_age,
            y_label: age_unit,
            bars,
        },
    ));
    specs.push((
        "connections".into(),
        "Open connections, busiest queues".into(),
        Kind::Lines {
            series: &report.connections,
            y_label: "connections",
            bars,
        },
    ));
    specs.push((
        "backoff".into(),
        "Queues in backoff".into(),
        Kind::Bands {
            bands: &report.backoff_bands,
        },
    ));
    for (provider, series) in &report.source_ip_rates {
        specs.push((
            format!("source-ip-rate-{provider}"),
            format!("{provider}: deliveries {per} by source IP, against its limit"),
            Kind::Lines {
                series,
                y_label: per,
                bars,
            },
        ));
    }
    for (provider, series) in report.reputation.iter().filter(|(_, s)| !s.is_empty()) {
        specs.push((
            format!("reputation-{provider}"),
            format!("{provider}: reputation score per identity"),
            Kind::Lines {
                series,
                y_label: "score (0.5 = neutral)",
                bars: false,
            },
        ));
    }
    specs
        .into_iter()
        .map(|(name, title, kind)| {
            let mut svg = String::new();
            draw(
                SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area(),
                &title,
                &kind,
                duration_s,
                report.daily,
            );
            let mut pixels = vec![0u8; (WIDTH * HEIGHT * 3) as usize];
            draw(
                BitMapBackend::with_buffer(&mut pixels, (WIDTH, HEIGHT)).into_drawing_area(),
                &title,
                &kind,
                duration_s,
                report.daily,
            );
            Chart {
                name,
                title,
                svg,
                png: encode_png(&pixels),
            }
        })
        .collect()
}

fn encode_png(rgb: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let encoder = image::codecs::png::PngEncoder::new(&mut out);
    image::ImageEncoder::write_image(encoder, rgb, WIDTH, HEIGHT, image::ColorType::Rgb8)
        .expect("encoding an in-memory RGB buffer cannot fail");
    out
}

/// Draws one chart. Drawing into our own buffers only fails on a plotters bug, so errors
/// are dropped (the chart is then incomplete, never a panic).
fn draw<DB: DrawingBackend>(
    area: DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    kind: &Kind<'_>,
    duration_s: f64,
    daily: bool,
) {
    let _ = try_draw(area, title, kind, duration_s, daily);
}

/// The x axis: seconds since the start, or days in a multi-day run.
struct Axis {
    /// Seconds per unit of x.
    unit_s: f64,
    max: f64,
    desc: &'static str,
    /// Labels along the axis (plotters picks round values below it).
    labels: usize,
}

impl Axis {
    fn new(duration_s: f64, daily: bool) -> Axis {
        if daily {
            let days = (duration_s / 86_400.0).ceil().max(1.0);
            Axis {
                unit_s: 86_400.0,
                max: days,
                desc: "simulated day since start",
                labels: (days as usize + 1).min(16),
            }
        } else {
            Axis {
                unit_s: 1.0,
                max: duration_s.max(60.0),
                desc: "simulated time since start",
                labels: 10,
            }
        }
    }

    fn x(&self, seconds: f64) -> f64 {
        seconds / self.unit_s
    }

    fn label(&self, x: &f64) -> String {
        if self.unit_s > 1.0 {
            format!("day {}", *x as u64)
        } else {
            clock(*x as u64)
        }
    }
}

fn try_draw<DB: DrawingBackend>(
    area: DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    kind: &Kind<'_>,
    duration_s: f64,
    daily: bool,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    area.fill(&WHITE)?;
    let axis = Axis::new(duration_s, daily);
    let x_max = axis.max;
    let x_label = |x: &f64| axis.label(x);
    match kind {
        Kind::Lines {
            series,
            y_label,
            bars,
        } => {
            let y_max = series
                .iter()
                .flat_map(|s| s.points.iter().map(|(_, y)| *y))
                .fold(0.0f64, f64::max);
            let y_max = if y_max <= 0.0 { 1.0 } else { y_max * 1.1 };
            let mut chart = ChartBuilder::on(&area)
                .caption(title, ("sans-serif", 20))
                .margin(12)
                .margin_right(28)
                .x_label_area_size(36)
                .y_label_area_size(64)
                .build_cartesian_2d(0.0..x_max, 0.0..y_max)?;
            chart
                .configure_mesh()
                .x_desc(axis.desc)
                .y_desc(*y_label)
                .x_labels(axis.labels)
                .x_label_formatter(&x_label)
                .label_style(("sans-serif", 13))
                .draw()?;
            // Bars share each bucket's width among the chart's bar series.
            let bar_series = series.iter().filter(|s| !s.step).count().max(1) as f64;
            let mut bar_slot = 0.0;
            for (i, s) in series.iter().enumerate() {
                let color = PALETTE[i % PALETTE.len()];
                let dashed = s.step;
                if *bars && !dashed {
                    let width = 0.8 / bar_series;
                    let left = 0.1 + bar_slot * width;
                    bar_slot += 1.0;
                    let rects = s.points.iter().map(|(x, y)| {
                        let day = axis.x(*x).floor();
                        Rectangle::new(
                            [(day + left, 0.0), (day + left + width, *y)],
                            color.filled(),
                        )
                    });
                    chart
                        .draw_series(rects)?
                        .label(s.name.clone())
                        .legend(move |(x, y)| {
                            Rectangle::new([(x, y - 5), (x + 16, y + 5)], color.filled())
                        });
                    continue;
                }
                let style = if dashed {
                    color.stroke_width(1)
                } else {
                    color.stroke_width(2)
                };
                let drawn = if dashed {
                    // A limit is a step: it holds for the hour it was sampled in.
                    let mut steps = Vec::new();
                    for (j, (x, y)) in s.points.iter().enumerate() {
                        let next = s.points.get(j + 1).map_or(x_max, |(nx, _)| axis.x(*nx));
                        steps.push((axis.x(*x), *y));
                        steps.push((next, *y));
                    }
                    chart.draw_series(DashedLineSeries::new(steps, 6, 4, style))?
                } else {
                    chart.draw_series(LineSeries::new(
                        s.points.iter().map(|(x, y)| (axis.x(*x), *y)),
                        style,
                    ))?
                };
                drawn.label(s.name.clone()).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
                });
            }
            if !series.is_empty() {
                chart
                    .configure_series_labels()
                    .background_style(WHITE.mix(0.85))
                    .border_style(BLACK.mix(0.3))
                    .label_font(("sans-serif", 12))
                    .position(SeriesLabelPosition::UpperRight)
                    .draw()?;
            }
        }
        Kind::Bands { bands } => {
            let mut rows: Vec<&str> = bands.iter().map(|b| b.row.as_str()).collect();
            rows.dedup();
            let n = rows.len().max(1) as f64;
            let mut chart = ChartBuilder::on(&area)
                .caption(title, ("sans-serif", 20))
                .margin(12)
                .margin_right(28)
                .x_label_area_size(36)
                .y_label_area_size(200)
                .build_cartesian_2d(0.0..x_max, 0.0..n)?;
            chart
                .configure_mesh()
                .x_desc(axis.desc)
                .x_labels(axis.labels)
                .x_label_formatter(&x_label)
                .y_labels(rows.len().max(1))
                .y_label_formatter(&|y: &f64| {
                    rows.get(*y as usize)
                        .map_or(String::new(), |r| r.to_string())
                })
                .disable_y_mesh()
                .label_style(("sans-serif", 12))
                .draw()?;
            for band in bands.iter() {
                let row = rows.iter().position(|r| *r == band.row).unwrap_or(0) as f64;
                let color = PALETTE[row as usize % PALETTE.len()];
                chart.draw_series(std::iter::once(Rectangle::new(
                    [
                        (axis.x(band.from_s), row + 0.15),
                        (axis.x(band.to_s.max(band.from_s + 1.0)), row + 0.85),
                    ],
                    color.mix(0.6).filled(),
                )))?;
            }
        }
    }
    area.present()?;
    Ok(())
}
