//! The promotion gate: does a freshly trained model replace the champion?
//!
//! Pure and shared: the trainer's embedded `--promote` mode and the operator apply exactly
//! this function, so a decision can be replayed from `metrics.json` alone.
//!
//! With a champion, [`assess`] also measures how sure the decision is ([`Comparison`]): the
//! accuracy difference with a 95 % confidence interval for paired proportions, the exact
//! McNemar p-value, the discordant counts and the recall of every class for both models, and
//! condenses it into one line ([`Assessment::summary`]) such as
//! `Promote: +2.1 pts (95% CI +0.4..+3.8, p=0.01, 600 test faces)`.

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
    /// Largest recall (0–1) any one class may lose against the champion on the same paired
    /// test images: a challenger that wins on average by sacrificing a class whose recall
    /// drops by more than this is rejected with a reason starting `ClassRegression:`. `None`
    /// skips the check (the trainer's `--promote` mode unless `--max-class-recall-drop` is
    /// given; the operator defaults to 0.10). Checked only when the run carries paired test
    /// predictions (every trainer since they were added); without them the reason says so.
    #[serde(default)]
    pub max_class_recall_drop: Option<f64>,
}

impl Default for PromotionPolicy {
    fn default() -> Self {
        Self {
            min_improvement: 0.0,
            min_accuracy: 0.0,
            min_test_images: 0,
            min_significance: None,
            max_class_recall_drop: None,
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

/// The normal quantile of a two-sided 95 % interval.
pub const Z_95: f64 = 1.959_963_984_540_054;

/// The Wilson score interval for `x` successes in `n > 0` trials.
fn wilson(x: u64, n: u64, z: f64) -> (f64, f64) {
    let (x, n) = (x as f64, n as f64);
    let p = x / n;
    let z2 = z * z;
    let centre = p + z2 / (2.0 * n);
    let half = z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    let scale = 1.0 + z2 / n;
    ((centre - half) / scale, (centre + half) / scale)
}

/// The difference `p1 − p2` of two proportions measured on the same `n` subjects, with
/// Newcombe's hybrid score interval for paired data: method 10 of R. G. Newcombe, *Improved
/// confidence intervals for the difference between binomial proportions based on paired
/// data*, Statistics in Medicine 17 (1998) 2635–2650, also called the square-and-add (MOVER)
/// Wilson interval. The Wilson score intervals of `p1` and `p2` are combined with the
/// correlation `φ` of the paired table, with Newcombe's correction of `ad − bc` (set to 0
/// when `0 ≤ ad − bc ≤ n/2`, reduced by `n/2` above that).
///
/// The paired table counts subjects by outcome: `both` (success in 1 and 2, Newcombe's `a`),
/// `first_only` (`b`), `second_only` (`c`) and `neither` (`d`). `z` is the normal quantile
/// ([`Z_95`] for 95 %). Returns `(estimate, lower, upper)`, `None` for an empty table.
pub fn paired_difference_ci(
    both: u64,
    first_only: u64,
    second_only: u64,
    neither: u64,
    z: f64,
) -> Option<(f64, f64, f64)> {
    let n = both + first_only + second_only + neither;
    if n == 0 {
        return None;
    }
    let nf = n as f64;
    let (p1, p2) = (
        (both + first_only) as f64 / nf,
        (both + second_only) as f64 / nf,
    );
    let estimate = p1 - p2;
    let (l1, u1) = wilson(both + first_only, n, z);
    let (l2, u2) = wilson(both + second_only, n, z);
    let marginals = [
        both + first_only,
        second_only + neither,
        both + second_only,
        first_only + neither,
    ];
    let phi = if marginals.contains(&0) {
        0.0
    } else {
        let ad_bc = both as f64 * neither as f64 - first_only as f64 * second_only as f64;
        let corrected = if ad_bc > nf / 2.0 {
            ad_bc - nf / 2.0
        } else if ad_bc >= 0.0 {
            0.0
        } else {
            ad_bc
        };
        corrected / marginals.iter().map(|&m| m as f64).product::<f64>().sqrt()
    };
    let spread = |x: f64, y: f64| (x * x - 2.0 * phi * x * y + y * y).max(0.0).sqrt();
    let lower = estimate - spread(p1 - l1, u2 - p2);
    let upper = estimate + spread(p2 - l2, u1 - p1);
    Some((estimate, lower.max(-1.0), upper.min(1.0)))
}

/// How a challenger compares with the champion on the same test images, from the paired
/// predictions in its `metrics.json`. Recorded with every decision that had a champion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// Test images both models were scored on.
    pub test_images: u64,
    /// The challenger's accuracy on them.
    pub accuracy: f64,
    /// The champion's accuracy on them.
    pub champion_accuracy: f64,
    /// `accuracy − champion_accuracy`.
    pub difference: f64,
    /// Lower bound of the 95 % confidence interval of `difference` (Newcombe's hybrid score
    /// interval for paired proportions, [`paired_difference_ci`]).
    pub ci_low: f64,
    /// Upper bound of that interval.
    pub ci_high: f64,
    /// Exact two-sided McNemar p-value of the discordant pairs ([`mcnemar_exact_p`]).
    pub mcnemar_p: f64,
    /// Images only the challenger classified correctly (McNemar's `c`).
    pub challenger_only: u64,
    /// Images only the champion classified correctly (McNemar's `b`).
    pub champion_only: u64,
    /// Recall of both models per class with test images, in the model's class order.
    pub classes: Vec<ClassRecall>,
}

/// One class's recall for challenger and champion on the same test images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassRecall {
    pub class: String,
    /// Test images of this class.
    pub support: u64,
    /// The challenger's recall (0–1).
    pub recall: f64,
    /// The champion's recall (0–1).
    pub champion_recall: f64,
    /// `recall − champion_recall`: negative when the class lost.
    pub delta: f64,
}

/// Compares challenger and champion on a run's paired test predictions. Fails, saying why,
/// when the run has none (a run without a champion, or written by an older trainer) or they
/// are for another test split.
pub fn compare(m: &RunMetrics) -> Result<Comparison, String> {
    let p = m
        .test_predictions
        .as_ref()
        .ok_or("metrics.json has no test_predictions (written by an older trainer)")?;
    if m.test_fingerprint.as_ref() != Some(&p.test_fingerprint) {
        return Err("test_predictions are for another test split".into());
    }
    let champion = p
        .champion
        .as_ref()
        .ok_or("test_predictions hold no champion predictions")?;
    let n = p.labels.len();
    if n == 0 || p.challenger.len() != n || champion.len() != n {
        return Err("test_predictions do not pair one prediction per test image".into());
    }
    let classes = m.classes.len().max(
        p.labels
            .iter()
            .map(|&l| usize::from(l) + 1)
            .max()
            .unwrap_or(0),
    );
    // Per class: support, challenger right, champion right.
    let mut per_class = vec![(0u64, 0u64, 0u64); classes];
    let (mut both, mut challenger_only, mut champion_only, mut neither) = (0, 0, 0, 0);
    for ((&t, &x), &y) in p.labels.iter().zip(&p.challenger).zip(champion) {
        let (x_ok, y_ok) = (x == t, y == t);
        let row = &mut per_class[usize::from(t)];
        row.0 += 1;
        row.1 += u64::from(x_ok);
        row.2 += u64::from(y_ok);
        match (x_ok, y_ok) {
            (true, true) => both += 1,
            (true, false) => challenger_only += 1,
            (false, true) => champion_only += 1,
            (false, false) => neither += 1,
        }
    }
    let (difference, ci_low, ci_high) =
        paired_difference_ci(both, challenger_only, champion_only, neither, Z_95)
            .ok_or("no paired test predictions")?;
    let nf = n as f64;
    Ok(Comparison {
        test_images: n as u64,
        accuracy: (both + challenger_only) as f64 / nf,
        champion_accuracy: (both + champion_only) as f64 / nf,
        difference,
        ci_low,
        ci_high,
        mcnemar_p: mcnemar_exact_p(champion_only, challenger_only),
        challenger_only,
        champion_only,
        classes: per_class
            .iter()
            .enumerate()
            .filter(|(_, (support, _, _))| *support > 0)
            .map(|(i, &(support, x, y))| {
                let (recall, champion_recall) =
                    (x as f64 / support as f64, y as f64 / support as f64);
                ClassRecall {
                    class: m
                        .classes
                        .get(i)
                        .cloned()
                        .unwrap_or_else(|| format!("class {i}")),
                    support,
                    recall,
                    champion_recall,
                    delta: recall - champion_recall,
                }
            })
            .collect(),
    })
}

/// A decision with the numbers behind it: what `status.lastRun`, Events and logs show.
#[derive(Debug, Clone, PartialEq)]
pub struct Assessment {
    pub decision: Decision,
    /// The paired comparison with the champion; `None` without a champion or without paired
    /// predictions (then `summary` says so).
    pub comparison: Option<Comparison>,
    /// One line, e.g. `Promote: +2.1 pts (95% CI +0.4..+3.8, p=0.01, 600 test faces)` or
    /// `FirstModel: 97.5% on 600 test faces` ([`summarize`]).
    pub summary: String,
}

/// Decides on a challenger whose metrics carry the champion's re-scored accuracy (when a
/// champion exists). Comparing on the challenger's own test split keeps the comparison fair
/// when the dataset changed between runs.
pub fn decide(policy: &PromotionPolicy, challenger: &RunMetrics) -> Decision {
    assess(policy, challenger).decision
}

/// [`decide`], with the paired comparison and the one-line summary of the decision.
pub fn assess(policy: &PromotionPolicy, challenger: &RunMetrics) -> Assessment {
    let paired = challenger
        .champion_run_id
        .is_some()
        .then(|| compare(challenger));
    let (decision, cause) = judge(policy, challenger, paired.as_ref());
    let comparison = paired.and_then(Result::ok);
    let summary = summarize(&decision, challenger, comparison.as_ref(), cause.as_deref());
    Assessment {
        decision,
        comparison,
        summary,
    }
}

/// The decision, and for a rejection a few words on its cause for the summary.
fn judge(
    policy: &PromotionPolicy,
    challenger: &RunMetrics,
    paired: Option<&Result<Comparison, String>>,
) -> (Decision, Option<String>) {
    let acc = challenger.test_accuracy;
    if acc < policy.min_accuracy {
        return (
            Decision::Reject(format!(
                "test accuracy {} is below the floor of {}",
                pct(acc),
                pct(policy.min_accuracy)
            )),
            Some(format!(
                "below the {:.1}% floor",
                policy.min_accuracy * 100.0
            )),
        );
    }
    let tested = challenger.counts.test;
    if tested < policy.min_test_images {
        return (
            Decision::Reject(format!(
                "scored on {tested} test images, fewer than the {} the policy requires",
                policy.min_test_images
            )),
            Some(format!(
                "fewer than the {} test images required",
                policy.min_test_images
            )),
        );
    }
    let (Some(champion), Some(champion_acc)) = (
        challenger.champion_run_id.as_deref(),
        challenger.champion_test_accuracy,
    ) else {
        return (
            Decision::FirstModel(format!(
                "no champion yet; first model with test accuracy {}",
                pct(acc)
            )),
            None,
        );
    };
    let gain = acc - champion_acc;
    if gain <= policy.min_improvement {
        let cause = if policy.min_improvement > 0.0 {
            format!(
                "needs more than {} pts",
                signed_points(policy.min_improvement)
            )
        } else {
            "not better than the champion".to_owned()
        };
        return (
            Decision::Reject(format!(
                "{} does not beat champion {champion} at {} by more than {:+.2} points (gain {:+.2})",
                pct(acc),
                pct(champion_acc),
                policy.min_improvement * 100.0,
                gain * 100.0
            )),
            Some(cause),
        );
    }
    let mut beats = format!(
        "{} beats champion {champion} at {} by {:+.2} points (needed more than {:+.2})",
        pct(acc),
        pct(champion_acc),
        gain * 100.0,
        policy.min_improvement * 100.0
    );
    if let Some(max_drop) = policy.max_class_recall_drop {
        match paired {
            Some(Ok(c)) => {
                if let Some(rejection) = class_regression(c, max_drop, &beats) {
                    return rejection;
                }
            }
            Some(Err(why)) => beats.push_str(&format!("; per-class recall not compared: {why}")),
            None => {}
        }
    }
    let Some(alpha) = policy.min_significance else {
        return (Decision::Promote(beats), None);
    };
    let c = match paired {
        Some(Ok(c)) => c,
        other => {
            let why = match other {
                Some(Err(why)) => why.as_str(),
                _ => "no champion predictions",
            };
            return (
                Decision::Reject(format!("{beats}, but significance cannot be tested: {why}")),
                Some("significance cannot be tested".into()),
            );
        }
    };
    let (p, b, c) = (c.mcnemar_p, c.champion_only, c.challenger_only);
    if p < alpha {
        (
            Decision::Promote(format!(
                "{beats}; significant: McNemar p = {p:.4} < {alpha} ({c} images only the challenger got right, {b} only the champion)"
            )),
            None,
        )
    } else {
        (
            Decision::Reject(format!(
                "{beats}, but not significantly: McNemar p = {p:.4} >= {alpha} ({c} images only the challenger got right, {b} only the champion)"
            )),
            Some(format!("not significant at {alpha}")),
        )
    }
}

/// The `ClassRegression` rejection when a class's recall fell by more than `max_drop`.
fn class_regression(
    c: &Comparison,
    max_drop: f64,
    beats: &str,
) -> Option<(Decision, Option<String>)> {
    // A hair of tolerance, so a drop of exactly the limit (0.9 − 0.8) is allowed.
    let mut lost: Vec<&ClassRecall> = c
        .classes
        .iter()
        .filter(|r| -r.delta > max_drop + 1e-9)
        .collect();
    if lost.is_empty() {
        return None;
    }
    lost.sort_by(|x, y| x.delta.total_cmp(&y.delta));
    let worst = lost[0];
    let each = lost
        .iter()
        .map(|r| {
            format!(
                "{} recall {:.1}% vs the champion's {:.1}% ({} pts on {} images)",
                r.class,
                r.recall * 100.0,
                r.champion_recall * 100.0,
                signed_points(r.delta),
                r.support
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    Some((
        Decision::Reject(format!(
            "ClassRegression: {each}, a drop of more than the {:.1} points allowed; {beats}",
            max_drop * 100.0
        )),
        Some(format!(
            "ClassRegression: {} {} pts",
            worst.class,
            signed_points(worst.delta)
        )),
    ))
}

/// `x` (a fraction) in percentage points with a sign and one decimal: `+2.1`, `-0.4`, `+0.0`.
fn signed_points(x: f64) -> String {
    let tenths = (x * 1000.0).round();
    if tenths == 0.0 {
        "+0.0".to_owned()
    } else {
        format!("{:+.1}", tenths / 10.0)
    }
}

/// `p=0.031`, `p=0.73`, `p=1`, `p<0.001`: two significant digits, trailing zeros dropped.
fn p_equals(p: f64) -> String {
    if p < 0.001 {
        return "p<0.001".to_owned();
    }
    let decimals = (1 - p.log10().floor() as i32).max(2) as usize;
    let s = format!("{p:.decimals$}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    format!("p={s}")
}

/// The one-line summary of a decision on `m`: with a champion
/// `Promote: +2.1 pts (95% CI +0.4..+3.8, p=0.01, 600 test faces)` (difference and interval
/// in accuracy points, exact McNemar p), without one `FirstModel: 97.5% on 600 test faces`; a
/// rejection ends with its cause (`; ClassRegression: lisa -12.5 pts`). Without paired
/// predictions the difference of the reported accuracies is shown and the summary says
/// `no paired predictions`.
pub fn summarize(
    decision: &Decision,
    m: &RunMetrics,
    comparison: Option<&Comparison>,
    cause: Option<&str>,
) -> String {
    let kind = decision.kind();
    let mut line = match (comparison, m.champion_test_accuracy) {
        (Some(c), _) => format!(
            "{kind}: {} pts (95% CI {}..{}, {}, {} test faces)",
            signed_points(c.difference),
            signed_points(c.ci_low),
            signed_points(c.ci_high),
            p_equals(c.mcnemar_p),
            c.test_images
        ),
        (None, Some(champion)) if m.champion_run_id.is_some() => format!(
            "{kind}: {} pts ({} test faces, no paired predictions)",
            signed_points(m.test_accuracy - champion),
            m.counts.test
        ),
        _ => format!(
            "{kind}: {:.1}% on {} test faces",
            m.test_accuracy * 100.0,
            m.counts.test
        ),
    };
    if let Some(cause) = cause {
        line.push_str("; ");
        line.push_str(cause);
    }
    line
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
        assert_eq!(p.max_class_recall_drop, None);
    }

    fn close(got: f64, want: f64, tolerance: f64) -> bool {
        (got - want).abs() <= tolerance
    }

    #[test]
    fn paired_interval_matches_published_values() {
        // (both, first only, second only, neither) → estimate, lower, upper, as published to
        // four decimals:
        // - Altman, Machin, Bryant & Gardner, Statistics with Confidence (2nd ed., 2000),
        //   Table 6.2, the worked example of Newcombe's method: 5/41 = 0.1220 (0.0115 to 0.2265).
        // - Fagerland, Lydersen & Laake, Statistical Analysis of Contingency Tables (2017),
        //   chapter 8, Cavo et al. (2012), Newcombe square-and-add interval:
        //   −0.0621 (−0.1186 to −0.0046); the same numbers as the R package
        //   contingencytables' test of Newcombe_square_and_add_CI_paired_2x2.
        #[rustfmt::skip]
        let table: [([u64; 4], [f64; 3]); 2] = [
            ([14, 5, 0, 22],  [0.1220, 0.0115, 0.2265]),
            ([59, 6, 16, 80], [-0.0621, -0.1186, -0.0046]),
        ];
        for ([a, b, c, d], [est, lo, hi]) in table {
            let (e, l, u) = paired_difference_ci(a, b, c, d, Z_95).unwrap();
            assert!(
                close(e, est, 5e-5) && close(l, lo, 5e-5) && close(u, hi, 5e-5),
                "({a}, {b}, {c}, {d}): {e:.4} ({l:.4} to {u:.4}), want {est} ({lo} to {hi})"
            );
            // Swapping the two proportions mirrors the interval.
            let (e2, l2, u2) = paired_difference_ci(a, c, b, d, Z_95).unwrap();
            assert!(close(e2, -e, 1e-12) && close(l2, -u, 1e-12) && close(u2, -l, 1e-12));
        }
        // No evidence either way: a symmetric interval around 0 inside [-1, 1].
        let (e, l, u) = paired_difference_ci(600, 0, 0, 0, Z_95).unwrap();
        assert!(e == 0.0 && l < 0.0 && u > 0.0 && close(l, -u, 1e-12) && u < 0.01);
        let (_, l, u) = paired_difference_ci(0, 3, 0, 0, Z_95).unwrap();
        assert!((-1.0..=1.0).contains(&l) && (-1.0..=1.0).contains(&u) && l > 0.0);
        assert_eq!(paired_difference_ci(0, 0, 0, 0, Z_95), None);
    }

    #[test]
    fn comparison_of_the_sample_run() {
        // sample(): 64 images, challenger wrong on homer 0..4, champion wrong on homer 4..12.
        let c = compare(&sample()).unwrap();
        assert_eq!(
            (c.test_images, c.champion_only, c.challenger_only),
            (64, 4, 8)
        );
        assert!(close(c.difference, 0.0625, 1e-12));
        assert!(
            close(c.ci_low, -0.04847, 1e-5) && close(c.ci_high, 0.17544, 1e-5),
            "{c:?}"
        );
        assert!(close(c.mcnemar_p, 2.0 * 794.0 / 4096.0, 1e-9));
        let names: Vec<&str> = c.classes.iter().map(|r| r.class.as_str()).collect();
        assert_eq!(names, ["homer", "marge", "bart", "lisa"]);
        let homer = &c.classes[0];
        assert_eq!(homer.support, 16);
        assert!(close(homer.recall, 0.75, 1e-12) && close(homer.champion_recall, 0.5, 1e-12));
        assert!(close(homer.delta, 0.25, 1e-12));
        assert!(
            c.classes[1..]
                .iter()
                .all(|r| r.delta == 0.0 && r.recall == 1.0)
        );
    }

    /// 4 classes of `per_class` images; the champion misses the first `champion_wrong[k]`
    /// images of class k, the challenger the last `challenger_wrong[k]`.
    fn per_class_run(
        per_class: usize,
        champion_wrong: [usize; 4],
        challenger_wrong: [usize; 4],
    ) -> RunMetrics {
        let n = 4 * per_class;
        let labels: Vec<u8> = (0..n).map(|i| (i / per_class) as u8).collect();
        let mut challenger = labels.clone();
        let mut champion = labels.clone();
        for k in 0..4 {
            let start = k * per_class;
            for i in start..start + champion_wrong[k] {
                champion[i] = (labels[i] + 1) % 4;
            }
            for i in start + per_class - challenger_wrong[k]..start + per_class {
                challenger[i] = (labels[i] + 1) % 4;
            }
        }
        let mut m = challenger_metrics(&labels, challenger, champion);
        m.counts.test = n as u64;
        m.test_accuracy = 1.0 - challenger_wrong.iter().sum::<usize>() as f64 / n as f64;
        m.champion_test_accuracy =
            Some(1.0 - champion_wrong.iter().sum::<usize>() as f64 / n as f64);
        m
    }

    #[test]
    fn a_win_that_sacrifices_a_class_is_a_class_regression() {
        let guard = PromotionPolicy {
            max_class_recall_drop: Some(0.10),
            ..PromotionPolicy::default()
        };
        // 96.25% against 85% on average, but lisa falls from 100% to 85%.
        let run = per_class_run(20, [4, 4, 4, 0], [0, 0, 0, 3]);
        let a = assess(&guard, &run);
        assert_eq!(a.decision.kind(), "Reject", "{}", a.decision);
        assert!(a.decision.reason().starts_with("ClassRegression: lisa recall 85.0% vs the champion's 100.0% (-15.0 pts on 20 images)"), "{}", a.decision);
        assert!(
            a.decision.reason().contains("beats champion champ"),
            "{}",
            a.decision
        );
        assert!(
            a.summary.ends_with("; ClassRegression: lisa -15.0 pts"),
            "{}",
            a.summary
        );
        // Without the guard, or with a looser one, the same run wins.
        assert_eq!(decide(&PromotionPolicy::default(), &run).kind(), "Promote");
        let loose = PromotionPolicy {
            max_class_recall_drop: Some(0.15),
            ..guard
        };
        assert_eq!(decide(&loose, &run).kind(), "Promote");
        // A drop of exactly the limit is allowed: 100% → 90%.
        let at_limit = per_class_run(20, [4, 4, 4, 0], [0, 0, 0, 2]);
        assert_eq!(decide(&guard, &at_limit).kind(), "Promote");
        // Every class that lost too much is named, the worst in the summary.
        let two = per_class_run(20, [8, 8, 0, 0], [0, 0, 3, 4]);
        let a = assess(&guard, &two);
        assert!(
            a.decision.reason().contains("bart recall 85.0%"),
            "{}",
            a.decision
        );
        assert!(
            a.decision.reason().contains("lisa recall 80.0%"),
            "{}",
            a.decision
        );
        assert!(
            a.summary.ends_with("; ClassRegression: lisa -20.0 pts"),
            "{}",
            a.summary
        );
        // A run that does not win is rejected for that, before any class is looked at.
        let loser = per_class_run(20, [0, 0, 0, 0], [0, 0, 0, 3]);
        assert!(decide(&guard, &loser).reason().contains("does not beat"));
        // Without paired predictions the guard cannot look; the reason says so.
        let mut old = run.clone();
        old.test_predictions = None;
        let d = decide(&guard, &old);
        assert_eq!(d.kind(), "Promote", "{d}");
        assert!(
            d.reason()
                .contains("per-class recall not compared: metrics.json has no test_predictions"),
            "{d}"
        );
    }

    #[test]
    fn summaries_read_at_a_glance() {
        let policy = PromotionPolicy::default();
        // 600 test faces, 20 only the challenger got right, 6 only the champion.
        // and 4 neither.
        let mut win = paired(6, 20, 574);
        let p = win.test_predictions.as_mut().unwrap();
        p.challenger[596..].fill(1);
        p.champion.as_mut().unwrap()[596..].fill(1);
        win.test_accuracy = 590.0 / 600.0;
        win.champion_test_accuracy = Some(576.0 / 600.0);
        let a = assess(&policy, &win);
        assert_eq!(
            a.summary,
            "Promote: +2.3 pts (95% CI +0.6..+4.2, p=0.0094, 600 test faces)"
        );
        let c = a.comparison.unwrap();
        assert_eq!(
            (c.test_images, c.challenger_only, c.champion_only),
            (600, 20, 6)
        );
        // The same run under a stricter significance level.
        let strict = PromotionPolicy {
            min_significance: Some(0.005),
            ..policy
        };
        assert_eq!(
            assess(&strict, &win).summary,
            "Reject: +2.3 pts (95% CI +0.6..+4.2, p=0.0094, 600 test faces); not significant at 0.005"
        );
        // The sample run.
        assert_eq!(
            assess(&policy, &sample()).summary,
            "Promote: +6.3 pts (95% CI -4.8..+17.5, p=0.39, 64 test faces)"
        );
        // A first model.
        let mut first = sample();
        first.champion_run_id = None;
        first.champion_test_accuracy = None;
        first.test_accuracy = 0.975;
        first.counts.test = 600;
        let a = assess(&policy, &first);
        assert_eq!(a.summary, "FirstModel: 97.5% on 600 test faces");
        assert_eq!(a.comparison, None);
        let floor = PromotionPolicy {
            min_accuracy: 0.98,
            ..policy
        };
        assert_eq!(
            assess(&floor, &first).summary,
            "Reject: 97.5% on 600 test faces; below the 98.0% floor"
        );
        // A tie, and a run without paired predictions.
        let tie = paired(3, 3, 58);
        assert_eq!(
            assess(&policy, &tie).summary,
            "Reject: +0.0 pts (95% CI -8.9..+8.9, p=1, 64 test faces); not better than the champion"
        );
        let mut old = challenger(0.9, Some(0.8));
        old.test_predictions = None;
        assert_eq!(
            assess(&policy, &old).summary,
            "Promote: +10.0 pts (64 test faces, no paired predictions)"
        );
    }

    #[test]
    fn numbers_in_summaries() {
        assert_eq!(p_equals(0.01), "p=0.01");
        assert_eq!(p_equals(0.03125), "p=0.031");
        assert_eq!(p_equals(0.7312), "p=0.73");
        assert_eq!(p_equals(1.0), "p=1");
        assert_eq!(p_equals(0.1), "p=0.1");
        assert_eq!(p_equals(0.0022214), "p=0.0022");
        assert_eq!(p_equals(0.0004), "p<0.001");
        assert_eq!(signed_points(0.021), "+2.1");
        assert_eq!(signed_points(-0.125), "-12.5");
        assert_eq!(signed_points(-0.00001), "+0.0");
        assert_eq!(signed_points(0.0), "+0.0");
    }

    #[test]
    fn serialises_with_reason() {
        let json = serde_json::to_string(&Decision::Reject("tie".into())).unwrap();
        assert_eq!(json, r#"{"decision":"Reject","reason":"tie"}"#);
    }
}
