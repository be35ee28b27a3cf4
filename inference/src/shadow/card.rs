//! The `shadow` part of the model card: every pod's report on the candidate, merged, so the
//! page shows the whole stage and not one pod's slice of it. Read from the store at most once
//! per cache period; this pod's own counts stand in when the store cannot be read.

use std::time::{Duration, Instant};

use artifacts::live::{ShadowReport, run_dir_of, shadow_reports_in};
use artifacts::{Storage, StorageError};

use super::Candidate;
use crate::card::ShadowCard;

/// How long a card request may wait for the store before this pod's own counts are shown.
const STORE_BUDGET: Duration = Duration::from_secs(2);
/// The longest a merged view is reused.
pub const MAX_CARD_CACHE: Duration = Duration::from_secs(5);

/// The last merged view, per stage.
#[derive(Debug)]
pub(crate) struct CardCache {
    ttl: std::sync::Mutex<Duration>,
    // A tokio mutex: concurrent card requests wait for one store read instead of each making
    // their own.
    cached: tokio::sync::Mutex<Option<(Instant, ShadowCard)>>,
}

impl Default for CardCache {
    fn default() -> Self {
        Self {
            ttl: std::sync::Mutex::new(MAX_CARD_CACHE),
            cached: tokio::sync::Mutex::new(None),
        }
    }
}

impl CardCache {
    pub fn set_ttl(&self, ttl: Duration) {
        *self.ttl.lock().unwrap_or_else(|p| p.into_inner()) = ttl.min(MAX_CARD_CACHE);
    }

    fn ttl(&self) -> Duration {
        *self.ttl.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The stage as the card shows it.
    pub async fn get(&self, candidate: &Candidate) -> ShadowCard {
        let mut cached = self.cached.lock().await;
        if let Some((at, card)) = cached.as_ref()
            && at.elapsed() < self.ttl()
            && same_stage(card, candidate)
        {
            return card.clone();
        }
        let card = build(candidate).await;
        *cached = Some((Instant::now(), card.clone()));
        card
    }
}

fn same_stage(card: &ShadowCard, candidate: &Candidate) -> bool {
    let a = candidate.assignment();
    card.run_id == a.run_id && card.stage_started_at == a.started_at.to_rfc3339()
}

async fn build(candidate: &Candidate) -> ShadowCard {
    let merged = match tokio::time::timeout(STORE_BUDGET, merged_reports(candidate)).await {
        Ok(Ok(Some(merged))) => Some(merged),
        Ok(Ok(None)) => None,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "cannot read the shadow reports; the card shows this pod's counts");
            None
        }
        Err(_) => {
            tracing::debug!("the shadow reports took too long; the card shows this pod's counts");
            None
        }
    };
    let (report, pods) = merged.unwrap_or_else(|| (candidate.report(), 0));
    card_of(candidate, &report, pods)
}

/// Every pod's report on this stage, merged, with the number of pods; `None` when there is
/// none yet.
async fn merged_reports(
    candidate: &Candidate,
) -> Result<Option<(ShadowReport, usize)>, StorageError> {
    let a = candidate.assignment();
    let storage = Storage::open(&shadow_reports_in(run_dir_of(&a.model_uri)))?;
    let mut merged: Option<ShadowReport> = None;
    let mut pods = 0;
    for meta in storage.list("").await? {
        let key = meta.location.to_string();
        if !key.ends_with(".json") {
            continue;
        }
        let report: ShadowReport = match storage.get_json(&key).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(%key, error = %e, "skipping an unreadable shadow report");
                continue;
            }
        };
        // Reports of another candidate, or from before this stage began, do not count.
        if report.candidate_run_id != a.run_id || report.updated_at < a.started_at {
            continue;
        }
        pods += 1;
        match &mut merged {
            Some(m) => m.merge(&report),
            None => merged = Some(report),
        }
    }
    Ok(merged.map(|m| (m, pods)))
}

fn card_of(candidate: &Candidate, r: &ShadowReport, pods: usize) -> ShadowCard {
    let a = candidate.assignment();
    let finite = |v: Option<f64>| v.filter(|v| v.is_finite());
    ShadowCard {
        run_id: a.run_id.clone(),
        stage_started_at: a.started_at.to_rfc3339(),
        sample_rate: candidate.sample_rate(),
        pods,
        sampled: r.sampled,
        scored: r.scored,
        dropped: r.dropped,
        faces: r.faces,
        disagreements: r.disagreements,
        disagreement_rate: (r.faces > 0).then(|| r.disagreements as f64 / r.faces as f64),
        errors: r.errors,
        champion_p95_ms: finite(r.champion_latency.quantile_ms(0.95)),
        candidate_p95_ms: finite(r.candidate_latency.quantile_ms(0.95)),
        load_error: r.load_error.as_deref().map(redact_urls),
    }
}

/// `text` without storage URLs: the card is public and says nothing about where the store is.
pub fn redact_urls(text: &str) -> String {
    text.split(' ')
        .map(|word| {
            let bare = word.trim_matches(|c: char| "\"'(),;".contains(c));
            if bare.contains("://") {
                word.replace(bare, "<store>")
            } else {
                word.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted_from_load_errors() {
        assert_eq!(
            redact_urls("s3://b/runs/r2/model.onnx has sha256:aa, but metrics.json says sha256:bb"),
            "<store> has sha256:aa, but metrics.json says sha256:bb"
        );
        assert_eq!(
            redact_urls(
                "no ONNX model at file:///x/model.onnx (derived from MODEL_URI \"file:///x/m\")"
            ),
            "no ONNX model at <store> (derived from MODEL_URI \"<store>\")"
        );
    }
}
