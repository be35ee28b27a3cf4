//! The v2 wire format: the JSON request and response, and the binary tensor data extension
//! (`Inference-Header-Content-Length`: the first N bytes of the body are the JSON header, the
//! rest the tensors' raw bytes in input order, each `parameters.binary_data_size` long).

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::error::ApiError;

/// The header of the binary tensor data extension, on requests and responses.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// One input tensor of an inference request.
#[derive(Debug, Deserialize, ToSchema)]
pub struct RequestInput {
    pub name: String,
    #[serde(deserialize_with = "integers")]
    pub shape: Vec<i64>,
    pub datatype: String,
    /// `binary_data_size`: the tensor's bytes follow the JSON header instead of `data`.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub parameters: Map<String, Value>,
    /// The elements, flat or nested row-major; BYTES elements as base64 strings.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub data: Option<Value>,
}

/// A JSON integer: JSON Schema counts `2.0` as one, and so do clients that write every number
/// as a float.
pub fn integer(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| {
        v.as_f64()
            .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e18)
            .map(|f| f as i64)
    })
}

fn integers<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<i64>, D::Error> {
    let values = Vec::<Value>::deserialize(d)?;
    values
        .iter()
        .map(|v| {
            integer(v)
                .ok_or_else(|| serde::de::Error::custom(format!("shape holds {v}, not an integer")))
        })
        .collect()
}

/// An output the client asks for.
#[derive(Debug, Deserialize, ToSchema)]
pub struct RequestOutput {
    pub name: String,
    /// `binary_data: true` asks for the output as binary tensor data.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub parameters: Map<String, Value>,
}

/// `POST /v2/models/{name}/infer`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct InferRequest {
    #[serde(default)]
    pub id: Option<String>,
    /// `binary_data_output: true` asks for every output as binary tensor data.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub parameters: Map<String, Value>,
    pub inputs: Vec<RequestInput>,
    /// The outputs to return; all of them when absent.
    #[serde(default)]
    pub outputs: Option<Vec<RequestOutput>>,
}

/// One output tensor of an inference response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ResponseOutput {
    pub name: String,
    pub shape: Vec<usize>,
    pub datatype: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Map<String, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub data: Option<Value>,
}

/// The answer to an inference request.
#[derive(Debug, Serialize, ToSchema)]
pub struct InferResponse {
    pub model_name: String,
    pub model_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `face_detected`: false when no face was found and the whole photo was classified.
    #[schema(value_type = Object)]
    pub parameters: Map<String, Value>,
    pub outputs: Vec<ResponseOutput>,
}

/// A decoded input tensor's elements.
#[derive(Debug)]
pub enum Elements {
    Bytes(Vec<Vec<u8>>),
    Fp32(Vec<f32>),
}

/// A request whose form the OpenAPI document rules out.
fn bad(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, message)
}

/// A well-formed request whose content cannot be used (what no schema can say).
pub fn unprocessable(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, message)
}

/// Splits a body into the JSON header and the binary tensor data after it.
pub fn split(headers: &HeaderMap, body: Bytes) -> Result<(InferRequest, Bytes), ApiError> {
    let json_len = match headers.get(HEADER_LENGTH) {
        None => body.len(),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|n| *n <= body.len())
            .ok_or_else(|| bad(format!("{HEADER_LENGTH} is not a length within the body")))?,
    };
    let binary = body.slice(json_len..);
    let request = serde_json::from_slice(&body[..json_len])
        .map_err(|e| bad(format!("not an inference request: {e}")))?;
    Ok((request, binary))
}

/// The one input's elements, from its JSON `data` (taken, so a base64 photo is not held twice
/// while it is classified) or from the binary data after the header.
pub fn elements(input: &mut RequestInput, binary: Bytes) -> Result<Elements, ApiError> {
    let raw = match input.parameters.get("binary_data_size") {
        Some(_) if input.data.is_some() => {
            return Err(bad(format!(
                "input {:?} has both data and binary_data_size; send one",
                input.name
            )));
        }
        Some(size) => {
            let size = integer(size)
                .and_then(|s| usize::try_from(s).ok())
                .ok_or_else(|| bad("binary_data_size must be a byte count"))?;
            if size != binary.len() {
                return Err(unprocessable(format!(
                    "binary_data_size is {size} but {} bytes follow the header",
                    binary.len()
                )));
            }
            Some(binary)
        }
        None => None,
    };
    match (input.datatype.as_str(), raw, &input.data.take()) {
        ("BYTES", Some(raw), _) => Ok(Elements::Bytes(bytes_from_binary(&raw)?)),
        ("BYTES", None, Some(data)) => Ok(Elements::Bytes(bytes_from_json(data)?)),
        ("FP32", Some(raw), _) => fp32_from_binary(&raw).map(Elements::Fp32),
        ("FP32", None, Some(data)) => fp32_from_json(data).map(Elements::Fp32),
        ("BYTES" | "FP32", None, None) => Err(bad(format!("input {:?} has no data", input.name))),
        (other, ..) => Err(bad(format!(
            "input {:?} is {other}; send BYTES (a photo) or FP32 (preprocessed faces)",
            input.name
        ))),
    }
}

/// BYTES as binary data: each element is a 4-byte little-endian length and that many bytes.
fn bytes_from_binary(mut raw: &[u8]) -> Result<Vec<Vec<u8>>, ApiError> {
    let mut out = Vec::new();
    while !raw.is_empty() {
        let (len, rest) = raw
            .split_first_chunk::<4>()
            .ok_or_else(|| bad("BYTES binary data ends inside a length prefix"))?;
        let len = u32::from_le_bytes(*len) as usize;
        if len > rest.len() {
            return Err(bad("BYTES binary data ends inside an element"));
        }
        out.push(rest[..len].to_vec());
        raw = &rest[len..];
    }
    Ok(out)
}

/// BYTES in JSON: an array of base64 strings (JSON cannot carry raw bytes).
fn bytes_from_json(data: &Value) -> Result<Vec<Vec<u8>>, ApiError> {
    let items = data
        .as_array()
        .ok_or_else(|| bad("BYTES data must be an array of base64 strings"))?;
    let mut out = Vec::new();
    for v in items {
        let s = v
            .as_str()
            .ok_or_else(|| bad("BYTES data must be an array of base64 strings"))?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(s.trim())
            .map_err(|e| bad(format!("BYTES data is not base64: {e}")))?;
        out.push(bytes);
    }
    Ok(out)
}

fn fp32_from_binary(raw: &[u8]) -> Result<Vec<f32>, ApiError> {
    let (chunks, rest) = raw.as_chunks::<4>();
    if !rest.is_empty() {
        return Err(bad("FP32 binary data is not a whole number of floats"));
    }
    Ok(chunks.iter().map(|c| f32::from_le_bytes(*c)).collect())
}

fn fp32_from_json(data: &Value) -> Result<Vec<f32>, ApiError> {
    if !data.is_array() {
        return Err(bad("FP32 data must be an array of numbers, flat or nested"));
    }
    flatten(data)
        .map(|v| {
            v.as_f64()
                .map(|f| f as f32)
                .ok_or_else(|| bad("FP32 data must be numbers"))
        })
        .collect()
}

/// Row-major elements of a flat or nested JSON array (or a lone value).
fn flatten(data: &Value) -> Box<dyn Iterator<Item = &Value> + '_> {
    match data {
        Value::Array(items) => Box::new(items.iter().flat_map(flatten)),
        v => Box::new(std::iter::once(v)),
    }
}

/// An output tensor before it is written as JSON or binary.
#[derive(Debug, Clone)]
pub enum Tensor {
    Fp32(Vec<f32>),
    Int32(Vec<i32>),
    Bytes(Vec<String>),
}

impl Tensor {
    pub fn datatype(&self) -> &'static str {
        match self {
            Tensor::Fp32(_) => "FP32",
            Tensor::Int32(_) => "INT32",
            Tensor::Bytes(_) => "BYTES",
        }
    }

    fn json(&self) -> Value {
        match self {
            Tensor::Fp32(v) => v.iter().map(|f| Value::from(*f)).collect(),
            Tensor::Int32(v) => v.iter().map(|i| Value::from(*i)).collect(),
            Tensor::Bytes(v) => v.iter().map(|s| Value::from(s.as_str())).collect(),
        }
    }

    /// Little-endian elements; BYTES with the 4-byte length prefixes of the extension.
    fn binary(&self) -> Vec<u8> {
        match self {
            Tensor::Fp32(v) => v.iter().flat_map(|f| f.to_le_bytes()).collect(),
            Tensor::Int32(v) => v.iter().flat_map(|i| i.to_le_bytes()).collect(),
            Tensor::Bytes(v) => v
                .iter()
                .flat_map(|s| {
                    let len = u32::try_from(s.len()).unwrap_or(u32::MAX).to_le_bytes();
                    len.into_iter().chain(s.bytes())
                })
                .collect(),
        }
    }
}

/// A named output with its shape.
#[derive(Debug, Clone)]
pub struct Output {
    pub name: &'static str,
    pub shape: Vec<usize>,
    pub tensor: Tensor,
}

/// Which outputs the client wants, in its order (an output asked twice comes twice), and which
/// of them as binary data.
pub fn select(
    request: &InferRequest,
    available: Vec<Output>,
) -> Result<Vec<(Output, bool)>, ApiError> {
    let all_binary = flag(&request.parameters, "binary_data_output")?.unwrap_or(false);
    let Some(wanted) = &request.outputs else {
        return Ok(available.into_iter().map(|o| (o, all_binary)).collect());
    };
    wanted
        .iter()
        .map(|w| {
            let out = available
                .iter()
                .find(|o| o.name == w.name)
                .cloned()
                .ok_or_else(|| bad(format!("no output named {:?}", w.name)))?;
            let binary = flag(&w.parameters, "binary_data")?.unwrap_or(all_binary);
            Ok((out, binary))
        })
        .collect()
}

/// A boolean parameter: absent, or true or false.
fn flag(parameters: &Map<String, Value>, key: &str) -> Result<Option<bool>, ApiError> {
    match parameters.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(bad(format!("{key} must be true or false, not {other}"))),
    }
}

/// Writes the response: plain JSON, or the JSON header followed by the binary outputs.
pub fn respond(mut head: InferResponse, outputs: Vec<(Output, bool)>) -> Response {
    let mut tail = Vec::new();
    for (out, binary) in outputs {
        let (parameters, data) = if binary {
            let bytes = out.tensor.binary();
            let mut p = Map::new();
            p.insert("binary_data_size".into(), bytes.len().into());
            tail.extend_from_slice(&bytes);
            (Some(p), None)
        } else {
            (None, Some(out.tensor.json()))
        };
        head.outputs.push(ResponseOutput {
            name: out.name.to_owned(),
            shape: out.shape,
            datatype: out.tensor.datatype(),
            parameters,
            data,
        });
    }
    // Serialising plain structs of strings and numbers cannot fail.
    let mut body = serde_json::to_vec(&head).unwrap_or_default();
    if tail.is_empty() {
        return ([(header::CONTENT_TYPE, "application/json")], body).into_response();
    }
    let json_len = body.len();
    body.extend_from_slice(&tail);
    let mut resp = Response::new(Body::from(body));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(HEADER_LENGTH, HeaderValue::from(json_len));
    resp
}
