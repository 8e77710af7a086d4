//! Data files through the binary: `train --data` on a small CSV, then `eval --data` and
//! `sample --out x.csv` in the file's original columns; resume; bad files (one-line errors
//! with the line or byte offset, no run folder left); the benchmark command at toy size.

use diffflow::data::tabular::{load, save_csv, save_npy, LoadOptions, Table};
use std::path::{Path, PathBuf};
use std::process::Output;

mod common;
use common::{bin, ok};

/// A CSV with a header: `x` continuous, `const` = 3, `count` integers, `y` continuous,
/// `label` text (left out by the column selection).
fn small_csv(dir: &Path) -> PathBuf {
    let mut text = String::from("x,const,count,y,label\n");
    for i in 0..150 {
        let x = ((i * 37) % 101) as f64 / 25.0 - 2.0;
        let count = ((x + 2.0) * 1.2).floor();
        let y = 0.5 * x + ((i * 13) % 17) as f64 / 20.0;
        text += &format!("{x},3,{count},{y},item{i}\n");
    }
    let p = dir.join("small.csv");
    std::fs::write(&p, text).unwrap();
    p
}

const TINY: [&str; 12] = [
    "--iters",
    "30",
    "--width",
    "16",
    "--depth",
    "1",
    "--batch",
    "64",
    "--steps",
    "4",
    "--threads",
    "1",
];

fn train(data: &Path, out: &Path, extra: &[&str]) -> Output {
    bin()
        .arg("train")
        .arg("--data")
        .arg(data)
        .args(TINY)
        .args(extra)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn train_eval_sample_on_a_csv_in_original_columns() {
    let tmp = tempfile::tempdir().unwrap();
    let csv = small_csv(tmp.path());
    let run = tmp.path().join("run");
    let out = ok(train(
        &csv,
        &run,
        &["--columns", "0-3", "--validate-every", "10"],
    ));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("1 column(s) dropped, constant on every row: 1 (= 3)"),
        "{err}"
    );
    assert!(err.contains("dequantised 1 integer-valued column"), "{err}");
    assert!(err.contains("best checkpoint of iteration"), "{err}");
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(config.contains("[data.file]") && config.contains("columns = \"0-3\""));
    assert!(run.join("best.safetensors").exists());
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert_eq!(
        metrics.matches("\"val_metric\":\"nll\"").count(),
        3,
        "{metrics}"
    );
    assert!(metrics.contains("\"model_step\""), "{metrics}");

    // eval on the raw file: same columns, constant dropped, integers dequantised.
    let e = ok(bin()
        .args(["eval", "--json", "--trajectories", "2", "--run"])
        .arg(&run)
        .arg("--data")
        .arg(&csv)
        .output()
        .unwrap());
    let r = json(&e);
    let (nll, nll_std, ld) = (
        r["nll"].as_f64().unwrap(),
        r["nll_standardised"].as_f64().unwrap(),
        r["log_abs_det"].as_f64().unwrap(),
    );
    assert!(
        nll.is_finite() && (nll - (nll_std - ld)).abs() < 1e-9,
        "{r}"
    );
    assert_eq!(r["n"], 150);
    assert_eq!(r["dim"], 3);
    assert_eq!(r["checkpoint"], "best.safetensors");
    let notes = r["notes"].to_string();
    assert!(
        notes.contains("DEQUANTISED") && notes.contains("added U[0, 1) noise"),
        "{notes}"
    );
    // The text report labels both units.
    let text = ok(bin()
        .args([
            "eval",
            "--trajectories",
            "0",
            "--checkpoint",
            "last",
            "--split",
            "val",
            "--run",
        ])
        .arg(&run)
        .output()
        .unwrap());
    let text = String::from_utf8_lossy(&text.stdout);
    for want in [
        "nll ",
        "ORIGINAL data units",
        "nll_standardised",
        "standardised units",
        "model.safetensors",
        "validation split",
        "note: density of the DEQUANTISED data",
        "note: density of the 3 modelled columns",
    ] {
        assert!(text.contains(want), "'{want}' in:\n{text}");
    }

    // Samples in the original columns, constant filled in, names from the header.
    let x = tmp.path().join("x.csv");
    ok(bin()
        .args(["sample", "--n", "50", "--quantize", "--run"])
        .arg(&run)
        .arg("--out")
        .arg(&x)
        .output()
        .unwrap());
    let t = load(&x, &LoadOptions::default()).unwrap();
    assert_eq!((t.rows, t.cols), (50, 4));
    let names = t.names.clone().unwrap();
    assert_eq!(names, vec!["x", "const", "count", "y"]);
    assert!((0..50).all(|r| t.row(r)[1] == 3.0 && t.row(r)[2].fract() == 0.0));
    // eval reads them back (4 columns), and a file of the 3 modelled columns too.
    ok(bin()
        .args(["eval", "--json", "--trajectories", "0", "--run"])
        .arg(&run)
        .arg("--data")
        .arg(&x)
        .output()
        .unwrap());
    let three = tmp.path().join("three.npy");
    let data: Vec<f64> = (0..50)
        .flat_map(|r| [t.row(r)[0], t.row(r)[2] + 0.5, t.row(r)[3]])
        .collect();
    save_npy(&three, &data, 50, 3).unwrap();
    let r = json(&ok(bin()
        .args(["eval", "--json", "--trajectories", "0", "--run"])
        .arg(&run)
        .arg("--data")
        .arg(&three)
        .output()
        .unwrap()));
    assert!(
        r["notes"]
            .to_string()
            .contains("taken as already dequantised"),
        "{r}"
    );
    // A file of another width: the error says which widths fit.
    let two = tmp.path().join("two.npy");
    save_npy(&two, &[0.0; 4], 2, 2).unwrap();
    let out = bin()
        .args(["eval", "--run"])
        .arg(&run)
        .arg("--data")
        .arg(&two)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("give 4 or 3 columns"),
        "{err}"
    );

    // Resume from another folder: the data file's path is absolute.
    let other = tmp.path().join("elsewhere");
    std::fs::create_dir_all(&other).unwrap();
    let out = ok(bin()
        .current_dir(&other)
        .args(["train", "--iters", "40", "--resume"])
        .arg(&run)
        .output()
        .unwrap());
    assert!(String::from_utf8_lossy(&out.stderr).contains("resuming at iteration 30"));
}

/// `train --data FILE` fails with one line naming the file and `want`, leaving no folder.
fn refused(tmp: &Path, file: &Path, want: &str) {
    let out_dir = tmp.join(format!(
        "run-{}",
        file.file_name().unwrap().to_string_lossy()
    ));
    let out = train(file, &out_dir, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "should fail: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(
        err.contains(&*file.file_name().unwrap().to_string_lossy()),
        "{err}"
    );
    assert!(err.contains(want), "expected '{want}' in: {err}");
    assert!(!out_dir.exists(), "nothing written for {}", file.display());
}

#[test]
fn bad_data_files_are_one_line_errors_with_the_place() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let text = |name: &str, s: &str| {
        let p = t.join(name);
        std::fs::write(&p, s).unwrap();
        p
    };
    refused(
        t,
        &text("ragged.csv", "a,b,c\n1,2,3\n4,5\n6,7,8\n"),
        "line 3: 2 columns, expected 3",
    );
    refused(
        t,
        &text("word.csv", "1,2\n3,4\n5,abc\n"),
        "line 3, column 2 of 2: \"abc\" is not a number",
    );
    refused(
        t,
        &text("nan.csv", "1,2\nnan,4\n"),
        "line 2, column 1 of 2: non-finite value",
    );
    refused(
        t,
        &text("inf.tsv", "1\t2\n3\t-inf\n"),
        "line 2, column 2 of 2: non-finite value",
    );
    refused(t, &text("empty.csv", "# only a comment\n"), "no data rows");
    refused(t, &text("data.xlsx", "1,2\n"), "unknown file type");
    // .npy: a NaN (byte offset), a wrong dtype, a truncated file.
    let npy = t.join("good.npy");
    save_npy(&npy, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 3, 2).unwrap();
    let bytes = std::fs::read(&npy).unwrap();
    let mut nan = bytes.clone();
    nan[128 + 3 * 8..128 + 4 * 8].copy_from_slice(&f64::NAN.to_le_bytes());
    std::fs::write(t.join("nan.npy"), &nan).unwrap();
    refused(
        t,
        &t.join("nan.npy"),
        "non-finite value NaN at row 1, column 1 (0-based; byte offset 152)",
    );
    let header = String::from_utf8_lossy(&bytes[10..128]).replace("<f8", "<c8");
    let mut dtype = bytes[..10].to_vec();
    dtype.extend(header.as_bytes());
    dtype.extend(&bytes[128..]);
    std::fs::write(t.join("complex.npy"), &dtype).unwrap();
    refused(t, &t.join("complex.npy"), "wrong dtype '<c8'");
    std::fs::write(t.join("cut.npy"), &bytes[..bytes.len() - 5]).unwrap();
    refused(
        t,
        &t.join("cut.npy"),
        "truncated: shape (3, 2) of '<f8' needs 48 bytes from byte offset 128, but only 43",
    );
    std::fs::write(t.join("cut2.npy"), &bytes[..60]).unwrap();
    refused(
        t,
        &t.join("cut2.npy"),
        "truncated: the header at byte offset 10",
    );
    // A truncated .gz.
    let table = Table {
        data: (0..400).map(|i| i as f64 * 0.37).collect(),
        rows: 200,
        cols: 2,
        names: None,
    };
    let gz = t.join("whole.csv.gz");
    save_csv(&gz, &table).unwrap();
    let packed = std::fs::read(&gz).unwrap();
    std::fs::write(t.join("cut.csv.gz"), &packed[..packed.len() / 2]).unwrap();
    refused(t, &t.join("cut.csv.gz"), "truncated gzip stream");
    // Bad options: a column out of range, all columns constant.
    let out = train(&gz, &t.join("run-cols"), &["--columns", "0-5"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("selected column 2 out of range"),
        "{err}"
    );
    refused(
        t,
        &text("flat.csv", &"1,2\n".repeat(20)),
        "every column is constant",
    );
    refused(
        t,
        &text("three.csv", "1,2\n2,1\n1,3\n"),
        "gives no validation rows",
    );
    let out = bin()
        .args(["train", "--columns", "0-1", "--out"])
        .arg(t.join("run-nodata"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("need --data FILE"));
}

#[test]
fn bench_tabular_writes_the_table() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("bench");
    let o = ok(bin()
        .args([
            "bench-tabular",
            "--sets",
            "digits",
            "--iters",
            "2",
            "--test-points",
            "4",
            "--val-points",
            "4",
            "--threads",
            "1",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap());
    let table = String::from_utf8_lossy(&o.stdout);
    for want in [
        "| digits | 61 | Gaussian (full covariance) |",
        "| digits | 61 | DiffFlow |",
        "| digits | 61 | DDPM (L_s) |",
        "| digits | 61 | CNF |",
        "dequantised",
    ] {
        assert!(table.contains(want), "'{want}' in:\n{table}");
    }
    assert_eq!(
        std::fs::read_to_string(out.join("table.md")).unwrap(),
        table
    );
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(r["sets"][0]["dim"], 61);
    assert!(r["rows"][0]["test_nll"].as_f64().unwrap().is_finite());
    assert!(out.join("digits/diffflow/best.safetensors").exists());
    // A second run needs --force.
    let again = bin()
        .args(["bench-tabular", "--sets", "digits", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
}
