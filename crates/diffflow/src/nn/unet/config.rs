//! Architecture of a [`super::UNet`]: image shape, widths, depth, attention, dropout, and the
//! closed-form parameter count.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// Epsilon of every GroupNorm (as DDPM).
pub const GN_EPS: f64 = 1e-6;

/// The sinusoidal time embedding reads `time_scale · t`. DiffFlow's times lie in
/// `[t_min, T] = [0.001, 0.05]`, DDPM's integer steps in `[0, 1000)`, for which the embedding's
/// frequencies (`10000^{-i/(ch/2 − 1)}`) were chosen; `1000 / T = 20000` maps `T` to 1000 (and
/// `t_min` to 20), so the embedding sees the range it was designed for.
pub const DEFAULT_TIME_SCALE: f64 = 20_000.0;

fn default_time_scale() -> f64 {
    DEFAULT_TIME_SCALE
}

/// Architecture of a DDPM-style U-Net (Ho et al. 2020) over images of `channels × height ×
/// width`, stored as rows `[B, C·H·W]` (channel-major, then row, then column).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UNetConfig {
    /// Image channels `C` (1 for MNIST).
    pub channels: usize,
    /// Image height `H`.
    pub height: usize,
    /// Image width `W`.
    pub width: usize,
    /// Base number of channels (also the width of the sinusoidal time embedding; the time
    /// embedding `temb` has `4·ch`).
    pub ch: usize,
    /// Channel multiplier of each level: level `l` has `ch · mults[l]` channels and resolution
    /// `H / 2^l × W / 2^l`.
    pub mults: Vec<usize>,
    /// ResBlocks per level on the way down (`blocks + 1` on the way up).
    pub blocks: usize,
    /// Levels with self-attention after each ResBlock, by their height (e.g. `[7]` for the
    /// 7×7 level of a 28×28 net). The middle block always has attention.
    #[serde(default)]
    pub attn: Vec<usize>,
    /// Dropout probability inside the ResBlocks (active only while a dropout seed is set).
    #[serde(default)]
    pub dropout: f64,
    /// Number of GroupNorm groups (must divide `ch`).
    pub groups: usize,
    /// Scale of `t` before the sinusoidal embedding (see [`DEFAULT_TIME_SCALE`]).
    #[serde(default = "default_time_scale")]
    pub time_scale: f64,
}

impl UNetConfig {
    /// A test-sized net: `ch = 4`, two levels (`mults = [1, 1]`), one ResBlock per level,
    /// attention at the lower level, 2 groups: 4,877 parameters for a 1-channel image.
    /// `h` and `w` must be even.
    pub fn tiny(c: usize, h: usize, w: usize) -> Self {
        UNetConfig {
            channels: c,
            height: h,
            width: w,
            ch: 4,
            mults: vec![1, 1],
            blocks: 1,
            attn: vec![h / 2],
            dropout: 0.0,
            groups: 2,
            time_scale: DEFAULT_TIME_SCALE,
        }
    }

    /// The CPU MNIST net: 28×28×1, three levels 28 → 14 → 7 (`ch = 16`, `mults = [1, 2, 2]`),
    /// one ResBlock per level, attention at 7×7, 4 groups, dropout 0.1 (DDPM's), 280,177
    /// parameters. Sized so that one DiffFlow iteration at batch 64, N = 10 takes seconds
    /// on two cores (see `benches/unet.rs`).
    pub fn mnist_cpu() -> Self {
        UNetConfig {
            channels: 1,
            height: 28,
            width: 28,
            ch: 16,
            mults: vec![1, 2, 2],
            blocks: 1,
            attn: vec![7],
            dropout: 0.1,
            groups: 4,
            time_scale: DEFAULT_TIME_SCALE,
        }
    }

    /// Number of levels (resolutions).
    pub fn levels(&self) -> usize {
        self.mults.len()
    }

    /// Data dimension `C·H·W`.
    pub fn dim(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// Height and width of level `l`.
    pub fn resolution(&self, l: usize) -> (usize, usize) {
        (self.height >> l, self.width >> l)
    }

    /// Whether the ResBlocks of level `l` are followed by attention.
    pub fn has_attn(&self, l: usize) -> bool {
        self.attn.contains(&self.resolution(l).0)
    }

    /// Checks every field; the error names the bad one.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, msg: String| Err(Error::config(format!("unet.{field}: {msg}")));
        for (field, v) in [
            ("channels", self.channels),
            ("height", self.height),
            ("width", self.width),
            ("blocks", self.blocks),
            ("groups", self.groups),
        ] {
            if v == 0 {
                return bad(field, "must be >= 1".into());
            }
        }
        if self.ch < 4 || self.ch % 2 != 0 {
            return bad("ch", format!("must be even and >= 4, got {}", self.ch));
        }
        if self.mults.is_empty() || self.mults.contains(&0) {
            return bad(
                "mults",
                format!("need one or more multipliers >= 1, got {:?}", self.mults),
            );
        }
        if self.mults.len() > 16 {
            return bad("mults", format!("{} levels is too many", self.mults.len()));
        }
        if self.ch % self.groups != 0 {
            return bad(
                "groups",
                format!("{} groups do not divide ch = {}", self.groups, self.ch),
            );
        }
        let f = 1usize << (self.levels() - 1);
        for (field, v) in [("height", self.height), ("width", self.width)] {
            if v % f != 0 {
                return bad(
                    field,
                    format!(
                        "{v} is not divisible by 2^(levels - 1) = {f} ({} levels)",
                        self.levels()
                    ),
                );
            }
        }
        let res: Vec<usize> = (0..self.levels()).map(|l| self.resolution(l).0).collect();
        if let Some(r) = self.attn.iter().find(|r| !res.contains(r)) {
            return bad(
                "attn",
                format!("resolution {r} is not one of the levels' heights {res:?}"),
            );
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(
                "dropout",
                format!("must be in [0, 1), got {}", self.dropout),
            );
        }
        if !(self.time_scale.is_finite() && self.time_scale > 0.0) {
            return bad(
                "time_scale",
                format!("must be finite and > 0, got {}", self.time_scale),
            );
        }
        Ok(())
    }

    /// Number of trainable scalars, in closed form: per ResBlock `cin → cout` two GroupNorms
    /// (`2cin + 2cout`), conv1 (`9·cin·cout + cout`), the time projection (`4ch·cout + cout`),
    /// conv2 (`9·cout² + cout`) and a 1×1 shortcut when `cin ≠ cout` (`cin·cout + cout`); per
    /// attention block on `c` channels a GroupNorm and four 1×1 convs (`2c + 4(c² + c)`).
    pub fn num_params(&self) -> usize {
        let (ch, c_img) = (self.ch, self.channels);
        let temb = 4 * ch;
        let conv = |cin: usize, cout: usize, k: usize| k * k * cin * cout + cout;
        let res = |cin: usize, cout: usize| {
            2 * cin
                + conv(cin, cout, 3)
                + temb * cout
                + cout
                + 2 * cout
                + conv(cout, cout, 3)
                + if cin != cout { conv(cin, cout, 1) } else { 0 }
        };
        let attn = |c: usize| 2 * c + 4 * conv(c, c, 1);
        let mut n = (ch * temb + temb) + (temb * temb + temb) + conv(c_img, ch, 3);
        // Down path; `skips` are the channels of the tensors handed to the up path.
        let mut skips = vec![ch];
        let mut c = ch;
        for l in 0..self.levels() {
            let cout = ch * self.mults[l];
            for _ in 0..self.blocks {
                n += res(c, cout);
                c = cout;
                if self.has_attn(l) {
                    n += attn(c);
                }
                skips.push(c);
            }
            if l + 1 < self.levels() {
                n += conv(c, c, 3);
                skips.push(c);
            }
        }
        n += 2 * res(c, c) + attn(c);
        for l in (0..self.levels()).rev() {
            let cout = ch * self.mults[l];
            for _ in 0..=self.blocks {
                let skip = skips.pop().unwrap_or(0);
                n += res(c + skip, cout);
                c = cout;
                if self.has_attn(l) {
                    n += attn(c);
                }
            }
            if l > 0 {
                n += conv(c, c, 3);
            }
        }
        n + 2 * c + conv(c, c_img, 3)
    }
}
