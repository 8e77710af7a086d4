//! Helpers shared by the plot tests.

use std::f64::consts::TAU;
use std::fs;
use std::path::Path;

use super::{ImageFormat, Panel, Style};

/// `n` points on four concentric rings (radii 1..4) with a little noise,
/// from a small deterministic generator; labels are the ring index.
pub(super) fn four_rings(n: usize) -> (Vec<f64>, Vec<usize>) {
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

pub(super) fn decode(path: &Path) -> image::RgbImage {
    let meta = fs::metadata(path).expect("picture exists");
    assert!(meta.len() > 0, "{} is empty", path.display());
    image::open(path).expect("PNG decodes").to_rgb8()
}

/// Copies a rendered picture to `$DIFFFLOW_PLOT_KEEP/name`, for looking at it.
pub(super) fn keep(path: &Path, name: &str) {
    if let Ok(dir) = std::env::var("DIFFFLOW_PLOT_KEEP") {
        fs::copy(path, Path::new(&dir).join(name)).unwrap();
    }
}

/// Names of everything in `dir` (to check no temp files remain).
pub(super) fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

pub(super) fn scatter<'a>(title: &str, pts: &'a [f64], labels: Option<&'a [usize]>) -> Panel<'a> {
    Panel {
        title: title.into(),
        points: pts,
        labels,
        style: Style::Scatter,
    }
}

pub(super) fn hist<'a>(title: &str, pts: &'a [f64]) -> Panel<'a> {
    Panel {
        title: title.into(),
        points: pts,
        labels: None,
        style: Style::Histogram,
    }
}

/// FNV-1a of a written picture's size and decoded RGB pixels: a change of any pixel
/// changes it. The expected values of the panel and line-chart pictures were computed
/// before `plot.rs` was split into a folder, and still hold after it.
pub(super) fn pixel_hash(path: &Path) -> u64 {
    use diffflow::checkpoint::{fnv1a64, FNV_OFFSET};
    let img = decode(path);
    let (w, h) = img.dimensions();
    let state = fnv1a64(FNV_OFFSET, &w.to_le_bytes());
    let state = fnv1a64(state, &h.to_le_bytes());
    fnv1a64(state, img.as_raw())
}

/// The format of `channels`×`height`×`width` images with values in `range`.
pub(super) fn image_format(
    channels: usize,
    height: usize,
    width: usize,
    range: [f64; 2],
) -> ImageFormat {
    ImageFormat {
        channels,
        height,
        width,
        range,
    }
}

/// Grey `h`×`w` images with values in [0, 1).
pub(super) fn grey(h: usize, w: usize) -> ImageFormat {
    image_format(1, h, w, [0.0, 1.0])
}
