//! Admission by expected wait: backpressure instead of a queue that grows until callers time out.
//!
//! Every `/v1/predict` request holds a [`Ticket`] from admission to its answer. A newcomer is
//! admitted while the requests already in flight would drain within `max_queue_wait`; beyond
//! that it is turned away at once (503 + Retry-After), so the requests that are served keep a
//! bounded latency and the client can retry later or elsewhere. A count limit alone cannot do
//! this: a request costs 1 ms or 200 ms depending on the photo and the machine, so "64 waiting"
//! means 60 ms on one pod and 10 s on another.
//!
//! The drain time is `in_flight × per_request`, where `per_request` is **measured**: the busy
//! time between completions (idle time excluded) averaged over a window of completions
//! ([`WINDOW`], or fewer once [`WINDOW_BUSY`] of busy time has passed), then smoothed. At saturation that is exactly the time the service needs per request at its
//! current concurrency, batching and decode parallelism included; below saturation it
//! overestimates (it is the latency of a lone request), which only errs on the side of caution
//! where there is nothing to shed anyway.
//!
//! The budget is what a user would accept as a wait (a couple of seconds by default), not a
//! latency target: a closed loop of clients each waiting for its own answer can never queue
//! more than its own size and must never be refused, while a burst far beyond what the pod
//! drains in the budget is refused in part.
//!
//! Two bounds keep the estimate from doing harm: below `floor` requests in flight everything is
//! admitted (every decode slot busy with one upload queued behind it, so the pipeline never idles
//! for want of admitted work, and a stale estimate can never lock the service out), and above
//! `cap` nothing is (memory stays bounded whatever the estimate says).
//!
//! The logic takes the time as an argument ([`Admission::try_admit_at`], [`Ticket::finish_at`])
//! so it is tested deterministically, without sleeping.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Completions averaged into one sample of the time per request. Batched completions arrive in
/// bursts (a batch of 8 answers 8 requests at once, then nothing for a forward pass), and a
/// window that ends inside a batch credits it with only part of that batch's gap: the error is
/// up to `max_batch - 1` completions in `WINDOW`. With 16 it was ±40 %, and the admission limit
/// swung with it (measured: p99 1.6× the median at c=32); with 64 it is ±11 %.
pub const WINDOW: u32 = 64;

/// Busy time that closes a window early: when requests are slow (large photos), a sample comes
/// every half second rather than every 64 requests, so the limit follows a change of load
/// within about a second.
pub const WINDOW_BUSY: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionConfig {
    /// Requests in flight that are always admitted.
    pub floor: usize,
    /// Requests in flight never exceeded.
    pub cap: usize,
    /// Longest expected drain time of the requests ahead; `None` admits up to `cap`.
    pub max_queue_wait: Option<Duration>,
}

/// Why a request was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// `cap` requests are in flight.
    Full,
    /// The requests ahead would take `expected` to drain, more than `max_queue_wait`.
    TooLong { expected: Duration },
}

#[derive(Debug, Default)]
struct State {
    in_flight: usize,
    /// Start of the busy time not yet counted: the last completion, or the admission that ended
    /// an idle period. `None` while idle, so idle time never counts as service time.
    since: Option<Instant>,
    window_busy: Duration,
    window_done: u32,
    per_request: Option<Duration>,
}

/// The admission controller; share it as `Arc<Admission>`.
#[derive(Debug)]
pub struct Admission {
    config: AdmissionConfig,
    state: Mutex<State>,
}

impl Admission {
    pub fn new(config: AdmissionConfig) -> Arc<Self> {
        Arc::new(Self {
            config,
            state: Mutex::new(State::default()),
        })
    }

    pub fn config(&self) -> AdmissionConfig {
        self.config
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is a few counters updated in one step each: still consistent after a panic
        // elsewhere.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a request now, or says why not.
    pub fn try_admit(self: &Arc<Self>) -> Result<Ticket, Rejection> {
        self.try_admit_at(Instant::now())
    }

    /// Admits a request arriving at `now`, or says why not.
    pub fn try_admit_at(self: &Arc<Self>, now: Instant) -> Result<Ticket, Rejection> {
        let mut s = self.lock();
        if let Some(rejection) = self.refusal(&s) {
            return Err(rejection);
        }
        if s.in_flight == 0 {
            s.since = Some(now);
        }
        s.in_flight += 1;
        Ok(Ticket {
            admission: Some(self.clone()),
        })
    }

    /// Whether a request arriving now would be turned away, without admitting it: asked before
    /// an upload is read, so a saturated pod refuses it without receiving the body.
    pub fn check(&self) -> Result<(), Rejection> {
        self.refusal(&self.lock()).map_or(Ok(()), Err)
    }

    fn refusal(&self, s: &State) -> Option<Rejection> {
        if s.in_flight >= self.config.cap {
            return Some(Rejection::Full);
        }
        if s.in_flight >= self.config.floor
            && let (Some(budget), Some(per_request)) = (self.config.max_queue_wait, s.per_request)
        {
            let ahead = u32::try_from(s.in_flight).unwrap_or(u32::MAX);
            let expected = per_request.saturating_mul(ahead);
            if expected > budget {
                return Some(Rejection::TooLong { expected });
            }
        }
        None
    }

    /// How long the requests in flight are expected to take to drain (what a client turned
    /// away should wait); a second while nothing has been measured.
    pub fn drain_time(&self) -> Duration {
        let s = self.lock();
        let ahead = u32::try_from(s.in_flight).unwrap_or(u32::MAX);
        s.per_request
            .map_or(Duration::from_secs(1), |p| p.saturating_mul(ahead))
    }

    fn complete(&self, now: Instant) {
        let mut s = self.lock();
        s.in_flight = s.in_flight.saturating_sub(1);
        if let Some(since) = s.since {
            s.window_busy += now.saturating_duration_since(since);
            s.window_done += 1;
            if s.window_done >= WINDOW || s.window_busy >= WINDOW_BUSY {
                let sample = s.window_busy / s.window_done;
                // Smoothed over windows: one unlucky window (a big photo, a GC pause in the
                // client) moves the limit by a quarter of its error, not all of it.
                s.per_request = Some(match s.per_request {
                    None => sample,
                    Some(old) => (old * 3 + sample) / 4,
                });
                s.window_busy = Duration::ZERO;
                s.window_done = 0;
            }
        }
        s.since = (s.in_flight > 0).then_some(now);
    }

    /// Requests admitted and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.lock().in_flight
    }

    /// True when the service is busy enough that optional work (the shadow stage) should give
    /// way: every decode slot is taken with as many uploads waiting behind them (`floor`), or
    /// the other requests in flight would take more than half the queue-wait budget to drain
    /// (admission is half way to turning newcomers away). Asked by a request in flight, which
    /// does not count itself: a lone slow request is no pressure. Cheap: one lock.
    pub fn under_pressure(&self) -> bool {
        let s = self.lock();
        if s.in_flight >= self.config.floor.min(self.config.cap) {
            return true;
        }
        match (self.config.max_queue_wait, s.per_request) {
            (Some(budget), Some(per_request)) => {
                let others = u32::try_from(s.in_flight.saturating_sub(1)).unwrap_or(u32::MAX);
                per_request.saturating_mul(others).saturating_mul(2) > budget
            }
            _ => false,
        }
    }

    /// The measured time per request, once a window of completions has been seen.
    pub fn per_request(&self) -> Option<Duration> {
        self.lock().per_request
    }
}

/// A request in flight; dropping it (answered, failed, timed out, client gone) completes it.
#[derive(Debug)]
pub struct Ticket {
    admission: Option<Arc<Admission>>,
}

impl Ticket {
    /// Completes the request at `now`.
    pub fn finish_at(mut self, now: Instant) {
        if let Some(a) = self.admission.take() {
            a.complete(now);
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(a) = self.admission.take() {
            a.complete(Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn config(floor: usize, cap: usize, wait_ms: Option<u64>) -> AdmissionConfig {
        AdmissionConfig {
            floor,
            cap,
            max_queue_wait: wait_ms.map(Duration::from_millis),
        }
    }

    /// Runs `n` requests one after the other, each taking `each`, starting at `t`; returns the
    /// time after the last.
    fn one_by_one(a: &Arc<Admission>, mut t: Instant, n: u32, each: Duration) -> Instant {
        for _ in 0..n {
            let ticket = a.try_admit_at(t).unwrap();
            t += each;
            ticket.finish_at(t);
        }
        t
    }

    #[test]
    fn without_a_measurement_only_the_cap_applies() {
        let a = Admission::new(config(2, 5, Some(100)));
        let t = Instant::now();
        let tickets: Vec<_> = (0..5).map(|_| a.try_admit_at(t).unwrap()).collect();
        assert_eq!(a.try_admit_at(t).unwrap_err(), Rejection::Full);
        assert_eq!(a.in_flight(), 5);
        drop(tickets);
        assert_eq!(a.in_flight(), 0);
        assert!(a.try_admit_at(t).is_ok());
    }

    #[test]
    fn pressure_starts_at_the_floor_or_at_half_the_budget() {
        let a = Admission::new(config(2, 5, None));
        let t = Instant::now();
        let first = a.try_admit_at(t).unwrap();
        assert!(!a.under_pressure());
        let second = a.try_admit_at(t).unwrap();
        assert!(
            a.under_pressure(),
            "every decode slot taken, as many waiting"
        );
        drop((first, second));
        assert!(!a.under_pressure());

        let a = Admission::new(config(10, 64, Some(100)));
        let t = one_by_one(&a, Instant::now(), WINDOW, 20 * MS);
        assert_eq!(a.per_request(), Some(20 * MS));
        // The asking request and two others: 40 ms of 100 queued besides it.
        let tickets: Vec<_> = (0..3).map(|_| a.try_admit_at(t).unwrap()).collect();
        assert!(!a.under_pressure());
        // Three others: 60 ms, more than half the budget.
        let more = a.try_admit_at(t).unwrap();
        assert!(a.under_pressure());
        drop((tickets, more));
        // A lone request is no pressure, however slow.
        let a = Admission::new(config(10, 64, Some(100)));
        let t = one_by_one(&a, Instant::now(), WINDOW, 500 * MS);
        let lone = a.try_admit_at(t).unwrap();
        assert!(!a.under_pressure());
        drop(lone);
    }

    #[test]
    fn the_time_per_request_is_the_busy_time_per_completion() {
        let a = Admission::new(config(2, 64, Some(100)));
        let t = Instant::now();
        // Fewer than a window: no estimate yet.
        let t = one_by_one(&a, t, WINDOW - 1, 2 * MS);
        assert_eq!(a.per_request(), None);
        // Idle time between requests is not service time.
        let t = one_by_one(&a, t + Duration::from_secs(5), 1, 2 * MS);
        assert_eq!(a.per_request(), Some(2 * MS));

        // Saturated: WINDOW requests in flight, answered in batches of 8 every 16 ms, i.e.
        // 2 ms per request whatever the burstiness.
        let a = Admission::new(config(2, 64, Some(100)));
        let mut tickets: Vec<_> = (0..WINDOW).map(|_| a.try_admit_at(t).unwrap()).collect();
        let mut now = t;
        while !tickets.is_empty() {
            now += 16 * MS;
            for ticket in tickets.drain(..8) {
                ticket.finish_at(now);
            }
        }
        assert_eq!(a.per_request(), Some(2 * MS));
        assert_eq!(a.in_flight(), 0);
    }

    #[test]
    fn later_windows_move_the_estimate_a_quarter_of_the_way() {
        let a = Admission::new(config(2, 64, Some(100)));
        let t = one_by_one(&a, Instant::now(), WINDOW, 6 * MS);
        assert_eq!(a.per_request(), Some(6 * MS));
        one_by_one(&a, t, WINDOW, 2 * MS);
        assert_eq!(a.per_request(), Some(5 * MS));
    }

    #[test]
    fn slow_requests_are_measured_without_waiting_for_a_full_window() {
        let a = Admission::new(config(2, 64, Some(100)));
        let t = one_by_one(&a, Instant::now(), 3, 100 * MS);
        assert_eq!(a.per_request(), None);
        one_by_one(&a, t, 2, 100 * MS);
        assert_eq!(a.per_request(), Some(100 * MS));
    }

    /// The backpressure rule: with 5 ms per request and a 100 ms budget, 20 requests in flight
    /// drain in 100 ms and the 21st is still admitted; with 21 ahead (105 ms) the next is not.
    #[test]
    fn admits_while_the_requests_ahead_drain_within_the_budget() {
        let a = Admission::new(config(4, 64, Some(100)));
        let t = one_by_one(&a, Instant::now(), WINDOW, 5 * MS);
        assert_eq!(a.per_request(), Some(5 * MS));
        let mut held: Vec<_> = (0..21).map(|_| a.try_admit_at(t).unwrap()).collect();
        assert_eq!(
            a.try_admit_at(t).unwrap_err(),
            Rejection::TooLong { expected: 105 * MS }
        );
        // A rejection takes no place: one answer later there is room for exactly one more.
        assert_eq!(a.in_flight(), 21);
        held.pop().unwrap().finish_at(t + 5 * MS);
        held.push(a.try_admit_at(t + 5 * MS).unwrap());
        assert!(a.try_admit_at(t + 5 * MS).is_err());
    }

    #[test]
    fn the_floor_is_always_admitted_and_the_cap_never_exceeded() {
        // A huge estimate (a burst of big photos) cannot shut the service out below the floor.
        let a = Admission::new(config(4, 6, Some(100)));
        let t = one_by_one(&a, Instant::now(), WINDOW, Duration::from_secs(1));
        let held: Vec<_> = (0..4).map(|_| a.try_admit_at(t).unwrap()).collect();
        assert!(matches!(a.try_admit_at(t), Err(Rejection::TooLong { .. })));
        drop(held);
        // A tiny estimate cannot take it past the cap.
        let a = Admission::new(config(4, 6, Some(100)));
        let t = one_by_one(&a, t, WINDOW, Duration::from_micros(1));
        let _held: Vec<_> = (0..6).map(|_| a.try_admit_at(t).unwrap()).collect();
        assert_eq!(a.try_admit_at(t).unwrap_err(), Rejection::Full);
    }

    /// The defaults for a two-core pod (2 decode slots, 64 waiting, the default budget).
    fn default_config() -> AdmissionConfig {
        crate::Limits {
            max_decodes: 2,
            ..crate::Limits::default()
        }
        .admission()
    }

    /// 8 clients, each sending its next request when its answer arrives, on a pod that answers
    /// one request every 40 ms when saturated (a slow pod: 320 ms for the whole line): nobody
    /// is ever turned away, whatever the order of answers.
    #[test]
    fn a_closed_loop_of_eight_clients_is_never_refused() {
        let a = Admission::new(default_config());
        let mut t = Instant::now();
        let mut line: std::collections::VecDeque<_> =
            (0..8).map(|_| a.try_admit_at(t).unwrap()).collect();
        for _ in 0..10 * WINDOW {
            t += 40 * MS;
            line.pop_front().unwrap().finish_at(t);
            assert_eq!(a.check(), Ok(()));
            line.push_back(a.try_admit_at(t).expect("a closed loop was refused"));
        }
        assert_eq!(a.per_request(), Some(40 * MS));
        assert_eq!(a.in_flight(), 8);
    }

    /// The same pod hit by a burst of 200 at once is refused in part: what drains within the
    /// budget is admitted, the rest is told to come back.
    #[test]
    fn a_burst_of_two_hundred_is_refused_in_part() {
        let a = Admission::new(AdmissionConfig {
            cap: 1000,
            ..default_config()
        });
        let t = one_by_one(&a, Instant::now(), WINDOW, 40 * MS);
        let results: Vec<_> = (0..200).map(|_| a.try_admit_at(t)).collect();
        let admitted = results.iter().filter(|r| r.is_ok()).count();
        let budget = crate::DEFAULT_MAX_QUEUE_WAIT.as_millis() as usize;
        assert_eq!(admitted, budget / 40 + 1, "admitted {admitted}");
        assert!(matches!(a.check(), Err(Rejection::TooLong { .. })));
        assert!(a.drain_time() > crate::DEFAULT_MAX_QUEUE_WAIT);
        // With the count limit of the defaults, too, and before anything was measured.
        let a = Admission::new(default_config());
        let results: Vec<_> = (0..200).map(|_| a.try_admit_at(t)).collect();
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 66);
    }

    #[test]
    fn without_a_budget_the_estimate_is_ignored() {
        let a = Admission::new(config(1, 8, None));
        let t = one_by_one(&a, Instant::now(), WINDOW, Duration::from_secs(1));
        let _held: Vec<_> = (0..8).map(|_| a.try_admit_at(t).unwrap()).collect();
        assert_eq!(a.try_admit_at(t).unwrap_err(), Rejection::Full);
    }
}
