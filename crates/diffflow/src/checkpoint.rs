//! Safetensors files: deterministic writing (sorted names and metadata keys), atomic
//! replacement (temp file, fsync, rename), and validated reading. No code runs on load.
//!
//! Every file we write carries a content checksum in its metadata ([`CHECKSUM_KEY`]): 64-bit
//! FNV-1a over the metadata, the tensor table (names, dtypes, shapes) and the tensor bytes, so
//! that a truncated or bit-flipped file is an error on load instead of wrong numbers. Any
//! single changed byte changes the hash (each FNV-1a step is a bijection of the state).

use crate::{Error, Result};
use candle_core::{DType, Device, Tensor, Var};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Tensors by name and string metadata, as stored in one safetensors file.
#[derive(Debug, Default)]
pub struct TensorFile {
    /// Tensors, sorted by name.
    pub tensors: BTreeMap<String, Tensor>,
    /// The `__metadata__` entries (without the checksum).
    pub metadata: BTreeMap<String, String>,
    /// Whether the file carried a content checksum and it matched.
    pub verified: bool,
}

impl TensorFile {
    /// The tensor `name`, or an error naming the file and the tensor.
    pub fn get(&self, name: &str, path: &Path) -> Result<&Tensor> {
        self.tensors
            .get(name)
            .ok_or_else(|| Error::checkpoint(path, format!("missing tensor '{name}'")))
    }

    /// The metadata entry `key`, or an error naming the file and the key.
    pub fn meta(&self, key: &str, path: &Path) -> Result<&str> {
        self.metadata
            .get(key)
            .map(|s| s.as_str())
            .ok_or_else(|| Error::checkpoint(path, format!("missing metadata '{key}'")))
    }
}

/// Metadata key of the content checksum (`fnv1a64:` + 16 hex digits).
pub const CHECKSUM_KEY: &str = "checksum";

/// 64-bit FNV-1a, continuing from `state` (start with [`FNV_OFFSET`]).
pub fn fnv1a64(mut state: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        state ^= u64::from(b);
        state = state.wrapping_mul(0x0000_0100_0000_01b3);
    }
    state
}

/// Initial state of [`fnv1a64`].
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// Checksum of a file's content: metadata entries (without the checksum itself), then each
/// tensor's name, dtype, shape and bytes, all in sorted order and length-prefixed.
fn content_hash<'a>(
    metadata: &BTreeMap<String, String>,
    tensors: impl Iterator<Item = (&'a str, &'a str, &'a [usize], &'a [u8])>,
) -> String {
    let field = |h: u64, b: &[u8]| fnv1a64(fnv1a64(h, &(b.len() as u64).to_le_bytes()), b);
    let mut h = FNV_OFFSET;
    for (k, v) in metadata.iter().filter(|(k, _)| *k != CHECKSUM_KEY) {
        h = field(field(h, k.as_bytes()), v.as_bytes());
    }
    for (name, dtype, shape, data) in tensors {
        h = field(field(h, name.as_bytes()), dtype.as_bytes());
        h = fnv1a64(h, &(shape.len() as u64).to_le_bytes());
        for &s in shape {
            h = fnv1a64(h, &(s as u64).to_le_bytes());
        }
        h = field(h, data);
    }
    format!("fnv1a64:{h:016x}")
}

fn dtype_name(dtype: DType) -> Result<&'static str> {
    match dtype {
        DType::F32 => Ok("F32"),
        DType::F64 => Ok("F64"),
        DType::U8 => Ok("U8"),
        DType::U32 => Ok("U32"),
        DType::I64 => Ok("I64"),
        other => Err(Error::config(format!("cannot save dtype {other:?}"))),
    }
}

/// Serialises `tensors` and `metadata` to safetensors bytes (names and keys in sorted order,
/// so equal inputs give equal bytes), adding the content checksum to the metadata.
pub fn to_bytes(
    tensors: &BTreeMap<String, Tensor>,
    metadata: &BTreeMap<String, String>,
) -> Result<Vec<u8>> {
    if metadata.contains_key(CHECKSUM_KEY) {
        return Err(Error::config(format!(
            "metadata key '{CHECKSUM_KEY}' is reserved for the checksum"
        )));
    }
    let mut header = serde_json::Map::new();
    let mut data: Vec<u8> = Vec::new();
    let mut table: Vec<(&str, &'static str, Vec<usize>, std::ops::Range<usize>)> = Vec::new();
    for (name, t) in tensors {
        let start = data.len();
        let t = t.to_device(&Device::Cpu)?.flatten_all()?;
        match t.dtype() {
            DType::F32 => {
                for v in t.to_vec1::<f32>()? {
                    data.extend_from_slice(&v.to_le_bytes());
                }
            }
            DType::F64 => {
                for v in t.to_vec1::<f64>()? {
                    data.extend_from_slice(&v.to_le_bytes());
                }
            }
            DType::U8 => data.extend(t.to_vec1::<u8>()?),
            DType::U32 => {
                for v in t.to_vec1::<u32>()? {
                    data.extend_from_slice(&v.to_le_bytes());
                }
            }
            DType::I64 => {
                for v in t.to_vec1::<i64>()? {
                    data.extend_from_slice(&v.to_le_bytes());
                }
            }
            _ => {}
        }
        let shape = tensors[name].dims().to_vec();
        header.insert(
            name.clone(),
            serde_json::json!({
                "dtype": dtype_name(t.dtype())?,
                "shape": shape,
                "data_offsets": [start, data.len()],
            }),
        );
        table.push((name, dtype_name(t.dtype())?, shape, start..data.len()));
    }
    let checksum = content_hash(
        metadata,
        table
            .iter()
            .map(|(n, d, s, r)| (*n, *d, s.as_slice(), &data[r.clone()])),
    );
    let meta: serde_json::Map<String, serde_json::Value> = metadata
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .chain([(CHECKSUM_KEY.into(), serde_json::Value::String(checksum))])
        .collect();
    header.insert("__metadata__".into(), serde_json::Value::Object(meta));
    // serde_json's Map is a BTreeMap without the preserve_order feature: keys come out sorted.
    let mut head = serde_json::to_vec(&serde_json::Value::Object(header))
        .map_err(|e| Error::config(format!("cannot encode safetensors header: {e}")))?;
    while (8 + head.len()) % 8 != 0 {
        head.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + head.len() + data.len());
    out.extend_from_slice(&(head.len() as u64).to_le_bytes());
    out.extend(head);
    out.extend(data);
    Ok(out)
}

/// Writes `bytes` to `path` atomically: a temp file in the same folder, fsync, rename, fsync of
/// the folder. On error the temp file is removed and `path` is untouched.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| Error::config(format!("not a file path: {}", path.display())))?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

/// Removes the temp files that an [`atomic_write`] of `path` leaves when its process is
/// killed before the rename (`.NAME.tmpPID` beside `path`). Returns how many it removed.
pub fn remove_stale_temps(path: &Path) -> usize {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return 0;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = format!(".{}.tmp", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let n = e.file_name();
        let n = n.to_string_lossy();
        let is_temp = n
            .strip_prefix(&prefix)
            .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()));
        if is_temp && std::fs::remove_file(e.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// Writes a safetensors file atomically.
pub fn write(
    path: &Path,
    tensors: &BTreeMap<String, Tensor>,
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    atomic_write(path, &to_bytes(tensors, metadata)?)
}

/// Reads and validates a safetensors file (header, offsets and sizes are checked before any
/// tensor is built).
pub fn read(path: &Path) -> Result<TensorFile> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    from_bytes(&bytes).map_err(|msg| Error::checkpoint(path, msg))
}

/// Parses safetensors bytes. When the metadata holds a checksum ([`CHECKSUM_KEY`]) it must
/// match the content (files written by other tools have none; [`TensorFile::verified`] says
/// which). Errors are plain messages (the caller adds the path).
pub fn from_bytes(bytes: &[u8]) -> std::result::Result<TensorFile, String> {
    use safetensors::tensor::{Dtype, SafeTensors};
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| format!("not a valid safetensors file: {e}"))?;
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| format!("bad header: {e}"))?;
    let mut metadata: BTreeMap<String, String> = meta
        .metadata()
        .as_ref()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    let mut views = st.tensors();
    views.sort_by(|a, b| a.0.cmp(&b.0));
    let mut table = Vec::with_capacity(views.len());
    for (name, view) in &views {
        let dtype = match view.dtype() {
            Dtype::F32 => DType::F32,
            Dtype::F64 => DType::F64,
            Dtype::U8 => DType::U8,
            Dtype::U32 => DType::U32,
            Dtype::I64 => DType::I64,
            other => return Err(format!("tensor '{name}' has unsupported dtype {other:?}")),
        };
        table.push((dtype, dtype_name(dtype).map_err(|e| e.to_string())?));
    }
    let verified = match metadata.remove(CHECKSUM_KEY) {
        None => false,
        Some(stored) => {
            let actual = content_hash(
                &metadata,
                views
                    .iter()
                    .zip(&table)
                    .map(|((n, v), (_, d))| (n.as_str(), *d, v.shape(), v.data())),
            );
            if stored != actual {
                return Err(format!(
                    "checksum mismatch (stored {stored}, content {actual}): the file is corrupt"
                ));
            }
            true
        }
    };
    let mut tensors = BTreeMap::new();
    for ((name, view), (dtype, _)) in views.into_iter().zip(table) {
        let t = Tensor::from_raw_buffer(view.data(), dtype, view.shape(), &Device::Cpu)
            .map_err(|e| format!("tensor '{name}': {e}"))?;
        tensors.insert(name, t);
    }
    Ok(TensorFile {
        tensors,
        metadata,
        verified,
    })
}

/// The tensors of `net` (parameters and buffers) under `prefix.` + their names.
pub fn net_tensors(net: &dyn crate::nn::TimeNet, prefix: &str) -> BTreeMap<String, Tensor> {
    net.vars()
        .iter()
        .chain(net.buffers())
        .map(|(name, v)| (format!("{prefix}.{name}"), v.as_tensor().clone()))
        .collect()
}

/// Sets the parameters and buffers of `net` from `file`'s tensors named `prefix.` + name,
/// checking every shape and dtype; values are converted to the net's dtype.
pub fn load_net(
    net: &dyn crate::nn::TimeNet,
    prefix: &str,
    file: &TensorFile,
    path: &Path,
) -> Result<()> {
    load_vars(net.vars().iter().chain(net.buffers()), prefix, file, path)
}

/// Sets only the trainable parameters of `net` from tensors named `prefix.` + name, checked
/// like [`load_net`].
pub fn load_net_vars(
    net: &dyn crate::nn::TimeNet,
    prefix: &str,
    file: &TensorFile,
    path: &Path,
) -> Result<()> {
    load_vars(net.vars().iter(), prefix, file, path)
}

/// Sets each of `vars` from `file`'s tensor `prefix.` + its name, checking shape and dtype
/// (F32 or F64, converted to the variable's dtype and moved to its device).
pub(crate) fn load_vars<'a>(
    vars: impl Iterator<Item = &'a (String, Var)>,
    prefix: &str,
    file: &TensorFile,
    path: &Path,
) -> Result<()> {
    for (name, var) in vars {
        let key = format!("{prefix}.{name}");
        let t = file.get(&key, path)?;
        if t.dims() != var.dims() {
            return Err(Error::checkpoint(
                path,
                format!(
                    "tensor '{key}' has shape {:?}, the configured network needs {:?}",
                    t.dims(),
                    var.dims()
                ),
            ));
        }
        if !matches!(t.dtype(), DType::F32 | DType::F64) {
            return Err(Error::checkpoint(
                path,
                format!(
                    "tensor '{key}' has dtype {:?}, expected F32 or F64",
                    t.dtype()
                ),
            ));
        }
        var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_deterministic_bytes() {
        let mut t = BTreeMap::new();
        t.insert(
            "b.w".to_string(),
            Tensor::new(&[[1.5f32, -2.0], [0.25, 3.0]], &Device::Cpu).unwrap(),
        );
        t.insert(
            "a".to_string(),
            Tensor::new(&[1.0f64, 2.0, 3.0], &Device::Cpu).unwrap(),
        );
        let mut m = BTreeMap::new();
        m.insert("z".to_string(), "last".to_string());
        m.insert("config".to_string(), "x = 1".to_string());
        let bytes = to_bytes(&t, &m).unwrap();
        assert_eq!(bytes, to_bytes(&t, &m).unwrap());
        let back = from_bytes(&bytes).unwrap();
        assert!(back.verified);
        assert_eq!(back.metadata, m);
        assert_eq!(
            back.tensors["b.w"].to_vec2::<f32>().unwrap(),
            vec![vec![1.5, -2.0], vec![0.25, 3.0]]
        );
        assert_eq!(
            back.tensors["a"].to_vec1::<f64>().unwrap(),
            vec![1.0, 2.0, 3.0]
        );
    }

    #[test]
    fn truncated_and_corrupt_files_are_errors() {
        let mut t = BTreeMap::new();
        t.insert(
            "a".to_string(),
            Tensor::new(&[1.0f32; 16], &Device::Cpu).unwrap(),
        );
        let bytes = to_bytes(&t, &BTreeMap::new()).unwrap();
        for cut in [0, 4, 8, 20, bytes.len() - 1] {
            assert!(from_bytes(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        // Absurd header length: must fail without allocating it.
        let mut bad = bytes.clone();
        bad[..8].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
        assert!(from_bytes(&bad).is_err());
        // Garbage in the header.
        let mut bad = bytes.clone();
        bad[9] = b'#';
        assert!(from_bytes(&bad).is_err());
    }

    #[test]
    fn fnv1a64_known_answers() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(fnv1a64(FNV_OFFSET, b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(FNV_OFFSET, b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a64(FNV_OFFSET, b"foobar"), 0x85944171f73967e8);
        // Streaming equals one call.
        assert_eq!(
            fnv1a64(fnv1a64(FNV_OFFSET, b"foo"), b"bar"),
            fnv1a64(FNV_OFFSET, b"foobar")
        );
    }

    fn small_file() -> Vec<u8> {
        let mut t = BTreeMap::new();
        t.insert(
            "w".to_string(),
            Tensor::new(&[[1.5f32, -2.0, 0.0], [0.25, 3.0, 7.0]], &Device::Cpu).unwrap(),
        );
        t.insert(
            "b".to_string(),
            Tensor::new(&[1e-3f64, -4.0], &Device::Cpu).unwrap(),
        );
        let mut m = BTreeMap::new();
        m.insert("config".to_string(), "lr = 0.01".to_string());
        to_bytes(&t, &m).unwrap()
    }

    fn same_content(a: &TensorFile, b: &TensorFile) -> bool {
        let bits = |t: &Tensor| -> Vec<u64> {
            let v = t.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
            v.to_vec1::<f64>()
                .unwrap()
                .iter()
                .map(|x| x.to_bits())
                .collect()
        };
        a.metadata == b.metadata
            && a.tensors.len() == b.tensors.len()
            && a.tensors
                .iter()
                .zip(&b.tensors)
                .all(|((na, ta), (nb, tb))| {
                    na == nb
                        && ta.dtype() == tb.dtype()
                        && ta.dims() == tb.dims()
                        && bits(ta) == bits(tb)
                })
    }

    #[test]
    fn every_single_bit_flip_is_detected_or_harmless() {
        // Each of the file's bits flipped in turn: the read fails, or the file is no longer
        // verified (a flip in the checksum's key; run checkpoints require verification), or
        // (a flip in the JSON padding) the content is exactly the same.
        let bytes = small_file();
        let good = from_bytes(&bytes).unwrap();
        let (mut errors, mut harmless) = (0, 0);
        for i in 0..bytes.len() * 8 {
            let mut bad = bytes.clone();
            bad[i / 8] ^= 1 << (i % 8);
            match from_bytes(&bad) {
                Err(_) => errors += 1,
                Ok(f) if !f.verified => errors += 1,
                Ok(f) => {
                    assert!(same_content(&f, &good), "undetected flip of bit {i}");
                    harmless += 1;
                }
            }
        }
        assert!(
            errors > bytes.len() * 6,
            "{errors} errors, {harmless} harmless"
        );
        // Every flip in the tensor payload is caught by the checksum.
        let header = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        for i in header * 8..bytes.len() * 8 {
            let mut bad = bytes.clone();
            bad[i / 8] ^= 1 << (i % 8);
            let err = from_bytes(&bad).expect_err("payload flip detected");
            assert!(err.contains("checksum mismatch"), "{err}");
        }
    }

    #[test]
    fn files_without_checksum_still_load_but_are_not_verified() {
        // Remove the checksum entry by hand (as a file from another tool would lack it).
        let bytes = small_file();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        header["__metadata__"]
            .as_object_mut()
            .unwrap()
            .remove(CHECKSUM_KEY);
        let mut head = serde_json::to_vec(&header).unwrap();
        while head.len() % 8 != 0 {
            head.push(b' ');
        }
        let mut out = (head.len() as u64).to_le_bytes().to_vec();
        out.extend(head);
        out.extend(&bytes[8 + n..]);
        let f = from_bytes(&out).unwrap();
        assert!(!f.verified);
        assert!(same_content(&f, &from_bytes(&bytes).unwrap()));
        let mut m = BTreeMap::new();
        m.insert(CHECKSUM_KEY.to_string(), "x".to_string());
        assert!(to_bytes(&BTreeMap::new(), &m).is_err());
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.bin");
        atomic_write(&p, b"one").unwrap();
        atomic_write(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let missing = dir.path().join("no/such/dir/f.bin");
        let err = atomic_write(&missing, b"x").unwrap_err().to_string();
        assert!(err.contains("no/such/dir"), "{err}");
    }
}
