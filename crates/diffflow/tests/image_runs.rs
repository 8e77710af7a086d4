//! Image runs through the model interface: configurations (old MLP files unchanged, the
//! image presets), U-Net models of each kind, and the image data of a run.

use diffflow::config::{ModelKind, Preset, RunConfig};
use diffflow::data::{ImageDataset, ImageSource};
use diffflow::model::build;
use diffflow::nn::UNetConfig;
use diffflow::rng::Rng;

/// `config.toml` files written by `diffflow train` before U-Nets existed (main at f23f126:
/// the quick preset on moons; DDPM (L_s) with validation; the tabular preset on a CSV file).
const OLD: [(&str, &str); 3] = [
    ("quick", include_str!("data/old-configs/quick.toml")),
    ("ddpm-ls", include_str!("data/old-configs/ddpm-ls.toml")),
    ("tabular", include_str!("data/old-configs/tabular.toml")),
];

#[test]
fn old_mlp_config_files_load_and_save_byte_identically() {
    for (name, text) in OLD {
        let cfg = RunConfig::from_toml(text).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            cfg.model.unet.is_none() && cfg.data.image.is_none(),
            "{name}"
        );
        assert!(!cfg.sample.tweedie, "{name}");
        assert_eq!(
            cfg.to_toml().unwrap(),
            text,
            "{name}: re-saved file differs"
        );
    }
    // The MLP presets write none of the new keys.
    for p in [Preset::Quick, Preset::Paper2d, Preset::Tabular] {
        let text = RunConfig::preset(p, "rings").to_toml().unwrap();
        for key in ["unet", "image", "tweedie"] {
            assert!(!text.contains(key), "{p:?} writes '{key}'");
        }
    }
}

fn mnist_preset() -> RunConfig {
    let mut c = RunConfig::preset(Preset::Mnist, "mnist");
    if let Some(img) = c.data.image.as_mut() {
        img.dir = Some("/nonexistent/mnist".into());
    }
    c
}

#[test]
fn image_presets_follow_the_authors_settings_and_round_trip() {
    let c = mnist_preset();
    c.validate().unwrap();
    assert_eq!(c.model.unet, Some(UNetConfig::mnist_cpu()));
    assert_eq!(
        c.model.g.to_string(),
        diffflow::sde::Diffusion::Constant { value: 1.0 }.to_string()
    );
    assert_eq!(
        (c.model.grid.t_min, c.model.grid.t_max, c.model.grid.beta),
        (0.001, 0.05, 0.5)
    );
    assert_eq!(c.train.steps.to_string(), "5,10@500,20@1000,30@1500");
    assert_eq!(
        (c.train.lr, c.train.clip, c.train.ema_decay),
        (2e-4, 1.0, 0.999)
    );
    assert_eq!(c.sample.steps, Some(30));
    assert!(c.sample.tweedie);
    let img = c.data.image.as_ref().unwrap();
    assert_eq!(
        (img.set, img.levels, img.shape.dim()),
        (ImageDataset::Mnist, 256, 784)
    );
    let text = c.to_toml().unwrap();
    assert_eq!(RunConfig::from_toml(&text).unwrap(), c);
    // Fashion-MNIST by name; the digits preset on the built-in set.
    let f = RunConfig::preset(Preset::Mnist, "fashion-mnist");
    assert_eq!(f.data.image.unwrap().set, ImageDataset::FashionMnist);
    let d = RunConfig::preset(Preset::DigitsImages, "digits-images");
    d.validate().unwrap();
    assert_eq!(d.model.unet, Some(UNetConfig::tiny(1, 8, 8)));
    assert_eq!(RunConfig::from_toml(&d.to_toml().unwrap()).unwrap(), d);
    // Scaled progressive N.
    assert_eq!(
        diffflow::config::progressive(400).to_string(),
        "5,10@100,20@200,30@300"
    );
}

#[test]
fn image_configs_refuse_what_does_not_fit() {
    let err = |c: &RunConfig| c.validate().unwrap_err().to_string();
    // The CNF is not built on U-Nets.
    let c = mnist_preset().for_model(ModelKind::Cnf);
    assert!(err(&c).contains("CNF"), "{}", err(&c));
    // U-Nets need images of their shape.
    let mut c = mnist_preset();
    c.data.image = None;
    assert!(
        err(&c).contains("U-Net nets need image data"),
        "{}",
        err(&c)
    );
    let mut c = mnist_preset();
    c.data.image = Some(ImageSource::new(ImageDataset::Digits, None));
    assert!(err(&c).contains("1x28x28"), "{}", err(&c));
    // The folder sets need their folder.
    let c = RunConfig::preset(Preset::Mnist, "mnist");
    assert!(err(&c).contains("--data-dir"), "{}", err(&c));
    // A hostile U-Net in a file: the field is named.
    let text = mnist_preset()
        .to_toml()
        .unwrap()
        .replace("groups = 4", "groups = 3");
    let e = RunConfig::from_toml(&text).unwrap_err().to_string();
    assert!(e.contains("unet.groups"), "{e}");
}

#[test]
fn unet_models_of_each_kind_and_matched_ddpm() {
    let d = RunConfig::preset(Preset::DigitsImages, "digits-images");
    let flow = build(&d.model, 64, &mut Rng::new(0)).unwrap();
    let per_net = UNetConfig::tiny(1, 8, 8).num_params();
    assert_eq!(flow.num_params(), 2 * per_net);
    assert_eq!(flow.drift.vars().len(), flow.score.vars().len());
    // The wrong dimension is an error, not a panic.
    let e = build(&d.model, 63, &mut Rng::new(0))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("64 pixels"), "{e}");
    // DDPM (L_s): the VP drift (no parameters) and one eps-U-Net with about the parameters
    // of DiffFlow's two (its base width chosen), the time embedding rescaled to T = 1.
    let mut m = mnist_preset().for_model(ModelKind::DdpmLs);
    m.fit_to_data(784, true);
    m.validate().unwrap();
    let u = m.model.unet.clone().unwrap();
    assert_eq!(u.time_scale, UNetConfig::mnist_cpu().time_scale * 0.05);
    let target = 2 * UNetConfig::mnist_cpu().num_params();
    let flow = build(&m.model, 784, &mut Rng::new(0)).unwrap();
    assert_eq!(flow.drift.num_params(), 0);
    let got = flow.score.num_params();
    assert_eq!(got, u.num_params());
    assert!(
        (got as f64 / target as f64 - 1.0).abs() < 0.15,
        "{got} vs {target}"
    );
    // No other base width of the allowed step is nearer.
    for ch in [u.ch - 4, u.ch + 4] {
        let other = UNetConfig { ch, ..u.clone() }.num_params();
        assert!(
            other.abs_diff(target) >= got.abs_diff(target),
            "ch {ch}: {other}"
        );
    }
}

#[test]
fn digits_image_data_of_a_run() {
    let c = RunConfig::preset(Preset::DigitsImages, "digits-images");
    let data = c.training_data().unwrap();
    assert_eq!(data.dim, 64);
    assert_eq!(data.dequantize, vec![2.0 / 17.0; 64]);
    assert_eq!(data.standardizer.mean, vec![8.5; 64]);
    assert!(data.train.iter().all(|v| (-1.0..1.0).contains(v)));
    assert_eq!(data.len() + (data.val.len() + data.test.len()) / 64, 1797);
    // Same seed, same bytes.
    assert_eq!(c.training_data().unwrap().test, data.test);
}
