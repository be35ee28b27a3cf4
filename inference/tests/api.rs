//! The HTTP API, driven with `oneshot` against a real model.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use common::{
    ASTRONAUT, IMAGE_SIZE, call, detector, jpeg, limits, png, png_bomb, ready_state,
    ready_state_with, with_exif_orientation,
};
use face2simpson_inference::{AppState, Limits};

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

fn raw(bytes: Vec<u8>, content_type: &str) -> Request<Body> {
    Request::post("/v1/predict")
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from(bytes))
        .unwrap()
}

fn multipart(field: &str, bytes: &[u8]) -> Request<Body> {
    let boundary = "XfaceX2XsimpsonX";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    Request::post("/v1/predict")
        .header(
            header::CONTENT_TYPE,
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(Body::from(body))
        .unwrap()
}

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(body)))
}

fn assert_distribution(p: &serde_json::Value) {
    let sum: f64 = ["homer", "marge", "bart", "lisa"]
        .iter()
        .map(|c| p[c].as_f64().unwrap())
        .sum();
    assert!((sum - 1.0).abs() < 1e-4, "probabilities sum to {sum}: {p}");
}

fn flat_image() -> Vec<u8> {
    png(&image::RgbImage::from_fn(120, 90, |x, y| {
        image::Rgb([(x * 2) as u8, (y * 2) as u8, 90])
    }))
}

#[tokio::test]
async fn readiness_follows_the_model() {
    let state = AppState::new(limits(), detector(8));
    assert_eq!(call(&state, get("/healthz")).await.0, StatusCode::OK);
    let (status, headers, body) = call(&state, get("/readyz")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers[header::RETRY_AFTER], "1");
    assert_eq!(json(&body)["error"], "loading");
    let (status, headers, body) = call(&state, raw(flat_image(), "image/png")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers[header::RETRY_AFTER], "1");
    assert!(json(&body)["error"].as_str().unwrap().contains("loading"));
    assert_eq!(
        call(&state, get("/v1/model")).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );

    let dir = tempfile::tempdir().unwrap();
    let ready = ready_state(dir.path(), limits()).await;
    assert_eq!(call(&ready, get("/readyz")).await.0, StatusCode::OK);
    // The drain phase of a shutdown: still alive, no longer ready.
    ready.start_draining();
    assert_eq!(call(&ready, get("/healthz")).await.0, StatusCode::OK);
    let (status, _, body) = call(&ready, get("/readyz")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(json(&body)["error"], "draining");
}

#[tokio::test]
async fn predicts_raw_and_multipart_uploads() {
    let dir = tempfile::tempdir().unwrap();
    let state = ready_state(dir.path(), limits()).await;
    for req in [
        raw(flat_image(), "image/png"),
        multipart("image", &flat_image()),
    ] {
        let (status, _, body) = call(&state, req).await;
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        let v = json(&body);
        assert!(["homer", "marge", "bart", "lisa"].contains(&v["character"].as_str().unwrap()));
        assert_distribution(&v["probabilities"]);
        assert_eq!(v["face_detected"], false);
        assert_eq!(v["faces"].as_array().unwrap().len(), 0);
        assert_eq!(v["model"]["run_id"], "r1");
        assert_eq!(v["model"]["test_accuracy"], 0.75);
    }
    let (_, _, body) = call(&state, get("/v1/model")).await;
    let info = json(&body);
    assert_eq!(info["image_size"], IMAGE_SIZE);
    assert_eq!(info["run_id"], "r1");
    assert!(info["onnx_sha256"].as_str().unwrap().starts_with("sha256:"));
    // Storage locations are internal: none leaks through /v1/model.
    let text = String::from_utf8(body).unwrap();
    for leak in ["file://", "s3://", "runs/r1", "internal-bucket"] {
        assert!(!text.contains(leak), "/v1/model exposes {leak}: {text}");
    }
}

#[tokio::test]
async fn one_verdict_per_face() {
    let dir = tempfile::tempdir().unwrap();
    let state = ready_state(dir.path(), limits()).await;
    let (status, _, body) = call(&state, raw(ASTRONAUT.to_vec(), "image/png")).await;
    assert_eq!(status, StatusCode::OK);
    let v = json(&body);
    assert_eq!(v["face_detected"], true);
    let faces = v["faces"].as_array().unwrap();
    assert_eq!(faces.len(), 1, "{v}");
    let b = &faces[0]["box"];
    // The astronaut's face sits in the upper middle of the 512×512 portrait.
    let (x, y, w) = (
        b["x"].as_u64().unwrap(),
        b["y"].as_u64().unwrap(),
        b["w"].as_u64().unwrap(),
    );
    assert!(
        (150..300).contains(&x) && y < 200 && (50..250).contains(&w),
        "{b}"
    );
    assert_distribution(&faces[0]["probabilities"]);
    assert_eq!(v["character"], faces[0]["character"]);

    // A "group photo": the portrait twice side by side gives two faces.
    let one = model::decode(ASTRONAUT).unwrap();
    let mut two = image::RgbImage::new(one.width() * 2, one.height());
    image::imageops::replace(&mut two, &one, 0, 0);
    image::imageops::replace(&mut two, &one, i64::from(one.width()), 0);
    let (status, _, body) = call(&state, raw(png(&two), "image/png")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json(&body)["faces"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn bad_input_gets_a_clear_answer_and_the_server_stays_ready() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        max_body_bytes: 256 << 10,
        request_timeout: Duration::from_millis(500),
        max_decodes: 4,
        max_waiting: 4,
        max_queue_wait: None,
        ..Limits::default()
    };
    let state = ready_state(dir.path(), limits).await;
    let good = flat_image();
    let cases: Vec<(&str, Request<Body>, StatusCode)> = vec![
        (
            "over the size limit",
            raw(vec![0u8; 300 << 10], "image/jpeg"),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            "multipart over the limit",
            multipart("image", &vec![0u8; 300 << 10]),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            "decompression bomb",
            raw(png_bomb(), "image/png"),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "not an image",
            raw(b"%PDF-1.4 definitely not a picture".to_vec(), "image/jpeg"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "truncated",
            raw(good[..good.len() / 2].to_vec(), "image/png"),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "truncated JPEG (the decoder would fill it in)",
            {
                let whole = jpeg(&image::RgbImage::from_fn(200, 150, |x, y| {
                    image::Rgb([(x % 256) as u8, (y % 256) as u8, 7])
                }));
                raw(whole[..whole.len() * 2 / 3].to_vec(), "image/jpeg")
            },
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "over the pixel limit",
            raw(common::png_claiming(8000, 6000), "image/png"),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            "zero bytes",
            raw(Vec::new(), "image/png"),
            StatusCode::BAD_REQUEST,
        ),
        (
            "wrong content type",
            raw(good.clone(), "text/plain"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "multipart without image field",
            multipart("photo", &good),
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (what, req, want) in cases {
        let (status, _, body) = call(&state, req).await;
        assert_eq!(status, want, "{what}: {}", String::from_utf8_lossy(&body));
        assert!(!json(&body)["error"].as_str().unwrap().is_empty(), "{what}");
        assert_eq!(
            call(&state, get("/readyz")).await.0,
            StatusCode::OK,
            "not ready after {what}"
        );
    }

    // A client that never finishes its body is cut off.
    let stalled = futures_stall();
    let req = Request::post("/v1/predict")
        .header(header::CONTENT_TYPE, "image/png")
        .body(stalled)
        .unwrap();
    let (status, _, body) = call(&state, req).await;
    assert_eq!(status, StatusCode::REQUEST_TIMEOUT);
    assert!(
        json(&body)["error"]
            .as_str()
            .unwrap()
            .contains("longer than")
    );
    assert_eq!(call(&state, get("/readyz")).await.0, StatusCode::OK);
    // And the service still answers properly.
    assert_eq!(call(&state, raw(good, "image/png")).await.0, StatusCode::OK);
}

/// A body that sends a few bytes and then nothing, forever.
fn futures_stall() -> Body {
    let mut sent = false;
    Body::from_stream(futures::stream::poll_fn(move |_| {
        if sent {
            std::task::Poll::Pending
        } else {
            sent = true;
            std::task::Poll::Ready(Some(Ok::<_, std::io::Error>(
                axum::body::Bytes::from_static(b"\x89PNG"),
            )))
        }
    }))
}

#[tokio::test]
async fn metrics_and_openapi() {
    let dir = tempfile::tempdir().unwrap();
    let state = ready_state(dir.path(), limits()).await;
    call(&state, raw(flat_image(), "image/png")).await;
    call(&state, raw(Vec::new(), "image/png")).await;
    call(&state, get("/no/such/page")).await;
    let (status, headers, body) = call(&state, get("/metrics")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let text = String::from_utf8(body).unwrap();
    for needle in [
        r#"face2simpson_inference_http_requests_total{route="/v1/predict",status="200"} 1"#,
        r#"face2simpson_inference_http_requests_total{route="/v1/predict",status="400"} 1"#,
        "face2simpson_inference_http_request_duration_seconds_bucket",
        "face2simpson_inference_batch_size_bucket",
        "face2simpson_inference_queue_depth",
        // Admission's view: nothing in flight once answered; no window measured yet.
        "face2simpson_inference_requests_in_flight 0",
        "face2simpson_inference_request_cost_seconds 0.0",
        r#"face2simpson_inference_http_requests_total{route="unmatched",status="404"} 1"#,
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
    let (status, _, body) = call(&state, get("/openapi.json")).await;
    assert_eq!(status, StatusCode::OK);
    let doc = json(&body);
    assert!(doc["paths"]["/v1/predict"]["post"].is_object());
    assert!(doc["components"]["schemas"]["Prediction"].is_object());
    let post = &doc["paths"]["/v1/predict"]["post"];
    for code in ["200", "400", "408", "413", "415", "422", "500", "503"] {
        assert!(post["responses"][code].is_object(), "OpenAPI lacks {code}");
    }
    let form = &post["requestBody"]["content"]["multipart/form-data"]["schema"];
    assert!(form.to_string().contains("UploadForm"), "{form}");
    assert_eq!(
        doc["components"]["schemas"]["UploadForm"]["properties"]["image"]["format"],
        "binary"
    );
    let (status, headers, body) = call(&state, get("/")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(
        headers[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .contains("default-src 'none'")
    );
    let page = String::from_utf8(body).unwrap();
    assert!(
        page.contains("/v1/predict") && !page.contains("https://"),
        "the page must be self-contained"
    );
}

#[tokio::test]
async fn every_error_is_json() {
    let dir = tempfile::tempdir().unwrap();
    let state = ready_state(dir.path(), limits()).await;
    let wrong_method = Request::delete("/v1/predict").body(Body::empty()).unwrap();
    for (req, want) in [
        (get("/nope"), StatusCode::NOT_FOUND),
        (get("/v1/predict"), StatusCode::METHOD_NOT_ALLOWED),
        (wrong_method, StatusCode::METHOD_NOT_ALLOWED),
    ] {
        let (status, headers, body) = call(&state, req).await;
        assert_eq!(status, want);
        assert!(
            headers[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("application/json")
        );
        assert!(!json(&body)["error"].as_str().unwrap().is_empty());
        assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    }
}

#[tokio::test]
async fn predictions_are_never_cached_and_never_sniffed() {
    let dir = tempfile::tempdir().unwrap();
    let state = ready_state(dir.path(), limits()).await;
    let (status, headers, _) = call(&state, raw(flat_image(), "image/png")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CACHE_CONTROL], "no-store");
    assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
}

/// A refusal from admission comes before the body is read: with every place taken (one
/// request held in the model), the next upload is turned away at once with 503, Retry-After
/// and Connection: close, although its body never arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_beyond_the_admission_cap_are_turned_away_before_their_body_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        max_decodes: 1,
        max_waiting: 0,
        request_timeout: Duration::from_secs(5),
        ..Limits::default()
    };
    let (state, script) = common::scripted_state(dir.path(), limits).await;
    script.set_hold(true);
    let holder = {
        let state = state.clone();
        tokio::spawn(async move { call(&state, raw(flat_image(), "image/png")).await.0 })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let start = std::time::Instant::now();
    let stalled = Request::post("/v1/predict")
        .header(header::CONTENT_TYPE, "image/png")
        .body(futures_stall())
        .unwrap();
    let (status, headers, body) = call(&state, stalled).await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert_retry_after_about_a_second(&headers);
    assert_eq!(headers[header::CONNECTION], "close");
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "not turned away at once"
    );
    // The place comes back once the holder is answered.
    script.set_hold(false);
    assert_eq!(holder.await.unwrap(), StatusCode::OK);
    assert_eq!(
        call(&state, raw(flat_image(), "image/png")).await.0,
        StatusCode::OK
    );
}

/// Retry-After is the expected drain time (a second while nothing was measured) plus a little
/// jitter.
fn assert_retry_after_about_a_second(headers: &axum::http::HeaderMap) {
    let secs: u64 = headers[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&secs), "Retry-After {secs}");
}

/// The astronaut's face box, rotated by EXIF orientation 6 the way a phone stores a portrait:
/// the box is reported in upright coordinates, the same as for the upright photo.
#[tokio::test]
async fn exif_rotated_uploads_give_upright_boxes() {
    let dir = tempfile::tempdir().unwrap();
    let state = ready_state(dir.path(), limits()).await;
    let upright = model::decode(ASTRONAUT).unwrap();
    let box_of = |body: &[u8]| {
        let v = json(body);
        let faces = v["faces"].as_array().unwrap().clone();
        assert_eq!(faces.len(), 1, "{v}");
        let b = &faces[0]["box"];
        ["x", "y", "w", "h"].map(|k| b[k].as_i64().unwrap())
    };
    let (_, _, body) = call(&state, raw(jpeg(&upright), "image/jpeg")).await;
    let want = box_of(&body);
    let stored = image::imageops::rotate270(&upright);
    let rotated = with_exif_orientation(&jpeg(&stored), 6);
    let (status, _, body) = call(&state, raw(rotated, "image/jpeg")).await;
    assert_eq!(status, StatusCode::OK);
    let got = box_of(&body);
    for i in 0..4 {
        assert!((got[i] - want[i]).abs() <= 6, "{got:?} vs upright {want:?}");
    }
}

/// A crowd costs bounded work: at most `max_faces` faces are classified, the largest first.
#[tokio::test]
async fn faces_per_image_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let one = model::decode(ASTRONAUT).unwrap();
    let mut four = image::RgbImage::new(one.width() * 4, one.height());
    for i in 0..4 {
        image::imageops::replace(&mut four, &one, i64::from(one.width() * i), 0);
    }
    let uncapped = ready_state(dir.path(), limits()).await;
    let (_, _, body) = call(&uncapped, raw(png(&four), "image/png")).await;
    assert!(
        json(&body)["faces"].as_array().unwrap().len() >= 3,
        "{}",
        json(&body)
    );
    let dir = tempfile::tempdir().unwrap();
    let capped = ready_state_with(dir.path(), limits(), detector(2)).await;
    let (status, _, body) = call(&capped, raw(png(&four), "image/png")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json(&body)["faces"].as_array().unwrap().len(), 2);
}

/// Backpressure: once the service has measured its time per request, a newcomer whose queue
/// would take longer than `max_queue_wait` to drain is turned away at once, before its body is
/// read, although the count limits would still take it. Requests the server then keeps
/// waiting past their deadline get 504, not 408: the wait was the server's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newcomer_beyond_the_queue_wait_budget_is_turned_away_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        max_decodes: 1,
        max_waiting: 8,
        // Any measured queue is too long: everything beyond the floor (2 × max_decodes) is
        // turned away once a window of completions has been measured.
        max_queue_wait: Some(Duration::ZERO),
        request_timeout: Duration::from_secs(2),
        ..Limits::default()
    };
    let (state, script) = common::scripted_state(dir.path(), limits).await;
    // One window of answered requests gives the service its time per request.
    for _ in 0..face2simpson_inference::admission::WINDOW {
        let (status, _, body) = call(&state, raw(flat_image(), "image/png")).await;
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    }
    // The floor: two uploads in flight (held in the model) are always admitted.
    script.set_hold(true);
    let holders: Vec<_> = (0..2)
        .map(|_| {
            let state = state.clone();
            tokio::spawn(async move { call(&state, raw(flat_image(), "image/png")).await.0 })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stalled = Request::post("/v1/predict")
        .header(header::CONTENT_TYPE, "image/png")
        .body(futures_stall())
        .unwrap();
    let (status, headers, body) = call(&state, stalled).await;
    let body = String::from_utf8_lossy(&body);
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("saturated"), "{body}");
    assert_retry_after_about_a_second(&headers);
    for h in holders {
        assert_eq!(h.await.unwrap(), StatusCode::GATEWAY_TIMEOUT);
    }
    script.set_hold(false);
}

/// Below the admission limit nobody is turned away: uploads wait for a decode slot instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_wait_for_a_decode_slot_within_the_admission_limit() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        max_decodes: 1,
        max_waiting: 8,
        ..Limits::default()
    };
    let state = ready_state(dir.path(), limits).await;
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let state = state.clone();
            tokio::spawn(async move {
                let (status, _, body) = call(&state, raw(flat_image(), "image/png")).await;
                (status, String::from_utf8_lossy(&body).into_owned())
            })
        })
        .collect();
    for c in calls {
        let (status, body) = c.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
    }
}

#[tokio::test]
async fn the_model_card_joins_metrics_validation_and_history() {
    let state = AppState::new(limits(), detector(8));
    assert_eq!(
        call(&state, get("/v1/model/card")).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let dir = tempfile::tempdir().unwrap();
    let state = common::ready_state_with_card(dir.path(), limits()).await;
    let (status, _, body) = call(&state, get("/v1/model/card")).await;
    assert_eq!(status, StatusCode::OK);
    let card = json(&body);
    assert_eq!(card["run_id"], "r1");
    assert_eq!(card["trained_at"], "2026-11-29T10:01:00+00:00");
    assert_eq!(card["test_accuracy"], 0.75);
    assert_eq!(card["test_images"], 16);
    assert_eq!(
        card["classes"],
        serde_json::json!(["homer", "marge", "bart", "lisa"])
    );
    assert_eq!(card["per_class_recall"]["lisa"], 0.75);
    assert_eq!(card["confusion_matrix"][3], serde_json::json!([1, 0, 0, 3]));
    // Served accuracy from validation.json beside the run.
    assert_eq!(card["served"]["accuracy"], 0.6875);
    assert_eq!(card["served"]["test_images"], 16);
    assert_eq!(card["served"]["per_class_recall"]["marge"], 0.5);
    assert_eq!(card["served"]["agreement"], 0.9375);
    assert_eq!(card["served"]["p95_ms"], 9.5);
    assert_eq!(card["served"]["passed"], true);
    // The decision that put r1 there, and the last runs from history.json.
    assert_eq!(card["decision"]["kind"], "Promote");
    assert!(
        card["decision"]["summary"]
            .as_str()
            .unwrap()
            .starts_with("Promote: +12.5 pts")
    );
    let history = card["history"].as_array().unwrap();
    let runs: Vec<_> = history
        .iter()
        .map(|h| h["run_id"].as_str().unwrap())
        .collect();
    assert_eq!(runs, ["r0", "rx", "r1", "r2"]);
    let promoted: Vec<_> = history
        .iter()
        .map(|h| h["promoted"].as_bool().unwrap())
        .collect();
    assert_eq!(promoted, [true, false, true, false]);
    let serving: Vec<_> = history
        .iter()
        .map(|h| h["serving"].as_bool().unwrap())
        .collect();
    assert_eq!(serving, [false, false, true, false]);
    assert_eq!(history[0]["served_accuracy"], 0.5625);
    // The served run's served accuracy comes from its validation.
    assert_eq!(history[2]["served_accuracy"], 0.6875);
    assert!(history[1]["served_accuracy"].is_null());
    // No storage URL or key leaks through the card.
    let text = String::from_utf8(body).unwrap();
    assert!(
        !text.contains("file://") && !text.contains("model.onnx"),
        "{text}"
    );

    // In the OpenAPI document.
    let doc = json(&call(&state, get("/openapi.json")).await.2);
    let op = &doc["paths"]["/v1/model/card"]["get"];
    assert!(op["responses"]["200"].is_object(), "{op}");
    assert!(op["responses"]["503"].is_object(), "{op}");
    let schema = &doc["components"]["schemas"]["ModelCard"];
    for field in [
        "run_id",
        "served",
        "confusion_matrix",
        "history",
        "decision",
    ] {
        assert!(
            schema["properties"][field].is_object(),
            "ModelCard lacks {field}"
        );
    }
    assert!(doc["components"]["schemas"]["HistoryPoint"].is_object());
    // /v1/model is unchanged: no card inside.
    let info = json(&call(&state, get("/v1/model")).await.2);
    assert!(info.get("card").is_none(), "{info}");
}

#[tokio::test]
async fn a_model_without_card_files_has_a_bare_card() {
    let dir = tempfile::tempdir().unwrap();
    let state = ready_state(dir.path(), limits()).await;
    let (status, _, body) = call(&state, get("/v1/model/card")).await;
    assert_eq!(status, StatusCode::OK);
    let card = json(&body);
    assert_eq!(card["run_id"], "r1");
    assert!(card["served"].is_null());
    assert!(card["decision"].is_null());
    assert_eq!(card["history"], serde_json::json!([]));
}
