//! The figures of the evaluation report, drawn as PNG files.
//!
//! Every function here takes plain data (numbers, labels, pixel values; nothing of candle or of
//! the model) and the path of the PNG file to write. A figure is rendered into an in-memory RGB
//! buffer, encoded as PNG and written atomically (a temporary file in the same folder, then a
//! rename; see [`ood_data::atomic::write_atomic`]), so a reader never sees half a figure. The
//! folder of the file must exist.
//!
//! Text is drawn with the DejaVu Sans font shipped in `assets/fonts/` and embedded in the binary,
//! so no system font is needed. Empty inputs give a valid figure with a note ("no data"), and
//! inconsistent inputs (an image of the wrong size, a non-square confusion matrix, zero bins)
//! give [`PlotError::InvalidInput`]; nothing here panics on its input.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::ranged1d::{KeyPointHint, NoDefaultFormatting, ValueFormatter};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// The font every figure uses, registered under the family name [`FONT_FAMILY`].
static FONT_BYTES: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../assets/fonts/DejaVuSans.ttf"
));

/// The font family name used for all text.
const FONT_FAMILY: &str = "sans-serif";

/// The size in pixels of the chart figures (every figure but [`image_grid`]).
pub const CHART_SIZE: (u32, u32) = (900, 650);

/// The largest figure [`image_grid`] will draw, in pixels (width times height).
const MAX_PIXELS: u64 = 64 * 1024 * 1024;

const TITLE_SIZE: u32 = 26;
const AXIS_DESC_SIZE: u32 = 18;
const LABEL_SIZE: u32 = 15;

/// What went wrong while drawing a figure; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// The data cannot be drawn (wrong shapes, zero bins, a figure too large, ...).
    #[error("{}: cannot draw this figure: {message}", path.display())]
    InvalidInput { path: PathBuf, message: String },
    /// The embedded font could not be loaded.
    #[error("{}: the embedded font could not be loaded", path.display())]
    Font { path: PathBuf },
    /// plotters failed while drawing.
    #[error("{}: drawing failed: {message}", path.display())]
    Draw { path: PathBuf, message: String },
    /// The image could not be encoded as PNG.
    #[error("{}: PNG encoding failed: {source}", path.display())]
    Encode {
        path: PathBuf,
        #[source]
        source: image::ImageError,
    },
    /// The file could not be written.
    #[error("{}: writing failed: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl PlotError {
    /// The file the figure was meant for.
    pub fn path(&self) -> &Path {
        match self {
            PlotError::InvalidInput { path, .. }
            | PlotError::Font { path }
            | PlotError::Draw { path, .. }
            | PlotError::Encode { path, .. }
            | PlotError::Io { path, .. } => path,
        }
    }

    fn invalid(path: &Path, message: impl Into<String>) -> Self {
        PlotError::InvalidInput {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
}

/// One ROC curve of [`roc_curves`].
#[derive(Debug, Clone, PartialEq)]
pub struct RocSeries {
    /// The name in the legend, which adds "(AUROC 0.987)".
    pub label: String,
    /// The curve, as (false positive rate, true positive rate) points in drawing order.
    pub points: Vec<(f64, f64)>,
    /// The area under the curve, shown in the legend.
    pub auroc: f64,
    /// The chosen operating point (fpr, tpr), drawn as a dot.
    pub marker: Option<(f64, f64)>,
}

/// One group of values of [`score_histograms`].
#[derive(Debug, Clone, PartialEq)]
pub struct HistGroup {
    /// The name in the legend, which adds "(n = 1234)".
    pub label: String,
    /// The values; non-finite ones are left out.
    pub values: Vec<f64>,
}

/// One labelled row of images of [`image_grid`].
#[derive(Debug, Clone, PartialEq)]
pub struct ImageRow {
    /// The text at the left of the row.
    pub label: String,
    /// Grayscale images of `side * side` pixels each, row-major, in [0, 1] (0 black, 1 white).
    pub images: Vec<Vec<f32>>,
}

/// A failure while drawing, turned into [`PlotError::Draw`] once the path is known.
struct Failure(String);

impl<E: std::error::Error> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure(e.to_string())
    }
}

type Drawn = Result<(), Failure>;
type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

/// Registers the embedded font once; false when it could not be loaded.
fn font_ready() -> bool {
    static LOADED: OnceLock<bool> = OnceLock::new();
    *LOADED.get_or_init(|| {
        plotters::style::register_font(FONT_FAMILY, FontStyle::Normal, FONT_BYTES).is_ok()
    })
}

/// The text style of all text, at `size` pixels.
fn font(size: u32) -> TextStyle<'static> {
    TextStyle::from((FONT_FAMILY, size).into_font())
}

/// The colours of successive series (matplotlib's "tab10").
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// Renders a figure of `size` pixels with `draw`, then encodes and writes it to `path`.
fn render(
    path: &Path,
    size: (u32, u32),
    draw: impl FnOnce(&Area<'_>) -> Drawn,
) -> Result<(), PlotError> {
    render_then(path, size, draw, |_| ())
}

/// [`render`], with `finish` applied to the raw RGB buffer after plotters has drawn into it.
fn render_then(
    path: &Path,
    (width, height): (u32, u32),
    draw: impl FnOnce(&Area<'_>) -> Drawn,
    finish: impl FnOnce(&mut [u8]),
) -> Result<(), PlotError> {
    if !font_ready() {
        return Err(PlotError::Font {
            path: path.to_path_buf(),
        });
    }
    let pixels = u64::from(width) * u64::from(height);
    if width == 0 || height == 0 || pixels > MAX_PIXELS {
        return Err(PlotError::invalid(
            path,
            format!("a figure of {width} x {height} pixels"),
        ));
    }
    let mut buffer = vec![0u8; pixels as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, (width, height)).into_drawing_area();
        let drawn = root
            .fill(&WHITE)
            .map_err(Failure::from)
            .and_then(|()| draw(&root))
            .and_then(|()| root.present().map_err(Failure::from));
        if let Err(Failure(message)) = drawn {
            return Err(PlotError::Draw {
                path: path.to_path_buf(),
                message,
            });
        }
    }
    finish(&mut buffer);
    let image = image::RgbImage::from_raw(width, height, buffer)
        .expect("the buffer holds width * height RGB pixels");
    let mut png = Cursor::new(Vec::new());
    image
        .write_to(&mut png, image::ImageFormat::Png)
        .map_err(|source| PlotError::Encode {
            path: path.to_path_buf(),
            source,
        })?;
    ood_data::atomic::write_atomic(path, png.get_ref()).map_err(|source| PlotError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `note` in the middle of `area` (for figures without data).
fn draw_note(area: &Area<'_>, note: &str) -> Drawn {
    let (w, h) = area.dim_in_pixel();
    let style = font(20)
        .color(&full_palette::GREY_600)
        .pos(Pos::new(HPos::Center, VPos::Center));
    area.draw(&Text::new(
        note.to_string(),
        (w as i32 / 2, h as i32 / 2),
        style,
    ))?;
    Ok(())
}

/// Formats a number for a legend or note: fixed-point when reasonable, scientific otherwise.
fn number(x: f64) -> String {
    if !x.is_finite() {
        "n/a".to_string()
    } else if x == 0.0 || (1e-3..1e5).contains(&x.abs()) {
        format!("{x:.3}")
    } else {
        format!("{x:.2e}")
    }
}

/// Formats an axis tick value compactly.
fn tick(x: f64) -> String {
    let a = x.abs();
    if a == 0.0 {
        "0".to_string()
    } else if !(1e-3..1e5).contains(&a) {
        format!("{x:.1e}")
    } else {
        let s = format!("{x:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// The range `lo..hi` widened so it is never empty, with `pad` of its width added on each side.
fn padded(lo: f64, hi: f64, pad: f64) -> (f64, f64) {
    let (lo, hi) = if hi > lo {
        (lo, hi)
    } else {
        let half = if lo.abs() > 0.0 { lo.abs() * 0.05 } else { 0.5 };
        (lo - half, hi + half)
    };
    let p = (hi - lo) * pad;
    (lo - p, hi + p)
}

/// The finite values of `values`, sorted.
fn sorted_finite(values: &[f64]) -> Vec<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    v
}

/// The `q`-quantile (0..=1) of sorted, non-empty `v`, linearly interpolated.
fn quantile(v: &[f64], q: f64) -> f64 {
    let rank = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let lo = rank.floor() as usize;
    let hi = (lo + 1).min(v.len() - 1);
    v[lo] + (v[hi] - v[lo]) * (rank - lo as f64)
}

/// A chart with the figures' common frame: the title, a 15 px margin and room for the axis
/// labels (the y area is wider for long tick labels).
fn chart_frame<'a, 'b>(
    root: &'a Area<'b>,
    title: &str,
    y_label_area: u32,
) -> ChartBuilder<'a, 'b, BitMapBackend<'b>> {
    let mut builder = ChartBuilder::on(root);
    builder
        .caption(title, font(TITLE_SIZE))
        .margin(15)
        .x_label_area_size(50)
        .y_label_area_size(y_label_area);
    builder
}

/// The legend box every figure with series labels uses, at `position`.
fn draw_legend<'a, 'b: 'a, X: Ranged, Y: Ranged>(
    chart: &mut ChartContext<'a, BitMapBackend<'b>, Cartesian2d<X, Y>>,
    position: SeriesLabelPosition,
) -> Drawn {
    chart
        .configure_series_labels()
        .position(position)
        .label_font(font(LABEL_SIZE + 1))
        .background_style(WHITE.mix(0.9))
        .border_style(full_palette::GREY_400)
        .margin(12)
        .draw()?;
    Ok(())
}

/// Draws ROC curves: one line per series, the chance diagonal, a dot at each chosen operating
/// point, and a legend "label (AUROC 0.987)".
pub fn roc_curves(path: &Path, title: &str, curves: &[RocSeries]) -> Result<(), PlotError> {
    let lines: Vec<Line<'_>> = curves
        .iter()
        .map(|c| Line {
            legend: format!("{} (AUROC {})", c.label, number(c.auroc)),
            points: &c.points,
            marker: c.marker,
        })
        .collect();
    let axes = Axes {
        x_desc: "false positive rate",
        y_desc: "true positive rate",
        x_range: (-0.005, 1.005),
        y_range: (-0.005, 1.005),
        diagonal: true,
        legend: SeriesLabelPosition::LowerRight,
    };
    line_chart(path, title, &axes, &lines, "no ROC curves")
}

/// One curve of [`trade_off_curves`].
#[derive(Debug, Clone, PartialEq)]
pub struct TradeOffSeries {
    /// The score's name, in the legend.
    pub label: String,
    /// (valid digits accepted and right, unknown caught) at each acceptance of held-out digits.
    pub points: Vec<(f64, f64)>,
    /// The operating point in force, drawn as a dot.
    pub marker: Option<(f64, f64)>,
}

/// Draws the decision's trade-off: for each score, the share of unknown inputs caught against
/// the share of valid digits accepted and classified right, as the threshold moves; the x axis
/// starts at `x_min`.
pub fn trade_off_curves(
    path: &Path,
    title: &str,
    x_min: f64,
    curves: &[TradeOffSeries],
) -> Result<(), PlotError> {
    let lines: Vec<Line<'_>> = curves
        .iter()
        .map(|c| Line {
            legend: c.label.clone(),
            points: &c.points,
            marker: c.marker,
        })
        .collect();
    let axes = Axes {
        x_desc: "valid digits accepted and right",
        y_desc: "unknown caught",
        x_range: (x_min, 1.002),
        y_range: (-0.005, 1.005),
        diagonal: false,
        legend: SeriesLabelPosition::LowerLeft,
    };
    line_chart(path, title, &axes, &lines, "no curves")
}

/// The axes of a [`line_chart`].
struct Axes {
    x_desc: &'static str,
    y_desc: &'static str,
    x_range: (f64, f64),
    y_range: (f64, f64),
    /// Draw the dashed chance diagonal.
    diagonal: bool,
    legend: SeriesLabelPosition,
}

/// One line of a [`line_chart`].
struct Line<'a> {
    legend: String,
    points: &'a [(f64, f64)],
    marker: Option<(f64, f64)>,
}

/// Lines in their colours with a dot at each marker and a legend; `empty` is said when there
/// are none.
fn line_chart(
    path: &Path,
    title: &str,
    axes: &Axes,
    lines: &[Line<'_>],
    empty: &str,
) -> Result<(), PlotError> {
    render(path, CHART_SIZE, |root| {
        let mut chart = chart_frame(root, title, 65).build_cartesian_2d(
            axes.x_range.0..axes.x_range.1,
            axes.y_range.0..axes.y_range.1,
        )?;
        chart
            .configure_mesh()
            .x_desc(axes.x_desc)
            .y_desc(axes.y_desc)
            .axis_desc_style(font(AXIS_DESC_SIZE))
            .label_style(font(LABEL_SIZE))
            .x_label_formatter(&|x| tick(*x))
            .y_label_formatter(&|y| tick(*y))
            .light_line_style(full_palette::GREY_100)
            .draw()?;
        if axes.diagonal {
            chart.draw_series(DashedLineSeries::new(
                vec![(0.0, 0.0), (1.0, 1.0)],
                6,
                6,
                full_palette::GREY_500.stroke_width(1),
            ))?;
        }
        if lines.is_empty() {
            return draw_note(root, empty);
        }
        for (i, line) in lines.iter().enumerate() {
            let c = color(i);
            let points: Vec<(f64, f64)> = line
                .points
                .iter()
                .copied()
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .collect();
            chart
                .draw_series(LineSeries::new(points, c.stroke_width(2)))?
                .label(line.legend.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(3))
                });
        }
        for (i, line) in lines.iter().enumerate() {
            if let Some((x, y)) = line.marker.filter(|(x, y)| x.is_finite() && y.is_finite()) {
                chart.draw_series([
                    Circle::new((x, y), 6, color(i).filled()),
                    Circle::new((x, y), 6, BLACK.stroke_width(1)),
                ])?;
            }
        }
        draw_legend(&mut chart, axes.legend.clone())
    })
}

/// Draws overlaid density histograms (each group's bars integrate to 1) with semi-transparent
/// colours over one common range split into `bins` bins, and, when `threshold` is given, a
/// dashed vertical line there. Non-finite values are left out. `bins` must be at least 1.
pub fn score_histograms(
    path: &Path,
    title: &str,
    x_label: &str,
    groups: &[HistGroup],
    bins: usize,
    threshold: Option<f64>,
) -> Result<(), PlotError> {
    if bins == 0 {
        return Err(PlotError::invalid(
            path,
            "a histogram needs at least one bin",
        ));
    }
    let threshold = threshold.filter(|t| t.is_finite());
    let groups: Vec<(&str, Vec<f64>)> = groups
        .iter()
        .map(|g| (g.label.as_str(), sorted_finite(&g.values)))
        .collect();
    let all = groups.iter().flat_map(|(_, v)| v.iter().copied());
    let (mut lo, mut hi) = all.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
        (lo.min(x), hi.max(x))
    });
    let empty = lo > hi;
    if empty {
        (lo, hi) = (0.0, 1.0);
    }
    if let Some(t) = threshold {
        (lo, hi) = (lo.min(t), hi.max(t));
    }
    let (lo, hi) = padded(lo, hi, 0.0);
    let width = (hi - lo) / bins as f64;
    // Per group: the density of each bin.
    let densities: Vec<Vec<f64>> = groups
        .iter()
        .map(|(_, v)| {
            let mut counts = vec![0usize; bins];
            for &x in v {
                let k = (((x - lo) / width).floor().max(0.0) as usize).min(bins - 1);
                counts[k] += 1;
            }
            let n = v.len().max(1) as f64;
            counts.iter().map(|&c| c as f64 / (n * width)).collect()
        })
        .collect();
    let top = densities.iter().flatten().copied().fold(0.0f64, f64::max);
    let top = if top > 0.0 { top * 1.1 } else { 1.0 };
    let (x0, x1) = padded(lo, hi, 0.02);

    render(path, CHART_SIZE, |root| {
        let mut chart = chart_frame(root, title, 75).build_cartesian_2d(x0..x1, 0.0..top)?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc("density")
            .axis_desc_style(font(AXIS_DESC_SIZE))
            .label_style(font(LABEL_SIZE))
            .x_label_formatter(&|x| tick(*x))
            .y_label_formatter(&|y| tick(*y))
            .light_line_style(full_palette::GREY_100)
            .draw()?;
        if empty {
            draw_note(root, "no data")?;
        }
        for (i, ((label, values), density)) in groups.iter().zip(&densities).enumerate() {
            let c = color(i);
            let bars = density
                .iter()
                .enumerate()
                .filter(|&(_, &d)| d > 0.0)
                .map(|(k, &d)| {
                    let left = lo + k as f64 * width;
                    Rectangle::new([(left, 0.0), (left + width, d)], c.mix(0.35).filled())
                });
            chart
                .draw_series(bars)?
                .label(format!("{label} (n = {})", values.len()))
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 6), (x + 18, y + 6)], c.mix(0.5).filled())
                });
            if !values.is_empty() {
                // The outline of the histogram, as a step line.
                let mut outline = vec![(lo, 0.0)];
                for (k, &d) in density.iter().enumerate() {
                    let left = lo + k as f64 * width;
                    outline.push((left, d));
                    outline.push((left + width, d));
                }
                outline.push((hi, 0.0));
                chart.draw_series(LineSeries::new(outline, c.stroke_width(1)))?;
            }
        }
        if let Some(t) = threshold {
            chart
                .draw_series(DashedLineSeries::new(
                    vec![(t, 0.0), (t, top)],
                    8,
                    5,
                    BLACK.stroke_width(2),
                ))?
                .label(format!("threshold {}", number(t)))
                .legend(|(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], BLACK.stroke_width(2))
                });
        }
        if !groups.is_empty() || threshold.is_some() {
            draw_legend(&mut chart, SeriesLabelPosition::UpperRight)?;
        }
        Ok(())
    })
}

/// A linear axis over `range` with ticks exactly at `keys` (for categories and heat maps).
struct KeyAxis {
    range: std::ops::Range<f64>,
    keys: Vec<f64>,
}

impl Ranged for KeyAxis {
    type FormatOption = NoDefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let share = (value - self.range.start) / (self.range.end - self.range.start);
        limit.0 + (share * f64::from(limit.1 - limit.0)).round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, _hint: Hint) -> Vec<f64> {
        self.keys.clone()
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.range.clone()
    }
}

impl ValueFormatter<f64> for KeyAxis {
    fn format(value: &f64) -> String {
        tick(*value)
    }
}

/// A horizontal axis of `n` categories at 0, 1, ..., n - 1, with ticks only there.
fn category_axis(n: usize) -> KeyAxis {
    let n = n.max(1);
    KeyAxis {
        range: -0.5..n as f64 - 0.5,
        keys: (0..n).map(|i| i as f64).collect(),
    }
}

/// The category label at axis position `x`.
fn category_label(labels: &[&str], x: f64) -> String {
    let i = x.round();
    if i >= 0.0 && (i as usize) < labels.len() {
        labels[i as usize].to_string()
    } else {
        String::new()
    }
}

/// A deterministic jitter in [-1, 1] for point `i` (a hash, so figures are reproducible).
fn jitter(i: usize) -> f64 {
    let mut z = (i as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
}

/// Draws the distribution of values per label (e.g. reconstruction error by digit) as box plots:
/// the box spans the 25th to 75th percentile with a line at the median, whiskers reach the 5th
/// and 95th percentiles, a cross marks the mean, and values beyond the whiskers are drawn as
/// jittered dots (at most 400 per label, evenly subsampled). Non-finite values are left out.
pub fn values_by_label(
    path: &Path,
    title: &str,
    y_label: &str,
    groups: &[(String, Vec<f64>)],
) -> Result<(), PlotError> {
    const MAX_DOTS: usize = 400;
    let labels: Vec<&str> = groups.iter().map(|(l, _)| l.as_str()).collect();
    let data: Vec<Vec<f64>> = groups.iter().map(|(_, v)| sorted_finite(v)).collect();
    let (lo, hi) = data
        .iter()
        .filter(|v| !v.is_empty())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v[0]), hi.max(v[v.len() - 1]))
        });
    let empty = lo > hi;
    let (y0, y1) = if empty {
        (0.0, 1.0)
    } else {
        padded(lo, hi, 0.05)
    };

    render(path, CHART_SIZE, |root| {
        let mut chart =
            chart_frame(root, title, 75).build_cartesian_2d(category_axis(labels.len()), y0..y1)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_desc("label")
            .y_desc(y_label)
            .axis_desc_style(font(AXIS_DESC_SIZE))
            .label_style(font(LABEL_SIZE))
            .x_label_formatter(&|x| category_label(&labels, *x))
            .y_label_formatter(&|y| tick(*y))
            .light_line_style(full_palette::GREY_100)
            .draw()?;
        if empty {
            return draw_note(root, "no data");
        }
        let half = 0.3;
        for (i, v) in data.iter().enumerate() {
            if v.is_empty() {
                continue;
            }
            let c = color(i);
            let x = i as f64;
            let [p5, q1, median, q3, p95] = [0.05, 0.25, 0.5, 0.75, 0.95].map(|q| quantile(v, q));
            let mean = v.iter().sum::<f64>() / v.len() as f64;
            let outside: Vec<(usize, f64)> = v
                .iter()
                .copied()
                .enumerate()
                .filter(|&(_, y)| y < p5 || y > p95)
                .collect();
            let step = outside.len().div_ceil(MAX_DOTS).max(1);
            chart.draw_series(outside.iter().step_by(step).map(|&(k, y)| {
                Circle::new(
                    (x + 0.8 * half * jitter(k + 7919 * i), y),
                    2,
                    c.mix(0.45).filled(),
                )
            }))?;
            chart.draw_series([
                PathElement::new(vec![(x, p5), (x, q1)], BLACK.stroke_width(1)),
                PathElement::new(vec![(x, q3), (x, p95)], BLACK.stroke_width(1)),
                PathElement::new(
                    vec![(x - half / 2.0, p5), (x + half / 2.0, p5)],
                    BLACK.stroke_width(1),
                ),
                PathElement::new(
                    vec![(x - half / 2.0, p95), (x + half / 2.0, p95)],
                    BLACK.stroke_width(1),
                ),
            ])?;
            chart.draw_series([
                Rectangle::new([(x - half, q1), (x + half, q3)], c.mix(0.45).filled()),
                Rectangle::new([(x - half, q1), (x + half, q3)], BLACK.stroke_width(1)),
            ])?;
            chart.draw_series([PathElement::new(
                vec![(x - half, median), (x + half, median)],
                BLACK.stroke_width(3),
            )])?;
            chart.draw_series([Cross::new((x, mean), 5, BLACK.stroke_width(2))])?;
        }
        let note = "box: 25-75 %, line: median, whiskers: 5-95 %, x: mean, dots: beyond whiskers";
        root.draw(&Text::new(
            note,
            (95, CHART_SIZE.1 as i32 - 18),
            font(13).color(&full_palette::GREY_700),
        ))?;
        Ok(())
    })
}

/// Draws a bar chart of counts per label (e.g. the labels of the 200 largest reconstruction
/// errors), in the order given, with each count written above its bar.
pub fn label_counts(path: &Path, title: &str, counts: &[(String, usize)]) -> Result<(), PlotError> {
    let labels: Vec<&str> = counts.iter().map(|(l, _)| l.as_str()).collect();
    let max = counts.iter().map(|&(_, c)| c).max().unwrap_or(0);
    let top = ((max as f64 * 1.12).ceil() as u64).max(max as u64 + 1);

    render(path, CHART_SIZE, |root| {
        let mut chart = chart_frame(root, title, 65)
            .build_cartesian_2d(category_axis(labels.len()), 0u64..top)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_desc("label")
            .y_desc("count")
            .axis_desc_style(font(AXIS_DESC_SIZE))
            .label_style(font(LABEL_SIZE))
            .x_label_formatter(&|x| category_label(&labels, *x))
            .light_line_style(full_palette::GREY_100)
            .draw()?;
        if counts.is_empty() {
            return draw_note(root, "no data");
        }
        for (i, &(_, count)) in counts.iter().enumerate() {
            let x = i as f64;
            let count = count as u64;
            chart.draw_series([
                Rectangle::new([(x - 0.35, 0), (x + 0.35, count)], color(0).filled()),
                Rectangle::new([(x - 0.35, 0), (x + 0.35, count)], BLACK.stroke_width(1)),
            ])?;
            let style = font(LABEL_SIZE).pos(Pos::new(HPos::Center, VPos::Bottom));
            chart.draw_series([
                EmptyElement::at((x, count)) + Text::new(count.to_string(), (0, -4), style)
            ])?;
        }
        Ok(())
    })
}

/// Draws rows of grayscale images (0 black, 1 white; so MNIST digits are white ink on black),
/// each row labelled at its left and the columns aligned, every pixel enlarged to
/// `scale` x `scale`. Every image must hold `side * side` values; rows may differ in length.
/// The figure is as large as the grid needs (at least as wide as the title).
pub fn image_grid(
    path: &Path,
    title: &str,
    rows: &[ImageRow],
    side: usize,
    scale: u32,
) -> Result<(), PlotError> {
    const MARGIN: u32 = 12;
    const GAP: u32 = 4;
    if side == 0 || scale == 0 {
        return Err(PlotError::invalid(
            path,
            format!("images of side {side} at scale {scale}"),
        ));
    }
    for row in rows {
        if let Some((k, image)) = row
            .images
            .iter()
            .enumerate()
            .find(|(_, image)| image.len() != side * side)
        {
            return Err(PlotError::invalid(
                path,
                format!(
                    "image {k} of row {:?} has {} pixels, not {side} x {side}",
                    row.label,
                    image.len()
                ),
            ));
        }
    }
    if !font_ready() {
        return Err(PlotError::Font {
            path: path.to_path_buf(),
        });
    }
    let too_large = || PlotError::invalid(path, "the image grid is too large");
    let cell = u32::try_from(side)
        .ok()
        .and_then(|s| s.checked_mul(scale))
        .filter(|&c| u64::from(c) * u64::from(c) <= MAX_PIXELS)
        .ok_or_else(too_large)?;
    let columns = rows.iter().map(|r| r.images.len()).max().unwrap_or(0);
    let empty = columns == 0;

    // Text sizes, measured with a scratch drawing area.
    let title_style = font(TITLE_SIZE - 2);
    let label_style = font(LABEL_SIZE + 3);
    let (title_w, title_h, label_w) = {
        let mut scratch = vec![0u8; 3];
        let area = BitMapBackend::with_buffer(&mut scratch, (1, 1)).into_drawing_area();
        let measure = |text: &str, style: &TextStyle<'_>| {
            if text.is_empty() {
                Ok((0, 0))
            } else {
                area.estimate_text_size(text, style)
            }
        };
        let failed = |e: DrawingAreaErrorKind<_>| PlotError::Draw {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let (tw, th) = measure(title, &title_style).map_err(failed)?;
        let mut lw = 0;
        for row in rows {
            lw = lw.max(measure(&row.label, &label_style).map_err(failed)?.0);
        }
        (tw, th, lw)
    };
    let title_band = if title.is_empty() {
        MARGIN
    } else {
        title_h + 2 * MARGIN
    };
    let label_band = if label_w > 0 {
        label_w + 2 * MARGIN
    } else {
        MARGIN
    };
    let grid_w = u64::from(cell + GAP) * columns as u64;
    let grid_h = u64::from(cell + GAP) * rows.len() as u64;
    let (min_w, min_h) = if empty { (300, 120) } else { (0, 0) };
    let width = (u64::from(label_band) + grid_w + u64::from(MARGIN))
        .max(u64::from(title_w) + 2 * u64::from(MARGIN))
        .max(min_w);
    let height = (u64::from(title_band) + grid_h + u64::from(MARGIN)).max(min_h);
    if width * height > MAX_PIXELS {
        return Err(too_large());
    }
    let (width, height) = (width as u32, height as u32);
    let origin = |r: usize, c: usize| {
        (
            label_band + c as u32 * (cell + GAP),
            title_band + r as u32 * (cell + GAP),
        )
    };

    render_then(
        path,
        (width, height),
        |root| {
            if !title.is_empty() {
                let style = title_style.pos(Pos::new(HPos::Center, VPos::Top));
                root.draw(&Text::new(title, (width as i32 / 2, MARGIN as i32), style))?;
            }
            if empty {
                return draw_note(root, "no images");
            }
            for (r, row) in rows.iter().enumerate() {
                // A thin frame around each image, so white images show on the white page.
                for c in 0..row.images.len() {
                    let (x, y) = origin(r, c);
                    let (x, y, end) = (x as i32, y as i32, cell as i32);
                    let frame = [(x - 1, y - 1), (x + end, y + end)];
                    root.draw(&Rectangle::new(
                        frame,
                        full_palette::GREY_400.stroke_width(1),
                    ))?;
                }
                let (_, y) = origin(r, 0);
                let style = label_style.pos(Pos::new(HPos::Right, VPos::Center));
                let at = ((label_band - MARGIN) as i32, (y + cell / 2) as i32);
                root.draw(&Text::new(row.label.as_str(), at, style))?;
            }
            Ok(())
        },
        |buffer| {
            let stride = width as usize * 3;
            for (r, row) in rows.iter().enumerate() {
                for (c, image) in row.images.iter().enumerate() {
                    let (x0, y0) = origin(r, c);
                    for py in 0..cell as usize {
                        let line = (y0 as usize + py) * stride;
                        for px in 0..cell as usize {
                            let v = image[(py / scale as usize) * side + px / scale as usize];
                            let v = if v.is_finite() {
                                v.clamp(0.0, 1.0)
                            } else {
                                0.0
                            };
                            let g = (v * 255.0).round() as u8;
                            let at = line + (x0 as usize + px) * 3;
                            buffer[at..at + 3].copy_from_slice(&[g, g, g]);
                        }
                    }
                }
            }
        },
    )
}

/// Draws a confusion matrix as a heat map: rows are the true labels, columns the predicted
/// ones (both `labels`, in order, first row at the top), each cell shaded by its share of its
/// row and showing its count. `matrix` must be `labels.len()` rows of `labels.len()` counts.
pub fn confusion_matrix(
    path: &Path,
    title: &str,
    labels: &[String],
    matrix: &[Vec<usize>],
) -> Result<(), PlotError> {
    let n = labels.len();
    if matrix.len() != n || matrix.iter().any(|row| row.len() != n) {
        return Err(PlotError::invalid(
            path,
            format!(
                "a confusion matrix of {n} labels needs {n} rows of {n} counts, got rows of {:?}",
                matrix.iter().map(Vec::len).collect::<Vec<_>>()
            ),
        ));
    }
    let names: Vec<&str> = labels.iter().map(String::as_str).collect();
    let side = n.max(1) as f64;
    let centres: Vec<f64> = (0..n.max(1)).map(|i| i as f64 + 0.5).collect();
    // Cell sizes in pixels decide the font size of the counts.
    let plot_side = (CHART_SIZE.1 - 150) as f64;
    let count_size = ((plot_side / side) * 0.28).clamp(9.0, 26.0) as u32;
    let size = (CHART_SIZE.1 + 100, CHART_SIZE.1);

    render(path, size, |root| {
        // Room at the left for the longest row label and the axis description.
        let mut label_w = 0;
        for name in &names {
            label_w = label_w.max(root.estimate_text_size(name, &font(LABEL_SIZE))?.0);
        }
        let mut chart = ChartBuilder::on(root)
            .caption(title, font(TITLE_SIZE))
            .margin(15)
            .margin_right(40)
            .x_label_area_size(55)
            .y_label_area_size((label_w + 50).min(size.0 / 3))
            .build_cartesian_2d(
                KeyAxis {
                    range: 0.0..side,
                    keys: centres.clone(),
                },
                KeyAxis {
                    range: 0.0..side,
                    keys: centres,
                },
            )?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc("predicted")
            .y_desc("true")
            .axis_desc_style(font(AXIS_DESC_SIZE))
            .label_style(font(LABEL_SIZE))
            .x_label_formatter(&|x| category_label(&names, x - 0.5))
            .y_label_formatter(&|y| category_label(&names, side - 0.5 - y))
            .draw()?;
        if n == 0 {
            return draw_note(root, "no data");
        }
        for (r, row) in matrix.iter().enumerate() {
            let total: usize = row.iter().sum();
            let y = (n - 1 - r) as f64;
            for (c, &count) in row.iter().enumerate() {
                let share = if total > 0 {
                    count as f64 / total as f64
                } else {
                    0.0
                };
                let x = c as f64;
                let fill = heat(share);
                chart.draw_series([
                    Rectangle::new([(x, y), (x + 1.0, y + 1.0)], fill.filled()),
                    Rectangle::new(
                        [(x, y), (x + 1.0, y + 1.0)],
                        full_palette::GREY_300.stroke_width(1),
                    ),
                ])?;
                let ink = if share > 0.5 { WHITE } else { BLACK };
                let style = font(count_size)
                    .color(&ink)
                    .pos(Pos::new(HPos::Center, VPos::Center));
                chart.draw_series([Text::new(count.to_string(), (x + 0.5, y + 0.5), style)])?;
            }
        }
        Ok(())
    })
}

/// White (0) to dark blue (1).
fn heat(share: f64) -> RGBColor {
    let s = share.clamp(0.0, 1.0);
    let mix = |from: f64, to: f64| (from + (to - from) * s).round() as u8;
    RGBColor(mix(255.0, 8.0), mix(255.0, 48.0), mix(255.0, 107.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

    /// Checks that `path` is a non-trivial PNG, and returns it decoded.
    fn check_png(path: &Path) -> image::RgbImage {
        let bytes = std::fs::read(path).unwrap();
        assert!(
            bytes.starts_with(PNG_SIGNATURE),
            "{} is no PNG",
            path.display()
        );
        assert!(
            bytes.len() > 2048,
            "{} is only {} bytes",
            path.display(),
            bytes.len()
        );
        let image = image::load_from_memory_with_format(&bytes, image::ImageFormat::Png)
            .unwrap()
            .to_rgb8();
        // Not one flat colour.
        let first = image.get_pixel(0, 0);
        assert!(image.pixels().any(|p| p != first));
        image
    }

    /// Only the figure is left in the folder: no temporary file.
    fn only_file(dir: &Path) {
        let names: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            names.iter().all(|n| !n.to_string_lossy().ends_with(".tmp")),
            "{names:?}"
        );
    }

    fn roc(label: &str, power: f64) -> RocSeries {
        let points: Vec<(f64, f64)> = (0..=50)
            .map(|i| {
                let x = i as f64 / 50.0;
                (x, x.powf(power))
            })
            .collect();
        RocSeries {
            label: label.to_string(),
            auroc: 1.0 / (1.0 + power),
            marker: Some((0.05, 0.05f64.powf(power))),
            points,
        }
    }

    #[test]
    fn roc_curves_draws_and_titles_change_pixels() {
        let dir = tempfile::tempdir().unwrap();
        let with = dir.path().join("roc.png");
        let without = dir.path().join("roc-untitled.png");
        let curves = [roc("max softmax", 0.1), roc("reconstruction error", 0.3)];
        roc_curves(&with, "ROC: digit 0 against digits 1-9", &curves).unwrap();
        roc_curves(&without, "", &curves).unwrap();
        let a = check_png(&with);
        let b = check_png(&without);
        assert_eq!(a.dimensions(), CHART_SIZE);
        assert_eq!(b.dimensions(), CHART_SIZE);
        // The title's text is drawn: a broken font setup would draw nothing (or fail).
        assert_ne!(a.as_raw(), b.as_raw());
        only_file(dir.path());

        // Rewriting replaces the file.
        roc_curves(&with, "again", &curves[..1]).unwrap();
        assert_ne!(check_png(&with).as_raw(), a.as_raw());
    }

    #[test]
    fn roc_curves_of_nothing_is_a_chart() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("empty.png");
        roc_curves(&p, "no curves", &[]).unwrap();
        check_png(&p);
        let odd = RocSeries {
            label: "odd".into(),
            points: vec![(f64::NAN, 0.5), (0.0, 0.0)],
            auroc: f64::NAN,
            marker: Some((f64::INFINITY, 0.0)),
        };
        roc_curves(&p, "odd", &[odd]).unwrap();
        check_png(&p);
    }

    #[test]
    fn score_histograms_draws() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("hist.png");
        let groups = [
            HistGroup {
                label: "digits 1-9".into(),
                values: (0..5000)
                    .map(|i| (i as f64 * 0.37).sin().abs() * 0.6)
                    .collect(),
            },
            HistGroup {
                label: "digit 0".into(),
                values: (0..800)
                    .map(|i| 0.4 + (i as f64 * 0.11).cos().abs() * 0.6)
                    .collect(),
            },
        ];
        score_histograms(&p, "Scores", "score", &groups, 40, Some(0.55)).unwrap();
        assert_eq!(check_png(&p).dimensions(), CHART_SIZE);
        only_file(dir.path());
    }

    #[test]
    fn score_histograms_edge_cases() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("hist.png");
        score_histograms(&p, "none", "score", &[], 10, None).unwrap();
        check_png(&p);
        let degenerate = [
            HistGroup {
                label: "constant".into(),
                values: vec![2.0; 10],
            },
            HistGroup {
                label: "empty".into(),
                values: vec![],
            },
            HistGroup {
                label: "nan".into(),
                values: vec![f64::NAN, f64::INFINITY],
            },
        ];
        score_histograms(&p, "degenerate", "score", &degenerate, 5, Some(f64::NAN)).unwrap();
        check_png(&p);
        score_histograms(
            &p,
            "threshold only",
            "score",
            &degenerate[1..],
            5,
            Some(3.0),
        )
        .unwrap();
        check_png(&p);
        let err = score_histograms(&p, "zero bins", "score", &degenerate, 0, None).unwrap_err();
        assert!(matches!(err, PlotError::InvalidInput { .. }));
        assert_eq!(err.path(), p);
    }

    #[test]
    fn values_by_label_draws() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("by-label.png");
        let groups: Vec<(String, Vec<f64>)> = (0..10)
            .map(|d| {
                let values = (0..600)
                    .map(|i| 0.02 * (d as f64 + 1.0) * (1.0 + (i as f64 * 0.7).sin().powi(5)))
                    .collect();
                (d.to_string(), values)
            })
            .collect();
        values_by_label(
            &p,
            "Reconstruction error by label",
            "reconstruction error",
            &groups,
        )
        .unwrap();
        assert_eq!(check_png(&p).dimensions(), CHART_SIZE);
        values_by_label(&p, "empty", "error", &[]).unwrap();
        check_png(&p);
        let sparse = vec![("a".to_string(), vec![]), ("b".to_string(), vec![1.0])];
        values_by_label(&p, "sparse", "error", &sparse).unwrap();
        check_png(&p);
    }

    #[test]
    fn label_counts_draws() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("counts.png");
        let counts: Vec<(String, usize)> = [3, 0, 17, 112, 9, 21, 2, 14, 8, 14]
            .iter()
            .enumerate()
            .map(|(d, &c)| (d.to_string(), c))
            .collect();
        label_counts(&p, "Labels of the 200 largest errors", &counts).unwrap();
        assert_eq!(check_png(&p).dimensions(), CHART_SIZE);
        label_counts(&p, "none", &[]).unwrap();
        check_png(&p);
        label_counts(&p, "zeros", &[("a".into(), 0)]).unwrap();
        check_png(&p);
    }

    fn digit(seed: usize, side: usize) -> Vec<f32> {
        (0..side * side)
            .map(|i| {
                let (y, x) = ((i / side) as f32, (i % side) as f32);
                let c = side as f32 / 2.0;
                let r = ((x - c).powi(2) + (y - c).powi(2)).sqrt();
                let ring = (1.0 - (r - side as f32 / 3.5 - seed as f32 * 0.2).abs() / 2.0).max(0.0);
                ring.min(1.0)
            })
            .collect()
    }

    #[test]
    fn image_grid_draws_aligned_rows() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("grid.png");
        let side = 28;
        let rows: Vec<ImageRow> = ["original", "noised", "denoised"]
            .iter()
            .map(|label| ImageRow {
                label: label.to_string(),
                images: (0..8).map(|k| digit(k, side)).collect(),
            })
            .collect();
        image_grid(&p, "Denoising", &rows, side, 3).unwrap();
        let image = check_png(&p);
        let (w, h) = image.dimensions();
        assert!(w >= 8 * 84 && h >= 3 * 84, "{w} x {h}");
        // The centre pixel of an image is black (inside the ring); the grid background is white.
        assert!(image.pixels().any(|p| p.0 == [0, 0, 0]));
        assert_eq!(image.get_pixel(w - 1, h - 1).0, [255, 255, 255]);

        let untitled = dir.path().join("untitled.png");
        image_grid(&untitled, "", &rows, side, 3).unwrap();
        assert_ne!(check_png(&untitled).as_raw(), image.as_raw());
    }

    #[test]
    fn image_grid_rejects_bad_shapes_and_draws_empty() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("grid.png");
        let bad = [ImageRow {
            label: "x".into(),
            images: vec![vec![0.5; 10]],
        }];
        assert!(matches!(
            image_grid(&p, "bad", &bad, 28, 2),
            Err(PlotError::InvalidInput { .. })
        ));
        assert!(matches!(
            image_grid(&p, "bad", &[], 0, 2),
            Err(PlotError::InvalidInput { .. })
        ));
        assert!(matches!(
            image_grid(&p, "huge", &[], 1 << 20, 1 << 12),
            Err(PlotError::InvalidInput { .. })
        ));
        assert!(!p.exists());
        image_grid(&p, "no images", &[], 28, 2).unwrap();
        check_png(&p);
        let ragged = [
            ImageRow {
                label: "one".into(),
                images: vec![vec![1.0; 16]],
            },
            ImageRow {
                label: "none".into(),
                images: vec![],
            },
            ImageRow {
                label: "odd".into(),
                images: vec![vec![f32::NAN; 16], vec![7.0; 16]],
            },
        ];
        image_grid(&p, "ragged", &ragged, 4, 10).unwrap();
        check_png(&p);
    }

    #[test]
    fn confusion_matrix_draws() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("confusion.png");
        let labels: Vec<String> = ["in-distribution", "out-of-distribution"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        confusion_matrix(
            &p,
            "Confusion matrix",
            &labels,
            &[vec![8812, 180], vec![41, 939]],
        )
        .unwrap();
        check_png(&p);
        let ten: Vec<String> = (0..10).map(|d| d.to_string()).collect();
        let matrix: Vec<Vec<usize>> = (0..10)
            .map(|r| {
                (0..10)
                    .map(|c| if r == c { 950 + r } else { (r * c) % 7 })
                    .collect()
            })
            .collect();
        confusion_matrix(&p, "Digits", &ten, &matrix).unwrap();
        check_png(&p);
        confusion_matrix(&p, "empty", &[], &[]).unwrap();
        check_png(&p);
        assert!(matches!(
            confusion_matrix(&p, "bad", &labels, &[vec![1, 2]]),
            Err(PlotError::InvalidInput { .. })
        ));
    }

    #[test]
    fn unwritable_path_is_an_io_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("no/such/folder/roc.png");
        let err = roc_curves(&p, "t", &[]).unwrap_err();
        assert!(matches!(err, PlotError::Io { .. }));
        assert!(err.to_string().contains("roc.png"));
    }
}
