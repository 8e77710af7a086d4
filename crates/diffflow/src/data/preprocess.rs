//! The usual preprocessing of density-estimation benchmarks, as plain functions on a
//! [`Table`]: drop constant columns, dequantise integer columns, seeded train/val/test split.
//! Standardisation (fitted on the training split only) is [`crate::data::Standardizer`].

use crate::data::tabular::Table;
use crate::rng::Rng;
use crate::{Error, Result};

/// Column `c` of `table`, top to bottom.
fn column(table: &Table, c: usize) -> impl Iterator<Item = f64> + '_ {
    table
        .data
        .iter()
        .skip(c)
        .step_by(table.cols.max(1))
        .copied()
}

/// Drop every column whose values are all equal (it has no density). Returns the table of
/// the other columns (names kept) and their 0-based indices in `table`.
/// A table without rows keeps all its columns; if every column is constant the result has
/// 0 columns, for the caller to report.
pub fn drop_constant_columns(table: &Table) -> (Table, Vec<usize>) {
    let kept: Vec<usize> = (0..table.cols)
        .filter(|&c| {
            let mut v = column(table, c);
            v.next().is_none_or(|first| v.any(|x| x != first))
        })
        .collect();
    let mut data = Vec::with_capacity(table.rows * kept.len());
    for r in 0..table.rows {
        let row = table.row(r);
        data.extend(kept.iter().map(|&c| row[c]));
    }
    let names = table
        .names
        .as_ref()
        .map(|n| kept.iter().map(|&c| n[c].clone()).collect());
    let out = Table {
        data,
        rows: table.rows,
        cols: kept.len(),
        names,
    };
    (out, kept)
}

/// 0-based indices of the columns whose values are all whole numbers (e.g. pixel counts,
/// categories): the candidates for [`dequantize`].
pub fn integer_columns(table: &Table) -> Vec<usize> {
    (0..table.cols)
        .filter(|&c| column(table, c).all(|x| x.is_finite() && x.fract() == 0.0))
        .collect()
}

/// Uniform dequantisation: add `u ~ U[0, 1)` to every value of the given columns, in place,
/// drawn row by row and, within a row, in the order of `columns`.
///
/// For integer data `k`, a density `p` of `x = k + u` gives `log P(k) >= E_u log p(k + u)`
/// (Theis et al. 2016), so an NLL of the dequantised data bounds the discrete NLL.
/// Errors on a column out of range or listed twice.
pub fn dequantize(table: &mut Table, columns: &[usize], rng: &mut Rng) -> Result<()> {
    for (i, &c) in columns.iter().enumerate() {
        if c >= table.cols {
            return Err(Error::data(format!(
                "dequantize: column {c} out of range: the table has {} columns",
                table.cols
            )));
        }
        if columns[..i].contains(&c) {
            return Err(Error::data(format!("dequantize: column {c} listed twice")));
        }
    }
    for row in table.data.chunks_mut(table.cols.max(1)) {
        for &c in columns {
            row[c] += rng.uniform();
        }
    }
    Ok(())
}

/// Seeded shuffle-split of the rows into (train, validation, test) with the given
/// fractions (each in [0, 1], summing to 1). Row counts are `floor(n * f)`, the rows left
/// over going to the largest remainders (ties: train, then validation, then test), so they
/// add up to `n`. Rows keep the shuffled order. Errors on bad fractions, or when a positive
/// fraction would get no row.
pub fn split(
    table: &Table,
    fractions: (f64, f64, f64),
    rng: &mut Rng,
) -> Result<(Table, Table, Table)> {
    let f = [fractions.0, fractions.1, fractions.2];
    let what = ["train", "validation", "test"];
    let sum: f64 = f.iter().sum();
    if f.iter().any(|x| !(0.0..=1.0).contains(x)) || (sum - 1.0).abs() > 1e-9 {
        return Err(Error::config(format!(
            "split fractions {fractions:?} must each lie in [0, 1] and sum to 1"
        )));
    }
    let n = table.rows;
    let exact: Vec<f64> = f.iter().map(|x| x * n as f64).collect();
    let mut counts: Vec<usize> = exact.iter().map(|x| x.floor() as usize).collect();
    let mut order = [0, 1, 2];
    // Stable sort: equal remainders keep the order train, validation, test.
    order.sort_by(|&a, &b| {
        let ra = exact[a] - exact[a].floor();
        let rb = exact[b] - exact[b].floor();
        rb.total_cmp(&ra)
    });
    let left = n.saturating_sub(counts.iter().sum());
    for &k in order.iter().cycle().take(left) {
        counts[k] += 1;
    }
    for k in 0..3 {
        if f[k] > 0.0 && counts[k] == 0 {
            return Err(Error::data(format!(
                "split: a {} fraction of {} of {n} rows gives no {} rows",
                what[k], f[k], what[k]
            )));
        }
    }
    // Fisher–Yates shuffle of the row indices.
    let mut perm: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        perm.swap(i, rng.below(i + 1));
    }
    let (train, rest) = perm.split_at(counts[0]);
    let (val, test) = rest.split_at(counts[1]);
    Ok((
        table.take_rows(train),
        table.take_rows(val),
        table.take_rows(test),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(data: Vec<f64>, cols: usize) -> Table {
        Table {
            rows: data.len() / cols,
            data,
            cols,
            names: None,
        }
    }

    #[test]
    fn constant_columns_are_dropped_with_their_names() {
        let mut t = table(
            vec![
                1.0, 5.0, 0.5, -2.0, //
                2.0, 5.0, 0.5, -2.0, //
                3.0, 5.0, 0.7, -2.0,
            ],
            4,
        );
        t.names = Some(vec!["a".into(), "b".into(), "c".into(), "d".into()]);
        let (out, kept) = drop_constant_columns(&t);
        assert_eq!(kept, vec![0, 2]);
        assert_eq!((out.rows, out.cols), (3, 2));
        assert_eq!(out.data, vec![1.0, 0.5, 2.0, 0.5, 3.0, 0.7]);
        assert_eq!(out.names, Some(vec!["a".into(), "c".into()]));
        // All constant: no columns left; one row: every column is constant.
        let (none, kept) = drop_constant_columns(&table(vec![1.0, 2.0, 1.0, 2.0], 2));
        assert_eq!(
            (none.rows, none.cols, kept.len(), none.data.len()),
            (2, 0, 0, 0)
        );
        let (one, _) = drop_constant_columns(&table(vec![1.0, 2.0], 2));
        assert_eq!(one.cols, 0);
        // No rows: nothing to judge, all kept.
        let empty = Table {
            data: vec![],
            rows: 0,
            cols: 3,
            names: None,
        };
        assert_eq!(drop_constant_columns(&empty).1, vec![0, 1, 2]);
    }

    #[test]
    fn integer_columns_are_found() {
        let t = table(
            vec![
                0.0,
                1.5,
                -3.0,
                1e20,
                2.0, //
                16.0,
                2.0,
                7.0,
                3.0,
                2.000_000_1,
            ],
            5,
        );
        assert_eq!(integer_columns(&t), vec![0, 2, 3]);
    }

    #[test]
    fn dequantize_adds_the_rngs_uniforms_row_by_row() {
        let t0 = table(vec![0.0, 10.0, 1.0, 1.0, 11.0, 2.0, 2.0, 12.0, 3.0], 3);
        let mut t = t0.clone();
        dequantize(&mut t, &[2, 0], &mut Rng::new(9)).unwrap();
        // Known answer: the draws of the same generator, in row-major order of [2, 0].
        let u = Rng::new(9).uniforms(6);
        for r in 0..3 {
            assert_eq!(t.row(r)[2], t0.row(r)[2] + u[2 * r]);
            assert_eq!(t.row(r)[0], t0.row(r)[0] + u[2 * r + 1]);
            assert_eq!(t.row(r)[1], t0.row(r)[1], "unlisted column unchanged");
            // x + u with u in [0, 1): the integer part is the original value.
            assert_eq!(t.row(r)[0].floor(), t0.row(r)[0]);
        }
        // The noise is U[0, 1): mean 1/2, variance 1/12 (std error of the mean 0.0009).
        let n = 100_000;
        let mut big = table(vec![3.0; n], 1);
        dequantize(&mut big, &[0], &mut Rng::new(1)).unwrap();
        let noise: Vec<f64> = big.data.iter().map(|x| x - 3.0).collect();
        let mean = noise.iter().sum::<f64>() / n as f64;
        let var = noise.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(noise.iter().all(|&x| (0.0..1.0).contains(&x)));
        assert!((mean - 0.5).abs() < 0.005, "mean {mean}");
        assert!((var - 1.0 / 12.0).abs() < 0.002, "var {var}");
        // Bad columns.
        let e = dequantize(&mut t, &[3], &mut Rng::new(1)).unwrap_err();
        assert!(e.to_string().contains("column 3 out of range"), "{e}");
        let e = dequantize(&mut t, &[1, 1], &mut Rng::new(1)).unwrap_err();
        assert!(e.to_string().contains("listed twice"), "{e}");
    }

    #[test]
    fn split_partitions_the_rows_reproducibly() {
        let n = 10;
        let mut t = table((0..2 * n).map(|i| i as f64).collect(), 2);
        t.names = Some(vec!["x".into(), "y".into()]);
        let (a, b, c) = split(&t, (0.6, 0.2, 0.2), &mut Rng::new(4)).unwrap();
        assert_eq!((a.rows, b.rows, c.rows), (6, 2, 2));
        assert_eq!(a.names, t.names);
        // Every original row appears exactly once, whole.
        let mut firsts: Vec<f64> = [&a, &b, &c]
            .iter()
            .flat_map(|s| (0..s.rows).map(|r| s.row(r).to_vec()))
            .map(|row| {
                assert_eq!(row[1], row[0] + 1.0);
                row[0]
            })
            .collect();
        firsts.sort_by(f64::total_cmp);
        assert_eq!(firsts, (0..n).map(|i| 2.0 * i as f64).collect::<Vec<_>>());
        // Same seed, same split; another seed, another order.
        let again = split(&t, (0.6, 0.2, 0.2), &mut Rng::new(4)).unwrap();
        assert_eq!(again.0, a);
        let other = split(&t, (0.6, 0.2, 0.2), &mut Rng::new(5)).unwrap();
        assert_ne!(other.0, a);
    }

    #[test]
    fn split_counts_use_largest_remainders() {
        let t = table((0..5).map(|i| i as f64).collect(), 1);
        let rows = |f| {
            let (a, b, c) = split(&t, f, &mut Rng::new(0)).unwrap();
            (a.rows, b.rows, c.rows)
        };
        // 2.5, 1.25, 1.25 -> 2, 1, 1 and the leftover row to train.
        assert_eq!(rows((0.5, 0.25, 0.25)), (3, 1, 1));
        // 1.5, 1.5, 2.0 -> 1, 1, 2; a tie, train first.
        assert_eq!(rows((0.3, 0.3, 0.4)), (2, 1, 2));
        assert_eq!(rows((1.0, 0.0, 0.0)), (5, 0, 0));
        assert_eq!(rows((0.8, 0.2, 0.0)), (4, 1, 0));
        for bad in [(0.5, 0.5, 0.5), (-0.1, 0.6, 0.5), (f64::NAN, 0.5, 0.5)] {
            let e = split(&t, bad, &mut Rng::new(0)).unwrap_err().to_string();
            assert!(e.contains("sum to 1"), "{e}");
        }
        let e = split(&t, (0.95, 0.05, 0.0), &mut Rng::new(0))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no validation rows"), "{e}");
    }
}
