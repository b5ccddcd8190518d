//! What every figure shares: the embedded font, the colours, rendering to a PNG file, the chart
//! frame and legend, number formatting, and the axis of categories.

use std::io::Cursor;
use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::ranged1d::{KeyPointHint, NoDefaultFormatting, ValueFormatter};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::PlotError;

/// The font every figure uses, registered under the family name [`FONT_FAMILY`].
static FONT_BYTES: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../assets/fonts/DejaVuSans.ttf"
));

/// The font family name used for all text.
const FONT_FAMILY: &str = "sans-serif";

/// The largest figure [`image_grid`](super::image_grid) will draw, in pixels (width times height).
pub(super) const MAX_PIXELS: u64 = 64 * 1024 * 1024;

pub(super) const TITLE_SIZE: u32 = 26;
pub(super) const AXIS_DESC_SIZE: u32 = 18;
pub(super) const LABEL_SIZE: u32 = 15;

/// A failure while drawing, turned into [`PlotError::Draw`] once the path is known.
pub(super) struct Failure(pub(super) String);

impl<E: std::error::Error> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure(e.to_string())
    }
}

pub(super) type Drawn = Result<(), Failure>;
pub(super) type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

/// Registers the embedded font once; false when it could not be loaded.
pub(super) fn font_ready() -> bool {
    static LOADED: OnceLock<bool> = OnceLock::new();
    *LOADED.get_or_init(|| {
        plotters::style::register_font(FONT_FAMILY, FontStyle::Normal, FONT_BYTES).is_ok()
    })
}

/// The text style of all text, at `size` pixels.
pub(super) fn font(size: u32) -> TextStyle<'static> {
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

pub(super) fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// Renders a figure of `size` pixels with `draw`, then encodes and writes it to `path`.
pub(super) fn render(
    path: &Path,
    size: (u32, u32),
    draw: impl FnOnce(&Area<'_>) -> Drawn,
) -> Result<(), PlotError> {
    render_then(path, size, draw, |_| ())
}

/// [`render`], with `finish` applied to the raw RGB buffer after plotters has drawn into it.
pub(super) fn render_then(
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
pub(super) fn draw_note(area: &Area<'_>, note: &str) -> Drawn {
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
pub(super) fn number(x: f64) -> String {
    if !x.is_finite() {
        "n/a".to_string()
    } else if x == 0.0 || (1e-3..1e5).contains(&x.abs()) {
        format!("{x:.3}")
    } else {
        format!("{x:.2e}")
    }
}

/// Formats an axis tick value compactly.
pub(super) fn tick(x: f64) -> String {
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
pub(super) fn padded(lo: f64, hi: f64, pad: f64) -> (f64, f64) {
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
pub(super) fn sorted_finite(values: &[f64]) -> Vec<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    v
}

/// The `q`-quantile (0..=1) of sorted, non-empty `v`, linearly interpolated.
pub(super) fn quantile(v: &[f64], q: f64) -> f64 {
    let rank = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let lo = rank.floor() as usize;
    let hi = (lo + 1).min(v.len() - 1);
    v[lo] + (v[hi] - v[lo]) * (rank - lo as f64)
}

/// A chart with the figures' common frame: the title, a 15 px margin and room for the axis
/// labels (the y area is wider for long tick labels).
pub(super) fn chart_frame<'a, 'b>(
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
pub(super) fn draw_legend<'a, 'b: 'a, X: Ranged, Y: Ranged>(
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

/// A linear axis over `range` with ticks exactly at `keys` (for categories and heat maps).
pub(super) struct KeyAxis {
    pub(super) range: std::ops::Range<f64>,
    pub(super) keys: Vec<f64>,
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
pub(super) fn category_axis(n: usize) -> KeyAxis {
    let n = n.max(1);
    KeyAxis {
        range: -0.5..n as f64 - 0.5,
        keys: (0..n).map(|i| i as f64).collect(),
    }
}

/// The category label at axis position `x`.
pub(super) fn category_label(labels: &[&str], x: f64) -> String {
    let i = x.round();
    if i >= 0.0 && (i as usize) < labels.len() {
        labels[i as usize].to_string()
    } else {
        String::new()
    }
}
