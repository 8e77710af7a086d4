//! The canvas: an RGB buffer with a few drawing helpers, text rasterised with the
//! embedded font, number labels and colours.

use std::sync::OnceLock;

use ab_glyph::{point, Font, FontRef, Glyph, GlyphId, PxScale, PxScaleFont, ScaleFont};
use anyhow::{anyhow, ensure, Result};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, VPos};

/// Largest picture side we agree to allocate.
pub(super) const MAX_SIDE: u32 = 16_384;
/// Outer margin of every figure.
pub(super) const MARGIN_PX: u32 = 12;
/// Height of the figure-title band (when the title is not empty).
pub(super) const TITLE_H: u32 = 40;
/// Height of the column-title band (when any column title is not empty).
pub(super) const COL_TITLE_H: u32 = 28;

pub(super) const FONT_FAMILY: &str = "sans-serif";
pub(super) const FONT_BYTES: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

pub(super) const WHITE_RGB: [u8; 3] = [255, 255, 255];
pub(super) const TEXT_RGB: [u8; 3] = [25, 25, 25];
pub(super) const MUTED_RGB: [u8; 3] = [110, 110, 110];
pub(super) const FRAME_RGB: [u8; 3] = [150, 150, 150];

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

pub(super) struct Canvas {
    pub(super) w: u32,
    pub(super) h: u32,
    pub(super) buf: Vec<u8>,
}

/// A piece of text, anchored at (x, y).
pub(super) struct Label {
    pub(super) text: String,
    pub(super) x: i32,
    pub(super) y: i32,
    pub(super) size: f64,
    pub(super) rgb: [u8; 3],
    pub(super) h_pos: HPos,
    pub(super) v_pos: VPos,
    /// Rotated a quarter turn anticlockwise (reads bottom to top).
    pub(super) vertical: bool,
}

impl Canvas {
    pub(super) fn new(w: u32, h: u32, bg: [u8; 3]) -> Result<Self> {
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
    pub(super) fn set(&mut self, x: u32, y: u32, rgb: [u8; 3]) {
        if x < self.w && y < self.h {
            let i = (y as usize * self.w as usize + x as usize) * 3;
            self.buf[i..i + 3].copy_from_slice(&rgb);
        }
    }

    #[inline]
    pub(super) fn blend(&mut self, x: i64, y: i64, rgb: [u8; 3], alpha: f32) {
        if x < 0 || y < 0 || x >= self.w as i64 || y >= self.h as i64 {
            return;
        }
        let i = (y as usize * self.w as usize + x as usize) * 3;
        for (dst, &src) in self.buf[i..i + 3].iter_mut().zip(&rgb) {
            let old = *dst as f32;
            *dst = (old + (src as f32 - old) * alpha).round().clamp(0.0, 255.0) as u8;
        }
    }

    pub(super) fn fill_rect(&mut self, x0: u32, y0: u32, w: u32, h: u32, rgb: [u8; 3]) {
        for y in y0..(y0 + h).min(self.h) {
            for x in x0..(x0 + w).min(self.w) {
                self.set(x, y, rgb);
            }
        }
    }

    /// A 1-px frame just outside the rectangle.
    pub(super) fn frame(&mut self, x0: u32, y0: u32, w: u32, h: u32, rgb: [u8; 3]) {
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
    pub(super) fn draw_labels(&mut self, labels: &[Label]) -> Result<()> {
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
    pub(super) fn blend_rect(
        &mut self,
        x0: i64,
        y0: i64,
        w: i64,
        h: i64,
        rgb: [u8; 3],
        alpha: f32,
    ) {
        for y in y0..y0 + h {
            for x in x0..x0 + w {
                self.blend(x, y, rgb, alpha);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Fonts and text.

/// The embedded font, parsed once.
pub(super) fn font() -> Result<&'static FontRef<'static>> {
    static FONT: OnceLock<Option<FontRef<'static>>> = OnceLock::new();
    FONT.get_or_init(|| FontRef::try_from_slice(FONT_BYTES).ok())
        .as_ref()
        .ok_or_else(|| anyhow!("the embedded DejaVu Sans font could not be parsed"))
}

/// Registers the embedded font with plotters (once per process); needed
/// before plotters draws any text (line-chart tick labels).
pub(super) fn ensure_plotters_font() -> Result<()> {
    static REGISTERED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            plotters::style::register_font(FONT_FAMILY, FontStyle::Normal, FONT_BYTES)
                .map_err(|_| "the embedded DejaVu Sans font could not be parsed".to_string())
        })
        .clone()
        .map_err(|e| anyhow!(e))
}

pub(super) fn text_style(size: f64, rgb: [u8; 3]) -> TextStyle<'static> {
    (FONT_FAMILY, size)
        .into_font()
        .color(&RGBColor(rgb[0], rgb[1], rgb[2]))
}

/// Glyphs of `text` on a baseline at y = 0 starting at x = 0, and the advance width.
pub(super) fn layout_text(sf: &PxScaleFont<&FontRef<'static>>, text: &str) -> (Vec<Glyph>, f32) {
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
pub(super) fn text_width(text: &str, size: f64) -> Result<u32> {
    let sf = font()?.as_scaled(PxScale::from(size as f32));
    Ok(layout_text(&sf, text).1.ceil() as u32)
}

/// `text`, shortened with an ellipsis so that it fits in `max_w` pixels.
pub(super) fn fit_text(text: &str, size: f64, max_w: u32) -> Result<String> {
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
pub(super) fn fmt_num(v: f64) -> String {
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
pub(super) fn ramp(t: f32) -> [u8; 3] {
    let t = if t.is_nan() { 0.0 } else { t.clamp(0.0, 1.0) };
    let pos = t * (RAMP.len() - 1) as f32;
    let i = (pos.floor() as usize).min(RAMP.len() - 2);
    let f = pos - i as f32;
    let (a, b) = (RAMP[i], RAMP[i + 1]);
    [0, 1, 2].map(|k| (a[k] + (b[k] - a[k]) * f).round().clamp(0.0, 255.0) as u8)
}

pub(super) fn palette(i: usize) -> [u8; 3] {
    PALETTE[i % PALETTE.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let long = "a very long title that will never fit in a narrow space at all";
        let t = fit_text(long, 15.0, 100).unwrap();
        assert!(
            t.ends_with('…') && text_width(&t, 15.0).unwrap() <= 100,
            "{t}"
        );
    }
}
