//! Dropout masks as a pure function of `(seed, t, layer, element)`, so that every evaluation
//! of the net at the same time `t` under the same seed (the candle forward pass, the engine,
//! the stochastic adjoint's recomputation of a step) drops the same units.
//!
//! The element index is the position in the NCHW activation `[B, C, H, W]` of the evaluated
//! batch: a row's mask depends on its place in the batch handed to the net (for the adjoint,
//! its place in its chunk).

/// SplitMix64's finaliser: a bijection of `u64` with full avalanche.
#[inline(always)]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// The dropout of one layer in one evaluation: keeps element `i` when its uniform draw is at
/// least `p`, and scales kept elements by `1/(1 − p)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Mask {
    key: u64,
    p: f64,
    scale: f64,
}

impl Mask {
    /// The mask of ResBlock `layer` at time `t` under `seed`, with drop probability `p`;
    /// `None` when nothing is dropped (no seed, or `p = 0`).
    pub fn new(seed: Option<u64>, t: f64, layer: u64, p: f64) -> Option<Mask> {
        let seed = seed?;
        if p <= 0.0 {
            return None;
        }
        let key = mix(mix(mix(seed) ^ t.to_bits()).wrapping_add(layer.wrapping_mul(GOLDEN)));
        Some(Mask {
            key,
            p,
            scale: 1.0 / (1.0 - p),
        })
    }

    /// The factor of element `i`: 0 (dropped) or `1/(1 − p)`.
    #[inline(always)]
    pub fn factor(&self, i: u64) -> f64 {
        let u = (mix(self.key.wrapping_add(i.wrapping_mul(GOLDEN))) >> 11) as f64
            * (1.0 / (1u64 << 53) as f64);
        if u >= self.p {
            self.scale
        } else {
            0.0
        }
    }

    /// `a ← a ⊙ mask` for an activation in the engine's channel-major layout `[c, B·hw]`
    /// (element `(ch, b, pixel)` has NCHW index `(b·c + ch)·hw + pixel`).
    #[inline(always)]
    pub fn apply<T: crate::nn::Real>(&self, a: &mut [T], c: usize, batch: usize, hw: usize) {
        for ch in 0..c {
            for b in 0..batch {
                let seg = &mut a[(ch * batch + b) * hw..][..hw];
                let base = ((b * c + ch) * hw) as u64;
                for (p, v) in seg.iter_mut().enumerate() {
                    *v *= T::from_f64(self.factor(base + p as u64));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_repeat_differ_and_drop_the_right_share() {
        let a = Mask::new(Some(7), 0.01, 3, 0.25).unwrap();
        let n = 100_000u64;
        let f: Vec<f64> = (0..n).map(|i| a.factor(i)).collect();
        let again: Vec<f64> = (0..n).map(|i| a.factor(i)).collect();
        assert_eq!(f, again);
        let dropped = f.iter().filter(|v| **v == 0.0).count() as f64 / n as f64;
        // standard error sqrt(p(1-p)/n) = 0.0014
        assert!((dropped - 0.25).abs() < 0.007, "{dropped}");
        assert!(f.iter().all(|v| *v == 0.0 || *v == 1.0 / 0.75));
        let others = [
            Mask::new(Some(8), 0.01, 3, 0.25).unwrap(),
            Mask::new(Some(7), 0.02, 3, 0.25).unwrap(),
            Mask::new(Some(7), 0.01, 4, 0.25).unwrap(),
        ];
        for o in others {
            let g: Vec<f64> = (0..n).map(|i| o.factor(i)).collect();
            let same = f.iter().zip(&g).filter(|(x, y)| x == y).count() as f64 / n as f64;
            // independent masks agree with probability 0.75² + 0.25² = 0.625
            assert!((same - 0.625).abs() < 0.01, "{same}");
        }
        assert!(Mask::new(None, 0.01, 3, 0.25).is_none());
        assert!(Mask::new(Some(1), 0.01, 3, 0.0).is_none());
    }
}
