//! Data-aware triggers: a run when the dataset changed and settled
//! (`spec.triggers.datasetChange`), no run at a schedule slot when it did not
//! (`spec.schedule.skipIfUnchanged`).
//!
//! The operator only lists the dataset prefix: the fingerprint over keys, sizes and ETags is
//! the one the trainer records in `metrics.json` (`listing_fingerprint`), so "unchanged" means
//! what the trainer would have read. `status.dataset` is written when the listing changes,
//! not on every look, so a quiet dataset costs one LIST per poll and no write.

use std::time::Duration;

use artifacts::RunMetrics;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::events::EventType;
use tracing::{info, warn};

use super::{Error, Pass};
use crate::crd::{DatasetChangeTrigger, DatasetStatus, HistoryEntry, Verdict};

/// How soon a look at the dataset that failed (store down) is tried again.
const LOOK_RETRY: Duration = Duration::from_secs(60);

/// What a data change says about starting a run now.
#[derive(Debug, Clone, PartialEq)]
pub enum DataChange {
    /// The listing is the one the latest run trained on (or nothing was trained yet).
    Unchanged,
    /// Changed, but still changing: it must stay as it is until `until`.
    Settling { until: Timestamp },
    /// Changed and settled, but the previous run started too recently: not before `until`.
    TooSoon { until: Timestamp },
    /// Changed and settled: start the run for this listing.
    Due { fingerprint: String },
}

/// The settle and debounce rule, as a pure function of what the status recorded.
pub fn data_change(
    trigger: &DatasetChangeTrigger,
    seen: &DatasetStatus,
    last_start: Option<Timestamp>,
    now: Timestamp,
) -> DataChange {
    let Some(trained) = &seen.trained else {
        return DataChange::Unchanged;
    };
    if *trained == seen.fingerprint {
        return DataChange::Unchanged;
    }
    let settled_at = seen.seen_since.0 + SignedDuration::from_secs(trigger.settle_seconds.max(0));
    if now < settled_at {
        return DataChange::Settling { until: settled_at };
    }
    if let Some(last) = last_start {
        let allowed_at = last + SignedDuration::from_secs(trigger.min_interval_seconds.max(0));
        if now < allowed_at {
            return DataChange::TooSoon { until: allowed_at };
        }
    }
    DataChange::Due {
        fingerprint: seen.fingerprint.clone(),
    }
}

/// `status.dataset` after seeing `fingerprint` at `now`: unchanged (so not written) when the
/// listing is the one already recorded; the settle clock restarts when it differs.
pub fn observe_listing(
    previous: Option<&DatasetStatus>,
    fingerprint: String,
    now: Timestamp,
) -> DatasetStatus {
    match previous {
        Some(p) if p.fingerprint == fingerprint => p.clone(),
        Some(p) => DatasetStatus {
            fingerprint,
            seen_since: Time(now),
            ..p.clone()
        },
        None => DatasetStatus {
            fingerprint,
            seen_since: Time(now),
            trained: None,
            skipped_slot: None,
        },
    }
}

/// Whether the newest history entry is a skip, which the next one replaces: a dataset that
/// stays the same for months must not push every real decision out of the history.
fn collapse_skips(history: &mut Vec<HistoryEntry>) {
    if history
        .first()
        .is_some_and(|h| h.decision == Verdict::Skipped)
    {
        history.remove(0);
    }
}

/// What the champion trained on, as far as the store says.
enum ChampionData {
    /// Its metrics.json records this listing.
    Listing(String),
    /// Not known (no champion, an older run without a listing fingerprint, no metrics.json):
    /// the slot runs.
    Unknown,
}

impl Pass<'_> {
    /// Lists the dataset and records what it saw in `status.dataset`. `None` when the store
    /// cannot be listed (said in the log; looked at again within a minute).
    pub(super) async fn look_at_dataset(&mut self) -> Result<Option<String>, Error> {
        let store = match self.store().await? {
            Ok(store) => store,
            Err(e) => {
                warn!(model = %self.name, error = %e, "cannot open the store to list the dataset");
                self.requeue_within(LOOK_RETRY);
                return Ok(None);
            }
        };
        let dataset = self.sm.spec.dataset.clone();
        let fingerprint = match artifacts::dataset_fingerprint(&store, &dataset).await {
            Ok(fp) => fp,
            Err(e) => {
                warn!(model = %self.name, %dataset, error = %e, "cannot list the dataset");
                self.requeue_within(LOOK_RETRY);
                return Ok(None);
            }
        };
        self.looked("dataset");
        let seen = observe_listing(self.status.dataset.as_ref(), fingerprint.clone(), self.now);
        if self.status.dataset.as_ref() != Some(&seen) {
            info!(model = %self.name, %dataset, %fingerprint, "the dataset listing changed");
        }
        self.status.dataset = Some(seen);
        Ok(Some(fingerprint))
    }

    /// With `triggers.datasetChange`: looks at the dataset when its poll is due, and says
    /// whether a change calls for a run now. Asks for the next pass when the poll, the
    /// settle time or the minimum interval comes due.
    pub(super) async fn dataset_change(
        &mut self,
        last_start: Option<Timestamp>,
    ) -> Result<Option<String>, Error> {
        let Some(trigger) = self.sm.spec.triggers.dataset_change.clone() else {
            return Ok(None);
        };
        let poll = Duration::from_secs(trigger.poll_seconds.max(10).unsigned_abs());
        if self.poll_due("dataset", poll) && self.look_at_dataset().await?.is_some() {
            self.requeue_within(poll);
        }
        self.adopt_trained_listing().await?;
        let Some(seen) = &self.status.dataset else {
            return Ok(None);
        };
        Ok(match data_change(&trigger, seen, last_start, self.now) {
            DataChange::Unchanged => None,
            DataChange::Settling { until } | DataChange::TooSoon { until } => {
                self.requeue_at(until);
                None
            }
            DataChange::Due { fingerprint } => Some(fingerprint),
        })
    }

    /// A model that had runs before the trigger was set has no `trained` listing yet: take
    /// the last run's from its metrics.json, or else today's listing (nothing changed since
    /// the trigger was set).
    async fn adopt_trained_listing(&mut self) -> Result<(), Error> {
        let Some(seen) = self.status.dataset.clone() else {
            return Ok(());
        };
        if seen.trained.is_some() {
            return Ok(());
        }
        let Some(last) = self.status.last_run.clone() else {
            // Nothing trained yet: the bootstrap run records what it trains on.
            return Ok(());
        };
        let trained = match last.model_uri.as_deref() {
            Some(uri) => match self.listing_of(uri).await? {
                ChampionData::Listing(fp) => fp,
                ChampionData::Unknown => seen.fingerprint.clone(),
            },
            None => seen.fingerprint.clone(),
        };
        if let Some(d) = self.status.dataset.as_mut() {
            d.trained = Some(trained);
        }
        Ok(())
    }

    /// The dataset listing recorded in the metrics.json beside the weights at `model_uri`.
    async fn listing_of(&mut self, model_uri: &str) -> Result<ChampionData, Error> {
        let Ok(store) = self.store().await? else {
            return Ok(ChampionData::Unknown);
        };
        let Some(key) = store
            .key_of(model_uri)
            .map(artifacts::layout::metrics_beside)
        else {
            return Ok(ChampionData::Unknown);
        };
        Ok(match store.get_json::<RunMetrics>(&key).await {
            Ok(m) => m
                .listing_fingerprint
                .map_or(ChampionData::Unknown, ChampionData::Listing),
            Err(e) => {
                info!(model = %self.name, %key, error = %e, "cannot read the listing a run trained on");
                ChampionData::Unknown
            }
        })
    }

    /// With `schedule.skipIfUnchanged`, at a due `slot`: whether the dataset is the one the
    /// champion trained on, in which case the slot is recorded as skipped. `None` when the
    /// store cannot say (the slot waits for it).
    pub(super) async fn skip_unchanged_slot(
        &mut self,
        slot: Timestamp,
        run_id: &str,
    ) -> Result<Option<bool>, Error> {
        let Some(champion) = self.status.champion.clone() else {
            return Ok(Some(false));
        };
        let Some(now) = self.look_at_dataset().await? else {
            return Ok(None);
        };
        let ChampionData::Listing(trained) = self.listing_of(&champion.model_uri).await? else {
            return Ok(Some(false));
        };
        if trained != now {
            return Ok(Some(false));
        }
        let message = format!(
            "DataUnchanged: the dataset {} is as champion {} trained on it ({}); the slot of {slot} starts no run",
            self.sm.spec.dataset,
            champion.run_id,
            short(&now)
        );
        info!(model = %self.name, run = %run_id, "{message}");
        collapse_skips(&mut self.status.history);
        self.record(HistoryEntry {
            run_id: run_id.to_owned(),
            decision: Verdict::Skipped,
            reason: message.clone(),
            accuracy: None,
            champion_accuracy: None,
            dry_run: false,
            decided_at: Time(self.now),
        });
        if let Some(d) = self.status.dataset.as_mut() {
            d.skipped_slot = Some(Time(slot));
        }
        self.emit(EventType::Normal, "RunSkipped", "Schedule", message);
        Ok(Some(true))
    }

    /// A run is starting on the listing last seen: until its metrics.json says what it read,
    /// that is what it trains on, so the same change does not start a second run.
    pub(super) fn training_on_seen_listing(&mut self) {
        if let Some(d) = self.status.dataset.as_mut() {
            d.trained = Some(d.fingerprint.clone());
        }
    }

    /// A decided run's metrics.json says which listing it really read (the data may have
    /// changed between the operator's look and the trainer's).
    pub(super) fn trained_on(&mut self, listing: Option<&str>) {
        if let (Some(d), Some(listing)) = (self.status.dataset.as_mut(), listing) {
            d.trained = Some(listing.to_owned());
        }
    }
}

/// `sha256:0123456789…` for messages.
fn short(fingerprint: &str) -> String {
    let cut = fingerprint
        .char_indices()
        .nth(19)
        .map_or(fingerprint.len(), |(i, _)| i);
    format!("{}…", &fingerprint[..cut])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn seen(fingerprint: &str, since: &str, trained: Option<&str>) -> DatasetStatus {
        DatasetStatus {
            fingerprint: fingerprint.into(),
            seen_since: Time(ts(since)),
            trained: trained.map(Into::into),
            skipped_slot: None,
        }
    }

    fn trigger(settle: i64, min_interval: i64) -> DatasetChangeTrigger {
        DatasetChangeTrigger {
            poll_seconds: 60,
            settle_seconds: settle,
            min_interval_seconds: min_interval,
        }
    }

    #[test]
    fn a_change_starts_a_run_once_settled_and_not_too_soon() {
        let t = trigger(600, 3600);
        let last = Some(ts("2026-12-01T00:00:00Z"));
        let changed = seen("sha256:b", "2026-12-01T02:00:00Z", Some("sha256:a"));
        // Nothing trained yet, or the same listing: nothing to do.
        assert_eq!(
            data_change(
                &t,
                &seen("sha256:b", "2026-12-01T02:00:00Z", None),
                last,
                ts("2026-12-02T00:00:00Z")
            ),
            DataChange::Unchanged
        );
        assert_eq!(
            data_change(
                &t,
                &seen("sha256:a", "2026-12-01T02:00:00Z", Some("sha256:a")),
                last,
                ts("2026-12-02T00:00:00Z")
            ),
            DataChange::Unchanged
        );
        // Settling for ten minutes after it was first seen.
        assert_eq!(
            data_change(&t, &changed, last, ts("2026-12-01T02:05:00Z")),
            DataChange::Settling {
                until: ts("2026-12-01T02:10:00Z")
            }
        );
        assert_eq!(
            data_change(&t, &changed, last, ts("2026-12-01T02:10:00Z")),
            DataChange::Due {
                fingerprint: "sha256:b".into()
            }
        );
        // A run that started 30 minutes ago holds it back for the rest of the hour.
        assert_eq!(
            data_change(
                &t,
                &changed,
                Some(ts("2026-12-01T01:45:00Z")),
                ts("2026-12-01T02:15:00Z")
            ),
            DataChange::TooSoon {
                until: ts("2026-12-01T02:45:00Z")
            }
        );
    }

    #[test]
    fn every_new_listing_restarts_the_settle_clock() {
        let t0 = ts("2026-12-01T00:00:00Z");
        let t1 = ts("2026-12-01T00:05:00Z");
        let first = observe_listing(None, "sha256:a".into(), t0);
        assert_eq!(first.seen_since.0, t0);
        // The same listing again: exactly what is recorded, so nothing is written.
        assert_eq!(observe_listing(Some(&first), "sha256:a".into(), t1), first);
        let mut trained = first.clone();
        trained.trained = Some("sha256:a".into());
        trained.skipped_slot = Some(Time(t0));
        let next = observe_listing(Some(&trained), "sha256:b".into(), t1);
        assert_eq!(next.seen_since.0, t1);
        // What was trained and skipped stays.
        assert_eq!(next.trained.as_deref(), Some("sha256:a"));
        assert_eq!(next.skipped_slot, Some(Time(t0)));
    }

    #[test]
    fn consecutive_skips_keep_one_history_entry() {
        let entry = |decision| HistoryEntry {
            run_id: "r".into(),
            decision,
            reason: String::new(),
            accuracy: None,
            champion_accuracy: None,
            dry_run: false,
            decided_at: Time(ts("2026-12-01T00:00:00Z")),
        };
        let mut history = vec![entry(Verdict::Skipped), entry(Verdict::Promote)];
        collapse_skips(&mut history);
        assert_eq!(history.len(), 1);
        collapse_skips(&mut history);
        assert_eq!(history.len(), 1, "a decision is never collapsed");
    }

    #[test]
    fn messages_show_a_short_fingerprint() {
        assert_eq!(
            short(&format!("sha256:{}", "ab".repeat(32))),
            "sha256:abababababab…"
        );
        assert_eq!(short("x"), "x…");
    }
}
