//! Prometheus metrics of the service.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// The matched route template (`/v1/predict`), never the raw path: bounded cardinality.
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteOnly {
    pub route: String,
}

#[derive(Debug)]
pub struct Metrics {
    pub requests: Family<RouteLabels, Counter>,
    pub latency: Family<RouteOnly, Histogram>,
    pub batch_size: Histogram,
    pub queue_depth: Gauge,
    /// Set from the admission controller when scraped (nothing on the request path).
    pub in_flight: Gauge,
    pub request_cost: Gauge<f64, AtomicU64>,
    /// The shadow stage (see `shadow`): answered requests sampled for the candidate, those it
    /// scored, those dropped unscored (queue full, pod under pressure), those it failed on.
    pub shadow_sampled: Counter,
    pub shadow_scored: Counter,
    pub shadow_dropped: Counter,
    pub shadow_errors: Counter,
    /// 1 while a candidate is loaded and scored beside the champion.
    pub shadow_loaded: Gauge,
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        let requests = Family::<RouteLabels, Counter>::default();
        let latency = Family::<RouteOnly, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 15))
        });
        let batch_size = Histogram::new([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]);
        let queue_depth = Gauge::default();
        let in_flight = Gauge::default();
        let request_cost = Gauge::<f64, AtomicU64>::default();
        let mut registry = Registry::with_prefix("face2simpson_inference");
        registry.register(
            "http_requests",
            "HTTP requests by route and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Request latency by route",
            latency.clone(),
        );
        registry.register("batch_size", "Images per forward pass", batch_size.clone());
        registry.register(
            "queue_depth",
            "Requests waiting for the model",
            queue_depth.clone(),
        );
        registry.register(
            "requests_in_flight",
            "Predictions admitted and not yet answered",
            in_flight.clone(),
        );
        registry.register(
            "request_cost_seconds",
            "Measured busy time per answered prediction; admission turns a newcomer away when this times the requests in flight exceeds the queue-wait budget (0 until measured)",
            request_cost.clone(),
        );
        let shadow = ShadowMetrics::default();
        shadow.register(&mut registry);
        Self {
            requests,
            latency,
            batch_size,
            queue_depth,
            in_flight,
            request_cost,
            shadow_sampled: shadow.sampled,
            shadow_scored: shadow.scored,
            shadow_dropped: shadow.dropped,
            shadow_errors: shadow.errors,
            shadow_loaded: shadow.loaded,
            registry,
        }
    }
}

#[derive(Default)]
struct ShadowMetrics {
    sampled: Counter,
    scored: Counter,
    dropped: Counter,
    errors: Counter,
    loaded: Gauge,
}

impl ShadowMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "shadow_sampled",
            "Answered predictions sampled for the shadow candidate (scored or dropped)",
            self.sampled.clone(),
        );
        registry.register(
            "shadow_scored",
            "Sampled predictions the shadow candidate scored",
            self.scored.clone(),
        );
        registry.register(
            "shadow_dropped",
            "Sampled predictions dropped unscored because the shadow queue was full or the pod under pressure",
            self.dropped.clone(),
        );
        registry.register(
            "shadow_errors",
            "Sampled predictions the shadow candidate failed on",
            self.errors.clone(),
        );
        registry.register(
            "shadow_candidate_loaded",
            "1 while a shadow candidate is loaded beside the champion",
            self.loaded.clone(),
        );
    }
}

impl Metrics {
    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
