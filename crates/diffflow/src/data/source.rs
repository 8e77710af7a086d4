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
            .map(|s| {
                parse_columns(s).map_err(|e| Error::config(format!("data.file.columns: {e}")))
            })
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
        for &c in self.kept.iter().chain(self.constants.iter().map(|(c, _)| c)) {
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
    let (train, val, test) = split(&main, src.fractions(), rng)?;
    let val = val_file.unwrap_or(val);
    let test = test_file.unwrap_or(test);
    let mut notes = vec![format!(
        "{} training, {} validation, {} test rows of {width} columns",
        train.rows, val.rows, test.rows
    )];

    // Constant columns, judged on the training split.
    let (train_kept, kept) = drop_constant_columns(&train);
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
    let train = train_kept;
    let mut columns = ColumnMap {
        width,
        kept: kept.clone(),
        constants,
        dequantized: Vec::new(),
        names: main.names.clone(),
    };
    let (mut val_k, val_off) = columns.reduce(&val)?;
    let (mut test_k, test_off) = columns.reduce(&test)?;
    if !columns.constants.is_empty() {
        let list: Vec<String> = columns
            .constants
            .iter()
            .map(|(c, v)| format!("{c} (= {v})"))
            .collect();
        notes.push(format!(
            "dropped {} column(s) constant on the training split: {}",
            list.len(),
            list.join(", ")
        ));
    }
    if val_off + test_off > 0 {
        notes.push(format!(
            "{val_off} validation and {test_off} test rows differ from the training constant in \
             a dropped column (their NLL is that of the modelled columns)"
        ));
    }

    // Dequantisation of integer columns: fixed noise for the held-out points.
    let dim = kept.len();
    let deq = match src.dequantize {
        Dequantize::Off => Vec::new(),
        mode => {
            let cols = integer_columns(&train);
            if cols.is_empty() && mode == Dequantize::On {
                return Err(Error::data(format!(
                    "{}: dequantize = on, but no column is integer-valued on the training split",
                    src.path.display()
                )));
            }
            cols
        }
    };
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
/// variance `+ 1/12`.
pub fn fit_standardizer(x: &[f64], d: usize, deq: &[usize]) -> Result<Standardizer> {
    let mut s = Standardizer::fit(x, d)?;
    for &k in deq {
        s.mean[k] += 0.5;
        s.std[k] = (s.std[k] * s.std[k] + 1.0 / 12.0).sqrt();
    }
    s.validate()?;
    Ok(s)
}
