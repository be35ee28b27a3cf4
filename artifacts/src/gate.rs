//! The promotion gate: does a freshly trained model replace the champion?
//!
//! Pure and shared: the trainer's embedded `--promote` mode and the operator apply exactly
//! this function, so a decision can be replayed from `metrics.json` alone.

use serde::{Deserialize, Serialize};
use statrs::distribution::{Binomial, DiscreteCDF};

use crate::RunMetrics;

/// What a challenger must achieve.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PromotionPolicy {
    /// Absolute accuracy the challenger must beat the re-scored champion by. With the default
    /// of 0 a challenger must be strictly better; a tie keeps the champion in place.
    pub min_improvement: f64,
    /// A floor no promoted model may be below, champion or not.
    pub min_accuracy: f64,
    /// Test images a run must have been scored on, first model included: accuracy on a
    /// handful of images says little. 0 means no minimum.
    #[serde(default)]
    pub min_test_images: u64,
    /// Significance level: with a champion, the challenger's win must also be significant,
    /// an exact two-sided McNemar test on the paired test predictions giving `p <` this
    /// (e.g. 0.05). `None` skips the test.
    #[serde(default)]
    pub min_significance: Option<f64>,
}

impl Default for PromotionPolicy {
    fn default() -> Self {
        Self {
            min_improvement: 0.0,
            min_accuracy: 0.0,
            min_test_images: 0,
            min_significance: None,
        }
    }
}

/// The exact two-sided McNemar p-value for `b` and `c` discordant pairs (images only one of
/// two models classified correctly): under the null hypothesis that both models are equally
/// good, each discordant pair goes either way with probability ½, so
/// `p = min(1, 2·P[X ≤ min(b, c)])` with `X ~ Binomial(b + c, ½)`. No discordant pair at all
/// is no evidence: `p = 1`.
pub fn mcnemar_exact_p(b: u64, c: u64) -> f64 {
    let n = b + c;
    if n == 0 {
        return 1.0;
    }
    // A probability of ½ is always valid.
    #[allow(clippy::unwrap_used)]
    let binomial = Binomial::new(0.5, n).unwrap();
    (2.0 * binomial.cdf(b.min(c))).min(1.0)
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
    let tested = challenger.counts.test;
    if tested < policy.min_test_images {
        return Decision::Reject(format!(
            "scored on {tested} test images, fewer than the {} the policy requires",
            policy.min_test_images
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
    if gain <= policy.min_improvement {
        return Decision::Reject(format!(
            "{} does not beat champion {champion} at {} by more than {:+.2} points (gain {:+.2})",
            pct(acc),
            pct(champion_acc),
            policy.min_improvement * 100.0,
            gain * 100.0
        ));
    }
    let beats = format!(
        "{} beats champion {champion} at {} by {:+.2} points (needed more than {:+.2})",
        pct(acc),
        pct(champion_acc),
        gain * 100.0,
        policy.min_improvement * 100.0
    );
    let Some(alpha) = policy.min_significance else {
        return Decision::Promote(beats);
    };
    match significance(challenger) {
        Err(why) => Decision::Reject(format!("{beats}, but significance cannot be tested: {why}")),
        Ok((p, b, c)) if p < alpha => Decision::Promote(format!(
            "{beats}; significant: McNemar p = {p:.4} < {alpha} ({c} images only the challenger got right, {b} only the champion)"
        )),
        Ok((p, b, c)) => Decision::Reject(format!(
            "{beats}, but not significantly: McNemar p = {p:.4} >= {alpha} ({c} images only the challenger got right, {b} only the champion)"
        )),
    }
}

/// The McNemar p-value of a run's paired predictions, with its discordant pairs `(b, c)`.
fn significance(m: &RunMetrics) -> Result<(f64, u64, u64), String> {
    let p = m
        .test_predictions
        .as_ref()
        .ok_or("metrics.json has no test_predictions (written by an older trainer)")?;
    if m.test_fingerprint.as_ref() != Some(&p.test_fingerprint) {
        return Err("test_predictions are for another test split".into());
    }
    let (b, c) = p
        .discordant()
        .ok_or("test_predictions hold no champion predictions")?;
    Ok((mcnemar_exact_p(b, c), b, c))
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
            ..PromotionPolicy::default()
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
    fn mcnemar_exact_p_values() {
        // Hand-computed: 2 * P[X <= min(b, c)], X ~ Binomial(b + c, 1/2).
        #[rustfmt::skip]
        let table: &[(u64, u64, f64)] = &[
            (0, 6, 0.03125),        // 2 / 64
            (6, 0, 0.03125),        // two-sided: symmetric
            (1, 9, 0.021484375),    // 2 * 11 / 1024
            (0, 5, 0.0625),         // 2 / 32: five wins alone are not significant at 0.05
            (2, 8, 0.109375),       // 2 * 56 / 1024
            (3, 3, 1.0),            // capped at 1
            (0, 0, 1.0),            // no discordant pair, no evidence
            (10, 30, 0.0022214337732), // 2 * sum over k <= 10 of C(40, k) / 2^40
        ];
        for &(b, c, want) in table {
            let p = mcnemar_exact_p(b, c);
            assert!((p - want).abs() < 1e-8, "b={b} c={c}: p={p}, want {want}");
        }
    }

    fn paired(b: usize, c: usize, same: usize) -> RunMetrics {
        // `same` images both got right, `b` only the champion, `c` only the challenger.
        let n = b + c + same;
        let labels = vec![0u8; n];
        let mut challenger = labels.clone();
        let mut champion = labels.clone();
        challenger[..b].fill(1);
        champion[b..b + c].fill(1);
        let mut m = challenger_metrics(&labels, challenger, champion);
        m.counts.test = n as u64;
        m.test_accuracy = (c + same) as f64 / n as f64;
        m.champion_test_accuracy = Some((b + same) as f64 / n as f64);
        m
    }

    fn challenger_metrics(labels: &[u8], challenger: Vec<u8>, champion: Vec<u8>) -> RunMetrics {
        let mut m = sample();
        let fp = m.test_fingerprint.clone().unwrap();
        m.champion_run_id = Some("champ".into());
        m.test_predictions = Some(crate::TestPredictions {
            test_fingerprint: fp,
            keys: (0..labels.len()).map(|i| format!("t/{i}")).collect(),
            labels: labels.to_vec(),
            challenger,
            champion: Some(champion),
        });
        m
    }

    #[test]
    fn significance_is_required_when_asked() {
        let alpha = PromotionPolicy {
            min_significance: Some(0.05),
            ..PromotionPolicy::default()
        };
        // b=0, c=6: p = 0.03125 < 0.05.
        let d = decide(&alpha, &paired(0, 6, 50));
        assert_eq!(d.kind(), "Promote", "{d}");
        assert!(d.reason().contains("p = 0.031"), "{d}");
        // b=0, c=5: p = 0.0625, better but not significantly.
        let d = decide(&alpha, &paired(0, 5, 50));
        assert_eq!(d.kind(), "Reject", "{d}");
        assert!(d.reason().contains("not significantly"), "{d}");
        // The same run passes without the test.
        assert_eq!(
            decide(&PromotionPolicy::default(), &paired(0, 5, 50)).kind(),
            "Promote"
        );
        // b=1, c=9: p = 0.0215.
        assert_eq!(decide(&alpha, &paired(1, 9, 20)).kind(), "Promote");
        // Not better at all: rejected before any test.
        let d = decide(&alpha, &paired(6, 0, 50));
        assert!(d.reason().contains("does not beat"), "{d}");
        // A first model has nothing to be compared with.
        let mut first = paired(0, 0, 10);
        first.champion_run_id = None;
        first.champion_test_accuracy = None;
        assert_eq!(decide(&alpha, &first).kind(), "FirstModel");
    }

    #[test]
    fn significance_without_paired_predictions_rejects() {
        let alpha = PromotionPolicy {
            min_significance: Some(0.05),
            ..PromotionPolicy::default()
        };
        let mut old = paired(0, 6, 50);
        old.test_predictions = None;
        let d = decide(&alpha, &old);
        assert_eq!(d.kind(), "Reject", "{d}");
        assert!(d.reason().contains("older trainer"), "{d}");
        let mut other = paired(0, 6, 50);
        other.test_fingerprint = Some("sha256:other".into());
        let d = decide(&alpha, &other);
        assert!(d.reason().contains("another test split"), "{d}");
    }

    #[test]
    fn minimum_test_set_size() {
        let policy = PromotionPolicy {
            min_test_images: 65,
            ..PromotionPolicy::default()
        };
        // sample() was scored on 64 images.
        let d = decide(&policy, &challenger(0.99, Some(0.5)));
        assert_eq!(d.kind(), "Reject", "{d}");
        assert!(d.reason().contains("64 test images"), "{d}");
        // The first model too.
        assert_eq!(decide(&policy, &challenger(0.99, None)).kind(), "Reject");
        let enough = PromotionPolicy {
            min_test_images: 64,
            ..policy
        };
        assert_eq!(
            decide(&enough, &challenger(0.99, Some(0.5))).kind(),
            "Promote"
        );
    }

    #[test]
    fn policies_without_the_new_knobs_still_parse() {
        let p: PromotionPolicy =
            serde_json::from_str(r#"{"min_improvement":0.01,"min_accuracy":0.5}"#).unwrap();
        assert_eq!((p.min_test_images, p.min_significance), (0, None));
    }

    #[test]
    fn serialises_with_reason() {
        let json = serde_json::to_string(&Decision::Reject("tie".into())).unwrap();
        assert_eq!(json, r#"{"decision":"Reject","reason":"tie"}"#);
    }
}
