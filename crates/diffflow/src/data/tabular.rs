//! Tabular data files: CSV/TSV/whitespace text and NumPy `.npy`, each optionally gzipped.
//!
//! [`load`] picks the format from the file name (`.csv`, `.tsv`, `.txt`, `.npy`, each
//! optionally followed by `.gz`) and returns a [`Table`] of `f64`. [`save_csv`] and
//! [`save_npy`] write atomically (temp file + rename), gzipped when the name ends in `.gz`.
//!
//! Bad input is an error naming the file and the place: line and column (1-based) for text,
//! byte offset or header field for `.npy`. No input makes the reader panic, and an `.npy`
//! header's shape is checked against the bytes actually present before anything is allocated.

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
        Kind::Npy => parse_npy(&raw, name, opts),
        Kind::Text => parse_text(&raw, name, opts),
    }
}

/// Write `table` as comma-separated text, atomically; a header line when `table.names` is
/// set; gzipped when `path` ends in `.gz`. Values are written in the shortest form that
/// reads back to the same `f64`. Errors on a shape mismatch or a non-finite value.
///
/// Names that look like numbers need `header: Some(true)` when read back.
pub fn save_csv(path: &Path, table: &Table) -> Result<()> {
    let at = path.display();
    check_shape(table.data.len(), table.rows, table.cols, &at.to_string())?;
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
    write_maybe_gz(path, out.as_bytes())
}

/// Write `data` [rows, cols] as a NumPy `.npy` file (v1.0, `<f8`, C order, shape
/// `(rows, cols)`), atomically; gzipped when `path` ends in `.gz`.
pub fn save_npy(path: &Path, data: &[f64], rows: usize, cols: usize) -> Result<()> {
    check_shape(data.len(), rows, cols, &path.display().to_string())?;
    let mut header =
        format!("{{'descr': '<f8', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    // Pad with spaces so that magic (6) + version (2) + length (2) + header ends on 64 bytes.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + data.len() * 8);
    out.extend_from_slice(NPY_MAGIC);
    out.extend_from_slice(&[1, 0]);
    // At most a few hundred bytes: two usize in decimal.
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for x in data {
        out.extend_from_slice(&x.to_le_bytes());
    }
    write_maybe_gz(path, &out)
}

enum Kind {
    Text,
    Npy,
}

// ---------------------------------------------------------------------------------------
// Shared helpers

fn check_shape(len: usize, rows: usize, cols: usize, at: &str) -> Result<()> {
    if cols == 0 || rows.checked_mul(cols) != Some(len) {
        return Err(Error::data(format!(
            "{at}: {len} values do not make a table of {rows} rows x {cols} columns (cols >= 1)"
        )));
    }
    Ok(())
}

fn check_selection(columns: &[usize], cols: usize) -> Result<()> {
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

// ---------------------------------------------------------------------------------------
// Delimited text

/// How cells are separated on a line.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Delim {
    Byte(char),
    Whitespace,
}

fn parse_text(bytes: &[u8], name: &str, opts: &LoadOptions) -> Result<Table> {
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

/// The message of an error without its "invalid data: " prefix, to re-wrap it.
fn strip_kind(e: &Error) -> String {
    match e {
        Error::Data(m) | Error::Config(m) => m.clone(),
        other => other.to_string(),
    }
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

// ---------------------------------------------------------------------------------------
// NumPy .npy

const NPY_MAGIC: &[u8] = b"\x93NUMPY";

/// Element types we read, all converted to `f64`.
#[derive(Clone, Copy, Debug)]
enum Dtype {
    F8,
    F4,
    I8,
    I4,
    U1,
}

impl Dtype {
    fn from_descr(d: &str) -> Option<Dtype> {
        Some(match d {
            "<f8" => Dtype::F8,
            "<f4" => Dtype::F4,
            "<i8" => Dtype::I8,
            "<i4" => Dtype::I4,
            "|u1" | "<u1" => Dtype::U1,
            _ => return None,
        })
    }

    fn size(self) -> usize {
        match self {
            Dtype::F8 | Dtype::I8 => 8,
            Dtype::F4 | Dtype::I4 => 4,
            Dtype::U1 => 1,
        }
    }

    /// The value of one little-endian element; `b` has exactly `size()` bytes.
    fn read(self, b: &[u8]) -> f64 {
        let mut w = [0u8; 8];
        w[..b.len()].copy_from_slice(b);
        match self {
            Dtype::F8 => f64::from_le_bytes(w),
            Dtype::F4 => f32::from_le_bytes([w[0], w[1], w[2], w[3]]) as f64,
            Dtype::I8 => i64::from_le_bytes(w) as f64,
            Dtype::I4 => i32::from_le_bytes([w[0], w[1], w[2], w[3]]) as f64,
            Dtype::U1 => w[0] as f64,
        }
    }
}

fn parse_npy(bytes: &[u8], name: &str, opts: &LoadOptions) -> Result<Table> {
    let err = |msg: String| Error::data(format!("{name}: .npy: {msg}"));
    let truncated = |what: &str| {
        err(format!(
            "truncated: the file ends at byte offset {} inside the {what}",
            bytes.len()
        ))
    };
    if !bytes.starts_with(NPY_MAGIC) {
        return Err(if NPY_MAGIC.starts_with(bytes) {
            truncated("magic string")
        } else {
            err("not a NumPy file (bytes 0..6 are not the magic \\x93NUMPY)".into())
        });
    }
    let (major, minor) = match bytes.get(6..8) {
        Some(v) => (v[0], v[1]),
        None => return Err(truncated("format version")),
    };
    let (len_size, header_len) = match (major, minor) {
        (1, 0) => match bytes.get(8..10) {
            Some(b) => (2, u16::from_le_bytes([b[0], b[1]]) as usize),
            None => return Err(truncated("header length")),
        },
        (2, 0) | (3, 0) => match bytes.get(8..12) {
            Some(b) => (4, u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize),
            None => return Err(truncated("header length")),
        },
        _ => {
            return Err(err(format!(
                "unsupported format version {major}.{minor} at byte offset 6 (expected 1.0, 2.0 or 3.0)"
            )))
        }
    };
    let start: usize = 8 + len_size;
    let data_start = start
        .checked_add(header_len)
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| {
            err(format!(
                "truncated: the header at byte offset {start} declares {header_len} bytes, \
                 but the file has only {} bytes",
                bytes.len()
            ))
        })?;
    let header = std::str::from_utf8(&bytes[start..data_start]).map_err(|e| {
        err(format!(
            "header is not text (byte offset {})",
            start + e.valid_up_to()
        ))
    })?;
    let h = parse_header(header).map_err(|m| err(format!("header (byte offset {start}): {m}")))?;
    if h.fortran_order {
        return Err(err(
            "'fortran_order': True is not supported (save a C-order array, e.g. np.ascontiguousarray)".into(),
        ));
    }
    let dtype = match Dtype::from_descr(&h.descr) {
        Some(d) => d,
        None if h.descr.starts_with('>') => {
            return Err(err(format!(
                "big-endian dtype '{}' is not supported (convert with arr.astype('<f8'))",
                h.descr
            )))
        }
        None => {
            return Err(err(format!(
                "wrong dtype '{}' in field 'descr': expected '<f8', '<f4', '<i8', '<i4' or '|u1'",
                h.descr
            )))
        }
    };
    let (rows, cols) = match h.shape[..] {
        [n] => (n, 1),
        [r, c] => (r, c),
        _ => {
            return Err(err(format!(
                "field 'shape' {:?} has {} dimensions: expected 1 or 2",
                h.shape,
                h.shape.len()
            )))
        }
    };
    let payload = bytes.len() - data_start;
    let need = rows
        .checked_mul(cols)
        .and_then(|n| n.checked_mul(dtype.size()));
    match need {
        Some(n) if n == payload => {}
        Some(n) if n < payload => {
            return Err(err(format!(
            "{} bytes of trailing data at byte offset {} after the array of shape ({rows}, {cols})",
            payload - n,
            data_start + n
        )))
        }
        _ => {
            let want = need.map_or("more than 2^64".to_string(), |n| n.to_string());
            return Err(err(format!(
                "truncated: shape ({rows}, {cols}) of '{}' needs {want} bytes from byte offset \
                 {data_start}, but only {payload} bytes follow",
                h.descr
            )));
        }
    }
    if rows == 0 || cols == 0 {
        return Err(err(format!(
            "no data: the array has shape ({rows}, {cols})"
        )));
    }
    let selected: Vec<usize> = match &opts.columns {
        Some(c) => {
            check_selection(c, cols).map_err(|e| err(strip_kind(&e)))?;
            c.clone()
        }
        None => (0..cols).collect(),
    };
    let size = dtype.size();
    let mut data = Vec::with_capacity(rows * selected.len());
    for r in 0..rows {
        for &c in &selected {
            let off = data_start + (r * cols + c) * size;
            let x = dtype.read(&bytes[off..off + size]);
            if !x.is_finite() {
                return Err(err(format!(
                    "non-finite value {x} at row {r}, column {c} (0-based; byte offset {off})"
                )));
            }
            data.push(x);
        }
    }
    Ok(Table {
        data,
        rows,
        cols: selected.len(),
        names: None,
    })
}

/// The three fields of an `.npy` header dict.
#[derive(Debug)]
struct NpyHeader {
    descr: String,
    fortran_order: bool,
    shape: Vec<usize>,
}

/// A value in the header dict (a tiny subset of Python literals).
enum Lit {
    Str(String),
    Bool(bool),
    Tuple(Vec<usize>),
}

/// Parse `{'descr': '<f8', 'fortran_order': False, 'shape': (3, 4), }` (any key order,
/// single or double quotes, trailing commas, padding). Errors name the field or position.
fn parse_header(text: &str) -> std::result::Result<NpyHeader, String> {
    let mut p = Cursor {
        s: text.as_bytes(),
        i: 0,
    };
    p.expect(b'{')?;
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    loop {
        p.skip_ws();
        if p.eat(b'}') {
            break;
        }
        let key = p.string()?;
        p.skip_ws();
        p.expect(b':')?;
        p.skip_ws();
        let value = p.literal().map_err(|m| format!("field '{key}': {m}"))?;
        let dup = match (key.as_str(), value) {
            ("descr", Lit::Str(s)) => descr.replace(s).is_some(),
            ("fortran_order", Lit::Bool(b)) => fortran.replace(b).is_some(),
            ("shape", Lit::Tuple(t)) => shape.replace(t).is_some(),
            ("descr" | "fortran_order" | "shape", _) => {
                return Err(format!("field '{key}' has the wrong type of value"))
            }
            _ => return Err(format!("unexpected field '{key}'")),
        };
        if dup {
            return Err(format!("field '{key}' appears twice"));
        }
        p.skip_ws();
        if !p.eat(b',') {
            p.skip_ws();
            p.expect(b'}')?;
            break;
        }
    }
    p.skip_ws();
    if p.i != p.s.len() {
        return Err(format!(
            "unexpected text after the dict at position {}",
            p.i
        ));
    }
    let missing = |k: &str| format!("field '{k}' is missing");
    Ok(NpyHeader {
        descr: descr.ok_or_else(|| missing("descr"))?,
        fortran_order: fortran.ok_or_else(|| missing("fortran_order"))?,
        shape: shape.ok_or_else(|| missing("shape"))?,
    })
}

struct Cursor<'a> {
    s: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_whitespace()) {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        let hit = self.peek() == Some(c);
        if hit {
            self.i += 1;
        }
        hit
    }

    fn expect(&mut self, c: u8) -> std::result::Result<(), String> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(format!("expected '{}' at position {}", c as char, self.i))
        }
    }

    fn string(&mut self) -> std::result::Result<String, String> {
        let q = match self.peek() {
            Some(q @ (b'\'' | b'"')) => q,
            _ => return Err(format!("expected a quoted string at position {}", self.i)),
        };
        let from = self.i + 1;
        let len = self.s[from..]
            .iter()
            .position(|&c| c == q)
            .ok_or_else(|| format!("unterminated string at position {}", self.i))?;
        self.i = from + len + 1;
        Ok(String::from_utf8_lossy(&self.s[from..from + len]).into_owned())
    }

    fn literal(&mut self) -> std::result::Result<Lit, String> {
        match self.peek() {
            Some(b'\'' | b'"') => self.string().map(Lit::Str),
            Some(b'(') => {
                self.i += 1;
                let mut dims = Vec::new();
                loop {
                    self.skip_ws();
                    if self.eat(b')') {
                        break;
                    }
                    dims.push(self.integer()?);
                    self.skip_ws();
                    if !self.eat(b',') {
                        self.skip_ws();
                        self.expect(b')')?;
                        break;
                    }
                }
                Ok(Lit::Tuple(dims))
            }
            _ => {
                for (word, b) in [("True", true), ("False", false)] {
                    if self.s[self.i..].starts_with(word.as_bytes()) {
                        self.i += word.len();
                        return Ok(Lit::Bool(b));
                    }
                }
                Err(format!(
                    "expected a string, True/False or a tuple at position {}",
                    self.i
                ))
            }
        }
    }

    fn integer(&mut self) -> std::result::Result<usize, String> {
        let from = self.i;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
        let digits = std::str::from_utf8(&self.s[from..self.i]).unwrap_or("");
        if digits.is_empty() {
            return Err(format!("expected a dimension at position {from}"));
        }
        // Python 2 wrote long integers as `3L`.
        self.eat(b'L');
        digits
            .parse()
            .map_err(|_| format!("dimension {digits} at position {from} is too large"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn opts() -> LoadOptions {
        LoadOptions::default()
    }

    fn text(s: &str, name: &str) -> Result<Table> {
        parse(s.as_bytes(), name, &opts())
    }

    fn err_text(s: &str, name: &str) -> String {
        text(s, name).unwrap_err().to_string()
    }

    /// A hand-built NPY v1.0 file with the given header dict and payload.
    fn npy_bytes(dict: &str, payload: &[u8]) -> Vec<u8> {
        let mut h = dict.to_string();
        while (10 + h.len() + 1) % 64 != 0 {
            h.push(' ');
        }
        h.push('\n');
        let mut b = NPY_MAGIC.to_vec();
        b.extend_from_slice(&[1, 0]);
        b.extend_from_slice(&(h.len() as u16).to_le_bytes());
        b.extend_from_slice(h.as_bytes());
        b.extend_from_slice(payload);
        b
    }

    fn f8_payload(v: &[f64]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    /// Awkward values: extremes, subnormals, signed zero, many digits.
    fn awkward() -> Vec<f64> {
        vec![
            0.1,
            -0.0,
            1.0 / 3.0,
            f64::MAX,
            f64::MIN_POSITIVE,
            5e-324,
            -1.234_567_890_123_456_7e-7,
            123_456_789_012_345_680.0,
            1e16,
            -2.5,
            9_007_199_254_740_993.0,
            std::f64::consts::PI,
        ]
    }

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
    fn npy_round_trip_is_bit_exact_and_gz_too() {
        let dir = tempfile::tempdir().unwrap();
        let data = awkward();
        for file in ["t.npy", "T.NPY.GZ"] {
            let p = dir.path().join(file);
            save_npy(&p, &data, 6, 2).unwrap();
            let back = load(&p, &opts()).unwrap();
            assert_eq!((back.rows, back.cols, back.names), (6, 2, None));
            for (a, b) in back.data.iter().zip(&data) {
                assert_eq!(a.to_bits(), b.to_bits());
            }
        }
        // The header is what NumPy writes: data from byte 128 (64-byte aligned), v1.0, '<f8', C order.
        let raw = std::fs::read(dir.path().join("t.npy")).unwrap();
        assert_eq!(&raw[..8], b"\x93NUMPY\x01\x00");
        assert_eq!(raw.len(), 128 + 12 * 8);
        let header = std::str::from_utf8(&raw[10..128]).unwrap();
        assert!(header.starts_with("{'descr': '<f8', 'fortran_order': False, 'shape': (6, 2), }"));
        assert!(header.ends_with(" \n"));
        // Same table, same bytes (gzip header without a time stamp).
        let p2 = dir.path().join("u.npy.gz");
        save_npy(&p2, &data, 6, 2).unwrap();
        assert_eq!(
            std::fs::read(&p2).unwrap(),
            std::fs::read(dir.path().join("T.NPY.GZ")).unwrap()
        );
    }

    #[test]
    fn npy_f4_and_integer_dtypes_load_exactly() {
        let f4 = [1.5f32, -0.1, 3.4e38, 1e-45, 0.0, 7.25];
        let payload: Vec<u8> = f4.iter().flat_map(|x| x.to_le_bytes()).collect();
        let b = npy_bytes(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 2), }",
            &payload,
        );
        let t = parse(&b, "x.npy", &opts()).unwrap();
        assert_eq!((t.rows, t.cols), (3, 2));
        let want: Vec<f64> = f4.iter().map(|&x| x as f64).collect();
        assert_eq!(t.data, want);
        // 1-D is one column; other integer types; version 2.0 header; double quotes.
        let ints: Vec<u8> = [-3i32, 7, 2_000_000_000]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let b = npy_bytes(
            "{\"shape\": (3,), \"fortran_order\": False, \"descr\": \"<i4\"}",
            &ints,
        );
        let t = parse(&b, "x.npy", &opts()).unwrap();
        assert_eq!(
            (t.rows, t.cols, t.data.clone()),
            (3, 1, vec![-3.0, 7.0, 2e9])
        );
        let b = npy_bytes(
            "{'descr': '|u1', 'fortran_order': False, 'shape': (2, 2), }",
            &[0, 255, 16, 1],
        );
        assert_eq!(
            parse(&b, "x.npy", &opts()).unwrap().data,
            vec![0.0, 255.0, 16.0, 1.0]
        );
        let i8s: Vec<u8> = [-(1i64 << 40), 5]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let b = npy_bytes(
            "{'descr': '<i8', 'fortran_order': False, 'shape': (1, 2), }",
            &i8s,
        );
        assert_eq!(
            parse(&b, "x.npy", &opts()).unwrap().data,
            vec![-(2f64.powi(40)), 5.0]
        );
        // Version 2.0: 4-byte header length.
        let mut v2 = NPY_MAGIC.to_vec();
        let h = "{'descr': '<f8', 'fortran_order': False, 'shape': (1,), }\n";
        v2.extend_from_slice(&[2, 0]);
        v2.extend_from_slice(&(h.len() as u32).to_le_bytes());
        v2.extend_from_slice(h.as_bytes());
        v2.extend_from_slice(&2.5f64.to_le_bytes());
        assert_eq!(parse(&v2, "x.npy", &opts()).unwrap().data, vec![2.5]);
    }

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

    #[test]
    fn bad_npy_names_the_field_or_offset() {
        let good = |dict: &str, payload: &[u8]| npy_bytes(dict, payload);
        let ok = "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 2), }";
        let four = f8_payload(&[1.0, 2.0, 3.0, 4.0]);
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (good(ok, &four[..31]), "only 31 bytes follow"),
            (good(ok, &four[..31]), "byte offset 128"),
            ([good(ok, &four), vec![0]].concat(), "1 bytes of trailing data at byte offset 160"),
            (good("{'descr': '<c16', 'fortran_order': False, 'shape': (2,), }", &[0; 32]), "wrong dtype '<c16'"),
            (good("{'descr': '<f2', 'fortran_order': False, 'shape': (2,), }", &[0; 4]), "wrong dtype '<f2'"),
            (good("{'descr': '>f8', 'fortran_order': False, 'shape': (4,), }", &four), "big-endian dtype '>f8'"),
            (good("{'descr': '<f8', 'fortran_order': True, 'shape': (2, 2), }", &four), "fortran_order"),
            (good("{'descr': '<f8', 'fortran_order': False, 'shape': (1, 2, 2), }", &four), "3 dimensions"),
            (good("{'descr': '<f8', 'fortran_order': False, 'shape': (), }", &four[..8]), "0 dimensions"),
            (good("{'descr': '<f8', 'fortran_order': False, 'shape': (0, 2), }", &[]), "no data"),
            (good("{'descr': '<f8', 'fortran_order': False}", &four), "field 'shape' is missing"),
            (good("{'descr': [('a', '<f8')], 'fortran_order': False, 'shape': (4,), }", &four), "field 'descr'"),
            (good("{'descr': '<f8', 'fortran_order': False, 'shape': (4,), 'shape': (4,)}", &four), "appears twice"),
            (good("{'descr': '<f8', 'fortran_order': False, 'shape': (4,), ", &four), "expected a quoted string"),
            (good("{'descr': '<f8', 'fortran_order': False, 'shape': (99999999999999999999999, 1), }", &four), "too large"),
            (good(ok, &f8_payload(&[1.0, f64::NAN, 3.0, 4.0])), "non-finite value NaN at row 0, column 1 (0-based; byte offset 136)"),
            (good(ok, &f8_payload(&[1.0, 2.0, 3.0, f64::INFINITY])), "row 1, column 1"),
            (b"\x93NUMPY\x04\x00\x10\x00".to_vec(), "version 4.0 at byte offset 6"),
            (b"PK\x03\x04 not numpy".to_vec(), "not a NumPy file"),
            (b"\x93NUMPY\x01\x00\xff\x00{'descr'".to_vec(), "declares 255 bytes"),
            (b"\x93NUMPY\x02\x00\x10".to_vec(), "header length"),
        ];
        for (bytes, want) in cases {
            let e = parse(&bytes, "d.npy", &opts()).unwrap_err().to_string();
            assert!(e.starts_with("invalid data: d.npy: .npy: "), "{e}");
            assert!(e.contains(want), "got {e:?}, want {want:?}");
        }
    }

    #[test]
    fn absurd_npy_shape_errors_before_allocating() {
        // 10^15 x 10^15 x 8 overflows u64; 10^9 x 10^9 x 8 does not but is 8e18 bytes.
        for shape in [
            "(1000000000000000, 1000000000000000)",
            "(1000000000, 1000000000)",
            "(18446744073709551615,)",
        ] {
            let b = npy_bytes(
                &format!("{{'descr': '<f8', 'fortran_order': False, 'shape': {shape}, }}"),
                &[0; 16],
            );
            let e = parse(&b, "big.npy", &opts()).unwrap_err().to_string();
            assert!(
                e.contains("truncated") && e.contains("only 16 bytes follow"),
                "{e}"
            );
        }
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
