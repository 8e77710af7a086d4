//! Grids of images.

use anyhow::{bail, ensure, Result};

use super::canvas::{Canvas, MAX_SIDE};

/// Target on-screen size (pixels) of one image in `image_grid`.
const IMAGE_TARGET_PX: usize = 80;
/// Border between images in `image_grid`.
const IMAGE_PAD_PX: usize = 2;

/// Integer upscaling factor so an image is about `IMAGE_TARGET_PX` on screen.
fn image_scale(h: usize, w: usize) -> usize {
    let m = h.max(w).max(1);
    IMAGE_TARGET_PX.div_ceil(m).max(1)
}

pub(super) fn render_image_grid(
    images: &[Vec<f32>],
    h: usize,
    w: usize,
    cols: usize,
) -> Result<Canvas> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plot::image_grid;
    use crate::plot::test_util::{decode, entries, keep, pixel_hash};

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
    fn plot_image_grid_bad_input_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.png");
        let cases: Vec<(&str, Result<()>)> = vec![
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
}
