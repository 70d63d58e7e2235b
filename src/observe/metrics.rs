//! The gateway's metrics, through the [`metrics`](https://docs.rs/metrics) facade (feature
//! `metrics`).
//!
//! Every metric carries four labels, each with a bounded set of values:
//!
//! | label | value |
//! |---|---|
//! | `stage` | the stage's name, `-` before a stage was selected |
//! | `resource` | the route's template (`/pets/{petId}`, `$default`), `-` when no route matched; never the raw path |
//! | `method` | `GET`, `POST`, … (the nine standard methods), `OTHER` for any other |
//! | `release` | `baseline` or `canary` |
//!
//! | API Gateway's metric | name here | kind |
//! |---|---|---|
//! | `Count` | `gateway_requests_total` | counter |
//! | `4XXError` | `gateway_4xx_errors_total` | counter |
//! | `5XXError` | `gateway_5xx_errors_total` | counter |
//! | `Latency` | `gateway_latency_seconds` | histogram, receipt to the end of the body |
//! | `IntegrationLatency` | `gateway_integration_latency_seconds` | histogram, call to response head |
//! | `CacheHitCount` | `gateway_cache_hits_total` | counter |
//! | `CacheMissCount` | `gateway_cache_misses_total` | counter |
//! | (throttle rejections) | `gateway_throttled_total` | counter |
//! | (quota rejections) | `gateway_quota_exceeded_total` | counter |
//! | (authorizer latency) | `gateway_authorizer_latency_seconds` | histogram |
//! | (authorizer refusals and failures) | `gateway_authorizer_failures_total` | counter |
//! | (decisions made without Redis) | `gateway_decisions_without_backend_total` | counter, label `policy` only (feature `redis`) |
//!
//! A request is counted once its response body ended (or the client left). Install the
//! recorder (for example `metrics-exporter-prometheus`) before the gateway serves its first
//! request: the gateway registers its metrics with the recorder installed at that time.

use std::collections::HashMap;

use arc_swap::ArcSwap;
use http::Method;
use metrics::{Counter, Histogram, Label, Unit};

use super::format::Sent;
use crate::cache::CacheStatus;
use crate::context::RequestContext;
use crate::response::GatewayResponseType;

/// API Gateway's `Count`: every request.
pub const REQUESTS: &str = "gateway_requests_total";
/// API Gateway's `4XXError`: responses with a 4xx status, the gateway's or the service's.
pub const ERRORS_4XX: &str = "gateway_4xx_errors_total";
/// API Gateway's `5XXError`: responses with a 5xx status, and requests the inner service
/// failed (returned an error instead of a response).
pub const ERRORS_5XX: &str = "gateway_5xx_errors_total";
/// API Gateway's `Latency`, in seconds: from receipt to the end of the response body.
pub const LATENCY: &str = "gateway_latency_seconds";
/// API Gateway's `IntegrationLatency`, in seconds: from the call of the inner service to its
/// response head.
pub const INTEGRATION_LATENCY: &str = "gateway_integration_latency_seconds";
/// API Gateway's `CacheHitCount`.
pub const CACHE_HITS: &str = "gateway_cache_hits_total";
/// API Gateway's `CacheMissCount`.
pub const CACHE_MISSES: &str = "gateway_cache_misses_total";
/// Requests a throttle refused (`THROTTLED`).
pub const THROTTLED: &str = "gateway_throttled_total";
/// Requests refused because their key's quota was spent (`QUOTA_EXCEEDED`).
pub const QUOTA_EXCEEDED: &str = "gateway_quota_exceeded_total";
/// How long authorizers took, in seconds.
pub const AUTHORIZER_LATENCY: &str = "gateway_authorizer_latency_seconds";
/// Requests an authorizer refused or could not decide.
pub const AUTHORIZER_FAILURES: &str = "gateway_authorizer_failures_total";
/// Counter: throttle and quota decisions made without the shared backend (Redis down or
/// slow), by the outage policy; its one label, `policy`, is `fail_open` or `fail_closed`.
pub const DECISIONS_WITHOUT_BACKEND: &str = "gateway_decisions_without_backend_total";

/// One set of labels' metrics, registered once.
#[derive(Clone)]
struct Handles {
    requests: Counter,
    errors_4xx: Counter,
    errors_5xx: Counter,
    latency: Histogram,
    integration_latency: Histogram,
    cache_hits: Counter,
    cache_misses: Counter,
    throttled: Counter,
    quota_exceeded: Counter,
    authorizer_latency: Histogram,
    authorizer_failures: Counter,
}

impl Handles {
    fn register(labels: &[Label]) -> Self {
        let labels = || labels.to_vec();
        Self {
            requests: metrics::counter!(REQUESTS, labels()),
            errors_4xx: metrics::counter!(ERRORS_4XX, labels()),
            errors_5xx: metrics::counter!(ERRORS_5XX, labels()),
            latency: metrics::histogram!(LATENCY, labels()),
            integration_latency: metrics::histogram!(INTEGRATION_LATENCY, labels()),
            cache_hits: metrics::counter!(CACHE_HITS, labels()),
            cache_misses: metrics::counter!(CACHE_MISSES, labels()),
            throttled: metrics::counter!(THROTTLED, labels()),
            quota_exceeded: metrics::counter!(QUOTA_EXCEEDED, labels()),
            authorizer_latency: metrics::histogram!(AUTHORIZER_LATENCY, labels()),
            authorizer_failures: metrics::counter!(AUTHORIZER_FAILURES, labels()),
        }
    }

    fn record(&self, context: &RequestContext, sent: &Sent) {
        self.requests.increment(1);
        match sent.status {
            Some(status) if status.is_client_error() => self.errors_4xx.increment(1),
            Some(status) if status.is_server_error() => self.errors_5xx.increment(1),
            None if sent.failed => self.errors_5xx.increment(1),
            _ => {}
        }
        self.latency.record(sent.latency.as_secs_f64());
        if let Some(latency) = context.integration_latency() {
            self.integration_latency.record(latency.as_secs_f64());
        }
        match context.cache_status() {
            Some(CacheStatus::Hit) => self.cache_hits.increment(1),
            Some(CacheStatus::Miss) => self.cache_misses.increment(1),
            None => {}
        }
        match context.error_type() {
            Some(GatewayResponseType::Throttled) => self.throttled.increment(1),
            Some(GatewayResponseType::QuotaExceeded) => self.quota_exceeded.increment(1),
            _ => {}
        }
        if let Some(latency) = context.authorizer_latency() {
            self.authorizer_latency.record(latency.as_secs_f64());
            if context.authorizer_passed() == Some(false) {
                self.authorizer_failures.increment(1);
            }
        }
    }
}

/// Which handles a request's labels select. Stages are told apart by identity: the handles
/// belong to one deployment, which keeps its stages alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct LabelKey {
    stage: Option<usize>,
    route: Option<usize>,
    method: usize,
    canary: bool,
}

const METHODS: [(Method, &str); 9] = [
    (Method::GET, "GET"),
    (Method::HEAD, "HEAD"),
    (Method::POST, "POST"),
    (Method::PUT, "PUT"),
    (Method::DELETE, "DELETE"),
    (Method::PATCH, "PATCH"),
    (Method::OPTIONS, "OPTIONS"),
    (Method::CONNECT, "CONNECT"),
    (Method::TRACE, "TRACE"),
];

/// A method's label: a standard method's name, or `OTHER`, so that clients cannot make new
/// series by inventing methods.
fn method_slot(method: &Method) -> (usize, &'static str) {
    METHODS
        .iter()
        .position(|(known, _)| known == method)
        .map_or((METHODS.len(), "OTHER"), |slot| (slot, METHODS[slot].1))
}

type HandleMap = HashMap<LabelKey, Handles, foldhash::fast::FixedState>;

/// A deployment's metrics. Requests read the handles without a lock; a new set of labels
/// (bounded by the configuration) copies the map once.
pub(crate) struct GatewayMetrics {
    handles: ArcSwap<HandleMap>,
}

impl GatewayMetrics {
    pub(crate) fn new() -> Self {
        describe();
        Self {
            handles: ArcSwap::from_pointee(HashMap::default()),
        }
    }

    pub(crate) fn record(&self, context: &RequestContext, sent: &Sent) {
        let (method, method_label) = method_slot(context.http_method());
        let key = LabelKey {
            stage: context.stage().map(crate::stage::Stage::identity),
            route: context.route().map(crate::route::MatchedRoute::index),
            method,
            canary: context.release().is_canary(),
        };
        if let Some(handles) = self.handles.load().get(&key) {
            handles.record(context, sent);
            return;
        }
        let labels = [
            Label::new(
                "stage",
                context
                    .stage()
                    .map_or_else(|| "-".to_owned(), |stage| stage.name().to_owned()),
            ),
            Label::new(
                "resource",
                context.resource_path().unwrap_or("-").to_owned(),
            ),
            Label::new("method", method_label),
            Label::new("release", context.release().as_str()),
        ];
        let handles = Handles::register(&labels);
        handles.record(context, sent);
        self.handles.rcu(|current| {
            let mut map = HandleMap::clone(current);
            map.entry(key).or_insert_with(|| handles.clone());
            map
        });
    }
}

fn describe() {
    metrics::describe_counter!(REQUESTS, Unit::Count, "Requests (API Gateway's Count)");
    metrics::describe_counter!(ERRORS_4XX, Unit::Count, "Responses with a 4xx status");
    metrics::describe_counter!(ERRORS_5XX, Unit::Count, "Responses with a 5xx status");
    metrics::describe_histogram!(
        LATENCY,
        Unit::Seconds,
        "From receipt of the request to the end of the response body"
    );
    metrics::describe_histogram!(
        INTEGRATION_LATENCY,
        Unit::Seconds,
        "From the call of the inner service to its response head"
    );
    metrics::describe_counter!(CACHE_HITS, Unit::Count, "Responses served from the cache");
    metrics::describe_counter!(
        CACHE_MISSES,
        Unit::Count,
        "Cacheable requests the service answered"
    );
    metrics::describe_counter!(THROTTLED, Unit::Count, "Requests a throttle refused");
    metrics::describe_counter!(
        QUOTA_EXCEEDED,
        Unit::Count,
        "Requests refused because the key's quota was spent"
    );
    metrics::describe_histogram!(
        AUTHORIZER_LATENCY,
        Unit::Seconds,
        "How long the route's authorizer took"
    );
    metrics::describe_counter!(
        AUTHORIZER_FAILURES,
        Unit::Count,
        "Requests an authorizer refused or could not decide"
    );
    metrics::describe_counter!(
        DECISIONS_WITHOUT_BACKEND,
        Unit::Count,
        "Throttle and quota decisions the outage policy made because Redis did not answer"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invented_methods_share_one_label() {
        assert_eq!(method_slot(&Method::GET), (0, "GET"));
        assert_eq!(method_slot(&Method::TRACE), (8, "TRACE"));
        let invented = Method::from_bytes(b"BREW").unwrap();
        let other = Method::from_bytes(b"PURGE").unwrap();
        assert_eq!(method_slot(&invented), (9, "OTHER"));
        assert_eq!(method_slot(&other), method_slot(&invented));
    }
}
