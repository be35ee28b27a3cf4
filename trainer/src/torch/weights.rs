//! safetensors (de)serialisation in memory, so weights go to and from object storage without
//! temporary files.

use std::collections::HashMap;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use tch::{Kind, Tensor};

use super::WeightsError;

fn dtype(kind: Kind) -> Result<Dtype, WeightsError> {
    Ok(match kind {
        Kind::Float => Dtype::F32,
        Kind::Double => Dtype::F64,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Int64 => Dtype::I64,
        Kind::Int => Dtype::I32,
        Kind::Uint8 => Dtype::U8,
        Kind::Bool => Dtype::BOOL,
        other => {
            return Err(WeightsError::Mismatch(format!(
                "cannot store {other:?} tensors"
            )));
        }
    })
}

fn kind(dtype: Dtype) -> Result<Kind, WeightsError> {
    Ok(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F64 => Kind::Double,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::U8 => Kind::Uint8,
        Dtype::BOOL => Kind::Bool,
        other => {
            return Err(WeightsError::Mismatch(format!(
                "unsupported safetensors dtype {other:?}"
            )));
        }
    })
}

/// Serialises named tensors (moved to CPU, made contiguous).
pub fn to_safetensors(named: &[(String, Tensor)]) -> Result<Vec<u8>, WeightsError> {
    let mut raw = Vec::with_capacity(named.len());
    for (name, t) in named {
        let t = t.f_to_device(tch::Device::Cpu)?.f_contiguous()?;
        let numel = t.numel();
        let mut bytes = vec![0u8; numel * t.kind().elt_size_in_bytes()];
        t.f_copy_data_u8(&mut bytes, numel)?;
        let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
        raw.push((name.clone(), dtype(t.kind())?, shape, bytes));
    }
    let views: HashMap<String, TensorView<'_>> = raw
        .iter()
        .map(|(name, dt, shape, bytes)| {
            TensorView::new(*dt, shape.clone(), bytes).map(|v| (name.clone(), v))
        })
        .collect::<Result<_, _>>()
        .map_err(|e| WeightsError::Mismatch(e.to_string()))?;
    safetensors::serialize(views, None).map_err(|e| WeightsError::Mismatch(e.to_string()))
}

/// Parses safetensors bytes into CPU tensors.
pub fn from_safetensors(bytes: &[u8]) -> Result<Vec<(String, Tensor)>, WeightsError> {
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| WeightsError::UnknownFormat(format!("invalid safetensors: {e}")))?;
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
            let t = Tensor::f_from_data_size(view.data(), &shape, kind(view.dtype())?)?;
            Ok((name, t))
        })
        .collect()
}
