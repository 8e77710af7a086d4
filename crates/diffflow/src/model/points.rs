//! Points from a file, in a model's coordinates and data units: a run on a data file reads the
//! file like its training file (its column selection, then its [`ColumnMap`]) and dequantises
//! its integer columns; other runs take the file's columns as they are.

use super::Model;
use crate::data::source::{ColumnMap, Dequantize};
use crate::data::tabular::{self, LoadOptions, Table};
use crate::rng::{Rng, Stream};
use crate::{Error, Result};
use std::path::Path;

/// What the NLL of a run on a data file means, for people: the dequantised density and the
/// dropped columns.
pub fn column_notes(map: &ColumnMap) -> Vec<String> {
    let mut notes = Vec::new();
    if !map.dequantized.is_empty() {
        notes.push(format!(
            "density of the DEQUANTISED data x + u, u ~ U[0, 1) on {} integer-valued column(s): \
             E_u[-log p(x + u)] >= -log P(x), so nll estimates an upper bound on the NLL of the \
             discrete values",
            map.dequantized.len()
        ));
    }
    if !map.constants.is_empty() {
        notes.push(format!(
            "density of the {} modelled columns; {} column(s) constant in training were dropped",
            map.dim(),
            map.constants.len()
        ));
    }
    notes
}

impl Model {
    /// The first `n` (default all) rows of the file `path` as points in the model's
    /// coordinates, data units. For a run on a data file the file may have the training
    /// file's columns, or only the selected or only the modelled ones (e.g. a file written
    /// by `diffflow sample`); integer values in dequantised columns get `U[0, 1)` noise per
    /// `deq` (`auto`: when all of them are whole numbers), seeded by `seed`. What was done is
    /// added to `notes`.
    pub fn points_from_file(
        &self,
        path: &Path,
        n: Option<usize>,
        deq: Dequantize,
        seed: u64,
        notes: &mut Vec<String>,
    ) -> Result<Vec<f64>> {
        let dim = self.dim();
        let table = match (&self.columns, &self.cfg.data.file) {
            (Some(map), Some(src)) => read_like_training(path, &src.load_options()?, map, dim)?,
            _ => tabular::load(path, &LoadOptions::default())?,
        };
        self.points_from_table(table, &path.display().to_string(), n, deq, seed, notes)
    }

    /// [`Model::points_from_file`] for a table in memory (`name` names it in errors): the
    /// first `n` (default all) rows in the model's coordinates, data units. A run with a
    /// column map takes the columns it was trained on or only the modelled ones, and
    /// dequantises per `deq`; other runs take exactly `dim` columns. Non-finite values are
    /// errors naming the row and column (1-based).
    pub fn points_from_table(
        &self,
        table: Table,
        name: &str,
        n: Option<usize>,
        deq: Dequantize,
        seed: u64,
        notes: &mut Vec<String>,
    ) -> Result<Vec<f64>> {
        let dim = self.dim();
        if table.rows == 0 {
            return Err(Error::data(format!("{name}: no rows")));
        }
        if let Some(i) = table.data.iter().position(|v| !v.is_finite()) {
            return Err(Error::data(format!(
                "{name}: non-finite value {} at row {}, column {}",
                table.data[i],
                i / table.cols + 1,
                i % table.cols + 1
            )));
        }
        let rows = n.unwrap_or(table.rows).min(table.rows);
        let table = if rows < table.rows {
            table.take_rows(&(0..rows).collect::<Vec<_>>())
        } else {
            table
        };
        let Some(map) = &self.columns else {
            if table.cols != dim {
                return Err(Error::data(format!(
                    "{name}: {} columns, but the model has dimension {dim}",
                    table.cols
                )));
            }
            return Ok(table.data);
        };
        let (mut x, off) = map
            .reduce(&table)
            .map_err(|e| Error::data(format!("{name}: {e}")))?;
        if off > 0 {
            notes.push(format!(
                "{off} of {rows} points differ from the training constant in a dropped column: \
                 they have density 0 in the full space (their NLL is that of the modelled \
                 columns)"
            ));
        }
        dequantize(&mut x, dim, &map.dequantized, deq, seed, notes);
        Ok(x)
    }
}

/// Reads `path` with the training file's options, or, when that does not give a table of the
/// file's or the model's width, as a plain table of the selected or modelled columns.
fn read_like_training(
    path: &Path,
    opts: &LoadOptions,
    map: &ColumnMap,
    dim: usize,
) -> Result<Table> {
    let fits = |t: &Table| t.cols == map.width || t.cols == dim;
    match tabular::load(path, opts) {
        Ok(t) if fits(&t) => Ok(t),
        first => {
            let plain = LoadOptions {
                delimiter: opts.delimiter,
                ..LoadOptions::default()
            };
            match tabular::load(path, &plain) {
                Ok(t) if fits(&t) => Ok(t),
                // Readable, of another width: the column map's error says which fit.
                Ok(t) if first.is_err() => Ok(t),
                _ => first,
            }
        }
    }
}

/// Adds seeded `U[0, 1)` noise to the columns `cols` of `x` [n, dim] per `deq`, noting it.
fn dequantize(
    x: &mut [f64],
    dim: usize,
    cols: &[usize],
    deq: Dequantize,
    seed: u64,
    notes: &mut Vec<String>,
) {
    if cols.is_empty() {
        return;
    }
    let integer = x
        .chunks_exact(dim)
        .all(|r| cols.iter().all(|&k| r[k].fract() == 0.0));
    let add = match deq {
        Dequantize::On => true,
        Dequantize::Off => false,
        Dequantize::Auto => integer,
    };
    if add {
        let mut rng = Rng::stream(seed, Stream::Data);
        for r in x.chunks_exact_mut(dim) {
            for &k in cols {
                r[k] += rng.uniform();
            }
        }
        notes.push(format!(
            "added U[0, 1) noise to the {} dequantised column(s) of the points (seed {seed})",
            cols.len()
        ));
    } else {
        notes.push(format!(
            "points used as they are in the {} dequantised column(s){}",
            cols.len(),
            if integer {
                " (integers, dequantisation off: the density there is that of cell corners)"
            } else {
                " (not whole numbers: taken as already dequantised)"
            }
        ));
    }
}
