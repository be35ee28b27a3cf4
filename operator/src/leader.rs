//! Leader election on a `coordination.k8s.io/v1` Lease, so the chart can run two replicas:
//! the holder of the Lease reconciles, the others wait as hot standbys.
//!
//! The algorithm is client-go's `leaderelection` (what kube-controller-manager and
//! controller-runtime use), written against `Api<Lease>`:
//!
//! * **Every write is guarded by the `resourceVersion` just read** (a `PUT`, or a `POST` when
//!   the Lease does not exist yet). Of two candidates racing for the same Lease the API server
//!   accepts exactly one write and answers the other 409, so two candidates can never both
//!   believe they acquired it.
//! * **Expiry is measured on the candidate's own monotonic clock**, from the moment it first
//!   saw the current record, never from the holder's `renewTime`: clocks of different nodes may
//!   disagree, a candidate's clock agrees with itself. A standby that just started therefore
//!   waits one full lease duration before taking over a Lease whose holder went silent.
//! * **The holder stops before anyone may take over**: it must renew within the renew deadline
//!   (10 s) of its last successful renew, while the others wait the lease duration (15 s) from
//!   when they saw that renew. A holder that misses the deadline returns [`Lost`] and the
//!   operator exits at once (as controller-runtime does): a fresh process starts as a standby
//!   instead of a leader that might overlap with the new one.
//! * **A graceful stop releases the Lease** (empty holder, `leaseDurationSeconds: 1`), so a
//!   standby takes over at its next retry instead of waiting out the lease duration.
//!
//! The decision itself ([`decide`], [`observe`], [`claim`], [`released`]) is pure and unit
//! tested; [`Elector`] does the API calls.
//!
//! Why not a crate: `kube-leader-election` and `kube-coordinate` target older kube majors;
//! `kube-lease-manager` 0.13 does target kube 5, but takes an expired Lease over by first
//! clearing its holder with an unguarded strategic-merge patch (no `resourceVersion`), so a
//! slower candidate can wipe a faster one's fresh claim and both believe they lead until the
//! next renew; it measures expiry from the holder's `renewTime` (clock skew), and has no renew
//! deadline (its watch channel keeps saying "leader" while renews fail).

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Client, ResourceExt};
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// Timing of the election; see [`ElectionConfig::validate`] for how they must relate.
#[derive(Debug, Clone)]
pub struct ElectionConfig {
    /// Name of the Lease.
    pub lease_name: String,
    /// Namespace of the Lease (the operator's own).
    pub namespace: String,
    /// This candidate's identity: the pod name, unique among the candidates.
    pub identity: String,
    /// How long the others wait after the holder's last renew before taking over.
    pub lease_duration: Duration,
    /// How long the holder keeps trying to renew before it gives up leadership.
    pub renew_deadline: Duration,
    /// Time between tries: renews of the holder, attempts of a standby.
    pub retry_period: Duration,
}

/// Why a configuration or an election failed.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("invalid leader election timing: {0}")]
    Config(String),
    #[error("cannot read the Lease {namespace}/{name}: {source}")]
    Get {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot create the Lease {namespace}/{name}: {source}")]
    Create {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot update the Lease {namespace}/{name}: {source}")]
    Update {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// How leadership ended while holding it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Lost {
    /// No renew succeeded within the renew deadline (API server unreachable, throttled, …).
    #[error("could not renew the Lease within the renew deadline of {0:?}")]
    RenewDeadline(Duration),
    /// Another candidate holds the Lease (it expired from its point of view, or someone edited it).
    #[error("the Lease is now held by {0}")]
    TakenBy(String),
}

impl ElectionConfig {
    /// client-go's rules: the holder must give up (renew deadline) before anyone may take over
    /// (lease duration), and it must get a few tries in before its deadline.
    pub fn validate(&self) -> Result<(), LeaderError> {
        if self.identity.is_empty() {
            return Err(LeaderError::Config("the identity is empty".into()));
        }
        validate_timing(self.lease_duration, self.renew_deadline, self.retry_period)
    }

    fn lease_duration_seconds(&self) -> i32 {
        // Rounded up: a holder never announces less than it waits for itself.
        let secs =
            self.lease_duration.as_secs() + u64::from(self.lease_duration.subsec_nanos() > 0);
        i32::try_from(secs).unwrap_or(i32::MAX)
    }
}

/// The timing rules of [`ElectionConfig::validate`], for checking flags before connecting.
pub fn validate_timing(
    lease_duration: Duration,
    renew_deadline: Duration,
    retry_period: Duration,
) -> Result<(), LeaderError> {
    let fail = |m: String| Err(LeaderError::Config(m));
    if lease_duration < Duration::from_secs(1) {
        return fail(format!(
            "the lease duration {lease_duration:?} is under one second (the Lease stores whole seconds)"
        ));
    }
    if renew_deadline >= lease_duration {
        return fail(format!(
            "the renew deadline {renew_deadline:?} must be shorter than the lease duration {lease_duration:?}"
        ));
    }
    if retry_period.is_zero() || retry_period.mul_f64(1.2) >= renew_deadline {
        return fail(format!(
            "the retry period {retry_period:?} must be positive and well below the renew deadline {renew_deadline:?}"
        ));
    }
    Ok(())
}

/// The holder a Lease names; an empty string (a released Lease) is nobody.
pub fn holder(spec: &LeaseSpec) -> Option<&str> {
    spec.holder_identity.as_deref().filter(|h| !h.is_empty())
}

/// A Lease's spec and the instant this candidate first saw it, on its own clock.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub spec: LeaseSpec,
    pub at: Instant,
}

/// Remembers when the record changed: an unchanged spec keeps the instant it was first seen,
/// so a holder that stopped renewing expires `leaseDurationSeconds` after its last renew was
/// seen, whatever the clocks of the two nodes say.
pub fn observe(previous: Option<Observed>, spec: LeaseSpec, now: Instant) -> Observed {
    match previous {
        Some(p) if p.spec == spec => p,
        _ => Observed { spec, at: now },
    }
}

/// What a candidate does with the Lease it just read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nobody holds it, or the holder has not renewed within its lease duration: take it.
    Acquire,
    /// This candidate holds it: renew.
    Renew,
    /// Someone else holds it and renewed recently enough; it expires in `expires_in` unless
    /// renewed again.
    Wait {
        holder: String,
        expires_in: Duration,
    },
}

/// client-go's `tryAcquireOrRenew` decision, without the API calls.
pub fn decide(observed: &Observed, identity: &str, now: Instant) -> Decision {
    match holder(&observed.spec) {
        None => Decision::Acquire,
        Some(h) if h == identity => Decision::Renew,
        Some(h) => {
            // The holder's own promise; missing or negative means it promised nothing.
            let secs = observed.spec.lease_duration_seconds.unwrap_or(0).max(0);
            let expiry = observed.at + Duration::from_secs(u64::try_from(secs).unwrap_or(0));
            if now < expiry {
                Decision::Wait {
                    holder: h.to_owned(),
                    expires_in: expiry - now,
                }
            } else {
                Decision::Acquire
            }
        }
    }
}

/// The spec to write for `decision` (`Acquire` or `Renew`) at wall-clock time `now`.
/// `None` for `Wait`: nothing is written.
pub fn claim(
    current: &LeaseSpec,
    decision: &Decision,
    config: &ElectionConfig,
    now: Timestamp,
) -> Option<LeaseSpec> {
    let now = MicroTime(now);
    let base = LeaseSpec {
        holder_identity: Some(config.identity.clone()),
        lease_duration_seconds: Some(config.lease_duration_seconds()),
        renew_time: Some(now.clone()),
        ..current.clone()
    };
    match decision {
        Decision::Renew => Some(LeaseSpec {
            // A Lease this candidate held before it restarted (same pod name) may lack these.
            acquire_time: current.acquire_time.clone().or(Some(now)),
            lease_transitions: current.lease_transitions.or(Some(0)),
            ..base
        }),
        Decision::Acquire => Some(LeaseSpec {
            acquire_time: Some(now),
            lease_transitions: Some(current.lease_transitions.map_or(0, |t| t.saturating_add(1))),
            ..base
        }),
        Decision::Wait { .. } => None,
    }
}

/// The spec a holder writes when it stops gracefully: nobody holds it, and it expires in one
/// second for any candidate that still saw the old holder (client-go's `ReleaseOnCancel`).
pub fn released(current: &LeaseSpec, now: Timestamp) -> LeaseSpec {
    LeaseSpec {
        holder_identity: Some(String::new()),
        lease_duration_seconds: Some(1),
        acquire_time: Some(MicroTime(now)),
        renew_time: Some(MicroTime(now)),
        ..current.clone()
    }
}

/// The outcome of one try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// This candidate holds the Lease now (acquired or renewed).
    Leading,
    /// Another candidate holds it (`None`: another candidate won a race just now).
    Standby { holder: Option<String> },
}

/// Clock of the wall time written into the Lease; injected so tests are deterministic.
pub type WallClock = std::sync::Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// One candidate in the election.
pub struct Elector {
    api: Api<Lease>,
    config: ElectionConfig,
    wall: WallClock,
    observed: Option<Observed>,
    leading: bool,
    /// When the last successful write of ours was started (before its read): the others
    /// measure expiry from when they saw it, which is later, so the renew deadline counted
    /// from here ends before the lease can expire for them.
    renewed_at: Option<Instant>,
}

impl std::fmt::Debug for Elector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Elector")
            .field("config", &self.config)
            .field("observed", &self.observed)
            .field("leading", &self.leading)
            .finish_non_exhaustive()
    }
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

impl Elector {
    pub fn new(client: Client, config: ElectionConfig) -> Result<Self, LeaderError> {
        Self::with_clock(client, config, std::sync::Arc::new(Timestamp::now))
    }

    pub fn with_clock(
        client: Client,
        config: ElectionConfig,
        wall: WallClock,
    ) -> Result<Self, LeaderError> {
        config.validate()?;
        Ok(Self {
            api: Api::namespaced(client, &config.namespace),
            config,
            wall,
            observed: None,
            leading: false,
            renewed_at: None,
        })
    }

    pub fn config(&self) -> &ElectionConfig {
        &self.config
    }

    /// Whether the last try ended with this candidate holding the Lease.
    pub fn is_leading(&self) -> bool {
        self.leading
    }

    /// The holder the last read named, if any.
    pub fn observed_holder(&self) -> Option<&str> {
        self.observed.as_ref().and_then(|o| holder(&o.spec))
    }

    fn names(&self) -> (String, String) {
        (
            self.config.namespace.clone(),
            self.config.lease_name.clone(),
        )
    }

    /// One round of client-go's `tryAcquireOrRenew`: read the Lease, decide, and write it with
    /// the `resourceVersion` that was read. A 409 means another candidate wrote first: this
    /// one is not the leader, and will read the winner's record on its next try.
    pub async fn try_acquire_or_renew(&mut self) -> Result<Attempt, LeaderError> {
        let now = Instant::now();
        let name = self.config.lease_name.clone();
        let found = self.api.get_opt(&name).await.map_err(|source| {
            let (namespace, name) = self.names();
            LeaderError::Get {
                namespace,
                name,
                source,
            }
        })?;
        let Some(lease) = found else {
            return self.create(now).await;
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let observed = observe(self.observed.take(), spec, now);
        let decision = decide(&observed, &self.config.identity, now);
        let next = claim(&observed.spec, &decision, &self.config, (self.wall)());
        self.observed = Some(observed);
        let Some(spec) = next else {
            self.leading = false;
            let holder = self.observed_holder().map(str::to_owned);
            return Ok(Attempt::Standby { holder });
        };
        if decision == Decision::Acquire {
            debug!(
                lease = %name,
                previous = self.observed_holder().unwrap_or("<nobody>"),
                "the Lease is free or expired; trying to take it"
            );
        }
        self.write(lease, spec, now).await
    }

    async fn create(&mut self, now: Instant) -> Result<Attempt, LeaderError> {
        let spec = claim(
            &LeaseSpec::default(),
            &Decision::Acquire,
            &self.config,
            (self.wall)(),
        )
        .map(|s| LeaseSpec {
            lease_transitions: Some(0),
            ..s
        });
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(self.config.lease_name.clone()),
                namespace: Some(self.config.namespace.clone()),
                ..Default::default()
            },
            spec,
        };
        let created = self.api.create(&PostParams::default(), &lease).await;
        // A 409: another candidate created it first.
        self.settle(created, now, |namespace, name, source| {
            LeaderError::Create {
                namespace,
                name,
                source,
            }
        })
    }

    async fn write(
        &mut self,
        mut lease: Lease,
        spec: LeaseSpec,
        now: Instant,
    ) -> Result<Attempt, LeaderError> {
        // `lease` carries the resourceVersion it was read with: the PUT is refused with 409 if
        // anyone wrote in between.
        lease.spec = Some(spec);
        let name = lease.name_any();
        let written = self
            .api
            .replace(&name, &PostParams::default(), &lease)
            .await;
        self.settle(written, now, |namespace, name, source| {
            LeaderError::Update {
                namespace,
                name,
                source,
            }
        })
    }

    /// The outcome of a guarded write: ours, a 409 (someone wrote first: stand by), or an error.
    fn settle(
        &mut self,
        result: Result<Lease, kube::Error>,
        now: Instant,
        error: impl FnOnce(String, String, kube::Error) -> LeaderError,
    ) -> Result<Attempt, LeaderError> {
        match result {
            Ok(lease) => Ok(self.won(lease, now)),
            Err(e) if is_conflict(&e) => {
                self.leading = false;
                Ok(Attempt::Standby { holder: None })
            }
            Err(source) => {
                let (namespace, name) = self.names();
                Err(error(namespace, name, source))
            }
        }
    }

    fn won(&mut self, lease: Lease, now: Instant) -> Attempt {
        self.observed = Some(Observed {
            spec: lease.spec.unwrap_or_default(),
            at: now,
        });
        self.leading = true;
        self.renewed_at = Some(now);
        Attempt::Leading
    }

    /// Tries every retry period until this candidate holds the Lease; `standing_by` hears the
    /// holder's name each time another one is seen. API errors are logged and retried: a
    /// standby outlives an API server restart.
    pub async fn acquire(&mut self, mut standing_by: impl FnMut(&str)) {
        let mut last_holder: Option<String> = None;
        loop {
            match self.try_acquire_or_renew().await {
                Ok(Attempt::Leading) => {
                    info!(
                        lease = %self.config.lease_name,
                        identity = %self.config.identity,
                        "acquired the Lease; leading"
                    );
                    return;
                }
                Ok(Attempt::Standby {
                    holder: Some(holder),
                }) => {
                    if last_holder.as_deref() != Some(holder.as_str()) {
                        standing_by(&holder);
                        last_holder = Some(holder);
                    }
                }
                // Lost a race: the next read names the winner.
                Ok(Attempt::Standby { holder: None }) => {}
                Err(e) => warn!(error = %e, "leader election attempt failed; retrying"),
            }
            tokio::time::sleep(self.config.retry_period).await;
        }
    }

    /// Renews every retry period while leading. Returns how leadership was lost: no renew
    /// succeeded within the renew deadline of the last successful one, or another candidate
    /// holds the Lease. Never returns while renewing works; drop the future to stop renewing.
    pub async fn hold(&mut self) -> Lost {
        let started = Instant::now();
        loop {
            tokio::time::sleep(self.config.retry_period).await;
            // Counted from the acquisition itself, not from when holding started: whatever
            // ran in between (watches, an event) does not stretch the window.
            let renewed = self.renewed_at.unwrap_or(started);
            let deadline = renewed + self.config.renew_deadline;
            match tokio::time::timeout_at(deadline, self.renew()).await {
                Ok(Ok(())) => {}
                Ok(Err(lost)) => {
                    self.leading = false;
                    return lost;
                }
                Err(_) => {
                    self.leading = false;
                    return Lost::RenewDeadline(self.config.renew_deadline);
                }
            }
        }
    }

    /// Tries until one renew succeeds (it updates `renewed_at`). The caller bounds it with
    /// the renew deadline.
    async fn renew(&mut self) -> Result<(), Lost> {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(Attempt::Leading) => return Ok(()),
                Ok(Attempt::Standby {
                    holder: Some(holder),
                }) => return Err(Lost::TakenBy(holder)),
                // A 409: someone wrote the Lease since it was read. Read again at once.
                Ok(Attempt::Standby { holder: None }) => continue,
                Err(e) => warn!(error = %e, "cannot renew the Lease; retrying"),
            }
            tokio::time::sleep(self.config.retry_period).await;
        }
    }

    /// Gives the Lease up, if this candidate still holds it, so a standby takes over at its
    /// next try. Guarded by resourceVersion like every write: a Lease someone else took in the
    /// meantime is left alone.
    pub async fn release(&mut self) -> Result<bool, LeaderError> {
        let name = self.config.lease_name.clone();
        let lease = self.api.get_opt(&name).await.map_err(|source| {
            let (namespace, name) = self.names();
            LeaderError::Get {
                namespace,
                name,
                source,
            }
        })?;
        self.leading = false;
        let Some(mut lease) = lease else {
            return Ok(false);
        };
        let spec = lease.spec.clone().unwrap_or_default();
        if holder(&spec) != Some(self.config.identity.as_str()) {
            return Ok(false);
        }
        lease.spec = Some(released(&spec, (self.wall)()));
        match self
            .api
            .replace(&name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_conflict(&e) => Ok(false),
            Err(source) => {
                let (namespace, name) = self.names();
                Err(LeaderError::Update {
                    namespace,
                    name,
                    source,
                })
            }
        }
    }
}

/// An identity for a process without a pod name (a local run): the host name and a random
/// suffix, so two local processes on one machine are still two candidates.
pub fn fallback_identity() -> String {
    use std::hash::{BuildHasher, Hasher};
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "face2simpson-operator".into());
    // RandomState is seeded from the OS's randomness: no extra dependency for eight hex digits.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    format!("{host}-{:08x}", hasher.finish() as u32)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn config() -> ElectionConfig {
        ElectionConfig {
            lease_name: "face2simpson-operator".into(),
            namespace: "face2simpson-system".into(),
            identity: "operator-a".into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    fn spec(holder: Option<&str>, duration: i32, renewed: &str) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(str::to_owned),
            lease_duration_seconds: Some(duration),
            renew_time: Some(MicroTime(renewed.parse().unwrap())),
            acquire_time: Some(MicroTime("2026-12-01T00:00:00Z".parse().unwrap())),
            lease_transitions: Some(3),
            ..Default::default()
        }
    }

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn default_timing_is_valid_and_bad_timing_is_refused() {
        config().validate().unwrap();
        let bad = [
            ElectionConfig {
                renew_deadline: Duration::from_secs(15),
                ..config()
            },
            ElectionConfig {
                retry_period: Duration::from_secs(9),
                ..config()
            },
            ElectionConfig {
                retry_period: Duration::ZERO,
                ..config()
            },
            ElectionConfig {
                lease_duration: Duration::from_millis(900),
                renew_deadline: Duration::from_millis(500),
                retry_period: Duration::from_millis(100),
                ..config()
            },
            ElectionConfig {
                identity: String::new(),
                ..config()
            },
        ];
        for c in bad {
            assert!(c.validate().is_err(), "{c:?} was accepted");
        }
    }

    #[test]
    fn a_free_or_released_lease_is_acquired() {
        let now = Instant::now();
        for holder in [None, Some("")] {
            let o = observe(None, spec(holder, 15, "2026-12-01T00:00:00Z"), now);
            assert_eq!(
                decide(&o, "operator-a", now),
                Decision::Acquire,
                "{holder:?}"
            );
        }
    }

    #[test]
    fn our_own_lease_is_renewed_even_after_a_restart() {
        // A container restarted in the same pod has the same identity: it resumes at once.
        let now = Instant::now();
        let o = observe(
            None,
            spec(Some("operator-a"), 15, "2026-12-01T00:00:00Z"),
            now,
        );
        assert_eq!(decide(&o, "operator-a", now), Decision::Renew);
    }

    #[test]
    fn another_holder_is_waited_for_a_full_lease_duration_from_when_we_saw_it() {
        let t0 = Instant::now();
        // Its renewTime is years ago by our clock: irrelevant, clocks may disagree.
        let o = observe(
            None,
            spec(Some("operator-b"), 15, "2000-01-01T00:00:00Z"),
            t0,
        );
        assert_eq!(
            decide(&o, "operator-a", t0 + 14 * SECOND),
            Decision::Wait {
                holder: "operator-b".into(),
                expires_in: SECOND
            }
        );
        assert_eq!(
            decide(&o, "operator-a", t0 + 15 * SECOND),
            Decision::Acquire
        );
    }

    #[test]
    fn a_renew_seen_restarts_the_wait_and_an_unchanged_record_does_not() {
        let t0 = Instant::now();
        let first = spec(Some("operator-b"), 15, "2026-12-01T00:00:00Z");
        let o = observe(None, first.clone(), t0);
        // Read again 10 s later, unchanged: still measured from t0.
        let o = observe(Some(o), first, t0 + 10 * SECOND);
        assert_eq!(o.at, t0);
        assert_eq!(
            decide(&o, "operator-a", t0 + 16 * SECOND),
            Decision::Acquire
        );
        // Renewed by its holder: measured from when we saw the renew.
        let renewed = spec(Some("operator-b"), 15, "2026-12-01T00:00:02Z");
        let o = observe(Some(o), renewed, t0 + 12 * SECOND);
        assert_eq!(o.at, t0 + 12 * SECOND);
        assert!(matches!(
            decide(&o, "operator-a", t0 + 16 * SECOND),
            Decision::Wait { .. }
        ));
    }

    #[test]
    fn the_holders_own_duration_counts_not_ours() {
        // A released Lease says one second; a holder without a duration promised nothing.
        let t0 = Instant::now();
        let o = observe(
            None,
            spec(Some("operator-b"), 1, "2026-12-01T00:00:00Z"),
            t0,
        );
        assert_eq!(decide(&o, "operator-a", t0 + SECOND), Decision::Acquire);
        let mut s = spec(Some("operator-b"), 1, "2026-12-01T00:00:00Z");
        s.lease_duration_seconds = None;
        let o = observe(None, s, t0);
        assert_eq!(decide(&o, "operator-a", t0), Decision::Acquire);
    }

    #[test]
    fn acquiring_counts_a_transition_and_renewing_keeps_it() {
        let now: Timestamp = "2026-12-01T00:01:00Z".parse().unwrap();
        let current = spec(Some("operator-b"), 15, "2026-12-01T00:00:00Z");
        let taken = claim(&current, &Decision::Acquire, &config(), now).unwrap();
        assert_eq!(taken.holder_identity.as_deref(), Some("operator-a"));
        assert_eq!(taken.lease_transitions, Some(4));
        assert_eq!(taken.acquire_time, Some(MicroTime(now)));
        assert_eq!(taken.renew_time, Some(MicroTime(now)));
        assert_eq!(taken.lease_duration_seconds, Some(15));

        let later: Timestamp = "2026-12-01T00:01:02Z".parse().unwrap();
        let renewed = claim(&taken, &Decision::Renew, &config(), later).unwrap();
        assert_eq!(renewed.lease_transitions, Some(4));
        assert_eq!(renewed.acquire_time, Some(MicroTime(now)));
        assert_eq!(renewed.renew_time, Some(MicroTime(later)));

        let wait = Decision::Wait {
            holder: "operator-b".into(),
            expires_in: SECOND,
        };
        assert_eq!(claim(&current, &wait, &config(), now), None);
    }

    #[test]
    fn a_fractional_lease_duration_is_announced_rounded_up() {
        let c = ElectionConfig {
            lease_duration: Duration::from_millis(4500),
            renew_deadline: Duration::from_secs(3),
            retry_period: Duration::from_millis(500),
            ..config()
        };
        c.validate().unwrap();
        assert_eq!(c.lease_duration_seconds(), 5);
    }

    #[test]
    fn releasing_empties_the_holder_and_shortens_the_lease() {
        let now: Timestamp = "2026-12-01T00:01:00Z".parse().unwrap();
        let r = released(&spec(Some("operator-a"), 15, "2026-12-01T00:00:00Z"), now);
        assert_eq!(holder(&r), None);
        assert_eq!(r.lease_duration_seconds, Some(1));
        assert_eq!(r.lease_transitions, Some(3));
        let o = observe(None, r, Instant::now());
        assert_eq!(decide(&o, "operator-b", o.at), Decision::Acquire);
    }

    #[test]
    fn fallback_identities_differ_between_processes_on_one_host() {
        let (a, b) = (fallback_identity(), fallback_identity());
        assert_ne!(a, b);
        assert!(a.len() > 9);
    }
}
