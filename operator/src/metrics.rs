//! Prometheus metrics of the operator. Label values are either static strings chosen by the
//! code (error kinds, decisions) or object names, never `Debug` output, so the series set
//! stays bounded and stable across releases.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Identifies one SimpsonModel.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    pub namespace: String,
    pub model: String,
}

/// A reconcile error's kind (a fixed vocabulary, see `Error::kind`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub kind: &'static str,
}

/// Every metric the operator exports.
#[derive(Debug, Default)]
pub struct Metrics {
    pub reconciles: Counter,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub trainings_started: Family<ModelLabels, Counter>,
    pub promotions: Family<ModelLabels, Counter>,
    pub rejections: Family<ModelLabels, Counter>,
    pub failed_runs: Family<ModelLabels, Counter>,
    pub champion_accuracy: Family<ModelLabels, Gauge<f64, AtomicU64>>,
}

impl Metrics {
    /// Registers every metric under the `face2simpson_operator` prefix.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        let r = registry.sub_registry_with_prefix("face2simpson_operator");
        r.register("reconciles", "Reconciliations run", m.reconciles.clone());
        r.register(
            "reconcile_errors",
            "Reconciliations that failed, by error kind",
            m.reconcile_errors.clone(),
        );
        r.register(
            "trainings_started",
            "Training Jobs created",
            m.trainings_started.clone(),
        );
        r.register(
            "promotions",
            "Runs that replaced the champion",
            m.promotions.clone(),
        );
        r.register(
            "rejections",
            "Runs the gate kept out of service",
            m.rejections.clone(),
        );
        r.register(
            "failed_runs",
            "Runs without a usable result (Job failed, metrics missing or invalid)",
            m.failed_runs.clone(),
        );
        r.register(
            "champion_accuracy",
            "Test accuracy of the model in service",
            m.champion_accuracy.clone(),
        );
        m
    }
}

/// The registry in Prometheus text format.
pub fn encode(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}
