//! Safetensors files: deterministic writing (sorted names and metadata keys), atomic
//! replacement (temp file, fsync, rename), and validated reading. No code runs on load.

use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Tensors by name and string metadata, as stored in one safetensors file.
#[derive(Debug, Default)]
pub struct TensorFile {
    /// Tensors, sorted by name.
    pub tensors: BTreeMap<String, Tensor>,
    /// The `__metadata__` entries.
    pub metadata: BTreeMap<String, String>,
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
/// so equal inputs give equal bytes).
pub fn to_bytes(
    tensors: &BTreeMap<String, Tensor>,
    metadata: &BTreeMap<String, String>,
) -> Result<Vec<u8>> {
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        let meta: serde_json::Map<String, serde_json::Value> = metadata
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        header.insert("__metadata__".into(), serde_json::Value::Object(meta));
    }
    let mut data: Vec<u8> = Vec::new();
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
    }
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

/// Parses safetensors bytes. Errors are plain messages (the caller adds the path).
pub fn from_bytes(bytes: &[u8]) -> std::result::Result<TensorFile, String> {
    use safetensors::tensor::{Dtype, SafeTensors};
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| format!("not a valid safetensors file: {e}"))?;
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| format!("bad header: {e}"))?;
    let metadata: BTreeMap<String, String> = meta
        .metadata()
        .as_ref()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    let mut tensors = BTreeMap::new();
    for (name, view) in st.tensors() {
        let dtype = match view.dtype() {
            Dtype::F32 => DType::F32,
            Dtype::F64 => DType::F64,
            Dtype::U8 => DType::U8,
            Dtype::U32 => DType::U32,
            Dtype::I64 => DType::I64,
            other => return Err(format!("tensor '{name}' has unsupported dtype {other:?}")),
        };
        let t = Tensor::from_raw_buffer(view.data(), dtype, view.shape(), &Device::Cpu)
            .map_err(|e| format!("tensor '{name}': {e}"))?;
        tensors.insert(name, t);
    }
    Ok(TensorFile { tensors, metadata })
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

/// The tensors of `net` (parameters and buffers) under `prefix.` + their names.
pub fn net_tensors(net: &dyn crate::nn::TimeNet, prefix: &str) -> BTreeMap<String, Tensor> {
    net.vars()
        .iter()
        .chain(net.buffers())
        .map(|(name, v)| (format!("{prefix}.{name}"), v.as_tensor().clone()))
        .collect()
}

/// Sets the parameters and buffers of `net` from `file`'s tensors named `prefix.` + name,
/// checking every shape; values are converted to the net's dtype.
pub fn load_net(
    net: &dyn crate::nn::TimeNet,
    prefix: &str,
    file: &TensorFile,
    path: &Path,
) -> Result<()> {
    for (name, var) in net.vars().iter().chain(net.buffers()) {
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
        var.set(&t.to_dtype(var.dtype())?)?;
    }
    Ok(())
}

/// Sets only the trainable parameters of `net` from tensors named `prefix.` + name.
pub fn load_net_vars(
    net: &dyn crate::nn::TimeNet,
    prefix: &str,
    file: &TensorFile,
    path: &Path,
) -> Result<()> {
    for (name, var) in net.vars() {
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
        var.set(&t.to_dtype(var.dtype())?)?;
    }
    Ok(())
}
