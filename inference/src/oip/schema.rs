//! The v2 request as the OpenAPI document states it, written out by hand: derived from the
//! wire types it would say "any input, any datatype, any shape", and a client (or a fuzzer)
//! could not tell a well-formed request from one the server refuses. Every constraint the
//! server checks on the request's form is here (one input, `image` BYTES [1] or `tensor` FP32
//! [N,3,S,S], known output names, boolean flags); what a schema cannot say (that the bytes are
//! a photo, that a tensor's data fills its shape, that S is the model's size) is answered 415
//! or 422, never 400.

use serde_json::{Value, json};

/// The largest finite f32: a larger JSON number is infinite once read as FP32.
const F32_MAX: f64 = f32::MAX as f64;
/// The largest dimension or byte count the document admits (a body is far smaller anyway).
const INT_MAX: i64 = i32::MAX as i64;

/// An input: its name, datatype and shape, and its elements either in `data` or, with the
/// binary data extension, after the JSON header (`parameters.binary_data_size`), never both.
fn input(description: &str, name: &str, datatype: &str, shape: Value, data: Value) -> Value {
    json!({
        "type": "object",
        "description": description,
        "required": ["name", "datatype", "shape"],
        "properties": {
            "name": {"const": name},
            "datatype": {"const": datatype},
            "shape": shape,
            "parameters": {
                "type": "object",
                "properties": {"binary_data_size": {"type": "integer", "minimum": 0, "maximum": INT_MAX}}
            },
            "data": data
        },
        "oneOf": [
            {
                "required": ["data"],
                "properties": {"parameters": {"not": {"required": ["binary_data_size"]}}}
            },
            {
                "required": ["parameters"],
                "properties": {"parameters": {"required": ["binary_data_size"]}},
                "not": {"required": ["data"]}
            }
        ]
    })
}

fn schemas() -> Vec<(&'static str, Value)> {
    let flags = |name: &str, description: &str| {
        json!({
            "type": "object",
            "properties": {name: {"type": "boolean", "description": description}}
        })
    };
    vec![
        (
            "InferRequest",
            json!({
                "type": "object",
                "required": ["inputs"],
                "properties": {
                    "id": {"type": ["string", "null"], "description": "echoed in the response"},
                    "parameters": flags("binary_data_output", "every output as binary tensor data after the JSON header"),
                    "inputs": {
                        "type": "array", "minItems": 1, "maxItems": 1,
                        "description": "exactly one input: `image` (a photo) or `tensor` (preprocessed faces)",
                        "items": {"oneOf": [
                            {"$ref": "#/components/schemas/ImageInput"},
                            {"$ref": "#/components/schemas/TensorInput"}
                        ]}
                    },
                    "outputs": {
                        "type": ["array", "null"],
                        "description": "the outputs to return, in this order; all of them when absent",
                        "items": {"$ref": "#/components/schemas/RequestOutput"}
                    }
                }
            }),
        ),
        (
            "ImageInput",
            input(
                "One photo (JPEG, PNG or WebP): base64 in `data`, or with the binary data extension `parameters.binary_data_size` bytes after the JSON header (each BYTES element a 4-byte little-endian length, then the bytes).",
                super::IMAGE_INPUT,
                "BYTES",
                json!({"type": "array", "items": {"const": 1}, "minItems": 1, "maxItems": 1}),
                json!({
                    "type": "array", "minItems": 1, "maxItems": 1,
                    "items": {"type": "string", "format": "byte", "contentEncoding": "base64", "minLength": 1}
                }),
            ),
        ),
        (
            "TensorInput",
            input(
                "Faces already cropped, fitted and normalised, NCHW: N faces, 3 channels, S×S pixels, S the model's input size (GET /v2/models/{name} says it). `data` holds N·3·S·S numbers, flat or nested row-major; or, with the binary data extension, `parameters.binary_data_size` bytes of little-endian floats after the JSON header.",
                super::TENSOR_INPUT,
                "FP32",
                json!({
                    "type": "array", "minItems": 4, "maxItems": 4,
                    "prefixItems": [
                        {"type": "integer", "minimum": 1, "maximum": INT_MAX},
                        {"const": 3},
                        {"type": "integer", "minimum": 1, "maximum": INT_MAX},
                        {"type": "integer", "minimum": 1, "maximum": INT_MAX}
                    ],
                    "items": {"type": "integer"}
                }),
                json!({"type": "array", "items": {"$ref": "#/components/schemas/Fp32Data"}}),
            ),
        ),
        (
            "Fp32Data",
            json!({
                "oneOf": [
                    {"type": "number", "minimum": -F32_MAX, "maximum": F32_MAX},
                    {"type": "array", "items": {"$ref": "#/components/schemas/Fp32Data"}}
                ]
            }),
        ),
        (
            "RequestOutput",
            json!({
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"enum": [super::infer::PROBABILITIES, super::infer::CHARACTER, super::infer::BOX]},
                    "parameters": flags("binary_data", "this output as binary tensor data after the JSON header")
                }
            }),
        ),
    ]
}

/// Puts the hand-written request schemas into `doc` (the OpenAPI document as JSON), over what
/// the wire types derived. Written into the JSON itself: utoipa's schema objects cannot carry
/// `const` or `prefixItems`.
pub fn install(doc: &mut Value) {
    let Some(components) = doc
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    components.remove("RequestInput");
    for (name, schema) in schemas() {
        components.insert(name.to_owned(), schema);
    }
}
