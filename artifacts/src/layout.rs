//! Object keys, relative to the root of a store URL.
//!
//! ```text
//! datasets/<name>/{train,test}/<class>/*.{jpg,png,webp}
//! pretrained/mobilenet_v2-b0353104.pth
//! runs/<namespace>/<name>/<run-id>/model.safetensors   runs of one SimpsonModel (operator)
//! runs/<namespace>/<name>/<run-id>/model.onnx          the same weights as ONNX (what the service runs)
//! runs/<namespace>/<name>/<run-id>/metrics.json        written last: the run is complete
//! runs/<run-id>/{model.safetensors,model.onnx,metrics.json}
//!                                  the cluster-free mode, and runs made before runs were keyed per model
//! runs/<namespace>/<name>/history.json                the decisions about a model's runs (history.rs)
//! runs/history.json                the same in the cluster-free mode
//! champion.json                   the embedded (cluster-free) mode's current champion
//! ```
//!
//! Runs are keyed per model so two SimpsonModels sharing one bucket can never read each
//! other's runs, even when their run ids collide.

/// The default dataset prefix.
pub const DEFAULT_DATASET: &str = "datasets/current";
/// Where the ImageNet backbone is looked up when no other location is given.
pub const DEFAULT_PRETRAINED: &str = "pretrained/mobilenet_v2-b0353104.pth";
/// The champion pointer of the embedded mode (`train --promote`).
pub const CHAMPION: &str = "champion.json";
/// The two splits every dataset has; validation is carved out of `train`.
pub const SPLITS: [&str; 2] = ["train", "test"];

/// The image types a dataset holds, by extension (any case).
pub const IMAGE_EXTENSIONS: [&str; 4] = ["jpg", "jpeg", "png", "webp"];

/// Whether a file in a dataset split is an image to take, by its name alone: not hidden, and
/// one of [`IMAGE_EXTENSIONS`]. The trainer and the served-path validator both ask this, so
/// they score the same test split.
pub fn is_dataset_image(file: &str) -> bool {
    let ext = file
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    !file.starts_with('.') && IMAGE_EXTENSIONS.contains(&ext.as_str())
}

/// Where runs live when no model-specific prefix is given (and where they all lived before).
pub const RUNS: &str = "runs";

/// The runs prefix of one SimpsonModel: `runs/<namespace>/<name>`.
pub fn model_runs(namespace: &str, name: &str) -> String {
    format!("{RUNS}/{namespace}/{name}")
}

/// The owner recorded in a model's `metrics.json`: `<namespace>/<name>`.
pub fn owner(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// The weights of a run under `prefix`.
pub fn weights_in(prefix: &str, run_id: &str) -> String {
    format!("{}/{run_id}/model.safetensors", prefix.trim_matches('/'))
}

/// The metrics of a run under `prefix`; its presence marks the run complete.
pub fn metrics_in(prefix: &str, run_id: &str) -> String {
    format!("{}/{run_id}/metrics.json", prefix.trim_matches('/'))
}

/// The weights of a run in the shared `runs/` prefix.
pub fn run_weights(run_id: &str) -> String {
    weights_in(RUNS, run_id)
}

/// The ONNX export of a run's weights under `prefix`.
pub fn onnx_in(prefix: &str, run_id: &str) -> String {
    format!("{}/{run_id}/model.onnx", prefix.trim_matches('/'))
}

/// The ONNX export of a run's weights in the shared `runs/` prefix.
pub fn run_onnx(run_id: &str) -> String {
    onnx_in(RUNS, run_id)
}

/// The ONNX model that sits beside a weights key (`runs/x/model.safetensors` →
/// `runs/x/model.onnx`). A key that already names an `.onnx` file is returned as it is.
pub fn onnx_beside(weights_key: &str) -> String {
    if weights_key.ends_with(".onnx") {
        return weights_key.to_owned();
    }
    match weights_key.rsplit_once('/') {
        Some((dir, _)) => format!("{dir}/model.onnx"),
        None => "model.onnx".to_owned(),
    }
}

/// The metrics of a run in the shared `runs/` prefix; its presence marks the run complete.
pub fn run_metrics(run_id: &str) -> String {
    metrics_in(RUNS, run_id)
}

/// The decision history beside the runs under `prefix` (`runs/<ns>/<name>/history.json`, or
/// `runs/history.json` in the cluster-free mode); see [`crate::history`].
pub fn history_in(prefix: &str) -> String {
    format!("{}/{HISTORY}", prefix.trim_matches('/'))
}

/// The decision history of the runs prefix a run's weights key is in
/// (`runs/ns/homer/r1/model.safetensors` → `runs/ns/homer/history.json`); `None` for a key with
/// no run directory and runs prefix above it.
pub fn history_beside_run(weights_key: &str) -> Option<String> {
    let (run_dir, _) = weights_key.trim_matches('/').rsplit_once('/')?;
    let (prefix, _) = run_dir.rsplit_once('/')?;
    (!prefix.is_empty()).then(|| history_in(prefix))
}

/// File name of the decision history in a runs prefix.
pub const HISTORY: &str = "history.json";

/// Checks a runs prefix given on a command line: relative, no `..`, no empty segment.
pub fn validate_runs_prefix(prefix: &str) -> Result<(), String> {
    let ok = !prefix.is_empty()
        && prefix
            .split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid runs prefix {prefix:?}: use a relative key such as runs/<namespace>/<name>"
        ))
    }
}

/// The served-path validation of a run under `prefix` (`face2simpson-inference validate`).
pub fn validation_in(prefix: &str, run_id: &str) -> String {
    format!("{}/{run_id}/{VALIDATION}", prefix.trim_matches('/'))
}

/// File name of a run's served-path validation, beside its metrics.json.
pub const VALIDATION: &str = "validation.json";

/// The metrics that sit beside a weights key (`runs/x/model.safetensors` → `runs/x/metrics.json`).
pub fn metrics_beside(weights_key: &str) -> String {
    match weights_key.rsplit_once('/') {
        Some((dir, _)) => format!("{dir}/metrics.json"),
        None => "metrics.json".to_owned(),
    }
}

/// Run ids become object keys and Kubernetes names, so they are kept to a safe alphabet.
pub fn validate_run_id(run_id: &str) -> Result<(), String> {
    let ok_len = !run_id.is_empty() && run_id.len() <= 63;
    let ok_chars = run_id
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.' || c == '_');
    let ok_ends = run_id
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
        && run_id
            .chars()
            .last()
            .is_some_and(|c| c.is_ascii_alphanumeric());
    if ok_len && ok_chars && ok_ends {
        Ok(())
    } else {
        Err(format!(
            "invalid run id {run_id:?}: use 1-63 lowercase letters, digits, '-', '.' or '_', starting and ending with a letter or digit"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dataset_images_by_name() {
        for name in ["a.jpg", "b.JPEG", "c.png", "d.WebP"] {
            assert!(is_dataset_image(name), "{name}");
        }
        for name in [".hidden.png", "notes.txt", "noext", "archive.png.gz"] {
            assert!(!is_dataset_image(name), "{name}");
        }
    }

    #[test]
    fn keys() {
        assert_eq!(run_weights("r1"), "runs/r1/model.safetensors");
        assert_eq!(run_metrics("r1"), "runs/r1/metrics.json");
        assert_eq!(metrics_beside(&run_weights("r1")), run_metrics("r1"));
        assert_eq!(metrics_beside("model.safetensors"), "metrics.json");
        let prefix = model_runs("simpsons", "homer");
        assert_eq!(
            weights_in(&prefix, "r1"),
            "runs/simpsons/homer/r1/model.safetensors"
        );
        assert_eq!(
            metrics_in(&prefix, "r1"),
            "runs/simpsons/homer/r1/metrics.json"
        );
        assert_eq!(owner("simpsons", "homer"), "simpsons/homer");
        assert!(validate_runs_prefix(&prefix).is_ok());
        for bad in ["", "/abs", "runs/../x", "runs//x", "runs/"] {
            assert!(validate_runs_prefix(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(run_onnx("r1"), "runs/r1/model.onnx");
        assert_eq!(onnx_beside(&run_weights("r1")), run_onnx("r1"));
        assert_eq!(onnx_beside("runs/r1/model.onnx"), "runs/r1/model.onnx");
        assert_eq!(onnx_beside("model.safetensors"), "model.onnx");
        assert_eq!(onnx_in(&prefix, "r1"), "runs/simpsons/homer/r1/model.onnx");
        assert_eq!(history_in(&prefix), "runs/simpsons/homer/history.json");
        assert_eq!(history_in(RUNS), "runs/history.json");
        assert_eq!(
            history_beside_run(&weights_in(&prefix, "r1")).as_deref(),
            Some("runs/simpsons/homer/history.json")
        );
        assert_eq!(
            history_beside_run(&run_weights("r1")).as_deref(),
            Some("runs/history.json")
        );
        assert_eq!(history_beside_run("r1/model.safetensors"), None);
        assert_eq!(history_beside_run("model.safetensors"), None);
    }

    #[test]
    fn run_ids() {
        assert!(validate_run_id("demo-20261129-1").is_ok());
        for bad in [
            "",
            "Upper",
            "../etc",
            "a/b",
            "-lead",
            "trail-",
            &"x".repeat(64),
        ] {
            assert!(validate_run_id(bad).is_err(), "{bad:?} accepted");
        }
    }
}
