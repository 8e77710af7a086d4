//! 2-D densities from the DiffFlow images (`tree`, `sierpinski`, `sierpinski_hard`).
//!
//! The images are embedded (see `assets/diffflow_2d_images/README.md` for provenance and
//! licence). Each becomes a density over pixels as the authors' code does:
//! 1. decode; composite any alpha over a white background (all three images are in fact
//!    opaque); average the R, G, B channels, giving grey levels 0..255;
//! 2. set every pixel brighter than 225 to 255; divide by the maximum;
//! 3. smooth with a Gaussian of sigma `10 * noise` pixels (none when `noise == 0`);
//! 4. `density = 1 - smoothed + 1e-4 * (G10 + G20 + G50)`, where `G_s` is the step-2 image
//!    (not the smoothed one) blurred with sigma `s`;
//! 5. flip vertically so that image "up" is +y.
//!
//! A sample is a pixel drawn in proportion to the density (x = column, y = row of the
//! flipped array), plus uniform dequantisation noise in [-0.5, 0.5) per coordinate, mapped
//! to `(x - mean) / scale`. Blurs follow `scipy.ndimage.gaussian_filter`: kernel truncated at
//! `int(4 sigma + 0.5)` pixels, 'reflect' borders (`d c b a | a b c d | d c b a`).

use std::sync::{Arc, OnceLock};

use crate::rng::Rng;
use crate::{Error, Result};

/// Pixels brighter than this become white background (255).
const WHITE_CUTOFF: f64 = 225.0;
/// Weight of the blurred-image background term.
const BACKGROUND: f64 = 1e-4;
/// Blur sigmas (pixels) of the background term.
const BACKGROUND_SIGMAS: [f64; 3] = [10.0, 20.0, 50.0];
/// Largest accepted smoothing `noise` (sigma = 10 * noise = 1000 pixels), bounding the cost.
pub const MAX_IMAGE_NOISE: f64 = 100.0;

/// One of the embedded DiffFlow images.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageSet {
    /// Fractal tree, 530 x 450 RGBA PNG.
    Tree,
    /// Sierpinski carpet, 729 x 729 JPEG.
    Sierpinski,
    /// Sierpinski carpet with one more level, 729 x 729 JPEG.
    SierpinskiHard,
}

impl ImageSet {
    /// All image sets.
    pub const ALL: [ImageSet; 3] = [
        ImageSet::Tree,
        ImageSet::Sierpinski,
        ImageSet::SierpinskiHard,
    ];

    /// Data set name as in [`crate::data::TOY_DATASETS`].
    pub fn name(self) -> &'static str {
        match self {
            ImageSet::Tree => "tree",
            ImageSet::Sierpinski => "sierpinski",
            ImageSet::SierpinskiHard => "sierpinski_hard",
        }
    }

    /// The set called `name`, if any.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Pixel centre and scale `([mean_x, mean_y], [scale_x, scale_y])`: `(x - mean) / scale`.
    pub fn centre_scale(self) -> ([f64; 2], [f64; 2]) {
        match self {
            ImageSet::Tree => ([275.0, 225.0], [275.0, 225.0]),
            _ => ([365.0, 365.0], [365.0, 365.0]),
        }
    }

    /// The embedded file.
    fn bytes(self) -> &'static [u8] {
        match self {
            ImageSet::Tree => include_bytes!("../../assets/diffflow_2d_images/tree.png"),
            ImageSet::Sierpinski => {
                include_bytes!("../../assets/diffflow_2d_images/sierpinski.jpg")
            }
            ImageSet::SierpinskiHard => {
                include_bytes!("../../assets/diffflow_2d_images/sierpinski_hard.jpg")
            }
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A grey image. Shapes: `pixels` [height, width] row-major, row 0 at the top.
#[derive(Clone, Debug, PartialEq)]
pub struct Gray {
    /// Columns.
    pub width: usize,
    /// Rows.
    pub height: usize,
    /// Grey values, [height, width] row-major.
    pub pixels: Vec<f64>,
}

/// Decode a PNG/JPEG; alpha is composited over white, then R, G, B are averaged (0..255).
pub fn decode_gray(bytes: &[u8]) -> Result<Gray> {
    let img = image::load_from_memory(bytes)
        .map_err(|e| Error::data(format!("cannot decode image: {e}")))?
        .to_rgba8();
    let (width, height) = (img.width() as usize, img.height() as usize);
    if width == 0 || height == 0 {
        return Err(Error::data("image has no pixels"));
    }
    let pixels = img
        .pixels()
        .map(|p| {
            let [r, g, b, a] = p.0.map(f64::from);
            let grey = (r + g + b) / 3.0;
            let alpha = a / 255.0;
            alpha * grey + (1.0 - alpha) * 255.0
        })
        .collect();
    Ok(Gray {
        width,
        height,
        pixels,
    })
}

/// Steps 2 of the recipe: values above 225 become 255, then divide by the maximum.
pub fn whiten_and_normalise(mut img: Gray) -> Result<Gray> {
    for p in &mut img.pixels {
        if *p > WHITE_CUTOFF {
            *p = 255.0;
        }
    }
    let max = img.pixels.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    if !(max > 0.0 && max.is_finite()) {
        return Err(Error::data(format!(
            "image maximum is {max}; cannot normalise"
        )));
    }
    img.pixels.iter_mut().for_each(|p| *p /= max);
    Ok(img)
}

/// scipy's 'reflect' border: index `i` of a length-`n` signal extended as `d c b a | a b c d | d c b a`.
fn reflect_index(i: isize, n: usize) -> usize {
    let period = 2 * n as isize;
    let m = i.rem_euclid(period) as usize;
    if m < n {
        m
    } else {
        2 * n - 1 - m
    }
}

/// Normalised Gaussian kernel, radius `int(4 sigma + 0.5)`. Shapes: [2 radius + 1].
pub fn gaussian_kernel(sigma: f64) -> Vec<f64> {
    let radius = (4.0 * sigma + 0.5) as isize;
    let w: Vec<f64> = (-radius..=radius)
        .map(|i| (-0.5 * (i * i) as f64 / (sigma * sigma)).exp())
        .collect();
    let total: f64 = w.iter().sum();
    w.into_iter().map(|x| x / total).collect()
}

/// Separable Gaussian blur with 'reflect' borders, like `scipy.ndimage.gaussian_filter`.
/// `sigma <= 1e-15` returns the image unchanged (scipy skips such axes).
pub fn gaussian_blur(img: &Gray, sigma: f64) -> Gray {
    if sigma.is_nan() || sigma <= 1e-15 {
        return img.clone();
    }
    let k = gaussian_kernel(sigma);
    let rows = blur_rows(img, &k);
    blur_columns(&rows, &k)
}

/// 1-D blur along each row (x).
fn blur_rows(img: &Gray, k: &[f64]) -> Gray {
    let (w, r) = (img.width, k.len() / 2);
    let mut out = Vec::with_capacity(img.pixels.len());
    let mut padded = vec![0.0; w + 2 * r];
    for row in img.pixels.chunks_exact(w) {
        for (j, p) in padded.iter_mut().enumerate() {
            *p = row[reflect_index(j as isize - r as isize, w)];
        }
        out.extend((0..w).map(|x| dot(&padded[x..x + k.len()], k)));
    }
    Gray {
        pixels: out,
        ..*img
    }
}

/// 1-D blur along each column (y), accumulating whole rows for cache-friendly access.
fn blur_columns(img: &Gray, k: &[f64]) -> Gray {
    let (w, h, r) = (img.width, img.height, k.len() / 2);
    let mut out = vec![0.0; w * h];
    for (y, acc) in out.chunks_exact_mut(w).enumerate() {
        for (t, &kt) in k.iter().enumerate() {
            let src = reflect_index(y as isize + t as isize - r as isize, h);
            let row = &img.pixels[src * w..(src + 1) * w];
            acc.iter_mut().zip(row).for_each(|(a, &v)| *a += kt * v);
        }
    }
    Gray {
        pixels: out,
        ..*img
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The noise-independent part of an image density.
#[derive(Debug)]
struct Prepared {
    /// Whitened, normalised image (step 2).
    img: Gray,
    /// `1e-4 * (G10 + G20 + G50)` of `img`. Shapes: [height, width].
    background: Vec<f64>,
}

/// Steps 1, 2 and the background term of step 4.
fn prepare(bytes: &[u8]) -> Result<Prepared> {
    Ok(prepare_gray(whiten_and_normalise(decode_gray(bytes)?)?))
}

/// The background term of step 4 for a whitened, normalised image.
fn prepare_gray(img: Gray) -> Prepared {
    let mut background = vec![0.0; img.pixels.len()];
    for sigma in BACKGROUND_SIGMAS {
        let g = gaussian_blur(&img, sigma);
        background
            .iter_mut()
            .zip(&g.pixels)
            .for_each(|(b, v)| *b += BACKGROUND * v);
    }
    Prepared { img, background }
}

/// Step 3 and 4: `1 - blur(img, sigma) + background`. Shapes: [height, width], row 0 top.
fn density(p: &Prepared, sigma: f64) -> Vec<f64> {
    let smooth = gaussian_blur(&p.img, sigma);
    smooth
        .pixels
        .iter()
        .zip(&p.background)
        .map(|(s, b)| 1.0 - s + b)
        .collect()
}

/// Cumulative pixel table for drawing pixel indices in proportion to a density.
#[derive(Clone, Debug)]
pub struct DensityTable {
    width: usize,
    height: usize,
    /// Running sums of the (flipped) density. Shapes: [height * width], row-major.
    cdf: Vec<f64>,
}

impl DensityTable {
    /// Table of a density given top row first; rows are flipped so that row 0 is the bottom.
    /// Shapes: `density` [height, width] row-major. Errors on a wrong length, a negative or
    /// non-finite value, or zero total mass.
    pub fn from_top_down(width: usize, height: usize, density: &[f64]) -> Result<Self> {
        if width == 0 || height == 0 || density.len() != width * height {
            return Err(Error::data(format!(
                "density of {} values does not fit a {width} x {height} image",
                density.len()
            )));
        }
        let mut cdf = Vec::with_capacity(density.len());
        let mut total = 0.0;
        for row in density.chunks_exact(width).rev() {
            for &d in row {
                if !(d >= 0.0 && d.is_finite()) {
                    return Err(Error::data(format!("image density value {d} is not >= 0")));
                }
                total += d;
                cdf.push(total);
            }
        }
        if total <= 0.0 {
            return Err(Error::data("image density has zero total mass"));
        }
        Ok(DensityTable { width, height, cdf })
    }

    /// `(width, height)` in pixels.
    pub fn size(&self) -> (usize, usize) {
        (self.width, self.height)
    }

    /// Normalised pixel probabilities. Shapes: [height, width], row 0 = bottom (flipped).
    pub fn probabilities(&self) -> Vec<f64> {
        let total = self.total();
        let mut prev = 0.0;
        self.cdf
            .iter()
            .map(|&c| {
                let p = (c - prev) / total;
                prev = c;
                p
            })
            .collect()
    }

    /// Draw one pixel `(column, row)` (row of the flipped array) with one uniform draw.
    pub fn sample_pixel(&self, rng: &mut Rng) -> (usize, usize) {
        let u = rng.uniform() * self.total();
        let i = self
            .cdf
            .partition_point(|&c| c <= u)
            .min(self.cdf.len() - 1);
        (i % self.width, i / self.width)
    }

    fn total(&self) -> f64 {
        self.cdf[self.cdf.len() - 1]
    }
}

type Cached<T> = OnceLock<std::result::Result<Arc<T>, String>>;

static PREPARED: [Cached<Prepared>; 3] = [OnceLock::new(), OnceLock::new(), OnceLock::new()];
static TABLE_NOISE0: [Cached<DensityTable>; 3] =
    [OnceLock::new(), OnceLock::new(), OnceLock::new()];

/// Run `make` once per process and cache its result (errors are cached as messages).
fn cached<T>(cell: &Cached<T>, make: impl FnOnce() -> Result<T>) -> Result<Arc<T>> {
    cell.get_or_init(|| make().map(Arc::new).map_err(|e| e.to_string()))
        .clone()
        .map_err(Error::data)
}

fn prepared(set: ImageSet) -> Result<Arc<Prepared>> {
    cached(&PREPARED[set.index()], || prepare(set.bytes()))
}

/// The pixel table of `set` smoothed with sigma `10 * noise`; cached for `noise == 0`.
pub fn density_table(set: ImageSet, noise: f64) -> Result<Arc<DensityTable>> {
    if !(noise.is_finite() && (0.0..=MAX_IMAGE_NOISE).contains(&noise)) {
        return Err(Error::config(format!(
            "{}: noise must be in [0, {MAX_IMAGE_NOISE}] (smoothing sigma = 10 * noise pixels), got {noise}",
            set.name()
        )));
    }
    let build = || {
        let p = prepared(set)?;
        DensityTable::from_top_down(p.img.width, p.img.height, &density(&p, 10.0 * noise))
    };
    if noise == 0.0 {
        cached(&TABLE_NOISE0[set.index()], build)
    } else {
        build().map(Arc::new)
    }
}

/// `n` points from an image density, in `(x - mean) / scale` units (before any rescale).
/// Shapes: returns [n, 2] row-major.
pub fn image_points(set: ImageSet, n: usize, noise: f64, rng: &mut Rng) -> Result<Vec<f64>> {
    let table = density_table(set, noise)?;
    let (mean, scale) = set.centre_scale();
    let mut out = Vec::with_capacity(2 * n);
    for _ in 0..n {
        let (col, row) = table.sample_pixel(rng);
        let x = col as f64 + rng.uniform() - 0.5;
        let y = row as f64 + rng.uniform() - 0.5;
        out.push((x - mean[0]) / scale[0]);
        out.push((y - mean[1]) / scale[1]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gray(width: usize, height: usize, pixels: Vec<f64>) -> Gray {
        Gray {
            width,
            height,
            pixels,
        }
    }

    #[test]
    fn reflect_index_matches_scipy_reflect() {
        // n = 4, signal a b c d: ... d c b a | a b c d | d c b a | a ...
        let got: Vec<usize> = (-9..13).map(|i| reflect_index(i, 4)).collect();
        let want = [
            0, 0, 1, 2, 3, 3, 2, 1, 0, // -9..-1
            0, 1, 2, 3, // 0..3
            3, 2, 1, 0, 0, 1, 2, 3, 3, // 4..12
        ];
        assert_eq!(got, want);
        assert_eq!(reflect_index(-3, 1), 0);
    }

    #[test]
    fn gaussian_kernel_radius_and_values() {
        let k = gaussian_kernel(2.0);
        assert_eq!(k.len(), 17); // radius int(8.5) = 8
        assert!((k.iter().sum::<f64>() - 1.0).abs() < 1e-15);
        assert!((k[8 + 3] / k[8] - (-9.0f64 / 8.0).exp()).abs() < 1e-15);
        assert_eq!(gaussian_kernel(0.1).len(), 1); // int(0.9) = 0
    }

    #[test]
    fn blur_of_delta_is_kernel_outer_product_and_keeps_sum() {
        let (w, h, sigma) = (41, 37, 2.5);
        let (cx, cy) = (20, 17);
        let mut px = vec![0.0; w * h];
        px[cy * w + cx] = 1.0;
        let out = gaussian_blur(&gray(w, h, px), sigma);
        let k = gaussian_kernel(sigma);
        let r = k.len() / 2;
        for y in 0..h {
            for x in 0..w {
                let (dx, dy) = (x as isize - cx as isize, y as isize - cy as isize);
                let inside = dx.unsigned_abs() <= r && dy.unsigned_abs() <= r;
                let want = if inside {
                    k[(dx + r as isize) as usize] * k[(dy + r as isize) as usize]
                } else {
                    0.0
                };
                assert!((out.pixels[y * w + x] - want).abs() < 1e-15, "({x},{y})");
            }
        }
        assert!((out.pixels.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn blur_reflects_at_borders() {
        // A constant image stays constant (reflect has no dark frame), and a delta at the
        // corner folds back: out[0][0] = (k[r] + k[r - 1])^2 after one reflection per axis.
        let c = gaussian_blur(&gray(5, 4, vec![0.7; 20]), 3.0);
        assert!(c.pixels.iter().all(|&v| (v - 0.7).abs() < 1e-12));
        let mut px = vec![0.0; 30 * 30];
        px[0] = 1.0;
        let out = gaussian_blur(&gray(30, 30, px), 1.0);
        let k = gaussian_kernel(1.0);
        let r = k.len() / 2;
        let edge = k[r] + k[r - 1];
        assert!((out.pixels[0] - edge * edge).abs() < 1e-15);
        assert!((out.pixels.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn density_table_frequencies_match_synthetic_image() {
        // Top row [1, 2, 3], bottom row [0, 4, 0]; after the flip, row 0 is the bottom.
        let t = DensityTable::from_top_down(3, 2, &[1.0, 2.0, 3.0, 0.0, 4.0, 0.0]).unwrap();
        let p = t.probabilities();
        let want = [0.0, 0.4, 0.0, 0.1, 0.2, 0.3];
        for (a, b) in p.iter().zip(want) {
            assert!((a - b).abs() < 1e-15);
        }
        let mut rng = Rng::new(11);
        let n = 100_000;
        let mut counts = [0usize; 6];
        for _ in 0..n {
            let (c, r) = t.sample_pixel(&mut rng);
            counts[r * 3 + c] += 1;
        }
        for (k, &q) in want.iter().enumerate() {
            let f = counts[k] as f64 / n as f64;
            let tol = 5.0 * (q * (1.0 - q) / n as f64).sqrt();
            assert!((f - q).abs() <= tol, "pixel {k}: {f} vs {q}");
        }
        assert_eq!(counts[0] + counts[2], 0);
    }

    #[test]
    fn density_table_rejects_bad_input() {
        assert!(DensityTable::from_top_down(2, 2, &[1.0; 3]).is_err());
        assert!(DensityTable::from_top_down(2, 1, &[1.0, f64::NAN]).is_err());
        assert!(DensityTable::from_top_down(2, 1, &[1.0, -1.0]).is_err());
        assert!(DensityTable::from_top_down(2, 1, &[0.0, 0.0]).is_err());
        assert!(density_table(ImageSet::Tree, -1.0).is_err());
        assert!(density_table(ImageSet::Tree, f64::NAN).is_err());
    }

    #[test]
    fn decode_composites_alpha_over_white_and_whitens() {
        // 3 x 1 RGBA: opaque black, transparent black, opaque (230, 230, 220).
        let raw = vec![0, 0, 0, 255, 0, 0, 0, 0, 230, 230, 220, 255];
        let img = image::RgbaImage::from_raw(3, 1, raw).unwrap();
        let mut png = std::io::Cursor::new(Vec::new());
        img.write_to(&mut png, image::ImageFormat::Png).unwrap();
        let g = decode_gray(png.get_ref()).unwrap();
        assert_eq!((g.width, g.height), (3, 1));
        assert_eq!(g.pixels, vec![0.0, 255.0, 680.0 / 3.0]);
        let n = whiten_and_normalise(g).unwrap();
        assert_eq!(n.pixels, vec![0.0, 1.0, 1.0]); // 226.7 > 225 -> 255
        assert!(decode_gray(b"not an image").is_err());
    }

    #[test]
    fn density_blurs_the_unsmoothed_image_for_the_background() {
        // 60 x 50 white image with a dark 10 x 10 square: density = 1 - G3(img)
        // + 1e-4 (G10 + G20 + G50)(img), all blurs of the step-2 image itself.
        let (w, h) = (60, 50);
        let dark = |i: usize| (20..30).contains(&(i % w)) && (15..25).contains(&(i / w));
        let px = (0..w * h)
            .map(|i| if dark(i) { 0.0 } else { 1.0 })
            .collect();
        let img = gray(w, h, px);
        let p = prepare_gray(img.clone());
        let d = density(&p, 3.0);
        let g = |s: f64| gaussian_blur(&img, s).pixels;
        let (g3, g10, g20, g50) = (g(3.0), g(10.0), g(20.0), g(50.0));
        for i in 0..w * h {
            let want = 1.0 - g3[i] + 1e-4 * (g10[i] + g20[i] + g50[i]);
            assert!((d[i] - want).abs() < 1e-15, "pixel {i}");
        }
        // Far from the square the image is white: density is the background only, ~3e-4.
        assert!((d[0] - 3e-4).abs() < 1e-5 && d[0] > 0.0);
        // Pixel (25, 20), inside the square: 1 - G3 = (kernel mass over offsets -5..=4)^2.
        let k = gaussian_kernel(3.0);
        let inside: f64 = k[k.len() / 2 - 5..k.len() / 2 + 5].iter().sum();
        let d_in = d[20 * w + 25];
        assert!(
            d_in > inside * inside && d_in < inside * inside + 3e-4,
            "{d_in}"
        );
    }

    #[test]
    fn embedded_images_decode_with_documented_sizes() {
        for (set, w, h) in [
            (ImageSet::Tree, 530, 450),
            (ImageSet::Sierpinski, 729, 729),
            (ImageSet::SierpinskiHard, 729, 729),
        ] {
            let p = prepared(set).unwrap();
            assert_eq!((p.img.width, p.img.height), (w, h), "{}", set.name());
            let max = p.img.pixels.iter().cloned().fold(0.0, f64::max);
            assert_eq!(max, 1.0);
            assert_eq!(density_table(set, 0.0).unwrap().size(), (w, h));
        }
    }

    #[test]
    fn points_stay_within_half_a_pixel_of_the_image() {
        for set in ImageSet::ALL {
            let table = density_table(set, 0.0).unwrap();
            let (w, h) = table.size();
            let (mean, scale) = set.centre_scale();
            let lo = [(-0.5 - mean[0]) / scale[0], (-0.5 - mean[1]) / scale[1]];
            let hi = [
                (w as f64 - 0.5 - mean[0]) / scale[0],
                (h as f64 - 0.5 - mean[1]) / scale[1],
            ];
            let pts = image_points(set, 5000, 0.0, &mut Rng::new(1)).unwrap();
            for p in pts.chunks_exact(2) {
                for a in 0..2 {
                    assert!(p[a] >= lo[a] && p[a] < hi[a], "{}: {p:?}", set.name());
                    assert!(p[a].abs() <= 1.0 + 0.5 / 225.0, "{}: {p:?}", set.name());
                }
            }
        }
    }

    #[test]
    fn sierpinski_centre_square_is_nearly_empty() {
        // The carpet's central square (pixels 243..486 of 729) is white: almost no mass.
        for set in [ImageSet::Sierpinski, ImageSet::SierpinskiHard] {
            let pts = image_points(set, 20_000, 0.0, &mut Rng::new(5)).unwrap();
            let inside = pts
                .chunks_exact(2)
                .filter(|p| p[0].abs() < 0.3 && p[1].abs() < 0.3)
                .count();
            assert!(
                inside < 20,
                "{}: {inside} of 20000 in the centre",
                set.name()
            );
        }
    }

    #[test]
    fn samples_follow_the_dark_pixels() {
        // With noise 0 nearly all mass sits on dark pixels (image value < 0.5).
        for set in ImageSet::ALL {
            let p = prepared(set).unwrap();
            let t = density_table(set, 0.0).unwrap();
            let (w, h) = t.size();
            let mut rng = Rng::new(9);
            let dark = (0..10_000)
                .filter(|_| {
                    let (c, r) = t.sample_pixel(&mut rng);
                    p.img.pixels[(h - 1 - r) * w + c] < 0.5
                })
                .count();
            assert!(
                dark > 9_900,
                "{}: {dark} of 10000 on dark pixels",
                set.name()
            );
        }
    }

    #[test]
    fn smoothing_spreads_mass_into_the_centre() {
        // sigma = 10 * 2 = 20 pixels blurs the centre-square edge: some mass moves inside.
        let t = density_table(ImageSet::Sierpinski, 2.0).unwrap();
        let p = t.probabilities();
        let centre: f64 = (250..479)
            .flat_map(|r| (250..479).map(move |c| r * 729 + c))
            .map(|i| p[i])
            .sum();
        let t0 = density_table(ImageSet::Sierpinski, 0.0).unwrap();
        let p0 = t0.probabilities();
        let centre0: f64 = (250..479)
            .flat_map(|r| (250..479).map(move |c| r * 729 + c))
            .map(|i| p0[i])
            .sum();
        assert!(centre > 10.0 * centre0, "{centre} vs {centre0}");
    }
}
