//! Micro-benchmarks (`cargo bench -p diffflow`): one forward + backward of the paper's MLP
//! on one tile of rows, and one adjoint gradient at a small size. Whole-iteration figures
//! against the machine's GEMM rate: `diffflow bench`.

use candle_core::{DType, Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use diffflow::adjoint::{adjoint_gradient, TILE_ROWS};
use diffflow::flow::{DiffFlow, Steps};
use diffflow::nn::{
    mlp_forward_flops, mlp_pullback_flops, Mlp, MlpConfig, MlpEngine, Scratch, Tape,
};
use diffflow::rng::Rng;
use diffflow::sde::{fixed_grid, Diffusion, GridSpec};

fn network_step(c: &mut Criterion) {
    let cfg = MlpConfig::paper_2d();
    let mut rng = Rng::new(0);
    let mlp = Mlp::new(2, &cfg, DType::F32, &mut rng).unwrap();
    let e = MlpEngine::<f32>::new(&mlp).unwrap();
    let rows = TILE_ROWS;
    let x: Vec<f32> = rng.normals(rows * 2).iter().map(|v| *v as f32).collect();
    let cot: Vec<f32> = rng.normals(rows * 2).iter().map(|v| *v as f32).collect();
    let tf = e.time_features(0.01);
    let (mut y, mut dx) = (vec![0.0f32; rows * 2], vec![0.0f32; rows * 2]);
    let (mut tape, mut scratch) = (Tape::default(), Scratch::default());
    let mut grads = e.zero_grads();
    let mut dh = vec![0.0f32; cfg.width];
    let flops = mlp_forward_flops(&cfg, 2, rows) + mlp_pullback_flops(&cfg, 2, rows, true);
    let mut g = c.benchmark_group("mlp");
    g.throughput(Throughput::Elements(flops));
    g.bench_function(
        format!("forward+backward paper-2d net, {rows} rows (elements = FLOPs)"),
        |b| {
            b.iter(|| {
                e.forward(&tf, &x, &mut y, &mut tape, true);
                e.backward(
                    &tape,
                    &cot,
                    &mut dx,
                    Some((&mut grads, &mut dh)),
                    &mut scratch,
                );
            })
        },
    );
    g.throughput(Throughput::Elements(mlp_forward_flops(&cfg, 2, rows)));
    g.bench_function(
        format!("forward paper-2d net, {rows} rows (elements = FLOPs)"),
        |b| b.iter(|| e.forward(&tf, &x, &mut y, &mut tape, false)),
    );
    g.finish();
}

fn adjoint(c: &mut Criterion) {
    let cfg = MlpConfig::paper_2d();
    let mut rng = Rng::new(1);
    let flow = DiffFlow {
        drift: Box::new(Mlp::new(2, &cfg, DType::F32, &mut rng).unwrap()),
        score: Box::new(Mlp::new(2, &cfg, DType::F32, &mut rng).unwrap()),
        diffusion: Diffusion::Constant { value: 0.2 },
    };
    let (n, b) = (5, 256);
    let steps = Steps::new(fixed_grid(&GridSpec::default(), n), &flow.diffusion);
    let x0 = Tensor::from_vec(rng.normals(b * 2), (b, 2), &Device::Cpu)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    let noise = Tensor::from_vec(rng.normals(n * b * 2), (n, b, 2), &Device::Cpu)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    c.bench_function(
        &format!("adjoint gradient paper-2d nets, batch {b}, N = {n}, 1 thread"),
        |bch| bch.iter(|| adjoint_gradient(&flow, &x0, &steps, &noise, 1, 1).unwrap()),
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = network_step, adjoint
}
criterion_main!(benches);
