//! The promotion gate: does a freshly trained model replace the champion?
//!
//! Pure and shared: the trainer's embedded `--promote` mode and the operator apply exactly
//! this function, so a decision can be replayed from `metrics.json` alone.

use serde::{Deserialize, Serialize};

use crate::RunMetrics;

/// What a challenger must achieve.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PromotionPolicy {
    /// Absolute accuracy the challenger must beat the re-scored champion by. With the default
    /// of 0 a challenger must be strictly better; a tie keeps the champion in place.
    pub min_improvement: f64,
    /// A floor no promoted model may be below, champion or not.
    pub min_accuracy: f64,
}

impl Default for PromotionPolicy {
    fn default() -> Self {
        Self {
            min_improvement: 0.0,
            min_accuracy: 0.0,
        }
    }
}

/// The gate's verdict with a sentence a human can read in status, events and logs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "decision", content = "reason")]
pub enum Decision {
    /// There was no champion: the challenger becomes the first.
    FirstModel(String),
    /// The challenger beat the champion.
    Promote(String),
    /// The champion stays.
    Reject(String),
}

impl Decision {
    pub fn promotes(&self) -> bool {
        !matches!(self, Decision::Reject(_))
    }

    /// `FirstModel`, `Promote` or `Reject`.
    pub fn kind(&self) -> &'static str {
        match self {
            Decision::FirstModel(_) => "FirstModel",
            Decision::Promote(_) => "Promote",
            Decision::Reject(_) => "Reject",
        }
    }

    pub fn reason(&self) -> &str {
        match self {
            Decision::FirstModel(r) | Decision::Promote(r) | Decision::Reject(r) => r,
        }
    }
}

impl std::fmt::Display for Decision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind(), self.reason())
    }
}

fn pct(x: f64) -> String {
    format!("{:.2}%", x * 100.0)
}

/// Decides on a challenger whose metrics carry the champion's re-scored accuracy (when a
/// champion exists). Comparing on the challenger's own test split keeps the comparison fair
/// when the dataset changed between runs.
pub fn decide(policy: &PromotionPolicy, challenger: &RunMetrics) -> Decision {
    let acc = challenger.test_accuracy;
    if acc < policy.min_accuracy {
        return Decision::Reject(format!(
            "test accuracy {} is below the floor of {}",
            pct(acc),
            pct(policy.min_accuracy)
        ));
    }
    let (Some(champion), Some(champion_acc)) = (
        challenger.champion_run_id.as_deref(),
        challenger.champion_test_accuracy,
    ) else {
        return Decision::FirstModel(format!(
            "no champion yet; first model with test accuracy {}",
            pct(acc)
        ));
    };
    let gain = acc - champion_acc;
    if gain > policy.min_improvement {
        Decision::Promote(format!(
            "{} beats champion {champion} at {} by {:+.2} points (needed more than {:+.2})",
            pct(acc),
            pct(champion_acc),
            gain * 100.0,
            policy.min_improvement * 100.0
        ))
    } else {
        Decision::Reject(format!(
            "{} does not beat champion {champion} at {} by more than {:+.2} points (gain {:+.2})",
            pct(acc),
            pct(champion_acc),
            policy.min_improvement * 100.0,
            gain * 100.0
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::tests::sample;

    fn challenger(acc: f64, champion: Option<f64>) -> RunMetrics {
        let mut m = sample();
        m.test_accuracy = acc;
        m.champion_run_id = champion.map(|_| "champ".to_owned());
        m.champion_test_accuracy = champion;
        m
    }

    #[test]
    fn decision_table() {
        let default = PromotionPolicy::default();
        let strict = PromotionPolicy {
            min_improvement: 0.02,
            min_accuracy: 0.5,
        };
        #[rustfmt::skip]
        let table: &[(PromotionPolicy, f64, Option<f64>, &str)] = &[
            (default, 0.70, None,       "FirstModel"),
            (default, 0.90, Some(0.80), "Promote"),
            (default, 0.80, Some(0.80), "Reject"),   // a tie keeps the champion
            (default, 0.70, Some(0.80), "Reject"),
            (strict,  0.40, None,       "Reject"),   // floor applies to the first model too
            (strict,  0.81, Some(0.80), "Reject"),   // +1 point < required +2
            (strict,  0.83, Some(0.80), "Promote"),
            (strict,  0.45, Some(0.30), "Reject"),   // better, but below the floor
            (strict,  0.50, None,       "FirstModel"),
        ];
        for (policy, acc, champ, want) in table {
            let d = decide(policy, &challenger(*acc, *champ));
            assert_eq!(
                d.kind(),
                *want,
                "{policy:?} acc={acc} champion={champ:?}: {d}"
            );
            assert!(!d.reason().is_empty());
            assert_eq!(d.promotes(), *want != "Reject");
        }
    }

    #[test]
    fn reasons_name_the_numbers() {
        let d = decide(&PromotionPolicy::default(), &challenger(0.9, Some(0.8)));
        assert!(
            d.reason().contains("90.00%") && d.reason().contains("80.00%"),
            "{d}"
        );
    }

    #[test]
    fn serialises_with_reason() {
        let json = serde_json::to_string(&Decision::Reject("tie".into())).unwrap();
        assert_eq!(json, r#"{"decision":"Reject","reason":"tie"}"#);
    }
}
