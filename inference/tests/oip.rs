//! The Open Inference Protocol (v2) routes: driven over a real socket by NVIDIA's official
//! client (tritonclient[http] from PyPI, in the tools venv `make setup-test` builds) and
//! compared with `/v1/predict` on the same photo; and in process for what a client library
//! does not exercise (preprocessed tensors, output selection, errors, the request id).
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::process::Command;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use common::{ASTRONAUT, IMAGE_SIZE, call, limits, ready_state};
use face2simpson_inference::AppState;
use serde_json::{Value, json};

const CLASSES: [&str; 4] = ["homer", "marge", "bart", "lisa"];

fn parse(body: &[u8]) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(body)))
}

fn post_json(path: &str, body: &Value) -> Request<Body> {
    Request::post(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

/// `/v1/predict`'s verdicts for the photo: whether a face was found, and (character,
/// probabilities in class order) per face, or for the whole photo when none was.
async fn v1_verdicts(state: &AppState, photo: &[u8]) -> (bool, Vec<(String, Vec<f64>)>) {
    let req = Request::post("/v1/predict")
        .header(header::CONTENT_TYPE, "image/png")
        .body(Body::from(photo.to_vec()))
        .unwrap();
    let (status, _, body) = call(state, req).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let v = parse(&body);
    let faces = v["faces"].as_array().unwrap();
    let rows: Vec<&Value> = if faces.is_empty() {
        vec![&v]
    } else {
        faces.iter().collect()
    };
    let verdicts = rows
        .iter()
        .map(|f| {
            let p = CLASSES
                .iter()
                .map(|c| f["probabilities"][c].as_f64().unwrap())
                .collect();
            (f["character"].as_str().unwrap().to_owned(), p)
        })
        .collect();
    (!faces.is_empty(), verdicts)
}

/// The tools venv's Python, with tritonclient; a clear failure, never a skip, without it.
fn tools_python() -> PathBuf {
    let deps = std::env::var_os("FACE2SIMPSON_DEPS").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.deps"),
        PathBuf::from,
    );
    let python = deps.join("tools/bin/python");
    let ok = Command::new(&python)
        .args(["-c", "import tritonclient.http"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "{} cannot import tritonclient.http: run `make setup-test` (scripts/setup-tools.sh installs tritonclient[http] into the tools venv)",
        python.display()
    );
    python
}

fn assert_same_verdicts(what: &str, oip: &Value, v1: &[(String, Vec<f64>)]) {
    let probs = oip["probabilities"].as_array().unwrap();
    let chars = oip["character"].as_array().unwrap();
    assert_eq!(probs.len(), v1.len(), "{what}: rows {oip}");
    assert_eq!(chars.len(), v1.len(), "{what}: {oip}");
    for (i, (character, p)) in v1.iter().enumerate() {
        assert_eq!(chars[i], character.as_str(), "{what}: face {i}");
        for (k, expected) in p.iter().enumerate() {
            let got = probs[i][k].as_f64().unwrap();
            assert!(
                (got - expected).abs() < 1e-5,
                "{what}: face {i} class {k}: {got} vs {expected}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tritonclient_agrees_with_v1_predict() {
    let python = tools_python();
    let dir = tempfile::tempdir().unwrap();
    let state = ready_state(dir.path(), limits()).await;
    let (face_detected, v1) = v1_verdicts(&state, ASTRONAUT).await;
    assert!(face_detected, "the fixture photo has a face");

    let served = common::Served::start(state).await;
    let photo = dir.path().join("astronaut.png");
    std::fs::write(&photo, ASTRONAUT).unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/oip_client.py");
    let out = tokio::process::Command::new(&python)
        .arg(&script)
        .arg(served.addr.to_string())
        .arg("face2simpson")
        .arg(&photo)
        .output()
        .await
        .unwrap();
    served.stop().await;
    assert!(
        out.status.success(),
        "oip_client.py failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report = parse(&out.stdout);
    assert_eq!(report["tritonclient"], "2.73.0");
    for check in ["live", "ready", "model_ready"] {
        assert_eq!(report[check], true, "{check}: {report}");
    }
    assert_eq!(report["unknown_model_ready"], false);
    let meta = &report["metadata"];
    assert_eq!(meta["name"], "face2simpson");
    assert_eq!(meta["versions"], json!(["r1"]));
    assert_eq!(meta["platform"], "onnxruntime");
    assert_eq!(
        meta["inputs"][1]["shape"],
        json!([-1, 3, IMAGE_SIZE, IMAGE_SIZE])
    );
    for how in ["binary", "json"] {
        let r = &report[how];
        assert_same_verdicts(how, r, &v1);
        assert_eq!(r["model_version"], "r1");
        assert_eq!(r["id"], "oip-client");
        assert_eq!(r["parameters"]["face_detected"], true);
        assert!(r["box"][0][2].as_i64().unwrap() > 0, "a face box: {r}");
    }
}

#[tokio::test]
async fn preprocessed_tensors_outputs_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let state = ready_state(dir.path(), limits()).await;
    let s = IMAGE_SIZE as usize;
    // Two faces of zeros: the normalised ImageNet mean colour.
    let tensor = json!({
        "id": "t1",
        "inputs": [{"name": "tensor", "datatype": "FP32", "shape": [2, 3, s, s], "data": vec![0.0; 2 * 3 * s * s]}],
        "outputs": [{"name": "probabilities"}, {"name": "character"}]
    });
    let (status, headers, body) =
        call(&state, post_json("/v2/models/face2simpson/infer", &tensor)).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(headers["cache-control"], "no-store");
    let v = parse(&body);
    assert_eq!(v["model_name"], "face2simpson");
    assert_eq!(v["model_version"], "r1");
    assert_eq!(v["id"], "t1");
    let outputs = v["outputs"].as_array().unwrap();
    assert_eq!(outputs.len(), 2, "only the outputs asked for: {v}");
    assert_eq!(outputs[0]["name"], "probabilities");
    assert_eq!(outputs[0]["shape"], json!([2, 4]));
    let p: Vec<f64> = outputs[0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert!((p[..4].iter().sum::<f64>() - 1.0).abs() < 1e-4, "{p:?}");
    assert_eq!(p[..4], p[4..], "the same face, the same verdict");
    assert!(CLASSES.contains(&outputs[1]["data"][0].as_str().unwrap()));

    // The same request at the version path, with binary outputs.
    let mut binary = tensor.clone();
    binary["parameters"] = json!({"binary_data_output": true});
    let (status, headers, body) = call(
        &state,
        post_json("/v2/models/face2simpson/versions/r1/infer", &binary),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let json_len: usize = headers["inference-header-content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let head = parse(&body[..json_len]);
    assert_eq!(head["outputs"][0]["parameters"]["binary_data_size"], 32);
    let floats: Vec<f64> = body[json_len..json_len + 32]
        .chunks_exact(4)
        .map(|c| f64::from(f32::from_le_bytes(c.try_into().unwrap())))
        .collect();
    for (a, b) in floats.iter().zip(&p) {
        assert!((a - b).abs() < 1e-6);
    }

    // Errors are OIP error bodies with v1's statuses: 400 for a request of another form than
    // the OpenAPI document states, 415/422 for content it cannot describe.
    let cases = [
        (
            "/v2/models/nobody/infer",
            tensor.clone(),
            StatusCode::NOT_FOUND,
        ),
        (
            "/v2/models/face2simpson/versions/r0/infer",
            tensor.clone(),
            StatusCode::NOT_FOUND,
        ),
        (
            "/v2/models/face2simpson/infer",
            json!({"inputs": [{"name": "tensor", "datatype": "FP32", "shape": [1, 3, 8], "data": [0.0]}]}),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/v2/models/face2simpson/infer",
            json!({"inputs": [{"name": "tensor", "datatype": "FP32", "shape": [1, 3, 8, 8], "data": [0.0]}]}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "/v2/models/face2simpson/infer",
            json!({"inputs": [{"name": "image", "datatype": "FP32", "shape": [1], "data": [0.0]}]}),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/v2/models/face2simpson/infer",
            json!({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["bm90IGFuIGltYWdl"]}]}),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "/v2/models/face2simpson/infer",
            json!({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [""]}]}),
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (path, body, expected) in cases {
        let (status, _, out) = call(&state, post_json(path, &body)).await;
        assert_eq!(
            status,
            expected,
            "{path}: {}",
            String::from_utf8_lossy(&out)
        );
        assert!(parse(&out)["error"].is_string());
    }
    let (status, _, out) = call(
        &state,
        Request::get("/v2/models/nobody")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(parse(&out)["error"].as_str().unwrap().contains("nobody"));
}

#[tokio::test]
async fn over_the_body_limit_is_413_and_request_ids_are_echoed() {
    let dir = tempfile::tempdir().unwrap();
    let small = face2simpson_inference::Limits {
        max_body_bytes: 1 << 10,
        ..limits()
    };
    let state = ready_state(dir.path(), small).await;
    let big = json!({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["A".repeat(4 << 10)]}]});
    let (status, _, out) = call(&state, post_json("/v2/models/face2simpson/infer", &big)).await;
    assert_eq!(
        status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        String::from_utf8_lossy(&out)
    );
    assert!(parse(&out)["error"].is_string());

    let req = Request::get("/v2/health/ready")
        .header("x-request-id", "abc-123")
        .body(Body::empty())
        .unwrap();
    let (status, headers, _) = call(&state, req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-request-id"], "abc-123");
    // An id that could break a log line is replaced by a fresh one.
    let req = Request::get("/v2/health/live")
        .header("x-request-id", "a b\"c")
        .body(Body::empty())
        .unwrap();
    let (_, headers, _) = call(&state, req).await;
    let id = headers["x-request-id"].to_str().unwrap();
    assert_eq!(id.len(), 16, "{id}");
    let (_, headers, _) = call(
        &state,
        Request::get("/nowhere").body(Body::empty()).unwrap(),
    )
    .await;
    assert!(headers.contains_key("x-request-id"));

    // The OpenAPI document: raw uploads are binary strings, the v2 routes are listed.
    let (_, _, doc) = call(
        &state,
        Request::get("/openapi.json").body(Body::empty()).unwrap(),
    )
    .await;
    let doc = parse(&doc);
    let content = &doc["paths"]["/v1/predict"]["post"]["requestBody"]["content"];
    for mime in [
        "image/jpeg",
        "image/png",
        "image/webp",
        "application/octet-stream",
    ] {
        let schema = content[mime]["schema"].to_string();
        assert!(schema.contains("RawImage"), "{mime}: {schema}");
    }
    assert_eq!(doc["components"]["schemas"]["RawImage"]["type"], "string");
    assert_eq!(doc["components"]["schemas"]["RawImage"]["format"], "binary");
    for path in [
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/{name}",
        "/v2/models/{name}/ready",
    ] {
        assert!(doc["paths"][path]["get"].is_object(), "{path}");
    }
    assert!(doc["paths"]["/v2/models/{name}/infer"]["post"].is_object());
    assert!(doc["components"]["schemas"]["InferRequest"].is_object());
}
