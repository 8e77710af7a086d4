//! The reverse trajectory of [`super::reverse_trajectory`] on the fused MLP engine: rows in
//! tiles of at most [`SAMPLE_TILE_ROWS`], taken by `threads` workers from a shared counter; each tile's trajectory is independent, so the result does not depend on the
//! number of threads.

use crate::flow::Steps;
use crate::nn::{Mlp, MlpEngine, Real, Tape, TimeNet};
use crate::{Error, Result};
use candle_core::{Device, Tensor};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Largest number of rows of one tile (no activations are kept: larger tiles than the
/// adjoint's, so that each GEMM packs its weights for more rows).
pub const SAMPLE_TILE_ROWS: usize = 256;

fn to_vec<T: Real>(t: &Tensor) -> Result<Vec<T>> {
    Ok(t.flatten_all()?.to_dtype(T::DTYPE)?.to_vec1::<T>()?)
}

/// States `x_0 … x_N` `[B, d]` each from `z = x_N` `[B, d]` (see [`super::reverse_step`]);
/// `noise` `[N, B, d]` when λ ≠ 0.
pub(super) fn reverse<T: Real>(
    drift: &Mlp,
    score: &Mlp,
    z: &Tensor,
    steps: &Steps,
    lambda: f64,
    noise: Option<&Tensor>,
    threads: usize,
) -> Result<Vec<Tensor>> {
    let (b, d) = z.dims2()?;
    if drift.dim() != d || score.dim() != d {
        return Err(Error::data(format!(
            "network expects {} columns, got {d}",
            drift.dim()
        )));
    }
    let n = steps.n();
    let noise = match (lambda != 0.0, noise) {
        (true, None) => return Err(Error::config("stochastic sampler needs noise")),
        (true, Some(e)) => {
            if e.dims() != [n, b, d] {
                return Err(Error::data(format!(
                    "noise has shape {:?}, expected [{n}, {b}, {d}]",
                    e.dims()
                )));
            }
            Some(to_vec::<T>(e)?)
        }
        (false, _) => None,
    };
    let fe = MlpEngine::<T>::new(drift)?;
    let se = MlpEngine::<T>::new(score)?;
    let tf_f: Vec<_> = steps.t.iter().map(|&t| fe.time_features(t)).collect();
    let tf_s: Vec<_> = steps.t.iter().map(|&t| se.time_features(t)).collect();
    let zv = to_vec::<T>(z)?;
    let tiles = crate::adjoint::tiles_of(b, 1, SAMPLE_TILE_ROWS);
    let counter = AtomicUsize::new(0);
    // Per tile: its states [N + 1, rows, d].
    let done: Mutex<Vec<Option<Vec<T>>>> = Mutex::new(vec![None; tiles.len()]);
    let work = || {
        let mut tape = Tape::default();
        let (mut f, mut s) = (Vec::new(), Vec::new());
        loop {
            let k = counter.fetch_add(1, Ordering::Relaxed);
            if k >= tiles.len() {
                break;
            }
            let (lo, hi) = tiles[k];
            let rd = (hi - lo) * d;
            let mut st = Vec::with_capacity((n + 1) * rd);
            st.resize((n + 1) * rd, T::zero());
            st[n * rd..].copy_from_slice(&zv[lo * d..hi * d]);
            f.resize(rd, T::zero());
            s.resize(rd, T::zero());
            for i in (0..n).rev() {
                let (lower, upper) = st.split_at_mut((i + 1) * rd);
                let x = &upper[..rd];
                fe.forward(&tf_f[i + 1], x, &mut f, &mut tape, false);
                se.forward(&tf_s[i + 1], x, &mut s, &mut tape, false);
                let (dt, g) = (steps.dt(i), steps.g[i + 1]);
                let c = T::from_f64(0.5 * (1.0 + lambda * lambda) * g * g);
                let dt_t = T::from_f64(dt);
                let out = &mut lower[i * rd..];
                for k in 0..rd {
                    out[k] = x[k] - (f[k] - s[k] * c) * dt_t;
                }
                if let Some(e) = &noise {
                    let sd = T::from_f64(lambda * g * dt.sqrt());
                    let eta = &e[(i * b + lo) * d..(i * b + hi) * d];
                    for (o, v) in out[..rd].iter_mut().zip(eta) {
                        *o += *v * sd;
                    }
                }
            }
            if let Ok(mut r) = done.lock() {
                r[k] = Some(st);
            }
        }
    };
    let threads = threads.clamp(1, tiles.len().max(1));
    crate::par::run_workers(threads, &work)?;
    let parts = done
        .into_inner()
        .map_err(|_| Error::WorkerPanic("a sampling tile was lost".into()))?;
    let mut states = vec![Vec::with_capacity(b * d); n + 1];
    for (part, &(lo, hi)) in parts.iter().zip(&tiles) {
        let part = part
            .as_ref()
            .ok_or_else(|| Error::WorkerPanic("a sampling tile was lost".into()))?;
        let rd = (hi - lo) * d;
        for (i, out) in states.iter_mut().enumerate() {
            out.extend_from_slice(&part[i * rd..(i + 1) * rd]);
        }
    }
    states
        .into_iter()
        .map(|v| Ok(Tensor::from_vec(v, (b, d), &Device::Cpu)?))
        .collect()
}

#[cfg(test)]
mod tests {
    use crate::flow::{DiffFlow, Steps};
    use crate::nn::{Activation, Engine, Mlp, MlpConfig, TimeNet};
    use crate::rng::Rng;
    use crate::sample::reverse_trajectory_threads;
    use crate::sde::{fixed_grid, Diffusion, GridSpec};
    use candle_core::{DType, Device, Tensor, Var};

    /// An [`Mlp`] that hides that it is one: sampling takes the tensor-level path.
    struct Plain(Mlp);

    impl TimeNet for Plain {
        fn dim(&self) -> usize {
            self.0.dim()
        }
        fn vars(&self) -> &[(String, Var)] {
            self.0.vars()
        }
        fn buffers(&self) -> &[(String, Var)] {
            self.0.buffers()
        }
        fn forward(&self, x: &Tensor, t: f64) -> crate::Result<Tensor> {
            self.0.forward(x, t)
        }
        fn engine(&self) -> crate::Result<Box<dyn Engine + '_>> {
            self.0.engine()
        }
    }

    fn nets(seed: u64, dtype: DType) -> (Mlp, Mlp) {
        let cfg = MlpConfig {
            width: 16,
            depth: 2,
            fourier: 8,
            freq_min: 0.1,
            freq_max: 100.0,
            activation: Activation::Gelu,
        };
        let mut rng = Rng::new(seed);
        (
            Mlp::new(2, &cfg, dtype, &mut rng).unwrap(),
            Mlp::new(2, &cfg, dtype, &mut rng).unwrap(),
        )
    }

    fn flat(v: &[Tensor]) -> Vec<f64> {
        v.iter()
            .flat_map(|t| {
                t.to_dtype(DType::F64)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f64>()
                    .unwrap()
            })
            .collect()
    }

    /// Fused tiles = the tensor-level sampler (f64, to rounding); any number of threads gives
    /// the same bits (f32), with several tiles.
    #[test]
    fn fused_sampler_equals_engine_sampler() {
        let g = Diffusion::Constant { value: 0.3 };
        let (n, b) = (5, 300);
        let steps = Steps::new(fixed_grid(&GridSpec::default(), n), &g);
        let mut rng = Rng::new(8);
        let z = Tensor::from_vec(rng.normals(b * 2), (b, 2), &Device::Cpu).unwrap();
        let noise = Tensor::from_vec(rng.normals(n * b * 2), (n, b, 2), &Device::Cpu).unwrap();
        for lambda in [0.0, 0.6, 1.0] {
            let (f, s) = nets(3, DType::F64);
            let fused = DiffFlow {
                drift: Box::new(f),
                score: Box::new(s),
                diffusion: g,
            };
            let (f, s) = nets(3, DType::F64);
            let plain = DiffFlow {
                drift: Box::new(Plain(f)),
                score: Box::new(Plain(s)),
                diffusion: g,
            };
            let a = flat(
                &reverse_trajectory_threads(&fused, &z, &steps, lambda, Some(&noise), 1).unwrap(),
            );
            let want = flat(
                &reverse_trajectory_threads(&plain, &z, &steps, lambda, Some(&noise), 1).unwrap(),
            );
            let err = a
                .iter()
                .zip(&want)
                .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
            assert!(err < 1e-12, "lambda {lambda}: {err}");
        }
        let (f, s) = nets(4, DType::F32);
        let fl = DiffFlow {
            drift: Box::new(f),
            score: Box::new(s),
            diffusion: g,
        };
        let (z, noise) = (
            z.to_dtype(DType::F32).unwrap(),
            noise.to_dtype(DType::F32).unwrap(),
        );
        let one = flat(&reverse_trajectory_threads(&fl, &z, &steps, 1.0, Some(&noise), 1).unwrap());
        let three =
            flat(&reverse_trajectory_threads(&fl, &z, &steps, 1.0, Some(&noise), 3).unwrap());
        assert_eq!(one, three);
        assert!(reverse_trajectory_threads(&fl, &z, &steps, 1.0, None, 1).is_err());
    }
}
