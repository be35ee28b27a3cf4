//! Bounded by bytes and by pod, and a readiness that tells the truth: slow senders cannot
//! starve the pod, oversized uploads and images are refused before they cost anything, the
//! defaults follow the pod's cgroup, and a broken detector or model keeps the pod unready.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Request, StatusCode, header};
use common::{limits, ort_library, png, ready_state, scripted_state};
use face2simpson_inference::sizing::{PodResources, Source};
use face2simpson_inference::{AppState, Limits, app, load_detector};
use http_body_util::BodyExt;
use tower::ServiceExt;

async fn call(state: &AppState, req: Request<Body>) -> (StatusCode, HeaderMap, String) {
    let resp = app(state.clone()).oneshot(req).await.unwrap();
    let (status, headers) = (resp.status(), resp.headers().clone());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

fn post(body: Body) -> Request<Body> {
    Request::post("/v1/predict")
        .header(header::CONTENT_TYPE, "image/png")
        .body(body)
        .unwrap()
}

fn photo() -> Vec<u8> {
    png(&image::RgbImage::from_fn(120, 90, |x, y| {
        image::Rgb([(x * 2) as u8, (y * 2) as u8, 90])
    }))
}

/// A body sending one byte a second, for ever.
fn trickle() -> Body {
    Body::from_stream(futures::stream::unfold((), |()| async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        Some((Ok::<_, std::io::Error>(Bytes::from_static(b"x")), ()))
    }))
}

/// A body that never sends anything.
fn stall() -> Body {
    Body::from_stream(futures::stream::pending::<Result<Bytes, std::io::Error>>())
}

async fn timed(state: &AppState) -> (StatusCode, Duration) {
    let start = Instant::now();
    let (status, _, body) = call(state, post(Body::from(photo()))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    (status, start.elapsed())
}

/// With one decode slot, four clients sending their bodies at a byte a second used to hold the
/// slot (and every prediction) for the whole request timeout. Bodies are now read without a
/// slot or an admission ticket: twenty normal requests are answered as fast as without them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_trickling_uploads_do_not_delay_twenty_normal_requests() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        max_decodes: 1,
        body_timeout: Duration::from_secs(60),
        request_timeout: Duration::from_secs(60),
        max_queue_wait: Limits::default().max_queue_wait,
        ..limits()
    };
    let state = ready_state(dir.path(), limits).await;
    let mut usual = Duration::ZERO;
    for _ in 0..5 {
        usual = usual.max(timed(&state).await.1);
    }
    let tricklers: Vec<_> = (0..4)
        .map(|_| {
            let state = state.clone();
            tokio::spawn(async move { call(&state, post(trickle())).await.0 })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let bound = usual * 3 + Duration::from_millis(300);
    for i in 0..20 {
        let (_, took) = timed(&state).await;
        assert!(took < bound, "request {i} took {took:?}, usually {usual:?}");
    }
    for t in &tricklers {
        assert!(!t.is_finished(), "a trickler was answered");
    }
    tricklers.iter().for_each(|t| t.abort());
}

/// A Content-Length over the limit is answered 413 from the header, before admission and
/// without reading a byte of the body, and the connection is closed after the answer.
#[tokio::test]
async fn content_length_over_the_limit_is_refused_without_reading_the_body() {
    let dir = tempfile::tempdir().unwrap();
    let state = ready_state(dir.path(), limits()).await;
    let req = Request::post("/v1/predict")
        .header(header::CONTENT_TYPE, "image/jpeg")
        .header(header::CONTENT_LENGTH, limits().max_body_bytes + 1)
        .body(stall())
        .unwrap();
    let start = Instant::now();
    let (status, headers, body) = call(&state, req).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert!(body.contains("Content-Length"), "{body}");
    assert_eq!(headers[header::CONNECTION], "close");
    assert!(start.elapsed() < Duration::from_secs(1));
}

/// A body that stops arriving gets 408 at the body deadline, long before the request's.
#[tokio::test]
async fn a_stalled_body_gets_408() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        body_timeout: Duration::from_millis(300),
        min_body_rate: 0,
        request_timeout: Duration::from_secs(20),
        ..limits()
    };
    let state = ready_state(dir.path(), limits).await;
    let start = Instant::now();
    let (status, headers, body) = call(&state, post(stall())).await;
    assert_eq!(status, StatusCode::REQUEST_TIMEOUT, "{body}");
    assert!(body.contains("stalled"), "{body}");
    assert_eq!(headers[header::CONNECTION], "close");
    assert!(start.elapsed() < Duration::from_secs(3));
    assert_eq!(timed(&state).await.0, StatusCode::OK);
}

/// The pixel budget counts an image at its real decoded cost: a 16-bit PNG takes twice the
/// bytes of the same picture in 8 bits, and over the budget it is refused from its header.
#[tokio::test]
async fn a_sixteen_bit_png_over_the_pixel_budget_is_refused_before_decoding() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        pixel_budget_bytes: 2_000_000,
        ..limits()
    };
    let state = ready_state(dir.path(), limits).await;
    let wide = image::ImageBuffer::<image::Rgb<u16>, Vec<u16>>::from_fn(512, 512, |x, y| {
        image::Rgb([(x * 128) as u16, (y * 128) as u16, 9000])
    });
    let mut sixteen = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb16(wide.clone())
        .write_to(&mut sixteen, image::ImageFormat::Png)
        .unwrap();
    let eight = png(&image::DynamicImage::ImageRgb16(wide).into_rgb8());
    // 512 × 512 × (3 + 3) bytes fit in 2 MB ...
    let (status, _, body) = call(&state, post(Body::from(eight))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // ... 512 × 512 × (6 + 3) do not.
    let (status, _, body) = call(&state, post(Body::from(sixteen.into_inner()))).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert!(body.contains("pixel budget"), "{body}");
}

/// Half a CPU and 512 MiB in the cgroup: one decode slot, one ORT thread, and budgets that fit
/// the memory beside the process itself, whatever the machine and the environment say.
#[test]
fn the_defaults_are_sized_by_the_pod_cgroup() {
    let cgroup = tempfile::tempdir().unwrap();
    std::fs::write(cgroup.path().join("cpu.max"), "50000 100000\n").unwrap();
    std::fs::write(cgroup.path().join("memory.max"), "536870912\n").unwrap();
    let pod = PodResources::detect(cgroup.path(), Some(8000), Some(64 << 30));
    assert_eq!(pod.cpus_from, Source::Cgroup);
    assert_eq!(pod.memory_from, Source::Cgroup);
    let sized = pod.sizing();
    assert_eq!((sized.decodes, sized.ort_threads), (1, 1));
    assert!(
        sized.upload_budget + sized.pixel_budget + sized.baseline <= 512 << 20,
        "{sized:?}"
    );
    assert!(sized.upload_budget >= 10 << 20, "a maximal upload must fit");

    // Without a cgroup limit, the downward API's figures.
    let unlimited = tempfile::tempdir().unwrap();
    std::fs::write(unlimited.path().join("cpu.max"), "max 100000\n").unwrap();
    std::fs::write(unlimited.path().join("memory.max"), "max\n").unwrap();
    let pod = PodResources::detect(unlimited.path(), Some(250), Some(1 << 30));
    assert_eq!((pod.cpus_from, pod.memory_from), (Source::Env, Source::Env));
    assert_eq!(pod.sizing().decodes, 1);
}

/// A phone photo: 12 MP (4032×3024), a gradient with sensor-like noise, so that it compresses
/// like a photo (a few MB), not like a flat picture.
fn twelve_megapixels() -> Vec<u8> {
    let mut seed = 7u32;
    let img = image::RgbImage::from_fn(4032, 3024, |x, y| {
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let n = (seed >> 16) % 24;
        image::Rgb([
            (x / 16) as u8 ^ n as u8,
            (y / 12) as u8 ^ n as u8,
            ((x + y) / 28) as u8,
        ])
    });
    common::jpeg(&img)
}

/// Forty clients upload a 12 MP photo each at the same moment to a pod with a 1 GiB memory
/// limit (told through MEMORY_LIMIT, as the operator does; the cgroup sets none). The server
/// runs as its own process, and its peak resident memory (VmHWM: model loading included) stays
/// under what its sizing allows, the baseline (process and sessions) + the upload budget + the
/// pixel budget, itself under the limit. Then once more with a decode slot per upload
/// (MAX_DECODES=40: forty decodes, forty detector sessions and their working memory), where
/// only the byte and pixel budgets stand between the burst and the limit: the process stays
/// under the limit, so the pod is not killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_forty_12_mp_photos_stays_within_a_1_gib_pod() {
    const LIMIT: u64 = 1 << 30;
    let dir = tempfile::tempdir().unwrap();
    let uri = common::model_uri(dir.path()).await;
    let cgroup = tempfile::tempdir().unwrap();
    std::fs::write(cgroup.path().join("cpu.max"), "max 100000\n").unwrap();
    std::fs::write(cgroup.path().join("memory.max"), "max\n").unwrap();
    let sized = PodResources::detect(cgroup.path(), None, Some(LIMIT)).sizing();
    let bound = sized.baseline + sized.upload_budget + sized.pixel_budget;
    assert!(bound < LIMIT, "{sized:?}");
    let photo = std::sync::Arc::new(twelve_megapixels());
    assert!(photo.len() > 1 << 20, "{} bytes", photo.len());
    eprintln!("a 4032x3024 JPEG of {} bytes", photo.len());

    for decodes in [None, Some(40)] {
        let mut env = vec![
            ("CGROUP_ROOT", cgroup.path().display().to_string()),
            ("MEMORY_LIMIT", LIMIT.to_string()),
        ];
        if let Some(n) = decodes {
            env.push(("MAX_DECODES", n.to_string()));
        }
        let server = std::sync::Arc::new(common::Process::start(&uri, &env).await);
        let at_rest = server.peak_rss();
        let start = Instant::now();
        let burst: Vec<_> = (0..40)
            .map(|_| {
                let (server, photo) = (server.clone(), photo.clone());
                tokio::spawn(async move { server.predict(&photo).await })
            })
            .collect();
        let mut statuses = std::collections::BTreeMap::new();
        for answer in burst {
            let (status, body) = answer.await.unwrap();
            assert!(status == 200 || status == 503, "{status} {body}");
            *statuses.entry(status).or_insert(0) += 1;
        }
        let peak = server.peak_rss();
        eprintln!(
            "MAX_DECODES={decodes:?}: {statuses:?} in {:.1} s; peak RSS {} MiB (at rest {} MiB), bound {} MiB, limit {} MiB",
            start.elapsed().as_secs_f64(),
            peak >> 20,
            at_rest >> 20,
            bound >> 20,
            LIMIT >> 20
        );
        assert!(
            statuses.get(&200).copied().unwrap_or(0) >= 20,
            "{statuses:?}"
        );
        let bound = if decodes.is_some() { LIMIT } else { bound };
        assert!(peak < bound, "peak RSS {peak} over the bound {bound}");
    }
}

/// The classifier's model.onnx given as FACE_DETECTOR: refused by the warm-up pass with a
/// clear reason, and the server exits non-zero before it listens, so the pod never turns
/// ready and its log says why.
#[tokio::test]
async fn a_wrong_detector_file_keeps_the_pod_unready_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let uri = common::model_uri(dir.path()).await;
    let wrong = dir.path().join("runs/r1/model.onnx");
    let err = load_detector(ort_library(), &wrong, 1, 8)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a BlazeFace model"), "{err}");

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_face2simpson-inference"))
        .env("ORT_DYLIB_PATH", ort_library())
        .env("FACE_DETECTOR", &wrong)
        .env("MODEL_URI", &uri)
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .output()
        .unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{log}");
    assert!(log.contains("cannot load the face detector"), "{log}");
    assert!(log.contains("not a BlazeFace model"), "{log}");
}

/// A model whose every pass fails turns readiness red after a few requests (its workers are
/// alive, so liveness stays green), and one good pass, found by /readyz itself, turns it back.
#[tokio::test]
async fn a_model_that_fails_every_pass_turns_readiness_red() {
    let dir = tempfile::tempdir().unwrap();
    let (state, script) = scripted_state(dir.path(), limits()).await;
    let readyz = || Request::get("/readyz").body(Body::empty()).unwrap();
    assert_eq!(call(&state, readyz()).await.0, StatusCode::OK);
    script.set_fail(true);
    for _ in 0..5 {
        let (status, _, body) = call(&state, post(Body::from(photo()))).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    }
    let (status, _, body) = call(&state, readyz()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("the model is broken"), "{body}");
    let healthz = Request::get("/healthz").body(Body::empty()).unwrap();
    assert_eq!(call(&state, healthz).await.0, StatusCode::OK);

    script.set_fail(false);
    assert_eq!(call(&state, readyz()).await.0, StatusCode::OK);
    assert_eq!(timed(&state).await.0, StatusCode::OK);
}

/// Over a real socket: the 413 for an oversized Content-Length arrives while the client has
/// sent only its headers, and the server then closes the connection (hyper honours the
/// answer's `Connection: close`), so the client is not left pushing a body nobody reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_refusal_closes_the_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dir = tempfile::tempdir().unwrap();
    let state = ready_state(dir.path(), limits()).await;
    let served = common::Served::start(state).await;
    let mut client = tokio::net::TcpStream::connect(served.addr).await.unwrap();
    let head = format!(
        "POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n",
        limits().max_body_bytes + 1
    );
    client.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut answer))
        .await
        .expect("the connection was left open")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    served.stop().await;
}
