//! `GET /metrics`: what an operator watches, in the OpenMetrics text format that Prometheus
//! (and every stack that scrapes it) reads, encoded by `prometheus-client`.
//!
//! Every metric is named `ood_*`:
//! - `ood_http_requests_total{route, status}` and `ood_http_request_duration_seconds{route}`
//!   (a histogram), from a middleware around every route; `route` is the route's pattern
//!   (`/v1/predict`), or `other` for what matched none, so that a scan of random paths cannot
//!   grow the label set;
//! - `ood_http_requests_in_flight`;
//! - `ood_batch_size` (a histogram of the images per batch through the model) and
//!   `ood_queue_depth` (images waiting for a lane, read at scrape time);
//! - `ood_connections_open`, `ood_connections_limit`, `ood_connections_closed_total{reason}`
//!   (`client`, `header_timeout`, `idle_timeout`, `evicted`, `shutdown`) and
//!   `ood_accept_errors_total{kind}` (`descriptors`, `other`), from [`crate::connections`];
//! - `ood_model_info{checkpoint, sha256, preset, rule}`, a gauge at 1: the model's identity.
//!
//! The registry belongs to one server, not to the process, so that servers in one process
//! (the tests start many) count apart.

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::Instant;

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    checkpoint: String,
    sha256: String,
    preset: String,
    rule: String,
}

/// Why the server closed a connection (or saw it close).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client closed it, or the connection ended on its own (an error, a `Connection:
    /// close`).
    Client,
    /// The request's head did not arrive within the header timeout.
    HeaderTimeout,
    /// A kept-alive connection sent nothing for the idle timeout.
    IdleTimeout,
    /// The connection cap (or a lack of file descriptors) was reached and this connection was
    /// the idlest.
    Evicted,
    /// The server is shutting down.
    Shutdown,
}

impl CloseReason {
    fn label(self) -> &'static str {
        match self {
            CloseReason::Client => "client",
            CloseReason::HeaderTimeout => "header_timeout",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::Evicted => "evicted",
            CloseReason::Shutdown => "shutdown",
        }
    }
}

/// One server's metrics.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    in_flight: Gauge,
    queue_depth: Gauge,
    pub(crate) connections_open: Gauge,
    pub(crate) connections_limit: Gauge,
    connections_closed: Family<ReasonLabels, Counter>,
    accept_errors: Family<KindLabels, Counter>,
    model: Family<ModelLabels, Gauge>,
}

/// Seconds, from 0.5 ms to about 16 s in doublings: a prediction takes milliseconds, a slow
/// upload up to the request timeout.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl Metrics {
    /// The registry with every metric at zero. `batch_sizes` is the batcher's histogram
    /// ([`crate::batcher::Stats::batch_sizes`]), registered as it is.
    pub fn new(batch_sizes: Histogram) -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "ood_http_requests",
            "HTTP requests answered, by route and status",
            requests.clone(),
        );
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register(
            "ood_http_request_duration_seconds",
            "Time from a request's head to its response, by route",
            latency.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "ood_http_requests_in_flight",
            "HTTP requests being handled",
            in_flight.clone(),
        );
        registry.register(
            "ood_batch_size",
            "Images in each batch through the model",
            batch_sizes,
        );
        let queue_depth = Gauge::default();
        registry.register(
            "ood_queue_depth",
            "Images waiting for a free lane",
            queue_depth.clone(),
        );
        let connections_open = Gauge::default();
        registry.register(
            "ood_connections_open",
            "TCP connections open",
            connections_open.clone(),
        );
        let connections_limit = Gauge::default();
        registry.register(
            "ood_connections_limit",
            "The cap on open connections (the smaller of --max-connections and what the file-descriptor limit allows)",
            connections_limit.clone(),
        );
        let connections_closed = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "ood_connections_closed",
            "Connections closed, by reason",
            connections_closed.clone(),
        );
        let accept_errors = Family::<KindLabels, Counter>::default();
        registry.register(
            "ood_accept_errors",
            "Failed accepts: descriptors (the process or system ran out of file descriptors) or other",
            accept_errors.clone(),
        );
        let model = Family::<ModelLabels, Gauge>::default();
        registry.register(
            "ood_model_info",
            "The model served (always 1; its identity is in the labels)",
            model.clone(),
        );
        Metrics {
            registry,
            requests,
            latency,
            in_flight,
            queue_depth,
            connections_open,
            connections_limit,
            connections_closed,
            accept_errors,
            model,
        }
    }

    /// Sets the model's identity (one series at 1).
    pub fn set_model(&self, checkpoint: String, sha256: String, preset: String, rule: String) {
        self.model
            .get_or_create(&ModelLabels {
                checkpoint,
                sha256,
                preset,
                rule,
            })
            .set(1);
    }

    pub(crate) fn closed(&self, reason: CloseReason) {
        self.connections_closed
            .get_or_create(&ReasonLabels {
                reason: reason.label(),
            })
            .inc();
    }

    pub(crate) fn accept_error(&self, out_of_descriptors: bool) {
        let kind = if out_of_descriptors {
            "descriptors"
        } else {
            "other"
        };
        self.accept_errors.get_or_create(&KindLabels { kind }).inc();
    }

    /// The text exposition, with `queue_depth` (read by the caller at scrape time) set first.
    pub fn render(&self, queue_depth: usize) -> String {
        self.queue_depth.set(queue_depth as i64);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing into a String cannot fail");
        text
    }
}

/// Counts each request by route and status, times it, and keeps the in-flight gauge.
pub(crate) async fn track(
    State(metrics): State<Arc<Metrics>>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("other", |p| p.as_str())
        .to_string();
    let started = Instant::now();
    metrics.in_flight.inc();
    // Decremented on every exit, a dropped (timed-out or abandoned) request's included.
    struct InFlight<'a>(&'a Gauge);
    impl Drop for InFlight<'_> {
        fn drop(&mut self) {
            self.0.dec();
        }
    }
    let guard = InFlight(&metrics.in_flight);
    let response = next.run(request).await;
    drop(guard);
    metrics
        .latency
        .get_or_create(&RouteLabels {
            route: route.clone(),
        })
        .observe(started.elapsed().as_secs_f64());
    metrics
        .requests
        .get_or_create(&RequestLabels {
            route,
            status: response.status().as_u16(),
        })
        .inc();
    response
}
