//! Line charts of named series, with linear or log-scale y axes.

use anyhow::{anyhow, ensure, Result};
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, VPos};

use super::canvas::{
    ensure_plotters_font, fit_text, fmt_num, palette, text_style, text_width, Canvas, Label,
    MUTED_RGB, TEXT_RGB, WHITE_RGB,
};
use super::panels::pad_extent;

/// Line-chart size.
pub(super) const CHART_W: u32 = 900;
pub(super) const CHART_H: u32 = 560;

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

pub(super) fn render_line_chart(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plot::line_chart;
    use crate::plot::test_util::{decode, entries, keep, pixel_hash};

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
}
