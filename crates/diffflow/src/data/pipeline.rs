//! The preprocessing pipeline of a run's data, on tables in memory: a [`TableSource`] (the
//! points, optional validation and test tables, the held-out fractions, the dequantisation)
//! becomes training, validation and test points in data units with the map from the table's
//! columns to the model's coordinates ([`Prepared`]). A data file
//! ([`crate::data::source::FileSource`]) is read into a `TableSource` and goes through the
//! same code; so do arrays (the Python package).
//!
//! In order: split the main table with the seed's data stream (validation and test parts
//! only where no table is given for them); drop the columns constant on every row, and
//! those constant on the TRAINING split unless they are dequantised (their constant is
//! kept, so samples can be written back with all columns); dequantise integer-valued
//! columns (uniform noise `u ~ U[0, 1)`: drawn once for the validation and test points,
//! afresh in every batch for the training points, see [`crate::data::TrainData::draw_batch`]);
//! fit the standardisation on the training split only, with the exact moments of the
//! dequantised columns (`mean + 1/2`, `var + 1/12`).

use crate::data::columns::ColumnMap;
use crate::data::preprocess::{dequantize, drop_constant_columns, integer_columns, split};
use crate::data::tabular::Table;
use crate::data::Standardizer;
use crate::rng::Rng;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};

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

/// Default held-out fraction of the main table for a part without its own table.
pub const DEFAULT_FRACTION: f64 = 0.1;

/// The (train, validation, test) fractions of the main table: a part given separately takes
/// none of it; otherwise its fraction, by default [`DEFAULT_FRACTION`].
pub fn fractions(
    val_given: bool,
    val_fraction: Option<f64>,
    test_given: bool,
    test_fraction: Option<f64>,
) -> (f64, f64, f64) {
    let part = |given: bool, f: Option<f64>| {
        if given {
            0.0
        } else {
            f.unwrap_or(DEFAULT_FRACTION)
        }
    };
    let v = part(val_given, val_fraction);
    let t = part(test_given, test_fraction);
    (1.0 - v - t, v, t)
}

/// Checks the held-out fractions (each in [0, 1), none given with its own points, some
/// training rows left); errors name the field as `{prefix}val_fraction`.
pub fn check_fractions(
    prefix: &str,
    val_given: bool,
    val_fraction: Option<f64>,
    test_given: bool,
    test_fraction: Option<f64>,
) -> Result<()> {
    for (name, given, f) in [
        ("val_fraction", val_given, val_fraction),
        ("test_fraction", test_given, test_fraction),
    ] {
        if let Some(f) = f {
            if !(0.0..1.0).contains(&f) {
                return Err(Error::config(format!(
                    "{prefix}{name} must be in [0, 1), got {f}"
                )));
            }
            if given && f != 0.0 {
                return Err(Error::config(format!(
                    "{prefix}{name} = {f} but its points are given separately (give one or the \
                     other)"
                )));
            }
        }
    }
    let all = fractions(val_given, val_fraction, test_given, test_fraction);
    if all.0 <= 0.0 {
        return Err(Error::config(format!(
            "{prefix}val_fraction + {prefix}test_fraction leave no training rows ({all:?})"
        )));
    }
    Ok(())
}

/// Tables in memory as the source of a run: the points and how to hold out and dequantise
/// them (the options of a data file other than reading it).
#[derive(Clone, Debug, PartialEq)]
pub struct TableSource {
    /// The points, one per row, in data units.
    pub data: Table,
    /// Validation points (same columns) instead of a split of `data`.
    pub validation: Option<Table>,
    /// Test points (same columns) instead of a split of `data`.
    pub test: Option<Table>,
    /// Dequantisation of integer-valued columns.
    pub dequantize: Dequantize,
    /// Fraction of `data` held out for validation when there is no validation table
    /// (default [`DEFAULT_FRACTION`]; 0: none).
    pub val_fraction: Option<f64>,
    /// Fraction of `data` held out for testing when there is no test table (default
    /// [`DEFAULT_FRACTION`]; 0: none).
    pub test_fraction: Option<f64>,
}

impl TableSource {
    /// `data` with every option at its default (10% validation, 10% test, `auto`).
    pub fn new(data: Table) -> Self {
        TableSource {
            data,
            validation: None,
            test: None,
            dequantize: Dequantize::Auto,
            val_fraction: None,
            test_fraction: None,
        }
    }

    /// The (train, validation, test) fractions of `data`.
    pub fn fractions(&self) -> (f64, f64, f64) {
        fractions(
            self.validation.is_some(),
            self.val_fraction,
            self.test.is_some(),
            self.test_fraction,
        )
    }

    /// Runs the pipeline of the module docs, drawing the split and the held-out
    /// dequantisation noise from `rng`. `name` names the data in errors and notes (a file's
    /// path, `X`).
    pub fn prepare(self, name: &str, rng: &mut Rng) -> Result<Prepared> {
        check_fractions(
            "",
            self.validation.is_some(),
            self.val_fraction,
            self.test.is_some(),
            self.test_fraction,
        )?;
        let fractions = self.fractions();
        let main = self.data;
        let width = main.cols;
        if main.rows == 0 || width == 0 {
            return Err(Error::data(format!(
                "{name}: no points ({} rows of {width} columns)",
                main.rows
            )));
        }
        if let Some(i) = main.data.iter().position(|v| !v.is_finite()) {
            return Err(Error::data(format!(
                "{name}: non-finite value {} at row {}, column {}",
                main.data[i],
                i / width,
                i % width
            )));
        }
        for (what, t) in [("validation", &self.validation), ("test", &self.test)] {
            if let Some(t) = t {
                if t.cols != width {
                    return Err(Error::data(format!(
                        "the {what} points have {} columns, but {name} has {width}",
                        t.cols
                    )));
                }
                if let Some(i) = t.data.iter().position(|v| !v.is_finite()) {
                    return Err(Error::data(format!(
                        "the {what} points: non-finite value {} at row {}, column {}",
                        t.data[i],
                        i / width,
                        i % width
                    )));
                }
            }
        }
        let (train, val, test) = split(&main, fractions, rng).map_err(|e| {
            Error::data(format!(
                "{name} ({} rows): {}",
                main.rows,
                e.to_string().trim_start_matches("invalid data: ")
            ))
        })?;
        let val = self.validation.unwrap_or(val);
        let test = self.test.unwrap_or(test);
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
        let integer: Vec<usize> = match self.dequantize {
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
                        name
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
                name, train.rows
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
}

/// The splits of a table after preprocessing, in data units (not standardised).
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
}
