//! Convolutions of the engine over a batch in channel-major layout: an activation of `C`
//! channels is `[C, B·H·W]` (row `c` holds channel `c` of every image), so one GEMM covers
//! the whole batch. 3×3 convs go through im2col / col2im on tiles of output rows (a tile's
//! columns stay in the core's cache); 1×1 convs multiply the activation directly. Weight
//! gradients are summed over the tiles in f64.

use super::plan::Conv;
use crate::nn::gemm::matmul_strided;
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
    /// One tile's weight gradient, column-major `[cin·k², cout]`.
    tmp: Vec<T>,
    /// The upsampled input of a ×2 conv, and its cotangent.
    up: Vec<T>,
    /// `[W | bias]` `[cout, cin·k² + 1]`.
    waug: Vec<T>,
    dup: Vec<T>,
}

pub(crate) fn grow<T: Real>(v: &mut Vec<T>, len: usize) {
    if v.len() < len {
        v.resize(len, T::zero());
    }
}

/// `acc[r] += Σ_j x[r, j]` in f64. Shapes: `x` `[acc.len(), n]`.
#[inline(always)]
pub(crate) fn add_row_sums<T: Real>(acc: &mut [f64], x: &[T], n: usize) {
    for (a, row) in acc.iter_mut().zip(x.chunks_exact(n)) {
        *a += super::norm::sum_map(row, |v| v);
    }
}

/// `acc[o, r] += x[r, o]` in f64. Shapes: `acc` `[m, k]`, `x` `[k, m]`.
#[inline(always)]
fn add_transposed_to_f64<T: Real>(acc: &mut [f64], x: &[T], m: usize, k: usize) {
    for (o, row) in acc.chunks_exact_mut(k).take(m).enumerate() {
        for (r, a) in row.iter_mut().enumerate() {
            *a += x[r * m + o].to_f64();
        }
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
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
        let tb: usize = std::env::var("TILEB")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(TILE_BYTES);
        let cols = tb / (elem * self.kk()).max(1);
        // whole rows, a multiple of 16 columns (the GEMM then reads the tile unpacked)
        let step = 16 / gcd(wo, 16);
        ((cols / wo) / step * step).max(step).min(self.batch * ho) * wo
    }

    /// The tiles `(first column, columns)` of the output for elements of `elem` bytes.
    pub fn tiles(&self, elem: usize) -> impl Iterator<Item = (usize, usize)> {
        let (tile, n) = (self.tile_cols(elem), self.n_out());
        (0..n).step_by(tile).map(move |j0| (j0, tile.min(n - j0)))
    }

    /// The GEMMs `(m, n, k)` of the forward pass, the input cotangent and the weight
    /// gradient, in the order [`forward`] and [`backward`] call them (the forward pass of an
    /// im2col conv has `k = cin·k² + 1`: the bias rides along as a row of ones).
    pub fn gemms(&self, elem: usize) -> [Vec<(usize, usize, usize)>; 3] {
        let (cout, kk, n) = (self.c.cout, self.kk(), self.n_out());
        let tiles: Vec<(usize, usize)> = self.tiles(elem).collect();
        let dw = tiles.iter().map(|&(_, tc)| (cout, kk, tc)).collect();
        if self.direct() {
            [vec![(cout, n, kk)], vec![(kk, n, cout)], dw]
        } else {
            [
                tiles.iter().map(|&(_, tc)| (cout, tc, kk + 1)).collect(),
                tiles.iter().map(|&(_, tc)| (kk, tc, cout)).collect(),
                dw,
            ]
        }
    }

    /// The same conv reading an input already upsampled (`up = 1`, size `up·h × up·w`).
    fn upsampled(&self) -> Geom {
        Geom {
            c: Conv { up: 1, ..self.c },
            h: self.h * self.c.up,
            w: self.w * self.c.up,
            ..*self
        }
    }

    /// Range of output columns `ox` whose input column `ox·s + kx − pad` lies in the image.
    #[inline(always)]
    fn valid(&self, kx: usize, wo: usize) -> (usize, usize) {
        let (s, pad) = (self.c.stride as isize, (self.c.k / 2) as isize);
        let (w, kx) = (self.w as isize, kx as isize);
        let lo = if pad > kx { (pad - kx + s - 1) / s } else { 0 };
        let hi = if w - 1 + pad - kx < 0 {
            0
        } else {
            ((w - 1 + pad - kx) / s + 1).min(wo as isize)
        };
        (lo as usize, hi.max(lo) as usize)
    }

    /// For a stride-1 conv (`up = 1`): the shift `(ky − pad)·w + kx − pad` of tap `(ky, kx)`
    /// in the flattened input, and calls `f(start, len)` for every run of tile columns
    /// (from tile column `j0`, `tc` columns) whose tap falls outside its image.
    #[inline(always)]
    fn borders(&self, ky: usize, kx: usize, j0: usize, tc: usize, mut f: impl FnMut(usize, usize)) {
        let (h, w, pad) = (self.h, self.w, self.c.k / 2);
        let (q0, q1) = (j0 / w, (j0 + tc) / w);
        // columns `ox` with `ox + kx − pad` outside `[0, w)`, in every row
        for (a, b) in [
            (0, pad.saturating_sub(kx).min(w)),
            ((w + pad).saturating_sub(kx).min(w), w),
        ] {
            if a < b {
                for q in 0..q1 - q0 {
                    f(q * w + a, b - a);
                }
            }
        }
        // rows `oy` with `oy + ky − pad` outside `[0, h)`, in every image
        for (a, b) in [
            (0, pad.saturating_sub(ky).min(h)),
            ((h + pad).saturating_sub(ky).min(h), h),
        ] {
            if a < b {
                for start in (q0 / h * h..q1).step_by(h) {
                    let (r0, r1) = ((start + a).max(q0), (start + b).min(q1));
                    if r0 < r1 {
                        f((r0 - q0) * w, (r1 - r0) * w);
                    }
                }
            }
        }
    }
}

/// Nearest-neighbour ×`up` of `x` `[c, B·h·w]` into `out` `[c, B·up·h·up·w]`.
#[inline(always)]
fn upsample<T: Real>(x: &[T], c: usize, rows: usize, w: usize, up: usize, out: &mut Vec<T>) {
    let len = c * rows * w * up * up;
    grow(out, len);
    for (src, dst) in x[..len / (up * up)]
        .chunks_exact(w)
        .zip(out[..len].chunks_exact_mut(w * up * up))
    {
        let (first, rest) = dst.split_at_mut(w * up);
        for (o, v) in first.chunks_exact_mut(up).zip(src) {
            o.fill(*v);
        }
        for r in rest.chunks_exact_mut(w * up) {
            r.copy_from_slice(first);
        }
    }
}

/// The adjoint of [`upsample`]: `dx[i] (+)= Σ` of the `up × up` block of `dup` over pixel `i`.
#[inline(always)]
fn upsample_adjoint<T: Real>(
    dup: &[T],
    c: usize,
    rows: usize,
    w: usize,
    up: usize,
    dx: &mut [T],
    accumulate: bool,
) {
    let len = c * rows * w;
    for (d, src) in dx[..len]
        .chunks_exact_mut(w)
        .zip(dup.chunks_exact(w * up * up))
    {
        if !accumulate {
            d.fill(T::zero());
        }
        for r in src.chunks_exact(w * up) {
            for (o, block) in d.iter_mut().zip(r.chunks_exact(up)) {
                for v in block {
                    *o += *v;
                }
            }
        }
    }
}

/// The im2col tile of output columns `[j0, j0 + tc)` (whole output rows): `col[r, j]` = the
/// input under tap `r = (ci, ky, kx)` of output column `j` (zero outside the image). Shapes:
/// `x` `[cin, B·h·w]` (`up = 1`), `col` `[cin·k², tc]`.
#[inline(always)]
fn im2col<T: Real>(g: &Geom, x: &[T], j0: usize, tc: usize, col: &mut [T]) {
    let (c, n_in) = (&g.c, g.n_in());
    let pad = c.k / 2;
    for ci in 0..c.cin {
        let xc = &x[ci * n_in..(ci + 1) * n_in];
        for ky in 0..c.k {
            for kx in 0..c.k {
                let r = (ci * c.k + ky) * c.k + kx;
                let out = &mut col[r * tc..(r + 1) * tc];
                if c.stride == 1 {
                    // a shifted copy of the channel, then zeros where the tap leaves the image
                    let shift = (ky * g.w + kx) as isize - (pad * g.w + pad) as isize;
                    let (lo, hi) = shifted_range(j0, tc, shift, n_in);
                    out[..lo].fill(T::zero());
                    out[hi..].fill(T::zero());
                    if hi > lo {
                        let s0 = (j0 as isize + lo as isize + shift) as usize;
                        out[lo..hi].copy_from_slice(&xc[s0..s0 + hi - lo]);
                    }
                    g.borders(ky, kx, j0, tc, |a, len| zero(&mut out[a..a + len]));
                } else {
                    strided_rows(g, ky, kx, j0, tc, |dst, src, (lo, hi), first| {
                        let o = &mut out[dst..dst + g.out_hw().1];
                        let Some(src) = src else {
                            o.fill(T::zero());
                            return;
                        };
                        o[..lo].fill(T::zero());
                        o[hi..].fill(T::zero());
                        for (j, v) in o[lo..hi].iter_mut().enumerate() {
                            *v = xc[src + first + j * c.stride];
                        }
                    });
                }
            }
        }
    }
}

/// The adjoint of [`im2col`]: `dx[input under tap r of column j] += dcol[r, j]` (`dcol`'s
/// entries off the image are overwritten).
#[inline(always)]
fn col2im<T: Real>(g: &Geom, dcol: &mut [T], j0: usize, tc: usize, dx: &mut [T]) {
    let (c, n_in) = (&g.c, g.n_in());
    let pad = c.k / 2;
    for ci in 0..c.cin {
        let dxc = &mut dx[ci * n_in..(ci + 1) * n_in];
        for ky in 0..c.k {
            for kx in 0..c.k {
                let r = (ci * c.k + ky) * c.k + kx;
                let d = &mut dcol[r * tc..(r + 1) * tc];
                if c.stride == 1 {
                    g.borders(ky, kx, j0, tc, |a, len| zero(&mut d[a..a + len]));
                    let shift = (ky * g.w + kx) as isize - (pad * g.w + pad) as isize;
                    let (lo, hi) = shifted_range(j0, tc, shift, n_in);
                    if hi > lo {
                        let s0 = (j0 as isize + lo as isize + shift) as usize;
                        for (o, v) in dxc[s0..s0 + hi - lo].iter_mut().zip(&d[lo..hi]) {
                            *o += *v;
                        }
                    }
                } else {
                    strided_rows(g, ky, kx, j0, tc, |dst, src, (lo, hi), first| {
                        let Some(src) = src else { return };
                        for (j, v) in d[dst + lo..dst + hi].iter().enumerate() {
                            dxc[src + first + j * c.stride] += *v;
                        }
                    });
                }
            }
        }
    }
}

/// `x ← 0` (single elements without a call to `memset`).
#[inline(always)]
fn zero<T: Real>(x: &mut [T]) {
    if x.len() == 1 {
        x[0] = T::zero();
    } else {
        x.fill(T::zero());
    }
}

/// Tile columns `[lo, hi)` whose shifted source `j0 + j + shift` lies in `[0, n)`.
#[inline(always)]
fn shifted_range(j0: usize, tc: usize, shift: isize, n: usize) -> (usize, usize) {
    let lo = (-(j0 as isize) - shift).clamp(0, tc as isize) as usize;
    let hi = (n as isize - j0 as isize - shift).clamp(lo as isize, tc as isize) as usize;
    (lo, hi)
}

/// For a strided conv: calls `f(dst, src, (lo, hi), first)` for each output row of the tile,
/// with `dst` its offset in the tile, `src` the offset in the channel of the input row under
/// tap `(ky, kx)` (`None` off the image), `[lo, hi)` the output columns inside the image and
/// `first` the input column of output column `lo`.
#[inline(always)]
fn strided_rows(
    g: &Geom,
    ky: usize,
    kx: usize,
    j0: usize,
    tc: usize,
    mut f: impl FnMut(usize, Option<usize>, (usize, usize), usize),
) {
    let (ho, wo) = g.out_hw();
    let (s, pad) = (g.c.stride, g.c.k / 2);
    let (lo, hi) = g.valid(kx, wo);
    let first = lo * s + kx - pad;
    let (q0, q1) = (j0 / wo, (j0 + tc) / wo);
    for q in q0..q1 {
        let (b, oy) = (q / ho, q % ho);
        let iy = oy * s + ky;
        let src = (iy >= pad && iy - pad < g.h).then(|| (b * g.h + iy - pad) * g.w);
        f((q - q0) * wo, src, (lo, hi), first);
    }
}

/// `y = conv(x) + bias` (with `accumulate`, `y += conv(x) + bias`). Shapes: `w`
/// `[cout, cin·k²]`, `bias` `[cout]`, `x` `[cin, B·h·w]`, `y` `[cout, B·ho·wo]`.
#[inline(always)]
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
    if g.direct() {
        for (row, b) in y[..cout * n].chunks_exact_mut(n).zip(bias) {
            if accumulate {
                row.iter_mut().for_each(|v| *v += *b);
            } else {
                row.fill(*b);
            }
        }
        matmul_strided(y, (n, 1), cout, n, kk, w, (kk, 1), x, (n, 1), true);
        return;
    }
    let Bufs { col, up, waug, .. } = bufs;
    let (g, x) = if g.c.up > 1 {
        upsample(x, g.c.cin, g.batch * g.h, g.w, g.c.up, up);
        (g.upsampled(), &up[..])
    } else {
        (*g, x)
    };
    // The bias is one more GEMM input: a column of `[W | b]` against a row of ones in `col`.
    let k1 = kk + 1;
    waug.clear();
    for (row, b) in w.chunks_exact(kk).zip(bias).take(cout) {
        waug.extend_from_slice(row);
        waug.push(*b);
    }
    let elem = std::mem::size_of::<T>();
    grow(col, k1 * g.tile_cols(elem));
    for (j0, tc) in g.tiles(elem) {
        let col = &mut col[..k1 * tc];
        im2col(&g, x, j0, tc, &mut col[..kk * tc]);
        col[kk * tc..].fill(T::one());
        let dst = &mut y[j0..];
        matmul_strided(
            dst,
            (n, 1),
            cout,
            tc,
            k1,
            waug,
            (k1, 1),
            col,
            (tc, 1),
            accumulate,
        );
    }
}

/// Backward of [`forward`] for the output cotangent `dy` `[cout, B·ho·wo]`: with `dx`, writes
/// (or with its flag `true` adds) the input cotangent `[cin, B·h·w]`; with `grads`, adds the
/// weight and bias gradients (`[cout·cin·k²]`, `[cout]`, f64).
#[inline(always)]
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
    let elem = std::mem::size_of::<T>();
    let mut grads = grads;
    if let Some((_, db)) = grads.as_mut() {
        add_row_sums(db, &dy[..cout * n], n);
    }
    if grads.is_some() {
        grow(&mut bufs.tmp, cout * kk);
    }
    let Bufs {
        col,
        dcol,
        tmp,
        up,
        dup,
        ..
    } = bufs;
    if g.direct() {
        if let Some((dw, _)) = grads.as_mut() {
            for (j0, tc) in g.tiles(elem) {
                let tmp = &mut tmp[..cout * kk];
                let (a, b) = (&dy[j0..], &x[j0..]);
                matmul_strided(tmp, (1, cout), cout, kk, tc, a, (n, 1), b, (1, n), false);
                add_transposed_to_f64(dw, tmp, cout, kk);
            }
        }
        if let Some((dx, acc)) = dx {
            matmul_strided(dx, (n, 1), kk, n, cout, w, (1, kk), dy, (n, 1), acc);
        }
        return;
    }
    let upsampled = g.c.up > 1;
    let (gu, x) = if upsampled {
        upsample(x, g.c.cin, g.batch * g.h, g.w, g.c.up, up);
        (g.upsampled(), &up[..])
    } else {
        (*g, x)
    };
    // the input cotangent goes to `dup` first when the input was upsampled
    let mut dx = dx;
    let mut target: Option<&mut [T]> = match dx.as_mut() {
        Some(_) if upsampled => {
            grow(dup, g.c.cin * gu.n_in());
            dup[..g.c.cin * gu.n_in()].fill(T::zero());
            Some(&mut dup[..])
        }
        Some((d, acc)) => {
            if !*acc {
                d[..g.c.cin * g.n_in()].fill(T::zero());
            }
            Some(&mut d[..])
        }
        None => None,
    };
    grow(col, kk * gu.tile_cols(elem));
    if target.is_some() {
        grow(dcol, kk * gu.tile_cols(elem));
    }
    for (j0, tc) in gu.tiles(elem) {
        if let Some((dw, _)) = grads.as_mut() {
            let col = &mut col[..kk * tc];
            im2col(&gu, x, j0, tc, col);
            // `tmp` column-major, so that the GEMM packs the thin `dy` tile, not `col`
            let tmp = &mut tmp[..cout * kk];
            matmul_strided(
                tmp,
                (1, cout),
                cout,
                kk,
                tc,
                &dy[j0..],
                (n, 1),
                col,
                (1, tc),
                false,
            );
            add_transposed_to_f64(dw, tmp, cout, kk);
        }
        if let Some(t) = target.as_mut() {
            let dcol = &mut dcol[..kk * tc];
            matmul_strided(
                dcol,
                (tc, 1),
                kk,
                tc,
                cout,
                w,
                (1, kk),
                &dy[j0..],
                (n, 1),
                false,
            );
            col2im(&gu, dcol, j0, tc, t);
        }
    }
    if let (true, Some((d, acc))) = (upsampled, dx) {
        upsample_adjoint(dup, g.c.cin, g.batch * g.h, g.w, g.c.up, d, acc);
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
                                    if iy < 0 || ix < 0 || iy >= hv as isize || ix >= wv as isize {
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
            Geom {
                c: conv(3, 4, 3, 1, 1),
                batch: 2,
                h: 5,
                w: 6,
            },
            Geom {
                c: conv(2, 3, 3, 2, 1),
                batch: 3,
                h: 6,
                w: 4,
            },
            Geom {
                c: conv(3, 2, 3, 1, 2),
                batch: 2,
                h: 3,
                w: 2,
            },
            Geom {
                c: conv(4, 5, 1, 1, 1),
                batch: 2,
                h: 3,
                w: 3,
            },
            Geom {
                c: conv(2, 2, 3, 1, 1),
                batch: 1,
                h: 1,
                w: 1,
            },
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
            backward(
                &g,
                &w,
                &x,
                &dy,
                Some((&mut dx, false)),
                Some((&mut dw, &mut db)),
                &mut bufs,
            );
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

    /// Geometries of several tiles (the last one partial, tile edges inside images): forward
    /// against the definition, and the cotangents by the dot-product identities
    /// `<dx, u> = <dy, conv_w(u)>`, `<dw, v> = <dy, conv_v(x)>` for random `u`, `v`.
    #[test]
    fn tiled_convs_match_the_definition() {
        let mut rng = crate::rng::Rng::new(4);
        let conv = |cin, cout, stride, up| Conv {
            w: 0,
            cin,
            cout,
            k: 3,
            stride,
            up,
        };
        for g in [
            Geom {
                c: conv(64, 3, 1, 1),
                batch: 2,
                h: 30,
                w: 10,
            },
            Geom {
                c: conv(64, 2, 2, 1),
                batch: 8,
                h: 14,
                w: 22,
            },
            Geom {
                c: conv(64, 2, 1, 2),
                batch: 2,
                h: 9,
                w: 8,
            },
        ] {
            let c = g.c;
            assert!(g.tiles(8).count() > 2, "{g:?}");
            let w = rng.normals(c.cout * c.cin * 9);
            let bias = rng.normals(c.cout);
            let x = rng.normals(c.cin * g.n_in());
            let dy = rng.normals(c.cout * g.n_out());
            let mut bufs = Bufs::default();
            let mut y = vec![0.0; c.cout * g.n_out()];
            forward(&g, &w, &bias, &x, &mut y, false, &mut bufs);
            let want = naive(&g, &w, &bias, &x);
            for (a, b) in y.iter().zip(&want) {
                assert!((a - b).abs() < 1e-11, "{g:?}: {a} vs {b}");
            }
            let mut dx = vec![0.0; x.len()];
            let (mut dw, mut db) = (vec![0.0; w.len()], vec![0.0; c.cout]);
            backward(
                &g,
                &w,
                &x,
                &dy,
                Some((&mut dx, false)),
                Some((&mut dw, &mut db)),
                &mut bufs,
            );
            let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(p, q)| p * q).sum::<f64>();
            let zero_b = vec![0.0; c.cout];
            let u = rng.normals(x.len());
            let lhs = dot(&dx, &u);
            let rhs = dot(&dy, &naive(&g, &w, &zero_b, &u));
            assert!(
                (lhs - rhs).abs() < 1e-9 * rhs.abs().max(1.0),
                "{g:?}: dx {lhs} vs {rhs}"
            );
            let v = rng.normals(w.len());
            let lhs = dot(&dw, &v);
            let rhs = dot(&dy, &naive(&g, &v, &zero_b, &x));
            assert!(
                (lhs - rhs).abs() < 1e-9 * rhs.abs().max(1.0),
                "{g:?}: dw {lhs} vs {rhs}"
            );
        }
    }
}
