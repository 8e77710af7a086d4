//! A DiffFlow in closed form: Gaussian data, an affine forward drift, and the exact score of
//! the forward marginals, as [`TimeNet`]s. Samplers, likelihoods and the ELBO have known
//! answers on it (tests, sanity checks).
//!
//! In the orthonormal basis `U` (`x = U y`), each coordinate of the forward SDE
//! `dx = (A x + b) dt + g dw`, `A = U diag(α) Uᵀ`, `b = U b'`, is an independent
//! Ornstein–Uhlenbeck process. With `τ = t − t_0` and `φ(k, τ) = (e^{kτ} − 1)/k` (`= τ` at
//! `k = 0`), the marginal of `y_i` is `N(m_i(τ), p_i(τ))` with
//! `m_i = e^{α_i τ} μ'_i + b'_i φ(α_i, τ)` and `p_i = e^{2α_i τ} λ_i + g² φ(2α_i, τ)`.
//! The data variances `λ_i` and the shift `b'` are chosen so that the marginal at `T` is exactly
//! `N(0, I)` (the prior): `λ_i = (1 − g² φ(2α_i, T − t_0)) e^{−2α_i (T − t_0)}`,
//! `b'_i = −e^{α_i (T − t_0)} μ'_i / φ(α_i, T − t_0)`. The score is
//! `s(x, t) = −U diag(1/p) (Uᵀ x − m)`, so `(16)` maps the prior exactly onto the data.

use crate::flow::DiffFlow;
use crate::nn::{Engine, TimeNet};
use crate::sde::Diffusion;
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor, Var};

/// `(e^{kτ} − 1)/k`, continuous at `k = 0`.
fn phi(k: f64, tau: f64) -> f64 {
    if k == 0.0 {
        tau
    } else {
        (k * tau).exp_m1() / k
    }
}

/// The closed-form model of the module docs.
#[derive(Clone, Debug, PartialEq)]
pub struct GaussianFlow {
    dim: usize,
    /// `U` [d, d] row-major, orthonormal columns.
    basis: Vec<f64>,
    /// Rates `α` `[d]` of the drift along the columns of `U`.
    alpha: Vec<f64>,
    /// Data variances `λ` `[d]` along the columns of `U`.
    var0: Vec<f64>,
    /// Data mean in the basis, `μ' = Uᵀ μ` `[d]`.
    mean0: Vec<f64>,
    /// Drift offset in the basis, `b'` `[d]`.
    shift: Vec<f64>,
    g: f64,
    t0: f64,
    t1: f64,
}

impl GaussianFlow {
    /// The model with basis `U` ([d, d] row-major, orthonormal columns), drift rates `alpha`
    /// `[d]`, data mean `mean` `[d]`, constant diffusion `g` on `[t0, t1]`.
    /// Errors: shapes, a non-orthonormal `U`, or rates for which a data variance would be ≤ 0.
    pub fn new(
        basis: &[f64],
        alpha: &[f64],
        mean: &[f64],
        g: f64,
        t0: f64,
        t1: f64,
    ) -> Result<Self> {
        let d = alpha.len();
        if d == 0 || basis.len() != d * d || mean.len() != d {
            return Err(Error::config(format!(
                "Gaussian flow: need alpha [d], basis [d, d], mean [d]; got {}, {}, {}",
                alpha.len(),
                basis.len(),
                mean.len()
            )));
        }
        if !(g.is_finite() && g > 0.0 && t0.is_finite() && t1.is_finite() && t1 > t0) {
            return Err(Error::config(format!(
                "Gaussian flow: need g > 0 and t0 < t1, got g = {g}, t0 = {t0}, t1 = {t1}"
            )));
        }
        for i in 0..d {
            for j in 0..d {
                let dot: f64 = (0..d).map(|k| basis[k * d + i] * basis[k * d + j]).sum();
                let want = if i == j { 1.0 } else { 0.0 };
                if (dot - want).abs() > 1e-12 {
                    return Err(Error::config("Gaussian flow: basis is not orthonormal"));
                }
            }
        }
        let tau = t1 - t0;
        let var0: Vec<f64> = alpha
            .iter()
            .map(|&a| (1.0 - g * g * phi(2.0 * a, tau)) * (-2.0 * a * tau).exp())
            .collect();
        if let Some(i) = var0.iter().position(|v| !(v.is_finite() && *v > 0.0)) {
            return Err(Error::config(format!(
                "Gaussian flow: rate alpha[{i}] = {} gives data variance {} (must be > 0)",
                alpha[i], var0[i]
            )));
        }
        let mut flow = GaussianFlow {
            dim: d,
            basis: basis.to_vec(),
            alpha: alpha.to_vec(),
            var0,
            mean0: vec![0.0; d],
            shift: vec![0.0; d],
            g,
            t0,
            t1,
        };
        flow.mean0 = flow.to_basis(mean);
        flow.shift = (0..d)
            .map(|i| -(alpha[i] * tau).exp() * flow.mean0[i] / phi(alpha[i], tau))
            .collect();
        Ok(flow)
    }

    /// A 2-D model: basis rotated by `angle`, rates `alpha`, data mean `mean`.
    pub fn planar(
        angle: f64,
        alpha: [f64; 2],
        mean: [f64; 2],
        g: f64,
        t0: f64,
        t1: f64,
    ) -> Result<Self> {
        let (s, c) = angle.sin_cos();
        Self::new(&[c, -s, s, c], &alpha, &mean, g, t0, t1)
    }

    /// A 3-D model: basis `Rz(a) · Rx(b)` (rotations about the z and x axes), rates
    /// `alpha`, data mean `mean`.
    pub fn spatial(
        (a, b): (f64, f64),
        alpha: [f64; 3],
        mean: [f64; 3],
        g: f64,
        t0: f64,
        t1: f64,
    ) -> Result<Self> {
        let (sa, ca) = a.sin_cos();
        let (sb, cb) = b.sin_cos();
        let rz = [ca, -sa, 0.0, sa, ca, 0.0, 0.0, 0.0, 1.0];
        let rx = [1.0, 0.0, 0.0, 0.0, cb, -sb, 0.0, sb, cb];
        let mut u = [0.0; 9];
        for i in 0..3 {
            for j in 0..3 {
                u[i * 3 + j] = (0..3).map(|k| rz[i * 3 + k] * rx[k * 3 + j]).sum();
            }
        }
        Self::new(&u, &alpha, &mean, g, t0, t1)
    }

    /// Data dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Diffusion `g`.
    pub fn g(&self) -> f64 {
        self.g
    }

    /// The time interval `[t_0, T]`.
    pub fn span(&self) -> (f64, f64) {
        (self.t0, self.t1)
    }

    /// `Uᵀ x`.
    fn to_basis(&self, x: &[f64]) -> Vec<f64> {
        let d = self.dim;
        (0..d)
            .map(|i| (0..d).map(|k| self.basis[k * d + i] * x[k]).sum())
            .collect()
    }

    /// `U y`.
    fn out_of_basis(&self, y: &[f64]) -> Vec<f64> {
        let d = self.dim;
        (0..d)
            .map(|k| (0..d).map(|i| self.basis[k * d + i] * y[i]).sum())
            .collect()
    }

    /// `U diag(w) Uᵀ` [d, d].
    fn sandwich(&self, w: &[f64]) -> Vec<f64> {
        let d = self.dim;
        let mut m = vec![0.0; d * d];
        for r in 0..d {
            for c in 0..d {
                m[r * d + c] = (0..d)
                    .map(|i| self.basis[r * d + i] * w[i] * self.basis[c * d + i])
                    .sum();
            }
        }
        m
    }

    /// Marginal mean and variances in the basis at time `t`.
    fn marginal_basis(&self, t: f64) -> (Vec<f64>, Vec<f64>) {
        let tau = t - self.t0;
        let g2 = self.g * self.g;
        let m = (0..self.dim)
            .map(|i| {
                let a = self.alpha[i];
                (a * tau).exp() * self.mean0[i] + self.shift[i] * phi(a, tau)
            })
            .collect();
        let p = (0..self.dim)
            .map(|i| {
                let a = self.alpha[i];
                (2.0 * a * tau).exp() * self.var0[i] + g2 * phi(2.0 * a, tau)
            })
            .collect();
        (m, p)
    }

    /// Mean `[d]` of the forward marginal at `t` (the data mean at `t_0`, 0 at `T`).
    pub fn mean_at(&self, t: f64) -> Vec<f64> {
        self.out_of_basis(&self.marginal_basis(t).0)
    }

    /// Covariance [d, d] of the forward marginal at `t` (the identity at `T`).
    pub fn cov_at(&self, t: f64) -> Vec<f64> {
        self.sandwich(&self.marginal_basis(t).1)
    }

    /// `log p_t(x)` of the forward marginal. Shapes: `x` [n, d] → `[n]`.
    pub fn log_density(&self, x: &[f64], t: f64) -> Vec<f64> {
        let (m, p) = self.marginal_basis(t);
        x.chunks_exact(self.dim)
            .map(|row| {
                let y = self.to_basis(row);
                (0..self.dim)
                    .map(|i| {
                        let r = y[i] - m[i];
                        -0.5 * (r * r / p[i] + p[i].ln()) - crate::flow::HALF_LN_2PI
                    })
                    .sum()
            })
            .collect()
    }

    /// `∇·v` of the probability-flow velocity `v = f − ½ g² s` at `t` (the same for all `x`):
    /// `Σ α_i + ½ g² Σ 1/p_i(t)`.
    pub fn pf_divergence(&self, t: f64) -> f64 {
        let p = self.marginal_basis(t).1;
        let g2 = self.g * self.g;
        self.alpha.iter().sum::<f64>() + 0.5 * g2 * p.iter().map(|v| 1.0 / v).sum::<f64>()
    }

    /// `(M, c)` with `net(x, t) = M x + c`: [d, d] row-major and `[d]`.
    pub fn coefficients(&self, field: Field, t: f64) -> (Vec<f64>, Vec<f64>) {
        match field {
            Field::Drift => (self.sandwich(&self.alpha), self.out_of_basis(&self.shift)),
            Field::Score => {
                let (m, p) = self.marginal_basis(t);
                let inv: Vec<f64> = p.iter().map(|v| 1.0 / v).collect();
                let neg: Vec<f64> = inv.iter().map(|v| -v).collect();
                let c: Vec<f64> = m.iter().zip(&inv).map(|(a, b)| a * b).collect();
                (self.sandwich(&neg), self.out_of_basis(&c))
            }
        }
    }

    /// The model as a [`DiffFlow`] (f64) with exact drift and score.
    pub fn flow(&self) -> Result<DiffFlow> {
        Ok(DiffFlow {
            drift: Box::new(AffineField::new(self.clone(), Field::Drift)?),
            score: Box::new(AffineField::new(self.clone(), Field::Score)?),
            diffusion: Diffusion::Constant { value: self.g },
        })
    }
}

/// Which network an [`AffineField`] stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    /// The drift `f(x) = A x + b`.
    Drift,
    /// The exact score of the forward marginals.
    Score,
}

/// Drift or score of a [`GaussianFlow`] as a [`TimeNet`] without trainable parameters; its
/// defining numbers are f64 buffers.
pub struct AffineField {
    model: GaussianFlow,
    field: Field,
    buffers: Vec<(String, Var)>,
}

impl AffineField {
    /// The field `field` of `model`.
    pub fn new(model: GaussianFlow, field: Field) -> Result<Self> {
        let d = model.dim;
        let dev = Device::Cpu;
        let mk = |v: &[f64], shape: &[usize]| -> Result<Var> {
            Ok(Var::from_tensor(&Tensor::from_slice(v, shape, &dev)?)?)
        };
        let buffers = vec![
            ("basis".to_string(), mk(&model.basis, &[d, d])?),
            ("alpha".to_string(), mk(&model.alpha, &[d])?),
            ("var0".to_string(), mk(&model.var0, &[d])?),
            ("mean0".to_string(), mk(&model.mean0, &[d])?),
        ];
        Ok(AffineField {
            model,
            field,
            buffers,
        })
    }
}

impl TimeNet for AffineField {
    fn dim(&self) -> usize {
        self.model.dim
    }

    fn vars(&self) -> &[(String, Var)] {
        &[]
    }

    fn buffers(&self) -> &[(String, Var)] {
        &self.buffers
    }

    fn forward(&self, x: &Tensor, t: f64) -> Result<Tensor> {
        let d = self.model.dim;
        let (m, c) = self.model.coefficients(self.field, t);
        let dt = x.dtype();
        let m = Tensor::from_vec(m, (d, d), &Device::Cpu)?.to_dtype(dt)?;
        let c = Tensor::from_vec(c, (1, d), &Device::Cpu)?.to_dtype(dt)?;
        Ok(x.matmul(&m.t()?)?.broadcast_add(&c)?)
    }

    fn engine(&self) -> Result<Box<dyn Engine + '_>> {
        Ok(Box::new(AffineEngine {
            field: self,
            kept: None,
        }))
    }
}

/// Graph-free evaluation with the exact vector-Jacobian product `cotᵀ M`.
struct AffineEngine<'a> {
    field: &'a AffineField,
    /// `M` of the kept evaluation and its number of rows.
    kept: Option<(Vec<f64>, usize)>,
}

impl AffineEngine<'_> {
    fn apply(&self, x: &Tensor, t: f64) -> Result<(Tensor, Vec<f64>, usize)> {
        let d = self.field.model.dim;
        let (rows, cols) = x.dims2()?;
        if cols != d {
            return Err(Error::data(format!(
                "field expects {d} columns, got {cols}"
            )));
        }
        let (m, c) = self.field.model.coefficients(self.field.field, t);
        let xv = x.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
        let mut y = vec![0.0; rows * d];
        for (yr, xr) in y.chunks_exact_mut(d).zip(xv.chunks_exact(d)) {
            for (i, yi) in yr.iter_mut().enumerate() {
                *yi = c[i] + (0..d).map(|j| m[i * d + j] * xr[j]).sum::<f64>();
            }
        }
        Ok((Tensor::from_vec(y, (rows, d), &Device::Cpu)?, m, rows))
    }
}

impl Engine for AffineEngine<'_> {
    fn eval(&mut self, x: &Tensor, t: f64) -> Result<Tensor> {
        Ok(self.apply(x, t)?.0)
    }

    fn eval_keep(&mut self, x: &Tensor, t: f64) -> Result<Tensor> {
        let (y, m, rows) = self.apply(x, t)?;
        self.kept = Some((m, rows));
        Ok(y)
    }

    fn pullback(&mut self, cot: &Tensor, _params: bool) -> Result<Tensor> {
        let d = self.field.model.dim;
        let (m, rows) = self
            .kept
            .as_ref()
            .ok_or_else(|| Error::config("pullback without a kept evaluation"))?;
        if cot.dims() != [*rows, d] {
            return Err(Error::data(format!(
                "cotangent shape {:?} does not match the kept evaluation [{rows}, {d}]",
                cot.dims()
            )));
        }
        let cv = cot.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
        let mut out = vec![0.0; rows * d];
        for (o, cr) in out.chunks_exact_mut(d).zip(cv.chunks_exact(d)) {
            for (j, oj) in o.iter_mut().enumerate() {
                *oj = (0..d).map(|i| cr[i] * m[i * d + j]).sum();
            }
        }
        Ok(Tensor::from_vec(out, (*rows, d), &Device::Cpu)?)
    }

    fn take_grads(&mut self) -> Result<Vec<Tensor>> {
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::AutogradEngine;

    fn model() -> GaussianFlow {
        GaussianFlow::planar(0.6, [3.0, -1.0], [0.7, -0.4], 0.5, 0.01, 0.5).unwrap()
    }

    #[test]
    fn marginals_start_at_the_data_and_end_at_the_prior() {
        let m = model();
        let cov = m.cov_at(0.5);
        let mean = m.mean_at(0.5);
        for i in 0..2 {
            assert!(mean[i].abs() < 1e-14, "{mean:?}");
            for j in 0..2 {
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((cov[i * 2 + j] - want).abs() < 1e-14, "{cov:?}");
            }
        }
        let mean0 = m.mean_at(0.01);
        assert!((mean0[0] - 0.7).abs() < 1e-14 && (mean0[1] + 0.4).abs() < 1e-14);
    }

    #[test]
    fn marginals_solve_their_moment_equations() {
        // dm/dt = A m + b, dP/dt = A P + P Aᵀ + g² I, by central differences.
        let m = model();
        let (a, b) = m.coefficients(Field::Drift, 0.0);
        let (t, h) = (0.2, 1e-5);
        let dm: Vec<f64> = (0..2)
            .map(|i| (m.mean_at(t + h)[i] - m.mean_at(t - h)[i]) / (2.0 * h))
            .collect();
        let mt = m.mean_at(t);
        for i in 0..2 {
            let want = a[i * 2] * mt[0] + a[i * 2 + 1] * mt[1] + b[i];
            assert!((dm[i] - want).abs() < 1e-7, "{i}: {} vs {want}", dm[i]);
        }
        let p = m.cov_at(t);
        for i in 0..2 {
            for j in 0..2 {
                let dp = (m.cov_at(t + h)[i * 2 + j] - m.cov_at(t - h)[i * 2 + j]) / (2.0 * h);
                let ap: f64 = (0..2).map(|k| a[i * 2 + k] * p[k * 2 + j]).sum();
                let pa: f64 = (0..2).map(|k| p[i * 2 + k] * a[j * 2 + k]).sum();
                let want = ap + pa + if i == j { 0.25 } else { 0.0 };
                assert!((dp - want).abs() < 1e-6, "({i},{j}): {dp} vs {want}");
            }
        }
    }

    #[test]
    fn score_is_the_gradient_of_the_log_density() {
        let m = model();
        let x = [0.3, -1.2];
        let (s, c) = m.coefficients(Field::Score, 0.2);
        let h = 1e-6;
        for k in 0..2 {
            let mut xp = x;
            let mut xm = x;
            xp[k] += h;
            xm[k] -= h;
            let fd = (m.log_density(&xp, 0.2)[0] - m.log_density(&xm, 0.2)[0]) / (2.0 * h);
            let want = s[k * 2] * x[0] + s[k * 2 + 1] * x[1] + c[k];
            assert!((fd - want).abs() < 1e-7, "{fd} vs {want}");
        }
    }

    #[test]
    fn engine_matches_autograd() {
        let m = model();
        let f = AffineField::new(m, Field::Score).unwrap();
        let x =
            Tensor::from_vec(vec![0.1, 0.2, -0.3, 0.4, 1.0, -2.0], (3, 2), &Device::Cpu).unwrap();
        let cot =
            Tensor::from_vec(vec![1.0, 0.5, -1.0, 2.0, 0.0, 1.0], (3, 2), &Device::Cpu).unwrap();
        let mut e = f.engine().unwrap();
        let mut a = AutogradEngine::new(&f);
        let y1 = e.eval_keep(&x, 0.3).unwrap();
        let y2 = a.eval_keep(&x, 0.3).unwrap();
        let p1 = e.pullback(&cot, false).unwrap();
        let p2 = a.pullback(&cot, false).unwrap();
        let diff = |u: &Tensor, v: &Tensor| {
            (u - v)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        assert!(diff(&y1, &y2) < 1e-14);
        assert!(diff(&p1, &p2) < 1e-14);
    }

    #[test]
    fn bad_parameters_are_errors() {
        assert!(GaussianFlow::new(
            &[1.0, 1.0, 0.0, 1.0],
            &[0.0, 0.0],
            &[0.0, 0.0],
            0.1,
            0.0,
            1.0
        )
        .is_err());
        // More noise than the unit variance at T allows: the data variance would be < 0.
        assert!(GaussianFlow::planar(0.0, [0.0, 0.0], [0.0, 0.0], 2.0, 0.0, 1.0).is_err());
    }
}
