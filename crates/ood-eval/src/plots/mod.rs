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

mod bar_chart;
mod box_plots;
mod confusion;
mod curves;
mod draw;
mod grid;
mod histograms;

use std::path::{Path, PathBuf};

pub use bar_chart::label_counts;
pub use box_plots::values_by_label;
pub use confusion::confusion_matrix;
pub use curves::{roc_curves, trade_off_curves, RocSeries, TradeOffSeries};
pub use grid::{image_grid, ImageRow};
pub use histograms::{score_histograms, HistGroup};

/// The size in pixels of the chart figures (every figure but [`image_grid`]).
pub const CHART_SIZE: (u32, u32) = (900, 650);

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

/// What every figure test checks of the file it drew.
#[cfg(test)]
mod testing {
    use std::path::Path;

    const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

    /// Checks that `path` is a non-trivial PNG, and returns it decoded.
    pub(super) fn check_png(path: &Path) -> image::RgbImage {
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
    pub(super) fn only_file(dir: &Path) {
        let names: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            names.iter().all(|n| !n.to_string_lossy().ends_with(".tmp")),
            "{names:?}"
        );
    }
}
