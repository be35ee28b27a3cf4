//! Object keys, relative to the root of a store URL.
//!
//! ```text
//! datasets/<name>/{train,test}/<class>/*.{jpg,png,webp}
//! pretrained/mobilenet_v2-b0353104.pth
//! runs/<run-id>/model.safetensors
//! runs/<run-id>/model.onnx        the same weights as ONNX (what the inference service runs)
//! runs/<run-id>/metrics.json      written last: its presence means the run is complete
//! champion.json                   the embedded (cluster-free) mode's current champion
//! ```

/// The default dataset prefix.
pub const DEFAULT_DATASET: &str = "datasets/current";
/// Where the ImageNet backbone is looked up when no other location is given.
pub const DEFAULT_PRETRAINED: &str = "pretrained/mobilenet_v2-b0353104.pth";
/// The champion pointer of the embedded mode (`train --promote`).
pub const CHAMPION: &str = "champion.json";
/// The two splits every dataset has; validation is carved out of `train`.
pub const SPLITS: [&str; 2] = ["train", "test"];

/// The weights of a run.
pub fn run_weights(run_id: &str) -> String {
    format!("runs/{run_id}/model.safetensors")
}

/// The ONNX export of a run's weights.
pub fn run_onnx(run_id: &str) -> String {
    format!("runs/{run_id}/model.onnx")
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

/// The metrics of a run; its presence marks the run complete.
pub fn run_metrics(run_id: &str) -> String {
    format!("runs/{run_id}/metrics.json")
}

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
    fn keys() {
        assert_eq!(run_weights("r1"), "runs/r1/model.safetensors");
        assert_eq!(run_metrics("r1"), "runs/r1/metrics.json");
        assert_eq!(metrics_beside(&run_weights("r1")), run_metrics("r1"));
        assert_eq!(metrics_beside("model.safetensors"), "metrics.json");
        assert_eq!(run_onnx("r1"), "runs/r1/model.onnx");
        assert_eq!(onnx_beside(&run_weights("r1")), run_onnx("r1"));
        assert_eq!(onnx_beside("runs/r1/model.onnx"), "runs/r1/model.onnx");
        assert_eq!(onnx_beside("model.safetensors"), "model.onnx");
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
