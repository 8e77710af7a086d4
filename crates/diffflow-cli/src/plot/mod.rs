//! Pictures: PNG scatter plots, 2-D histograms, line charts and image grids.
//!
//! Everything renders in memory into an RGB buffer: densities and dots are
//! written pixel by pixel, text is rasterised with `ab_glyph` from an embedded
//! DejaVu Sans font, and line-chart axes are drawn by `plotters` (its
//! `ab_glyph` feature, with the same font registered), so no system fonts are
//! needed. Pictures are written atomically: encoded into a temporary file next
//! to the target and renamed over it, so a failure never leaves a half-written
//! picture. The target's directory must exist.
//!
//! This file holds the public API and the PNG writing; the pictures are drawn by
//! `panels` (2-D histograms and scatter plots in a grid), `line_chart` and `images`,
//! on the `canvas` (pixels, text, colours).
#![allow(dead_code)]

mod canvas;
mod images;
mod line_chart;
mod panels;
#[cfg(test)]
mod test_util;

use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{anyhow, Context, Result};
use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, ImageEncoder};

use canvas::Canvas;

/// How a panel shows its points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Scatter,
    Histogram,
}

/// One panel: a title and 2-D points, row-major [n, 2], optional integer labels (one per point) that select colours (scatter only).
#[derive(Debug, Clone)]
pub struct Panel<'a> {
    pub title: String,
    pub points: &'a [f64],
    pub labels: Option<&'a [usize]>,
    pub style: Style,
}

// ---------------------------------------------------------------------------
// Public API.

/// A grid of square panels: `rows` × `cols`, row titles at the left, column titles on top, a figure title. `cells[r][c]`; one shared square view box `bounds = [xmin, xmax, ymin, ymax]` for all panels, or computed from all points (0.1st–99.9th percentile, made square, padded by 5% on each side) when None.
///
/// Rows may have different lengths (missing cells stay blank); `row_titles` /
/// `col_titles` may be shorter than the grid (missing ones are blank) but not
/// longer. Non-finite points are skipped and counted in the panel caption;
/// a panel without points is drawn empty ("no points"). Errors: no panels at
/// all, a point buffer whose length is odd, labels of the wrong length,
/// non-finite or reversed `bounds`, or I/O failure.
pub fn panel_grid(
    path: &Path,
    title: &str,
    row_titles: &[String],
    col_titles: &[String],
    cells: &[Vec<Panel>],
    bounds: Option<[f64; 4]>,
) -> Result<()> {
    let rows: Vec<&[Panel]> = cells.iter().map(Vec::as_slice).collect();
    let canvas = panels::render_grid(title, row_titles, col_titles, &rows, bounds)?;
    save_png(&canvas, path)
}

/// Convenience: one row of panels side by side (e.g. data | samples), figure title on top.
pub fn panels_row(
    path: &Path,
    title: &str,
    panels: &[Panel],
    bounds: Option<[f64; 4]>,
) -> Result<()> {
    let canvas = panels::render_grid(title, &[], &[], &[panels], bounds)?;
    save_png(&canvas, path)
}

/// Line chart of several named series of (x, y) points, optional log-scale y, axis labels, legend.
///
/// Non-finite points (and, with `log_y`, points with y ≤ 0) are skipped and
/// break the line there. Series without usable points are left out of the
/// legend; if no series has any, an empty chart saying "no data" is written.
pub fn line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
    log_y: bool,
) -> Result<()> {
    let canvas = line_chart::render_line_chart(title, x_label, y_label, series, log_y)?;
    save_png(&canvas, path)
}

/// How image rows become pixels. Shapes: one image is `channels * height * width` values,
/// channel-major (`[C, H, W]`), in data units.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ImageFormat {
    /// 1 (grey) or 3 (RGB).
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    /// `[lo, hi)`: values in it map linearly to 256 intensities (with `[0, 256)`, pixel
    /// value k + u, 0 <= u < 1, is intensity k); values outside are clamped.
    pub range: [f64; 2],
}

/// A grid of images (e.g. 10 × 10 samples) in `cols` columns, with a figure title on top
/// (none when empty). Shapes: images [B, C·H·W] row-major.
///
/// NaN pixels are shown in magenta. Each image is upscaled by an integer factor to about
/// 80 px; fewer images than `cols` make a narrower grid. Errors: no images, a length that
/// is not whole images, a bad format (channels not 1 or 3, empty size, empty or
/// non-finite range), `cols` zero, too large a picture, or I/O failure.
pub fn image_grid(
    path: &Path,
    title: &str,
    images: &[f64],
    format: &ImageFormat,
    cols: usize,
) -> Result<()> {
    let canvas = images::render_image_grid(title, images, format, cols)?;
    save_png(&canvas, path)
}

/// A forward-trajectory strip, the image analogue of the paper's Figure 4: one row per
/// data image, one column per state `x_i` at a chosen time, labelled "t = times[j]".
/// Shapes: states[j] [R, C·H·W], the R images at time `times[j]` (row r of every state is
/// the trajectory of data image r).
///
/// Pixels as in [`image_grid`]. Errors: no states, `times` and `states` of different
/// lengths, states of different lengths or not whole images, a bad format, too large a
/// picture, or I/O failure.
pub fn trajectory_strip<S: AsRef<[f64]>>(
    path: &Path,
    title: &str,
    states: &[S],
    times: &[f64],
    format: &ImageFormat,
) -> Result<()> {
    let canvas = images::render_trajectory_strip(title, states, times, format)?;
    save_png(&canvas, path)
}

/// Encodes `canvas` as PNG into a temporary file beside `path`, then renames it
/// over `path`; the temporary file is removed on failure.
fn save_png(canvas: &Canvas, path: &Path) -> Result<()> {
    let file_name = path
        .file_name()
        .ok_or_else(|| anyhow!("{} has no file name", path.display()))?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let tmp = dir.join(format!(
        ".{}.{}-{}.tmp",
        file_name.to_string_lossy(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .with_context(|| {
            format!(
                "writing picture {}: creating {}",
                path.display(),
                tmp.display()
            )
        })?;
    // From here on the temporary file is ours: remove it on any failure.
    let result = (|| -> Result<()> {
        let mut out = BufWriter::new(file);
        PngEncoder::new(&mut out)
            .write_image(&canvas.buf, canvas.w, canvas.h, ExtendedColorType::Rgb8)
            .context("encoding PNG")?;
        out.flush().context("writing PNG")?;
        drop(out);
        fs::rename(&tmp, path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing picture {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::test_util::{entries, grey, hist};
    use super::*;

    #[test]
    fn plot_failed_write_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        // The target is a directory: the rename fails after the temp file was written.
        let path = dir.path().join("taken.png");
        fs::create_dir(&path).unwrap();
        let pts = [0.0, 0.0, 1.0, 1.0];
        let err = panels_row(&path, "x", &[hist("", &pts)], None).unwrap_err();
        assert!(format!("{err:#}").contains("taken.png"), "{err:#}");
        assert!(line_chart(&path, "x", "x", "y", &[], false).is_err());
        assert!(image_grid(&path, "", &[0.5; 4], &grey(2, 2), 1).is_err());
        assert_eq!(entries(dir.path()), vec!["taken.png".to_string()]);
        // A missing directory is an error, not a panic.
        let missing = dir.path().join("no/such/dir/x.png");
        assert!(panels_row(&missing, "x", &[hist("", &pts)], None).is_err());
    }
}
