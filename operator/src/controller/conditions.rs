//! Conditions: one per concern, each set and cleared by the step that owns it, and `Degraded`
//! as their summary.
//!
//! One `Degraded` condition held one reason at a time: a store outage overwrote a refused
//! apply, and the next pass that cleared one cleared both. Each concern now has its own
//! condition ([`Concern`]), so a rollout failure and a store outage are visible at once and
//! each clears on its own. `Degraded` stays, for dashboards and `phase: Degraded`: True when
//! any concern is, with the most important concern's reason and a message naming them all.
//!
//! Every write here is a status write, and status writes are counted (0 per model and hour at
//! rest): a condition changes only when what it says changes. Messages carry no elapsed time,
//! a cleared condition keeps its words until it is set again, and `lastTransitionTime` moves
//! only when the status flips ([`set_condition`]).

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::runtime::events::EventType;
use tracing::info;

use super::Pass;

/// The summary condition.
pub const DEGRADED: &str = "Degraded";
/// The reason of a concern (and of `Degraded`) that nothing has gone wrong with.
pub const AS_EXPECTED: &str = "AsExpected";

/// Something that can go wrong with a model, reported in its own condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Concern {
    /// The operator cannot read the SimpsonModel (`InvalidSpec`): set by the guard that skips
    /// it, cleared by the first pass that reads it.
    SpecInvalid,
    /// The API server refused the inference Deployment, Service, HPA or PDB (`ApplyFailed`), or
    /// one of them belongs to someone else (`ObjectNotOwned`): set and cleared by serving.
    ApplyFailed,
    /// The inference pods do not become available (`RolloutFailed`): set by the rollout, cleared
    /// when a rollout completes.
    RolloutFailed,
    /// Something waits for the store (`StorageUnreachable`): a finished run's result
    /// (evaluation) or a due run checking the champion's weights (scheduling); cleared when that
    /// step reads the store again.
    StoreUnavailable,
    /// A run cannot start or go on (`InvalidSchedule`, `ChampionMissing`, `JobConflict`,
    /// `JobRefused`): set by the step that would start its Job, cleared once it can.
    RunBlocked,
    /// The last run ended without a usable result (`JobFailed`, `JobMissing`, `MetricsMissing`,
    /// `MetricsInvalid`, `StorageUnreachable`, `QueueTimeout`): set by evaluation, cleared by
    /// the next run it decides.
    RunFailed,
}

impl Concern {
    /// Every concern, in the order `Degraded` names them: what harms users most first (an
    /// unreadable model, then serving, then the store, then training).
    pub const ALL: [Concern; 6] = [
        Concern::SpecInvalid,
        Concern::ApplyFailed,
        Concern::RolloutFailed,
        Concern::StoreUnavailable,
        Concern::RunBlocked,
        Concern::RunFailed,
    ];

    /// The condition's type.
    pub fn type_(self) -> &'static str {
        match self {
            Concern::SpecInvalid => "SpecInvalid",
            Concern::ApplyFailed => "ApplyFailed",
            Concern::RolloutFailed => "RolloutFailed",
            Concern::StoreUnavailable => "StoreUnavailable",
            Concern::RunBlocked => "RunBlocked",
            Concern::RunFailed => "RunFailed",
        }
    }

    /// The concern a reason (and message) of the single `Degraded` condition of earlier
    /// versions belonged to, so an upgraded operator keeps reporting what its predecessor did.
    pub fn of_legacy(reason: &str, message: &str) -> Option<Concern> {
        Some(match reason {
            "InvalidSpec" => Concern::SpecInvalid,
            "ApplyFailed" | "ObjectNotOwned" => Concern::ApplyFailed,
            "RolloutFailed" => Concern::RolloutFailed,
            // A run given up after the metrics deadline; otherwise an outage something waits on.
            "StorageUnreachable" if message.starts_with("gave up") => Concern::RunFailed,
            "StorageUnreachable" => Concern::StoreUnavailable,
            "InvalidSchedule" | "ChampionMissing" | "JobConflict" | "JobRefused" => {
                Concern::RunBlocked
            }
            "JobFailed" | "JobMissing" | "MetricsMissing" | "MetricsInvalid" | "QueueTimeout" => {
                Concern::RunFailed
            }
            _ => return None,
        })
    }
}

/// Sets a condition, keeping its transition time when the status did not flip.
pub fn set_condition(
    conds: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: Timestamp,
) {
    let status = if status { "True" } else { "False" }.to_owned();
    if let Some(c) = conds.iter_mut().find(|c| c.type_ == type_) {
        if c.status != status {
            c.last_transition_time = Time(now);
        }
        c.status = status;
        c.reason = reason.to_owned();
        c.message = message.to_owned();
        c.observed_generation = generation;
        return;
    }
    conds.push(Condition {
        type_: type_.to_owned(),
        status,
        reason: reason.to_owned(),
        message: message.to_owned(),
        observed_generation: generation,
        last_transition_time: Time(now),
    });
}

fn find<'a>(conds: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conds.iter().find(|c| c.type_ == type_)
}

/// Whether `concern` is True (with `reason`, when given).
pub fn failing(conds: &[Condition], concern: Concern, reason: Option<&str>) -> bool {
    find(conds, concern.type_())
        .is_some_and(|c| c.status == "True" && reason.is_none_or(|r| c.reason == r))
}

/// Gives every concern its condition (False, `AsExpected`) the first time a model is looked
/// at. A model last written by an operator that had only `Degraded` keeps what it said: a True
/// `Degraded` becomes its concern's condition, with its reason, message and transition time.
pub fn init_concerns(conds: &mut Vec<Condition>, generation: Option<i64>, now: Timestamp) {
    let legacy = find(conds, DEGRADED)
        .filter(|d| d.status == "True")
        .and_then(|d| Some((Concern::of_legacy(&d.reason, &d.message)?, d.clone())))
        .filter(|_| {
            Concern::ALL
                .iter()
                .all(|c| find(conds, c.type_()).is_none())
        });
    for concern in Concern::ALL {
        if find(conds, concern.type_()).is_some() {
            continue;
        }
        match &legacy {
            Some((c, degraded)) if *c == concern => conds.push(Condition {
                type_: concern.type_().to_owned(),
                ..degraded.clone()
            }),
            _ => set_condition(
                conds,
                concern.type_(),
                false,
                AS_EXPECTED,
                "",
                generation,
                now,
            ),
        }
    }
}

/// `Degraded` from the concerns: True when any is, with the reason of the first of
/// [`Concern::ALL`] that is and a message naming each (`RolloutFailed: …; StoreUnavailable: …`);
/// False with `AsExpected` otherwise.
pub fn summarize(conds: &mut Vec<Condition>, generation: Option<i64>, now: Timestamp) {
    let failing: Vec<&Condition> = Concern::ALL
        .iter()
        .filter_map(|c| find(conds, c.type_()).filter(|c| c.status == "True"))
        .collect();
    let (status, reason, message) = match failing.first() {
        None => (false, AS_EXPECTED.to_owned(), String::new()),
        Some(first) => (
            true,
            first.reason.clone(),
            failing
                .iter()
                .map(|c| format!("{}: {}", c.type_, c.message))
                .collect::<Vec<_>>()
                .join("; "),
        ),
    };
    // An observedGeneration alone is no news: the summary changes with its concerns only.
    let unchanged = find(conds, DEGRADED).is_some_and(|d| {
        (d.status == "True") == status && d.reason == reason && d.message == message
    });
    if !unchanged {
        set_condition(conds, DEGRADED, status, &reason, &message, generation, now);
    }
}

impl Pass<'_> {
    /// Sets `concern` True with `reason` and `message` and no event: for a failure the caller
    /// announces itself (a run's decision has its own event).
    pub(super) fn report(&mut self, concern: Concern, reason: &str, message: &str) {
        let generation = self.sm.metadata.generation;
        set_condition(
            &mut self.status.conditions,
            concern.type_(),
            true,
            reason,
            message,
            generation,
            self.now,
        );
    }

    /// Sets `concern` True with `reason` and `message`, and a Warning event unless it said
    /// exactly that already: a problem that stays from pass to pass is announced once (each
    /// event is a write).
    pub(super) fn warn(
        &mut self,
        concern: Concern,
        reason: &'static str,
        action: &'static str,
        message: &str,
    ) {
        let known = find(&self.status.conditions, concern.type_())
            .is_some_and(|c| c.status == "True" && c.reason == reason && c.message == message);
        if !known {
            info!(model = %self.name, condition = concern.type_(), reason, %message, "condition set");
            self.emit(EventType::Warning, reason, action, message.to_owned());
        }
        self.report(concern, reason, message);
    }

    /// [`Pass::warn`], keeping the first message while the concern stays True for `reason`:
    /// for an outage, whose error's wording (retry counts, elapsed times) changes with every
    /// try and would make each pass a status write.
    pub(super) fn warn_once(
        &mut self,
        concern: Concern,
        reason: &'static str,
        action: &'static str,
        message: &str,
    ) {
        if !self.failing_with(concern, reason) {
            self.warn(concern, reason, action, message);
        }
    }

    /// Sets `concern` False with `reason` and `message` when it is True. A False one keeps its
    /// words: a step that finds all well on every pass changes nothing.
    pub(super) fn clear(&mut self, concern: Concern, reason: &str, message: &str) {
        if failing(&self.status.conditions, concern, None) {
            self.resolve(concern, reason, message);
        }
    }

    /// Sets `concern` False with `reason` and `message` whatever it said: for a step whose every
    /// outcome is a decision written anyway (a run decided), so the condition names the latest.
    pub(super) fn resolve(&mut self, concern: Concern, reason: &str, message: &str) {
        if failing(&self.status.conditions, concern, None) {
            info!(model = %self.name, condition = concern.type_(), reason, %message, "condition cleared");
        }
        let generation = self.sm.metadata.generation;
        set_condition(
            &mut self.status.conditions,
            concern.type_(),
            false,
            reason,
            message,
            generation,
            self.now,
        );
    }

    /// [`Pass::clear`], only when the concern is True for one of `reasons`: several problems of
    /// one step share its condition, and fixing one does not fix the others.
    pub(super) fn clear_from(
        &mut self,
        concern: Concern,
        reasons: &[&str],
        reason: &str,
        message: &str,
    ) {
        if reasons.iter().any(|r| self.failing_with(concern, r)) {
            self.clear(concern, reason, message);
        }
    }

    /// Whether `concern` is True for `reason`.
    pub(super) fn failing_with(&self, concern: Concern, reason: &str) -> bool {
        failing(&self.status.conditions, concern, Some(reason))
    }

    /// Recomputes `Degraded` from the concerns (before every status write).
    pub(super) fn summarize(&mut self) {
        let generation = self.sm.metadata.generation;
        summarize(&mut self.status.conditions, generation, self.now);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn get<'a>(conds: &'a [Condition], type_: &str) -> &'a Condition {
        find(conds, type_).unwrap()
    }

    #[test]
    fn conditions_keep_their_transition_time_until_they_flip() {
        let (t0, t1) = (t("2026-01-01T00:00:00Z"), t("2026-01-02T00:00:00Z"));
        let mut conds = Vec::new();
        set_condition(&mut conds, "RunFailed", true, "JobFailed", "a", Some(1), t0);
        set_condition(
            &mut conds,
            "RunFailed",
            true,
            "MetricsMissing",
            "b",
            Some(2),
            t1,
        );
        assert_eq!(
            (conds[0].last_transition_time.0, conds[0].reason.as_str()),
            (t0, "MetricsMissing")
        );
        set_condition(
            &mut conds,
            "RunFailed",
            false,
            "RunEvaluated",
            "",
            Some(2),
            t1,
        );
        assert_eq!(
            (
                conds.len(),
                conds[0].last_transition_time.0,
                conds[0].status.as_str()
            ),
            (1, t1, "False")
        );
    }

    #[test]
    fn every_concern_starts_false() {
        let now = t("2026-01-01T00:00:00Z");
        let mut conds = Vec::new();
        init_concerns(&mut conds, Some(1), now);
        summarize(&mut conds, Some(1), now);
        for c in Concern::ALL {
            assert_eq!(get(&conds, c.type_()).status, "False", "{c:?}");
            assert_eq!(get(&conds, c.type_()).reason, AS_EXPECTED);
        }
        assert_eq!(get(&conds, DEGRADED).status, "False");
        // A second look changes nothing.
        let before = conds.clone();
        init_concerns(&mut conds, Some(2), t("2026-01-02T00:00:00Z"));
        summarize(&mut conds, Some(2), t("2026-01-02T00:00:00Z"));
        assert_eq!(conds, before);
    }

    #[test]
    fn degraded_names_every_failing_concern_and_leads_with_the_most_important() {
        let now = t("2026-01-01T00:00:00Z");
        let mut conds = Vec::new();
        init_concerns(&mut conds, Some(1), now);
        set_condition(
            &mut conds,
            "StoreUnavailable",
            true,
            "StorageUnreachable",
            "the store is down",
            Some(1),
            now,
        );
        set_condition(
            &mut conds,
            "RolloutFailed",
            true,
            "RolloutFailed",
            "pods crash",
            Some(1),
            now,
        );
        summarize(&mut conds, Some(1), now);
        let d = get(&conds, DEGRADED);
        assert_eq!(
            (d.status.as_str(), d.reason.as_str()),
            ("True", "RolloutFailed")
        );
        assert_eq!(
            d.message,
            "RolloutFailed: pods crash; StoreUnavailable: the store is down"
        );
        // One clears: the other stays, and Degraded with it.
        let later = t("2026-01-02T00:00:00Z");
        set_condition(
            &mut conds,
            "RolloutFailed",
            false,
            "RolloutComplete",
            "",
            Some(1),
            later,
        );
        summarize(&mut conds, Some(1), later);
        let d = get(&conds, DEGRADED);
        assert_eq!(
            (d.status.as_str(), d.reason.as_str(), d.message.as_str()),
            (
                "True",
                "StorageUnreachable",
                "StoreUnavailable: the store is down"
            )
        );
        assert_eq!(d.last_transition_time.0, now, "still True: no transition");
        set_condition(
            &mut conds,
            "StoreUnavailable",
            false,
            "StoreReachable",
            "",
            Some(1),
            later,
        );
        summarize(&mut conds, Some(1), later);
        let d = get(&conds, DEGRADED);
        assert_eq!(
            (d.status.as_str(), d.reason.as_str()),
            ("False", AS_EXPECTED)
        );
        assert_eq!(d.last_transition_time.0, later);
    }

    #[test]
    fn the_summary_ignores_a_new_generation_alone() {
        let now = t("2026-01-01T00:00:00Z");
        let mut conds = Vec::new();
        init_concerns(&mut conds, Some(1), now);
        summarize(&mut conds, Some(1), now);
        let before = conds.clone();
        summarize(&mut conds, Some(7), t("2026-01-03T00:00:00Z"));
        assert_eq!(conds, before);
    }

    #[test]
    fn a_degraded_condition_of_an_earlier_version_becomes_its_concern() {
        let then = t("2025-12-01T00:00:00Z");
        let now = t("2026-01-01T00:00:00Z");
        let mut conds = Vec::new();
        set_condition(
            &mut conds,
            DEGRADED,
            true,
            "ObjectNotOwned",
            "a Service named homer-inference exists",
            Some(3),
            then,
        );
        init_concerns(&mut conds, Some(3), now);
        summarize(&mut conds, Some(3), now);
        let a = get(&conds, "ApplyFailed");
        assert_eq!(
            (
                a.status.as_str(),
                a.reason.as_str(),
                a.last_transition_time.0
            ),
            ("True", "ObjectNotOwned", then)
        );
        assert_eq!(get(&conds, "RunFailed").status, "False");
        let d = get(&conds, DEGRADED);
        assert_eq!(
            (
                d.status.as_str(),
                d.reason.as_str(),
                d.last_transition_time.0
            ),
            ("True", "ObjectNotOwned", then)
        );
        assert_eq!(
            d.message,
            "ApplyFailed: a Service named homer-inference exists"
        );
        for (reason, message, concern) in [
            ("JobFailed", "", Concern::RunFailed),
            ("QueueTimeout", "", Concern::RunFailed),
            ("JobRefused", "", Concern::RunBlocked),
            ("InvalidSchedule", "", Concern::RunBlocked),
            (
                "StorageUnreachable",
                "cannot read the result of run r yet",
                Concern::StoreUnavailable,
            ),
            (
                "StorageUnreachable",
                "gave up reading the result of run r",
                Concern::RunFailed,
            ),
            ("InvalidSpec", "", Concern::SpecInvalid),
            ("RolloutFailed", "", Concern::RolloutFailed),
        ] {
            assert_eq!(Concern::of_legacy(reason, message), Some(concern));
        }
        assert_eq!(Concern::of_legacy("RunEvaluated", ""), None);
    }
}
