//! The IDX format of MNIST and Fashion-MNIST: magic `00 00 TT NN` (`TT` the element type,
//! `NN` the number of dimensions), `NN` big-endian u32 sizes, then the elements row-major.
//! Only unsigned bytes (`TT = 0x08`, the type of MNIST images and labels) are supported;
//! gzip files (`.gz`, recognised by their magic bytes) are decompressed on the fly.
//!
//! Hostile headers cannot make us allocate: the size the header claims is computed with
//! checked arithmetic and the payload is read with a limit of that size plus one byte, so
//! memory grows only with bytes actually present; a payload shorter or longer than claimed
//! is an error.
//!
//! Image sets built on these files (shapes, labels, MNIST folders): [`super::images`].

use crate::{Error, Result};
use std::io::Read;
use std::path::Path;

/// IDX element type of unsigned bytes.
pub const IDX_U8: u8 = 0x08;

/// Largest number of dimensions accepted.
pub const MAX_DIMS: usize = 8;

/// An IDX array of unsigned bytes. Shapes: `data` [dims[0], dims[1], …] row-major.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Idx {
    /// Sizes, outermost first (MNIST images: [n, 28, 28]; labels: [n]).
    pub dims: Vec<usize>,
    /// The elements.
    pub data: Vec<u8>,
}

/// Reads an IDX file, gzipped or not.
pub fn read_idx(path: &Path) -> Result<Idx> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut reader = std::io::BufReader::new(file);
    let mut magic = [0u8; 2];
    let gz = {
        use std::io::BufRead;
        let head = reader.fill_buf().map_err(|e| Error::io(path, e))?;
        magic[..head.len().min(2)].copy_from_slice(&head[..head.len().min(2)]);
        magic == [0x1f, 0x8b]
    };
    let name = path.display().to_string();
    if gz {
        read_idx_from(flate2::read::GzDecoder::new(reader), &name)
    } else {
        read_idx_from(reader, &name)
    }
}

/// Parses IDX bytes (not gzipped); `name` is used in error messages.
pub fn parse_idx(bytes: &[u8], name: &str) -> Result<Idx> {
    read_idx_from(bytes, name)
}

/// Reads an IDX array from `reader`; `name` (a path) is used in error messages.
pub fn read_idx_from(mut reader: impl Read, name: &str) -> Result<Idx> {
    let bad = |msg: String| Error::data(format!("{name}: {msg}"));
    let mut head = [0u8; 4];
    read_exact(&mut reader, &mut head, name, "the 4-byte IDX magic")?;
    if head[0] != 0 || head[1] != 0 {
        return Err(bad(format!(
            "not an IDX file (magic {:02x} {:02x} {:02x} {:02x}, expected 00 00 TYPE NDIMS)",
            head[0], head[1], head[2], head[3]
        )));
    }
    if head[2] != IDX_U8 {
        let kind = match head[2] {
            0x09 => "signed byte",
            0x0B => "i16",
            0x0C => "i32",
            0x0D => "f32",
            0x0E => "f64",
            _ => "unknown",
        };
        return Err(bad(format!(
            "IDX element type 0x{:02x} ({kind}) is not supported (only unsigned bytes, 0x08)",
            head[2]
        )));
    }
    let ndims = usize::from(head[3]);
    if ndims == 0 || ndims > MAX_DIMS {
        return Err(bad(format!(
            "IDX header has {ndims} dimensions (expected 1 to {MAX_DIMS})"
        )));
    }
    let mut sizes = vec![0u8; 4 * ndims];
    read_exact(&mut reader, &mut sizes, name, "the IDX dimension sizes")?;
    let dims: Vec<usize> = sizes
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    if let Some(k) = dims.iter().position(|&d| d == 0) {
        return Err(bad(format!("IDX dimension {k} has size 0 (dims {dims:?})")));
    }
    let len = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= isize::MAX as usize)
        .ok_or_else(|| bad(format!("IDX dims {dims:?} overflow the address space")))?;
    // Never allocate from the header's claim: grow with the bytes that are really there.
    let mut data = Vec::new();
    reader
        .by_ref()
        .take(len as u64 + 1)
        .read_to_end(&mut data)
        .map_err(|e| bad(format!("cannot read the IDX payload: {e}")))?;
    if data.len() < len {
        return Err(bad(format!(
            "truncated: dims {dims:?} need {len} bytes of data, the file has {}",
            data.len()
        )));
    }
    if data.len() > len {
        return Err(bad(format!(
            "trailing data after the {len} bytes that dims {dims:?} describe"
        )));
    }
    Ok(Idx { dims, data })
}

fn read_exact(reader: &mut impl Read, buf: &mut [u8], name: &str, what: &str) -> Result<()> {
    reader.read_exact(buf).map_err(|e| {
        let why = if e.kind() == std::io::ErrorKind::UnexpectedEof {
            "file ends".to_string()
        } else {
            e.to_string()
        };
        Error::data(format!("{name}: cannot read {what}: {why}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A hand-built IDX file: two 3×2 images with pixels 0..12.
    fn tiny() -> Vec<u8> {
        let mut b = vec![0, 0, 0x08, 3];
        for d in [2u32, 3, 2] {
            b.extend(d.to_be_bytes());
        }
        b.extend(0u8..12);
        b
    }

    fn gz(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn reads_a_hand_built_file_plain_and_gzipped() {
        let idx = parse_idx(&tiny(), "t").unwrap();
        assert_eq!(idx.dims, [2, 3, 2]);
        assert_eq!(idx.data, (0u8..12).collect::<Vec<_>>());
        let dir = tempfile::tempdir().unwrap();
        for (name, bytes) in [("a.idx", tiny()), ("a.idx.gz", gz(&tiny()))] {
            let p = dir.path().join(name);
            std::fs::write(&p, bytes).unwrap();
            assert_eq!(read_idx(&p).unwrap(), idx);
        }
    }

    #[test]
    fn truncated_and_hostile_headers_are_errors_without_allocation() {
        let good = tiny();
        for cut in 0..good.len() {
            let err = parse_idx(&good[..cut], "f.idx").unwrap_err().to_string();
            assert!(err.contains("f.idx"), "{err}");
            assert!(
                err.contains("file ends") || err.contains("truncated"),
                "cut {cut}: {err}"
            );
        }
        let mut extra = good.clone();
        extra.push(0);
        assert!(parse_idx(&extra, "f")
            .unwrap_err()
            .to_string()
            .contains("trailing data"));
        let with = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut b = good.clone();
            f(&mut b);
            parse_idx(&b, "f").unwrap_err().to_string()
        };
        assert!(with(&|b| b[0] = 1).contains("not an IDX file"));
        assert!(with(&|b| b[2] = 0x0D).contains("0x0d (f32) is not supported"));
        assert!(with(&|b| b[3] = 0).contains("0 dimensions"));
        assert!(with(&|b| b[3] = 200).contains("200 dimensions"));
        assert!(with(&|b| b[4..8].copy_from_slice(&[0; 4])).contains("size 0"));
        // Absurd sizes: (2^32 − 1)^3 overflows; (2^32 − 1) × 3 × 2 bytes (24 GiB) does not
        // but is not there. Neither may be allocated (that would abort the test).
        let huge = u32::MAX.to_be_bytes();
        let err = with(&|b| {
            b[4..8].copy_from_slice(&huge);
            b[8..12].copy_from_slice(&huge);
            b[12..16].copy_from_slice(&huge);
        });
        assert!(err.contains("overflow"), "{err}");
        let err = with(&|b| b[4..8].copy_from_slice(&huge));
        assert!(
            err.contains("truncated") && err.contains("the file has 12"),
            "{err}"
        );
        // gzip: truncated stream, and garbage after the gzip magic.
        let dir = tempfile::tempdir().unwrap();
        let z = gz(&good);
        let p = dir.path().join("x.gz");
        std::fs::write(&p, &z[..z.len() - 10]).unwrap();
        let err = read_idx(&p).unwrap_err().to_string();
        assert!(err.contains("x.gz"), "{err}");
        std::fs::write(&p, [0x1f, 0x8b, 1, 2, 3, 4, 5]).unwrap();
        assert!(read_idx(&p).is_err());
        std::fs::write(&p, []).unwrap();
        assert!(read_idx(&p).unwrap_err().to_string().contains("file ends"));
    }
}
