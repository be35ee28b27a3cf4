// The trainer's build script: libtorch's RPATH (shared with every crate that links libtorch)
// and the build stamp metrics.json records, so a run can be traced to the code that made it.

#[path = "../build/libtorch_rpath.rs"]
mod libtorch_rpath;

use std::process::Command;

/// Set by builds without a `.git` directory (the Dockerfile's build stage gets it as a build
/// argument): the revision to stamp when `git rev-parse` cannot tell.
const REVISION_ENV: &str = "FACE2SIMPSON_GIT_REVISION";

fn main() {
    libtorch_rpath::main();
    let revision = git_revision()
        .or_else(|| std::env::var(REVISION_ENV).ok().and_then(|r| clean(&r)))
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=FACE2SIMPSON_TRAINER_REVISION={revision}");
    println!("cargo:rerun-if-env-changed={REVISION_ENV}");
    let env = |k: &str| std::env::var(k).unwrap_or_else(|_| "unknown".to_owned());
    println!(
        "cargo:rustc-env=FACE2SIMPSON_TRAINER_PROFILE={}",
        env("PROFILE")
    );
    println!(
        "cargo:rustc-env=FACE2SIMPSON_TRAINER_TARGET={}",
        env("TARGET")
    );
    let rustc = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned()))
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=FACE2SIMPSON_TRAINER_RUSTC={rustc}");
}

/// `git rev-parse HEAD` of the checkout, re-run when HEAD moves (a commit, a checkout).
/// Uncommitted changes are not flagged: telling them apart would mean re-running this script,
/// and so recompiling the trainer, on every edit anywhere in the tree.
fn git_revision() -> Option<String> {
    let git = |args: &[&str]| {
        let out = Command::new("git").args(args).output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let revision = clean(&git(&["rev-parse", "HEAD"])?)?;
    // HEAD names the branch; the branch's ref (loose or packed) names the commit.
    for path in [
        git(&["rev-parse", "--git-path", "HEAD"]),
        git(&["rev-parse", "--symbolic-full-name", "HEAD"])
            .and_then(|r| git(&["rev-parse", "--git-path", &r])),
        git(&["rev-parse", "--git-path", "packed-refs"]),
    ]
    .into_iter()
    .flatten()
    {
        println!("cargo:rerun-if-changed={path}");
    }
    Some(revision)
}

/// Keeps a revision to the characters semver build metadata allows.
fn clean(revision: &str) -> Option<String> {
    let r = revision.trim();
    let ok = !r.is_empty()
        && r.len() <= 64
        && r.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    ok.then(|| r.to_owned())
}
