//! DDPM on the variance-preserving SDE (Ho et al. 2020; Song et al. 2021, VP SDE):
//! `dx = −½ β(t) x dt + sqrt(β(t)) dw` with `β(t) = β_min + t (β_max − β_min)` on
//! `t ∈ [ε, 1]` (β_min = 0.1, β_max = 20). Its marginals given the data are closed-form:
//! `x_t = α_t x_0 + σ_t ε` with `α_t = exp(−½ ∫_0^t β)`, `σ_t² = 1 − α_t²`.
//!
//! The model is a [`DiffFlow`] whose drift is the frozen [`VpDrift`] (no parameters) and
//! whose score is an [`EpsScore`]: one MLP `ε_θ(x, t)` with `s = −ε_θ / σ_t`. It is trained
//! either by DiffFlow's trajectory loss (15) ("DDPM (L)": the ordinary
//! [`crate::train::Trainer`], whose adjoint works unchanged with a parameter-free drift) or
//! by the ε-prediction loss ("DDPM (L_s)", [`EpsTrainer`]):
//! `E_{t, x_0, ε} ‖ε_θ(α_t x_0 + σ_t ε, t) − ε‖²` = `‖σ_t s_θ + ε‖²` (for any score net).
//!
//! Our [`TimeNet`]s take ONE time per batch. The ε loss draws several times per batch by
//! splitting the batch into `groups` equal groups of rows, group `k` at its own time
//! `t_k = ε + (k + u_k)(1 − ε)/G`, `u_k ~ U[0, 1)` (stratified, so each batch covers the whole
//! interval).

use super::sum_grads;
use crate::nn::{Engine, TimeNet};
use crate::par::par_map;
use crate::rng::Rng;
use crate::sde::Diffusion;
use crate::{Error, Result};
use candle_core::{DType, Tensor, Var};

/// The linear β schedule of the VP SDE.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VpSchedule {
    /// `β(0)`.
    pub beta_min: f64,
    /// `β(1)`.
    pub beta_max: f64,
}

impl VpSchedule {
    /// The schedule of a [`Diffusion::Vp`]; other diffusions are an error.
    pub fn from_diffusion(g: &Diffusion) -> Result<Self> {
        match *g {
            Diffusion::Vp { beta_min, beta_max } => Ok(VpSchedule { beta_min, beta_max }),
            other => Err(Error::config(format!(
                "DDPM needs the VP diffusion (g = vp), got {other:?}"
            ))),
        }
    }

    /// `β(t) = β_min + t (β_max − β_min)`.
    pub fn beta(&self, t: f64) -> f64 {
        self.beta_min + t * (self.beta_max - self.beta_min)
    }

    /// `∫_0^t β = β_min t + ½ (β_max − β_min) t²`.
    pub fn int_beta(&self, t: f64) -> f64 {
        self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t * t
    }

    /// `α_t = exp(−½ ∫_0^t β)`.
    pub fn alpha(&self, t: f64) -> f64 {
        (-0.5 * self.int_beta(t)).exp()
    }

    /// The time `t` at which `α_t = alpha` (`0 < alpha <= 1`): the positive root of
    /// `∫_0^t β = −2 ln alpha`.
    pub fn time_of_alpha(&self, alpha: f64) -> f64 {
        let c = -2.0 * alpha.ln();
        let slope = self.beta_max - self.beta_min;
        if slope.abs() < 1e-12 {
            return c / self.beta_min;
        }
        (-self.beta_min + (self.beta_min * self.beta_min + 2.0 * slope * c).sqrt()) / slope
    }

    /// `σ_t = sqrt(1 − α_t²)` (computed as `sqrt(−expm1(−∫β))`, accurate for small `t`).
    pub fn sigma(&self, t: f64) -> f64 {
        (-(-self.int_beta(t)).exp_m1()).sqrt()
    }
}

/// The frozen VP drift `f(x, t) = −½ β(t) x`: a [`TimeNet`] without parameters.
pub struct VpDrift {
    dim: usize,
    schedule: VpSchedule,
}

impl VpDrift {
    /// The drift for data dimension `dim`.
    pub fn new(dim: usize, schedule: VpSchedule) -> Self {
        VpDrift { dim, schedule }
    }
}

impl TimeNet for VpDrift {
    fn dim(&self) -> usize {
        self.dim
    }

    fn vars(&self) -> &[(String, Var)] {
        &[]
    }

    fn forward(&self, x: &Tensor, t: f64) -> Result<Tensor> {
        Ok(x.affine(-0.5 * self.schedule.beta(t), 0.0)?)
    }

    fn engine(&self) -> Result<Box<dyn Engine + '_>> {
        Ok(Box::new(ScaleEngine {
            schedule: self.schedule,
            kept: None,
        }))
    }
}

/// Engine of [`VpDrift`]: `y = c x`, `(∂y/∂x)ᵀ cot = c cot` with `c = −β(t)/2`.
struct ScaleEngine {
    schedule: VpSchedule,
    kept: Option<f64>,
}

impl Engine for ScaleEngine {
    fn eval(&mut self, x: &Tensor, t: f64) -> Result<Tensor> {
        Ok(x.affine(-0.5 * self.schedule.beta(t), 0.0)?)
    }

    fn eval_keep(&mut self, x: &Tensor, t: f64) -> Result<Tensor> {
        let c = -0.5 * self.schedule.beta(t);
        self.kept = Some(c);
        Ok(x.affine(c, 0.0)?)
    }

    fn pullback(&mut self, cot: &Tensor, _params: bool) -> Result<Tensor> {
        let c = self
            .kept
            .ok_or_else(|| Error::config("pullback without a kept evaluation"))?;
        Ok(cot.affine(c, 0.0)?)
    }

    fn take_grads(&mut self) -> Result<Vec<Tensor>> {
        Ok(Vec::new())
    }
}

/// The ε-parametrised score `s(x, t) = −ε_θ(x, t) / σ_t` around a net `ε_θ` (whose
/// parameters and buffers it exposes under their own names).
pub struct EpsScore {
    net: Box<dyn TimeNet>,
    schedule: VpSchedule,
}

impl EpsScore {
    /// The score of the ε-network `net`.
    pub fn new(net: Box<dyn TimeNet>, schedule: VpSchedule) -> Self {
        EpsScore { net, schedule }
    }

    /// The network `ε_θ`.
    pub fn eps_net(&self) -> &dyn TimeNet {
        self.net.as_ref()
    }

    fn scale(&self, t: f64) -> f64 {
        -1.0 / self.schedule.sigma(t)
    }
}

impl TimeNet for EpsScore {
    fn dim(&self) -> usize {
        self.net.dim()
    }

    fn vars(&self) -> &[(String, Var)] {
        self.net.vars()
    }

    fn buffers(&self) -> &[(String, Var)] {
        self.net.buffers()
    }

    fn forward(&self, x: &Tensor, t: f64) -> Result<Tensor> {
        Ok(self.net.forward(x, t)?.affine(self.scale(t), 0.0)?)
    }

    fn engine(&self) -> Result<Box<dyn Engine + '_>> {
        Ok(Box::new(ScaledEngine {
            inner: self.net.engine()?,
            score: self,
            kept: None,
        }))
    }

    fn set_dropout_seed(&self, seed: Option<u64>) {
        self.net.set_dropout_seed(seed);
    }
}

/// Engine of [`EpsScore`]: the inner net's engine, output and cotangent scaled by `−1/σ_t`.
struct ScaledEngine<'a> {
    inner: Box<dyn Engine + 'a>,
    score: &'a EpsScore,
    kept: Option<f64>,
}

impl Engine for ScaledEngine<'_> {
    fn eval(&mut self, x: &Tensor, t: f64) -> Result<Tensor> {
        Ok(self.inner.eval(x, t)?.affine(self.score.scale(t), 0.0)?)
    }

    fn eval_keep(&mut self, x: &Tensor, t: f64) -> Result<Tensor> {
        let c = self.score.scale(t);
        self.kept = Some(c);
        Ok(self.inner.eval_keep(x, t)?.affine(c, 0.0)?)
    }

    fn pullback(&mut self, cot: &Tensor, params: bool) -> Result<Tensor> {
        let c = self
            .kept
            .ok_or_else(|| Error::config("pullback without a kept evaluation"))?;
        self.inner.pullback(&cot.affine(c, 0.0)?, params)
    }

    fn take_grads(&mut self) -> Result<Vec<Tensor>> {
        self.inner.take_grads()
    }
}

/// The closed-form forward marginal: `x_t = α_t x_0 + σ_t ε`. Shapes: [B, d] → [B, d].
pub fn perturb(schedule: &VpSchedule, x0: &Tensor, eps: &Tensor, t: f64) -> Result<Tensor> {
    Ok((x0.affine(schedule.alpha(t), 0.0)? + eps.affine(schedule.sigma(t), 0.0)?)?)
}

/// The stratified times of one batch: `t_k = t_min + (k + u_k)(t_max − t_min)/G`.
pub fn group_times(groups: usize, t_min: f64, t_max: f64, rng: &mut Rng) -> Vec<f64> {
    let w = (t_max - t_min) / groups as f64;
    (0..groups)
        .map(|k| t_min + (k as f64 + rng.uniform()) * w)
        .collect()
}

/// The ε loss of one batch and its gradient w.r.t. the score's parameters. Rows are split
/// into `times.len()` contiguous groups (sizes differ by at most one), group `k` perturbed
/// to time `times[k]` with the noises `eps`; per row the loss is `‖σ_t s_θ(x_t, t) + ε‖²`
/// (= `‖ε − ε_θ(x_t, t)‖²` for an [`EpsScore`]). Returns the batch mean and its gradient
/// (in [`TimeNet::vars`] order). Groups are computed `threads` at a time, each with its own
/// engine, and summed in group order (the result does not depend on `threads`).
/// Shapes: `x0`, `eps` [B, d].
pub fn eps_loss_gradient(
    score: &dyn TimeNet,
    schedule: &VpSchedule,
    x0: &Tensor,
    eps: &Tensor,
    times: &[f64],
    threads: usize,
) -> Result<(f64, Vec<Tensor>)> {
    let b = x0.dim(0)?;
    let g = times.len();
    if g == 0 || g > b {
        return Err(Error::config(format!(
            "the ε loss needs 1 <= groups <= batch, got {g} groups for {b} rows"
        )));
    }
    if eps.dims() != x0.dims() {
        return Err(Error::data(format!(
            "noise shape {:?} differs from the batch {:?}",
            eps.dims(),
            x0.dims()
        )));
    }
    let work = |k: usize| -> Result<(f64, Vec<Tensor>)> {
        let (lo, hi) = (k * b / g, (k + 1) * b / g);
        let t = times[k];
        let sigma = schedule.sigma(t);
        let x = x0.narrow(0, lo, hi - lo)?;
        let e = eps.narrow(0, lo, hi - lo)?;
        let xt = perturb(schedule, &x, &e, t)?;
        let mut engine = score.engine()?;
        let s = engine.eval_keep(&xt, t)?;
        let r = (s.affine(sigma, 0.0)? + &e)?;
        let loss = r
            .sqr()?
            .sum_all()?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
        engine.pullback(&r.affine(2.0 * sigma / b as f64, 0.0)?, true)?;
        Ok((loss / b as f64, engine.take_grads()?))
    };
    let parts = par_map(g, threads, &work)?;
    let loss = parts.iter().map(|p| p.0).sum();
    let grads = sum_grads(parts.into_iter().map(|p| p.1).collect())?;
    Ok((loss, grads))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::{AutogradEngine, Mlp, MlpConfig};
    use candle_core::Device;

    fn sched() -> VpSchedule {
        VpSchedule {
            beta_min: 0.1,
            beta_max: 20.0,
        }
    }

    #[test]
    fn schedule_closed_forms() {
        let s = sched();
        let t: f64 = 0.3;
        let ib = 0.1 * t + 0.5 * 19.9 * t * t;
        assert!((s.int_beta(t) - ib).abs() < 1e-15);
        assert!((s.alpha(t) - (-0.5 * ib).exp()).abs() < 1e-15);
        assert!((s.alpha(t).powi(2) + s.sigma(t).powi(2) - 1.0).abs() < 1e-15);
        // dα/dt = −½ β α (central differences).
        let h = 1e-6;
        let da = (s.alpha(t + h) - s.alpha(t - h)) / (2.0 * h);
        assert!((da + 0.5 * s.beta(t) * s.alpha(t)).abs() < 1e-8);
        // Small t: σ² ≈ β_min t, without cancellation.
        let tiny = 1e-9;
        assert!((s.sigma(tiny).powi(2) / (0.1 * tiny) - 1.0).abs() < 1e-6);
        assert!(VpSchedule::from_diffusion(&Diffusion::Constant { value: 0.2 }).is_err());
    }

    fn diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    }

    #[test]
    fn engines_match_autograd() {
        let dev = Device::Cpu;
        let mut rng = Rng::new(3);
        let x = Tensor::from_vec(rng.normals(10), (5, 2), &dev).unwrap();
        let cot = Tensor::from_vec(rng.normals(10), (5, 2), &dev).unwrap();
        let cfg = MlpConfig {
            width: 8,
            depth: 1,
            fourier: 4,
            ..MlpConfig::paper_2d()
        };
        let drift = VpDrift::new(2, sched());
        let score = EpsScore::new(
            Box::new(Mlp::new(2, &cfg, DType::F64, &mut rng).unwrap()),
            sched(),
        );
        for net in [&drift as &dyn TimeNet, &score as &dyn TimeNet] {
            let mut e = net.engine().unwrap();
            let mut a = AutogradEngine::new(net);
            let y1 = e.eval_keep(&x, 0.37).unwrap();
            let y2 = a.eval_keep(&x, 0.37).unwrap();
            assert!(diff(&y1, &y2) < 1e-12);
            assert!(diff(&e.eval(&x, 0.37).unwrap(), &y2) < 1e-12);
            let p1 = e.pullback(&cot, true).unwrap();
            let p2 = a.pullback(&cot, true).unwrap();
            assert!(diff(&p1, &p2) < 1e-12);
            for (g1, g2) in e
                .take_grads()
                .unwrap()
                .iter()
                .zip(a.take_grads().unwrap().iter())
            {
                assert!(diff(g1, g2) < 1e-12);
            }
        }
        // The VP drift is −β(t) x / 2.
        let y = drift.forward(&x, 0.5).unwrap();
        assert!(diff(&y, &x.affine(-0.5 * sched().beta(0.5), 0.0).unwrap()) < 1e-15);
    }

    #[test]
    fn eps_loss_gradient_matches_autograd_and_threads() {
        let dev = Device::Cpu;
        let mut rng = Rng::new(5);
        let cfg = MlpConfig {
            width: 16,
            depth: 2,
            fourier: 6,
            ..MlpConfig::paper_2d()
        };
        let score = EpsScore::new(
            Box::new(Mlp::new(2, &cfg, DType::F64, &mut rng).unwrap()),
            sched(),
        );
        let (b, g) = (13, 3);
        let x0 = Tensor::from_vec(rng.normals(2 * b), (b, 2), &dev).unwrap();
        let eps = Tensor::from_vec(rng.normals(2 * b), (b, 2), &dev).unwrap();
        let times = group_times(g, 1e-3, 1.0, &mut rng);
        let (loss, grads) = eps_loss_gradient(&score, &sched(), &x0, &eps, &times, 1).unwrap();
        let (loss2, grads2) = eps_loss_gradient(&score, &sched(), &x0, &eps, &times, 2).unwrap();
        assert_eq!(loss, loss2);
        // Autograd on the plain ε loss ‖ε − ε_θ(x_t, t)‖², batch mean.
        let mut total: Option<Tensor> = None;
        for (k, &tk) in times.iter().enumerate() {
            let (lo, hi) = (k * b / g, (k + 1) * b / g);
            let x = x0.narrow(0, lo, hi - lo).unwrap();
            let e = eps.narrow(0, lo, hi - lo).unwrap();
            let xt = perturb(&sched(), &x, &e, tk).unwrap();
            let pred = score.eps_net().forward(&xt, tk).unwrap();
            let term = (pred - &e).unwrap().sqr().unwrap().sum_all().unwrap();
            total = Some(match total {
                Some(t) => (t + term).unwrap(),
                None => term,
            });
        }
        let total = total.unwrap().affine(1.0 / b as f64, 0.0).unwrap();
        assert!((total.to_scalar::<f64>().unwrap() - loss).abs() < 1e-12);
        let store = total.backward().unwrap();
        for ((_, v), (g1, g2)) in score.vars().iter().zip(grads.iter().zip(grads2.iter())) {
            let want = store.get(v.as_tensor()).unwrap();
            let scale = want
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap();
            assert!(diff(g1, want) <= 1e-10 * scale.max(1.0));
            assert_eq!(diff(g1, g2), 0.0);
        }
        // Bad group counts are errors.
        assert!(eps_loss_gradient(&score, &sched(), &x0, &eps, &[], 1).is_err());
    }

    #[test]
    fn group_times_are_stratified() {
        let mut rng = Rng::new(1);
        for _ in 0..20 {
            let t = group_times(4, 0.001, 1.0, &mut rng);
            for (k, tk) in t.iter().enumerate() {
                let lo = 0.001 + k as f64 * 0.999 / 4.0;
                assert!(*tk >= lo && *tk <= lo + 0.999 / 4.0);
            }
        }
    }
}
