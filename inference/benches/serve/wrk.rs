//! wrk, Debian's load generator, driven by a Lua script that counts only 2xx answers and
//! honours Retry-After (see [`LUA`]).

use std::path::Path;
use std::process::Command;

/// One load level, as the Lua script's `done` reports it: 2xx answers per second and their
/// latency percentiles, and how many answers were not 2xx.
#[derive(Debug, Clone, Copy)]
pub struct WrkResult {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub non_2xx: u64,
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
pub const LUA: &str = r#"
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

pub fn run(script: &Path, url: &str, c: usize, seconds: u64) -> anyhow::Result<WrkResult> {
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

/// Writes the load script for one upload next to it: wrk sends that file's bytes as the body.
pub fn script_for(upload: &Path) -> anyhow::Result<std::path::PathBuf> {
    let script = upload.with_extension("lua");
    std::fs::write(
        &script,
        format!("local UPLOAD = {:?}\n{LUA}", upload.display().to_string()),
    )?;
    Ok(script)
}

/// `make bench-serve` installs Debian's wrk; a plain `cargo bench` needs it too.
pub fn check_installed() -> anyhow::Result<()> {
    if Command::new("wrk").arg("--version").output().is_err() {
        anyhow::bail!("wrk is not installed: `make bench-serve` installs Debian's wrk");
    }
    Ok(())
}
