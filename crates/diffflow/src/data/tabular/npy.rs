//! NumPy `.npy` files: the reader (v1.0-3.0, little-endian floats and integers) and the
//! writer (v1.0, `<f8`).

use super::{check_selection, strip_kind, LoadOptions, Table};
use crate::{Error, Result};

pub(super) const NPY_MAGIC: &[u8] = b"\x93NUMPY";

/// `data` [rows, cols] as the bytes of a `.npy` file (v1.0, `<f8`, C order, shape
/// `(rows, cols)`); the caller has checked the shape.
pub(super) fn to_npy(data: &[f64], rows: usize, cols: usize) -> Vec<u8> {
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
    out
}

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

pub(super) fn parse_npy(bytes: &[u8], name: &str, opts: &LoadOptions) -> Result<Table> {
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
    use crate::data::tabular::test_util::{awkward, f8_payload, npy_bytes, opts};
    use crate::data::tabular::{load, parse, save_npy};

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
}
