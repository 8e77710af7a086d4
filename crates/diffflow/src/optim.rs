//! Adam with visible moments, global-norm gradient clipping, the step learning-rate decay and
//! an exponential moving average of the weights.

use crate::Result;
use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

/// Adam hyper-parameters (PyTorch's defaults for the betas and eps).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdamConfig {
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Denominator offset.
    pub eps: f64,
}

impl Default for AdamConfig {
    fn default() -> Self {
        AdamConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
}

/// Adam over one list of parameters, with its moments exposed (saved in checkpoints).
///
/// Update (PyTorch's form): `m ← β1 m + (1−β1) g`, `v ← β2 v + (1−β2) g²`,
/// `θ ← θ − (lr / (1−β1^k)) · m / (sqrt(v) / sqrt(1−β2^k) + eps)`.
pub struct Adam {
    /// Hyper-parameters.
    pub cfg: AdamConfig,
    /// First moments, one per parameter.
    pub m: Vec<Tensor>,
    /// Second moments, one per parameter.
    pub v: Vec<Tensor>,
    /// Number of updates done.
    pub step: u64,
}

impl Adam {
    /// Zero moments shaped like `vars`.
    pub fn new(vars: &[(String, Var)], cfg: AdamConfig) -> Result<Self> {
        let zeros = vars
            .iter()
            .map(|(_, v)| Ok(v.as_tensor().zeros_like()?))
            .collect::<Result<Vec<_>>>()?;
        Ok(Adam {
            cfg,
            m: zeros.clone(),
            v: zeros,
            step: 0,
        })
    }

    /// One update of `vars` with gradients `grads` (same order) and learning rate `lr`.
    /// The gradients are detached first: a gradient from candle's autograd can carry an op
    /// graph (that of a weight fed straight into a product with an activation), and the
    /// moments would then chain every step's graph (a leak of one step's activations per step).
    pub fn update(&mut self, vars: &[(String, Var)], grads: &[Tensor], lr: f64) -> Result<()> {
        self.step += 1;
        let k = self.step as i32;
        let AdamConfig { beta1, beta2, eps } = self.cfg;
        let bc1 = 1.0 - beta1.powi(k);
        let bc2 = 1.0 - beta2.powi(k);
        for (i, ((_, var), g)) in vars.iter().zip(grads).enumerate() {
            let g = g.detach().to_dtype(var.dtype())?;
            self.m[i] = (self.m[i].affine(beta1, 0.0)? + g.affine(1.0 - beta1, 0.0)?)?;
            self.v[i] = (self.v[i].affine(beta2, 0.0)? + g.sqr()?.affine(1.0 - beta2, 0.0)?)?;
            let denom = self.v[i].sqrt()?.affine(1.0 / bc2.sqrt(), eps)?;
            let delta = (self.m[i].affine(lr / bc1, 0.0)? / denom)?;
            var.set(&(var.as_tensor() - delta)?)?;
        }
        Ok(())
    }
}

/// Global L2 norm of all gradients.
pub fn global_norm(grads: &[&[Tensor]]) -> Result<f64> {
    let mut sq = 0.0;
    for list in grads {
        for g in list.iter() {
            sq += g
                .to_dtype(candle_core::DType::F64)?
                .sqr()?
                .sum_all()?
                .to_scalar::<f64>()?;
        }
    }
    Ok(sq.sqrt())
}

/// Scales all gradients by `max_norm / (norm + 1e-6)` when their global norm exceeds
/// `max_norm` (PyTorch's `clip_grad_norm_`). Returns the norm before clipping.
pub fn clip_global_norm(grads: &mut [&mut Vec<Tensor>], max_norm: f64) -> Result<f64> {
    let norm = {
        let views: Vec<&[Tensor]> = grads.iter().map(|g| g.as_slice()).collect();
        global_norm(&views)?
    };
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        for list in grads.iter_mut() {
            for g in list.iter_mut() {
                *g = g.affine(coef, 0.0)?;
            }
        }
    }
    Ok(norm)
}

/// Learning rate `lr · gamma^floor(step / every)` (step counted from 0).
pub fn step_decay(lr: f64, gamma: f64, every: usize, step: usize) -> f64 {
    match step.checked_div(every) {
        Some(k) => lr * gamma.powi(k as i32),
        None => lr,
    }
}

/// Exponential moving average of the weights with a warm-up: the shadow copies the weights
/// until `start` updates have been seen, then decays with `min(decay, (1 + k) / (10 + k))`
/// where `k` counts the averaged updates.
pub struct Ema {
    /// Target decay.
    pub decay: f64,
    /// Updates before averaging starts.
    pub start: u64,
    /// Shadow weights, one per parameter.
    pub shadow: Vec<Tensor>,
    /// Updates seen.
    pub updates: u64,
}

impl Ema {
    /// Shadow initialised to the current weights.
    pub fn new(vars: &[(String, Var)], decay: f64, start: u64) -> Result<Self> {
        Ok(Ema {
            decay,
            start,
            shadow: vars
                .iter()
                .map(|(_, v)| Ok(v.as_tensor().copy()?.detach()))
                .collect::<Result<Vec<_>>>()?,
            updates: 0,
        })
    }

    /// The decay used at the next update.
    pub fn current_decay(&self) -> f64 {
        if self.updates < self.start {
            0.0
        } else {
            let k = (self.updates - self.start) as f64;
            self.decay.min((1.0 + k) / (10.0 + k))
        }
    }

    /// Moves the shadow toward the current weights. The shadow is detached: an op graph
    /// through the weights (`Var`s) would keep every earlier shadow alive.
    pub fn update(&mut self, vars: &[(String, Var)]) -> Result<()> {
        let d = self.current_decay();
        for (s, (_, v)) in self.shadow.iter_mut().zip(vars) {
            *s = (s.affine(d, 0.0)? + v.as_tensor().detach().affine(1.0 - d, 0.0)?)?.detach();
        }
        self.updates += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn var(v: Vec<f64>) -> Vec<(String, Var)> {
        let n = v.len();
        vec![(
            "p".into(),
            Var::from_tensor(&Tensor::from_vec(v, n, &Device::Cpu).unwrap()).unwrap(),
        )]
    }

    #[test]
    fn adam_matches_closed_form_first_steps() {
        // With a constant gradient g, m̂ = g and v̂ = g² at every step, so each step moves
        // by lr · g / (|g| + eps') where eps' = eps·sqrt(1−β2^k)… check against a scalar loop.
        let vars = var(vec![1.0, -2.0]);
        let mut adam = Adam::new(&vars, AdamConfig::default()).unwrap();
        let g = Tensor::new(&[0.5f64, -3.0], &Device::Cpu).unwrap();
        let (mut p, mut m, mut v) = ([1.0f64, -2.0], [0.0f64; 2], [0.0f64; 2]);
        let gs = [0.5f64, -3.0];
        for k in 1..=5 {
            adam.update(&vars, std::slice::from_ref(&g), 0.1).unwrap();
            for i in 0..2 {
                m[i] = 0.9 * m[i] + 0.1 * gs[i];
                v[i] = 0.999 * v[i] + 0.001 * gs[i] * gs[i];
                let bc1 = 1.0 - 0.9f64.powi(k);
                let bc2 = 1.0 - 0.999f64.powi(k);
                p[i] -= 0.1 / bc1 * m[i] / (v[i].sqrt() / bc2.sqrt() + 1e-8);
            }
        }
        let got = vars[0].1.as_tensor().to_vec1::<f64>().unwrap();
        for i in 0..2 {
            assert!((got[i] - p[i]).abs() < 1e-14, "{got:?} vs {p:?}");
        }
        assert_eq!(adam.step, 5);
    }

    #[test]
    fn clipping_scales_to_max_norm() {
        let mut a = vec![Tensor::new(&[3.0f64, 0.0], &Device::Cpu).unwrap()];
        let mut b = vec![Tensor::new(&[4.0f64], &Device::Cpu).unwrap()];
        let norm = clip_global_norm(&mut [&mut a, &mut b], 1.0).unwrap();
        assert!((norm - 5.0).abs() < 1e-12);
        let after = global_norm(&[&a, &b]).unwrap();
        assert!((after - 5.0 / (5.0 + 1e-6)).abs() < 1e-12);
        // Below the threshold nothing changes.
        let norm = clip_global_norm(&mut [&mut a, &mut b], 10.0).unwrap();
        assert!((norm - after).abs() < 1e-12);
    }

    #[test]
    fn ema_warm_up_and_decay() {
        let vars = var(vec![0.0]);
        let mut ema = Ema::new(&vars, 0.9, 2).unwrap();
        let set = |x: f64| {
            vars[0]
                .1
                .set(&Tensor::new(&[x], &Device::Cpu).unwrap())
                .unwrap()
        };
        set(1.0);
        ema.update(&vars).unwrap(); // copy
        set(2.0);
        ema.update(&vars).unwrap(); // copy
        assert_eq!(ema.shadow[0].to_vec1::<f64>().unwrap(), vec![2.0]);
        assert!((ema.current_decay() - 0.1).abs() < 1e-15); // (1+0)/(10+0)
        set(12.0);
        ema.update(&vars).unwrap(); // 0.1·2 + 0.9·12
        assert!((ema.shadow[0].to_vec1::<f64>().unwrap()[0] - 11.0).abs() < 1e-12);
        ema.updates = 1000;
        assert_eq!(ema.current_decay(), 0.9);
    }

    #[test]
    fn ema_shadow_holds_no_graph() {
        // A shadow that tracked ops would chain every earlier shadow through the op graph: a
        // copy of the weights leaked per update (gigabytes over a tabular run).
        let vars = var(vec![1.0, 2.0]);
        let mut ema = Ema::new(&vars, 0.9, 0).unwrap();
        assert!(!ema.shadow[0].track_op());
        for _ in 0..3 {
            ema.update(&vars).unwrap();
            assert!(!ema.shadow[0].track_op());
        }
    }

    #[test]
    fn adam_moments_hold_no_graph() {
        // `W · x` with x depending on W: the autograd gradient of W tracks ops. Moments built
        // from it kept every step's graph (22 GB during the LeNet training before the fix).
        let vars = var(vec![1.0, 2.0]);
        let mut adam = Adam::new(&vars, AdamConfig::default()).unwrap();
        for _ in 0..3 {
            let w = vars[0].1.as_tensor();
            let x = w.sqr().unwrap();
            let g = (w * x).unwrap().sum_all().unwrap().backward().unwrap();
            let gw = g.get(w).unwrap().clone();
            assert!(gw.track_op(), "the test needs a gradient that tracks ops");
            adam.update(&vars, &[gw], 0.1).unwrap();
            assert!(!adam.m[0].track_op() && !adam.v[0].track_op());
        }
    }

    #[test]
    fn step_decay_schedule() {
        assert_eq!(step_decay(1.0, 0.5, 10, 9), 1.0);
        assert_eq!(step_decay(1.0, 0.5, 10, 10), 0.5);
        assert_eq!(step_decay(1.0, 0.5, 10, 25), 0.25);
        assert_eq!(step_decay(1.0, 0.5, 0, 25), 1.0);
    }
}
