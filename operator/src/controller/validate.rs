//! Validate: before the gate decides on a run whose training Job succeeded, the candidate is
//! checked on the served path by a Job with the inference image (`face2simpson-inference
//! validate`, docs/inference.md). Its `validation.json` either refuses the candidate
//! (`InfraValidationFailed`, `TrainServeSkew`: a Reject, nothing rolls) or gives the served
//! accuracies of candidate and champion, scored in the same Job, on which the gate decides.
//!
//! Record first, then act: the run's `status.lastRun.validation` names the Job before it is
//! created (after the pass's status write), and the Job's deterministic name makes a second
//! create a 409 the pass ignores.

use artifacts::validation::{FailureReason, Validation};
use artifacts::{RunMetrics, StorageError, TestPredictions, layout};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use tracing::info;

use super::evaluate::finished_at;
use super::observe::run_id_of;
use super::{Concern, Error, JOB_REFUSED, JobState, Pass, set_condition};
use crate::builders::{self, RUNS_PREFIX_ANNOTATION, ValidationTarget};
use crate::crd::{RunStatus, RunValidation};

/// Clock skew tolerated between the validator's node and the API server.
const CLOCK_SKEW: SignedDuration = SignedDuration::from_secs(300);
/// Class index standing for "not answered 200" in served predictions: never a true label.
const UNANSWERED: u8 = u8::MAX;

/// Why a validation refuses a candidate: the reason's name and the sentence for humans.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// `InfraValidationFailed` or `TrainServeSkew`.
    pub reason: &'static str,
    pub message: String,
}

impl Refusal {
    fn infra(message: String) -> Self {
        Self {
            reason: "InfraValidationFailed",
            message,
        }
    }
}

/// The refusal a failed `validation.json` stands for: its first failure.
pub fn refusal(report: &Validation) -> Option<Refusal> {
    let first = report.failures.first()?;
    let reason = match first.reason {
        FailureReason::TrainServeSkew => "TrainServeSkew",
        FailureReason::InfraValidationFailed => "InfraValidationFailed",
    };
    Some(Refusal {
        reason,
        message: first.message.clone(),
    })
}

/// The run's metrics as the gate sees them after a passed validation: the served accuracies
/// (candidate and champion scored by the validator in the same process on the same images)
/// replace the trainer's test accuracies, and the served verdicts per image replace the
/// trainer's paired predictions, so the comparison, its confidence interval, McNemar's test,
/// the per-class guard and the test-size floor all judge what users get. `None` when the
/// champion (there is one) was not scored served (it did not load in the validator): the
/// gate then decides on the trainer's figures.
pub fn served_metrics(m: &RunMetrics, v: &Validation) -> Option<RunMetrics> {
    let accuracy = v.candidate.served_accuracy?;
    let champion_accuracy = match &m.champion_run_id {
        None => None,
        Some(_) => Some(v.champion.as_ref()?.served_accuracy?),
    };
    let mut served = m.clone();
    served.test_accuracy = accuracy;
    served.champion_test_accuracy = champion_accuracy;
    served.counts.test = v.candidate.test_images;
    if !v.candidate.per_class_recall.is_empty() {
        served.per_class_accuracy = v.candidate.per_class_recall.clone();
    }
    let fingerprint = format!("served:{}", m.test_fingerprint.clone().unwrap_or_default());
    served.test_fingerprint = Some(fingerprint.clone());
    let p = &v.predictions;
    served.test_predictions = Some(TestPredictions {
        test_fingerprint: fingerprint,
        keys: p.keys.clone(),
        labels: p.labels.clone(),
        challenger: p
            .candidate
            .iter()
            .map(|c| c.unwrap_or(UNANSWERED))
            .collect(),
        champion: p
            .champion
            .as_ref()
            .map(|c| c.iter().map(|x| x.unwrap_or(UNANSWERED)).collect()),
    });
    if !v.classes.is_empty() {
        served.classes = v.classes.clone();
    }
    Some(served)
}

/// The gate's summary, saying the accuracies it compares are served ones.
pub fn served_summary(summary: &str) -> String {
    if summary.contains("test faces") {
        summary.replacen("test faces", "served test faces", 1)
    } else {
        format!("{summary} (served)")
    }
}

/// What the served-path validation says about a run whose training succeeded.
#[derive(Debug)]
pub(super) enum Served {
    /// Validation is switched off: the gate decides on the trainer's metrics.
    Off,
    /// The validation Job is about to be created or runs: no decision yet.
    Waiting,
    /// The candidate passed.
    Passed(Box<Validation>),
    /// The candidate is refused.
    Refused(Refusal),
    /// validation.json could not be read (the store is down) since the Job finished then.
    Unreachable { message: String, since: Timestamp },
}

impl Pass<'_> {
    /// The run's status as recorded, or a fresh one for a Job adopted without one.
    pub(super) fn run_of(&self, job: &Job, run_id: &str) -> RunStatus {
        match self.status.last_run.clone() {
            Some(r) if r.run_id == run_id => r,
            // Status was lost or never written (operator crashed right after creating the Job).
            _ => RunStatus::new(
                run_id,
                job.name_any(),
                crate::crd::Trigger::Unknown,
                job.metadata
                    .creation_timestamp
                    .clone()
                    .unwrap_or(Time(self.now)),
            ),
        }
    }

    /// Where the served-path validation of a succeeded run stands; records and queues the
    /// validation Job when it does not exist yet.
    pub(super) async fn served(
        &mut self,
        job: &Job,
        run_id: &str,
        model_uri: &str,
    ) -> Result<Served, Error> {
        if !self.sm.spec.promotion.validation.enabled {
            return Ok(Served::Off);
        }
        let name = builders::validation_job_name(run_id);
        let found = self
            .validations
            .iter()
            .find(|(j, _)| j.name_any() == name && run_id_of(j) == run_id)
            .cloned();
        let mut run = self.run_of(job, run_id);
        if run.validation.is_none() {
            run.validation = Some(RunValidation {
                job_name: name.clone(),
                started_at: found
                    .as_ref()
                    .and_then(|(j, _)| j.metadata.creation_timestamp.clone())
                    .unwrap_or(Time(self.now)),
                passed: None,
                served_accuracy: None,
                champion_served_accuracy: None,
                trainer_accuracy: None,
                agreement: None,
            });
            run.model_uri = Some(model_uri.to_owned());
            self.status.last_run = Some(run);
        }
        let Some((vjob, state)) = found else {
            let prefix = job
                .annotations()
                .get(RUNS_PREFIX_ANNOTATION)
                .cloned()
                .unwrap_or_else(|| layout::RUNS.to_owned());
            let out = format!(
                "{}/{}",
                self.sm.spec.storage_uri.trim_end_matches('/'),
                validation_key(&prefix, run_id)
            );
            let champion = self.status.champion.as_ref().map(|c| c.model_uri.clone());
            let built = builders::validation_job(
                self.sm,
                &ValidationTarget {
                    run_id,
                    model_uri,
                    out_uri: &out,
                    champion_uri: champion.as_deref(),
                },
            )?;
            self.validating("Validating", &format!("validation Job {name} started"));
            self.create_validation = Some(built);
            return Ok(Served::Waiting);
        };
        let why_failed = match state {
            JobState::Active => {
                self.validating("Validating", &format!("validation Job {name} runs"));
                return Ok(Served::Waiting);
            }
            JobState::Succeeded => None,
            JobState::Failed(why) | JobState::Abandoned { message: why, .. } => Some(why),
        };
        let since = finished_at(&vjob).unwrap_or(self.now);
        let prefix = job
            .annotations()
            .get(RUNS_PREFIX_ANNOTATION)
            .cloned()
            .unwrap_or_else(|| layout::RUNS.to_owned());
        let store = match self.store().await? {
            Ok(store) => store,
            Err(e) => {
                return Ok(Served::Unreachable {
                    message: e.to_string(),
                    since,
                });
            }
        };
        let key = validation_key(&prefix, run_id);
        let report = match store.get(&key).await {
            Ok(bytes) => Some(Validation::from_json(&bytes)),
            Err(e) if e.is_not_found() => None,
            Err(e @ StorageError::Malformed { .. }) => Some(Err(e.to_string())),
            Err(e) => {
                return Ok(Served::Unreachable {
                    message: e.to_string(),
                    since,
                });
            }
        };
        // A file from an earlier validation of a run with the same id is not this Job's.
        let created = vjob.metadata.creation_timestamp.as_ref().map(|t| t.0);
        let report = report.filter(|r| match (r, created) {
            (Ok(r), Some(created)) => {
                r.started_at.timestamp() >= (created - CLOCK_SKEW).as_second()
            }
            _ => true,
        });
        let served = match (report, why_failed) {
            (Some(Err(e)), _) => Served::Refused(Refusal::infra(format!(
                "the validation.json of run {run_id} cannot be read: {e}"
            ))),
            (Some(Ok(r)), _) if r.candidate.run_id.as_deref().is_some_and(|id| id != run_id) => {
                Served::Refused(Refusal::infra(format!(
                    "the validation.json of run {run_id} names run {:?}",
                    r.candidate.run_id
                )))
            }
            (Some(Ok(r)), _) => match refusal(&r) {
                Some(refused) => Served::Refused(refused),
                None if r.candidate.served_accuracy.is_none() => Served::Refused(Refusal::infra(
                    format!("the validation of run {run_id} passed without a served accuracy"),
                )),
                None => Served::Passed(Box::new(r)),
            },
            (None, None) => Served::Refused(Refusal::infra(format!(
                "validation Job {name} completed but wrote no validation.json at {key}"
            ))),
            (None, Some(why)) => Served::Refused(Refusal::infra(format!(
                "validation Job {name} failed without a verdict: {why}"
            ))),
        };
        match &served {
            Served::Refused(r) => self.validated(false, r.reason, &r.message),
            Served::Passed(r) => self.validated(
                true,
                "Passed",
                &format!(
                    "run {run_id}: served accuracy {}",
                    r.candidate.served_accuracy.map_or("?".to_owned(), pct)
                ),
            ),
            _ => {}
        }
        if let Some(RunStatus {
            validation: Some(v),
            ..
        }) = self.status.last_run.as_mut().filter(|r| r.run_id == run_id)
        {
            if let Served::Passed(r) = &served {
                v.passed = Some(true);
                v.served_accuracy = r.candidate.served_accuracy;
                v.champion_served_accuracy = r.champion.as_ref().and_then(|c| c.served_accuracy);
                v.trainer_accuracy = r.candidate.trainer_test_accuracy;
                v.agreement = r.agreement;
            } else if let Served::Refused(_) = &served {
                v.passed = Some(false);
            }
        }
        Ok(served)
    }

    /// Sets the `Validated` condition.
    fn validated(&mut self, passed: bool, reason: &str, message: &str) {
        let generation = self.sm.metadata.generation;
        set_condition(
            &mut self.status.conditions,
            "Validated",
            passed,
            reason,
            message,
            generation,
            self.now,
        );
    }

    /// `Validated=Unknown` while the candidate is being validated; its transition time is
    /// kept while it stays so, so a pass over a running validation writes nothing.
    fn validating(&mut self, reason: &str, message: &str) {
        let generation = self.sm.metadata.generation;
        let now = self.now;
        let conds = &mut self.status.conditions;
        if !conds.iter().any(|c| c.type_ == "Validated") {
            conds.push(Condition {
                type_: "Validated".into(),
                status: "Unknown".into(),
                reason: String::new(),
                message: String::new(),
                observed_generation: generation,
                last_transition_time: Time(now),
            });
        }
        for c in conds.iter_mut().filter(|c| c.type_ == "Validated") {
            if c.status != "Unknown" {
                c.status = "Unknown".into();
                c.last_transition_time = Time(now);
            }
            reason.clone_into(&mut c.reason);
            message.clone_into(&mut c.message);
            c.observed_generation = generation;
        }
    }

    /// Creates the validation Job recorded by this pass, once its status write succeeded. A
    /// 409 is the same deterministic Job, created by an earlier pass: nothing to do.
    pub(super) async fn start_validation(&mut self) -> Result<(), Error> {
        let Some(job) = self.create_validation.take() else {
            return Ok(());
        };
        let name = job.name_any();
        let api: Api<Job> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        match api.create(&PostParams::default(), &job).await {
            Ok(_) => {
                info!(model = %self.name, job = %name, "validation Job created");
                self.clear_from(
                    Concern::RunBlocked,
                    &[JOB_REFUSED],
                    "JobAccepted",
                    "the validation Job was created",
                );
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(source) => {
                let error = Error::CreateValidationJob { name, source };
                // Refused (an invalid override, a quota, a policy): reported, and built and
                // tried again by a later pass, as long as the run waits for its validation.
                self.refused(Concern::RunBlocked, JOB_REFUSED, "Validate", error)
                    .map(drop)
            }
        }
    }
}

/// Key of a run's `validation.json`, beside its `metrics.json`.
pub fn validation_key(prefix: &str, run_id: &str) -> String {
    layout::validation_in(prefix, run_id)
}

fn pct(x: f64) -> String {
    format!("{:.2}%", x * 100.0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn report(passed: bool) -> serde_json::Value {
        json!({
            "schema_version": 1,
            "validator_version": "0.1.0",
            "dataset": "s3://b/datasets/current",
            "classes": ["homer", "marge", "bart", "lisa"],
            "model": "s3://b/runs/ns/homer/r2/model.safetensors",
            "run_id": "r2",
            "test_images": 4,
            "served_accuracy": 0.75,
            "per_class_recall": {"homer": 1.0, "marge": 1.0, "bart": 1.0, "lisa": 0.0},
            "trainer_test_accuracy": 1.0,
            "agreement": 0.75,
            "onnx_sha256": "sha256:00", "image_size": 224, "load_error": null,
            "confusion_matrix": [], "rejected_images": [], "latency_ms": null,
            "agreement_images": 4, "disagreements": [], "golden": null, "peak_rss_bytes": null,
            "champion": {
                "model": "c", "run_id": "r1", "onnx_sha256": null, "image_size": 224,
                "load_error": null, "test_images": 4, "served_accuracy": 0.5,
                "per_class_recall": {}, "confusion_matrix": [], "rejected_images": [],
                "latency_ms": null, "trainer_test_accuracy": null
            },
            "predictions": {
                "keys": ["test/bart/1.png", "test/homer/1.png", "test/lisa/1.png", "test/marge/1.png"],
                "labels": [2, 0, 3, 1],
                "candidate": [2, 0, null, 1],
                "champion": [2, 0, 0, 0]
            },
            "thresholds": {"max_p95_ms": null, "min_agreement": 0.99, "max_memory_bytes": null},
            "started_at": "2026-11-04T01:00:00Z",
            "finished_at": "2026-11-04T01:01:00Z",
            "passed": passed,
            "failures": if passed { json!([]) } else { json!([
                {"reason": "TrainServeSkew", "message": "agreement 75.0% is below 99.0%"},
                {"reason": "InfraValidationFailed", "message": "p95 too slow"}
            ]) }
        })
    }

    #[test]
    fn the_first_failure_is_the_refusal() {
        let r = Validation::from_json(report(false).to_string().as_bytes()).unwrap();
        assert_eq!(
            refusal(&r),
            Some(Refusal {
                reason: "TrainServeSkew",
                message: "agreement 75.0% is below 99.0%".into()
            })
        );
        let ok = Validation::from_json(report(true).to_string().as_bytes()).unwrap();
        assert_eq!(refusal(&ok), None);
    }

    #[test]
    fn inconsistent_or_unknown_files_are_refused() {
        let mut v = report(true);
        v["passed"] = json!(false);
        assert!(Validation::from_json(v.to_string().as_bytes()).is_err());
        let mut v = report(true);
        v["schema_version"] = json!(2);
        assert!(Validation::from_json(v.to_string().as_bytes()).is_err());
        assert!(Validation::from_json(b"{").is_err());
    }

    #[test]
    fn summaries_say_served() {
        assert_eq!(
            served_summary("Promote: +2.3 pts (95% CI +0.6..+4.2, p=0.0094, 600 test faces)"),
            "Promote: +2.3 pts (95% CI +0.6..+4.2, p=0.0094, 600 served test faces)"
        );
        assert_eq!(
            served_summary("FirstModel: 97.5% on 600 test faces"),
            "FirstModel: 97.5% on 600 served test faces"
        );
        assert_eq!(served_summary("Reject: odd"), "Reject: odd (served)");
    }

    #[test]
    fn validation_lives_beside_the_metrics() {
        assert_eq!(
            validation_key("runs/ns/homer/", "r2"),
            "runs/ns/homer/r2/validation.json"
        );
    }
}
