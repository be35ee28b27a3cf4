//! Retention: once after each decided run, delete the oldest runs under the model's runs
//! prefix beyond `spec.retention.keepRuns`. Never the champion's, the previous champion's or
//! the run in flight; only the per-model prefix (the shared `runs/` of older versions is left
//! alone: other models' runs may live there).

use std::collections::{BTreeMap, BTreeSet};

use artifacts::layout;
use jiff::Timestamp;
use tracing::{info, warn};

use super::{Error, Pass};
use crate::crd::RetentionStatus;

/// A run in the store: its objects and when the newest of them was written.
#[derive(Debug, Default)]
struct StoredRun {
    keys: Vec<String>,
    newest: Option<Timestamp>,
}

impl Pass<'_> {
    /// Looks once per decided run (`status.retention.afterRun`): a store listing is not for
    /// every pass. A store that cannot be read is skipped until the next pass; it is only
    /// housekeeping.
    pub(super) async fn retention(&mut self) -> Result<(), Error> {
        let Some(keep) = self.sm.spec.retention.keep_runs else {
            return Ok(());
        };
        let Some(last) = self
            .status
            .last_run
            .as_ref()
            .filter(|r| r.decision.is_some())
        else {
            return Ok(());
        };
        let after_run = last.run_id.clone();
        if self
            .status
            .retention
            .as_ref()
            .is_some_and(|r| r.after_run == after_run)
        {
            return Ok(());
        }
        let store = match self.store().await? {
            Ok(store) => store,
            Err(e) => {
                warn!(model = %self.name, error = %e, "retention skipped: store unreachable");
                return Ok(());
            }
        };
        let prefix = layout::model_runs(&self.ns, &self.name);
        let objects = match store.list(&prefix).await {
            Ok(objects) => objects,
            Err(e) => {
                warn!(model = %self.name, error = %e, "retention skipped: cannot list the runs");
                return Ok(());
            }
        };
        let runs = group_by_run(&prefix, objects);
        let doomed = to_delete(&runs, keep as usize, &self.protected());
        let dry_run = self.sm.spec.retention.dry_run;
        let mut deleted = 0u32;
        if !dry_run {
            for run in &doomed {
                match delete_run(&store, &runs[run.as_str()].keys).await {
                    Ok(()) => {
                        info!(model = %self.name, run = %run, "old run deleted from the store");
                        deleted += 1;
                    }
                    Err(e) => {
                        warn!(model = %self.name, run = %run, error = %e, "cannot delete an old run; retried after the next run");
                    }
                }
            }
        }
        self.status.retention = Some(RetentionStatus {
            after_run,
            stored_runs: runs.len() as u32,
            deleted_runs: deleted,
            would_delete: if dry_run { doomed } else { Vec::new() },
        });
        Ok(())
    }

    /// Runs that stay whatever their age.
    fn protected(&self) -> BTreeSet<String> {
        let s = &self.status;
        s.champion
            .iter()
            .chain(s.previous_champion.iter())
            .map(|c| c.run_id.clone())
            .chain(
                s.last_run
                    .iter()
                    .filter(|r| r.decision.is_none())
                    .map(|r| r.run_id.clone()),
            )
            .collect()
    }
}

/// `<prefix>/<run>/…` objects by run; files directly under the prefix (`history.json`) are
/// not runs.
fn group_by_run(prefix: &str, objects: Vec<artifacts::ObjectMeta>) -> BTreeMap<String, StoredRun> {
    let mut runs: BTreeMap<String, StoredRun> = BTreeMap::new();
    for meta in objects {
        let key = meta.location.to_string();
        let Some(rest) = key.strip_prefix(prefix).map(|r| r.trim_start_matches('/')) else {
            continue;
        };
        let Some((run, _)) = rest.split_once('/') else {
            continue;
        };
        let entry = runs.entry(run.to_owned()).or_default();
        let modified = Timestamp::from_millisecond(meta.last_modified.timestamp_millis()).ok();
        entry.newest = entry.newest.max(modified);
        entry.keys.push(key);
    }
    runs
}

/// The runs beyond the newest `keep`, oldest first, without the protected ones.
fn to_delete(
    runs: &BTreeMap<String, StoredRun>,
    keep: usize,
    protected: &BTreeSet<String>,
) -> Vec<String> {
    let mut by_age: Vec<(&String, Option<Timestamp>)> =
        runs.iter().map(|(id, r)| (id, r.newest)).collect();
    // Newest first; the run id (which starts with the slot's time) breaks ties.
    by_age.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| b.0.cmp(a.0)));
    let mut doomed: Vec<String> = by_age
        .into_iter()
        .skip(keep)
        .map(|(id, _)| id.clone())
        .filter(|id| !protected.contains(id))
        .collect();
    doomed.reverse();
    doomed
}

async fn delete_run(
    store: &artifacts::Storage,
    keys: &[String],
) -> Result<(), artifacts::StorageError> {
    for key in keys {
        store.delete(key).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs(ages: &[(&str, i64)]) -> BTreeMap<String, StoredRun> {
        ages.iter()
            .map(|(id, t)| {
                (
                    (*id).to_owned(),
                    StoredRun {
                        keys: vec![format!("p/{id}/metrics.json")],
                        newest: Timestamp::from_second(*t).ok(),
                    },
                )
            })
            .collect()
    }

    #[test]
    fn the_oldest_beyond_keep_go_but_never_a_protected_run() {
        let r = runs(&[("a", 1), ("b", 2), ("c", 3), ("d", 4), ("e", 5)]);
        let none = BTreeSet::new();
        assert_eq!(to_delete(&r, 2, &none), ["a", "b", "c"]);
        let champion: BTreeSet<String> = ["a".to_owned()].into();
        assert_eq!(to_delete(&r, 2, &champion), ["b", "c"]);
        assert!(to_delete(&r, 5, &none).is_empty());
    }
}
