//! Where the harness finds what it runs and where it leaves logs.

use std::path::{Path, PathBuf};

/// The workspace root (the e2e crate sits one level below it).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| {
            if p.is_absolute() {
                p
            } else {
                workspace().join(p)
            }
        })
        .unwrap_or_else(|| workspace().join("target"))
}

/// `.deps`, or `$FACE2SIMPSON_DEPS`, as `make setup` and `make setup-e2e` use it.
pub fn deps() -> PathBuf {
    std::env::var_os("FACE2SIMPSON_DEPS")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join(".deps"))
}

/// A control-plane binary built by `scripts/setup-e2e.sh`.
pub fn kube_bin(name: &str) -> anyhow::Result<PathBuf> {
    let path = deps().join("e2e/bin").join(name);
    anyhow::ensure!(
        path.is_file(),
        "{} is missing: run `make setup-e2e` (scripts/setup-e2e.sh builds etcd, kube-apiserver, kube-controller-manager, kubectl and helm)",
        path.display()
    );
    Ok(path)
}

/// One of our own binaries, as `cargo build --bins` leaves it (debug profile unless
/// `FACE2SIMPSON_E2E_PROFILE=release`).
pub fn our_bin(name: &str) -> anyhow::Result<PathBuf> {
    let profile = std::env::var("FACE2SIMPSON_E2E_PROFILE").unwrap_or_else(|_| "debug".into());
    let path = target_dir().join(profile).join(name);
    anyhow::ensure!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace --bins` first (`make e2e` does)",
        path.display()
    );
    Ok(path)
}

/// `target/e2e/<test>/`, emptied, for one test's logs and state.
pub fn test_dir(test: &str) -> anyhow::Result<PathBuf> {
    let dir = target_dir().join("e2e").join(test);
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// A TCP port nobody listens on right now.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// An HTTP client for the loopback endpoints of the harness: never through a proxy a CI
/// environment may configure, and never waiting forever.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .unwrap_or_default()
}
