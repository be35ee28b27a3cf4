//! Checks everything a run was told before anything expensive happens.

use artifacts::layout;

use super::{TrainConfig, TrainError};

pub fn validate(cfg: &TrainConfig) -> Result<(), TrainError> {
    let h = &cfg.hyper;
    let bad = |m: String| Err(TrainError::Config(m));
    layout::validate_run_id(&cfg.run_id).map_err(TrainError::Config)?;
    if let Some(c) = &cfg.champion {
        layout::validate_run_id(c).map_err(|e| TrainError::Config(format!("--champion: {e}")))?;
        if *c == cfg.run_id {
            return bad("--champion must name a different run than --run-id".into());
        }
    }
    if !(32..=1024).contains(&h.image_size) {
        return bad(format!(
            "--image-size {} is outside 32..=1024",
            h.image_size
        ));
    }
    if h.epochs == 0 {
        return bad("--epochs must be at least 1".into());
    }
    if h.batch_size < 2 {
        return bad("--batch-size must be at least 2 (batch norm needs two samples)".into());
    }
    if !(h.learning_rate > 0.0 && h.learning_rate.is_finite()) {
        return bad(format!("--lr {} must be positive", h.learning_rate));
    }
    for (name, v) in [
        ("--label-smoothing", h.label_smoothing),
        ("--dropout", h.dropout),
    ] {
        if !(0.0..1.0).contains(&v) {
            return bad(format!("{name} {v} must be in [0, 1)"));
        }
    }
    if !(0.0..0.9).contains(&h.val_fraction) {
        return bad(format!(
            "--val-fraction {} must be in [0, 0.9)",
            h.val_fraction
        ));
    }
    if h.patience == 0 {
        return bad("--patience must be at least 1".into());
    }
    cfg.precision
        .resolve(cfg.device)
        .map_err(TrainError::Config)?;
    let p = &cfg.policy;
    if !(0.0..=1.0).contains(&p.min_accuracy) || !(0.0..=1.0).contains(&p.min_improvement) {
        return bad("--min-accuracy and --min-improvement are fractions between 0 and 1".into());
    }
    if let Some(alpha) = p.min_significance
        && !(alpha > 0.0 && alpha <= 1.0)
    {
        return bad(format!(
            "--min-significance {alpha} must be a significance level in (0, 1], e.g. 0.05"
        ));
    }
    Ok(())
}
