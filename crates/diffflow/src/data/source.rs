//! A data file as the source of a run: where it is, how to read, split and preprocess it
//! ([`FileSource`], saved in `config.toml` as `[data.file]`), and the pipeline that turns it
//! into training, validation and test points ([`prepare`]): the file is read into a
//! [`TableSource`] and goes through [`crate::data::pipeline`], the code that also serves
//! tables in memory. The map between the file's columns and the model's coordinates is
//! [`ColumnMap`] ([`crate::data::columns`]).

pub use crate::data::columns::{ColumnMap, MAX_COLUMNS};
pub use crate::data::pipeline::{
    fit_standardizer, Dequantize, Prepared, TableSource, DEFAULT_FRACTION,
};

use crate::data::pipeline::{check_fractions, fractions};
use crate::data::tabular::{self, LoadOptions, Table};
use crate::rng::Rng;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// A data file as the source of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSource {
    /// The data: `.csv`, `.tsv`, `.txt` or `.npy`, optionally `.gz`; one point per row.
    pub path: PathBuf,
    /// Columns to use, 0-based, in order: `"0-63"`, `"0,2,5-9"` (all when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub columns: Option<String>,
    /// Text delimiter: `,` `;` tab, or space for runs of whitespace (detected when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delimiter: Option<char>,
    /// Whether the first line holds column names (detected when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<bool>,
    /// Dequantisation of integer-valued columns.
    #[serde(default)]
    pub dequantize: Dequantize,
    /// Validation points from this file (same format and columns) instead of a split of `path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<PathBuf>,
    /// Test points from this file instead of a split of `path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<PathBuf>,
    /// Fraction of the rows of `path` held out for validation when there is no validation
    /// file (default 0.1; 0: no validation points).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_fraction: Option<f64>,
    /// Fraction of the rows of `path` held out for testing when there is no test file
    /// (default 0.1; 0: no test points).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_fraction: Option<f64>,
}

impl FileSource {
    /// `path` with every option automatic.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileSource {
            path: path.into(),
            columns: None,
            delimiter: None,
            header: None,
            dequantize: Dequantize::Auto,
            validation: None,
            test: None,
            val_fraction: None,
            test_fraction: None,
        }
    }

    /// The (train, validation, test) fractions of the main file.
    pub fn fractions(&self) -> (f64, f64, f64) {
        fractions(
            self.validation.is_some(),
            self.val_fraction,
            self.test.is_some(),
            self.test_fraction,
        )
    }

    /// Checks the options; errors name the field (`data.file.…`).
    pub fn validate(&self) -> Result<()> {
        if self.path.as_os_str().is_empty() {
            return Err(Error::config("data.file.path is empty"));
        }
        self.column_list()?;
        self.load_options()?;
        check_fractions(
            "data.file.",
            self.validation.is_some(),
            self.val_fraction,
            self.test.is_some(),
            self.test_fraction,
        )
    }

    /// Reads the file(s) with the same options (errors name the file) into the tables of
    /// the pipeline, with this source's held-out and dequantisation options.
    pub fn read(&self) -> Result<TableSource> {
        let opts = self.load_options()?;
        let extra = |file: &Option<PathBuf>, what: &str| -> Result<Option<Table>> {
            file.as_ref().map(|p| read(p, &opts, what)).transpose()
        };
        Ok(TableSource {
            data: read(&self.path, &opts, "data")?,
            validation: extra(&self.validation, "validation")?,
            test: extra(&self.test, "test")?,
            dequantize: self.dequantize,
            val_fraction: self.val_fraction,
            test_fraction: self.test_fraction,
        })
    }

    /// The column selection as indices.
    pub fn column_list(&self) -> Result<Option<Vec<usize>>> {
        self.columns
            .as_deref()
            .map(|s| parse_columns(s).map_err(|e| Error::config(format!("data.file.columns: {e}"))))
            .transpose()
    }

    /// How to read the files.
    pub fn load_options(&self) -> Result<LoadOptions> {
        let delimiter = match self.delimiter {
            None => None,
            Some(c @ (',' | ';' | '\t' | ' ' | '|' | ':')) => Some(c as u8),
            Some(c) => {
                return Err(Error::config(format!(
                    "data.file.delimiter {c:?} is not one of , ; tab space | :"
                )))
            }
        };
        Ok(LoadOptions {
            delimiter,
            header: self.header,
            columns: self.column_list()?,
        })
    }
}

/// `"0-3,7"` → `[0, 1, 2, 3, 7]`: comma-separated 0-based indices and inclusive ranges.
pub fn parse_columns(spec: &str) -> std::result::Result<Vec<usize>, String> {
    let mut out = Vec::new();
    for item in spec.split(',') {
        let item = item.trim();
        let num = |s: &str| {
            s.trim()
                .parse::<usize>()
                .map_err(|_| format!("'{s}' in '{spec}' is not a column index (0-based)"))
        };
        let (a, b) = match item.split_once('-') {
            Some((a, b)) => (num(a)?, num(b)?),
            None => {
                let a = num(item)?;
                (a, a)
            }
        };
        if a > b {
            return Err(format!("range '{item}' in '{spec}' runs backwards"));
        }
        if b - a >= MAX_COLUMNS || out.len() + (b - a + 1) > MAX_COLUMNS {
            return Err(format!("'{spec}' selects more than {MAX_COLUMNS} columns"));
        }
        out.extend(a..=b);
    }
    Ok(out)
}

/// Reads `path` with `opts`; the error names the file.
fn read(path: &Path, opts: &LoadOptions, what: &str) -> Result<Table> {
    tabular::load(path, opts).map_err(|e| match e {
        Error::Io { path, source } => Error::data(format!(
            "cannot read the {what} file {}: {source}",
            path.display()
        )),
        other => other,
    })
}

/// Runs the pipeline of [`crate::data::pipeline`] on the file(s) of `src`, drawing the split
/// and the held-out dequantisation noise from `rng`.
pub fn prepare(src: &FileSource, rng: &mut Rng) -> Result<Prepared> {
    src.validate()?;
    let name = format!("the data file {}", src.path.display());
    src.read()?.prepare(&name, rng)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_specs() {
        assert_eq!(parse_columns("0-3,7").unwrap(), vec![0, 1, 2, 3, 7]);
        assert_eq!(parse_columns(" 5 ").unwrap(), vec![5]);
        assert_eq!(parse_columns("2,0").unwrap(), vec![2, 0]);
        for (bad, want) in [
            ("3-1", "runs backwards"),
            ("a", "not a column index"),
            ("1,,2", "not a column index"),
            ("-1", "not a column index"),
            ("0-99999999999", "more than 100000"),
        ] {
            let e = parse_columns(bad).unwrap_err();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }

    #[test]
    fn fractions_and_bad_sources() {
        let mut s = FileSource::new("x.csv");
        assert_eq!(s.fractions(), (0.8, 0.1, 0.1));
        s.test = Some("t.csv".into());
        assert_eq!(s.fractions(), (0.9, 0.1, 0.0));
        s.validate().unwrap();
        s.test_fraction = Some(0.2);
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("data.file.test_fraction"), "{e}");
        let mut s = FileSource::new("x.csv");
        s.val_fraction = Some(0.5);
        s.test_fraction = Some(0.5);
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("no training rows"));
        s.val_fraction = Some(1.5);
        assert!(s.validate().unwrap_err().to_string().contains("[0, 1)"));
        let mut s = FileSource::new("x.csv");
        s.delimiter = Some('x');
        assert!(s.validate().unwrap_err().to_string().contains("delimiter"));
        s.delimiter = None;
        s.columns = Some("1-0".into());
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("data.file.columns"));
    }

    #[test]
    fn file_sources_round_trip_through_config_toml() {
        use crate::config::{Preset, RunConfig};
        let mut c = RunConfig::preset(Preset::Tabular, "mine");
        let mut f = FileSource::new("/data/x y/train.tsv.gz");
        f.columns = Some("0-3,7".into());
        f.delimiter = Some('\t');
        f.header = Some(true);
        f.dequantize = Dequantize::Off;
        f.validation = Some("/data/val.tsv".into());
        f.test_fraction = Some(0.2);
        c.data.file = Some(f);
        c.train.validation.patience = 5;
        c.train.validation.metric = crate::validation::ValMetric::Nll;
        let text = c.to_toml().unwrap();
        assert!(
            text.contains("[data.file]") && text.contains("[train.validation]"),
            "{text}"
        );
        assert_eq!(RunConfig::from_toml(&text).unwrap(), c);
        // The defaults stay out of the file; a bare path is enough.
        c.data.file = Some(FileSource::new("d.csv"));
        let text = c.to_toml().unwrap();
        assert!(
            text.contains("[data.file]\npath = \"d.csv\"\ndequantize = \"auto\"\n"),
            "{text}"
        );
        assert_eq!(RunConfig::from_toml(&text).unwrap(), c);
        // Hostile values are named.
        for (from, to, want) in [
            (
                "dequantize = \"auto\"",
                "dequantize = \"maybe\"",
                "unknown variant `maybe`",
            ),
            ("dequantize = \"auto\"", "delimiter = \"ab\"", "line"),
            ("dequantize = \"auto\"", "rows = 3", "unknown field `rows`"),
            (
                "dequantize = \"auto\"",
                "val_fraction = 2.0",
                "data.file.val_fraction",
            ),
            (
                "dequantize = \"auto\"",
                "columns = \"9-1\"",
                "runs backwards",
            ),
            (
                "trajectories = 1",
                "trajectories = 0",
                "train.validation.trajectories",
            ),
        ] {
            let bad = text.replace(from, to);
            assert_ne!(bad, text, "{to}");
            let e = RunConfig::from_toml(&bad).unwrap_err().to_string();
            assert!(e.contains(want), "{to}: {e}");
        }
    }

    /// Writes `text` to a temporary `name` and returns its folder and path.
    fn file(name: &str, text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        (dir, p)
    }

    #[test]
    fn pipeline_drops_constants_dequantises_and_splits() {
        // Columns: a (continuous), b (constant 5 everywhere), c (integers), d (label, not
        // selected). 20 rows.
        let mut text = String::from("a,b,c,label\n");
        for i in 0..20 {
            text += &format!("{},5,{},x\n", 0.5 * i as f64 + 0.1, i % 3);
        }
        let (_dir, path) = file("t.csv", &text);
        let mut src = FileSource::new(&path);
        src.columns = Some("0-2".into());
        src.val_fraction = Some(0.25);
        src.test_fraction = Some(0.25);
        let p = prepare(&src, &mut Rng::new(1)).unwrap();
        assert_eq!(p.dim, 2);
        assert_eq!(
            (p.train.len() / 2, p.val.len() / 2, p.test.len() / 2),
            (10, 5, 5)
        );
        assert_eq!(p.columns.kept, vec![0, 2]);
        assert_eq!(p.columns.constants, vec![(1, 5.0)]);
        assert_eq!(p.columns.dequantized, vec![1]);
        assert_eq!(
            p.columns.names,
            Some(vec!["a".to_string(), "b".into(), "c".into()])
        );
        // Training rows keep their integers; held-out ones have integer + U[0, 1) noise.
        assert!(p.train.chunks(2).all(|r| r[1].fract() == 0.0));
        let held: Vec<f64> = p.val.iter().chain(&p.test).copied().collect();
        assert!(held.chunks(2).all(|r| r[1].fract() > 0.0 && r[1] < 3.0));
        // Column a is untouched and every row appears in exactly one split.
        let mut a: Vec<f64> = p.train.iter().chain(&held).step_by(2).copied().collect();
        a.sort_by(f64::total_cmp);
        let want: Vec<f64> = (0..20).map(|i| 0.5 * i as f64 + 0.1).collect();
        assert_eq!(a, want);
        // Standardisation from the training split only.
        let s = fit_standardizer(&p.train, 2, &[1]).unwrap();
        assert_eq!(p.standardizer, s);
        // Same seed, same result; dequantisation off keeps the integers.
        let q = prepare(&src, &mut Rng::new(1)).unwrap();
        assert_eq!((q.val, q.test), (p.val.clone(), p.test.clone()));
        src.dequantize = Dequantize::Off;
        let r = prepare(&src, &mut Rng::new(1)).unwrap();
        assert!(r.columns.dequantized.is_empty());
        assert!(r.val.chunks(2).all(|row| row[1].fract() == 0.0));
        // On with no integer column is an error.
        src.columns = Some("0".into());
        src.dequantize = Dequantize::On;
        let e = prepare(&src, &mut Rng::new(1)).unwrap_err().to_string();
        assert!(
            e.contains("no non-constant column is integer-valued"),
            "{e}"
        );
    }

    #[test]
    fn columns_constant_on_the_training_split_only() {
        // Column 0 varies; column 1 (continuous, 0.25) and column 2 (integer, 0) are constant
        // except in the test file.
        let mut train = String::new();
        for i in 0..10 {
            train += &format!("{},0.25,0\n", i as f64 * 0.3);
        }
        let (_d1, path) = file("train.csv", &train);
        let (_d2, val) = file("val.csv", "0.1,0.25,0\n0.2,0.25,0\n");
        let (_d3, test) = file("test.csv", "0.4,0.7,3\n");
        let mut src = FileSource::new(&path);
        src.validation = Some(val);
        src.test = Some(test);
        let p = prepare(&src, &mut Rng::new(0)).unwrap();
        // Column 1 cannot be standardised: dropped; column 2 is dequantised: kept.
        assert_eq!(p.columns.kept, vec![0, 2]);
        assert_eq!(p.columns.constants, vec![(1, 0.25)]);
        assert_eq!(p.columns.dequantized, vec![1]);
        assert!(
            p.notes.iter().any(|n| n.contains("1 test rows differ")),
            "{:?}",
            p.notes
        );
        assert!(p
            .notes
            .iter()
            .any(|n| n.contains("kept (dequantised) though constant")));
        // Wrong width in a given file.
        let (_d4, bad) = file("bad.csv", "1,2\n");
        src.test = Some(bad);
        let e = prepare(&src, &mut Rng::new(0)).unwrap_err().to_string();
        assert!(e.contains("2 columns, but the data file"), "{e}");
    }
}
