//! Image runs end to end through the CLI: DiffFlow and DDPM (L_s) with tiny U-Nets on the
//! built-in 8x8 digits (train → grid and trajectory strip → sample → eval in bits/dim), and
//! broken IDX folders refused with one-line errors before any run folder is written.

use std::io::Write;
use std::path::Path;

mod common;
use common::{bin, ok, text};

fn png_size(path: &Path) -> (u32, u32) {
    let b = std::fs::read(path).unwrap();
    assert_eq!(&b[1..4], b"PNG", "{} is not a PNG", path.display());
    let be = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    (be(16), be(20))
}

#[test]
fn digits_images_train_sample_and_eval_for_diffflow_and_ddpm_ls() {
    let root = tempfile::tempdir().unwrap();
    for model in ["diffflow", "ddpm-ls"] {
        let dir = root.path().join(model);
        let out = ok(bin()
            .args(["train", "--dataset", "digits-images", "--model", model])
            .args(["--iters", "4", "--threads", "1", "--samples", "20", "--out"])
            .arg(&dir)
            .output()
            .unwrap());
        let stderr = String::from_utf8_lossy(&out.stderr);
        for f in [
            "config.toml",
            "model.safetensors",
            "samples.png",
            "trajectory.png",
        ] {
            assert!(dir.join(f).exists(), "{model}: {f} missing; {stderr}");
        }
        assert!(stderr.contains("bits/dim"), "{stderr}");
        let cfg = std::fs::read_to_string(dir.join("config.toml")).unwrap();
        assert!(
            cfg.contains("[model.unet]") && cfg.contains("[data.image]"),
            "{cfg}"
        );
        assert!(cfg.contains("set = \"digits-images\""), "{cfg}");
        // 20 samples: two rows of ten in the grid; the strip: 8 rows of 7 states.
        let (w, h) = png_size(&dir.join("samples.png"));
        let (ws, hs) = png_size(&dir.join("trajectory.png"));
        assert!(w > h && hs > ws / 2, "grid {w}x{h}, strip {ws}x{hs}");
        let grid = root.path().join(format!("{model}-grid.png"));
        ok(bin()
            .args(["sample", "--n", "30", "--threads", "1", "--run"])
            .arg(&dir)
            .arg("--out")
            .arg(&grid)
            .output()
            .unwrap());
        assert!(png_size(&grid).1 > png_size(&dir.join("samples.png")).1);
        let out = ok(bin()
            .args([
                "eval",
                "--points",
                "12",
                "--threads",
                "1",
                "--json",
                "--run",
            ])
            .arg(&dir)
            .output()
            .unwrap());
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["n"], 12, "{v}");
        assert_eq!(v["dim"], 64);
        assert_eq!(v["image"]["shape"], "1x8x8");
        assert_eq!(v["image"]["levels"], 17);
        assert!(
            v["divergence"].as_str().unwrap().contains("hutchinson"),
            "{v}"
        );
        // bits/dim = nats / (64 ln 2); a barely trained model is worse than uniform
        // pixels (log2 17 = 4.09 bits/dim) but finite.
        let bpd = v["bits_per_dim"].as_f64().unwrap();
        let nll = v["nll"].as_f64().unwrap();
        assert!(
            (bpd - nll / (64.0 * std::f64::consts::LN_2)).abs() < 1e-9,
            "{v}"
        );
        assert!(bpd.is_finite() && bpd > 0.0, "{v}");
        assert!(v["elbo_bits_per_dim"].as_f64().unwrap() >= bpd - 1.0, "{v}");
        assert!(v["image"]["bits_per_dim_stderr"].as_f64().unwrap() > 0.0);
        // 8x8 images: no LeNet judge.
        assert!(v["image"]["quality"].is_null(), "{v}");
    }
}

/// IDX bytes of unsigned bytes with `dims`.
fn idx(dims: &[u32], data_len: usize) -> Vec<u8> {
    let mut b = vec![0, 0, 0x08, dims.len() as u8];
    for d in dims {
        b.extend(d.to_be_bytes());
    }
    b.extend(std::iter::repeat_n(7u8, data_len));
    b
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::File::create(dir.join(name))
        .unwrap()
        .write_all(bytes)
        .unwrap();
}

/// A folder of 3 train and 2 test 28x28 images with labels, with `broken` replacing the
/// file it names.
fn folder(root: &Path, case: &str, broken: (&str, Vec<u8>)) -> std::path::PathBuf {
    let dir = root.join(case);
    std::fs::create_dir_all(&dir).unwrap();
    for (prefix, n) in [("train", 3u32), ("t10k", 2)] {
        write(
            &dir,
            &format!("{prefix}-images-idx3-ubyte"),
            &idx(&[n, 28, 28], n as usize * 784),
        );
        write(
            &dir,
            &format!("{prefix}-labels-idx1-ubyte"),
            &idx(&[n], n as usize),
        );
    }
    write(&dir, broken.0, &broken.1);
    dir
}

#[test]
fn broken_idx_folders_are_one_line_errors_without_a_run_folder() {
    let root = tempfile::tempdir().unwrap();
    let mut truncated = idx(&[3, 28, 28], 3 * 784);
    truncated.truncate(16 + 784 + 100);
    let mut magic = idx(&[3, 28, 28], 3 * 784);
    magic[0] = 0x12;
    let cases = [
        (
            "truncated",
            ("train-images-idx3-ubyte", truncated),
            "train-images-idx3-ubyte",
        ),
        (
            "magic",
            ("train-images-idx3-ubyte", magic),
            "train-images-idx3-ubyte",
        ),
        (
            "counts",
            ("t10k-labels-idx1-ubyte", idx(&[5], 5)),
            "t10k-labels-idx1-ubyte",
        ),
    ];
    for (case, broken, file) in cases {
        let dir = folder(root.path(), case, broken);
        let out_dir = root.path().join(format!("run-{case}"));
        let out = bin()
            .args([
                "train",
                "--dataset",
                "mnist",
                "--iters",
                "1",
                "--threads",
                "1",
            ])
            .arg("--data-dir")
            .arg(&dir)
            .arg("--out")
            .arg(&out_dir)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.code(), Some(1), "{case}: {}", text(&out));
        assert!(err.contains(file), "{case}: expected '{file}' in: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{case}: one line: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(!out_dir.exists(), "{case}: a run folder was written");
    }
    // An image folder without an image set, and a missing folder.
    let out = bin()
        .args(["train", "--dataset", "rings", "--data-dir", "/nonexistent"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--data-dir"), "{err}");
    let out = bin()
        .args([
            "train",
            "--dataset",
            "mnist",
            "--data-dir",
            "/nonexistent/mnist",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("/nonexistent/mnist"),
        "{err}"
    );
}

#[test]
fn compare_images_writes_both_grids_and_the_table() {
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("cmp");
    ok(bin()
        .args([
            "compare-images",
            "--dataset",
            "digits-images",
            "--iters",
            "3",
        ])
        .args(["--points", "4", "--threads", "1", "--out"])
        .arg(&out)
        .output()
        .unwrap());
    for f in [
        "diffflow-samples.png",
        "ddpm-ls-samples.png",
        "report.md",
        "results.json",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    let models = v["models"].as_array().unwrap();
    assert_eq!(models.len(), 2);
    assert_eq!(models[0]["model"], "DiffFlow");
    assert_eq!(models[1]["model"], "DDPM (L_s)");
    // Matched size: the DDPM's one U-Net within 15% of DiffFlow's two; same iterations.
    let p = |i: usize| models[i]["params"].as_f64().unwrap();
    assert!((p(1) / p(0) - 1.0).abs() < 0.15, "{v}");
    assert_eq!(models[0]["iters"], 3);
    assert_eq!(models[1]["iters"], 3);
    for m in models {
        assert_eq!(m["test_images"], 4);
        assert!(m["bits_per_dim_ode"].as_f64().unwrap().is_finite());
        assert!(m["bits_per_dim_elbo"].as_f64().unwrap().is_finite());
        // 8x8 images: no LeNet FID.
        assert!(m["fid_lenet"].is_null() && m["fid_by_n"].as_array().unwrap().is_empty());
    }
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        md.contains("| DiffFlow |") && md.contains("| DDPM (L_s) |"),
        "{md}"
    );
}

/// The FID that `eval` reports for a 28x28 run is the FID of the very samples `sample`
/// writes for the same seed, computed here from the file by the shipped judge on the
/// documented scale (pixels p in [0, 256) → p / 128 − 1, clipped to [-1, 1]), against the
/// run's held-out test images: sampling, units, the reference set and the judge agree end to
/// end.
#[test]
fn eval_fid_of_a_28x28_run_is_the_fid_of_the_samples_sample_writes() {
    use diffflow::classifier::Classifier;
    use diffflow::data::images::{ImageSet, Split};
    use diffflow::data::tabular::{load, LoadOptions};
    use diffflow::nn::UNetConfig;
    use diffflow::{Preset, RunConfig};

    let root = tempfile::tempdir().unwrap();
    // A folder from the shipped MNIST test file: its first 300 images as the training file,
    // the first 64 as the test file.
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../diffflow/assets/mnist");
    let set = ImageSet::from_idx_folder(&shipped, Split::Test).unwrap();
    let dir = root.path().join("idx");
    std::fs::create_dir_all(&dir).unwrap();
    for (prefix, n) in [("train", 300usize), ("t10k", 64)] {
        let mut img = idx(&[n as u32, 28, 28], 0);
        img.extend_from_slice(&set.pixels[..n * 784]);
        write(&dir, &format!("{prefix}-images-idx3-ubyte"), &img);
        let mut lab = idx(&[n as u32], 0);
        lab.extend_from_slice(&set.labels.as_ref().unwrap()[..n]);
        write(&dir, &format!("{prefix}-labels-idx1-ubyte"), &lab);
    }
    // The mnist preset on tiny U-Nets, 2 steps in training and 3 in sampling.
    let mut cfg = RunConfig::preset(Preset::Mnist, "mnist");
    cfg.model.unet = Some(UNetConfig::tiny(1, 28, 28));
    cfg.data.image.as_mut().unwrap().dir = Some(dir.clone());
    cfg.train.batch = 8;
    cfg.train.steps = diffflow::sde::StepsSchedule::parse("2").unwrap();
    cfg.sample.steps = Some(3);
    let cfg_path = root.path().join("config.toml");
    std::fs::write(&cfg_path, cfg.to_toml().unwrap()).unwrap();
    let run = root.path().join("run");
    ok(bin()
        .args(["train", "--iters", "2", "--threads", "1", "--samples", "4"])
        .arg("--config")
        .arg(&cfg_path)
        .arg("--out")
        .arg(&run)
        .output()
        .unwrap());
    let k = 40;
    let file = root.path().join("s.npy");
    ok(bin()
        .args([
            "sample",
            "--n",
            &k.to_string(),
            "--seed",
            "9",
            "--threads",
            "2",
        ])
        .arg("--run")
        .arg(&run)
        .arg("--out")
        .arg(&file)
        .output()
        .unwrap());
    let out = ok(bin()
        .args(["eval", "--points", "2", "--fid-samples", &k.to_string()])
        .args(["--seed", "9", "--threads", "1", "--json", "--run"])
        .arg(&run)
        .output()
        .unwrap());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let q = &v["image"]["quality"];
    assert_eq!(q["samples"], k, "{v}");
    let n = 64;
    assert_eq!(q["reference"], n, "{v}");
    let reported = q["fid_lenet"].as_f64().unwrap();

    let samples = load(&file, &LoadOptions::default()).unwrap();
    assert_eq!((samples.rows, samples.cols), (k, 784));
    let reference = diffflow::Model::load(&run, None, None)
        .unwrap()
        .held_out(false)
        .unwrap();
    assert_eq!(reference.len(), n * 784);
    let unit = |p: &[f64]| -> Vec<f64> {
        p.iter()
            .map(|&p| (p / 128.0 - 1.0).clamp(-1.0, 1.0))
            .collect()
    };
    let judge = Classifier::builtin(&candle_core::Device::Cpu).unwrap();
    let fid = judge
        .fid(&unit(&samples.data), &unit(&reference), 1)
        .unwrap();
    assert!(
        (fid - reported).abs() <= 1e-9 * fid.abs().max(1.0),
        "eval {reported}, from the samples {fid}"
    );
    // A barely trained model: far from the data (the floor for 40 samples is a few units).
    assert!(fid > 50.0, "{fid}");
}
