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
    /// Unix time at which the model's last run with a usable result finished.
    pub last_successful_run: Family<ModelLabels, Gauge>,
    /// 1 while this process reconciles (it holds the Lease, or runs without leader
    /// election), 0 while it stands by.
    pub leader: Gauge,
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
            "leader",
            "1 while this replica holds the leader Lease and reconciles, 0 while it stands by",
            m.leader.clone(),
        );
        r.register(
            "champion_accuracy",
            "Test accuracy of the model in service",
            m.champion_accuracy.clone(),
        );
        // The name the issue and its alerts use, outside the operator's prefix: an alert on
        // "no successful run for N days" should not depend on which process exports it.
        registry.register(
            "face2simpson_last_successful_run_timestamp_seconds",
            "Unix time at which the last training run with a usable result finished",
            m.last_successful_run.clone(),
        );
        m
    }

    /// Drops every series of a model, once it is deleted: a gauge of a model that no longer
    /// exists would keep alerts (and dashboards) lying forever.
    pub fn forget(&self, model: &ModelLabels) {
        self.trainings_started.remove(model);
        self.promotions.remove(model);
        self.rejections.remove(model);
        self.failed_runs.remove(model);
        self.champion_accuracy.remove(model);
        self.last_successful_run.remove(model);
    }
}

/// The registry in Prometheus text format.
pub fn encode(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Item 16: a deleted model leaves no series behind; other models keep theirs.
    #[test]
    fn forget_drops_every_series_of_a_model() {
        let mut registry = Registry::default();
        let m = Metrics::register(&mut registry);
        let homer = ModelLabels {
            namespace: "simpsons".into(),
            model: "homer".into(),
        };
        let bart = ModelLabels {
            namespace: "simpsons".into(),
            model: "bart".into(),
        };
        for model in [&homer, &bart] {
            m.trainings_started.get_or_create(model).inc();
            m.promotions.get_or_create(model).inc();
            m.rejections.get_or_create(model).inc();
            m.failed_runs.get_or_create(model).inc();
            m.champion_accuracy.get_or_create(model).set(0.9);
            m.last_successful_run
                .get_or_create(model)
                .set(1_793_757_600);
        }
        m.forget(&homer);
        let text = encode(&registry).unwrap();
        assert!(!text.contains(r#"model="homer""#), "{text}");
        assert!(
            text.contains(
                r#"face2simpson_last_successful_run_timestamp_seconds{namespace="simpsons",model="bart"} 1793757600"#
            ),
            "{text}"
        );
    }
}
