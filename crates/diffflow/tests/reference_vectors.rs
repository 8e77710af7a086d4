//! Agreement with the authors' PyTorch code: every `*.safetensors` file in
//! `tests/data/reference/` (or in `$DIFFFLOW_REFERENCE_DIR`) holds weights, time grid, data,
//! noises, and the official states, backward noises, loss, gradients and samples.
//!
//! The networks are built with the `paper-2d` architecture (sizes read from the file), the
//! weights loaded by their official names, and everything recomputed and compared per tensor
//! by max|ours − theirs| / max|theirs|: 1e-9 for float64 files, 1e-4 for float32 files.

mod common;

use candle_core::{DType, Tensor};
use diffflow::adjoint::{adjoint_gradient, naive_gradient, Gradient};
use diffflow::checkpoint::{self, TensorFile};
use diffflow::flow::{backward_noise, forward_trajectory, DiffFlow, Steps};
use diffflow::nn::{Mlp, MlpConfig};
use diffflow::rng::Rng;
use diffflow::sample::reverse_trajectory;
use diffflow::sde::Diffusion;
use std::path::{Path, PathBuf};

fn reference_dir() -> PathBuf {
    match std::env::var_os("DIFFFLOW_REFERENCE_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/reference"),
    }
}

fn to_f64(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
}

/// max|a − b| / max|b| (max|a − b| when b is all zero).
fn rel(ours: &Tensor, theirs: &Tensor) -> f64 {
    assert_eq!(ours.dims(), theirs.dims(), "shape mismatch");
    let (a, b) = (to_f64(ours), to_f64(theirs));
    let diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, common::nan_max);
    let scale = b.iter().map(|y| y.abs()).fold(0.0, common::nan_max);
    if scale > 0.0 {
        diff / scale
    } else {
        diff
    }
}

/// The paper-2d architecture with the data dimension, width, depth and number of Fourier
/// frequencies read off the stored tensor shapes.
fn net_config(file: &TensorFile, path: &Path, prefix: &str) -> (usize, MlpConfig) {
    let w_in = file
        .get(&format!("{prefix}.input_embed.weight"), path)
        .unwrap();
    let (width, dim) = w_in.dims2().unwrap();
    let fourier = file
        .get(&format!("{prefix}.timestep_phase"), path)
        .unwrap()
        .dims2()
        .unwrap()
        .1;
    let depth = (1..)
        .take_while(|k| {
            file.tensors
                .contains_key(&format!("{prefix}.layers.{k}.0.weight"))
        })
        .count();
    let cfg = MlpConfig {
        width,
        depth,
        fourier,
        ..MlpConfig::paper_2d()
    };
    (dim, cfg)
}

struct Checker {
    name: String,
    tol: f64,
    failures: Vec<String>,
    report: Vec<String>,
}

impl Checker {
    fn check(&mut self, what: &str, ours: &Tensor, theirs: &Tensor) {
        let e = rel(ours, theirs);
        self.report.push(format!("{what}: {e:.2e}"));
        // NaN must fail too.
        if e.is_nan() || e > self.tol {
            self.failures.push(format!(
                "{}: {what} differs by {e:.3e} (tolerance {:.0e})",
                self.name, self.tol
            ));
        }
    }

    fn check_grads(
        &mut self,
        kind: &str,
        g: &Gradient,
        flow: &DiffFlow,
        file: &TensorFile,
        path: &Path,
    ) {
        for (net, prefix, grads) in [
            (flow.drift.as_ref(), "drift", &g.drift),
            (flow.score.as_ref(), "score", &g.score),
        ] {
            for ((name, _), ours) in net.vars().iter().zip(grads) {
                let key = format!("grad_{kind}.{prefix}.{name}");
                let theirs = file.get(&key, path).unwrap();
                self.check(&key, ours, theirs);
            }
        }
    }
}

fn check_file(path: &Path) -> Checker {
    let file = checkpoint::read(path).unwrap();
    let dtype = file.get("x0", path).unwrap().dtype();
    let mut ck = Checker {
        name: path.file_name().unwrap().to_string_lossy().into_owned(),
        tol: if dtype == DType::F64 { 1e-9 } else { 1e-4 },
        failures: Vec::new(),
        report: Vec::new(),
    };
    // Networks: architecture from the shapes, weights and buffers by name.
    let mut rng = Rng::new(0);
    let mut nets = Vec::new();
    for prefix in ["drift", "score"] {
        let (dim, cfg) = net_config(&file, path, prefix);
        let net = Mlp::new(dim, &cfg, dtype, &mut rng).unwrap();
        checkpoint::load_net(&net, prefix, &file, path).unwrap();
        nets.push(net);
    }
    let score = nets.pop().unwrap();
    let drift = nets.pop().unwrap();
    let flow = DiffFlow {
        drift: Box::new(drift),
        score: Box::new(score),
        diffusion: Diffusion::default(),
    };
    let t = to_f64(file.get("timestamps", path).unwrap());
    let g = to_f64(file.get("diffusion", path).unwrap());
    let steps = Steps::from_parts(t, g).unwrap();
    let x0 = file.get("x0", path).unwrap();
    let noise_f = file.get("noise_f", path).unwrap();
    let n = steps.n();

    // Forward trajectory.
    let mut fe = flow.drift.engine().unwrap();
    let states = forward_trajectory(fe.as_mut(), x0, &steps, noise_f).unwrap();
    let states_t = Tensor::stack(&states, 0).unwrap();
    ck.check("states", &states_t, file.get("states", path).unwrap());

    // Backward noises along it.
    let mut se = flow.score.engine().unwrap();
    let mut db = Vec::new();
    for i in 0..n {
        let f = fe.eval(&states[i + 1], steps.t[i + 1]).unwrap();
        let s = se.eval(&states[i + 1], steps.t[i + 1]).unwrap();
        db.push(
            backward_noise(
                &states[i],
                &states[i + 1],
                &f,
                &s,
                steps.dt(i),
                steps.g[i + 1],
            )
            .unwrap(),
        );
    }
    ck.check(
        "delta_b",
        &Tensor::stack(&db, 0).unwrap(),
        file.get("delta_b", path).unwrap(),
    );

    // Loss and gradients, adjoint and naive, each against both official gradients.
    let adj = adjoint_gradient(&flow, x0, &steps, noise_f, 2, 1).unwrap();
    let nai = naive_gradient(&flow, x0, &steps, noise_f).unwrap();
    let loss_ref = file.get("loss", path).unwrap();
    for (kind, g) in [("adjoint", &adj), ("naive", &nai)] {
        let ours = Tensor::new(g.loss.loss, &candle_core::Device::Cpu).unwrap();
        ck.check(&format!("loss ({kind})"), &ours, loss_ref);
        ck.check_grads("adjoint", g, &flow, &file, path);
        ck.check_grads("naive", g, &flow, &file, path);
    }

    // Samplers from the stored prior draw and backward noises.
    let z = file.get("z", path).unwrap();
    let noise_b = file.get("noise_b", path).unwrap();
    let sde = reverse_trajectory(&flow, z, &steps, 1.0, Some(noise_b)).unwrap();
    ck.check(
        "sample_states",
        &Tensor::stack(&sde, 0).unwrap(),
        file.get("sample_states", path).unwrap(),
    );
    ck.check("sample_x0", &sde[0], file.get("sample_x0", path).unwrap());
    let ode = reverse_trajectory(&flow, z, &steps, 0.0, None).unwrap();
    ck.check(
        "sample_states_ode",
        &Tensor::stack(&ode, 0).unwrap(),
        file.get("sample_states_ode", path).unwrap(),
    );
    ck.check(
        "sample_x0_ode",
        &ode[0],
        file.get("sample_x0_ode", path).unwrap(),
    );
    ck
}

#[test]
fn reference_vectors() {
    let dir = reference_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read reference folder {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "no *.safetensors reference vector file in {}",
        dir.display()
    );
    let mut failures = Vec::new();
    for path in &files {
        let ck = check_file(path);
        eprintln!(
            "{} (tolerance {:.0e}):\n  {}",
            ck.name,
            ck.tol,
            ck.report.join("\n  ")
        );
        failures.extend(ck.failures);
    }
    assert!(
        failures.is_empty(),
        "reference mismatches:\n{}",
        failures.join("\n")
    );
}
