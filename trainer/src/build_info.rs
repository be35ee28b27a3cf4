//! What this binary was built from, stamped by `build.rs` and recorded in metrics.json.

use artifacts::TrainerBuild;

/// The full git revision, or `unknown` for a build that had neither `.git` nor
/// `FACE2SIMPSON_GIT_REVISION`.
pub const REVISION: &str = env!("FACE2SIMPSON_TRAINER_REVISION");

/// `<crate version>+<first 12 hex digits of the revision>` (semver build metadata).
pub fn version() -> String {
    let short: String = REVISION.chars().take(12).collect();
    format!("{}+{short}", env!("CARGO_PKG_VERSION"))
}

/// Revision, profile, target and compiler of this binary.
pub fn build() -> TrainerBuild {
    TrainerBuild {
        revision: REVISION.to_owned(),
        profile: env!("FACE2SIMPSON_TRAINER_PROFILE").to_owned(),
        target: env!("FACE2SIMPSON_TRAINER_TARGET").to_owned(),
        rustc: env!("FACE2SIMPSON_TRAINER_RUSTC").to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_carries_the_revision() {
        let v = version();
        assert!(
            v.starts_with(concat!(env!("CARGO_PKG_VERSION"), "+")),
            "{v}"
        );
        assert_ne!(v, env!("CARGO_PKG_VERSION"));
        // Built from a checkout: the stamp names one of its commits (not necessarily HEAD,
        // which may have moved since the build).
        let in_checkout = std::process::Command::new("git")
            .args(["rev-parse", "--git-dir"])
            .output()
            .is_ok_and(|o| o.status.success());
        if in_checkout {
            let kind = std::process::Command::new("git")
                .args(["cat-file", "-t", REVISION])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
            assert_eq!(kind.ok().as_deref(), Some("commit"), "{REVISION}");
        }
        let b = build();
        assert!(b.rustc.starts_with("rustc "), "{b:?}");
        assert!(!b.target.is_empty() && b.profile != "unknown", "{b:?}");
    }
}
