//! A data file as the source of a run: where it is, how to read, split and preprocess it
//! ([`FileSource`], saved in `config.toml` as `[data.file]`), the pipeline that turns it into
//! training, validation and test points ([`prepare`]), and the map between the file's columns
//! and the model's coordinates ([`ColumnMap`], saved in every checkpoint).
//!
//! The pipeline, in order: read the file(s) with the same options; split the main file with
//! the seed's data stream (validation and test parts only where no file is given for them);
//! drop the columns that are constant on the TRAINING split (their constant is kept, so
//! samples can be written back with all columns); dequantise integer-valued columns (uniform
//! noise `u ~ U[0, 1)`: drawn once for the validation and test points, afresh in every batch
//! for the training points, see [`crate::train::TrainData::draw_batch`]); fit the
//! standardisation on the training split only, with the exact moments of the dequantised
//! columns (`mean + 1/2`, `var + 1/12`).

use crate::data::preprocess::{dequantize, drop_constant_columns, integer_columns, split};
use crate::data::tabular::{self, LoadOptions, Table};
use crate::data::Standardizer;
use crate::rng::Rng;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Whether integer-valued columns get uniform dequantisation noise.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Dequantize {
    /// Dequantise the columns whose training values are all whole numbers, if any.
    #[default]
    Auto,
    /// The same, but it is an error if there is no such column.
    On,
    /// Never.
    Off,
}

impl std::str::FromStr for Dequantize {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Dequantize::Auto),
            "on" => Ok(Dequantize::On),
            "off" => Ok(Dequantize::Off),
            _ => Err(Error::config(format!(
                "unknown dequantize '{s}' (expected auto, on or off)"
            ))),
        }
    }
}

/// Default held-out fraction of the main file for a part without its own file.
pub const DEFAULT_FRACTION: f64 = 0.1;

/// Most columns a selection may name (a typo must not allocate gigabytes).
pub const MAX_COLUMNS: usize = 100_000;

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
        let part = |file: &Option<PathBuf>, f: Option<f64>| match file {
            Some(_) => 0.0,
            None => f.unwrap_or(DEFAULT_FRACTION),
        };
        let v = part(&self.validation, self.val_fraction);
        let t = part(&self.test, self.test_fraction);
        (1.0 - v - t, v, t)
    }

    /// Checks the options; errors name the field (`data.file.…`).
    pub fn validate(&self) -> Result<()> {
        if self.path.as_os_str().is_empty() {
            return Err(Error::config("data.file.path is empty"));
        }
        self.column_list()?;
        self.load_options()?;
        for (name, file, f) in [
            ("val_fraction", &self.validation, self.val_fraction),
            ("test_fraction", &self.test, self.test_fraction),
        ] {
            if let Some(f) = f {
                if !(0.0..1.0).contains(&f) {
                    return Err(Error::config(format!(
                        "data.file.{name} must be in [0, 1), got {f}"
                    )));
                }
                if file.is_some() && f != 0.0 {
                    return Err(Error::config(format!(
                        "data.file.{name} = {f} but its points come from a file (give one or the other)"
                    )));
                }
            }
        }
        let (train, _, _) = self.fractions();
        if train <= 0.0 {
            return Err(Error::config(format!(
                "data.file: the validation and test fractions leave no training rows ({:?})",
                self.fractions()
            )));
        }
        Ok(())
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

/// How the model's coordinates relate to the columns read from the file (after the column
/// selection): which columns are modelled, the constants of the dropped ones, which are
/// dequantised.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnMap {
    /// Number of columns read (the file's width after the column selection).
    pub width: usize,
    /// Model coordinate `k` is column `kept[k]` (0-based among the `width`, increasing).
    pub kept: Vec<usize>,
    /// The dropped (constant on the training split) columns and their value, in column order.
    pub constants: Vec<(usize, f64)>,
    /// Model coordinates that are dequantised (integer data plus `U[0, 1)` noise).
    pub dequantized: Vec<usize>,
    /// Column names from the file's header, `width` of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub names: Option<Vec<String>>,
}

impl ColumnMap {
    /// The identity map of `width` columns.
    pub fn identity(width: usize) -> Self {
        ColumnMap {
            width,
            kept: (0..width).collect(),
            constants: Vec::new(),
            dequantized: Vec::new(),
            names: None,
        }
    }

    /// Number of model coordinates.
    pub fn dim(&self) -> usize {
        self.kept.len()
    }

    /// Checks consistency (e.g. after reading a checkpoint): kept and dropped columns
    /// partition `0..width`, constants finite, dequantised coordinates below `dim`.
    pub fn validate(&self, dim: usize) -> Result<()> {
        let bad = |m: String| Err(Error::data(format!("column map: {m}")));
        if self.kept.len() != dim || dim == 0 {
            return bad(format!(
                "{} kept columns for a model of dimension {dim}",
                self.kept.len()
            ));
        }
        if self.width > MAX_COLUMNS || self.kept.len() + self.constants.len() != self.width {
            return bad(format!(
                "{} kept and {} dropped columns do not make {}",
                self.kept.len(),
                self.constants.len(),
                self.width
            ));
        }
        let mut seen = vec![false; self.width];
        for &c in self
            .kept
            .iter()
            .chain(self.constants.iter().map(|(c, _)| c))
        {
            if c >= self.width || std::mem::replace(&mut seen[c], true) {
                return bad(format!("column {c} is out of range or listed twice"));
            }
        }
        if !self.kept.windows(2).all(|w| w[0] < w[1]) {
            return bad("kept columns are not increasing".into());
        }
        if let Some((c, v)) = self.constants.iter().find(|(_, v)| !v.is_finite()) {
            return bad(format!("column {c} has the non-finite constant {v}"));
        }
        if !self.dequantized.windows(2).all(|w| w[0] < w[1])
            || self.dequantized.last().is_some_and(|&k| k >= dim)
        {
            return bad("dequantised coordinates are out of range or not increasing".into());
        }
        if let Some(n) = &self.names {
            if n.len() != self.width {
                return bad(format!("{} names for {} columns", n.len(), self.width));
            }
        }
        Ok(())
    }

    /// The points of `table` in model coordinates. A table of `width` columns is reduced to
    /// the kept ones; a table of `dim` columns is taken as it is. Also returns the number of
    /// rows whose value in a dropped column differs from the training constant (the model
    /// gives such a point density 0 in the full space; its NLL is that of the kept columns).
    /// Shapes: table [n, width] or [n, dim] → [n, dim].
    pub fn reduce(&self, table: &Table) -> Result<(Vec<f64>, usize)> {
        let dim = self.dim();
        if table.cols == self.width {
            let mut off = 0;
            let mut data = Vec::with_capacity(table.rows * dim);
            for r in 0..table.rows {
                let row = table.row(r);
                data.extend(self.kept.iter().map(|&c| row[c]));
                off += usize::from(self.constants.iter().any(|&(c, v)| row[c] != v));
            }
            Ok((data, off))
        } else if table.cols == dim {
            Ok((table.data.clone(), 0))
        } else {
            Err(Error::data(format!(
                "{} columns, but the run was trained on {} columns ({} modelled after dropping \
                 {} constant ones): give {} or {} columns",
                table.cols,
                self.width,
                dim,
                self.constants.len(),
                self.width,
                dim
            )))
        }
    }

    /// Model coordinates back to all columns, the dropped ones filled with their constant.
    /// Shapes: x [n, dim] → [n, width].
    pub fn expand(&self, x: &[f64]) -> Vec<f64> {
        let dim = self.dim().max(1);
        let mut out = Vec::with_capacity(x.len() / dim * self.width);
        let mut row = vec![0.0; self.width];
        for point in x.chunks_exact(dim) {
            for (&c, &v) in self.kept.iter().zip(point) {
                row[c] = v;
            }
            for &(c, v) in &self.constants {
                row[c] = v;
            }
            out.extend_from_slice(&row);
        }
        out
    }
}

/// The splits of a data file after preprocessing, in data units (not standardised).
#[derive(Clone, Debug)]
pub struct Prepared {
    /// Training points; dequantised columns still hold the integers (the noise is drawn per
    /// batch). Shapes: [n_train, dim].
    pub train: Vec<f64>,
    /// Validation points, dequantised once. Shapes: [n_val, dim].
    pub val: Vec<f64>,
    /// Test points, dequantised once. Shapes: [n_test, dim].
    pub test: Vec<f64>,
    /// Number of model coordinates.
    pub dim: usize,
    /// Columns read → model coordinates.
    pub columns: ColumnMap,
    /// Standardisation fitted on the training split (dequantised moments).
    pub standardizer: Standardizer,
    /// What the pipeline did, for people (one line each).
    pub notes: Vec<String>,
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

/// Runs the pipeline of the module docs on `src`, drawing the split and the held-out
/// dequantisation noise from `rng`.
pub fn prepare(src: &FileSource, rng: &mut Rng) -> Result<Prepared> {
    src.validate()?;
    let opts = src.load_options()?;
    let main = read(&src.path, &opts, "data")?;
    let width = main.cols;
    let extra = |file: &Option<PathBuf>, what: &str| -> Result<Option<Table>> {
        let Some(p) = file else { return Ok(None) };
        let t = read(p, &opts, what)?;
        if t.cols != width {
            return Err(Error::data(format!(
                "{}: {} columns, but the data file {} has {width}",
                p.display(),
                t.cols,
                src.path.display()
            )));
        }
        Ok(Some(t))
    };
    let val_file = extra(&src.validation, "validation")?;
    let test_file = extra(&src.test, "test")?;
    let (train, val, test) = split(&main, src.fractions(), rng).map_err(|e| {
        Error::data(format!(
            "{} ({} rows): {}",
            src.path.display(),
            main.rows,
            e.to_string().trim_start_matches("invalid data: ")
        ))
    })?;
    let val = val_file.unwrap_or(val);
    let test = test_file.unwrap_or(test);
    let mut notes = vec![format!(
        "{} training, {} validation, {} test rows of {width} columns",
        train.rows, val.rows, test.rows
    )];

    // Constant columns: those constant on every row read (a property of the data set, as in
    // MAF's preprocessing), and those constant on the training split only unless they are
    // dequantised (they could not be standardised; a dequantised one is kept, its training
    // density being that of the noise).
    let mut all = train.clone();
    all.data.extend_from_slice(&val.data);
    all.data.extend_from_slice(&test.data);
    all.rows += val.rows + test.rows;
    let (_, varying_all) = drop_constant_columns(&all);
    let (_, varying_train) = drop_constant_columns(&train);
    let integer: Vec<usize> = match src.dequantize {
        Dequantize::Off => Vec::new(),
        mode => {
            let cols: Vec<usize> = integer_columns(&train)
                .into_iter()
                .filter(|c| varying_all.contains(c))
                .collect();
            if cols.is_empty() && mode == Dequantize::On {
                return Err(Error::data(format!(
                    "{}: dequantize = on, but no non-constant column is integer-valued on the \
                     training split",
                    src.path.display()
                )));
            }
            cols
        }
    };
    let kept: Vec<usize> = varying_all
        .iter()
        .copied()
        .filter(|c| varying_train.contains(c) || integer.contains(c))
        .collect();
    if kept.is_empty() {
        return Err(Error::data(format!(
            "{}: every column is constant on the {} training rows: nothing to model",
            src.path.display(),
            train.rows
        )));
    }
    let constants: Vec<(usize, f64)> = (0..width)
        .filter(|c| !kept.contains(c))
        .map(|c| (c, train.row(0)[c]))
        .collect();
    let list = |cols: &mut dyn Iterator<Item = usize>| -> Vec<String> {
        cols.map(|c| format!("{c} (= {})", train.row(0)[c]))
            .collect()
    };
    let everywhere = list(&mut (0..width).filter(|c| !varying_all.contains(c)));
    let train_only = list(
        &mut varying_all
            .iter()
            .copied()
            .filter(|c| !varying_train.contains(c) && !kept.contains(c)),
    );
    let kept_const = list(&mut kept.iter().copied().filter(|c| !varying_train.contains(c)));
    for (cols, what) in [
        (everywhere, "dropped, constant on every row"),
        (train_only, "dropped, constant on the training split"),
        (
            kept_const,
            "kept (dequantised) though constant on the training split",
        ),
    ] {
        if !cols.is_empty() {
            notes.push(format!(
                "{} column(s) {what}: {}",
                cols.len(),
                cols.join(", ")
            ));
        }
    }
    let train = train.select_columns(&kept)?;
    let mut columns = ColumnMap {
        width,
        kept: kept.clone(),
        constants,
        dequantized: Vec::new(),
        names: main.names.clone(),
    };
    let (mut val_k, val_off) = columns.reduce(&val)?;
    let (mut test_k, test_off) = columns.reduce(&test)?;
    if val_off + test_off > 0 {
        notes.push(format!(
            "{val_off} validation and {test_off} test rows differ from the training constant in \
             a dropped column (their NLL is that of the modelled columns)"
        ));
    }

    // Dequantisation of integer columns: fixed noise for the held-out points.
    let dim = kept.len();
    let deq: Vec<usize> = (0..dim).filter(|&k| integer.contains(&kept[k])).collect();
    for (x, rows) in [(&mut val_k, val.rows), (&mut test_k, test.rows)] {
        let mut t = Table {
            data: std::mem::take(x),
            rows,
            cols: dim,
            names: None,
        };
        dequantize(&mut t, &deq, rng)?;
        *x = t.data;
    }
    if !deq.is_empty() {
        notes.push(format!(
            "dequantised {} integer-valued column(s) with U[0, 1) noise (fixed for validation \
             and test points, fresh in every training batch): densities are of the dequantised \
             data",
            deq.len()
        ));
    }
    columns.dequantized = deq;
    let standardizer = fit_standardizer(&train.data, dim, &columns.dequantized)?;
    Ok(Prepared {
        train: train.data,
        val: val_k,
        test: test_k,
        dim,
        columns,
        standardizer,
        notes,
    })
}

/// Standardisation of the training points `x` [n, d] with the exact moments of the
/// dequantised columns `deq`: for `x + u`, `u ~ U[0, 1)` independent, mean `+ 1/2`,
/// variance `+ 1/12` (so a dequantised column may be constant in `x`). Population moments,
/// as [`Standardizer::fit`]. Errors on empty or non-finite data or a zero variance.
pub fn fit_standardizer(x: &[f64], d: usize, deq: &[usize]) -> Result<Standardizer> {
    if d == 0 || x.is_empty() || x.len() % d != 0 {
        return Err(Error::data(format!(
            "standardisation: {} values do not make rows of {d} columns",
            x.len()
        )));
    }
    if let Some(i) = x.iter().position(|v| !v.is_finite()) {
        return Err(Error::data(format!(
            "standardisation: non-finite value {} at row {}, column {}",
            x[i],
            i / d,
            i % d
        )));
    }
    let n = (x.len() / d) as f64;
    let mut mean = vec![0.0; d];
    for row in x.chunks_exact(d) {
        for (m, v) in mean.iter_mut().zip(row) {
            *m += v;
        }
    }
    mean.iter_mut().for_each(|m| *m /= n);
    let mut var = vec![0.0; d];
    for row in x.chunks_exact(d) {
        for k in 0..d {
            var[k] += (row[k] - mean[k]).powi(2);
        }
    }
    for k in 0..d {
        var[k] /= n;
        // A constant column's mean is inexact: its variance is exactly 0.
        if x.chunks_exact(d).all(|r| r[k] == x[k]) {
            var[k] = 0.0;
        }
    }
    for &k in deq {
        mean[k] += 0.5;
        var[k] += 1.0 / 12.0;
    }
    let s = Standardizer {
        mean,
        std: var.iter().map(|v| v.sqrt()).collect(),
    };
    s.validate()?;
    Ok(s)
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

    #[test]
    fn column_map_reduces_expands_and_validates() {
        let map = ColumnMap {
            width: 4,
            kept: vec![1, 3],
            constants: vec![(0, 7.0), (2, -1.0)],
            dequantized: vec![1],
            names: None,
        };
        map.validate(2).unwrap();
        let full = Table {
            data: vec![7.0, 1.0, -1.0, 2.0, 7.0, 3.0, 5.0, 4.0],
            rows: 2,
            cols: 4,
            names: None,
        };
        let (x, off) = map.reduce(&full).unwrap();
        assert_eq!((x.clone(), off), (vec![1.0, 2.0, 3.0, 4.0], 1));
        assert_eq!(
            map.expand(&x),
            vec![7.0, 1.0, -1.0, 2.0, 7.0, 3.0, -1.0, 4.0]
        );
        // A table of the modelled columns is taken as it is; another width is an error.
        let modelled = Table {
            data: x.clone(),
            rows: 2,
            cols: 2,
            names: None,
        };
        assert_eq!(map.reduce(&modelled).unwrap(), (x, 0));
        let three = Table {
            data: vec![0.0; 3],
            rows: 1,
            cols: 3,
            names: None,
        };
        let e = map.reduce(&three).unwrap_err().to_string();
        assert!(e.contains("give 4 or 2 columns"), "{e}");
        // Inconsistent maps (a hostile checkpoint).
        let broken = [
            ColumnMap {
                kept: vec![1, 1],
                ..map.clone()
            },
            ColumnMap {
                kept: vec![3, 1],
                ..map.clone()
            },
            ColumnMap {
                width: 5,
                ..map.clone()
            },
            ColumnMap {
                constants: vec![(0, f64::NAN), (2, 0.0)],
                ..map.clone()
            },
            ColumnMap {
                dequantized: vec![2],
                ..map.clone()
            },
            ColumnMap {
                names: Some(vec!["a".into()]),
                ..map.clone()
            },
        ];
        for b in broken {
            assert!(b.validate(2).is_err(), "{b:?}");
        }
        assert!(map.validate(3).is_err());
    }

    #[test]
    fn standardizer_has_the_moments_of_the_dequantised_data() {
        // Column 0: 0, 1, 2, 3 (mean 1.5, var 1.25); column 1: constant 4 (var 0).
        let x = [0.0, 4.0, 1.0, 4.0, 2.0, 4.0, 3.0, 4.0];
        let s = fit_standardizer(&x, 2, &[0, 1]).unwrap();
        assert_eq!(s.mean, vec![2.0, 4.5]);
        assert!((s.std[0] - (1.25f64 + 1.0 / 12.0).sqrt()).abs() < 1e-15);
        assert!((s.std[1] - (1.0f64 / 12.0).sqrt()).abs() < 1e-15);
        // Without dequantisation the constant column cannot be standardised.
        let e = fit_standardizer(&x, 2, &[0]).unwrap_err().to_string();
        assert!(e.contains("column 1 has zero standard deviation"), "{e}");
        // Monte Carlo check of the closed form: x + u over many draws.
        let mut rng = Rng::new(3);
        let n = 200_000;
        let y: Vec<f64> = (0..n).map(|i| (i % 4) as f64 + rng.uniform()).collect();
        let m = y.iter().sum::<f64>() / n as f64;
        let v = y.iter().map(|a| (a - m).powi(2)).sum::<f64>() / n as f64;
        assert!((m - 2.0).abs() < 0.005 && (v.sqrt() - s.std[0]).abs() < 0.005);
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
