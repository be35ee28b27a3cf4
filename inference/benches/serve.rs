//! `make bench-serve`: the service against its peer, side by side, on the same machine, model
//! and upload, with a real load generator (Debian's `wrk`) at concurrency 1, 8 and 32.
//!
//! * The service: the real server (`serve` + `app`) on loopback with a 224 px MobileNetV2 ONNX
//!   model (seeded random weights: cost does not depend on their values), BlazeFace, batching.
//! * The peer: `bench/peer.py`, FastAPI + OpenCV Haar cascade + ONNX Runtime serving the same
//!   model.onnx, from the virtual environment `scripts/setup-bench.sh` makes.
//! * Before that, the batching table: per-image model cost at batch 1, 2, 4, 8 with 1 and 2
//!   intra-op threads, the measurement behind the serving defaults.
//!
//! Every request uploads the same 256 px JPEG portrait (one face). The clients behave like real
//! ones: after a 503 a connection waits as long as Retry-After says before it sends again, and
//! the latencies reported are those of the 2xx answers (timed in wrk's Lua, one connection per
//! wrk thread), so turning requests away at once cannot flatter the percentiles; the non-2xx
//! answers are counted beside them.
//!
//! Tunables (env): BENCH_SECONDS (per level, default 10), BENCH_WORKERS / BENCH_THREADS /
//! BENCH_MAX_BATCH / BENCH_MAX_WAITING / BENCH_MAX_QUEUE_WAIT_MS (the service's configuration,
//! default 1 / all cores / 8 / 64 / the service's default; 0 turns the queue-wait limit off),
//! BENCH_PEER_PYTHON
//! (default .deps/bench-venv/bin/python; set it empty to skip the peer).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use face2simpson_inference::serve::{ServeConfig, serve};
use face2simpson_inference::{
    AppState, BatchConfig, Forward, Limits, RuntimeConfig, app, load_detector, load_model,
};

const IMAGE_SIZE: u32 = 224;
const PORTRAIT: &[u8] = include_bytes!("../tests/fixtures/astronaut.png");

/// One load level, as the Lua script's `done` reports it: 2xx answers per second and their
/// latency percentiles, and how many answers were not 2xx.
#[derive(Debug, Clone, Copy)]
struct WrkResult {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    non_2xx: u64,
}

impl Default for WrkResult {
    fn default() -> Self {
        Self {
            rps: f64::NAN,
            p50_ms: f64::NAN,
            p99_ms: f64::NAN,
            non_2xx: 0,
        }
    }
}

/// The load script. wrk runs one Lua state per thread; with one connection per thread,
/// `request` and `response` alternate, so each answer is timed here (LuaJIT's FFI gives the
/// monotonic clock) and only 2xx answers enter the percentiles. After a 503 the connection
/// honours Retry-After. `done` merges the threads and prints one `F2S` line.
const LUA: &str = r#"
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } f2s_timespec;
int clock_gettime(int clk_id, f2s_timespec *tp);
]]
local ts = ffi.new("f2s_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

local f = io.open(UPLOAD, "rb")
wrk.method = "POST"
wrk.body = f:read("*all")
f:close()
wrk.headers["Content-Type"] = "image/jpeg"

local threads = {}
function setup(thread) table.insert(threads, thread) end

local started, backoff = 0, 0
ok_ms = {}
non2xx = 0
function delay() local d = backoff; backoff = 0; return d end
function request() started = now_ms(); return wrk.format() end
function response(status, headers, body)
  if status >= 200 and status < 300 then
    ok_ms[#ok_ms + 1] = now_ms() - started
  else
    non2xx = non2xx + 1
    if status == 503 then
      local after = headers["Retry-After"] or headers["retry-after"]
      backoff = (tonumber(after) or 1) * 1000
    end
  end
end
function done(summary, latency, requests)
  local all, bad = {}, 0
  for _, t in ipairs(threads) do
    for _, v in ipairs(t:get("ok_ms")) do all[#all + 1] = v end
    bad = bad + t:get("non2xx")
  end
  table.sort(all)
  local function pct(p)
    if #all == 0 then return 0 / 0 end
    return all[math.max(1, math.ceil(#all * p))]
  end
  io.write(string.format("F2S ok=%d non2xx=%d seconds=%.3f p50_ms=%.3f p99_ms=%.3f\n",
    #all, bad, summary.duration / 1e6, pct(0.5), pct(0.99)))
end
"#;

/// Reads the `F2S key=value …` line the Lua script prints.
fn parse_wrk(out: &str) -> WrkResult {
    let mut r = WrkResult::default();
    let Some(line) = out.lines().find_map(|l| l.trim().strip_prefix("F2S ")) else {
        return r;
    };
    let field = |key: &str| -> f64 {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN)
    };
    r.rps = field("ok") / field("seconds");
    r.p50_ms = field("p50_ms");
    r.p99_ms = field("p99_ms");
    r.non_2xx = field("non2xx") as u64;
    r
}

fn wrk(script: &Path, url: &str, c: usize, seconds: u64) -> anyhow::Result<WrkResult> {
    let out = Command::new("wrk")
        // One connection per thread: the Lua script times each answer (see LUA).
        .args(["-t", &c.to_string(), "-c", &c.to_string()])
        .args(["-d", &format!("{seconds}s"), "--latency", "-s"])
        .arg(script)
        .arg(url)
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let r = parse_wrk(&stdout);
    if r.rps.is_nan() {
        anyhow::bail!(
            "wrk printed no F2S line: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(r)
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Per-image model cost at each batch size and thread count.
fn batching_table(onnx: &[u8], library: &Path) -> anyhow::Result<()> {
    let env = face2simpson_inference::runtime::environment(library)?;
    let size = IMAGE_SIZE as usize;
    println!("batching: ms per image, {IMAGE_SIZE} px MobileNetV2 on ONNX Runtime");
    println!(
        "  {:>8} {:>9} {:>9} {:>9} {:>9}",
        "threads", "batch 1", "batch 2", "batch 4", "batch 8"
    );
    for threads in [1, 2] {
        let session = face2simpson_inference::runtime::session(env, onnx, threads)?;
        let mut model = face2simpson_inference::batcher::OnnxClassifier::new(session);
        let mut row = Vec::new();
        for batch in [1usize, 2, 4, 8] {
            let x = vec![0.1f32; batch * 3 * size * size];
            model.forward(&x, batch, size).map_err(anyhow::Error::msg)?;
            let start = Instant::now();
            let mut images = 0;
            while start.elapsed() < Duration::from_millis(1500) || images < 8 {
                model.forward(&x, batch, size).map_err(anyhow::Error::msg)?;
                images += batch;
            }
            row.push(start.elapsed().as_secs_f64() * 1e3 / images as f64);
        }
        println!(
            "  {threads:>8} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
            row[0], row[1], row[2], row[3]
        );
    }
    Ok(())
}

struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_peer(python: &Path, model: &Path, port: u16) -> anyhow::Result<Peer> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/peer.py");
    let child = Command::new(python)
        .arg(script)
        .args(["--model"])
        .arg(model)
        .args([
            "--port",
            &port.to_string(),
            "--image-size",
            &IMAGE_SIZE.to_string(),
        ])
        .stdout(Stdio::null())
        .spawn()?;
    let peer = Peer(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(peer);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    anyhow::bail!("the peer did not start listening on port {port}")
}

fn main() -> anyhow::Result<()> {
    let seconds: u64 = env_or("BENCH_SECONDS", 10);
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let workers: usize = env_or("BENCH_WORKERS", 1);
    let threads: usize = env_or("BENCH_THREADS", cores);
    let max_batch: usize = env_or("BENCH_MAX_BATCH", 8);
    let max_queue_wait_ms: u64 = env_or(
        "BENCH_MAX_QUEUE_WAIT_MS",
        face2simpson_inference::DEFAULT_MAX_QUEUE_WAIT_MS,
    );
    let library = PathBuf::from(env!("ORT_DYLIB_PATH"));
    let python = std::env::var("BENCH_PEER_PYTHON").unwrap_or_else(|_| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../.deps/bench-venv/bin/python"
        )
        .to_owned()
    });
    if Command::new("wrk").arg("--version").output().is_err() {
        anyhow::bail!("wrk is not installed: `make bench-serve` installs Debian's wrk");
    }

    let dir = tempfile::tempdir()?;
    let onnx = model::onnx::export(&model::onnx::Weights::random(0, 4), IMAGE_SIZE)?;
    let onnx_path = dir.path().join("runs/bench/model.onnx");
    std::fs::create_dir_all(onnx_path.parent().unwrap_or(dir.path()))?;
    std::fs::write(&onnx_path, &onnx)?;
    batching_table(&onnx, &library)?;

    // The upload: the portrait at 256 px as JPEG.
    let img = image::load_from_memory(PORTRAIT)?.resize_exact(
        256,
        256,
        image::imageops::FilterType::Triangle,
    );
    let upload = dir.path().join("upload.jpg");
    img.to_rgb8()
        .save_with_format(&upload, image::ImageFormat::Jpeg)?;
    let script = dir.path().join("post.lua");
    std::fs::write(
        &script,
        format!("local UPLOAD = {:?}\n{LUA}", upload.display().to_string()),
    )?;

    let rt = tokio::runtime::Runtime::new()?;
    let addr = rt.block_on(async {
        let runtime = RuntimeConfig {
            library: library.clone(),
            workers,
            threads,
        };
        let uri = format!(
            "file://{}/runs/bench/model.safetensors",
            dir.path().display()
        );
        let (models, info) = load_model(&uri, IMAGE_SIZE, &runtime).await?;
        let detector = load_detector(
            &library,
            Path::new(env!("FACE2SIMPSON_BLAZEFACE")),
            cores,
            8,
        )?;
        let limits = Limits {
            max_decodes: cores,
            max_waiting: env_or("BENCH_MAX_WAITING", 64),
            max_queue_wait: (max_queue_wait_ms > 0)
                .then(|| Duration::from_millis(max_queue_wait_ms)),
            ..Limits::default()
        };
        let state = AppState::new(limits, Arc::new(detector));
        let batch = BatchConfig {
            max_batch,
            max_wait: Duration::from_millis(2),
            queue_capacity: 64,
        };
        state.install(models, info, batch)?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(serve(
            listener,
            app(state.clone()),
            state,
            ServeConfig::default(),
            std::future::pending(),
        ));
        anyhow::Ok(addr)
    })?;

    let levels = [1usize, 8, 32];
    let mut ours = Vec::new();
    for c in levels {
        ours.push(wrk(
            &script,
            &format!("http://{addr}/v1/predict"),
            c,
            seconds,
        )?);
    }
    let mut peer = Vec::new();
    if !python.is_empty() && Path::new(&python).exists() {
        let port = 18_090;
        let _peer = start_peer(Path::new(&python), &onnx_path, port)?;
        for c in levels {
            peer.push(wrk(
                &script,
                &format!("http://127.0.0.1:{port}/v1/predict"),
                c,
                seconds,
            )?);
        }
    } else {
        println!("(peer skipped: no Python at {python}; `make bench-serve` creates it)");
    }

    println!(
        "\nserving: {IMAGE_SIZE} px model, 256 px JPEG portrait, {seconds} s per level, {cores} cores; service: {workers} worker(s) x {threads} thread(s), max batch {max_batch}, max queue wait {max_queue_wait_ms} ms"
    );
    println!("  req/s and percentiles are of 2xx answers; clients honour Retry-After after a 503");
    println!(
        "  {:>3} | {:>28} | {:>31} | {:>7}   non-2xx ours / peer",
        "c", "face2simpson req/s p50 p99", "FastAPI+Haar+ORT req/s p50 p99", "ratio"
    );
    for (i, c) in levels.iter().enumerate() {
        let o = ours[i];
        let line = format!(
            "  {c:>3} | {:>8.1} {:>8.1} {:>8.1} ms",
            o.rps, o.p50_ms, o.p99_ms
        );
        match peer.get(i) {
            Some(p) => println!(
                "{line} | {:>8.1} {:>8.1} {:>8.1} ms | {:>6.2}x   {} / {}",
                p.rps,
                p.p50_ms,
                p.p99_ms,
                o.rps / p.rps,
                o.non_2xx,
                p.non_2xx
            ),
            None => println!("{line}   non-2xx {}", o.non_2xx),
        }
    }
    if let (Some(c8), Some(c32)) = (ours.get(1), ours.get(2)) {
        println!(
            "  p99 at c=32 / p50 at c=8 = {:.2} (target <= 4: backpressure, not collapse); non-2xx at c=1, 8, 32: {} / {} / {} (target 0 at c=1 and c=8)",
            c32.p99_ms / c8.p50_ms,
            ours[0].non_2xx,
            c8.non_2xx,
            c32.non_2xx
        );
    }
    rt.shutdown_timeout(Duration::from_secs(2));
    Ok(())
}
