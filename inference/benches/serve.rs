//! Serving throughput and latency with a real load generator (Debian's `wrk`) at concurrency
//! 1, 8 and 32, against the raw batched forward throughput of the same model in-process.
//!
//! The server is the real one (`app`, axum on loopback) with a 224 px model; every request
//! uploads a 256 px JPEG that goes through decode, face detection, preprocessing and the
//! dynamic batcher. Tunables (env): BENCH_SECONDS (per level, default 10).

use std::process::Command;
use std::time::{Duration, Instant};

use face2simpson_inference::batcher::BatchConfig;
use face2simpson_inference::{AppState, Limits, app, load_model};
use model::Classifier;
use tch::{Device, Kind, Tensor};

const IMAGE_SIZE: u32 = 224;
const MAX_BATCH: usize = 16;

#[derive(Debug, Default)]
struct WrkResult {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    non_2xx: u64,
}

fn parse_ms(s: &str) -> f64 {
    let (num, unit) = s.trim().split_at(
        s.trim()
            .find(|c: char| c.is_alphabetic())
            .unwrap_or(s.trim().len()),
    );
    let v: f64 = num.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => v / 1000.0,
        "ms" => v,
        "s" => v * 1000.0,
        "m" => v * 60_000.0,
        _ => f64::NAN,
    }
}

fn parse_wrk(out: &str) -> WrkResult {
    let mut r = WrkResult::default();
    for line in out.lines() {
        let t = line.trim();
        if let Some(v) = t.strip_prefix("Requests/sec:") {
            r.rps = v.trim().parse().unwrap_or(f64::NAN);
        } else if let Some(v) = t.strip_prefix("50.000%").or_else(|| t.strip_prefix("50%")) {
            r.p50_ms = parse_ms(v);
        } else if let Some(v) = t.strip_prefix("99.000%").or_else(|| t.strip_prefix("99%")) {
            r.p99_ms = parse_ms(v);
        } else if let Some(v) = t.strip_prefix("Non-2xx or 3xx responses:") {
            r.non_2xx = v.trim().parse().unwrap_or(0);
        }
    }
    r
}

fn main() -> anyhow::Result<()> {
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    if Command::new("wrk").arg("--version").output().is_err() {
        anyhow::bail!("wrk is not installed: `make bench-serve` installs Debian's wrk");
    }
    let rt = tokio::runtime::Runtime::new()?;
    let dir = tempfile::tempdir()?;
    let store = format!("file://{}", dir.path().display());
    let storage = artifacts::Storage::open(&store)?;
    tch::manual_seed(0);
    let net = Classifier::new(Device::Cpu, 0.0);
    rt.block_on(storage.put("runs/bench/model.safetensors", net.to_safetensors()?))?;

    // The upload: a synthetic 256 px head as JPEG.
    let upload = dir.path().join("upload.jpg");
    let img = face2simpson_trainer::datagen::draw(1, 256, 3);
    std::fs::write(
        &upload,
        face2simpson_trainer::datagen::encode(&img, image::ImageFormat::Jpeg),
    )?;
    let script = dir.path().join("post.lua");
    std::fs::write(
        &script,
        format!(
            "local f = io.open(\"{}\", \"rb\")\nwrk.method = \"POST\"\nwrk.body = f:read(\"*all\")\nf:close()\nwrk.headers[\"Content-Type\"] = \"image/jpeg\"\n",
            upload.display()
        ),
    )?;

    let addr = rt.block_on(async {
        let (net, mut info) = load_model(
            &format!("{store}/runs/bench/model.safetensors"),
            Device::Cpu,
            IMAGE_SIZE,
        )
        .await?;
        info.image_size = IMAGE_SIZE;
        let state = AppState::new(Limits::default());
        state.install(
            net,
            info,
            BatchConfig {
                max_batch: MAX_BATCH,
                max_wait: Duration::from_millis(5),
                queue_capacity: 256,
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move { axum::serve(listener, app(state)).await });
        anyhow::Ok(addr)
    })?;

    // In-process reference: batched forward passes of the same network, inputs already tensors.
    let reference = Classifier::new(Device::Cpu, 0.0);
    let x = Tensor::randn(
        [
            MAX_BATCH as i64,
            3,
            i64::from(IMAGE_SIZE),
            i64::from(IMAGE_SIZE),
        ],
        (Kind::Float, Device::Cpu),
    );
    let _ = reference.predict(&x);
    let t = Instant::now();
    let mut n = 0;
    while t.elapsed() < Duration::from_secs(seconds) {
        let _ = reference.predict(&x);
        n += MAX_BATCH;
    }
    let raw_ips = n as f64 / t.elapsed().as_secs_f64();

    println!(
        "serving benchmark: {IMAGE_SIZE} px model, max batch {MAX_BATCH}, {seconds} s per level, 256 px JPEG uploads"
    );
    println!("  in-process batched forward (batch {MAX_BATCH}): {raw_ips:8.2} images/s");
    println!(
        "  {:>11} {:>10} {:>9} {:>9} {:>8} {:>7}",
        "concurrency", "req/s", "p50 ms", "p99 ms", "non-2xx", "ratio"
    );
    for c in [1, 8, 32] {
        let out = Command::new("wrk")
            .args([
                "-t",
                &c.min(2).to_string(),
                "-c",
                &c.to_string(),
                "-d",
                &format!("{seconds}s"),
                "--latency",
                "-s",
            ])
            .arg(&script)
            .arg(format!("http://{addr}/v1/predict"))
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let r = parse_wrk(&text);
        println!(
            "  {c:>11} {:>10.2} {:>9.1} {:>9.1} {:>8} {:>7.3}",
            r.rps,
            r.p50_ms,
            r.p99_ms,
            r.non_2xx,
            r.rps / raw_ips
        );
    }
    println!(
        "  ratio = served requests/s ÷ in-process images/s (target >= 0.85 at concurrency 32)"
    );
    // Stop the server so the model thread drops its tensors, then leave without unwinding the
    // rest: libtorch's static destructors racing the model thread crashed the process on exit.
    rt.shutdown_timeout(Duration::from_secs(5));
    std::thread::sleep(Duration::from_secs(2));
    std::process::exit(0)
}
