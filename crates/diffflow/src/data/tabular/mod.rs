//! Tabular data files: CSV/TSV/whitespace text and NumPy `.npy`, each optionally gzipped.
//!
//! [`load`] picks the format from the file name (`.csv`, `.tsv`, `.txt`, `.npy`, each
//! optionally followed by `.gz`) and returns a [`Table`] of `f64`. [`save_csv`] and
//! [`save_npy`] write atomically (temp file + rename), gzipped when the name ends in `.gz`.
//!
//! Bad input is an error naming the file and the place: line and column (1-based) for text,
//! byte offset or header field for `.npy`. No input makes the reader panic, and an `.npy`
//! header's shape is checked against the bytes actually present before anything is allocated.
//!
//! The formats live in `text` (delimited text) and `npy` (NumPy); this file holds the
//! [`Table`], the dispatch on the file name, gzip and the shared checks.

mod npy;
#[cfg(test)]
mod test_util;
mod text;

use std::borrow::Cow;
use std::io::{Read, Write};
use std::path::Path;

use crate::checkpoint::atomic_write;
use crate::{Error, Result};

/// A numeric table. Shapes: `data` [rows, cols] row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Table {
    /// Values, row-major, length `rows * cols`.
    pub data: Vec<f64>,
    /// Number of rows (samples).
    pub rows: usize,
    /// Number of columns (features).
    pub cols: usize,
    /// Column names from a CSV header, length `cols`, if the file had one.
    pub names: Option<Vec<String>>,
}

impl Table {
    /// Row `i`, length `cols`. Panics if `i >= rows` (an index bug, not bad input).
    pub fn row(&self, i: usize) -> &[f64] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }

    /// The rows at `indices`, in that order (repeats allowed); names kept.
    /// Panics on an index `>= rows` (an index bug, not bad input).
    pub fn take_rows(&self, indices: &[usize]) -> Table {
        let mut data = Vec::with_capacity(indices.len() * self.cols);
        for &i in indices {
            data.extend_from_slice(self.row(i));
        }
        Table {
            data,
            rows: indices.len(),
            cols: self.cols,
            names: self.names.clone(),
        }
    }

    /// The columns at `columns` (0-based, in that order, repeats allowed), names included.
    /// Errors on an empty selection or an index out of range.
    pub fn select_columns(&self, columns: &[usize]) -> Result<Table> {
        check_selection(columns, self.cols)?;
        let mut data = Vec::with_capacity(self.rows * columns.len());
        for r in 0..self.rows {
            let row = self.row(r);
            data.extend(columns.iter().map(|&c| row[c]));
        }
        Ok(Table {
            data,
            rows: self.rows,
            cols: columns.len(),
            names: self
                .names
                .as_ref()
                .map(|n| columns.iter().map(|&c| n[c].clone()).collect()),
        })
    }
}

/// How to read a file; every field defaults to automatic.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Text delimiter (`b','`, `b';'`, `b'\t'`; `b' '` means runs of whitespace).
    /// `None`: detected from the first non-comment line. Ignored for `.npy`.
    pub delimiter: Option<u8>,
    /// Whether the first non-comment line holds column names. `None`: it does when any of
    /// its (selected) cells is not a number. Ignored for `.npy`.
    pub header: Option<bool>,
    /// Keep only these columns (0-based, in this order). `None`: all columns.
    /// In text files only the selected cells must be numbers.
    pub columns: Option<Vec<usize>>,
}

/// Read a table from `path`; the format comes from the extension: `.csv`, `.tsv`, `.txt`
/// (delimited text) or `.npy`, each optionally followed by `.gz`.
pub fn load(path: &Path, opts: &LoadOptions) -> Result<Table> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse(&bytes, &path.display().to_string(), opts)
}

/// Parse file contents already in memory; `name` is the file name (its extension picks the
/// format exactly as in [`load`]) and is used in error messages. For in-memory data and fuzzing.
pub fn parse(bytes: &[u8], name: &str, opts: &LoadOptions) -> Result<Table> {
    let lower = name.to_ascii_lowercase();
    let (stem, gz) = match lower.strip_suffix(".gz") {
        Some(s) => (s, true),
        None => (lower.as_str(), false),
    };
    let kind = if stem.ends_with(".npy") {
        Kind::Npy
    } else if [".csv", ".tsv", ".txt"].iter().any(|e| stem.ends_with(e)) {
        Kind::Text
    } else {
        return Err(Error::data(format!(
            "{name}: unknown file type: expected .csv, .tsv, .txt or .npy, optionally .gz"
        )));
    };
    let raw: Cow<[u8]> = if gz {
        Cow::Owned(gunzip(bytes, name)?)
    } else {
        Cow::Borrowed(bytes)
    };
    match kind {
        Kind::Npy => npy::parse_npy(&raw, name, opts),
        Kind::Text => text::parse_text(&raw, name, opts),
    }
}

/// Write `table` as comma-separated text, atomically; a header line when `table.names` is
/// set; gzipped when `path` ends in `.gz`. Values are written in the shortest form that
/// reads back to the same `f64`. Errors on a shape mismatch or a non-finite value.
///
/// Names that look like numbers need `header: Some(true)` when read back.
pub fn save_csv(path: &Path, table: &Table) -> Result<()> {
    let at = path.display().to_string();
    check_shape(table.data.len(), table.rows, table.cols, &at)?;
    write_maybe_gz(path, text::to_csv(table, &at)?.as_bytes())
}

/// Write `data` [rows, cols] as a NumPy `.npy` file (v1.0, `<f8`, C order, shape
/// `(rows, cols)`), atomically; gzipped when `path` ends in `.gz`.
pub fn save_npy(path: &Path, data: &[f64], rows: usize, cols: usize) -> Result<()> {
    check_shape(data.len(), rows, cols, &path.display().to_string())?;
    write_maybe_gz(path, &npy::to_npy(data, rows, cols))
}

enum Kind {
    Text,
    Npy,
}

// ---------------------------------------------------------------------------------------
// Shared helpers

pub(super) fn check_shape(len: usize, rows: usize, cols: usize, at: &str) -> Result<()> {
    if cols == 0 || rows.checked_mul(cols) != Some(len) {
        return Err(Error::data(format!(
            "{at}: {len} values do not make a table of {rows} rows x {cols} columns (cols >= 1)"
        )));
    }
    Ok(())
}

pub(super) fn check_selection(columns: &[usize], cols: usize) -> Result<()> {
    if columns.is_empty() {
        return Err(Error::data("column selection is empty"));
    }
    if let Some(&bad) = columns.iter().find(|&&c| c >= cols) {
        return Err(Error::data(format!(
            "selected column {bad} out of range: the data has {cols} columns (0-based indices 0..={})",
            cols.saturating_sub(1)
        )));
    }
    Ok(())
}

/// Most bytes a `.gz` data file may inflate to (a "gzip bomb" of a few megabytes would
/// otherwise fill the memory).
pub const MAX_GUNZIP_BYTES: u64 = 4 << 30;

fn gunzip(bytes: &[u8], name: &str) -> Result<Vec<u8>> {
    gunzip_capped(bytes, name, MAX_GUNZIP_BYTES)
}

fn gunzip_capped(bytes: &[u8], name: &str, cap: u64) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(bytes)
        .take(cap + 1)
        .read_to_end(&mut out)
        .map_err(|e| {
            let what = if e.kind() == std::io::ErrorKind::UnexpectedEof {
                "truncated gzip stream (unexpected end of file)".to_string()
            } else {
                format!("corrupt gzip stream ({e})")
            };
            Error::data(format!("{name}: {what}"))
        })?;
    if out.len() as u64 > cap {
        return Err(Error::data(format!(
            "{name}: inflates to more than {cap} bytes ({} compressed); refused as a likely \
             gzip bomb (decompress it yourself if it really is that large)",
            bytes.len()
        )));
    }
    Ok(out)
}

fn write_maybe_gz(path: &Path, bytes: &[u8]) -> Result<()> {
    let gz = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gz"));
    if !gz {
        return atomic_write(path, bytes);
    }
    // The default gzip header has mtime 0: the same table gives the same bytes.
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let packed = enc
        .write_all(bytes)
        .and_then(|_| enc.finish())
        .map_err(|e| Error::io(path, e))?;
    atomic_write(path, &packed)
}

/// The message of an error without its "invalid data: " prefix, to re-wrap it.
pub(super) fn strip_kind(e: &Error) -> String {
    match e {
        Error::Data(m) | Error::Config(m) => m.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::{f8_payload, npy_bytes, opts};
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn column_selection_in_both_formats() {
        let sel = LoadOptions {
            columns: Some(vec![2, 0]),
            ..opts()
        };
        let t = parse(b"a,b,c\n1,x,3\n4,y,6\n", "t.csv", &sel).unwrap();
        assert_eq!(t.names, Some(vec!["c".into(), "a".into()]));
        assert_eq!(t.data, vec![3.0, 1.0, 6.0, 4.0]);
        // Without a header, the unselected text column does not make line 1 a header.
        let t = parse(b"1,x,3\n4,y,6\n", "t.csv", &sel).unwrap();
        assert_eq!((t.rows, t.names.clone()), (2, None));
        let b = npy_bytes(
            "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }",
            &f8_payload(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
        );
        let t = parse(&b, "x.npy", &sel).unwrap();
        assert_eq!((t.cols, t.data), (2, vec![3.0, 1.0, 6.0, 4.0]));
        let out = LoadOptions {
            columns: Some(vec![3]),
            ..opts()
        };
        let e = parse(b"1,2,3\n", "t.csv", &out).unwrap_err().to_string();
        assert!(
            e.contains("line 1") && e.contains("column 3 out of range"),
            "{e}"
        );
        let e = parse(&b, "x.npy", &out).unwrap_err().to_string();
        assert!(
            e.contains("column 3 out of range") && e.contains("3 columns"),
            "{e}"
        );
        let none = LoadOptions {
            columns: Some(vec![]),
            ..opts()
        };
        assert!(parse(&b, "x.npy", &none)
            .unwrap_err()
            .to_string()
            .contains("empty"));
    }
    #[test]
    fn truncated_npy_and_gz_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<f64> = (0..60).map(|i| i as f64 * 0.37).collect();
        let p = dir.path().join("a.npy");
        save_npy(&p, &data, 20, 3).unwrap();
        let full = std::fs::read(&p).unwrap();
        for cut in [0, 5, 9, 30, 63, 64, 100, full.len() - 1] {
            let e = parse(&full[..cut], "a.npy", &opts())
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("truncated") || e.contains("not a NumPy file"),
                "cut {cut}: {e}"
            );
        }
        let pz = dir.path().join("a.npy.gz");
        save_npy(&pz, &data, 20, 3).unwrap();
        let gz = std::fs::read(&pz).unwrap();
        for cut in [1, 10, gz.len() / 2, gz.len() - 8, gz.len() - 1] {
            let e = parse(&gz[..cut], "a.npy.gz", &opts())
                .unwrap_err()
                .to_string();
            assert!(e.contains("a.npy.gz: truncated gzip"), "cut {cut}: {e}");
        }
        // A flipped byte in the deflate data or CRC is corrupt, not truncated.
        let mut bad = gz.clone();
        let n = bad.len();
        bad[n - 6] ^= 0x55;
        let e = parse(&bad, "a.npy.gz", &opts()).unwrap_err().to_string();
        assert!(e.contains("a.npy.gz: corrupt gzip"), "{e}");
        // A bomb: small compressed, huge inflated; refused at the cap without inflating more.
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(&vec![b'0'; 1 << 20]).unwrap();
        let bomb = enc.finish().unwrap();
        assert!(bomb.len() < 4096);
        let e = gunzip_capped(&bomb, "b.csv.gz", 1 << 16)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("b.csv.gz: inflates to more than 65536 bytes"),
            "{e}"
        );
        assert_eq!(
            gunzip_capped(&bomb, "b.csv.gz", 1 << 20).unwrap().len(),
            1 << 20
        );
        let e = parse(b"plain text", "a.csv.gz", &opts())
            .unwrap_err()
            .to_string();
        assert!(e.contains("a.csv.gz: corrupt gzip"), "{e}");
    }

    #[test]
    fn save_refuses_bad_shapes_and_values_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.csv");
        let t = |data: Vec<f64>, rows, cols| Table {
            data,
            rows,
            cols,
            names: None,
        };
        assert!(save_csv(&p, &t(vec![1.0; 5], 2, 3)).is_err());
        let e = save_csv(&p, &t(vec![1.0, f64::NAN], 1, 2))
            .unwrap_err()
            .to_string();
        assert!(e.contains("row 0, column 1"), "{e}");
        let mut named = t(vec![1.0, 2.0], 1, 2);
        named.names = Some(vec!["a".into()]);
        assert!(save_csv(&p, &named).is_err());
        assert!(save_npy(&dir.path().join("x.npy"), &[1.0; 5], 2, 3).is_err());
        assert!(save_npy(&dir.path().join("x.npy"), &[], 0, 0).is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    /// A few thousand random mutations (byte flips, inserts, deletions, truncations) of
    /// valid files in every format: the reader must return, never panic.
    #[test]
    fn random_mutations_never_panic() {
        let dir = tempfile::tempdir().unwrap();
        let base = Table {
            data: (0..24).map(|i| (i as f64 - 7.0) * 0.731).collect(),
            rows: 8,
            cols: 3,
            names: Some(vec!["a".into(), "b".into(), "c".into()]),
        };
        let mut seeds = Vec::new();
        for file in ["s.csv", "s.csv.gz"] {
            let p = dir.path().join(file);
            save_csv(&p, &base).unwrap();
            seeds.push((file, std::fs::read(&p).unwrap()));
        }
        for file in ["s.npy", "s.npy.gz"] {
            let p = dir.path().join(file);
            save_npy(&p, &base.data, 8, 3).unwrap();
            seeds.push((file, std::fs::read(&p).unwrap()));
        }
        seeds.push(("s.tsv", b"# c\nx\ty\n1\t\"2\"\n3\t4\n".to_vec()));
        let interesting = b",;\t \n\r\"#.-+eE0123456789naif\x93\x00\xff'()";
        let mut rng = Rng::new(6);
        let mut errors = 0;
        for round in 0..4000 {
            let (name, seed) = &seeds[round % seeds.len()];
            let mut b = seed.clone();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(b.len() + 1);
                let byte = if rng.uniform() < 0.5 {
                    interesting[rng.below(interesting.len())]
                } else {
                    rng.below(256) as u8
                };
                match rng.below(4) {
                    0 if at < b.len() => b[at] ^= 1 << rng.below(8),
                    1 if at < b.len() => b[at] = byte,
                    2 => b.insert(at, byte),
                    _ => b.truncate(at),
                }
            }
            let o = LoadOptions {
                columns: (rng.below(4) == 0).then(|| vec![rng.below(4)]),
                header: [None, Some(true), Some(false)][rng.below(3)],
                delimiter: None,
            };
            if parse(&b, name, &o).is_err() {
                errors += 1;
            }
        }
        // The mutations must actually reach the error paths (and not all of them).
        assert!(errors > 500 && errors < 4000, "{errors} errors");
    }

    /// The data sets kept in the repository (copies of `../shared/data`, see the README
    /// in assets/tabular) load with their documented shapes.
    #[test]
    fn in_repo_benchmark_files_load_with_their_shapes() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/tabular");
        for (file, rows, cols) in [
            ("miniboone_val.npy.gz", 3284, 43),
            ("miniboone_test.npy.gz", 3648, 43),
            ("digits.csv.gz", 1797, 65),
        ] {
            let t = load(&dir.join(file), &opts()).unwrap();
            assert_eq!(
                (t.rows, t.cols, t.data.len()),
                (rows, cols, rows * cols),
                "{file}"
            );
            assert!(t.names.is_none());
        }
        // MAF's MINIBOONE is z-scored with train+val statistics: held-out column means are
        // small (|mean| < 0.1 documented as within about 0.06).
        let t = load(&dir.join("miniboone_val.npy.gz"), &opts()).unwrap();
        for c in 0..t.cols {
            let m = (0..t.rows).map(|r| t.row(r)[c]).sum::<f64>() / t.rows as f64;
            assert!(m.abs() < 0.1, "column {c} mean {m}");
        }
        // Digits: 64 integer pixels in 0..=16 and the label 0..=9 in the last column.
        let d = load(&dir.join("digits.csv.gz"), &opts()).unwrap();
        assert!(d
            .data
            .iter()
            .all(|x| x.fract() == 0.0 && (0.0..=16.0).contains(x)));
        assert!((0..d.rows).all(|r| d.row(r)[64] <= 9.0));
    }
}
