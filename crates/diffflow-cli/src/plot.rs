//! Pictures: PNG scatter plots, 2-D histograms and line charts.
//!
//! Everything renders in memory into an RGB buffer: densities and dots are
//! written pixel by pixel, text is rasterised with `ab_glyph` from an embedded
//! DejaVu Sans font, and line-chart axes are drawn by `plotters` (its
//! `ab_glyph` feature, with the same font registered), so no system fonts are
//! needed. Pictures are written atomically: encoded into a temporary file next
//! to the target and renamed over it, so a failure never leaves a half-written
//! picture. The target's directory must exist.
#![allow(dead_code)]

use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use ab_glyph::{point, Font, FontRef, Glyph, GlyphId, PxScale, PxScaleFont, ScaleFont};
use anyhow::{anyhow, bail, ensure, Context, Result};
use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, ImageEncoder};
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, VPos};

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
// Layout constants.

/// Side of one square panel, in pixels.
const PANEL_PX: u32 = 400;
/// Histogram bins per side (each bin covers `PANEL_PX / HIST_BINS` pixels).
const HIST_BINS: usize = 200;
/// Gap between panels.
const GAP_PX: u32 = 10;
/// Outer margin of every figure.
const MARGIN_PX: u32 = 12;
/// Height of the figure-title band (when the title is not empty).
const TITLE_H: u32 = 40;
/// Height of the column-title band (when any column title is not empty).
const COL_TITLE_H: u32 = 28;
/// Height of the per-panel title strip (when any panel has a caption).
const PANEL_TITLE_H: u32 = 24;
/// Height of the footer line with the view box.
const FOOTER_H: u32 = 20;
/// Widest row-title band.
const MAX_ROW_TITLE_W: u32 = 240;
/// Largest picture side we agree to allocate.
const MAX_SIDE: u32 = 16_384;
/// Line-chart size.
const CHART_W: u32 = 900;
const CHART_H: u32 = 560;
/// Target on-screen size (pixels) of one image in `image_grid`.
const IMAGE_TARGET_PX: usize = 80;
/// Border between images in `image_grid`.
const IMAGE_PAD_PX: usize = 2;

const FONT_FAMILY: &str = "sans-serif";
const FONT_BYTES: &[u8] = include_bytes!("../assets/fonts/DejaVuSans.ttf");

const WHITE_RGB: [u8; 3] = [255, 255, 255];
const TEXT_RGB: [u8; 3] = [25, 25, 25];
const MUTED_RGB: [u8; 3] = [110, 110, 110];
const FRAME_RGB: [u8; 3] = [150, 150, 150];

/// Qualitative palette (Tableau 10), indexed by label.
const PALETTE: [[u8; 3]; 10] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [127, 127, 127],
    [188, 189, 34],
    [23, 190, 207],
];

/// Anchors of a magma-like perceptual ramp (black → purple → orange → pale yellow).
const RAMP: [[f32; 3]; 9] = [
    [0.0, 0.0, 4.0],
    [28.0, 16.0, 68.0],
    [79.0, 18.0, 123.0],
    [129.0, 37.0, 129.0],
    [181.0, 54.0, 122.0],
    [229.0, 80.0, 100.0],
    [251.0, 135.0, 97.0],
    [254.0, 194.0, 135.0],
    [252.0, 253.0, 191.0],
];

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
    let canvas = render_grid(title, row_titles, col_titles, &rows, bounds)?;
    canvas.save_png(path)
}

/// Convenience: one row of panels side by side (e.g. data | samples), figure title on top.
pub fn panels_row(
    path: &Path,
    title: &str,
    panels: &[Panel],
    bounds: Option<[f64; 4]>,
) -> Result<()> {
    let canvas = render_grid(title, &[], &[], &[panels], bounds)?;
    canvas.save_png(path)
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
    let canvas = render_line_chart(title, x_label, y_label, series, log_y)?;
    canvas.save_png(path)
}

/// A grayscale image grid (for image samples later): `images` each h×w values in [0,1], arranged in `cols` columns.
///
/// Values are clamped to [0, 1]; NaN pixels are shown in magenta. Each image
/// is upscaled by an integer factor to about 80 px. Errors: no images,
/// `h`, `w` or `cols` zero, an image of the wrong length, or I/O failure.
pub fn image_grid(path: &Path, images: &[Vec<f32>], h: usize, w: usize, cols: usize) -> Result<()> {
    let canvas = render_image_grid(images, h, w, cols)?;
    canvas.save_png(path)
}

// ---------------------------------------------------------------------------
// Canvas: an RGB buffer with a few drawing helpers.

struct Canvas {
    w: u32,
    h: u32,
    buf: Vec<u8>,
}

/// A piece of text, anchored at (x, y).
struct Label {
    text: String,
    x: i32,
    y: i32,
    size: f64,
    rgb: [u8; 3],
    h_pos: HPos,
    v_pos: VPos,
    /// Rotated a quarter turn anticlockwise (reads bottom to top).
    vertical: bool,
}

impl Canvas {
    fn new(w: u32, h: u32, bg: [u8; 3]) -> Result<Self> {
        ensure!(
            w > 0 && h > 0 && w <= MAX_SIDE && h <= MAX_SIDE,
            "picture would be {w}×{h} px (each side must be 1..={MAX_SIDE})"
        );
        let n = w as usize * h as usize;
        let mut buf = Vec::with_capacity(n * 3);
        for _ in 0..n {
            buf.extend_from_slice(&bg);
        }
        Ok(Self { w, h, buf })
    }

    #[inline]
    fn set(&mut self, x: u32, y: u32, rgb: [u8; 3]) {
        if x < self.w && y < self.h {
            let i = (y as usize * self.w as usize + x as usize) * 3;
            self.buf[i..i + 3].copy_from_slice(&rgb);
        }
    }

    #[inline]
    fn blend(&mut self, x: i64, y: i64, rgb: [u8; 3], alpha: f32) {
        if x < 0 || y < 0 || x >= self.w as i64 || y >= self.h as i64 {
            return;
        }
        let i = (y as usize * self.w as usize + x as usize) * 3;
        for (dst, &src) in self.buf[i..i + 3].iter_mut().zip(&rgb) {
            let old = *dst as f32;
            *dst = (old + (src as f32 - old) * alpha).round().clamp(0.0, 255.0) as u8;
        }
    }

    fn fill_rect(&mut self, x0: u32, y0: u32, w: u32, h: u32, rgb: [u8; 3]) {
        for y in y0..(y0 + h).min(self.h) {
            for x in x0..(x0 + w).min(self.w) {
                self.set(x, y, rgb);
            }
        }
    }

    /// A 1-px frame just outside the rectangle.
    fn frame(&mut self, x0: u32, y0: u32, w: u32, h: u32, rgb: [u8; 3]) {
        let (l, t) = (x0 as i64 - 1, y0 as i64 - 1);
        let (r, b) = (x0 as i64 + w as i64, y0 as i64 + h as i64);
        for x in l..=r {
            self.blend(x, t, rgb, 1.0);
            self.blend(x, b, rgb, 1.0);
        }
        for y in t..=b {
            self.blend(l, y, rgb, 1.0);
            self.blend(r, y, rgb, 1.0);
        }
    }

    /// Draws text items with the embedded font (rasterised by `ab_glyph`).
    fn draw_labels(&mut self, labels: &[Label]) -> Result<()> {
        if labels.is_empty() {
            return Ok(());
        }
        let font = font()?;
        for l in labels {
            let sf = font.as_scaled(PxScale::from(l.size as f32));
            let (glyphs, width) = layout_text(&sf, &l.text);
            let du = match l.h_pos {
                HPos::Left => 0.0,
                HPos::Center => -width / 2.0,
                HPos::Right => -width,
            };
            // Baseline position relative to the anchor, downwards.
            let dv = match l.v_pos {
                VPos::Top => sf.ascent(),
                VPos::Center => (sf.ascent() + sf.descent()) / 2.0,
                VPos::Bottom => sf.descent(),
            };
            for g in glyphs {
                let Some(outline) = font.outline_glyph(g) else {
                    continue;
                };
                let b = outline.px_bounds();
                outline.draw(|gx, gy, cover| {
                    // (u, v): along and across the text, v pointing down.
                    let u = (b.min.x + gx as f32 + du).round() as i64;
                    let v = (b.min.y + gy as f32 + dv).round() as i64;
                    let (x, y) = if l.vertical {
                        (l.x as i64 + v, l.y as i64 - u)
                    } else {
                        (l.x as i64 + u, l.y as i64 + v)
                    };
                    self.blend(x, y, l.rgb, cover.clamp(0.0, 1.0));
                });
            }
        }
        Ok(())
    }

    /// Alpha-blends a filled rectangle.
    fn blend_rect(&mut self, x0: i64, y0: i64, w: i64, h: i64, rgb: [u8; 3], alpha: f32) {
        for y in y0..y0 + h {
            for x in x0..x0 + w {
                self.blend(x, y, rgb, alpha);
            }
        }
    }

    /// Encodes the picture as PNG into a temporary file beside `path`, then
    /// renames it over `path`; the temporary file is removed on failure.
    fn save_png(&self, path: &Path) -> Result<()> {
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
                .write_image(&self.buf, self.w, self.h, ExtendedColorType::Rgb8)
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
}

// ---------------------------------------------------------------------------
// Fonts and text.

/// The embedded font, parsed once.
fn font() -> Result<&'static FontRef<'static>> {
    static FONT: OnceLock<Option<FontRef<'static>>> = OnceLock::new();
    FONT.get_or_init(|| FontRef::try_from_slice(FONT_BYTES).ok())
        .as_ref()
        .ok_or_else(|| anyhow!("the embedded DejaVu Sans font could not be parsed"))
}

/// Registers the embedded font with plotters (once per process); needed
/// before plotters draws any text (line-chart tick labels).
fn ensure_plotters_font() -> Result<()> {
    static REGISTERED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            plotters::style::register_font(FONT_FAMILY, FontStyle::Normal, FONT_BYTES)
                .map_err(|_| "the embedded DejaVu Sans font could not be parsed".to_string())
        })
        .clone()
        .map_err(|e| anyhow!(e))
}

fn text_style(size: f64, rgb: [u8; 3]) -> TextStyle<'static> {
    (FONT_FAMILY, size)
        .into_font()
        .color(&RGBColor(rgb[0], rgb[1], rgb[2]))
}

/// Glyphs of `text` on a baseline at y = 0 starting at x = 0, and the advance width.
fn layout_text(sf: &PxScaleFont<&FontRef<'static>>, text: &str) -> (Vec<Glyph>, f32) {
    let mut caret = 0.0f32;
    let mut prev: Option<GlyphId> = None;
    let mut glyphs = Vec::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            continue;
        }
        let id = sf.glyph_id(c);
        if let Some(p) = prev {
            caret += sf.kern(p, id);
        }
        glyphs.push(id.with_scale_and_position(sf.scale(), point(caret, 0.0)));
        caret += sf.h_advance(id);
        prev = Some(id);
    }
    (glyphs, caret)
}

/// Width in pixels of `text` at `size`.
fn text_width(text: &str, size: f64) -> Result<u32> {
    let sf = font()?.as_scaled(PxScale::from(size as f32));
    Ok(layout_text(&sf, text).1.ceil() as u32)
}

/// `text`, shortened with an ellipsis so that it fits in `max_w` pixels.
fn fit_text(text: &str, size: f64, max_w: u32) -> Result<String> {
    if text_width(text, size)? <= max_w {
        return Ok(text.to_string());
    }
    // Binary search for the longest prefix that fits with an ellipsis.
    let chars: Vec<char> = text.chars().collect();
    let with_ellipsis = |n: usize| -> String { chars[..n].iter().chain(&['…']).collect() };
    let (mut lo, mut hi) = (0, chars.len()); // lo always fits (or is 0), hi does not.
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if text_width(&with_ellipsis(mid), size)? <= max_w {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    if lo == 0 && text_width(&with_ellipsis(0), size)? > max_w {
        return Ok(String::new());
    }
    Ok(with_ellipsis(lo).trim_end().to_string().replace(" …", "…"))
}

/// Short human-readable number for tick labels and captions.
fn fmt_num(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return if v == 0.0 { "0".into() } else { format!("{v}") };
    }
    let a = v.abs();
    if !(1e-3..1e5).contains(&a) {
        let s = format!("{v:.1e}");
        return s.replace(".0e", "e");
    }
    let decimals = (3 - a.log10().floor() as i32).clamp(0, 4) as usize;
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

// ---------------------------------------------------------------------------
// Colour helpers.

/// Perceptual ramp at `t` in [0, 1] (linear interpolation between anchors).
fn ramp(t: f32) -> [u8; 3] {
    let t = if t.is_nan() { 0.0 } else { t.clamp(0.0, 1.0) };
    let pos = t * (RAMP.len() - 1) as f32;
    let i = (pos.floor() as usize).min(RAMP.len() - 2);
    let f = pos - i as f32;
    let (a, b) = (RAMP[i], RAMP[i + 1]);
    [0, 1, 2].map(|k| (a[k] + (b[k] - a[k]) * f).round().clamp(0.0, 255.0) as u8)
}

fn palette(i: usize) -> [u8; 3] {
    PALETTE[i % PALETTE.len()]
}

// ---------------------------------------------------------------------------
// Panel grid.

/// View box `[xmin, xmax, ymin, ymax]` with positive extents.
#[derive(Debug, Clone, Copy)]
struct View {
    x0: f64,
    x1: f64,
    y0: f64,
    y1: f64,
}

impl View {
    /// Continuous pixel coordinates (origin top-left of the panel) of a point.
    #[inline]
    fn pixel(&self, x: f64, y: f64, size: f64) -> (f64, f64) {
        let fx = (x - self.x0) / (self.x1 - self.x0) * size;
        let fy = (1.0 - (y - self.y0) / (self.y1 - self.y0)) * size;
        (fx, fy)
    }
}

/// Pads a degenerate extent `[lo, hi]` (lo == hi) to a usable one.
fn pad_extent(lo: f64, hi: f64) -> (f64, f64) {
    if hi > lo && (hi - lo) > f64::EPSILON * lo.abs().max(hi.abs()) * 4.0 {
        return (lo, hi);
    }
    let c = lo / 2.0 + hi / 2.0;
    let half = if c == 0.0 {
        1.0
    } else {
        (c.abs() * 0.1).max(1e-12)
    };
    (c - half, c + half)
}

fn view_from_bounds(b: [f64; 4]) -> Result<View> {
    ensure!(
        b.iter().all(|v| v.is_finite()),
        "plot bounds must be finite, got {b:?}"
    );
    ensure!(
        b[0] <= b[1] && b[2] <= b[3],
        "plot bounds must be [xmin, xmax, ymin, ymax] with min <= max, got {b:?}"
    );
    let (x0, x1) = pad_extent(b[0], b[1]);
    let (y0, y1) = pad_extent(b[2], b[3]);
    Ok(View { x0, x1, y0, y1 })
}

/// Value at quantile `q` of `v` (reorders `v`; `v` must be non-empty).
fn quantile(v: &mut [f64], q: f64) -> f64 {
    let idx = ((v.len() - 1) as f64 * q).round() as usize;
    let (_, x, _) = v.select_nth_unstable_by(idx, f64::total_cmp);
    *x
}

/// A square view box around all finite points: 0.1st–99.9th percentile per
/// axis, the longer side for both, padded by 5% of it on each side.
fn auto_view<'p>(panels: impl Iterator<Item = &'p Panel<'p>>) -> Result<View> {
    let mut xs = Vec::new();
    let mut ys = Vec::new();
    for p in panels {
        for c in p.points.chunks_exact(2) {
            if c[0].is_finite() && c[1].is_finite() {
                xs.push(c[0]);
                ys.push(c[1]);
            }
        }
    }
    if xs.is_empty() {
        return Ok(View {
            x0: -1.0,
            x1: 1.0,
            y0: -1.0,
            y1: 1.0,
        });
    }
    let (xl, xh) = (quantile(&mut xs, 0.001), quantile(&mut xs, 0.999));
    let (yl, yh) = (quantile(&mut ys, 0.001), quantile(&mut ys, 0.999));
    let (cx, cy) = (xl / 2.0 + xh / 2.0, yl / 2.0 + yh / 2.0);
    let mut half = (xh / 2.0 - xl / 2.0).max(yh / 2.0 - yl / 2.0) * 1.1;
    if half <= 1e-12 * (1.0 + cx.abs().max(cy.abs())) {
        half = if cx == 0.0 && cy == 0.0 {
            1.0
        } else {
            0.1 * cx.abs().max(cy.abs())
        };
    }
    let v = View {
        x0: cx - half,
        x1: cx + half,
        y0: cy - half,
        y1: cy + half,
    };
    ensure!(
        [v.x0, v.x1, v.y0, v.y1].iter().all(|x| x.is_finite()) && v.x1 > v.x0 && v.y1 > v.y0,
        "points span too large a range to plot"
    );
    Ok(v)
}

/// Pixel geometry of a panel grid.
#[derive(Debug, Clone, Copy)]
struct GridLayout {
    width: u32,
    height: u32,
    rows: u32,
    cols: u32,
    title_h: u32,
    col_title_h: u32,
    panel_title_h: u32,
    row_title_w: u32,
}

impl GridLayout {
    /// Top-left pixel of the square panel `(r, c)` (below its caption strip).
    fn panel_origin(&self, r: u32, c: u32) -> (u32, u32) {
        let x = MARGIN_PX + self.row_title_w + c * (PANEL_PX + GAP_PX);
        let y = MARGIN_PX
            + self.title_h
            + self.col_title_h
            + r * (self.panel_title_h + PANEL_PX + GAP_PX)
            + self.panel_title_h;
        (x, y)
    }

    fn footer_y(&self) -> u32 {
        self.height - MARGIN_PX - FOOTER_H / 2
    }
}

fn grid_layout(
    title: &str,
    row_titles: &[String],
    col_titles: &[String],
    rows: u32,
    cols: u32,
    any_panel_caption: bool,
) -> Result<GridLayout> {
    let mut row_title_w = 0;
    for t in row_titles.iter().filter(|t| !t.is_empty()) {
        row_title_w = row_title_w.max(text_width(t, 18.0)? + 16);
    }
    let row_title_w = row_title_w.min(MAX_ROW_TITLE_W);
    let title_h = if title.is_empty() { 0 } else { TITLE_H };
    let col_title_h = if col_titles.iter().any(|t| !t.is_empty()) {
        COL_TITLE_H
    } else {
        0
    };
    let panel_title_h = if any_panel_caption { PANEL_TITLE_H } else { 0 };
    let width = 2u64 * MARGIN_PX as u64
        + row_title_w as u64
        + cols as u64 * PANEL_PX as u64
        + (cols as u64 - 1) * GAP_PX as u64;
    let height = 2u64 * MARGIN_PX as u64
        + title_h as u64
        + col_title_h as u64
        + rows as u64 * (panel_title_h + PANEL_PX) as u64
        + (rows as u64 - 1) * GAP_PX as u64
        + FOOTER_H as u64;
    ensure!(
        width <= MAX_SIDE as u64 && height <= MAX_SIDE as u64,
        "a {rows}×{cols} panel grid is too large a picture"
    );
    Ok(GridLayout {
        width: width as u32,
        height: height as u32,
        rows,
        cols,
        title_h,
        col_title_h,
        panel_title_h,
        row_title_w,
    })
}

fn validate_panel(p: &Panel, r: usize, c: usize) -> Result<()> {
    ensure!(
        p.points.len() % 2 == 0,
        "panel [{r}][{c}] ({:?}): points must be row-major [n, 2], got {} values",
        p.title,
        p.points.len()
    );
    if let Some(l) = p.labels {
        ensure!(
            l.len() == p.points.len() / 2,
            "panel [{r}][{c}] ({:?}): {} labels for {} points",
            p.title,
            l.len(),
            p.points.len() / 2
        );
    }
    Ok(())
}

fn count_non_finite(points: &[f64]) -> usize {
    points
        .chunks_exact(2)
        .filter(|c| !(c[0].is_finite() && c[1].is_finite()))
        .count()
}

fn render_grid(
    title: &str,
    row_titles: &[String],
    col_titles: &[String],
    cells: &[&[Panel]],
    bounds: Option<[f64; 4]>,
) -> Result<Canvas> {
    let rows = cells.len();
    let cols = cells.iter().map(|r| r.len()).max().unwrap_or(0);
    ensure!(
        rows > 0 && cols > 0,
        "nothing to plot: the panel grid is empty"
    );
    ensure!(
        row_titles.len() <= rows,
        "{} row titles for {rows} rows",
        row_titles.len()
    );
    ensure!(
        col_titles.len() <= cols,
        "{} column titles for {cols} columns",
        col_titles.len()
    );
    ensure!(
        rows <= MAX_SIDE as usize && cols <= MAX_SIDE as usize,
        "a {rows}×{cols} panel grid is too large a picture"
    );
    for (r, row) in cells.iter().enumerate() {
        for (c, p) in row.iter().enumerate() {
            validate_panel(p, r, c)?;
        }
    }
    let view = match bounds {
        Some(b) => view_from_bounds(b)?,
        None => auto_view(cells.iter().flat_map(|r| r.iter()))?,
    };

    // Captions: the panel title plus a note about skipped points.
    let captions: Vec<Vec<String>> = cells
        .iter()
        .map(|row| {
            row.iter()
                .map(|p| {
                    let bad = count_non_finite(p.points);
                    match (p.title.is_empty(), bad) {
                        (_, 0) => p.title.clone(),
                        (true, n) => format!("{n} non-finite skipped"),
                        (false, n) => format!("{} ({n} non-finite skipped)", p.title),
                    }
                })
                .collect()
        })
        .collect();
    let any_caption = captions.iter().flatten().any(|c| !c.is_empty());
    let layout = grid_layout(
        title,
        row_titles,
        col_titles,
        rows as u32,
        cols as u32,
        any_caption,
    )?;

    let mut canvas = Canvas::new(layout.width, layout.height, WHITE_RGB)?;
    let mut labels = Vec::new();
    for (r, row) in cells.iter().enumerate() {
        for (c, p) in row.iter().enumerate() {
            let (x0, y0) = layout.panel_origin(r as u32, c as u32);
            let finite = p.points.len() / 2 - count_non_finite(p.points);
            match p.style {
                Style::Histogram => draw_histogram(&mut canvas, x0, y0, p.points, &view),
                Style::Scatter => draw_scatter(&mut canvas, x0, y0, p, &view),
            }
            canvas.frame(x0, y0, PANEL_PX, PANEL_PX, FRAME_RGB);
            if finite == 0 {
                let rgb = match p.style {
                    Style::Histogram => [200, 200, 200],
                    Style::Scatter => MUTED_RGB,
                };
                labels.push(Label {
                    text: "no points".into(),
                    x: (x0 + PANEL_PX / 2) as i32,
                    y: (y0 + PANEL_PX / 2) as i32,
                    size: 18.0,
                    rgb,
                    h_pos: HPos::Center,
                    v_pos: VPos::Center,
                    vertical: false,
                });
            }
            let caption = &captions[r][c];
            if !caption.is_empty() {
                labels.push(Label {
                    text: fit_text(caption, 15.0, PANEL_PX)?,
                    x: (x0 + PANEL_PX / 2) as i32,
                    y: (y0 - layout.panel_title_h / 2) as i32,
                    size: 15.0,
                    rgb: TEXT_RGB,
                    h_pos: HPos::Center,
                    v_pos: VPos::Center,
                    vertical: false,
                });
            }
        }
    }

    if !title.is_empty() {
        labels.push(Label {
            text: fit_text(title, 22.0, layout.width - 2 * MARGIN_PX)?,
            x: (layout.width / 2) as i32,
            y: (MARGIN_PX + TITLE_H / 2) as i32,
            size: 22.0,
            rgb: TEXT_RGB,
            h_pos: HPos::Center,
            v_pos: VPos::Center,
            vertical: false,
        });
    }
    for (c, t) in col_titles.iter().enumerate() {
        let (x0, _) = layout.panel_origin(0, c as u32);
        labels.push(Label {
            text: fit_text(t, 18.0, PANEL_PX)?,
            x: (x0 + PANEL_PX / 2) as i32,
            y: (MARGIN_PX + layout.title_h + COL_TITLE_H / 2) as i32,
            size: 18.0,
            rgb: TEXT_RGB,
            h_pos: HPos::Center,
            v_pos: VPos::Center,
            vertical: false,
        });
    }
    for (r, t) in row_titles.iter().enumerate() {
        let (_, y0) = layout.panel_origin(r as u32, 0);
        labels.push(Label {
            text: fit_text(t, 18.0, layout.row_title_w.saturating_sub(16))?,
            x: (MARGIN_PX + layout.row_title_w - 10) as i32,
            y: (y0 + PANEL_PX / 2) as i32,
            size: 18.0,
            rgb: TEXT_RGB,
            h_pos: HPos::Right,
            v_pos: VPos::Center,
            vertical: false,
        });
    }
    let footer = format!(
        "view  x ∈ [{}, {}]   y ∈ [{}, {}]",
        fmt_num(view.x0),
        fmt_num(view.x1),
        fmt_num(view.y0),
        fmt_num(view.y1)
    );
    labels.push(Label {
        text: fit_text(&footer, 12.0, layout.width - 2 * MARGIN_PX)?,
        x: (layout.width - MARGIN_PX) as i32,
        y: layout.footer_y() as i32,
        size: 12.0,
        rgb: MUTED_RGB,
        h_pos: HPos::Right,
        v_pos: VPos::Center,
        vertical: false,
    });
    canvas.draw_labels(&labels)?;
    Ok(canvas)
}

/// 2-D histogram of the points over `view`, log-scaled, into the panel at (x0, y0).
fn draw_histogram(canvas: &mut Canvas, x0: u32, y0: u32, points: &[f64], view: &View) {
    let bins = HIST_BINS;
    let mut counts = vec![0u32; bins * bins];
    for c in points.chunks_exact(2) {
        if !(c[0].is_finite() && c[1].is_finite()) {
            continue;
        }
        let (fx, fy) = view.pixel(c[0], c[1], bins as f64);
        // Points exactly on the max edge belong to the last bin.
        if !(0.0..=bins as f64).contains(&fx) || !(0.0..=bins as f64).contains(&fy) {
            continue;
        }
        let bx = (fx as usize).min(bins - 1);
        let by = (fy as usize).min(bins - 1);
        counts[by * bins + bx] = counts[by * bins + bx].saturating_add(1);
    }
    let max = counts.iter().copied().max().unwrap_or(0);
    let norm = (1.0 + max as f32).ln();
    // Precompute the colour of each bin.
    let background = ramp(0.0);
    let colours: Vec<[u8; 3]> = counts
        .iter()
        .map(|&n| {
            if n == 0 {
                background
            } else {
                // Log scaling, with a floor so single points stay visible.
                ramp(0.12 + 0.88 * (1.0 + n as f32).ln() / norm)
            }
        })
        .collect();
    let size = PANEL_PX as usize;
    for py in 0..size {
        let by = py * bins / size;
        for px in 0..size {
            let bx = px * bins / size;
            canvas.set(x0 + px as u32, y0 + py as u32, colours[by * bins + bx]);
        }
    }
}

/// Semi-transparent anti-aliased dots into the panel at (x0, y0).
fn draw_scatter(canvas: &mut Canvas, x0: u32, y0: u32, p: &Panel, view: &View) {
    let n = p.points.len() / 2 - count_non_finite(p.points);
    // Bigger, more opaque dots for small sets; small faint ones for big sets.
    let t = (((n.max(1) as f64).log10() - 2.0) / 2.5).clamp(0.0, 1.0) as f32;
    let radius = 2.4 - 1.3 * t; // 2.4 px at n ≤ 100 → 1.1 px at n ≥ ~30k
    let alpha = 0.85 - 0.55 * t; // 0.85 → 0.3
    let size = PANEL_PX as f64;
    let reach = radius.ceil() as i64 + 1;
    for (i, c) in p.points.chunks_exact(2).enumerate() {
        if !(c[0].is_finite() && c[1].is_finite()) {
            continue;
        }
        let (fx, fy) = view.pixel(c[0], c[1], size);
        if !(0.0..=size).contains(&fx) || !(0.0..=size).contains(&fy) {
            continue;
        }
        let rgb = match p.labels {
            Some(l) => palette(l[i]),
            None => palette(0),
        };
        let (cx, cy) = (fx as i64, fy as i64);
        for py in (cy - reach).max(0)..=(cy + reach).min(PANEL_PX as i64 - 1) {
            for px in (cx - reach).max(0)..=(cx + reach).min(PANEL_PX as i64 - 1) {
                let dx = px as f64 + 0.5 - fx;
                let dy = py as f64 + 0.5 - fy;
                let d = (dx * dx + dy * dy).sqrt() as f32;
                let cover = (radius + 0.5 - d).clamp(0.0, 1.0);
                if cover > 0.0 {
                    canvas.blend(x0 as i64 + px, y0 as i64 + py, rgb, alpha * cover);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Line chart.

/// Runs of consecutive usable points (finite, and y > 0 on a log axis).
fn segments(points: &[(f64, f64)], log_y: bool) -> Vec<Vec<(f64, f64)>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    for &(x, y) in points {
        if x.is_finite() && y.is_finite() && (!log_y || y > 0.0) {
            cur.push((x, y));
        } else if !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// `[lo, hi]` (0 < lo <= hi) padded by 10%, then, when it spans a decade or
/// more, widened outwards to values 1, 2 or 5 × 10^k so that a log axis
/// starts and ends on labelled ticks.
fn nice_log_range(lo: f64, hi: f64) -> (f64, f64) {
    let (lo, hi) = if hi > lo * 1.0001 {
        (lo / 1.1, hi * 1.1)
    } else {
        (lo / 2.0, hi * 2.0)
    };
    if hi / lo < 10.0 {
        // Less than a decade: snapping would waste most of the chart.
        return (lo, hi);
    }
    let down = |v: f64| {
        let b = 10f64.powf(v.log10().floor());
        [5.0, 2.0, 1.0]
            .into_iter()
            .map(|m| m * b)
            .find(|&t| t <= v)
            .unwrap_or(b)
    };
    let up = |v: f64| {
        let b = 10f64.powf(v.log10().floor());
        [1.0, 2.0, 5.0, 10.0]
            .into_iter()
            .map(|m| m * b)
            .find(|&t| t >= v)
            .unwrap_or(10.0 * b)
    };
    (down(lo), up(hi))
}

/// Tick positions (log10 units) for a log axis over `[a, b]` (log10 units):
/// labelled ticks at 1, 2, 5 × 10^k (or only decades, or every value 1..9,
/// depending on the span) and unlabelled grid lines at 1..9 × 10^k.
fn log_ticks(a: f64, b: f64) -> (Vec<f64>, Vec<f64>) {
    let span = b - a;
    let mults: &[f64] = if span > 3.0 {
        &[1.0]
    } else if span > 1.0 {
        &[1.0, 2.0, 5.0]
    } else {
        &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]
    };
    let in_range = |v: f64| v >= a - 1e-9 && v <= b + 1e-9;
    let (k0, k1) = (a.floor() as i64, b.ceil() as i64);
    let step = ((k1 - k0) / 8 + 1).max(1);
    let mut bold = Vec::new();
    let mut light = Vec::new();
    for k in k0..=k1 {
        for m in 1..=9 {
            let v = (m as f64).log10() + k as f64;
            if !in_range(v) {
                continue;
            }
            if mults.contains(&(m as f64)) && (m != 1 || (k - k0) % step == 0) {
                bold.push(v);
            } else if span <= 6.0 {
                light.push(v);
            }
        }
    }
    if bold.len() < 2 {
        bold = (0..=4).map(|i| a + span * i as f64 / 4.0).collect();
    }
    (bold, light)
}

/// A linear y axis, optionally with fixed tick positions (used for log10 values).
struct YAxis {
    inner: RangedCoordf64,
    /// (labelled, grid-only) tick positions; plotters' own choice when None.
    ticks: Option<(Vec<f64>, Vec<f64>)>,
}

impl Ranged for YAxis {
    type ValueType = f64;
    type FormatOption = DefaultFormatting;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        self.inner.map(value, limit)
    }

    fn key_points<H: KeyPointHint>(&self, hint: H) -> Vec<f64> {
        match &self.ticks {
            None => self.inner.key_points(hint),
            Some((_, light)) if hint.weight().allow_light_points() => light.clone(),
            Some((bold, _)) => bold.clone(),
        }
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.inner.range()
    }
}

fn render_line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
    log_y: bool,
) -> Result<Canvas> {
    ensure_plotters_font()?;
    let mut segs: Vec<Vec<Vec<(f64, f64)>>> =
        series.iter().map(|(_, p)| segments(p, log_y)).collect();
    let mut xr = (f64::INFINITY, f64::NEG_INFINITY);
    let mut yr = (f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in segs.iter().flatten().flatten() {
        xr = (xr.0.min(x), xr.1.max(x));
        yr = (yr.0.min(y), yr.1.max(y));
    }
    let has_data = xr.0 <= xr.1;
    let (x0, x1) = if has_data {
        pad_extent(xr.0, xr.1)
    } else {
        (0.0, 1.0)
    };
    let (y0, y1) = match (has_data, log_y) {
        (false, false) => (0.0, 1.0),
        (false, true) => (1.0, 10.0),
        (true, false) => {
            let (lo, hi) = pad_extent(yr.0, yr.1);
            let pad = (hi / 2.0 - lo / 2.0) * 0.1;
            (lo - pad, hi + pad)
        }
        (true, true) => nice_log_range(yr.0, yr.1),
    };
    ensure!(
        [x0, x1, y0, y1].iter().all(|v| v.is_finite()) && y0 < y1 && (!log_y || y0 > 0.0),
        "line chart data span too large a range to plot"
    );
    // A log axis is drawn as a linear axis over log10(y) with our own ticks
    // (plotters' log axis labels nothing when the data span less than a decade).
    let (y0, y1) = if log_y {
        for p in segs.iter_mut().flatten().flatten() {
            p.1 = p.1.log10();
        }
        (y0.log10(), y1.log10())
    } else {
        (y0, y1)
    };

    const CAPTION_H: i32 = 44;
    let mut canvas = Canvas::new(CHART_W, CHART_H, WHITE_RGB)?;
    let mut legend: Vec<(String, [u8; 3])> = Vec::new();
    let plot_area: (std::ops::Range<i32>, std::ops::Range<i32>);
    {
        let root =
            BitMapBackend::with_buffer(&mut canvas.buf, (CHART_W, CHART_H)).into_drawing_area();
        let err = |e: &dyn std::fmt::Display| anyhow!("drawing line chart: {e}");
        let top = if title.is_empty() { 16 } else { CAPTION_H };
        let area = root.margin(top, 12, 16, 24);
        let mut builder = ChartBuilder::on(&area);
        builder
            .x_label_area_size(if x_label.is_empty() { 30 } else { 56 })
            .y_label_area_size(if y_label.is_empty() { 62 } else { 86 });

        let y_axis = YAxis {
            inner: RangedCoordf64::from(y0..y1),
            ticks: log_y.then(|| log_ticks(y0, y1)),
        };
        let mut chart = builder
            .build_cartesian_2d(x0..x1, y_axis)
            .map_err(|e| err(&e))?;
        let y_fmt = |v: &f64| {
            if log_y {
                fmt_num(10f64.powf(*v))
            } else {
                fmt_num(*v)
            }
        };
        chart
            .configure_mesh()
            .label_style(text_style(14.0, TEXT_RGB))
            .x_label_formatter(&|v| fmt_num(*v))
            .y_label_formatter(&y_fmt)
            .bold_line_style(RGBColor(225, 225, 225))
            .light_line_style(RGBColor(244, 244, 244))
            .axis_style(RGBColor(120, 120, 120))
            .x_labels(8)
            .y_labels(8)
            .draw()
            .map_err(|e| err(&e))?;
        for (i, ((name, _), runs)) in series.iter().zip(&segs).enumerate() {
            let rgb = palette(i);
            let colour = RGBColor(rgb[0], rgb[1], rgb[2]);
            for run in runs {
                if run.len() == 1 {
                    chart
                        .draw_series(std::iter::once(Circle::new(run[0], 3, colour.filled())))
                        .map_err(|e| err(&e))?;
                } else {
                    chart
                        .draw_series(std::iter::once(PathElement::new(
                            run.clone(),
                            colour.stroke_width(2),
                        )))
                        .map_err(|e| err(&e))?;
                }
            }
            if !runs.is_empty() && !name.is_empty() {
                legend.push((name.clone(), rgb));
            }
        }
        plot_area = chart.plotting_area().get_pixel_range();
        root.present().map_err(|e| err(&e))?;
    }

    // Text and legend with the embedded font.
    let (px, py) = plot_area;
    let (cx, cy) = ((px.start + px.end) / 2, (py.start + py.end) / 2);
    let label = |text: String, x: i32, y: i32, size: f64, h_pos: HPos, vertical: bool| Label {
        text,
        x,
        y,
        size,
        rgb: TEXT_RGB,
        h_pos,
        v_pos: VPos::Center,
        vertical,
    };
    let mut labels = Vec::new();
    if !title.is_empty() {
        let t = fit_text(title, 22.0, CHART_W - 40)?;
        labels.push(label(
            t,
            CHART_W as i32 / 2,
            CAPTION_H / 2 + 4,
            22.0,
            HPos::Center,
            false,
        ));
    }
    if !x_label.is_empty() {
        let t = fit_text(x_label, 16.0, px.len() as u32)?;
        labels.push(label(t, cx, py.end + 42, 16.0, HPos::Center, false));
    }
    if !y_label.is_empty() {
        let t = fit_text(y_label, 16.0, py.len() as u32)?;
        labels.push(label(t, px.start - 70, cy, 16.0, HPos::Center, true));
    }
    if !has_data {
        let mut l = label("no data".into(), cx, cy, 18.0, HPos::Center, false);
        l.rgb = MUTED_RGB;
        labels.push(l);
    }
    if !legend.is_empty() {
        const ROW_H: i32 = 22;
        const SWATCH_W: i32 = 24;
        let max_text = (px.len() as u32 / 2).max(60);
        let names: Vec<String> = legend
            .iter()
            .map(|(n, _)| fit_text(n, 14.0, max_text))
            .collect::<Result<_>>()?;
        let text_w = names
            .iter()
            .map(|n| text_width(n, 14.0))
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .max()
            .unwrap_or(0) as i32;
        let rows = (legend.len() as i32)
            .min((py.len() as i32 - 20) / ROW_H)
            .max(1);
        let (bw, bh) = (SWATCH_W + text_w + 30, rows * ROW_H + 10);
        let (bx, by) = (px.end - 12 - bw, py.start + 12);
        canvas.blend_rect(bx as i64, by as i64, bw as i64, bh as i64, WHITE_RGB, 0.85);
        canvas.frame(bx as u32, by as u32, bw as u32, bh as u32, [200, 200, 200]);
        for (k, (name, (_, rgb))) in names
            .into_iter()
            .zip(&legend)
            .take(rows as usize)
            .enumerate()
        {
            let y = by + 5 + k as i32 * ROW_H + ROW_H / 2;
            canvas.fill_rect((bx + 10) as u32, (y - 1) as u32, SWATCH_W as u32, 3, *rgb);
            labels.push(label(name, bx + 18 + SWATCH_W, y, 14.0, HPos::Left, false));
        }
    }
    canvas.draw_labels(&labels)?;
    Ok(canvas)
}

// ---------------------------------------------------------------------------
// Image grid.

/// Integer upscaling factor so an image is about `IMAGE_TARGET_PX` on screen.
fn image_scale(h: usize, w: usize) -> usize {
    let m = h.max(w).max(1);
    IMAGE_TARGET_PX.div_ceil(m).max(1)
}

fn render_image_grid(images: &[Vec<f32>], h: usize, w: usize, cols: usize) -> Result<Canvas> {
    ensure!(!images.is_empty(), "image_grid: no images");
    ensure!(h > 0 && w > 0, "image_grid: image size {h}×{w} is empty");
    ensure!(cols > 0, "image_grid: cols must be at least 1");
    for (i, img) in images.iter().enumerate() {
        ensure!(
            img.len() == h * w,
            "image_grid: image {i} has {} values, expected {h}×{w} = {}",
            img.len(),
            h * w
        );
    }
    let cols = cols.min(images.len());
    let rows = images.len().div_ceil(cols);
    let s = image_scale(h, w);
    let (cell_w, cell_h) = (w * s, h * s);
    let width = cols
        .checked_mul(cell_w + IMAGE_PAD_PX)
        .and_then(|v| v.checked_add(IMAGE_PAD_PX));
    let height = rows
        .checked_mul(cell_h + IMAGE_PAD_PX)
        .and_then(|v| v.checked_add(IMAGE_PAD_PX));
    let (width, height) = match (width, height) {
        (Some(a), Some(b)) if a <= MAX_SIDE as usize && b <= MAX_SIDE as usize => (a, b),
        _ => bail!(
            "image_grid: {} images of {h}×{w} in {cols} columns is too large a picture",
            images.len()
        ),
    };
    let mut canvas = Canvas::new(width as u32, height as u32, [96, 96, 96])?;
    for (i, img) in images.iter().enumerate() {
        let ox = IMAGE_PAD_PX + (i % cols) * (cell_w + IMAGE_PAD_PX);
        let oy = IMAGE_PAD_PX + (i / cols) * (cell_h + IMAGE_PAD_PX);
        for y in 0..h {
            for x in 0..w {
                let v = img[y * w + x];
                let rgb = if v.is_nan() {
                    [255, 0, 255]
                } else {
                    let g = (v.clamp(0.0, 1.0) * 255.0).round() as u8;
                    [g, g, g]
                };
                canvas.fill_rect(
                    (ox + x * s) as u32,
                    (oy + y * s) as u32,
                    s as u32,
                    s as u32,
                    rgb,
                );
            }
        }
    }
    Ok(canvas)
}

// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use std::f64::consts::TAU;
    use std::time::Instant;

    /// `n` points on four concentric rings (radii 1..4) with a little noise,
    /// from a small deterministic generator; labels are the ring index.
    fn four_rings(n: usize) -> (Vec<f64>, Vec<usize>) {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut uniform = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let mut pts = Vec::with_capacity(2 * n);
        let mut labels = Vec::with_capacity(n);
        for i in 0..n {
            let ring = i % 4;
            let r = (ring + 1) as f64;
            let a = uniform() * TAU;
            // Approximately normal noise (sum of uniforms).
            let noise = ((0..4).map(|_| uniform()).sum::<f64>() - 2.0) * 0.08;
            pts.push((r + noise) * a.cos());
            pts.push((r + noise) * a.sin());
            labels.push(ring);
        }
        (pts, labels)
    }

    fn decode(path: &Path) -> image::RgbImage {
        let meta = fs::metadata(path).expect("picture exists");
        assert!(meta.len() > 0, "{} is empty", path.display());
        image::open(path).expect("PNG decodes").to_rgb8()
    }

    /// Copies a rendered picture to `$DIFFFLOW_PLOT_KEEP/name`, for looking at it.
    fn keep(path: &Path, name: &str) {
        if let Ok(dir) = std::env::var("DIFFFLOW_PLOT_KEEP") {
            fs::copy(path, Path::new(&dir).join(name)).unwrap();
        }
    }

    /// Names of everything in `dir` (to check no temp files remain).
    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn scatter<'a>(title: &str, pts: &'a [f64], labels: Option<&'a [usize]>) -> Panel<'a> {
        Panel {
            title: title.into(),
            points: pts,
            labels,
            style: Style::Scatter,
        }
    }

    fn hist<'a>(title: &str, pts: &'a [f64]) -> Panel<'a> {
        Panel {
            title: title.into(),
            points: pts,
            labels: None,
            style: Style::Histogram,
        }
    }

    #[test]
    fn plot_panels_row_size_and_speed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rings.png");
        let (pts, labels) = four_rings(20_000);
        let (big, _) = four_rings(100_000);
        let t = Instant::now();
        panels_row(
            &path,
            "four rings: 20k points",
            &[
                hist("data (histogram)", &pts),
                scatter("data (scatter, labels)", &pts, Some(&labels)),
                hist("100k points", &big),
            ],
            None,
        )
        .unwrap();
        let elapsed = t.elapsed();
        let img = decode(&path);
        let expected_w = 2 * MARGIN_PX + 3 * PANEL_PX + 2 * GAP_PX;
        let expected_h = 2 * MARGIN_PX + TITLE_H + PANEL_TITLE_H + PANEL_PX + FOOTER_H;
        assert_eq!(img.dimensions(), (expected_w, expected_h));
        assert!(elapsed.as_secs_f64() < 1.0, "took {elapsed:?}");
        assert_eq!(entries(dir.path()), vec!["rings.png".to_string()]);
        keep(&path, "rings.png");
    }

    #[test]
    fn plot_panel_grid_size_with_titles() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("grid.png");
        let (pts, labels) = four_rings(4_000);
        let cells = vec![
            vec![hist("", &pts), scatter("", &pts, Some(&labels))],
            vec![scatter("", &pts, None), hist("", &pts[..2000])],
        ];
        let rows = vec!["epoch 1".to_string(), "epoch 10".to_string()];
        let cols = vec!["histogram".to_string(), "scatter".to_string()];
        panel_grid(
            &path,
            "training progress",
            &rows,
            &cols,
            &cells,
            Some([-5.0, 5.0, -5.0, 5.0]),
        )
        .unwrap();
        let img = decode(&path);
        let layout = grid_layout("training progress", &rows, &cols, 2, 2, false).unwrap();
        assert!(layout.row_title_w > 0 && layout.panel_title_h == 0);
        let expected_w = 2 * MARGIN_PX + layout.row_title_w + 2 * PANEL_PX + GAP_PX;
        let expected_h = 2 * MARGIN_PX + TITLE_H + COL_TITLE_H + 2 * PANEL_PX + GAP_PX + FOOTER_H;
        assert_eq!(img.dimensions(), (expected_w, expected_h));
        assert_eq!(entries(dir.path()), vec!["grid.png".to_string()]);
        keep(&path, "grid.png");
    }

    #[test]
    fn plot_histogram_lights_up_the_right_corner() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("corner.png");
        // All points in the bottom-left tenth of the unit square.
        let pts: Vec<f64> = (0..2000)
            .map(|i| 0.01 + 0.08 * ((i * 37 % 101) as f64 / 101.0))
            .collect();
        panels_row(&path, "", &[hist("", &pts)], Some([0.0, 1.0, 0.0, 1.0])).unwrap();
        let img = decode(&path);
        let layout = grid_layout("", &[], &[], 1, 1, false).unwrap();
        assert_eq!(img.dimensions(), (layout.width, layout.height));
        let (x0, y0) = layout.panel_origin(0, 0);
        let brightness = |x: u32, y: u32| {
            let p = img.get_pixel(x0 + x, y0 + y).0;
            p.iter().map(|&c| c as u32).sum::<u32>()
        };
        let background = ramp(0.0).iter().map(|&c| c as u32).sum::<u32>();
        // Bottom-left region (x small, y near the bottom) is lit somewhere.
        let lit = (5..35)
            .flat_map(|x| (PANEL_PX - 35..PANEL_PX - 5).map(move |y| (x, y)))
            .filter(|&(x, y)| brightness(x, y) > background + 100)
            .count();
        assert!(
            lit > 100,
            "bottom-left corner should be lit, {lit} bright pixels"
        );
        // Top-right region is plain background.
        for x in PANEL_PX - 60..PANEL_PX - 5 {
            for y in 5..60 {
                assert_eq!(
                    brightness(x, y),
                    background,
                    "top-right pixel ({x}, {y}) is lit"
                );
            }
        }
        // Top-left and bottom-right too.
        assert_eq!(brightness(20, 20), background);
        assert_eq!(brightness(PANEL_PX - 20, PANEL_PX - 20), background);
    }

    #[test]
    fn plot_scatter_draws_dots_where_points_are() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dots.png");
        let pts = [0.9, 0.9, 0.9, 0.9, 0.9, 0.9];
        panels_row(
            &path,
            "t",
            &[scatter("", &pts, None)],
            Some([0.0, 1.0, 0.0, 1.0]),
        )
        .unwrap();
        let img = decode(&path);
        let layout = grid_layout("t", &[], &[], 1, 1, false).unwrap();
        let (x0, y0) = layout.panel_origin(0, 0);
        let at = |fx: f64, fy: f64| {
            img.get_pixel(
                x0 + (fx * PANEL_PX as f64) as u32,
                y0 + (fy * PANEL_PX as f64) as u32,
            )
            .0
        };
        // (0.9, 0.9) is near the top right; (0.1, 0.1) near the bottom left stays white.
        assert_ne!(at(0.9, 0.1), [255, 255, 255]);
        assert_eq!(at(0.1, 0.9), [255, 255, 255]);
    }

    #[test]
    fn plot_empty_and_non_finite_points_are_ok() {
        let dir = tempfile::tempdir().unwrap();
        let empty: [f64; 0] = [];
        let bad = [
            f64::NAN,
            1.0,
            f64::INFINITY,
            0.0,
            0.5,
            0.5,
            f64::NEG_INFINITY,
            f64::NAN,
        ];
        let all_bad = [f64::NAN, f64::NAN];
        let path = dir.path().join("odd.png");
        panels_row(
            &path,
            "degenerate input",
            &[
                hist("empty", &empty),
                scatter("some NaN", &bad, None),
                hist("all NaN", &all_bad),
            ],
            None,
        )
        .unwrap();
        keep(&path, "odd.png");
        let img = decode(&path);
        assert_eq!(img.width(), 2 * MARGIN_PX + 3 * PANEL_PX + 2 * GAP_PX);
        // A single point (zero-size range) and zero-size explicit bounds are padded.
        let one = [3.0, -2.0];
        panels_row(
            &path,
            "one point",
            &[hist("", &one), scatter("", &one, None)],
            None,
        )
        .unwrap();
        panels_row(
            &path,
            "flat bounds",
            &[hist("", &one)],
            Some([3.0, 3.0, -2.0, -2.0]),
        )
        .unwrap();
        decode(&path);
        assert_eq!(entries(dir.path()), vec!["odd.png".to_string()]);
    }

    #[test]
    fn plot_bad_input_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.png");
        let odd = [1.0, 2.0, 3.0];
        let pts = [0.0, 0.0, 1.0, 1.0];
        let labels = [0usize];
        let cases: Vec<(&str, Result<()>)> = vec![
            ("no panels", panels_row(&path, "x", &[], None)),
            (
                "empty grid",
                panel_grid(&path, "x", &[], &[], &[vec![]], None),
            ),
            (
                "odd length",
                panels_row(&path, "x", &[hist("", &odd)], None),
            ),
            (
                "labels",
                panels_row(&path, "x", &[scatter("", &pts, Some(&labels))], None),
            ),
            (
                "nan bounds",
                panels_row(
                    &path,
                    "x",
                    &[hist("", &pts)],
                    Some([f64::NAN, 1.0, 0.0, 1.0]),
                ),
            ),
            (
                "reversed bounds",
                panels_row(&path, "x", &[hist("", &pts)], Some([1.0, 0.0, 0.0, 1.0])),
            ),
            (
                "too many row titles",
                panel_grid(
                    &path,
                    "x",
                    &["a".into(), "b".into()],
                    &[],
                    &[vec![hist("", &pts)]],
                    None,
                ),
            ),
            ("no images", image_grid(&path, &[], 2, 2, 1)),
            ("image size", image_grid(&path, &[vec![0.0; 3]], 2, 2, 1)),
            ("zero cols", image_grid(&path, &[vec![0.0; 4]], 2, 2, 0)),
        ];
        for (what, r) in cases {
            let e = r.expect_err(what);
            assert!(!e.to_string().is_empty(), "{what}");
        }
        assert!(entries(dir.path()).is_empty(), "{:?}", entries(dir.path()));
    }

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
        assert!(image_grid(&path, &[vec![0.5; 4]], 2, 2, 1).is_err());
        assert_eq!(entries(dir.path()), vec!["taken.png".to_string()]);
        // A missing directory is an error, not a panic.
        let missing = dir.path().join("no/such/dir/x.png");
        assert!(panels_row(&missing, "x", &[hist("", &pts)], None).is_err());
    }

    #[test]
    fn plot_line_chart_linear_and_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("loss.png");
        let train: Vec<(f64, f64)> = (0..500)
            .map(|i| (i as f64, 2.0 * (-(i as f64) / 80.0).exp() + 0.01))
            .collect();
        let mut val: Vec<(f64, f64)> = (0..50)
            .map(|i| (10.0 * i as f64, 2.2 * (-(i as f64) / 7.0).exp() + 0.03))
            .collect();
        val[20].1 = f64::NAN; // a gap
        let series = vec![
            ("train".to_string(), train),
            ("validation".to_string(), val),
            ("empty".to_string(), vec![]),
        ];
        line_chart(&path, "loss", "step", "loss", &series, true).unwrap();
        let img = decode(&path);
        assert_eq!(img.dimensions(), (CHART_W, CHART_H));
        keep(&path, "loss.png");
        line_chart(&path, "loss", "step", "loss", &series, false).unwrap();
        assert_eq!(decode(&path).dimensions(), (CHART_W, CHART_H));
        keep(&path, "loss_linear.png");
        // Less than a decade on a log axis still gets labelled ticks.
        let narrow: Vec<(f64, f64)> = (0..100)
            .map(|i| (i as f64, 0.5 - 0.002 * i as f64))
            .collect();
        line_chart(
            &path,
            "narrow",
            "epoch",
            "nll",
            &[("nll".into(), narrow)],
            true,
        )
        .unwrap();
        keep(&path, "loss_narrow.png");
        // No data, a constant series, non-positive values on a log axis: all fine.
        line_chart(&path, "nothing", "x", "y", &[], true).unwrap();
        line_chart(
            &path,
            "flat",
            "x",
            "y",
            &[("c".into(), vec![(1.0, 0.0), (1.0, 0.0)])],
            false,
        )
        .unwrap();
        line_chart(
            &path,
            "neg",
            "x",
            "y",
            &[("c".into(), vec![(0.0, -1.0), (1.0, 0.0)])],
            true,
        )
        .unwrap();
        line_chart(
            &path,
            "one",
            "x",
            "y",
            &[("c".into(), vec![(2.0, 3.0)])],
            true,
        )
        .unwrap();
        assert_eq!(decode(&path).dimensions(), (CHART_W, CHART_H));
        assert_eq!(entries(dir.path()), vec!["loss.png".to_string()]);
    }

    #[test]
    fn plot_image_grid_size_and_pixels() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("images.png");
        let (h, w) = (28, 28);
        let mut images: Vec<Vec<f32>> = (0..10)
            .map(|k| {
                (0..h * w)
                    .map(|i| ((i % w) as f32 / (w - 1) as f32) * (k as f32 / 9.0))
                    .collect()
            })
            .collect();
        images[3][0] = f32::NAN;
        image_grid(&path, &images, h, w, 4).unwrap();
        keep(&path, "images.png");
        let img = decode(&path);
        let s = image_scale(h, w) as u32;
        assert_eq!(s, 3);
        let pad = IMAGE_PAD_PX as u32;
        assert_eq!(
            img.dimensions(),
            (
                4 * (w as u32 * s + pad) + pad,
                3 * (h as u32 * s + pad) + pad
            )
        );
        // Image 9 (last, k = 9, row 2, column 1): left column black, right column white.
        let (ox, oy) = (pad + (w as u32 * s + pad), pad + 2 * (h as u32 * s + pad));
        assert_eq!(img.get_pixel(ox, oy).0, [0, 0, 0]);
        assert_eq!(img.get_pixel(ox + w as u32 * s - 1, oy).0, [255, 255, 255]);
        // NaN pixel of image 3 is magenta.
        let ox3 = pad + 3 * (w as u32 * s + pad);
        assert_eq!(img.get_pixel(ox3, pad).0, [255, 0, 255]);
        // Fewer images than columns: the grid shrinks to the images.
        image_grid(&path, &images[..2], h, w, 8).unwrap();
        assert_eq!(decode(&path).width(), 2 * (w as u32 * s + pad) + pad);
        assert_eq!(entries(dir.path()), vec!["images.png".to_string()]);
    }

    /// FNV-1a of a written picture's size and decoded RGB pixels: a change of any pixel
    /// changes it. The expected values below were computed before `plot.rs` was split into
    /// a folder (commit "plot: pixel hashes of every kind of picture").
    fn pixel_hash(path: &Path) -> u64 {
        use diffflow::checkpoint::{fnv1a64, FNV_OFFSET};
        let img = decode(path);
        let (w, h) = img.dimensions();
        let state = fnv1a64(FNV_OFFSET, &w.to_le_bytes());
        let state = fnv1a64(state, &h.to_le_bytes());
        fnv1a64(state, img.as_raw())
    }

    #[test]
    fn plot_panel_pictures_keep_their_pixels() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.png");
        let (mut pts, labels) = four_rings(3_000);
        pts[10] = f64::NAN;
        let cells = vec![
            vec![hist("histogram", &pts), scatter("", &pts, Some(&labels))],
            vec![scatter("no labels", &pts[..1000], None)],
        ];
        let rows = vec!["first".to_string(), "second row".to_string()];
        let cols = vec!["a".to_string()];
        panel_grid(&path, "golden grid", &rows, &cols, &cells, None).unwrap();
        let grid = pixel_hash(&path);
        let empty: [f64; 0] = [];
        panels_row(
            &path,
            "golden row",
            &[hist("", &pts), scatter("empty", &empty, None)],
            Some([-3.0, 4.0, -2.0, 2.5]),
        )
        .unwrap();
        let row = pixel_hash(&path);
        assert_eq!(
            (grid, row),
            (0x27d0_525e_e7dc_d4aa, 0xe1a4_1a2b_04c6_c03e),
            "panel pictures changed: {grid:#018x}, {row:#018x}"
        );
    }

    #[test]
    fn plot_line_charts_keep_their_pixels() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.png");
        let a: Vec<(f64, f64)> = (0..300)
            .map(|i| (i as f64, 3.0 * (-(i as f64) / 50.0).exp() + 0.02))
            .collect();
        let mut b: Vec<(f64, f64)> = (0..30)
            .map(|i| (10.0 * i as f64, 1.5 / (1.0 + i as f64)))
            .collect();
        b[7].1 = f64::NAN;
        let series = vec![("train".to_string(), a), ("held-out".to_string(), b)];
        line_chart(&path, "golden log", "step", "nll", &series, true).unwrap();
        let log = pixel_hash(&path);
        line_chart(&path, "golden linear", "step", "", &series, false).unwrap();
        let linear = pixel_hash(&path);
        assert_eq!(
            (log, linear),
            (0x224c_0941_0eeb_ed53, 0xef51_7cc4_2268_63ab),
            "line charts changed: {log:#018x}, {linear:#018x}"
        );
    }

    #[test]
    fn plot_image_grid_keeps_its_pixels() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("i.png");
        let (h, w) = (7, 5);
        let mut images: Vec<Vec<f32>> = (0..7)
            .map(|k| {
                (0..h * w)
                    .map(|i| (i as f32 * 0.037 + k as f32 * 0.11) % 1.3 - 0.1)
                    .collect()
            })
            .collect();
        images[2][4] = f32::NAN;
        image_grid(&path, &images, h, w, 3).unwrap();
        let hash = pixel_hash(&path);
        assert_eq!(
            hash, 0x470d_60b6_6331_6372,
            "image grid changed: {hash:#018x}"
        );
    }

    #[test]
    fn plot_helpers() {
        assert_eq!(ramp(0.0), [0, 0, 4]);
        assert_eq!(ramp(1.0), [252, 253, 191]);
        assert_eq!(ramp(f32::NAN), ramp(0.0));
        assert_eq!(fmt_num(0.0), "0");
        assert_eq!(fmt_num(1.5), "1.5");
        assert_eq!(fmt_num(-4.2), "-4.2");
        assert_eq!(fmt_num(1e-5), "1e-5");
        assert_eq!(fmt_num(250_000.0), "2.5e5");
        let (lo, hi) = pad_extent(2.0, 2.0);
        assert!((lo - 1.8).abs() < 1e-12 && (hi - 2.2).abs() < 1e-12);
        assert_eq!(pad_extent(0.0, 0.0), (-1.0, 1.0));
        let long = "a very long title that will never fit in a narrow space at all";
        let t = fit_text(long, 15.0, 100).unwrap();
        assert!(
            t.ends_with('…') && text_width(&t, 15.0).unwrap() <= 100,
            "{t}"
        );
    }
}
