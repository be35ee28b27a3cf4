//! Export of the trained MobileNetV2 to ONNX, built from the same weights file the trainer
//! writes (safetensors), so any ONNX runtime (ONNX Runtime, KServe, Triton) can serve it.
//!
//! The graph is the inference graph only: batch norm folded into the convolutions (one Conv
//! with bias per layer, no BatchNormalization nodes, so there is nothing to get wrong about
//! train/eval mode), ReLU6 as Clip, global average pooling, the linear head and a Softmax:
//! the output is class probabilities. Batch, height and width are symbolic, so one file serves
//! any batch size and the image size the run was trained at. Messages are built with the
//! generated `onnx-protobuf` types; nothing here encodes protobuf by hand.

use std::collections::HashMap;

use onnx_protobuf::attribute_proto::AttributeType;
use onnx_protobuf::tensor_proto::DataType;
use onnx_protobuf::tensor_shape_proto::{Dimension, dimension};
use onnx_protobuf::type_proto::{self, Value};
use onnx_protobuf::{
    AttributeProto, GraphProto, Message, ModelProto, NodeProto, OperatorSetIdProto,
    StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use safetensors::SafeTensors;
use safetensors::tensor::Dtype;

use crate::CLASSES;
use crate::arch::{self, BN_EPS, Block, ConvBn, HEAD};

/// Name of the graph's input: a normalised NCHW float batch (see [`crate::Preprocessor::eval`]).
pub const INPUT: &str = "input";
/// Name of the graph's output: `[batch, classes]` probabilities, rows summing to 1.
pub const OUTPUT: &str = "probabilities";
/// The ONNX operator set the graph uses (Clip with min/max as inputs needs ≥ 11; 17 is the
/// oldest opset every current runtime still supports fully).
pub const OPSET: i64 = 17;
/// IR version 8 goes with opset 17.
const IR_VERSION: i64 = 8;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("invalid safetensors: {0}")]
    Safetensors(String),
    #[error("tensor {name} is {dtype}, expected F32")]
    Dtype { name: String, dtype: String },
    #[error("tensor {0} is missing")]
    Missing(String),
    #[error("tensor {name} has shape {got:?}, expected {want:?}")]
    Shape {
        name: String,
        got: Vec<usize>,
        want: Vec<usize>,
    },
}

/// Named f32 tensors (shape, row-major data), as the trainer's state dict holds them.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Weights {
    tensors: HashMap<String, (Vec<usize>, Vec<f32>)>,
}

impl Weights {
    pub fn insert(&mut self, name: impl Into<String>, shape: Vec<usize>, data: Vec<f32>) {
        self.tensors.insert(name.into(), (shape, data));
    }

    /// Reads every tensor of a safetensors file; all must be f32.
    pub fn from_safetensors(bytes: &[u8]) -> Result<Self, ExportError> {
        let st =
            SafeTensors::deserialize(bytes).map_err(|e| ExportError::Safetensors(e.to_string()))?;
        let mut out = Self::default();
        for (name, view) in st.tensors() {
            if view.dtype() != Dtype::F32 {
                return Err(ExportError::Dtype {
                    name,
                    dtype: format!("{:?}", view.dtype()),
                });
            }
            let data = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            out.insert(name, view.shape().to_vec(), data);
        }
        Ok(out)
    }

    /// Seeded pseudo-random weights in the real layout, scaled (He-uniform, unit batch-norm
    /// statistics) so activations neither vanish nor explode. For tests and benchmarks that need
    /// a real-sized model without training one.
    pub fn random(seed: u64, num_classes: usize) -> Self {
        const A: u64 = 6_364_136_223_846_793_005;
        const C: u64 = 1_442_695_040_888_963_407;
        let mut state = seed.wrapping_mul(A).wrapping_add(C);
        let mut next = move || {
            state = state.wrapping_mul(A).wrapping_add(C);
            ((state >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
        };
        let mut w = Self::default();
        for (name, shape) in arch::parameter_shapes(num_classes) {
            let n: usize = shape.iter().product();
            let fan_in: usize = shape[1..].iter().product::<usize>().max(1);
            let scale = (6.0 / fan_in as f32).sqrt();
            let data = (0..n)
                .map(|_| {
                    if name.ends_with("running_var") {
                        1.0
                    } else if name.ends_with("running_mean") || name.ends_with(".bias") {
                        0.0
                    } else if shape.len() == 1 {
                        1.0 + 0.1 * next()
                    } else {
                        scale * next()
                    }
                })
                .collect();
            w.insert(name, shape, data);
        }
        w
    }

    fn get(&self, name: &str, want: &[usize]) -> Result<&[f32], ExportError> {
        let (shape, data) = self
            .tensors
            .get(name)
            .ok_or_else(|| ExportError::Missing(name.to_owned()))?;
        if shape != want {
            return Err(ExportError::Shape {
                name: name.to_owned(),
                got: shape.clone(),
                want: want.to_vec(),
            });
        }
        Ok(data)
    }

    /// Number of classes, from the head's bias.
    fn num_classes(&self) -> Result<usize, ExportError> {
        let name = format!("{HEAD}.bias");
        match self.tensors.get(&name) {
            Some((shape, _)) if shape.len() == 1 => Ok(shape[0]),
            Some((shape, _)) => Err(ExportError::Shape {
                name,
                got: shape.clone(),
                want: vec![CLASSES.len()],
            }),
            None => Err(ExportError::Missing(name)),
        }
    }
}

fn tensor(name: &str, dims: &[usize], data: &[f32]) -> TensorProto {
    let mut t = TensorProto::new();
    t.name = name.to_owned();
    t.dims = dims.iter().map(|&d| d as i64).collect();
    t.data_type = DataType::FLOAT as i32;
    // raw_data is the tensor's little-endian bytes (ONNX's recommended layout for weights).
    t.raw_data = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    t
}

fn ints(name: &str, values: &[i64]) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.to_owned();
    a.type_ = AttributeType::INTS.into();
    a.ints = values.to_vec();
    a
}

fn int(name: &str, value: i64) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.to_owned();
    a.type_ = AttributeType::INT.into();
    a.i = value;
    a
}

fn node(
    op: &str,
    name: &str,
    inputs: &[&str],
    output: &str,
    attrs: Vec<AttributeProto>,
) -> NodeProto {
    let mut n = NodeProto::new();
    n.op_type = op.to_owned();
    n.name = name.to_owned();
    n.input = inputs.iter().map(|s| (*s).to_owned()).collect();
    n.output = vec![output.to_owned()];
    n.attribute = attrs;
    n
}

fn float_value(name: &str, dims: &[dimension::Value]) -> ValueInfoProto {
    let mut shape = TensorShapeProto::new();
    shape.dim = dims
        .iter()
        .map(|v| {
            let mut d = Dimension::new();
            d.value = Some(v.clone());
            d
        })
        .collect();
    let mut t = type_proto::Tensor::new();
    t.elem_type = DataType::FLOAT as i32;
    t.shape = Some(shape).into();
    let mut ty = TypeProto::new();
    ty.value = Some(Value::TensorType(t));
    let mut v = ValueInfoProto::new();
    v.name = name.to_owned();
    v.type_ = Some(ty).into();
    v
}

/// Batch norm folded into the preceding bias-free convolution:
/// `W' = W·γ/√(σ²+ε)` per output channel and `b' = β − μ·γ/√(σ²+ε)`.
fn fold(w: &Weights, c: &ConvBn) -> Result<(Vec<f32>, Vec<f32>), ExportError> {
    let ch = [c.c_out];
    let weight = w.get(&format!("{}.weight", c.conv), &c.weight_shape())?;
    let gamma = w.get(&format!("{}.weight", c.bn), &ch)?;
    let beta = w.get(&format!("{}.bias", c.bn), &ch)?;
    let mean = w.get(&format!("{}.running_mean", c.bn), &ch)?;
    let var = w.get(&format!("{}.running_var", c.bn), &ch)?;
    let per_out = weight.len() / c.c_out;
    let mut folded = weight.to_vec();
    let mut bias = vec![0.0f32; c.c_out];
    for o in 0..c.c_out {
        // In f64 so the fold itself adds no error worth measuring against the 1e-4 parity bound.
        let scale = f64::from(gamma[o]) / (f64::from(var[o]) + f64::from(BN_EPS)).sqrt();
        for v in &mut folded[o * per_out..(o + 1) * per_out] {
            *v = (f64::from(*v) * scale) as f32;
        }
        bias[o] = (f64::from(beta[o]) - f64::from(mean[o]) * scale) as f32;
    }
    Ok((folded, bias))
}

struct Builder {
    graph: GraphProto,
}

impl Builder {
    fn conv(&mut self, w: &Weights, c: &ConvBn, x: &str) -> Result<String, ExportError> {
        let (weight, bias) = fold(w, c)?;
        let (wn, bn) = (format!("{}.weight", c.conv), format!("{}.bias", c.conv));
        self.graph
            .initializer
            .push(tensor(&wn, &c.weight_shape(), &weight));
        self.graph.initializer.push(tensor(&bn, &[c.c_out], &bias));
        let k = c.kernel as i64;
        let s = c.stride as i64;
        let p = c.padding() as i64;
        let y = format!("{}.out", c.conv);
        self.graph.node.push(node(
            "Conv",
            &c.conv,
            &[x, &wn, &bn],
            &y,
            vec![
                ints("kernel_shape", &[k, k]),
                ints("strides", &[s, s]),
                ints("pads", &[p, p, p, p]),
                ints("dilations", &[1, 1]),
                int("group", c.groups as i64),
            ],
        ));
        if !c.relu6 {
            return Ok(y);
        }
        let z = format!("{}.relu6", c.conv);
        self.graph.node.push(node(
            "Clip",
            &z,
            &[&y, "relu6.min", "relu6.max"],
            &z,
            vec![],
        ));
        Ok(z)
    }
}

/// The ONNX model (serialised `ModelProto`) for `weights`; `image_size` is recorded in the
/// metadata for consumers that want to know what the model was trained on.
pub fn export(weights: &Weights, image_size: u32) -> Result<Vec<u8>, ExportError> {
    build(weights, image_size, None)
}

/// **Test-only.** [`export`] with a per-channel `input · scale + shift` (an ONNX `Mul` and
/// `Add`) prepended to the network, so the graph expects another input normalisation than the
/// one [`crate::Preprocessor::eval`] produces — e.g. `scale = 1/std`, `shift = −mean/std`
/// makes it normalise by itself and expect raw 0–1 RGB. The served-path validator's tests use
/// it to build a model whose served answers disagree with its trainer's (train/serve skew).
/// Never used by the trainer.
#[doc(hidden)]
pub fn export_with_input_transform(
    weights: &Weights,
    image_size: u32,
    scale: [f32; 3],
    shift: [f32; 3],
) -> Result<Vec<u8>, ExportError> {
    build(weights, image_size, Some((scale, shift)))
}

fn build(
    weights: &Weights,
    image_size: u32,
    input_transform: Option<([f32; 3], [f32; 3])>,
) -> Result<Vec<u8>, ExportError> {
    let num_classes = weights.num_classes()?;
    let mut b = Builder {
        graph: GraphProto::new(),
    };
    b.graph.name = "face2simpson_mobilenet_v2".into();
    b.graph.initializer.push(tensor("relu6.min", &[], &[0.0]));
    b.graph.initializer.push(tensor("relu6.max", &[], &[6.0]));
    let mut x = INPUT.to_owned();
    if let Some((scale, shift)) = input_transform {
        b.graph
            .initializer
            .push(tensor("input.scale", &[1, 3, 1, 1], &scale));
        b.graph
            .initializer
            .push(tensor("input.shift", &[1, 3, 1, 1], &shift));
        b.graph.node.push(node(
            "Mul",
            "input.mul",
            &[INPUT, "input.scale"],
            "input.scaled",
            vec![],
        ));
        b.graph.node.push(node(
            "Add",
            "input.add",
            &["input.scaled", "input.shift"],
            "input.transformed",
            vec![],
        ));
        x = "input.transformed".to_owned();
    }
    for (i, block) in arch::features().iter().enumerate() {
        match block {
            Block::Conv(c) => x = b.conv(weights, c, &x)?,
            Block::InvertedResidual { convs, residual } => {
                let input = x.clone();
                for c in convs {
                    x = b.conv(weights, c, &x)?;
                }
                if *residual {
                    let sum = format!("features.{i}.add");
                    b.graph
                        .node
                        .push(node("Add", &sum, &[&input, &x], &sum, vec![]));
                    x = sum;
                }
            }
        }
    }
    b.graph
        .node
        .push(node("GlobalAveragePool", "pool", &[&x], "pooled", vec![]));
    b.graph.node.push(node(
        "Flatten",
        "flatten",
        &["pooled"],
        "embedding",
        vec![int("axis", 1)],
    ));
    let (hw, hb) = (format!("{HEAD}.weight"), format!("{HEAD}.bias"));
    let head_w = weights.get(&hw, &[num_classes, arch::FEATURES])?;
    let head_b = weights.get(&hb, &[num_classes])?;
    b.graph
        .initializer
        .push(tensor(&hw, &[num_classes, arch::FEATURES], head_w));
    b.graph
        .initializer
        .push(tensor(&hb, &[num_classes], head_b));
    b.graph.node.push(node(
        "Gemm",
        HEAD,
        &["embedding", &hw, &hb],
        "logits",
        vec![int("transB", 1)],
    ));
    b.graph.node.push(node(
        "Softmax",
        "softmax",
        &["logits"],
        OUTPUT,
        vec![int("axis", -1)],
    ));

    let param = |s: &str| dimension::Value::DimParam(s.to_owned());
    b.graph.input.push(float_value(
        INPUT,
        &[
            param("batch"),
            dimension::Value::DimValue(3),
            param("height"),
            param("width"),
        ],
    ));
    b.graph.output.push(float_value(
        OUTPUT,
        &[
            param("batch"),
            dimension::Value::DimValue(num_classes as i64),
        ],
    ));

    let mut model = ModelProto::new();
    model.ir_version = IR_VERSION;
    model.producer_name = "face2simpson".into();
    model.producer_version = env!("CARGO_PKG_VERSION").into();
    model.doc_string = "MobileNetV2 Simpsons classifier: input normalised RGB NCHW (ImageNet mean/std), output class probabilities".into();
    let mut opset = OperatorSetIdProto::new();
    opset.version = OPSET;
    model.opset_import.push(opset);
    let meta = |k: &str, v: String| {
        let mut e = StringStringEntryProto::new();
        e.key = k.to_owned();
        e.value = v;
        e
    };
    if num_classes == CLASSES.len() {
        model
            .metadata_props
            .push(meta("classes", CLASSES.join(",")));
    }
    model
        .metadata_props
        .push(meta("image_size", image_size.to_string()));
    model.graph = Some(b.graph).into();
    model
        .write_to_bytes()
        .map_err(|e| ExportError::Safetensors(format!("serialising the model: {e}")))
}

/// [`export`] straight from the bytes of a `model.safetensors`.
pub fn export_safetensors(bytes: &[u8], image_size: u32) -> Result<Vec<u8>, ExportError> {
    export(&Weights::from_safetensors(bytes)?, image_size)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic, non-trivial weights in the real layout.
    fn weights() -> Weights {
        let mut w = Weights::default();
        for (i, (name, shape)) in arch::parameter_shapes(4).into_iter().enumerate() {
            let n: usize = shape.iter().product();
            let data = (0..n)
                .map(|j| {
                    let v = ((i * 31 + j * 7) % 13) as f32 / 13.0;
                    if name.ends_with("running_var") {
                        0.5 + v
                    } else {
                        v - 0.5
                    }
                })
                .collect();
            w.insert(name, shape, data);
        }
        w
    }

    #[test]
    fn graph_has_folded_convs_and_a_softmax() {
        let bytes = export(&weights(), 96).unwrap();
        let model = ModelProto::parse_from_bytes(&bytes).unwrap();
        assert!(model.opset_import[0].version >= 17);
        let g = model.graph.as_ref().unwrap();
        let ops: Vec<&str> = g.node.iter().map(|n| n.op_type.as_str()).collect();
        assert!(
            !ops.contains(&"BatchNormalization"),
            "batch norm not folded"
        );
        assert_eq!(ops.iter().filter(|o| **o == "Conv").count(), 52);
        assert_eq!(ops.last(), Some(&"Softmax"));
        assert_eq!(g.input[0].name, INPUT);
        assert_eq!(g.output[0].name, OUTPUT);
        // Dynamic batch: the first input dimension is symbolic.
        let Some(Value::TensorType(t)) = &g.input[0].type_.value else {
            panic!("input is not a tensor")
        };
        assert_eq!(
            t.shape.dim[0].value,
            Some(dimension::Value::DimParam("batch".into()))
        );
    }

    #[test]
    fn folding_matches_conv_then_batch_norm() {
        let w = weights();
        let c = match &arch::features()[0] {
            Block::Conv(c) => c.clone(),
            Block::InvertedResidual { .. } => unreachable!(),
        };
        let (fw, fb) = fold(&w, &c).unwrap();
        // One output pixel of channel 5 for an input of ones: conv then BN by hand.
        let o = 5;
        let per_out = 27;
        let raw: f32 = w.tensors["features.0.0.weight"].1[o * per_out..(o + 1) * per_out]
            .iter()
            .sum();
        let stat = |s: &str| w.tensors[&format!("features.0.1.{s}")].1[o];
        let bn = (raw - stat("running_mean")) / (stat("running_var") + BN_EPS).sqrt()
            * stat("weight")
            + stat("bias");
        let folded: f32 = fw[o * per_out..(o + 1) * per_out].iter().sum::<f32>() + fb[o];
        assert!((bn - folded).abs() < 1e-5, "{bn} vs {folded}");
    }

    #[test]
    fn the_test_only_input_transform_is_prepended_and_the_normal_export_has_none() {
        let ops = |bytes: &[u8]| -> Vec<String> {
            let model = ModelProto::parse_from_bytes(bytes).unwrap();
            model
                .graph
                .as_ref()
                .unwrap()
                .node
                .iter()
                .map(|n| n.op_type.clone())
                .collect()
        };
        let normal = ops(&export(&weights(), 96).unwrap());
        assert_eq!(normal[0], "Conv");
        let skewed =
            ops(
                &export_with_input_transform(&weights(), 96, [2.0, 2.0, 2.0], [0.5, 0.5, 0.5])
                    .unwrap(),
            );
        assert_eq!(&skewed[..3], ["Mul", "Add", "Conv"]);
        assert_eq!(skewed.len(), normal.len() + 2);
    }

    #[test]
    fn refuses_incomplete_weights() {
        let mut w = weights();
        w.tensors.remove("features.3.conv.1.1.running_var");
        assert!(matches!(export(&w, 96), Err(ExportError::Missing(n)) if n.contains("features.3")));
    }
}
