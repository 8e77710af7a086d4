//! Image runs in the commands: sample grids, the forward-trajectory strip, and sample
//! quality by the LeNet judge (FID of its features, class balance).

use crate::plot::{self, ImageFormat};
use anyhow::{Context, Result};
use diffflow::classifier::{class_balance, ClassBalance, Classifier};
use diffflow::data::ImageShape;
use diffflow::model::Model;
use diffflow::rng::{Rng, Stream};
use diffflow::train::Trainer;
use serde::Serialize;
use std::path::Path;

/// Images of a sample grid (10 x 10).
pub const GRID: usize = 100;
/// Data images in the forward-trajectory strip, and its columns (states shown).
const STRIP_ROWS: usize = 8;
const STRIP_COLS: usize = 7;

/// The picture format of `shape` images with values in `range`.
pub fn format(shape: ImageShape, range: [f64; 2]) -> ImageFormat {
    ImageFormat {
        channels: shape.channels,
        height: shape.height,
        width: shape.width,
        range,
    }
}

/// The image shape and levels of an image run, or an error naming what was asked.
pub fn image_of(model: &Model, what: &str) -> Result<(ImageShape, u32)> {
    model
        .image()
        .ok_or_else(|| anyhow::anyhow!("{what} needs an image run (trained on --dataset mnist, fashion-mnist or digits-images)"))
}

/// A grid of (up to [`GRID`]) samples `x` (data units, pixels in `[0, L)`) in 10 columns.
pub fn write_grid(model: &Model, x: &[f64], path: &Path, title: &str) -> Result<()> {
    let (shape, levels) = image_of(model, "a sample grid")?;
    let n = (x.len() / shape.dim()).min(GRID);
    let fmt = format(shape, [0.0, f64::from(levels)]);
    plot::image_grid(path, title, &x[..n * shape.dim()], &fmt, 10)
}

/// The forward process (11) from (up to 8) test images `x` (data units) on the run's grid
/// of its sampling N, seven states from `t_0` to `T` (the image analogue of Figure 4).
pub fn write_trajectory(model: &Model, x: &[f64], path: &Path) -> Result<()> {
    let (shape, _) = image_of(model, "a trajectory strip")?;
    let d = shape.dim();
    let rows = (x.len() / d).min(STRIP_ROWS);
    let n = model.sample_n().max(STRIP_COLS - 1);
    let mut rng = Rng::stream(model.cfg.train.seed, Stream::Eval);
    let states = model.forward_states(&x[..rows * d], n, &mut rng)?;
    let grid = model.grid(n, diffflow::model::SampleGrid::Fixed, None, &mut rng)?;
    let pick: Vec<usize> = (0..STRIP_COLS).map(|j| j * n / (STRIP_COLS - 1)).collect();
    let shown: Vec<&Vec<f64>> = pick.iter().map(|&i| &states[i]).collect();
    let times: Vec<f64> = pick.iter().map(|&i| grid.t[i]).collect();
    // States in the model's units: the data in [-1, 1], the prior N(0, I) at T (shown on
    // [-3, 3] would wash out the data; [-1, 1] clamps the tails).
    plot::trajectory_strip(
        path,
        &format!("{}: forward process, {} steps", model.kind(), n),
        &shown,
        &times,
        &format(shape, [-1.0, 1.0]),
    )
}

/// An image run's pictures: `samples.png` (a 10 x 10 grid of the samples) and
/// `trajectory.png` (the forward process from test images).
pub fn write_run_pictures(
    trainer: &Trainer,
    model: &Model,
    samples: &[f64],
    out: &Path,
) -> Result<()> {
    let cfg = &trainer.cfg;
    let title = format!(
        "{} on {}: {} iterations, N = {}{}",
        cfg.model.kind,
        cfg.data.dataset,
        trainer.step,
        model.sample_n(),
        if cfg.sample.tweedie { ", Tweedie" } else { "" }
    );
    write_grid(model, samples, &out.join("samples.png"), &title)?;
    let mut x = if trainer.data.test.is_empty() {
        trainer.data.train.clone()
    } else {
        trainer.data.test.clone()
    };
    x.truncate(8 * trainer.data.dim);
    trainer.data.standardizer.invert(&mut x);
    write_trajectory(model, &x, &out.join("trajectory.png"))
}

/// Sample quality of an MNIST-shaped run by the shipped LeNet.
#[derive(Clone, Debug, Serialize)]
pub struct Quality {
    /// Samples judged.
    pub samples: usize,
    /// Reference images.
    pub reference: usize,
    /// Fréchet distance of the LeNet features (not comparable with Inception FIDs).
    pub fid_lenet: f64,
    /// Predicted classes of the samples.
    pub balance: ClassBalance,
}

/// Whether the LeNet judge applies: 1 x 28 x 28 images.
pub fn judged(shape: ImageShape) -> bool {
    shape == ImageShape::grey(28, 28)
}

/// FID (LeNet features) of samples `x` against `reference` (both data units of `model`)
/// and the class balance of the samples; `threads` workers.
pub fn quality(model: &Model, x: &[f64], reference: &[f64], threads: usize) -> Result<Quality> {
    let to_unit = |v: &[f64]| {
        let mut y = v.to_vec();
        model.standardizer.apply(&mut y);
        y.iter_mut().for_each(|p| *p = p.clamp(-1.0, 1.0));
        y
    };
    let (xs, refs) = (to_unit(x), to_unit(reference));
    let judge = Classifier::builtin(&model.flow.device()).context("the LeNet judge")?;
    let fid_lenet = judge.fid(&xs, &refs, threads)?;
    let out = judge.evaluate(&xs, threads)?;
    let d = model.dim();
    Ok(Quality {
        samples: x.len() / d,
        reference: reference.len() / d,
        fid_lenet,
        balance: class_balance(&out.probs, diffflow::classifier::lenet::CLASSES)?,
    })
}
