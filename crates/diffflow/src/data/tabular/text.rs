//! Delimited text (CSV, TSV, whitespace): the reader and the CSV writer.

use std::borrow::Cow;

use super::{check_selection, strip_kind, LoadOptions, Table};
use crate::{Error, Result};

/// `table` as comma-separated text, a header line when `table.names` is set; `at` names
/// the file in errors. The caller has checked the shape.
pub(super) fn to_csv(table: &Table, at: &str) -> Result<String> {
    let mut out = String::with_capacity(table.data.len() * 20 + 64);
    if let Some(names) = &table.names {
        if names.len() != table.cols {
            return Err(Error::data(format!(
                "{at}: {} column names for {} columns",
                names.len(),
                table.cols
            )));
        }
        for (j, n) in names.iter().enumerate() {
            if j > 0 {
                out.push(',');
            }
            out.push_str(&quote_name(n));
        }
        out.push('\n');
    }
    for (i, &x) in table.data.iter().enumerate() {
        if !x.is_finite() {
            let (r, c) = (i / table.cols, i % table.cols);
            return Err(Error::data(format!(
                "{at}: cannot write non-finite value {x} at row {r}, column {c} (0-based)"
            )));
        }
        push_f64(&mut out, x);
        out.push(if (i + 1) % table.cols == 0 { '\n' } else { ',' });
    }
    Ok(out)
}

/// Shortest text that parses back to exactly `x` (Rust's float formatting round-trips);
/// exponent notation for very large or small magnitudes.
fn push_f64(out: &mut String, x: f64) {
    use std::fmt::Write as _;
    let a = x.abs();
    if a == 0.0 || (1e-5..1e16).contains(&a) {
        let _ = write!(out, "{x}");
    } else {
        let _ = write!(out, "{x:e}");
    }
}

/// A header name, quoted (with `""` for `"`) if it holds a delimiter, quote or line break.
fn quote_name(n: &str) -> Cow<'_, str> {
    if n.contains([',', ';', '\t', '"', '\n', '\r', '#']) || n.trim() != n || n.is_empty() {
        Cow::Owned(format!("\"{}\"", n.replace('"', "\"\"")))
    } else {
        Cow::Borrowed(n)
    }
}

/// How cells are separated on a line.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Delim {
    Byte(char),
    Whitespace,
}

pub(super) fn parse_text(bytes: &[u8], name: &str, opts: &LoadOptions) -> Result<Table> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    // Content lines: (1-based line number, text), skipping blanks and `#` comments.
    let mut lines = bytes
        .split(|&b| b == b'\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l.strip_suffix(b"\r").unwrap_or(l)))
        .filter_map(|(no, l)| match std::str::from_utf8(l) {
            Err(e) => Some(Err(Error::data(format!(
                "{name}: line {no}: not UTF-8 text (byte {} of the line)",
                e.valid_up_to() + 1
            )))),
            Ok(s) => {
                let t = s.trim_start();
                (!t.trim_end().is_empty() && !t.starts_with('#')).then_some(Ok((no, s)))
            }
        });
    let Some(first) = lines.next() else {
        return Err(Error::data(format!(
            "{name}: no data rows (the file is empty or has only comments)"
        )));
    };
    let (first_no, first_line) = first?;
    let delim = match opts.delimiter {
        Some(b' ') => Delim::Whitespace,
        Some(d) if d.is_ascii() && d != b'"' && d != b'\n' && d != b'\r' => Delim::Byte(d as char),
        Some(d) => {
            return Err(Error::config(format!(
                "delimiter {:?} is not a usable ASCII separator",
                d as char
            )))
        }
        None => detect_delimiter(first_line),
    };
    let first_cells = split_cells(first_line, delim);
    let cols = first_cells.len();
    let selected: Vec<usize> = match &opts.columns {
        Some(c) => {
            check_selection(c, cols)
                .map_err(|e| Error::data(format!("{name}: line {first_no}: {}", strip_kind(&e))))?;
            c.clone()
        }
        None => (0..cols).collect(),
    };
    let is_header = match opts.header {
        Some(h) => h,
        None => selected
            .iter()
            .any(|&c| unquote(first_cells[c]).trim().parse::<f64>().is_err()),
    };
    let mut data = Vec::new();
    let mut names = None;
    let mut row_cells = first_cells;
    let mut row_no = first_no;
    let mut pending_first = true;
    if is_header {
        names = Some(
            selected
                .iter()
                .map(|&c| unquote(row_cells[c]).trim().replace("\"\"", "\""))
                .collect::<Vec<String>>(),
        );
        pending_first = false;
    }
    let mut rows = 0usize;
    loop {
        if !pending_first {
            match lines.next() {
                None => break,
                Some(l) => {
                    let (no, text) = l?;
                    row_no = no;
                    row_cells = split_cells(text, delim);
                }
            }
        }
        pending_first = false;
        if row_cells.len() != cols {
            return Err(Error::data(format!(
                "{name}: line {row_no}: {} columns, expected {cols} (as on line {first_no})",
                row_cells.len()
            )));
        }
        for &c in &selected {
            data.push(parse_cell(row_cells[c], name, row_no, c, cols)?);
        }
        rows += 1;
    }
    if rows == 0 {
        return Err(Error::data(format!(
            "{name}: no data rows (only the header on line {first_no})"
        )));
    }
    Ok(Table {
        data,
        rows,
        cols: selected.len(),
        names,
    })
}

fn parse_cell(cell: &str, name: &str, line: usize, col: usize, cols: usize) -> Result<f64> {
    let s = unquote(cell).trim();
    let at = || format!("{name}: line {line}, column {} of {cols}", col + 1);
    if s.is_empty() {
        return Err(Error::data(format!("{}: empty cell", at())));
    }
    match s.parse::<f64>() {
        Ok(x) if x.is_finite() => Ok(x),
        Ok(_) => Err(Error::data(format!("{}: non-finite value {s:?}", at()))),
        Err(_) => Err(Error::data(format!("{}: {s:?} is not a number", at()))),
    }
}

/// The separator of `line`: whichever of `,` `;` tab occurs most often outside quotes
/// (ties in that order), else runs of whitespace.
fn detect_delimiter(line: &str) -> Delim {
    let mut counts = [0usize; 3];
    let mut quoted = false;
    for ch in line.chars() {
        match ch {
            '"' => quoted = !quoted,
            ',' if !quoted => counts[0] += 1,
            ';' if !quoted => counts[1] += 1,
            '\t' if !quoted => counts[2] += 1,
            _ => {}
        }
    }
    let (best, &n) = counts
        .iter()
        .enumerate()
        .rev()
        .max_by_key(|&(_, n)| n)
        .unwrap_or((0, &0));
    if n == 0 {
        Delim::Whitespace
    } else {
        Delim::Byte([',', ';', '\t'][best])
    }
}

/// Cells of a line; a delimiter inside double quotes does not split.
fn split_cells(line: &str, delim: Delim) -> Vec<&str> {
    match delim {
        Delim::Whitespace => split_quoted(line.trim(), char::is_whitespace, true),
        Delim::Byte(d) => split_quoted(line, |c| c == d, false),
    }
}

fn split_quoted(line: &str, is_sep: impl Fn(char) -> bool, merge_runs: bool) -> Vec<&str> {
    let mut cells = Vec::new();
    let mut quoted = false;
    let mut start = 0;
    let mut prev_sep = false;
    for (i, ch) in line.char_indices() {
        if ch == '"' {
            quoted = !quoted;
        } else if !quoted && is_sep(ch) {
            if !(merge_runs && prev_sep) {
                cells.push(&line[start..i]);
            }
            start = i + ch.len_utf8();
            prev_sep = true;
            continue;
        }
        prev_sep = false;
    }
    cells.push(&line[start..]);
    cells
}

/// `"x"` → `x` (after trimming spaces); anything else unchanged.
fn unquote(cell: &str) -> &str {
    let t = cell.trim();
    t.strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::tabular::test_util::{awkward, err_text, opts, text};
    use crate::data::tabular::{load, parse, save_csv};
    use std::path::Path;

    #[test]
    fn csv_round_trip_is_bit_exact_with_and_without_names() {
        let dir = tempfile::tempdir().unwrap();
        let data = awkward();
        for names in [None, Some(vec!["a".into(), "b c".into(), "x,\"y\"".into()])] {
            let t = Table {
                data: data.clone(),
                rows: 4,
                cols: 3,
                names,
            };
            for file in ["t.csv", "t.csv.gz"] {
                let p = dir.path().join(file);
                save_csv(&p, &t).unwrap();
                let back = load(&p, &opts()).unwrap();
                assert_eq!(back.rows, 4);
                assert_eq!(back.cols, 3);
                assert_eq!(back.names, t.names);
                for (a, b) in back.data.iter().zip(&t.data) {
                    assert_eq!(a.to_bits(), b.to_bits(), "{a} vs {b}");
                }
            }
        }
    }
    #[test]
    fn header_is_detected_or_forced() {
        let t = text("x,y\n1,2\n3,4\n", "t.csv").unwrap();
        assert_eq!(t.names, Some(vec!["x".into(), "y".into()]));
        assert_eq!(t.data, vec![1.0, 2.0, 3.0, 4.0]);
        // Any non-numeric cell makes the first line a header.
        let t = text("1,\"b\"\n1,2\n", "t.csv").unwrap();
        assert_eq!(t.names, Some(vec!["1".into(), "b".into()]));
        // All numeric: data.
        let t = text("1,2\n3,4\n", "t.csv").unwrap();
        assert_eq!((t.rows, t.names.clone()), (2, None));
        // Forced: numeric names, or no header at all.
        let forced = LoadOptions {
            header: Some(true),
            ..opts()
        };
        let t = parse(b"1,2\n3,4\n", "t.csv", &forced).unwrap();
        assert_eq!(
            (t.rows, t.names.clone()),
            (1, Some(vec!["1".into(), "2".into()]))
        );
        let no = LoadOptions {
            header: Some(false),
            ..opts()
        };
        let e = parse(b"x,y\n1,2\n", "t.csv", &no).unwrap_err().to_string();
        assert!(
            e.contains("line 1, column 1 of 2") && e.contains("not a number"),
            "{e}"
        );
    }

    #[test]
    fn delimiters_comments_blank_lines_quotes_and_crlf() {
        let want = vec![1.0, 2.5, -3.0, 4e-3, 5.0, 6.0];
        for (s, name) in [
            ("1,2.5,-3\n4e-3,5,6\n", "t.csv"),
            ("1;2.5;-3\n4e-3;5;6\n", "t.csv"),
            ("1\t2.5\t-3\n4e-3\t5\t6\n", "t.tsv"),
            ("  1  2.5 -3\n4e-3\t 5   6  \n", "t.txt"),
            (
                "# comment, with; delimiters\n\n1, 2.5, -3\r\n\r\n  # more\n\"4e-3\",\"5\",6",
                "t.csv",
            ),
            ("\u{feff}1,2.5,-3\n4e-3,5,6\n", "t.csv"),
        ] {
            let t = text(s, name).unwrap_or_else(|e| panic!("{s:?}: {e}"));
            assert_eq!((t.rows, t.cols), (2, 3), "{s:?}");
            assert_eq!(t.data, want, "{s:?}");
        }
        // A quoted header name may hold the delimiter.
        let t = text("\"a,b\",c\n1,2\n", "t.csv").unwrap();
        assert_eq!(t.names, Some(vec!["a,b".into(), "c".into()]));
        // A given delimiter is used as is; ' ' means whitespace runs.
        let semi = LoadOptions {
            delimiter: Some(b';'),
            ..opts()
        };
        let t = parse(b"1;2\n3;4\n", "t.txt", &semi).unwrap();
        assert_eq!(t.data, vec![1.0, 2.0, 3.0, 4.0]);
        let space = LoadOptions {
            delimiter: Some(b' '),
            ..opts()
        };
        let t = parse(b"1   2\n3 4\n", "t.txt", &space).unwrap();
        assert_eq!(t.data, vec![1.0, 2.0, 3.0, 4.0]);
        // With ';' the line "1,2" is one non-numeric cell, hence a header.
        let e = parse(b"1,2\n3,4\n", "t.csv", &semi)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 2, column 1 of 1") && e.contains("\"3,4\""),
            "{e}"
        );
        // One column.
        let t = text("7\n8\n", "t.csv").unwrap();
        assert_eq!((t.rows, t.cols), (2, 1));
    }

    #[test]
    fn bad_text_names_file_line_and_column() {
        let cases = [
            (
                "a,b\n1,2\n3,4,5\n",
                "t.csv: line 3: 3 columns, expected 2 (as on line 1)",
            ),
            ("1,2\n\n# c\n3\n", "t.csv: line 4: 1 columns, expected 2"),
            (
                "1,2\n3,abc\n",
                "t.csv: line 2, column 2 of 2: \"abc\" is not a number",
            ),
            (
                "1,2\n3,NaN\n",
                "t.csv: line 2, column 2 of 2: non-finite value \"NaN\"",
            ),
            (
                "1,2\n-inf,3\n",
                "t.csv: line 2, column 1 of 2: non-finite value \"-inf\"",
            ),
            (
                "1,2\n1e999,3\n",
                "t.csv: line 2, column 1 of 2: non-finite value \"1e999\"",
            ),
            ("1,2\n3,\n", "t.csv: line 2, column 2 of 2: empty cell"),
            ("", "t.csv: no data rows"),
            ("\n# only a comment\n\n", "t.csv: no data rows"),
            (
                "x,y\n# nothing else\n",
                "t.csv: no data rows (only the header on line 1)",
            ),
        ];
        for (s, want) in cases {
            let e = err_text(s, "t.csv");
            assert!(e.contains(want), "{s:?}: got {e:?}, want {want:?}");
        }
        let e = parse(b"1,2\n\xff\xfe,3\n", "t.csv", &opts())
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2: not UTF-8"), "{e}");
        let e = err_text("1,2\n", "t.json");
        assert!(e.contains("unknown file type"), "{e}");
        let e = load(Path::new("/nonexistent/dir/x.csv"), &opts())
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/dir/x.csv"), "{e}");
    }
}
