//! The map between the columns read from a data table and the model's coordinates
//! ([`ColumnMap`], saved in every checkpoint of a run on a data file or array): which columns
//! are modelled, the constants of the dropped ones, which are dequantised.

use crate::data::tabular::Table;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// Most columns a selection or a table may have (a typo must not allocate gigabytes).
pub const MAX_COLUMNS: usize = 100_000;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
