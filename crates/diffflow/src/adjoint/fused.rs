//! The stochastic adjoint of [`super::adjoint_chunk`] on the fused MLP engine, over plain
//! slices: the batch is cut into tiles of at most [`TILE_ROWS`] rows (so that one tile's
//! activations stay in the core's cache), worker threads take tiles from a shared counter
//! (so a busy core slows one worker, not the whole step), and the per-tile gradients are
//! summed in tile order (so the result does not depend on the number of threads). The drift
//! activations of the graph-free forward pass are kept for the sweep while they fit in
//! [`TAPE_CACHE_BYTES`] per worker, which saves up to N of the 7N network passes; beyond that
//! they are recomputed, so memory stays flat in N.
//!
//! Precision: the networks run in `T`; everything else is f64 (the per-row states, backward
//! noises and adjoints, the sums of the nodes' and tiles' gradients, the time paths). For
//! `T = f32` this is what keeps the gradient as close to the f64 one as the f32 network
//! passes allow: the backward noise divides `x_i − x_{i+1}` by `g √Δt` (about 0.01), the
//! adjoint's `±u` terms cancel to a small remainder, and the drift's gradient is a sum over
//! the nodes of terms that nearly cancel (see `tests/reference_vectors.rs`).

use super::{Gradient, LossParts};
use crate::flow::{log_g_ratio_sum, Steps, HALF_LN_2PI};
use crate::nn::{drain_into, Mlp, MlpEngine, Real, Scratch, Tape, TimeFeatures, TimeNet};
use crate::{Error, Result};
use candle_core::{Storage, StorageRef, Tensor};
use std::any::Any;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Largest number of rows of one tile.
pub const TILE_ROWS: usize = 128;

/// Bytes of forward-pass activations one worker keeps for the backward sweep.
pub const TAPE_CACHE_BYTES: usize = 16 << 20;

/// The tiles of a batch of `b` rows: each of the `chunks` contiguous pieces cut into equal
/// tiles of at most [`TILE_ROWS`] rows. Returns `(start, end)` row ranges in order.
pub fn tiles(b: usize, chunks: usize) -> Vec<(usize, usize)> {
    tiles_of(b, chunks, TILE_ROWS)
}

/// [`tiles`] with tiles of at most `tile_rows` rows.
pub(crate) fn tiles_of(b: usize, chunks: usize, tile_rows: usize) -> Vec<(usize, usize)> {
    let chunks = chunks.clamp(1, b.max(1));
    let mut out = Vec::new();
    for c in 0..chunks {
        let (lo, hi) = (c * b / chunks, (c + 1) * b / chunks);
        let len = hi - lo;
        let k = len.div_ceil(tile_rows.max(1)).max(1);
        for i in 0..k {
            out.push((lo + i * len / k, lo + (i + 1) * len / k));
        }
    }
    out
}

/// How many nodes' forward-pass drift activations the fused adjoint keeps (the rest are
/// recomputed in the sweep), for nets of width `h`, depth `depth`, dimension `d`, elements of
/// `elem_bytes` bytes, the largest tile of [`tiles`]`(batch, chunks)` and N = `n`.
pub fn cached_nodes(
    h: usize,
    depth: usize,
    d: usize,
    elem_bytes: usize,
    batch: usize,
    chunks: usize,
    n: usize,
) -> usize {
    let rows = tiles(batch, chunks)
        .iter()
        .map(|(lo, hi)| hi - lo)
        .max()
        .unwrap_or(0);
    let tape = elem_bytes * rows * (d + 2 * (depth + 1) * h);
    (TAPE_CACHE_BYTES / tape.max(1)).min(n)
}

/// One tile's contribution, summed in f64: loss sums and parameter gradients, with the
/// cotangents of the first layers' biases per node (the time paths are pulled back once,
/// after summing).
struct Part {
    prior: f64,
    path: f64,
    drift: Vec<Vec<f64>>,
    score: Vec<Vec<f64>>,
    /// `[N + 1, H]` each.
    dh_drift: Vec<f64>,
    dh_score: Vec<f64>,
}

impl Part {
    fn new<T: Real>(fe: &MlpEngine<T>, se: &MlpEngine<T>, nodes: usize, h: usize) -> Self {
        Part {
            prior: 0.0,
            path: 0.0,
            drift: fe.zero_grads(),
            score: se.zero_grads(),
            dh_drift: vec![0.0; nodes * h],
            dh_score: vec![0.0; nodes * h],
        }
    }

    fn clear(&mut self) {
        self.prior = 0.0;
        self.path = 0.0;
        for v in self.drift.iter_mut().chain(self.score.iter_mut()) {
            v.fill(0.0);
        }
        self.dh_drift.fill(0.0);
        self.dh_score.fill(0.0);
    }

    fn add(&mut self, o: &Part) {
        self.prior += o.prior;
        self.path += o.path;
        let pairs = self
            .drift
            .iter_mut()
            .chain(self.score.iter_mut())
            .zip(o.drift.iter().chain(o.score.iter()));
        for (a, b) in pairs {
            for (x, y) in a.iter_mut().zip(b) {
                *x += *y;
            }
        }
        for (x, y) in self.dh_drift.iter_mut().zip(&o.dh_drift) {
            *x += *y;
        }
        for (x, y) in self.dh_score.iter_mut().zip(&o.dh_score) {
            *x += *y;
        }
    }
}

/// Tiles finished out of order wait here until all earlier ones are summed.
struct Reducer {
    next: usize,
    pending: Vec<Option<Part>>,
    total: Option<Part>,
    spare: Vec<Part>,
}

impl Reducer {
    fn push(&mut self, i: usize, part: Part) {
        self.pending[i] = Some(part);
        while let Some(p) = self.pending.get_mut(self.next).and_then(Option::take) {
            match self.total.as_mut() {
                None => self.total = Some(p),
                Some(t) => {
                    t.add(&p);
                    let mut p = p;
                    p.clear();
                    self.spare.push(p);
                }
            }
            self.next += 1;
        }
    }
}

/// Buffers of one worker thread, reused across its tiles. The per-row quantities of the
/// trajectory (states, backward noises, adjoints: `d` numbers per row) are held in f64
/// whatever `T`: they cost `O(N·B·d)` operations against the networks' `O(N·B·H²)`, and
/// in `T = f32` they would lose what the differences `x_i − x_{i+1}` (divided by
/// `g √Δt`) and the adjoint's cancelling `±u` terms need.
struct Worker<T> {
    /// Kept drift activations of the forward pass, for nodes `first_cached .. N`.
    cache: Vec<Tape<T>>,
    tape_f: Tape<T>,
    tape_s: Tape<T>,
    scratch: Scratch<T>,
    /// States `x_0 … x_N`, in f64 and as the networks' input `T`, and the drift values
    /// `f(x_i, t_i)`: `[N + 1, rows, d]` each.
    states: Vec<f64>,
    xs: Vec<T>,
    fvals: Vec<T>,
    s: Vec<T>,
    u: Vec<f64>,
    u_next: Vec<f64>,
    /// The drift's cotangent before it is rounded to `cot_f`.
    cf: Vec<f64>,
    cot_f: Vec<T>,
    cot_s: Vec<T>,
    a: Vec<f64>,
    a_next: Vec<f64>,
    dx: Vec<T>,
    /// One node's parameter gradients and first-layer bias cotangent, in `T`, before they
    /// are added to the tile's f64 sums.
    node_f: Vec<Vec<T>>,
    node_s: Vec<Vec<T>>,
    dh: Vec<T>,
}

impl<T: Real> Worker<T> {
    fn new(cached: usize) -> Self {
        Worker {
            cache: (0..cached).map(|_| Tape::default()).collect(),
            tape_f: Tape::default(),
            tape_s: Tape::default(),
            scratch: Scratch::default(),
            states: Vec::new(),
            xs: Vec::new(),
            fvals: Vec::new(),
            s: Vec::new(),
            u: Vec::new(),
            u_next: Vec::new(),
            cf: Vec::new(),
            cot_f: Vec::new(),
            cot_s: Vec::new(),
            a: Vec::new(),
            a_next: Vec::new(),
            dx: Vec::new(),
            node_f: Vec::new(),
            node_s: Vec::new(),
            dh: Vec::new(),
        }
    }
}

/// What every tile shares: engines, time features, inputs.
struct Shared<'a, T> {
    fe: &'a MlpEngine<T>,
    se: &'a MlpEngine<T>,
    tf_f: &'a [TimeFeatures<T>],
    tf_s: &'a [TimeFeatures<T>],
    steps: &'a Steps,
    x0: &'a [T],
    noise: &'a [T],
    b: usize,
    d: usize,
    h: usize,
    weight: f64,
    first_cached: usize,
}

/// `v` cleared and refilled with `len` zeros (keeps its allocation).
fn fit<U: Real>(v: &mut Vec<U>, len: usize) {
    v.clear();
    v.resize(len, U::zero());
}

/// Adjoint sweep of one tile of rows `lo..hi` (see [`super::adjoint_chunk`]; the same
/// operations in the same order, on slices, with the per-row quantities in f64).
fn run_tile<T: Real>(sh: &Shared<T>, w: &mut Worker<T>, (lo, hi): (usize, usize), part: &mut Part) {
    let (d, h, n) = (sh.d, sh.h, sh.steps.n());
    let rd = (hi - lo) * d;
    // (Zero after every node: `drain_grads` clears what `backward` writes.)
    if !sh.fe.fits_grads(&w.node_f) {
        w.node_f = sh.fe.zero_grads();
    }
    if !sh.se.fits_grads(&w.node_s) {
        w.node_s = sh.se.zero_grads();
    }
    fit(&mut w.dh, h);
    fit(&mut w.states, (n + 1) * rd);
    fit(&mut w.xs, (n + 1) * rd);
    fit(&mut w.fvals, (n + 1) * rd);
    for v in [&mut w.s, &mut w.cot_f, &mut w.cot_s, &mut w.dx] {
        fit(v, rd);
    }
    for v in [&mut w.u, &mut w.u_next, &mut w.cf, &mut w.a, &mut w.a_next] {
        fit(v, rd);
    }
    let noise = |i: usize| &sh.noise[(i * sh.b + lo) * d..(i * sh.b + hi) * d];
    let x0 = &sh.x0[lo * d..hi * d];
    w.xs[..rd].copy_from_slice(x0);
    for (o, v) in w.states.iter_mut().zip(x0) {
        *o = v.to_f64();
    }
    // Forward pass (11), keeping the drift activations of the last nodes.
    for i in 0..n {
        let (dt, g) = (sh.steps.dt(i), sh.steps.g[i]);
        let xt = &w.xs[i * rd..(i + 1) * rd];
        let f = &mut w.fvals[i * rd..(i + 1) * rd];
        let cached = i >= sh.first_cached;
        let tape = if cached {
            &mut w.cache[i - sh.first_cached]
        } else {
            &mut w.tape_f
        };
        sh.fe.forward(&sh.tf_f[i], xt, f, tape, cached);
        let sd = g * dt.sqrt();
        let (done, rest) = w.states.split_at_mut((i + 1) * rd);
        let x = &done[i * rd..];
        let next = &mut rest[..rd];
        for (((o, xv), fv), e) in next.iter_mut().zip(x).zip(f.iter()).zip(noise(i)) {
            *o = (*xv + fv.to_f64() * dt) + e.to_f64() * sd;
        }
        for (o, v) in w.xs[(i + 1) * rd..(i + 2) * rd].iter_mut().zip(next.iter()) {
            *o = T::from_f64(*v);
        }
    }
    let xn = &w.states[n * rd..];
    let mut prior = 0.0;
    for row in xn.chunks_exact(d) {
        let sq: f64 = row.iter().map(|v| v * v).sum();
        prior += 0.5 * sq + d as f64 * HALF_LN_2PI;
    }
    part.prior += sh.weight * prior;
    // Backward sweep over the nodes.
    let mut path = 0.0;
    for j in (0..=n).rev() {
        let x = &w.states[j * rd..(j + 1) * rd];
        let xt = &w.xs[j * rd..(j + 1) * rd];
        let cached = j < n && j >= sh.first_cached;
        if !cached {
            let f = &mut w.fvals[j * rd..(j + 1) * rd];
            sh.fe.forward(&sh.tf_f[j], xt, f, &mut w.tape_f, true);
        }
        let f = &w.fvals[j * rd..(j + 1) * rd];
        if j >= 1 {
            sh.se
                .forward(&sh.tf_s[j], xt, &mut w.s, &mut w.tape_s, true);
            let (dt, g) = (sh.steps.dt(j - 1), sh.steps.g[j]);
            let g2 = g * g;
            let inv = 1.0 / (g * dt.sqrt());
            let scale = sh.weight / (g * dt.sqrt());
            let cs = -g * g * dt;
            let prev = &w.states[(j - 1) * rd..j * rd];
            let eps = noise(j - 1);
            let mut half = 0.0;
            for k in 0..rd {
                let drift = f[k].to_f64() - w.s[k].to_f64() * g2;
                let db = ((prev[k] - x[k]) + drift * dt) * inv;
                let e = eps[k].to_f64();
                half += 0.5 * (db * db - e * e);
                let u = db * scale;
                w.u[k] = u;
                w.cf[k] = u * dt;
                w.cot_s[k] = T::from_f64(u * cs);
                w.a[k] = -u;
            }
            path += half;
        } else {
            w.cf.fill(0.0);
            w.a.fill(0.0);
        }
        if j == n {
            for (a, xv) in w.a.iter_mut().zip(x) {
                *a += *xv * sh.weight;
            }
        } else {
            let dt = sh.steps.dt(j);
            for k in 0..rd {
                let a1 = w.a_next[k];
                w.cf[k] += a1 * dt;
                w.a[k] += a1 + w.u_next[k];
            }
        }
        for (o, v) in w.cot_f.iter_mut().zip(&w.cf) {
            *o = T::from_f64(*v);
        }
        let ftape = if cached {
            &w.cache[j - sh.first_cached]
        } else {
            &w.tape_f
        };
        sh.fe.backward(
            ftape,
            &w.cot_f,
            &mut w.dx,
            Some((&mut w.node_f, &mut w.dh)),
            &mut w.scratch,
        );
        sh.fe.drain_grads(&mut part.drift, &mut w.node_f);
        drain_into(&mut part.dh_drift[j * h..(j + 1) * h], &mut w.dh);
        for (a, v) in w.a.iter_mut().zip(&w.dx) {
            *a += v.to_f64();
        }
        if j >= 1 {
            sh.se.backward(
                &w.tape_s,
                &w.cot_s,
                &mut w.dx,
                Some((&mut w.node_s, &mut w.dh)),
                &mut w.scratch,
            );
            sh.se.drain_grads(&mut part.score, &mut w.node_s);
            drain_into(&mut part.dh_score[j * h..(j + 1) * h], &mut w.dh);
            for (a, v) in w.a.iter_mut().zip(&w.dx) {
                *a += v.to_f64();
            }
        }
        std::mem::swap(&mut w.a, &mut w.a_next);
        std::mem::swap(&mut w.u, &mut w.u_next);
    }
    part.path += sh.weight * path;
}

/// Worker buffers and gradient parts kept between calls, so that an iteration reuses the
/// memory of the previous one instead of faulting fresh pages in.
static POOL: Mutex<Vec<Box<dyn Any + Send>>> = Mutex::new(Vec::new());
const POOL_MAX: usize = 16;

fn pool_take<X: Any + Send>(fits: impl Fn(&X) -> bool) -> Option<X> {
    let mut pool = POOL.lock().ok()?;
    let i = pool
        .iter()
        .position(|b| b.downcast_ref::<X>().is_some_and(&fits))?;
    pool.swap_remove(i).downcast::<X>().ok().map(|b| *b)
}

fn pool_give<X: Any + Send>(x: X) {
    if let Ok(mut pool) = POOL.lock() {
        if pool.len() >= POOL_MAX {
            pool.remove(0);
        }
        pool.push(Box::new(x));
    }
}

fn to_vec<T: Real>(t: &Tensor) -> Result<Vec<T>> {
    Ok(t.flatten_all()?.to_dtype(T::DTYPE)?.to_vec1::<T>()?)
}

/// The elements of a tensor as `T`: its own storage when it is a contiguous CPU tensor of
/// that type (no copy of the `[N, B, d]` noise), a converted copy otherwise.
enum Elems<'a, T> {
    Borrowed(StorageRef<'a>, usize, usize),
    Owned(Vec<T>),
}

impl<'a, T: Real> Elems<'a, T> {
    fn of(t: &'a Tensor) -> Result<Self> {
        if t.dtype() == T::DTYPE {
            let (storage, layout) = t.storage_and_layout();
            if let (Storage::Cpu(_), Some((lo, hi))) = (&*storage, layout.contiguous_offsets()) {
                return Ok(Elems::Borrowed(storage, lo, hi));
            }
        }
        Ok(Elems::Owned(to_vec::<T>(t)?))
    }

    fn slice(&self) -> Result<&[T]> {
        match self {
            Elems::Borrowed(storage, lo, hi) => match &**storage {
                Storage::Cpu(cpu) => Ok(&cpu.as_slice::<T>()?[*lo..*hi]),
                _ => Err(Error::config("expected a CPU tensor")),
            },
            Elems::Owned(v) => Ok(v),
        }
    }
}

/// The adjoint gradient for two MLPs (see the module docs). Shapes: `x0` `[B, d]`,
/// `noise` `[N, B, d]`.
pub(super) fn gradient<T: Real>(
    drift: &Mlp,
    score: &Mlp,
    x0: &Tensor,
    steps: &Steps,
    noise: &Tensor,
    chunks: usize,
    threads: usize,
) -> Result<Gradient> {
    let tiles = tiles(x0.dim(0)?, chunks);
    gradient_with::<T>(
        drift,
        score,
        x0,
        steps,
        noise,
        &tiles,
        threads,
        TAPE_CACHE_BYTES,
    )
}

/// [`gradient`] over the given tiles, keeping at most `cache_bytes` of activations.
#[allow(clippy::too_many_arguments)]
fn gradient_with<T: Real>(
    drift: &Mlp,
    score: &Mlp,
    x0: &Tensor,
    steps: &Steps,
    noise: &Tensor,
    tiles: &[(usize, usize)],
    threads: usize,
    cache_bytes: usize,
) -> Result<Gradient> {
    let (b, d) = x0.dims2()?;
    let n = steps.n();
    let fe = MlpEngine::<T>::new(drift)?;
    let se = MlpEngine::<T>::new(score)?;
    let h = drift.config().width;
    if score.config().width != h || score.dim() != d || drift.dim() != d {
        return Err(Error::config(
            "drift and score must have the same width and dimension",
        ));
    }
    // The sweep needs only each node's first-layer bias; the rest of the time features is
    // recomputed for the time paths' backward at the end (memory per node: H, not 5H).
    let bias_only = |e: &MlpEngine<T>| -> Vec<TimeFeatures<T>> {
        steps
            .t
            .iter()
            .map(|&t| e.time_features(t).bias_only())
            .collect()
    };
    let (tf_f, tf_s) = (bias_only(&fe), bias_only(&se));
    let (x0e, noisee) = (Elems::<T>::of(x0)?, Elems::<T>::of(noise)?);
    let (x0v, noisev) = (x0e.slice()?, noisee.slice()?);
    let max_rows = tiles.iter().map(|(lo, hi)| hi - lo).max().unwrap_or(0);
    let cached = (cache_bytes / fe.tape_bytes(max_rows).max(1)).min(n);
    let sh = Shared {
        fe: &fe,
        se: &se,
        tf_f: &tf_f,
        tf_s: &tf_s,
        steps,
        x0: x0v,
        noise: noisev,
        b,
        d,
        h,
        weight: 1.0 / b as f64,
        first_cached: n - cached,
    };
    let counter = AtomicUsize::new(0);
    let fits = |p: &Part| {
        p.dh_drift.len() == (n + 1) * h && fe.fits_grads(&p.drift) && se.fits_grads(&p.score)
    };
    let reducer = Mutex::new(Reducer {
        next: 0,
        pending: (0..tiles.len()).map(|_| None).collect(),
        total: None,
        spare: (0..threads.min(tiles.len()))
            .filter_map(|_| pool_take::<Part>(fits))
            .collect(),
    });
    let work = || {
        let mut w = pool_take::<Worker<T>>(|_| true).unwrap_or_else(|| Worker::new(0));
        w.cache.resize_with(cached, Tape::default);
        loop {
            let i = counter.fetch_add(1, Ordering::Relaxed);
            if i >= tiles.len() {
                break;
            }
            let spare = reducer.lock().map(|mut r| r.spare.pop()).unwrap_or(None);
            let mut part = spare.unwrap_or_else(|| Part::new(&fe, &se, n + 1, h));
            run_tile(&sh, &mut w, tiles[i], &mut part);
            if let Ok(mut r) = reducer.lock() {
                r.push(i, part);
            }
        }
        pool_give(w);
    };
    let threads = threads.clamp(1, tiles.len());
    crate::par::run_workers(threads, &work)?;
    let r = reducer
        .into_inner()
        .map_err(|_| Error::WorkerPanic("a gradient tile was lost".into()))?;
    if r.next != tiles.len() {
        return Err(Error::WorkerPanic("a gradient tile was lost".into()));
    }
    for p in r.spare {
        pool_give(p);
    }
    let mut total = r.total.ok_or_else(|| Error::data("empty batch"))?;
    for j in 0..=n {
        fe.time_backward(
            &fe.time_features(steps.t[j]),
            &total.dh_drift[j * h..(j + 1) * h],
            &mut total.drift,
        );
        if j >= 1 {
            se.time_backward(
                &se.time_features(steps.t[j]),
                &total.dh_score[j * h..(j + 1) * h],
                &mut total.score,
            );
        }
    }
    let path = total.path + log_g_ratio_sum(steps, d);
    Ok(Gradient {
        loss: LossParts {
            loss: total.prior + path,
            prior: total.prior,
            path,
        },
        drift: fe.grads_to_tensors(total.drift)?,
        score: se.grads_to_tensors(total.score)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adjoint::engine_adjoint_gradient;
    use crate::flow::DiffFlow;
    use crate::nn::{Activation, MlpConfig};
    use crate::rng::Rng;
    use crate::sde::{fixed_grid, Diffusion, GridSpec};
    use candle_core::{DType, Device};

    fn flat(v: &[Tensor]) -> Vec<f64> {
        v.iter()
            .flat_map(|t| t.flatten_all().unwrap().to_vec1::<f64>().unwrap())
            .collect()
    }

    fn max_rel(a: &[f64], b: &[f64]) -> f64 {
        let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        a.iter()
            .zip(b)
            .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()))
            / scale
    }

    /// The FLOPs the kernels really do equal the cost model, with and without cached nodes.
    #[test]
    fn counted_flops_match_the_cost_model() {
        let cfg = MlpConfig {
            width: 8,
            depth: 2,
            fourier: 4,
            freq_min: 0.1,
            freq_max: 10.0,
            activation: Activation::Gelu,
        };
        let mut rng = Rng::new(1);
        let f = Mlp::new(3, &cfg, DType::F32, &mut rng).unwrap();
        let s = Mlp::new(3, &cfg, DType::F32, &mut rng).unwrap();
        let (n, b) = (4, 10);
        let steps = Steps::new(
            fixed_grid(&GridSpec::default(), n),
            &Diffusion::Constant { value: 0.2 },
        );
        let x0 = Tensor::from_vec(rng.normals(b * 3), (b, 3), &Device::Cpu)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let noise = Tensor::from_vec(rng.normals(n * b * 3), (n, b, 3), &Device::Cpu)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let tape = MlpEngine::<f32>::new(&f).unwrap().tape_bytes(4);
        for cached in [0, 2, 4] {
            let tiles = tiles_of(b, 1, 4);
            crate::nn::FLOPS.with(|c| c.set(0));
            gradient_with::<f32>(&f, &s, &x0, &steps, &noise, &tiles, 1, cached * tape).unwrap();
            let done = crate::nn::FLOPS.with(|c| c.get());
            let model = crate::adjoint::matmul_flops(
                crate::adjoint::GradMethod::Adjoint,
                &cfg,
                3,
                b,
                n,
                cached,
            );
            assert_eq!(done, model, "{cached} cached nodes");
        }
    }

    #[test]
    fn tiles_cover_the_batch_in_order() {
        let t = tiles_of(1000, 3, 128);
        assert_eq!(t.first().unwrap().0, 0);
        assert_eq!(t.last().unwrap().1, 1000);
        assert!(t.windows(2).all(|w| w[0].1 == w[1].0));
        assert!(t.iter().all(|(lo, hi)| hi > lo && hi - lo <= 128));
        // Chunk boundaries are tile boundaries: 333 | 333 | 334 rows, 3 tiles each.
        assert_eq!(t.len(), 9);
        assert!(t.iter().any(|&(_, hi)| hi == 333) && t.iter().any(|&(_, hi)| hi == 666));
        assert_eq!(tiles_of(5, 8, 128).len(), 5);
    }

    /// Tiles, threads and a partly filled activation cache against the tensor-level adjoint,
    /// in f64: the same gradient to rounding; and the same bytes for any number of threads.
    #[test]
    fn fused_equals_engine_adjoint_for_any_tiling_and_cache() {
        let cfg = MlpConfig {
            width: 12,
            depth: 2,
            fourier: 6,
            freq_min: 0.1,
            freq_max: 100.0,
            activation: Activation::Gelu,
        };
        let mut rng = Rng::new(31);
        let flow = DiffFlow {
            drift: Box::new(Mlp::new(2, &cfg, DType::F64, &mut rng).unwrap()),
            score: Box::new(Mlp::new(2, &cfg, DType::F64, &mut rng).unwrap()),
            diffusion: Diffusion::Linear {
                start: 0.1,
                end: 0.5,
                t_end: 0.05,
            },
        };
        let (n, b) = (6, 23);
        let steps = Steps::new(fixed_grid(&GridSpec::default(), n), &flow.diffusion);
        let x0 = Tensor::from_vec(rng.normals(b * 2), (b, 2), &Device::Cpu).unwrap();
        let noise = Tensor::from_vec(rng.normals(n * b * 2), (n, b, 2), &Device::Cpu).unwrap();
        let want = engine_adjoint_gradient(&flow, &x0, &steps, &noise, 1, 1).unwrap();
        let (f, s) = (flow.drift.as_mlp().unwrap(), flow.score.as_mlp().unwrap());
        let tape = MlpEngine::<f64>::new(f).unwrap().tape_bytes(5);
        let mut first: Option<Gradient> = None;
        for (tile_rows, cache_nodes, threads) in
            [(100, 6, 1), (5, 0, 1), (5, 2, 1), (5, 2, 2), (5, 2, 3)]
        {
            let tiles = tiles_of(b, 2, tile_rows);
            let got = gradient_with::<f64>(
                f,
                s,
                &x0,
                &steps,
                &noise,
                &tiles,
                threads,
                cache_nodes * tape,
            )
            .unwrap();
            let err = max_rel(&flat(&got.drift), &flat(&want.drift))
                .max(max_rel(&flat(&got.score), &flat(&want.score)));
            assert!(
                err < 1e-12,
                "tiles of {tile_rows}, {cache_nodes} cached: {err}"
            );
            assert!((got.loss.loss - want.loss.loss).abs() < 1e-12);
            if tile_rows == 5 && cache_nodes == 2 {
                match &first {
                    None => first = Some(got),
                    Some(g) => {
                        assert_eq!(flat(&g.drift), flat(&got.drift), "{threads} threads");
                        assert_eq!(flat(&g.score), flat(&got.score), "{threads} threads");
                        assert_eq!(g.loss, got.loss);
                    }
                }
            }
        }
    }
}
