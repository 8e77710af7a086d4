//! Pictures of image rows: a grid of samples and a forward-trajectory strip.
//!
//! One image is `C·H·W` values, channel-major (`[C, H, W]`), in data units; a value's
//! place in the format's range picks one of 256 intensities. Each image is upscaled by an
//! integer factor to about 80 px, with a 2-px grey border between images.

use anyhow::{anyhow, ensure, Result};
use plotters::style::text_anchor::{HPos, VPos};

use super::canvas::{
    fit_text, fmt_num, text_width, Canvas, Label, COL_TITLE_H, MARGIN_PX, MAX_SIDE, TEXT_RGB,
    TITLE_H, WHITE_RGB,
};
use super::ImageFormat;

/// Target on-screen size (pixels) of one image.
const IMAGE_TARGET_PX: usize = 80;
/// Border between images.
const IMAGE_PAD_PX: usize = 2;
/// Colour of the borders (and of the empty cells at the end of a grid).
const BORDER_RGB: [u8; 3] = [96, 96, 96];
/// Colour of a pixel with a NaN value in any channel.
const NAN_RGB: [u8; 3] = [255, 0, 255];

/// Integer upscaling factor so an image is about `IMAGE_TARGET_PX` on screen.
fn image_scale(h: usize, w: usize) -> usize {
    let m = h.max(w).max(1);
    IMAGE_TARGET_PX.div_ceil(m).max(1)
}

impl ImageFormat {
    /// Values per image (`C·H·W`), once the format is checked; `what` names the picture.
    fn values_per_image(&self, what: &str) -> Result<usize> {
        let (c, h, w) = (self.channels, self.height, self.width);
        ensure!(
            c == 1 || c == 3,
            "{what}: channels must be 1 (grey) or 3 (RGB), got {c}"
        );
        ensure!(h > 0 && w > 0, "{what}: image size {h}×{w} is empty");
        let [lo, hi] = self.range;
        ensure!(
            lo.is_finite() && hi.is_finite() && lo < hi,
            "{what}: value range [{lo}, {hi}) must be finite and non-empty"
        );
        c.checked_mul(h)
            .and_then(|n| n.checked_mul(w))
            .ok_or_else(|| anyhow!("{what}: images of {c}×{h}×{w} values are too large"))
    }

    /// Intensity of value `v`: the range split into 256 equal bins, clamped at both ends
    /// (with range [0, 256), pixel value k + u, 0 <= u < 1, is intensity k).
    fn level(&self, v: f64) -> u8 {
        let [lo, hi] = self.range;
        ((v - lo) / (hi - lo) * 256.0).floor().clamp(0.0, 255.0) as u8
    }

    /// Colour of pixel `i` (= y·W + x) of one image.
    fn rgb(&self, image: &[f64], i: usize) -> [u8; 3] {
        let plane = self.height * self.width;
        if self.channels == 1 {
            let v = image[i];
            if v.is_nan() {
                return NAN_RGB;
            }
            return [self.level(v); 3];
        }
        let v = [image[i], image[plane + i], image[2 * plane + i]];
        if v.iter().any(|x| x.is_nan()) {
            return NAN_RGB;
        }
        v.map(|x| self.level(x))
    }
}

/// Shapes: images [B, C·H·W] row-major, drawn in `cols` columns under `title`.
pub(super) fn render_image_grid(
    title: &str,
    images: &[f64],
    format: &ImageFormat,
    cols: usize,
) -> Result<Canvas> {
    const WHAT: &str = "image_grid";
    let n = format.values_per_image(WHAT)?;
    ensure!(!images.is_empty(), "{WHAT}: no images");
    ensure!(
        images.len() % n == 0,
        "{WHAT}: {} values are not whole images of {}×{}×{} = {n} values",
        images.len(),
        format.channels,
        format.height,
        format.width
    );
    ensure!(cols > 0, "{WHAT}: cols must be at least 1");
    let cells: Vec<&[f64]> = images.chunks_exact(n).collect();
    let cols = cols.min(cells.len());
    render(WHAT, title, &[], &cells, format, cols)
}

/// Shapes: states[j] [R, C·H·W], the R images at time `times[j]`; row r of the picture
/// shows image r of every state, column j is labelled with `times[j]`.
pub(super) fn render_trajectory_strip<S: AsRef<[f64]>>(
    title: &str,
    states: &[S],
    times: &[f64],
    format: &ImageFormat,
) -> Result<Canvas> {
    const WHAT: &str = "trajectory_strip";
    let n = format.values_per_image(WHAT)?;
    ensure!(!states.is_empty(), "{WHAT}: no states");
    ensure!(
        times.len() == states.len(),
        "{WHAT}: {} times for {} states",
        times.len(),
        states.len()
    );
    let len = states[0].as_ref().len();
    ensure!(
        len > 0 && len % n == 0,
        "{WHAT}: state 0 has {len} values, not a whole number (at least one) of images of \
         {}×{}×{} = {n} values",
        format.channels,
        format.height,
        format.width
    );
    for (j, s) in states.iter().enumerate() {
        let got = s.as_ref().len();
        ensure!(
            got == len,
            "{WHAT}: state {j} has {got} values, state 0 has {len}"
        );
    }
    let rows = len / n;
    let cells: Vec<&[f64]> = (0..rows)
        .flat_map(|r| states.iter().map(move |s| &s.as_ref()[r * n..(r + 1) * n]))
        .collect();
    let labels: Vec<String> = times
        .iter()
        .map(|&t| format!("t = {}", fmt_num(t)))
        .collect();
    render(WHAT, title, &labels, &cells, format, states.len())
}

/// Draws `cells` (one image each, row-major in `cols` columns, `1 <= cols <= cells.len()`)
/// under a title band and a band of column labels (each left out when empty). A title
/// wider than the grid widens the picture, the grid centred below it.
fn render(
    what: &str,
    title: &str,
    col_labels: &[String],
    cells: &[&[f64]],
    format: &ImageFormat,
    cols: usize,
) -> Result<Canvas> {
    let (h, w) = (format.height, format.width);
    let rows = cells.len().div_ceil(cols);
    let s = image_scale(h, w);
    let too_large = || {
        anyhow!(
            "{what}: {} images of {}×{h}×{w} in {cols} columns is too large a picture",
            cells.len(),
            format.channels
        )
    };
    let side = |k: usize, n: usize| {
        n.checked_mul(s)
            .and_then(|c| c.checked_add(IMAGE_PAD_PX))
            .and_then(|c| c.checked_mul(k))
            .and_then(|v| v.checked_add(IMAGE_PAD_PX))
            .filter(|&v| v <= MAX_SIDE as usize)
    };
    let (grid_w, grid_h) = match (side(cols, w), side(rows, h)) {
        (Some(a), Some(b)) => (a as u32, b as u32),
        _ => return Err(too_large()),
    };
    let (cell_w, cell_h) = ((w * s) as u32, (h * s) as u32);
    let pad = IMAGE_PAD_PX as u32;
    let title_h = if title.is_empty() { 0 } else { TITLE_H };
    let label_h = if col_labels.iter().any(|l| !l.is_empty()) {
        COL_TITLE_H
    } else {
        0
    };
    let title_w = if title.is_empty() {
        0
    } else {
        (text_width(title, 22.0)? + 2 * MARGIN_PX).min(MAX_SIDE)
    };
    let width = grid_w.max(title_w);
    let height = title_h + label_h + grid_h;
    if height > MAX_SIDE {
        return Err(too_large());
    }
    let mut canvas = Canvas::new(width, height, WHITE_RGB)?;
    let (gx, gy) = ((width - grid_w) / 2, title_h + label_h);
    canvas.fill_rect(gx, gy, grid_w, grid_h, BORDER_RGB);
    for (i, image) in cells.iter().enumerate() {
        let ox = gx + pad + (i % cols) as u32 * (cell_w + pad);
        let oy = gy + pad + (i / cols) as u32 * (cell_h + pad);
        for y in 0..h {
            for x in 0..w {
                let rgb = format.rgb(image, y * w + x);
                let (px, py) = (ox + (x * s) as u32, oy + (y * s) as u32);
                canvas.fill_rect(px, py, s as u32, s as u32, rgb);
            }
        }
    }
    let mut labels = Vec::new();
    if !title.is_empty() {
        labels.push(Label {
            text: fit_text(title, 22.0, width.saturating_sub(2 * MARGIN_PX))?,
            x: (width / 2) as i32,
            y: (TITLE_H / 2) as i32,
            size: 22.0,
            rgb: TEXT_RGB,
            h_pos: HPos::Center,
            v_pos: VPos::Center,
            vertical: false,
        });
    }
    for (c, l) in col_labels.iter().enumerate().filter(|(_, l)| !l.is_empty()) {
        labels.push(Label {
            text: fit_text(l, 15.0, cell_w + pad)?,
            x: (gx + pad + c as u32 * (cell_w + pad) + cell_w / 2) as i32,
            y: (title_h + COL_TITLE_H / 2) as i32,
            size: 15.0,
            rgb: TEXT_RGB,
            h_pos: HPos::Center,
            v_pos: VPos::Center,
            vertical: false,
        });
    }
    canvas.draw_labels(&labels)?;
    Ok(canvas)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plot::test_util::{decode, entries, grey, image_format, keep, pixel_hash};
    use crate::plot::{image_grid, trajectory_strip};

    /// Top-left pixel of image `i` in a grid of `cols` columns of `cell`-px images below
    /// `top` px of bands, the grid `left` px from the left edge.
    fn cell_origin(i: u32, cols: u32, cell: (u32, u32), left: u32, top: u32) -> (u32, u32) {
        let pad = IMAGE_PAD_PX as u32;
        (
            left + pad + (i % cols) * (cell.0 + pad),
            top + pad + (i / cols) * (cell.1 + pad),
        )
    }

    /// Whether the band `y0..y1` over `x0..x1` holds dark (text) pixels.
    fn has_text(img: &image::RgbImage, x0: u32, x1: u32, y0: u32, y1: u32) -> bool {
        (y0..y1).any(|y| (x0..x1).any(|x| img.get_pixel(x, y).0.iter().all(|&c| c < 100)))
    }

    #[test]
    fn plot_image_grid_size_and_pixels() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("images.png");
        let (h, w) = (28, 28);
        let mut images: Vec<f64> = (0..10)
            .flat_map(|k| {
                (0..h * w).map(move |i| ((i % w) as f64 / (w - 1) as f64) * (k as f64 / 9.0))
            })
            .collect();
        images[3 * h * w] = f64::NAN;
        image_grid(&path, "", &images, &grey(h, w), 4).unwrap();
        keep(&path, "images.png");
        let img = decode(&path);
        let s = image_scale(h, w) as u32;
        assert_eq!(s, 3);
        let pad = IMAGE_PAD_PX as u32;
        let cell = (w as u32 * s, h as u32 * s);
        assert_eq!(
            img.dimensions(),
            (4 * (cell.0 + pad) + pad, 3 * (cell.1 + pad) + pad)
        );
        // Image 9 (last, k = 9, row 2, column 1): left column black, right column white.
        let (ox, oy) = cell_origin(9, 4, cell, 0, 0);
        assert_eq!(img.get_pixel(ox, oy).0, [0, 0, 0]);
        assert_eq!(
            img.get_pixel(ox + cell.0 - 1, oy + cell.1 - 1).0,
            [255, 255, 255]
        );
        // Column x = 14 of image 9 has value 14/27: intensity floor(256 · 14/27) = 132.
        assert_eq!(img.get_pixel(ox + 14 * s + 1, oy + 5).0, [132; 3]);
        // Borders, and the empty cells after the last image, are grey.
        assert_eq!(img.get_pixel(ox - 1, oy).0, BORDER_RGB);
        let (ex, ey) = cell_origin(10, 4, cell, 0, 0);
        assert_eq!(img.get_pixel(ex + 10, ey + 10).0, BORDER_RGB);
        // NaN pixel of image 3 is magenta (all s × s of it), its neighbour is not.
        let (ox3, oy3) = cell_origin(3, 4, cell, 0, 0);
        assert_eq!(img.get_pixel(ox3, oy3).0, NAN_RGB);
        assert_eq!(img.get_pixel(ox3 + s - 1, oy3 + s - 1).0, NAN_RGB);
        assert_ne!(img.get_pixel(ox3 + s, oy3).0, NAN_RGB);
        // Fewer images than columns: the grid shrinks to the images.
        image_grid(&path, "", &images[..2 * h * w], &grey(h, w), 8).unwrap();
        assert_eq!(decode(&path).width(), 2 * (cell.0 + pad) + pad);
        assert_eq!(entries(dir.path()), vec!["images.png".to_string()]);
    }

    /// A 10 × 10 grid of samples in pixel units [0, 256), with a title: one intensity per
    /// image, dequantised values land in their bin, out-of-range values are clamped.
    #[test]
    fn plot_image_grid_of_samples_in_pixel_units() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("samples.png");
        let (h, w) = (4, 4);
        let format = image_format(1, h, w, [0.0, 256.0]);
        // Image k: all pixels k · 2.5 + 0.7 (intensity floor of it), except in image 0.
        let mut images: Vec<f64> = (0..100)
            .flat_map(|k| std::iter::repeat_n(k as f64 * 2.5 + 0.7, h * w))
            .collect();
        let specials = [
            -3.0,
            1e9,
            f64::INFINITY,
            f64::NEG_INFINITY,
            255.999,
            256.0,
            0.0,
        ];
        images[..specials.len()].copy_from_slice(&specials);
        image_grid(&path, "100 samples", &images, &format, 10).unwrap();
        keep(&path, "samples.png");
        let img = decode(&path);
        let s = image_scale(h, w) as u32;
        assert_eq!(s, 20);
        let pad = IMAGE_PAD_PX as u32;
        let cell = (w as u32 * s, h as u32 * s);
        let side = 10 * (cell.0 + pad) + pad;
        assert_eq!(img.dimensions(), (side, TITLE_H + side));
        for k in 1..100u32 {
            let (ox, oy) = cell_origin(k, 10, cell, 0, TITLE_H);
            let want = (k as f64 * 2.5 + 0.7).floor() as u8;
            assert_eq!(img.get_pixel(ox + 30, oy + 50).0, [want; 3], "image {k}");
        }
        let (ox, oy) = cell_origin(0, 10, cell, 0, TITLE_H);
        let got: Vec<u8> = (0..specials.len() as u32)
            .map(|i| img.get_pixel(ox + (i % 4) * s + 3, oy + (i / 4) * s + 3).0[0])
            .collect();
        assert_eq!(got, [0, 255, 255, 0, 255, 255, 0]);
        // The title band is white with dark text in it.
        assert_eq!(img.get_pixel(1, 1).0, WHITE_RGB);
        assert!(has_text(&img, 0, side, 0, TITLE_H));
    }

    #[test]
    fn plot_image_grid_rgb_channels_are_planes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rgb.png");
        let (h, w) = (2, 3);
        let format = image_format(3, h, w, [-1.0, 1.0]);
        // Planes R, G, B; pixel i of plane c is -1 + (c · 6 + i) / 9 (intensity 256 · that / 2).
        let mut image: Vec<f64> = (0..18).map(|j| -1.0 + j as f64 / 9.0).collect();
        image[6 + 4] = f64::NAN; // green of pixel 4
        image_grid(&path, "", &image, &format, 1).unwrap();
        let img = decode(&path);
        let s = image_scale(h, w) as u32;
        let level = |j: usize| ((j as f64 / 9.0) / 2.0 * 256.0).floor() as u8;
        for i in 0..h * w {
            let (x, y) = ((i % w) as u32, (i / w) as u32);
            let want = if i == 4 {
                NAN_RGB
            } else {
                [level(i), level(6 + i), level(12 + i)]
            };
            let pad = IMAGE_PAD_PX as u32;
            assert_eq!(
                img.get_pixel(pad + x * s + 2, pad + y * s + 2).0,
                want,
                "pixel {i}"
            );
        }
    }

    /// Rows are data images, columns the states at the chosen times, labelled above.
    #[test]
    fn plot_trajectory_strip_layout_and_pixels() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("strip.png");
        let (h, w) = (5, 5);
        let format = image_format(1, h, w, [0.0, 256.0]);
        // State j, image r: every pixel 10 j + r + 0.5 (intensity 10 j + r).
        let times = [0.0, 0.001, 0.02, 0.05];
        let states: Vec<Vec<f64>> = (0..4)
            .map(|j| {
                (0..3)
                    .flat_map(|r| std::iter::repeat_n(10.0 * j as f64 + r as f64 + 0.5, h * w))
                    .collect()
            })
            .collect();
        trajectory_strip(&path, "forward trajectories", &states, &times, &format).unwrap();
        keep(&path, "strip.png");
        let img = decode(&path);
        let s = image_scale(h, w) as u32;
        let pad = IMAGE_PAD_PX as u32;
        let cell = (w as u32 * s, h as u32 * s);
        let grid_w = 4 * (cell.0 + pad) + pad;
        assert_eq!(
            img.dimensions(),
            (grid_w, TITLE_H + COL_TITLE_H + 3 * (cell.1 + pad) + pad)
        );
        for r in 0..3u32 {
            for j in 0..4u32 {
                let (ox, oy) = cell_origin(r * 4 + j, 4, cell, 0, TITLE_H + COL_TITLE_H);
                let want = (10 * j + r) as u8;
                assert_eq!(
                    img.get_pixel(ox + 40, oy + 40).0,
                    [want; 3],
                    "row {r}, column {j}"
                );
            }
        }
        // A label over every column, inside its own column.
        for j in 0..4u32 {
            let (ox, _) = cell_origin(j, 4, cell, 0, 0);
            assert!(
                has_text(&img, ox, ox + cell.0, TITLE_H, TITLE_H + COL_TITLE_H),
                "no label over column {j}"
            );
        }
        // A title wider than the grid widens the picture; the grid is centred under it.
        let one: Vec<&[f64]> = vec![&states[0][..h * w]];
        let long = "a long title for a single column of one image";
        trajectory_strip(&path, long, &one, &[0.0], &format).unwrap();
        let img = decode(&path);
        let grid_w = cell.0 + 2 * pad;
        assert!(img.width() > grid_w + 100, "{}", img.width());
        let left = (img.width() - grid_w) / 2;
        let (ox, oy) = cell_origin(0, 1, cell, left, TITLE_H + COL_TITLE_H);
        assert_eq!(img.get_pixel(ox, oy).0, [0; 3]);
        assert_eq!(img.get_pixel(ox - 1, oy).0, BORDER_RGB);
        assert_eq!(img.get_pixel(left - 1, oy).0, WHITE_RGB);
    }

    /// The grid's hash before the pixel mapping became 256 equal bins (floor) instead of
    /// round(255 t) was 0x470d_60b6_6331_6372; the new renderer gives it back with the old
    /// mapping, so that mapping is the only change. The strip's hash is from its first version.
    #[test]
    fn plot_image_pictures_keep_their_pixels() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("i.png");
        let (h, w) = (7, 5);
        let mut images: Vec<f64> = (0..7)
            .flat_map(|k| {
                (0..h * w).map(move |i| ((i as f32 * 0.037 + k as f32 * 0.11) % 1.3 - 0.1) as f64)
            })
            .collect();
        images[2 * h * w + 4] = f64::NAN;
        image_grid(&path, "", &images, &grey(h, w), 3).unwrap();
        let grid = pixel_hash(&path);
        let rgb = image_format(3, 5, 7, [-0.1, 1.2]);
        let states = [&images[..210], &images[35..245]];
        trajectory_strip(&path, "golden strip", &states, &[0.0, 0.05], &rgb).unwrap();
        let strip = pixel_hash(&path);
        assert_eq!(
            (grid, strip),
            (0xd831_77fa_9ac4_4a52, 0x223d_ef14_673f_2fc5),
            "image pictures changed: {grid:#018x}, {strip:#018x}"
        );
    }

    #[test]
    fn plot_image_grid_bad_input_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.png");
        let g = grey(2, 2);
        let state = [0.5; 8];
        let grid: Vec<(&str, Result<()>)> = vec![
            ("no images", image_grid(&path, "", &[], &g, 1)),
            ("not whole images", image_grid(&path, "", &[0.0; 7], &g, 1)),
            ("zero cols", image_grid(&path, "", &[0.0; 4], &g, 0)),
            (
                "channels",
                image_grid(&path, "", &[0.0; 8], &image_format(2, 2, 2, [0.0, 1.0]), 1),
            ),
            (
                "empty size",
                image_grid(&path, "", &[0.0; 4], &image_format(1, 0, 4, [0.0, 1.0]), 1),
            ),
            (
                "reversed range",
                image_grid(&path, "", &[0.0; 4], &image_format(1, 2, 2, [1.0, 0.0]), 1),
            ),
            (
                "NaN range",
                image_grid(
                    &path,
                    "",
                    &[0.0; 4],
                    &image_format(1, 2, 2, [0.0, f64::NAN]),
                    1,
                ),
            ),
            (
                "size overflow",
                image_grid(
                    &path,
                    "",
                    &[0.0; 4],
                    &image_format(3, usize::MAX / 2, 2, [0.0, 1.0]),
                    1,
                ),
            ),
            (
                "too tall",
                image_grid(
                    &path,
                    "",
                    &vec![0.0; 20_000],
                    &image_format(1, 20_000, 1, [0.0, 1.0]),
                    1,
                ),
            ),
            (
                "too wide",
                image_grid(&path, "", &vec![0.0; 40_000], &g, 10_000),
            ),
        ];
        let strip: Vec<(&str, Result<()>)> = vec![
            (
                "no states",
                trajectory_strip::<&[f64]>(&path, "", &[], &[], &g),
            ),
            (
                "times",
                trajectory_strip(&path, "", &[&state[..]], &[0.0, 1.0], &g),
            ),
            (
                "state lengths",
                trajectory_strip(&path, "", &[&state[..], &state[..4]], &[0.0, 1.0], &g),
            ),
            (
                "empty state",
                trajectory_strip(&path, "", &[&state[..0]], &[0.0], &g),
            ),
            (
                "partial image",
                trajectory_strip(&path, "", &[&state[..6]], &[0.0], &g),
            ),
            (
                "channels",
                trajectory_strip(
                    &path,
                    "",
                    &[&state[..]],
                    &[0.0],
                    &image_format(3, 2, 2, [0.0, 1.0]),
                ),
            ),
        ];
        for (prefix, cases) in [("image_grid: ", grid), ("trajectory_strip: ", strip)] {
            for (what, r) in cases {
                let e = r.expect_err(what).to_string();
                assert!(e.starts_with(prefix) && !e.contains('\n'), "{what}: {e}");
            }
        }
        assert!(entries(dir.path()).is_empty(), "{:?}", entries(dir.path()));
    }
}
