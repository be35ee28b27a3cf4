//! When is the next training run due? Pure functions of the spec, the last run's start and
//! an injected `now`, so every case (missed slots, time zones, DST) is a plain unit test.

use std::str::FromStr;

use croner::Cron;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Span, SpanRelativeTo, Timestamp, Zoned};

use crate::crd::ScheduleSpec;

/// A spec.schedule the operator cannot use; reported in a Degraded condition.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ScheduleError {
    #[error("schedule.interval {value:?} is not a duration like 72h or 3d 12h: {reason}")]
    Interval { value: String, reason: String },
    #[error("schedule.interval {0:?} must be at least one minute")]
    IntervalTooShort(String),
    #[error("schedule.cron {value:?} is not a cron expression: {reason}")]
    Cron { value: String, reason: String },
    #[error("schedule.timeZone {value:?} is not an IANA time zone: {reason}")]
    TimeZone { value: String, reason: String },
    #[error("schedule.cron {0:?} has no occurrence in the next years")]
    NoOccurrence(String),
}

/// A validated schedule.
#[derive(Debug, Clone)]
pub enum Schedule {
    /// Fixed time between run starts.
    Interval(SignedDuration),
    /// Wall-clock slots in a time zone.
    Cron {
        expr: String,
        cron: Box<Cron>,
        tz: TimeZone,
    },
}

/// What the schedule says at `now`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The slot that makes a run due now, if any. Several missed slots collapse into the
    /// latest one, so an operator coming back from downtime starts one run, not a storm.
    pub due_slot: Option<Timestamp>,
    /// The next slot strictly after `now`, assuming no run starts now.
    pub next_run_at: Timestamp,
}

impl Schedule {
    pub fn from_spec(spec: &ScheduleSpec) -> Result<Self, ScheduleError> {
        if let Some(expr) = spec.cron.as_deref() {
            let cron = Cron::from_str(expr).map_err(|e| ScheduleError::Cron {
                value: expr.to_owned(),
                reason: e.to_string(),
            })?;
            let tz = match spec.time_zone.as_deref() {
                None | Some("") => TimeZone::UTC,
                Some(name) => TimeZone::get(name).map_err(|e| ScheduleError::TimeZone {
                    value: name.to_owned(),
                    reason: e.to_string(),
                })?,
            };
            return Ok(Schedule::Cron {
                expr: expr.to_owned(),
                cron: Box::new(cron),
                tz,
            });
        }
        let invalid = |e: jiff::Error| ScheduleError::Interval {
            value: spec.interval.clone(),
            reason: e.to_string(),
        };
        // Parsed as a Span so that days and weeks are accepted; a day is 24 hours here, which
        // is what "every three days" means for a training cadence. Months and years are refused.
        let span: Span = spec.interval.trim().parse().map_err(invalid)?;
        let interval = span
            .to_duration(SpanRelativeTo::days_are_24_hours())
            .map_err(invalid)?;
        // A tiny interval would start a Job per reconcile: refuse it outright.
        if interval < SignedDuration::from_mins(1) {
            return Err(ScheduleError::IntervalTooShort(spec.interval.clone()));
        }
        Ok(Schedule::Interval(interval))
    }

    /// Plans at `now`. `last_start` is the start of the most recent run; `anchor` (the
    /// resource's creation) stands in for it before the first run.
    pub fn plan(
        &self,
        last_start: Option<Timestamp>,
        anchor: Timestamp,
        now: Timestamp,
    ) -> Result<Plan, ScheduleError> {
        match self {
            Schedule::Interval(every) => {
                // Measured from the last start, not aligned to the calendar: a real "every 72h".
                let Some(last) = last_start else {
                    return Ok(Plan {
                        due_slot: Some(anchor.min(now)),
                        next_run_at: now + *every,
                    });
                };
                let slot = last + *every;
                if slot <= now {
                    Ok(Plan {
                        due_slot: Some(slot),
                        next_run_at: now + *every,
                    })
                } else {
                    Ok(Plan {
                        due_slot: None,
                        next_run_at: slot,
                    })
                }
            }
            Schedule::Cron { expr, cron, tz } => {
                let since = last_start.unwrap_or(anchor);
                let now_z = Zoned::new(now, tz.clone());
                let no_occurrence = || ScheduleError::NoOccurrence(expr.clone());
                let next = cron
                    .find_next_occurrence(&now_z, false)
                    .map_err(|_| no_occurrence())?
                    .timestamp();
                // Only the latest slot in (since, now] matters: missed ones are skipped.
                let due_slot = cron
                    .find_previous_occurrence(&now_z, true)
                    .ok()
                    .map(|z| z.timestamp())
                    .filter(|slot| *slot > since);
                Ok(Plan {
                    due_slot,
                    next_run_at: next,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn spec(interval: &str, cron: Option<&str>, tz: Option<&str>) -> ScheduleSpec {
        ScheduleSpec {
            interval: interval.into(),
            cron: cron.map(Into::into),
            time_zone: tz.map(Into::into),
            ..Default::default()
        }
    }

    #[test]
    fn interval_is_measured_from_the_last_start() {
        let s = Schedule::from_spec(&spec("72h", None, None)).unwrap();
        let anchor = ts("2026-01-01T00:00:00Z");
        let last = ts("2026-01-30T10:15:00Z");
        // Not due 71h later; the next run is exactly 72h after the last start, across a month end.
        let p = s
            .plan(Some(last), anchor, ts("2026-02-02T09:15:00Z"))
            .unwrap();
        assert_eq!(
            p,
            Plan {
                due_slot: None,
                next_run_at: ts("2026-02-02T10:15:00Z")
            }
        );
        let p = s
            .plan(Some(last), anchor, ts("2026-02-02T10:15:00Z"))
            .unwrap();
        assert_eq!(p.due_slot, Some(ts("2026-02-02T10:15:00Z")));
    }

    #[test]
    fn interval_accepts_friendly_and_iso_durations() {
        for (text, hours) in [
            ("72h", 72),
            ("3d", 72),
            ("1d 12h", 36),
            ("1w", 168),
            ("PT6H", 6),
            ("P3D", 72),
        ] {
            match Schedule::from_spec(&spec(text, None, None)).unwrap() {
                Schedule::Interval(d) => assert_eq!(d, SignedDuration::from_hours(hours), "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        assert!(matches!(
            Schedule::from_spec(&spec("often", None, None)),
            Err(ScheduleError::Interval { .. })
        ));
        assert!(matches!(
            Schedule::from_spec(&spec("1 month", None, None)),
            Err(ScheduleError::Interval { .. })
        ));
        assert!(matches!(
            Schedule::from_spec(&spec("10s", None, None)),
            Err(ScheduleError::IntervalTooShort(_))
        ));
    }

    #[test]
    fn interval_missed_slots_give_one_run() {
        let s = Schedule::from_spec(&spec("72h", None, None)).unwrap();
        let last = ts("2026-01-01T00:00:00Z");
        let now = ts("2026-01-20T00:00:00Z"); // six slots missed while the operator was down
        let p = s.plan(Some(last), last, now).unwrap();
        assert_eq!(p.due_slot, Some(ts("2026-01-04T00:00:00Z")));
        // Once that run starts, the next is a full interval later, not immediately.
        let after = s.plan(Some(now), last, now).unwrap();
        assert_eq!(
            after,
            Plan {
                due_slot: None,
                next_run_at: ts("2026-01-23T00:00:00Z")
            }
        );
    }

    #[test]
    fn cron_in_a_time_zone() {
        // 02:30 every day in Paris is 01:30 UTC in winter and 00:30 UTC in summer.
        let s =
            Schedule::from_spec(&spec("72h", Some("30 2 * * *"), Some("Europe/Paris"))).unwrap();
        let anchor = ts("2026-01-01T00:00:00Z");
        let p = s
            .plan(
                Some(ts("2026-01-10T01:30:00Z")),
                anchor,
                ts("2026-01-10T12:00:00Z"),
            )
            .unwrap();
        assert_eq!(
            p,
            Plan {
                due_slot: None,
                next_run_at: ts("2026-01-11T01:30:00Z")
            }
        );
        let p = s
            .plan(
                Some(ts("2026-07-10T00:30:00Z")),
                anchor,
                ts("2026-07-11T00:30:00Z"),
            )
            .unwrap();
        assert_eq!(p.due_slot, Some(ts("2026-07-11T00:30:00Z")));
        assert_eq!(p.next_run_at, ts("2026-07-12T00:30:00Z"));
    }

    #[test]
    fn cron_missed_slots_collapse_into_the_latest() {
        let s = Schedule::from_spec(&spec("72h", Some("0 3 * * *"), None)).unwrap();
        let last = ts("2026-03-01T03:00:00Z");
        let now = ts("2026-03-09T12:00:00Z");
        let p = s.plan(Some(last), last, now).unwrap();
        assert_eq!(p.due_slot, Some(ts("2026-03-09T03:00:00Z")));
        // The run started for that slot satisfies it: nothing more is due until tomorrow.
        let p = s.plan(Some(now), last, now).unwrap();
        assert_eq!(
            p,
            Plan {
                due_slot: None,
                next_run_at: ts("2026-03-10T03:00:00Z")
            }
        );
    }

    #[test]
    fn cron_before_the_first_run_uses_the_anchor() {
        let s = Schedule::from_spec(&spec("72h", Some("0 3 * * *"), None)).unwrap();
        let anchor = ts("2026-03-01T10:00:00Z");
        let p = s.plan(None, anchor, ts("2026-03-01T11:00:00Z")).unwrap();
        assert_eq!(
            p.due_slot, None,
            "the 03:00 slot was before the resource existed"
        );
    }

    #[test]
    fn bad_cron_and_zone_are_reported() {
        assert!(matches!(
            Schedule::from_spec(&spec("72h", Some("not cron"), None)),
            Err(ScheduleError::Cron { .. })
        ));
        let err =
            Schedule::from_spec(&spec("72h", Some("0 3 * * *"), Some("Mars/Olympus"))).unwrap_err();
        assert!(err.to_string().contains("Mars/Olympus"), "{err}");
    }
}
