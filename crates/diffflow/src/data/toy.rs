//! Built-in 2-D toy data sets (DiffFlow paper section 3.4, FFJORD, scikit-learn).
//!
//! [`toy_2d`] draws `n` points and then, like the authors' code, rescales the whole set so
//! that its largest absolute coordinate is exactly 0.85. Points come in generation order
//! (grouped by component where a set has components); shuffle before mini-batching if the
//! consumer needs it. Every draw comes from the [`Rng`] passed in.

use std::f64::consts::PI;

use super::image2d::{image_points, ImageSet};
use crate::rng::Rng;
use crate::{Error, Result};

/// Names accepted by [`toy_2d`].
pub const TOY_DATASETS: &[&str] = &[
    "olympic",
    "rings",
    "tree",
    "sierpinski",
    "sierpinski_hard",
    "2spirals",
    "checkerboard",
    "8gaussians",
    "moons",
    "pinwheel",
    "swissroll",
];

/// Largest absolute coordinate after the final rescale.
pub const TOY_MAX_ABS: f64 = 0.85;

/// Centres of the five unit circles of `olympic`; `rings` uses the last four.
pub const OLYMPIC_CENTRES: [[f64; 2]; 5] = [
    [-1.75, 0.75],
    [0.0, 0.75],
    [1.75, 0.75],
    [-1.05, -0.75],
    [1.05, -0.75],
];

/// Default noise level of each set (the meaning differs per set, see [`toy_2d`]).
pub fn default_noise(name: &str) -> Option<f64> {
    Some(match name {
        "olympic" | "rings" => 0.001,
        "tree" | "sierpinski" | "sierpinski_hard" => 0.0,
        "2spirals" => 0.1,
        "checkerboard" => 0.0,
        "8gaussians" => 0.5,
        "moons" => 0.1,
        "pinwheel" => 0.3,
        "swissroll" => 1.0,
        _ => return None,
    })
}

/// `n` points of the toy set `name`, rescaled so that `max |x| == 0.85`.
///
/// Shapes: returns [n, 2] row-major. `noise` (default in brackets) overrides:
/// - `olympic` [0.001], `rings` [0.001]: std of the radial noise, radius `1 + noise N(0,1)`
///   (paper 3.4); `olympic` has the five circles of [`OLYMPIC_CENTRES`], `rings` the last four;
///   circle `i` gets the `i`-th block of points (sizes differ by at most one);
/// - `tree`, `sierpinski`, `sierpinski_hard` [0]: image smoothing, sigma = 10 noise pixels
///   (see [`super::image2d`]);
/// - `2spirals` [0.1]: std of the isotropic Gaussian added after the `/3` (FFJORD);
/// - `checkerboard` [0]: std of an isotropic Gaussian jitter added to the final points
///   (FFJORD's generator has none);
/// - `8gaussians` [0.5]: std of each component before the `/1.414` (FFJORD);
/// - `moons` [0.1]: std of the Gaussian noise of scikit-learn `make_moons` (evenly spaced
///   angles, outer moon first, `n / 2` points in it);
/// - `pinwheel` [0.3]: radial std; tangential std is `noise / 3` (FFJORD: 0.3 and 0.1);
/// - `swissroll` [1.0]: std of the Gaussian noise of scikit-learn `make_swiss_roll`
///   on (x, z) (FFJORD's choice).
///
/// Errors: unknown `name` (lists the valid ones), `n == 0`, negative or non-finite `noise`.
pub fn toy_2d(name: &str, n: usize, noise: Option<f64>, rng: &mut Rng) -> Result<Vec<f64>> {
    let Some(default) = default_noise(name) else {
        return Err(Error::config(format!(
            "unknown toy data set {name:?}; valid names: {}",
            TOY_DATASETS.join(", ")
        )));
    };
    if n == 0 {
        return Err(Error::config(format!(
            "toy data set {name:?}: n must be at least 1"
        )));
    }
    let s = noise.unwrap_or(default);
    if !(s.is_finite() && s >= 0.0) {
        return Err(Error::config(format!(
            "toy data set {name:?}: noise must be finite and >= 0, got {s}"
        )));
    }
    let mut pts = generate(name, n, s, rng)?;
    rescale_max_abs(&mut pts, name)?;
    Ok(pts)
}

/// The mixture component (mode) of each of the `n` points that [`toy_2d`] returns for
/// `name`, for the sets whose points come grouped by component in generation order:
/// `olympic` (5 circles, in [`OLYMPIC_CENTRES`] order), `rings` (4 circles: the last four),
/// `pinwheel` (5 arms), `2spirals` (2 arms) and `moons` (outer, inner); `None` for the others.
/// It depends only on `n`, not on the draws. Shapes: → `[n]`.
pub fn toy_components(name: &str, n: usize) -> Option<Vec<usize>> {
    let blocks = |k: usize| (0..n).map(|i| block_of(i, n, k)).collect();
    match name {
        "olympic" | "pinwheel" => Some(blocks(5)),
        "rings" => Some(blocks(4)),
        "2spirals" => Some((0..n).map(|i| usize::from(i >= n - n / 2)).collect()),
        "moons" => Some((0..n).map(|i| usize::from(i >= n / 2)).collect()),
        _ => None,
    }
}

/// Dispatch to the generator; `name` is known to be valid.
fn generate(name: &str, n: usize, s: f64, rng: &mut Rng) -> Result<Vec<f64>> {
    if let Some(set) = ImageSet::from_name(name) {
        return image_points(set, n, s, rng);
    }
    let f: fn(usize, f64, &mut Rng) -> Vec<f64> = match name {
        "olympic" => |n, s, r| circles(&OLYMPIC_CENTRES, n, s, r),
        "rings" => |n, s, r| circles(&OLYMPIC_CENTRES[1..], n, s, r),
        "2spirals" => two_spirals,
        "checkerboard" => checkerboard,
        "8gaussians" => eight_gaussians,
        "moons" => moons,
        "pinwheel" => pinwheel,
        "swissroll" => swissroll,
        _ => {
            return Err(Error::config(format!(
                "no generator for toy data set {name:?}"
            )))
        }
    };
    Ok(f(n, s, rng))
}

/// Multiply everything by `0.85 / max|x|`. Shapes: [n, 2].
fn rescale_max_abs(pts: &mut [f64], name: &str) -> Result<()> {
    let max = pts.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    if !(max > 0.0 && max.is_finite()) {
        return Err(Error::data(format!(
            "toy data set {name:?}: max |x| is {max}, cannot rescale"
        )));
    }
    let k = TOY_MAX_ABS / max;
    pts.iter_mut().for_each(|x| *x *= k);
    Ok(())
}

/// Component of point `i` when `n` points are split into `k` blocks as evenly as possible.
fn block_of(i: usize, n: usize, k: usize) -> usize {
    // Consecutive blocks; i is in block j iff j n <= (i + 1) k - 1 < (j + 1) n.
    ((i + 1) * k - 1) / n
}

/// Unit circles around `centres` with radial noise: radius `1 + s N(0, 1)`.
fn circles(centres: &[[f64; 2]], n: usize, s: f64, rng: &mut Rng) -> Vec<f64> {
    let mut out = Vec::with_capacity(2 * n);
    for i in 0..n {
        let c = centres[block_of(i, n, centres.len())];
        let angle = 2.0 * PI * rng.uniform();
        let radius = 1.0 + s * rng.normal();
        out.push(c[0] + radius * angle.cos());
        out.push(c[1] + radius * angle.sin());
    }
    out
}

/// FFJORD's two spirals: first half on one arm, second half mirrored through the origin.
fn two_spirals(n: usize, s: f64, rng: &mut Rng) -> Vec<f64> {
    let first = n - n / 2;
    let mut out = Vec::with_capacity(2 * n);
    for i in 0..n {
        let t = rng.uniform().sqrt() * 540.0 * PI / 180.0;
        let x = -t.cos() * t + 0.5 * rng.uniform();
        let y = t.sin() * t + 0.5 * rng.uniform();
        let sign = if i < first { 1.0 } else { -1.0 };
        out.push(sign * x / 3.0 + s * rng.normal());
        out.push(sign * y / 3.0 + s * rng.normal());
    }
    out
}

/// FFJORD's checkerboard (8 squares of side 2 in [-4, 4]^2) plus optional jitter `s`.
fn checkerboard(n: usize, s: f64, rng: &mut Rng) -> Vec<f64> {
    let mut out = Vec::with_capacity(2 * n);
    for _ in 0..n {
        let x1 = 4.0 * rng.uniform() - 2.0;
        let x2 = rng.uniform() - 2.0 * rng.below(2) as f64 + x1.floor().rem_euclid(2.0);
        let (j1, j2) = if s > 0.0 {
            (s * rng.normal(), s * rng.normal())
        } else {
            (0.0, 0.0)
        };
        out.push(2.0 * x1 + j1);
        out.push(2.0 * x2 + j2);
    }
    out
}

/// FFJORD's 8 Gaussians: centres `4 (cos k 45°, sin k 45°)`, std `s`, all divided by 1.414.
fn eight_gaussians(n: usize, s: f64, rng: &mut Rng) -> Vec<f64> {
    let mut out = Vec::with_capacity(2 * n);
    for _ in 0..n {
        let angle = rng.below(8) as f64 * PI / 4.0;
        let x = 4.0 * angle.cos() + s * rng.normal();
        let y = 4.0 * angle.sin() + s * rng.normal();
        out.push(x / 1.414);
        out.push(y / 1.414);
    }
    out
}

/// `m` evenly spaced angles in [0, pi] (numpy `linspace(0, pi, m)`).
fn linspace_pi(m: usize) -> impl Iterator<Item = f64> {
    let step = if m > 1 { PI / (m - 1) as f64 } else { 0.0 };
    (0..m).map(move |j| j as f64 * step)
}

/// scikit-learn `make_moons`: outer half circle (`n / 2` points), inner one shifted to
/// (1, -0.5) and flipped, both at evenly spaced angles, plus Gaussian noise of std `s`.
fn moons(n: usize, s: f64, rng: &mut Rng) -> Vec<f64> {
    let n_out = n / 2;
    let outer = linspace_pi(n_out).map(|a| (a.cos(), a.sin()));
    let inner = linspace_pi(n - n_out).map(|a| (1.0 - a.cos(), 0.5 - a.sin()));
    let mut out = Vec::with_capacity(2 * n);
    for (x, y) in outer.chain(inner) {
        out.push(x + s * rng.normal());
        out.push(y + s * rng.normal());
    }
    out
}

/// FFJORD's pinwheel: 5 arms (blocks of points), radial std `s`, tangential std `s / 3`,
/// rate 0.25; `f = (1 + s N, s/3 N)` rotated by `-(2 pi k / 5 + 0.25 e^{f_0})`, times 2.
fn pinwheel(n: usize, s: f64, rng: &mut Rng) -> Vec<f64> {
    let mut out = Vec::with_capacity(2 * n);
    for i in 0..n {
        let arm = block_of(i, n, 5) as f64;
        let f0 = 1.0 + s * rng.normal();
        let f1 = s / 3.0 * rng.normal();
        let angle = 2.0 * PI * arm / 5.0 + 0.25 * f0.exp();
        let (sin, cos) = angle.sin_cos();
        out.push(2.0 * (f0 * cos + f1 * sin));
        out.push(2.0 * (-f0 * sin + f1 * cos));
    }
    out
}

/// scikit-learn `make_swiss_roll` projected on (x, z): `t = 1.5 pi (1 + 2U)`,
/// `(t cos t, t sin t)` plus Gaussian noise of std `s`.
fn swissroll(n: usize, s: f64, rng: &mut Rng) -> Vec<f64> {
    let mut out = Vec::with_capacity(2 * n);
    for _ in 0..n {
        let t = 1.5 * PI * (1.0 + 2.0 * rng.uniform());
        out.push(t * t.cos() + s * rng.normal());
        out.push(t * t.sin() + s * rng.normal());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Index of the circle of `centres` that `p` (unscaled) lies on, to 1e-9.
    fn circle_of(p: &[f64], centres: &[[f64; 2]]) -> Vec<usize> {
        centres
            .iter()
            .enumerate()
            .filter(|(_, c)| ((p[0] - c[0]).hypot(p[1] - c[1]) - 1.0).abs() < 1e-9)
            .map(|(i, _)| i)
            .collect()
    }

    /// Undo the 0.85 rescale: the raw max |x| comes from regenerating with the same seed.
    fn unscale(pts: &[f64], centres: &[[f64; 2]], seed: u64) -> Vec<f64> {
        let raw = circles(centres, pts.len() / 2, 0.0, &mut Rng::new(seed));
        let max = raw.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        pts.iter().map(|v| v * max / 0.85).collect()
    }

    #[test]
    fn every_set_is_deterministic_scaled_finite_and_sized() {
        for &name in TOY_DATASETS {
            for n in [1001, 10] {
                let a = toy_2d(name, n, None, &mut Rng::new(3)).unwrap();
                let b = toy_2d(name, n, None, &mut Rng::new(3)).unwrap();
                let c = toy_2d(name, n, None, &mut Rng::new(4)).unwrap();
                assert_eq!(a.len(), 2 * n, "{name}");
                let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&a), bits(&b), "{name}: same seed, different bytes");
                assert_ne!(a, c, "{name}: other seed, same points");
                assert!(a.iter().all(|x| x.is_finite()), "{name}");
                let max = a.iter().fold(0.0f64, |m, x| m.max(x.abs()));
                assert!((max - 0.85).abs() < 1e-12, "{name}: max {max}");
            }
        }
    }

    #[test]
    fn olympic_and_rings_lie_on_their_circles_in_equal_shares() {
        for (name, centres) in [
            ("olympic", &OLYMPIC_CENTRES[..]),
            ("rings", &OLYMPIC_CENTRES[1..]),
        ] {
            let n = 1003;
            let pts = toy_2d(name, n, Some(0.0), &mut Rng::new(7)).unwrap();
            let raw = unscale(&pts, centres, 7);
            let mut counts = vec![0usize; centres.len()];
            for (i, p) in raw.chunks_exact(2).enumerate() {
                let on = circle_of(p, centres);
                assert!(
                    on.contains(&block_of(i, n, centres.len())),
                    "{name}: point {i} {p:?}"
                );
                counts[on[0]] += 1;
                if name == "rings" {
                    assert!(
                        circle_of(p, &OLYMPIC_CENTRES[..1]).is_empty(),
                        "on the first circle"
                    );
                }
            }
            let share = n as f64 / centres.len() as f64;
            for c in counts {
                assert!((c as f64 - share).abs() <= 1.0, "{name}: {c} vs {share}");
            }
        }
    }

    #[test]
    fn components_are_the_circles_the_points_lie_on() {
        for (name, centres) in [
            ("olympic", &OLYMPIC_CENTRES[..]),
            ("rings", &OLYMPIC_CENTRES[1..]),
        ] {
            let n = 103;
            let pts = toy_2d(name, n, Some(0.0), &mut Rng::new(9)).unwrap();
            let raw = unscale(&pts, centres, 9);
            let labels = toy_components(name, n).unwrap();
            assert_eq!(labels.len(), n);
            for (p, l) in raw.chunks_exact(2).zip(&labels) {
                assert!(
                    circle_of(p, centres).contains(l),
                    "{name}: {p:?} not on circle {l}"
                );
            }
        }
        let spirals = toy_components("2spirals", 5).unwrap();
        assert_eq!(spirals, vec![0, 0, 0, 1, 1]);
        assert!(toy_components("checkerboard", 10).is_none());
    }

    #[test]
    fn radial_noise_has_the_requested_std() {
        let n = 20_000;
        let pts = toy_2d("olympic", n, Some(0.05), &mut Rng::new(2)).unwrap();
        // Raw max |x| is 1.75 + max x-extent; easier: rebuild the raw set with the same seed.
        let raw = circles(&OLYMPIC_CENTRES, n, 0.05, &mut Rng::new(2));
        let max = raw.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        for (a, b) in pts.iter().zip(&raw) {
            assert!((a - b * 0.85 / max).abs() < 1e-12);
        }
        let r: Vec<f64> = raw
            .chunks_exact(2)
            .enumerate()
            .map(|(i, p)| {
                let c = OLYMPIC_CENTRES[block_of(i, n, 5)];
                (p[0] - c[0]).hypot(p[1] - c[1]) - 1.0
            })
            .collect();
        let m = r.iter().sum::<f64>() / n as f64;
        let sd = (r.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / n as f64).sqrt();
        assert!(
            m.abs() < 0.002 && (sd - 0.05).abs() < 0.002,
            "mean {m} sd {sd}"
        );
    }

    #[test]
    fn block_split_is_even_and_ordered() {
        for (n, k) in [(10, 5), (11, 5), (7, 4), (3, 5), (1003, 4)] {
            let mut counts = vec![0usize; k];
            let mut last = 0;
            for i in 0..n {
                let b = block_of(i, n, k);
                assert!(b >= last && b < k);
                last = b;
                counts[b] += 1;
            }
            let (lo, hi) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
            assert!(hi - lo <= 1, "{n} {k}: {counts:?}");
        }
    }

    #[test]
    fn generators_have_their_known_geometry() {
        let mut rng = Rng::new(1);
        // checkerboard: points in the 8 "black" squares, floor(x/2)+floor(y/2) even.
        for p in checkerboard(2000, 0.0, &mut rng).chunks_exact(2) {
            assert!(p[0].abs() <= 4.0 && p[1].abs() <= 4.0);
            let parity = ((p[0] / 2.0).floor() + (p[1] / 2.0).floor()).rem_euclid(2.0);
            assert_eq!(parity, 0.0, "{p:?}");
        }
        // 8gaussians with s = 0: exactly the 8 centres / 1.414.
        for p in eight_gaussians(100, 0.0, &mut rng).chunks_exact(2) {
            assert!((p[0].hypot(p[1]) - 4.0 / 1.414).abs() < 1e-12);
        }
        // moons with s = 0: outer on the unit circle (y >= 0), inner on the shifted one.
        let m = moons(9, 0.0, &mut rng);
        assert_eq!(&m[..2], &[1.0, 0.0]); // angle 0 of the outer moon
        for (i, p) in m.chunks_exact(2).enumerate() {
            let (cx, cy) = if i < 4 { (0.0, 0.0) } else { (1.0, 0.5) };
            assert!(((p[0] - cx).hypot(p[1] - cy) - 1.0).abs() < 1e-12);
        }
        // swissroll with s = 0: radius equals the angle parameter t in [1.5 pi, 4.5 pi].
        for p in swissroll(100, 0.0, &mut rng).chunks_exact(2) {
            let t = p[0].hypot(p[1]);
            assert!((1.5 * PI..=4.5 * PI).contains(&t));
            assert!((t.cos() * t - p[0]).abs() < 1e-9);
        }
        // pinwheel with s = 0: every point at radius 2 on its arm's angle.
        for (i, p) in pinwheel(10, 0.0, &mut rng).chunks_exact(2).enumerate() {
            let a = -(2.0 * PI * (i / 2) as f64 / 5.0 + 0.25 * 1f64.exp());
            assert!((p[0] - 2.0 * a.cos()).abs() < 1e-12 && (p[1] - 2.0 * a.sin()).abs() < 1e-12);
        }
        // 2spirals with s = 0: second half is the mirror image of a spiral arm.
        let s = two_spirals(4, 0.0, &mut rng);
        assert!(s.iter().all(|x| x.abs() <= (3.0 * PI + 0.5) / 3.0));
    }

    #[test]
    fn bad_arguments_are_errors() {
        let mut rng = Rng::new(0);
        let e = toy_2d("circles", 10, None, &mut rng)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("circles") && e.contains("olympic") && e.contains("swissroll"),
            "{e}"
        );
        assert!(toy_2d("moons", 0, None, &mut rng).is_err());
        assert!(toy_2d("moons", 10, Some(-0.1), &mut rng).is_err());
        assert!(toy_2d("moons", 10, Some(f64::NAN), &mut rng).is_err());
        assert!(toy_2d("tree", 10, Some(f64::INFINITY), &mut rng).is_err());
        assert!(toy_2d("tree", 10, Some(1e9), &mut rng).is_err());
    }

    #[test]
    fn image_sets_rescale_the_unscaled_sampler_output() {
        let raw = image_points(ImageSet::Tree, 500, 0.0, &mut Rng::new(8)).unwrap();
        let pts = toy_2d("tree", 500, None, &mut Rng::new(8)).unwrap();
        let max = raw.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        for (a, b) in pts.iter().zip(&raw) {
            assert!((a - b * 0.85 / max).abs() < 1e-12);
        }
    }
}
