//! The U-Net as data: its layers in forward order and its parameters (names, shapes,
//! initialisation) in [`crate::nn::TimeNet::vars`] order. The candle forward pass, the engine,
//! the initialisation and the FLOP count all walk this one description.

use super::config::UNetConfig;

/// A convolution (`k` = 1 or 3, zero padding `k / 2`): weight `[cout, cin, k, k]` at parameter
/// `w`, bias `[cout]` at `w + 1`. `stride` 2 halves the resolution; `up` 2 reads its input
/// upsampled ×2 (nearest neighbour) first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Conv {
    pub w: usize,
    pub cin: usize,
    pub cout: usize,
    pub k: usize,
    pub stride: usize,
    pub up: usize,
}

/// A GroupNorm over `c` channels: scale at parameter `p`, shift at `p + 1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Norm {
    pub p: usize,
    pub c: usize,
}

/// `shortcut(x) + conv2(dropout(SiLU(GN2(conv1(SiLU(GN1(x))) + proj(SiLU(temb))))))`, with
/// the time projection's weight `[cout, 4ch]` at parameter `temb`, bias at `temb + 1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ResBlock {
    pub norm1: Norm,
    pub conv1: Conv,
    pub temb: usize,
    pub norm2: Norm,
    pub conv2: Conv,
    pub shortcut: Option<Conv>,
    /// Ordinal of the block (its dropout layer id).
    pub id: u64,
}

/// Single-head self-attention with a residual: `x + proj(softmax(qᵀk/√c) applied to v)` with
/// `q, k, v` 1×1 convs of `GN(x)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Attention {
    pub norm: Norm,
    pub q: Conv,
    pub k: Conv,
    pub v: Conv,
    pub proj: Conv,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    /// The input conv, a stride-2 downsample, or a ×2 upsample + conv.
    Conv(Conv),
    Res(ResBlock),
    Attn(Attention),
    /// `conv(SiLU(GN(x)))` back to the image channels.
    Out(Norm, Conv),
}

/// One layer: its op, the height and width of its input, and how it meets the skips.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Layer {
    pub op: Op,
    pub h: usize,
    pub w: usize,
    /// Channels of the skip popped and concatenated after the input's channels (0: none).
    pub skip: usize,
    /// Whether the output is pushed for the up path.
    pub push: bool,
}

impl Layer {
    /// Channels of the input (with the skip) and of the output.
    pub fn channels(&self) -> (usize, usize) {
        match self.op {
            Op::Conv(c) => (c.cin, c.cout),
            Op::Res(r) => (r.conv1.cin, r.conv2.cout),
            Op::Attn(a) => (a.norm.c, a.norm.c),
            Op::Out(_, c) => (c.cin, c.cout),
        }
    }

    /// Height and width of the output.
    pub fn out_hw(&self) -> (usize, usize) {
        match self.op {
            Op::Conv(c) => (self.h * c.up / c.stride, self.w * c.up / c.stride),
            _ => (self.h, self.w),
        }
    }
}

/// How a parameter starts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Init {
    /// Uniform in `±1/√fan_in` (PyTorch's default for Linear and Conv2d).
    Uniform {
        fan_in: usize,
    },
    Zeros,
    Ones,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Param {
    pub name: String,
    pub shape: Vec<usize>,
    pub init: Init,
}

/// The whole net.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Plan {
    pub layers: Vec<Layer>,
    pub params: Vec<Param>,
    /// Weights of the time MLP `Linear(ch, 4ch) → SiLU → Linear(4ch, 4ch)` (biases follow).
    pub temb: [usize; 2],
    /// Width `ch` of the sinusoidal embedding.
    pub emb_dim: usize,
}

struct Builder {
    params: Vec<Param>,
    temb_dim: usize,
    blocks: u64,
}

impl Builder {
    fn push(&mut self, name: String, shape: Vec<usize>, init: Init) -> usize {
        self.params.push(Param { name, shape, init });
        self.params.len() - 1
    }

    /// Weight and bias of a Linear/Conv; `zero` initialises both to 0.
    fn affine(&mut self, name: &str, shape: Vec<usize>, zero: bool) -> usize {
        let fan_in: usize = shape[1..].iter().product();
        let init = if zero {
            Init::Zeros
        } else {
            Init::Uniform { fan_in }
        };
        let out = shape[0];
        let w = self.push(format!("{name}.weight"), shape, init);
        self.push(format!("{name}.bias"), vec![out], init);
        w
    }

    fn linear(&mut self, name: &str, out: usize, inp: usize) -> usize {
        self.affine(name, vec![out, inp], false)
    }

    #[allow(clippy::too_many_arguments)]
    fn conv(&mut self, name: &str, cin: usize, cout: usize, k: usize, zero: bool) -> Conv {
        let w = self.affine(name, vec![cout, cin, k, k], zero);
        Conv {
            w,
            cin,
            cout,
            k,
            stride: 1,
            up: 1,
        }
    }

    fn norm(&mut self, name: &str, c: usize) -> Norm {
        let p = self.push(format!("{name}.weight"), vec![c], Init::Ones);
        self.push(format!("{name}.bias"), vec![c], Init::Zeros);
        Norm { p, c }
    }

    fn res(&mut self, name: &str, cin: usize, cout: usize) -> ResBlock {
        let norm1 = self.norm(&format!("{name}.norm1"), cin);
        let conv1 = self.conv(&format!("{name}.conv1"), cin, cout, 3, false);
        let temb = self.linear(&format!("{name}.temb_proj"), cout, self.temb_dim);
        let norm2 = self.norm(&format!("{name}.norm2"), cout);
        let conv2 = self.conv(&format!("{name}.conv2"), cout, cout, 3, true);
        let shortcut =
            (cin != cout).then(|| self.conv(&format!("{name}.nin_shortcut"), cin, cout, 1, false));
        self.blocks += 1;
        ResBlock {
            norm1,
            conv1,
            temb,
            norm2,
            conv2,
            shortcut,
            id: self.blocks - 1,
        }
    }

    fn attn(&mut self, name: &str, c: usize) -> Attention {
        Attention {
            norm: self.norm(&format!("{name}.norm"), c),
            q: self.conv(&format!("{name}.q"), c, c, 1, false),
            k: self.conv(&format!("{name}.k"), c, c, 1, false),
            v: self.conv(&format!("{name}.v"), c, c, 1, false),
            proj: self.conv(&format!("{name}.proj_out"), c, c, 1, true),
        }
    }
}

impl Plan {
    /// The layers and parameters of `cfg` (assumed valid), with the DDPM module names
    /// (`down.{level}.block.{i}.conv1.weight`, `mid.attn_1.q.bias`, `up.{level}.upsample.conv.weight`, …).
    pub fn new(cfg: &UNetConfig) -> Plan {
        let ch = cfg.ch;
        let mut b = Builder {
            params: Vec::new(),
            temb_dim: 4 * ch,
            blocks: 0,
        };
        let temb = [
            b.linear("temb.dense.0", 4 * ch, ch),
            b.linear("temb.dense.1", 4 * ch, 4 * ch),
        ];
        let mut layers = Vec::new();
        let layer = |op, (h, w): (usize, usize), skip, push| Layer {
            op,
            h,
            w,
            skip,
            push,
        };
        let conv_in = b.conv("conv_in", cfg.channels, ch, 3, false);
        layers.push(layer(Op::Conv(conv_in), cfg.resolution(0), 0, true));
        let mut skips = vec![ch];
        let mut c = ch;
        let levels = cfg.levels();
        for l in 0..levels {
            let res = cfg.resolution(l);
            let cout = ch * cfg.mults[l];
            for i in 0..cfg.blocks {
                let block = b.res(&format!("down.{l}.block.{i}"), c, cout);
                c = cout;
                let attn = cfg.has_attn(l);
                layers.push(layer(Op::Res(block), res, 0, !attn));
                if attn {
                    let a = b.attn(&format!("down.{l}.attn.{i}"), c);
                    layers.push(layer(Op::Attn(a), res, 0, true));
                }
                skips.push(c);
            }
            if l + 1 < levels {
                let mut down = b.conv(&format!("down.{l}.downsample.conv"), c, c, 3, false);
                down.stride = 2;
                layers.push(layer(Op::Conv(down), res, 0, true));
                skips.push(c);
            }
        }
        let res = cfg.resolution(levels - 1);
        let mid = [
            Op::Res(b.res("mid.block_1", c, c)),
            Op::Attn(b.attn("mid.attn_1", c)),
            Op::Res(b.res("mid.block_2", c, c)),
        ];
        for op in mid {
            layers.push(layer(op, res, 0, false));
        }
        for l in (0..levels).rev() {
            let res = cfg.resolution(l);
            let cout = ch * cfg.mults[l];
            for i in 0..=cfg.blocks {
                let skip = skips.pop().expect("one skip per up-path block");
                let block = b.res(&format!("up.{l}.block.{i}"), c + skip, cout);
                c = cout;
                layers.push(layer(Op::Res(block), res, skip, false));
                if cfg.has_attn(l) {
                    let a = b.attn(&format!("up.{l}.attn.{i}"), c);
                    layers.push(layer(Op::Attn(a), res, 0, false));
                }
            }
            if l > 0 {
                let mut up = b.conv(&format!("up.{l}.upsample.conv"), c, c, 3, false);
                up.up = 2;
                layers.push(layer(Op::Conv(up), res, 0, false));
            }
        }
        let norm = b.norm("norm_out", c);
        let out = b.conv("conv_out", c, cfg.channels, 3, true);
        layers.push(layer(Op::Out(norm, out), cfg.resolution(0), 0, false));
        Plan {
            layers,
            params: b.params,
            temb,
            emb_dim: ch,
        }
    }

    /// Largest `channels × pixels` of any layer's input or output (per image).
    pub fn max_activation(&self) -> usize {
        self.layers
            .iter()
            .map(|l| {
                let (cin, cout) = l.channels();
                let (ho, wo) = l.out_hw();
                (cin * l.h * l.w).max(cout * ho * wo)
            })
            .max()
            .unwrap_or(0)
    }
}
