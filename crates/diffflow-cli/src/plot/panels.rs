//! Panels of 2-D points (2-D histograms and scatter plots) and their grid layout.

use anyhow::{ensure, Result};
use plotters::style::text_anchor::{HPos, VPos};

use super::canvas::{
    fit_text, fmt_num, palette, ramp, text_width, Canvas, Label, COL_TITLE_H, FRAME_RGB, MARGIN_PX,
    MAX_SIDE, MUTED_RGB, TEXT_RGB, TITLE_H, WHITE_RGB,
};
use super::{Panel, Style};

// Layout constants.

/// Side of one square panel, in pixels.
pub(super) const PANEL_PX: u32 = 400;
/// Histogram bins per side (each bin covers `PANEL_PX / HIST_BINS` pixels).
const HIST_BINS: usize = 200;
/// Gap between panels.
pub(super) const GAP_PX: u32 = 10;
/// Height of the per-panel title strip (when any panel has a caption).
pub(super) const PANEL_TITLE_H: u32 = 24;
/// Height of the footer line with the view box.
pub(super) const FOOTER_H: u32 = 20;
/// Widest row-title band.
const MAX_ROW_TITLE_W: u32 = 240;

/// View box `[xmin, xmax, ymin, ymax]` with positive extents.
#[derive(Debug, Clone, Copy)]
pub(super) struct View {
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
pub(super) fn pad_extent(lo: f64, hi: f64) -> (f64, f64) {
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
pub(super) struct GridLayout {
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

pub(super) fn grid_layout(
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

pub(super) fn render_grid(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plot::test_util::{decode, entries, four_rings, hist, keep, pixel_hash, scatter};
    use crate::plot::{panel_grid, panels_row};

    #[test]
    fn plot_panels_row_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rings.png");
        let (pts, labels) = four_rings(20_000);
        let (big, _) = four_rings(100_000);
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
        let img = decode(&path);
        let expected_w = 2 * MARGIN_PX + 3 * PANEL_PX + 2 * GAP_PX;
        let expected_h = 2 * MARGIN_PX + TITLE_H + PANEL_TITLE_H + PANEL_PX + FOOTER_H;
        assert_eq!(img.dimensions(), (expected_w, expected_h));
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
        ];
        for (what, r) in cases {
            let e = r.expect_err(what);
            assert!(!e.to_string().is_empty(), "{what}");
        }
        assert!(entries(dir.path()).is_empty(), "{:?}", entries(dir.path()));
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
    fn plot_pad_extent() {
        let (lo, hi) = pad_extent(2.0, 2.0);
        assert!((lo - 1.8).abs() < 1e-12 && (hi - 2.2).abs() < 1e-12);
        assert_eq!(pad_extent(0.0, 0.0), (-1.0, 1.0));
    }
}
