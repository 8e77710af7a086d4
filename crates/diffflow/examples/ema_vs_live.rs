use candle_core::{Device, Tensor};
use diffflow::config::Weights;
use diffflow::flow::{neg_elbo, Steps};
use diffflow::rng::Rng;
use diffflow::sde::fixed_grid;
use diffflow::train::{load_run, TrainData};

fn main() {
    let dir = std::env::args().nth(1).unwrap();
    for w in [Weights::Live, Weights::Ema] {
        let run = load_run(std::path::Path::new(&dir), Some(w)).unwrap();
        let data = TrainData::toy(&run.cfg.data, run.cfg.train.seed).unwrap();
        let n = run.cfg.train.steps.last();
        let steps = Steps::new(fixed_grid(&run.cfg.model.grid, n), &run.flow.diffusion);
        let m = 4000.min(data.test.len() / 2);
        let x = Tensor::from_vec(data.test[..2 * m].to_vec(), (m, 2), &Device::Cpu)
            .unwrap()
            .to_dtype(run.flow.dtype())
            .unwrap();
        let mut rng = Rng::new(5);
        let mut tot = 0.0;
        let reps = 4;
        for _ in 0..reps {
            let noise = Tensor::from_vec(rng.normals(n * m * 2), (n, m, 2), &Device::Cpu)
                .unwrap()
                .to_dtype(run.flow.dtype())
                .unwrap();
            let v = neg_elbo(&run.flow, &x, &steps, &noise).unwrap();
            tot += v.iter().sum::<f64>() / m as f64;
        }
        println!(
            "{w:?}: held-out neg ELBO (standardised units) {:.4}",
            tot / reps as f64
        );
    }
}
