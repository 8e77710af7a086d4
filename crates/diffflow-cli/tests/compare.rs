//! `diffflow compare --quick` end to end: every output file exists, every number of the
//! report is finite, and bad arguments are one-line errors.

mod common;
use common::bin;

/// Every number in a JSON value (nulls allowed only where a model has none, e.g. the CNF's
/// ELBO).
fn numbers(v: &serde_json::Value, path: &str, out: &mut Vec<(String, f64)>) {
    match v {
        serde_json::Value::Number(n) => out.push((path.to_string(), n.as_f64().unwrap())),
        serde_json::Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                numbers(x, &format!("{path}[{i}]"), out);
            }
        }
        serde_json::Value::Object(o) => {
            for (k, x) in o {
                numbers(x, &format!("{path}.{k}"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn quick_compare_writes_every_file_with_finite_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let out = bin()
        .args([
            "compare",
            "--quick",
            "--datasets",
            "rings,checkerboard",
            "--threads",
            "2",
            "--out",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "compare failed:\n{stderr}");
    for f in [
        "report.md",
        "results.json",
        "figure4.png",
        "figure5.png",
        "steps.png",
        "progressive.png",
    ] {
        let p = dir.path().join(f);
        let len = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        assert!(len > 100, "{f} missing or empty");
    }
    // Parameter counts are printed and matched (about 94k each).
    assert!(stderr.contains("DiffFlow 94180"), "{stderr}");
    assert!(stderr.contains("CNF 94060"), "{stderr}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("results.json")).unwrap())
            .unwrap();
    let mut nums = Vec::new();
    numbers(&json, "", &mut nums);
    assert!(nums.len() > 100, "only {} numbers", nums.len());
    for (path, v) in &nums {
        assert!(v.is_finite(), "{path} = {v}");
    }
    let datasets = json["datasets"].as_array().unwrap();
    assert_eq!(datasets.len(), 2);
    for ds in datasets {
        let models = ds["models"].as_array().unwrap();
        let keys: Vec<&str> = models.iter().map(|m| m["key"].as_str().unwrap()).collect();
        assert_eq!(keys, ["diffflow", "ddpm-l", "ddpm-ls", "cnf"]);
        for m in models {
            assert!(m["iters"].as_u64().unwrap() == 12, "{m}");
            assert!(m["nll"].as_f64().is_some());
            assert_eq!(m["metrics"]["mmd2"].as_array().unwrap().len(), 2);
            let swept = m["key"] != "cnf";
            assert_eq!(
                m["steps"].as_array().unwrap().len(),
                if swept { 3 } else { 0 }
            );
            assert_eq!(
                m["lambdas"].as_array().unwrap().len(),
                if swept { 3 } else { 0 }
            );
            assert_eq!(m["elbo"].is_null(), !swept);
        }
    }
    let prog = &json["progressive"];
    assert_eq!(prog["runs"].as_array().unwrap().len(), 2);
    let report = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    for needle in [
        "## rings",
        "## checkerboard",
        "DDPM (L_s)",
        "Progressive",
        "fresh data",
    ] {
        assert!(report.contains(needle), "report lacks {needle}");
    }
    assert!(
        !report.contains("NaN") && !report.contains("inf"),
        "{report}"
    );
}

#[test]
fn bad_arguments_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    for (args, needle) in [
        (vec!["--datasets", "nope"], "unknown data set"),
        (vec!["--models", "gan"], "unknown model"),
        (vec!["--seconds", "-1"], "--seconds"),
        (vec!["--budget", "0"], "--budget"),
    ] {
        let out = bin()
            .arg("compare")
            .args(&args)
            .arg("--out")
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}
