//! Convolutions of the engine over a batch in channel-major layout: an activation of `C`
//! channels is `[C, B·H·W]` (row `c` holds channel `c` of every image), so one GEMM covers
//! the whole batch. 3×3 convs go through im2col / col2im on tiles of output rows (a tile's
//! columns stay in the core's cache); 1×1 convs multiply the activation directly. Weight
//! gradients are summed over the tiles in f64.

use super::plan::Conv;
use crate::nn::kernel::matmul_strided;
use crate::nn::Real;

/// Target size in bytes of one im2col tile `[cin·k², columns]`.
const TILE_BYTES: usize = 1 << 20;

/// A convolution applied to `batch` images of `h × w` (the size before upsampling).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Geom {
    pub c: Conv,
    pub batch: usize,
    pub h: usize,
    pub w: usize,
}

/// Work buffers of the convolutions (they grow, never shrink).
#[derive(Clone, Debug, Default)]
pub(crate) struct Bufs<T> {
    col: Vec<T>,
    dcol: Vec<T>,
    /// One tile's weight gradient `[cout, cin·k²]`.
    tmp: Vec<T>,
}

pub(crate) fn grow<T: Real>(v: &mut Vec<T>, len: usize) {
    if v.len() < len {
        v.resize(len, T::zero());
    }
}

/// `acc[r] += Σ_j x[r, j]` in f64. Shapes: `x` `[acc.len(), n]`.
pub(crate) fn add_row_sums<T: Real>(acc: &mut [f64], x: &[T], n: usize) {
    for (a, row) in acc.iter_mut().zip(x.chunks_exact(n)) {
        *a += row.iter().fold(0.0, |s, v| s + v.to_f64());
    }
}

fn add_to_f64<T: Real>(acc: &mut [f64], x: &[T]) {
    for (a, v) in acc.iter_mut().zip(x) {
        *a += v.to_f64();
    }
}

impl Geom {
    /// Output height and width.
    pub fn out_hw(&self) -> (usize, usize) {
        let c = &self.c;
        (self.h * c.up / c.stride, self.w * c.up / c.stride)
    }

    /// Columns of the input `B·h·w` and of the output.
    pub fn n_in(&self) -> usize {
        self.batch * self.h * self.w
    }

    pub fn n_out(&self) -> usize {
        let (ho, wo) = self.out_hw();
        self.batch * ho * wo
    }

    /// A 1×1 conv of stride 1 reads the activation itself as its im2col matrix.
    fn direct(&self) -> bool {
        self.c.k == 1 && self.c.stride == 1 && self.c.up == 1
    }

    /// Rows of the im2col matrix `cin·k²`.
    fn kk(&self) -> usize {
        self.c.cin * self.c.k * self.c.k
    }

    /// Columns of one tile: whole output rows, about [`TILE_BYTES`] of im2col.
    fn tile_cols(&self, elem: usize) -> usize {
        let (ho, wo) = self.out_hw();
        let cols = TILE_BYTES / (elem * self.kk()).max(1);
        (cols / wo).clamp(1, self.batch * ho) * wo
    }

    /// Range of output columns `ox` whose input column `ox·s + kx − pad` (in the upsampled
    /// image of width `wv`) lies inside the image.
    fn valid(&self, kx: usize, wo: usize) -> (usize, usize) {
        let (s, pad) = (self.c.stride as isize, (self.c.k / 2) as isize);
        let wv = (self.w * self.c.up) as isize;
        let kx = kx as isize;
        let lo = if pad > kx { (pad - kx + s - 1) / s } else { 0 };
        let hi = if wv - 1 + pad - kx < 0 {
            0
        } else {
            ((wv - 1 + pad - kx) / s + 1).min(wo as isize)
        };
        (lo as usize, (hi.max(lo)) as usize)
    }

    /// Calls `f(r, kx, dst, src)` for every im2col row `r = (ci, ky, kx)` and output row
    /// `q ∈ [q0, q1)` (`q = b·ho + oy`): `dst` is the offset of that output row in the tile,
    /// `src` the offset in the input of the input row under it (`None` off the image).
    fn for_rows(&self, q0: usize, q1: usize, mut f: impl FnMut(usize, usize, usize, Option<usize>)) {
        let c = &self.c;
        let (ho, wo) = self.out_hw();
        let hv = (self.h * c.up) as isize;
        let pad = (c.k / 2) as isize;
        let n_in = self.n_in();
        for ci in 0..c.cin {
            for ky in 0..c.k {
                for kx in 0..c.k {
                    let r = (ci * c.k + ky) * c.k + kx;
                    for q in q0..q1 {
                        let (b, oy) = (q / ho, q % ho);
                        let iy = (oy * c.stride + ky) as isize - pad;
                        let dst = (q - q0) * wo;
                        let src = (0..hv)
                            .contains(&iy)
                            .then(|| ci * n_in + (b * self.h + iy as usize / c.up) * self.w);
                        f(r, kx, dst, src);
                    }
                }
            }
        }
    }
}

/// The im2col tile of output rows `[q0, q1)`: `col[r, j]` = the input under tap `r = (ci, ky,
/// kx)` of output column `j` (zero outside the image). Shapes: `x` `[cin, B·h·w]`, `col`
/// `[cin·k², (q1 − q0)·wo]`.
fn im2col<T: Real>(g: &Geom, x: &[T], q0: usize, q1: usize, col: &mut [T]) {
    let (_, wo) = g.out_hw();
    let tc = (q1 - q0) * wo;
    let (s, up, pad) = (g.c.stride, g.c.up, g.c.k / 2);
    g.for_rows(q0, q1, |r, kx, dst, src| {
        let out = &mut col[r * tc + dst..r * tc + dst + wo];
        let Some(src) = src else {
            out.fill(T::zero());
            return;
        };
        let row = &x[src..src + g.w];
        let (lo, hi) = g.valid(kx, wo);
        out[..lo].fill(T::zero());
        out[hi..].fill(T::zero());
        let first = lo * s + kx - pad;
        if s == 1 && up == 1 {
            out[lo..hi].copy_from_slice(&row[first..first + hi - lo]);
        } else {
            for (j, o) in out[lo..hi].iter_mut().enumerate() {
                *o = row[(first + j * s) / up];
            }
        }
    });
}

/// The adjoint of [`im2col`]: `dx[input under tap r of column j] += dcol[r, j]`.
fn col2im<T: Real>(g: &Geom, dcol: &[T], q0: usize, q1: usize, dx: &mut [T]) {
    let (_, wo) = g.out_hw();
    let tc = (q1 - q0) * wo;
    let (s, up, pad) = (g.c.stride, g.c.up, g.c.k / 2);
    g.for_rows(q0, q1, |r, kx, dst, src| {
        let Some(src) = src else { return };
        let d = &dcol[r * tc + dst..r * tc + dst + wo];
        let row = &mut dx[src..src + g.w];
        let (lo, hi) = g.valid(kx, wo);
        let first = lo * s + kx - pad;
        if s == 1 && up == 1 {
            for (o, v) in row[first..first + hi - lo].iter_mut().zip(&d[lo..hi]) {
                *o += *v;
            }
        } else {
            for (j, v) in d[lo..hi].iter().enumerate() {
                row[(first + j * s) / up] += *v;
            }
        }
    });
}

/// `y = conv(x) + bias` (with `accumulate`, `y += conv(x) + bias`). Shapes: `w`
/// `[cout, cin·k²]`, `bias` `[cout]`, `x` `[cin, B·h·w]`, `y` `[cout, B·ho·wo]`.
pub(crate) fn forward<T: Real>(
    g: &Geom,
    w: &[T],
    bias: &[T],
    x: &[T],
    y: &mut [T],
    accumulate: bool,
    bufs: &mut Bufs<T>,
) {
    let (cout, kk, n) = (g.c.cout, g.kk(), g.n_out());
    for (row, b) in y[..cout * n].chunks_exact_mut(n).zip(bias) {
        if accumulate {
            row.iter_mut().for_each(|v| *v += *b);
        } else {
            row.fill(*b);
        }
    }
    if g.direct() {
        matmul_strided(y, (n, 1), cout, n, kk, w, (kk, 1), x, (n, 1), true);
        return;
    }
    let tile = g.tile_cols(std::mem::size_of::<T>());
    grow(&mut bufs.col, kk * tile);
    let wo = g.out_hw().1;
    for j0 in (0..n).step_by(tile) {
        let tc = tile.min(n - j0);
        let col = &mut bufs.col[..kk * tc];
        im2col(g, x, j0 / wo, (j0 + tc) / wo, col);
        matmul_strided(
            &mut y[j0..],
            (n, 1),
            cout,
            tc,
            kk,
            w,
            (kk, 1),
            col,
            (tc, 1),
            true,
        );
    }
}

/// Backward of [`forward`] for the output cotangent `dy` `[cout, B·ho·wo]`: with `dx`, writes
/// (or with its flag `true` adds) the input cotangent `[cin, B·h·w]`; with `grads`, adds the
/// weight and bias gradients (`[cout·cin·k²]`, `[cout]`, f64).
pub(crate) fn backward<T: Real>(
    g: &Geom,
    w: &[T],
    x: &[T],
    dy: &[T],
    dx: Option<(&mut [T], bool)>,
    grads: Option<(&mut [f64], &mut [f64])>,
    bufs: &mut Bufs<T>,
) {
    let (cout, kk, n) = (g.c.cout, g.kk(), g.n_out());
    let tile = g.tile_cols(std::mem::size_of::<T>());
    let mut grads = grads;
    if let Some((_, db)) = grads.as_mut() {
        add_row_sums(db, &dy[..cout * n], n);
    }
    if grads.is_some() {
        grow(&mut bufs.tmp, cout * kk);
    }
    if g.direct() {
        if let Some((dw, _)) = grads.as_mut() {
            for j0 in (0..n).step_by(tile) {
                let tc = tile.min(n - j0);
                let tmp = &mut bufs.tmp[..cout * kk];
                let (a, b) = (&dy[j0..], &x[j0..]);
                matmul_strided(tmp, (kk, 1), cout, kk, tc, a, (n, 1), b, (1, n), false);
                add_to_f64(dw, tmp);
            }
        }
        if let Some((dx, acc)) = dx {
            matmul_strided(dx, (n, 1), kk, n, cout, w, (1, kk), dy, (n, 1), acc);
        }
        return;
    }
    let mut dx = dx;
    if let Some((dx, false)) = dx.as_mut() {
        dx[..g.c.cin * g.n_in()].fill(T::zero());
    }
    let wo = g.out_hw().1;
    grow(&mut bufs.col, kk * tile);
    if dx.is_some() {
        grow(&mut bufs.dcol, kk * tile);
    }
    for j0 in (0..n).step_by(tile) {
        let tc = tile.min(n - j0);
        let (q0, q1) = (j0 / wo, (j0 + tc) / wo);
        if let Some((dw, _)) = grads.as_mut() {
            let col = &mut bufs.col[..kk * tc];
            im2col(g, x, q0, q1, col);
            let tmp = &mut bufs.tmp[..cout * kk];
            matmul_strided(tmp, (kk, 1), cout, kk, tc, &dy[j0..], (n, 1), col, (1, tc), false);
            add_to_f64(dw, tmp);
        }
        if let Some((dx, _)) = dx.as_mut() {
            let dcol = &mut bufs.dcol[..kk * tc];
            matmul_strided(dcol, (tc, 1), kk, tc, cout, w, (1, kk), &dy[j0..], (n, 1), false);
            col2im(g, dcol, q0, q1, dx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct convolution, the definition (NCHW indexing on the channel-major layout).
    fn naive(g: &Geom, w: &[f64], bias: &[f64], x: &[f64]) -> Vec<f64> {
        let c = g.c;
        let (ho, wo) = g.out_hw();
        let (hv, wv) = (g.h * c.up, g.w * c.up);
        let pad = (c.k / 2) as isize;
        let mut y = vec![0.0; c.cout * g.n_out()];
        for o in 0..c.cout {
            for b in 0..g.batch {
                for oy in 0..ho {
                    for ox in 0..wo {
                        let mut s = bias[o];
                        for ci in 0..c.cin {
                            for ky in 0..c.k {
                                for kx in 0..c.k {
                                    let iy = (oy * c.stride + ky) as isize - pad;
                                    let ix = (ox * c.stride + kx) as isize - pad;
                                    if iy < 0 || ix < 0 || iy >= hv as isize || ix >= wv as isize
                                    {
                                        continue;
                                    }
                                    let (iy, ix) = (iy as usize / c.up, ix as usize / c.up);
                                    let xv = x[ci * g.n_in() + (b * g.h + iy) * g.w + ix];
                                    s += w[((o * c.cin + ci) * c.k + ky) * c.k + kx] * xv;
                                }
                            }
                        }
                        y[o * g.n_out() + (b * ho + oy) * wo + ox] = s;
                    }
                }
            }
        }
        y
    }

    fn geoms() -> Vec<Geom> {
        let conv = |cin, cout, k, stride, up| Conv {
            w: 0,
            cin,
            cout,
            k,
            stride,
            up,
        };
        vec![
            Geom { c: conv(3, 4, 3, 1, 1), batch: 2, h: 5, w: 6 },
            Geom { c: conv(2, 3, 3, 2, 1), batch: 3, h: 6, w: 4 },
            Geom { c: conv(3, 2, 3, 1, 2), batch: 2, h: 3, w: 2 },
            Geom { c: conv(4, 5, 1, 1, 1), batch: 2, h: 3, w: 3 },
            Geom { c: conv(2, 2, 3, 1, 1), batch: 1, h: 1, w: 1 },
        ]
    }

    #[test]
    fn forward_and_backward_match_the_definition() {
        let mut rng = crate::rng::Rng::new(3);
        for g in geoms() {
            let c = g.c;
            let w = rng.normals(c.cout * c.cin * c.k * c.k);
            let bias = rng.normals(c.cout);
            let x = rng.normals(c.cin * g.n_in());
            let dy = rng.normals(c.cout * g.n_out());
            let mut bufs = Bufs::default();
            let mut y = vec![0.0; c.cout * g.n_out()];
            forward(&g, &w, &bias, &x, &mut y, false, &mut bufs);
            let want = naive(&g, &w, &bias, &x);
            for (a, b) in y.iter().zip(&want) {
                assert!((a - b).abs() < 1e-12, "{g:?}: {a} vs {b}");
            }
            // The conv is linear in x and in (w, bias): the cotangents are the dot products
            // <dy, y(e)> for unit inputs e.
            let mut dx = vec![0.5; c.cin * g.n_in()];
            let mut dw = vec![0.0; w.len()];
            let mut db = vec![0.0; c.cout];
            backward(&g, &w, &x, &dy, Some((&mut dx, false)), Some((&mut dw, &mut db)), &mut bufs);
            let dot = |y: &[f64]| y.iter().zip(&dy).map(|(a, b)| a * b).sum::<f64>();
            let zero_b = vec![0.0; c.cout];
            for i in 0..x.len() {
                let mut e = vec![0.0; x.len()];
                e[i] = 1.0;
                let want = dot(&naive(&g, &w, &zero_b, &e));
                assert!((dx[i] - want).abs() < 1e-12, "{g:?} dx[{i}]");
            }
            for i in 0..w.len() {
                let mut e = vec![0.0; w.len()];
                e[i] = 1.0;
                let want = dot(&naive(&g, &e, &zero_b, &x));
                assert!((dw[i] - want).abs() < 1e-12, "{g:?} dw[{i}]");
            }
            for o in 0..c.cout {
                let want: f64 = dy[o * g.n_out()..(o + 1) * g.n_out()].iter().sum();
                assert!((db[o] - want).abs() < 1e-12);
            }
            // accumulate adds to what is there
            let mut dx2 = dx.clone();
            backward(&g, &w, &x, &dy, Some((&mut dx2, true)), None, &mut bufs);
            for (a, b) in dx2.iter().zip(&dx) {
                assert!((a - 2.0 * b).abs() < 1e-12);
            }
        }
    }
}
