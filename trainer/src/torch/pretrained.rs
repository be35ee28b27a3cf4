//! Loading ImageNet weights: torch's legacy `.pth` format (what torchvision published
//! MobileNetV2 in) and safetensors (what the trainer writes).

use std::collections::HashMap;

use tch::{Kind, Tensor};

use super::pickle::{self, Value};

/// `torch.save`'s legacy files start with the pickled integer 0x1950a86a20f9469cfc6c.
const LEGACY_MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];

#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("not a weights file: {0}")]
    UnknownFormat(String),
    #[error("the file is a zip-format (torch >= 1.6) checkpoint; save it with safetensors instead")]
    ZipCheckpoint,
    #[error("malformed legacy torch file: {0}")]
    Malformed(String),
    #[error(transparent)]
    Pickle(#[from] pickle::PickleError),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    #[error("weights do not fit the model: {0}")]
    Mismatch(String),
}

/// Reads a state dict from the bytes of a `.pth` (legacy) or `.safetensors` file.
pub fn read_state_dict(bytes: &[u8]) -> Result<Vec<(String, Tensor)>, WeightsError> {
    if bytes.starts_with(b"PK\x03\x04") {
        return Err(WeightsError::ZipCheckpoint);
    }
    if bytes.first() == Some(&0x80) {
        return read_legacy(bytes);
    }
    // safetensors: an 8-byte header length followed by a JSON header.
    if bytes.len() > 9 && bytes[8] == b'{' {
        return super::weights::from_safetensors(bytes);
    }
    Err(WeightsError::UnknownFormat(
        "neither a legacy torch pickle nor safetensors".into(),
    ))
}

struct TensorRef {
    storage_key: String,
    offset: i64,
    size: Vec<i64>,
    stride: Vec<i64>,
}

struct StorageInfo {
    kind: Kind,
    numel: i64,
}

fn malformed(what: impl Into<String>) -> WeightsError {
    WeightsError::Malformed(what.into())
}

fn ints(v: &Value) -> Result<Vec<i64>, WeightsError> {
    v.as_tuple()
        .ok_or_else(|| malformed("expected a tuple of ints"))?
        .iter()
        .map(|x| x.as_int().ok_or_else(|| malformed("expected an int")))
        .collect()
}

fn storage_kind(name: &str) -> Result<Kind, WeightsError> {
    Ok(match name {
        "FloatStorage" => Kind::Float,
        "DoubleStorage" => Kind::Double,
        "HalfStorage" => Kind::Half,
        "BFloat16Storage" => Kind::BFloat16,
        "LongStorage" => Kind::Int64,
        "IntStorage" => Kind::Int,
        "ShortStorage" => Kind::Int16,
        "CharStorage" => Kind::Int8,
        "ByteStorage" => Kind::Uint8,
        "BoolStorage" => Kind::Bool,
        other => return Err(malformed(format!("unsupported storage type {other}"))),
    })
}

/// Interprets `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`.
fn tensor_ref(
    v: &Value,
    storages: &mut HashMap<String, StorageInfo>,
) -> Result<TensorRef, WeightsError> {
    let Value::Call { callable, args, .. } = v else {
        return Err(malformed("state dict value is not a tensor"));
    };
    if !callable.is_global("torch._utils", "_rebuild_tensor_v2")
        && !callable.is_global("torch._utils", "_rebuild_tensor")
    {
        return Err(malformed(format!(
            "unsupported tensor constructor {callable:?}"
        )));
    }
    let [storage, offset, size, stride, ..] = args.as_slice() else {
        return Err(malformed("tensor constructor has too few arguments"));
    };
    // Persistent id: ('storage', torch.FloatStorage, key, location, numel, view_metadata)
    let Value::Persistent(pid) = storage else {
        return Err(malformed("tensor storage is not a persistent id"));
    };
    let pid = pid
        .as_tuple()
        .ok_or_else(|| malformed("storage id is not a tuple"))?;
    let [tag, ty, key, _location, numel, ..] = pid else {
        return Err(malformed("storage id too short"));
    };
    if tag.as_str() != Some("storage") {
        return Err(malformed("persistent id is not a storage"));
    }
    let Value::Global(_, type_name) = ty else {
        return Err(malformed("storage type is not a class"));
    };
    let key = key
        .as_str()
        .ok_or_else(|| malformed("storage key is not a string"))?
        .to_owned();
    let numel = numel
        .as_int()
        .ok_or_else(|| malformed("storage size is not an int"))?;
    storages.insert(
        key.clone(),
        StorageInfo {
            kind: storage_kind(type_name)?,
            numel,
        },
    );
    Ok(TensorRef {
        storage_key: key,
        offset: offset
            .as_int()
            .ok_or_else(|| malformed("offset is not an int"))?,
        size: ints(size)?,
        stride: ints(stride)?,
    })
}

/// The pre-1.6 `torch.save` layout: magic, protocol, sys-info, the object pickle, the list of
/// storage keys, then each storage's raw bytes prefixed by its element count.
fn read_legacy(bytes: &[u8]) -> Result<Vec<(String, Tensor)>, WeightsError> {
    let mut pos = 0;
    let magic = pickle::read(bytes, &mut pos)?;
    if magic != Value::BigInt(LEGACY_MAGIC.to_vec()) {
        return Err(WeightsError::UnknownFormat(
            "a pickle, but not a torch.save file".into(),
        ));
    }
    let _protocol = pickle::read(bytes, &mut pos)?;
    let _sys_info = pickle::read(bytes, &mut pos)?;
    let obj = pickle::read(bytes, &mut pos)?;
    let keys = pickle::read(bytes, &mut pos)?;

    let entries = match obj {
        Value::Dict(items) => items,
        // {'state_dict': {...}} wrappers are common in checkpoints.
        other => {
            return Err(malformed(format!(
                "top-level object is not a state dict: {other:?}"
            )));
        }
    };
    let mut storages = HashMap::new();
    let mut refs = Vec::with_capacity(entries.len());
    for (name, value) in &entries {
        let name = name
            .as_str()
            .ok_or_else(|| malformed("state dict key is not a string"))?;
        refs.push((name.to_owned(), tensor_ref(value, &mut storages)?));
    }

    let keys = keys
        .as_tuple()
        .ok_or_else(|| malformed("storage key list missing"))?;
    let mut data: HashMap<String, Tensor> = HashMap::new();
    for key in keys {
        let key = key
            .as_str()
            .ok_or_else(|| malformed("storage key is not a string"))?;
        let info = storages
            .get(key)
            .ok_or_else(|| malformed(format!("storage {key} is not used by any tensor")))?;
        let head = bytes
            .get(pos..pos + 8)
            .ok_or_else(|| malformed("file ends before a storage header"))?;
        let mut n = [0u8; 8];
        n.copy_from_slice(head);
        let numel = i64::from_le_bytes(n);
        pos += 8;
        if numel != info.numel || numel < 0 {
            return Err(malformed(format!(
                "storage {key} holds {numel} elements, the pickle says {}",
                info.numel
            )));
        }
        let len = usize::try_from(numel).map_err(|_| malformed("storage too large"))?
            * info.kind.elt_size_in_bytes();
        let raw = bytes
            .get(pos..pos + len)
            .ok_or_else(|| malformed(format!("file ends inside storage {key}")))?;
        pos += len;
        data.insert(
            key.to_owned(),
            Tensor::f_from_data_size(raw, &[numel], info.kind)?,
        );
    }
    refs.into_iter()
        .map(|(name, r)| {
            let storage = data
                .get(&r.storage_key)
                .ok_or_else(|| malformed(format!("no data for storage {}", r.storage_key)))?;
            let t = storage
                .f_as_strided(&r.size, &r.stride, Some(r.offset))?
                .f_contiguous()?;
            Ok((name, t))
        })
        .collect()
}
