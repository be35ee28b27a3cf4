//! Schedule: start a run when one is due (bootstrap, manual request, schedule slot).

use jiff::Timestamp;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use kube::runtime::events::EventType;
use tracing::info;

use super::{Error, Pass, set_condition};
use crate::builders;
use crate::crd::{RunStatus, TRAIN_REQUEST_ANNOTATION};
use crate::schedule::Schedule;

impl Pass<'_> {
    /// Starts a run when one is due and no Job is `active`; sets `nextRunAt` and the Training
    /// condition. Returns whether a run is in progress after this step.
    pub(super) async fn schedule(&mut self, active: bool) -> Result<bool, Error> {
        let sm = self.sm;
        let now = self.now;
        let schedule = Schedule::from_spec(&sm.spec.schedule);
        let anchor = sm.metadata.creation_timestamp.as_ref().map_or(now, |t| t.0);
        let last_start = self.status.last_run.as_ref().map(|r| r.started_at.0);
        let suspended = sm.spec.schedule.suspend;
        let mut next_run_at: Option<Timestamp> = None;
        let mut started = false;
        match &schedule {
            Err(e) => {
                let message = e.to_string();
                // Warn once when the schedule turns invalid, not on every pass while it stays so.
                let already = self.status.conditions.iter().any(|c| {
                    c.type_ == "Degraded" && c.status == "True" && c.reason == "InvalidSchedule"
                });
                if !already {
                    self.event(
                        EventType::Warning,
                        "InvalidSchedule",
                        "Schedule",
                        message.clone(),
                    )
                    .await;
                }
                self.degraded("InvalidSchedule", &message);
            }
            Ok(schedule) => {
                if self
                    .status
                    .conditions
                    .iter()
                    .any(|c| c.type_ == "Degraded" && c.reason == "InvalidSchedule")
                {
                    self.healthy("ScheduleValid", "the schedule is valid again");
                }
                let plan = match schedule.plan(last_start, anchor, now) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        self.degraded("InvalidSchedule", &e.to_string());
                        None
                    }
                };
                let request = sm
                    .annotations()
                    .get(TRAIN_REQUEST_ANNOTATION)
                    .filter(|v| !v.is_empty())
                    .cloned();
                let manual = request.filter(|r| self.status.last_train_request.as_ref() != Some(r));
                let trigger = if active || suspended {
                    None
                } else if let Some(r) = &manual {
                    Some((builders::manual_run_id(&self.name, r), "Manual"))
                } else if self.status.champion.is_none() && self.status.last_run.is_none() {
                    Some((builders::scheduled_run_id(&self.name, anchor), "Bootstrap"))
                } else {
                    plan.as_ref()
                        .and_then(|p| p.due_slot)
                        .map(|slot| (builders::scheduled_run_id(&self.name, slot), "Schedule"))
                };
                next_run_at = plan.as_ref().map(|p| p.next_run_at);
                if let Some((run_id, trigger)) = trigger {
                    self.start(run_id, trigger).await?;
                    started = true;
                    if trigger == "Manual" {
                        self.status.last_train_request = manual;
                    }
                    next_run_at = schedule
                        .plan(Some(now), anchor, now)
                        .ok()
                        .map(|p| p.next_run_at);
                }
            }
        }
        let training = active || started;
        let (reason, message) = match (&self.status.last_run, training) {
            (Some(r), true) => (
                "JobRunning",
                format!("training run {} is in progress", r.run_id),
            ),
            _ => ("Idle", String::new()),
        };
        set_condition(
            &mut self.status.conditions,
            "Training",
            training,
            reason,
            &message,
            sm.metadata.generation,
            now,
        );
        self.status.next_run_at = if suspended {
            None
        } else {
            next_run_at.map(Time)
        };
        Ok(training)
    }

    /// Starts the training Job for `run_id`, or adopts it when it already exists.
    async fn start(&mut self, run_id: String, trigger: &str) -> Result<(), Error> {
        let champion = self.status.champion.as_ref().map(|c| c.run_id.clone());
        let job = builders::training_job(self.sm, &run_id, champion.as_deref())?;
        let jobs: Api<Job> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        match jobs.create(&PostParams::default(), &job).await {
            Ok(_) => {}
            // Deterministic names make a second create for the same slot a no-op.
            Err(kube::Error::Api(s)) if s.code == 409 => {
                info!(model = %self.name, run = %run_id, "training Job already exists; adopting it")
            }
            Err(source) => {
                return Err(Error::CreateJob {
                    name: run_id,
                    source,
                });
            }
        }
        self.ctx
            .metrics
            .trainings_started
            .get_or_create(&self.labels())
            .inc();
        info!(model = %self.name, run = %run_id, trigger, "training started");
        let note = format!("started training run {run_id} ({trigger})");
        self.status.last_run = Some(RunStatus {
            run_id: run_id.clone(),
            job_name: run_id,
            trigger: trigger.to_owned(),
            started_at: Time(self.now),
            finished_at: None,
            accuracy: None,
            champion_accuracy: None,
            decision: None,
            reason: None,
            dry_run: false,
        });
        self.event(EventType::Normal, "TrainingStarted", "Train", note)
            .await;
        Ok(())
    }
}
