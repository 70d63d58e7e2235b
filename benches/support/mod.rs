//! Helpers shared by the criterion benches.
#![allow(dead_code)]

pub mod floor;

use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use http::{Request, Response};
use tower::Service;

/// Polls a future that is expected to be ready at once (every service here answers without
/// waiting), so the bench measures the layer and not an executor.
pub fn now<F: Future>(future: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(future).poll(&mut cx) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("the benched service was expected to answer at once"),
    }
}

/// The request body of the benches' gateway requests (the gateway needs a real body type).
pub type Body = http_body_util::Empty<bytes::Bytes>;

/// The inner service: answers at once with an empty body.
pub fn ok_service<B>(_request: Request<B>) -> Ready<Result<Response<String>, Infallible>> {
    ready(Ok(Response::new(String::new())))
}

/// Nanoseconds per request over `count` requests cycling through `requests`; every one must be
/// answered at once with 200 (for interleaved benches that compare gateways chunk by chunk).
pub fn time_requests<S, B: Clone>(service: &mut S, requests: &[Request<B>], count: usize) -> f64
where
    S: Service<Request<B>, Response = Response<String>>,
{
    let started = Instant::now();
    for request in requests.iter().cycle().take(count) {
        match now(service.call(request.clone())) {
            Ok(response) => assert_eq!(response.status(), 200),
            Err(_) => panic!("the benched service failed"),
        }
    }
    started.elapsed().as_nanos() as f64 / count as f64
}

/// The median of some timings.
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The API key the keyed end-to-end and in-process benches send.
pub const BENCH_KEY: &str = "bench-key-0123456789abcdefghij";

/// The keyed benches' usage plan: a throttle of 10 M/s with a burst of 5,000 and a daily quota
/// too large to reach.
pub struct BenchPlan {
    pub rate: f64,
    pub burst: u32,
    pub daily_quota: u64,
}

/// See [`BenchPlan`].
pub const BENCH_PLAN: BenchPlan = BenchPlan {
    rate: 1e7,
    burst: 5_000,
    daily_quota: u64::MAX / 2,
};

/// `builder` with the keyed benches' key (`BENCH_KEY`, id `bench`) and usage plan
/// ([`BENCH_PLAN`]) on stage `prod`.
pub fn with_bench_plan(builder: tower_gateway::GatewayBuilder) -> tower_gateway::GatewayBuilder {
    use tower_gateway::api_key::{ApiKey, InMemoryApiKeyStore};
    use tower_gateway::route::ThrottleSettings;
    use tower_gateway::usage_plan::{Quota, QuotaPeriod, UsagePlan};
    let keys = InMemoryApiKeyStore::new();
    keys.insert(ApiKey::new("bench", BENCH_KEY).id("bench"))
        .unwrap();
    let plan = UsagePlan::builder("bench")
        .stage("prod")
        .throttle(ThrottleSettings {
            rate: BENCH_PLAN.rate,
            burst: BENCH_PLAN.burst,
        })
        .quota(Quota::new(BENCH_PLAN.daily_quota, QuotaPeriod::Day))
        .key("bench")
        .build()
        .unwrap();
    builder.api_key_store(keys).usage_plan(plan)
}

/// The pets router, its handlers prepared once with `with_state`: `axum::serve` does that for
/// a bare router, and a router wrapped in a layer needs it done by hand (or axum prepares the
/// handler again on every request).
pub fn router() -> axum::Router {
    axum::Router::new()
        .route("/pets", axum::routing::get(|| async { "[]" }))
        .route(
            "/pets/{petId}",
            axum::routing::get(
                |axum::extract::Path(id): axum::extract::Path<String>| async move { id },
            ),
        )
        .route("/stage", axum::routing::get(|| async { "prod" }))
        .route("/catalog", axum::routing::get(catalog))
        .with_state(())
}

/// A handler with some work to do: 20 pets serialized as JSON on every call.
pub async fn catalog() -> axum::Json<serde_json::Value> {
    let pets: Vec<serde_json::Value> = (0..20)
        .map(|id| {
            serde_json::json!({
                "id": id, "name": format!("pet-{id}"), "type": "dog",
                "price": 10.5 + f64::from(id), "tags": ["friendly", "trained"],
            })
        })
        .collect();
    axum::Json(serde_json::Value::Array(pets))
}

/// The benches' routes on `builder`: the pets API, `/stage` and `/catalog`; `GET /pets/{petId}`
/// requires an API key when `keyed`.
pub fn with_bench_routes(
    builder: tower_gateway::GatewayBuilder,
    keyed: bool,
) -> tower_gateway::GatewayBuilder {
    use http::Method;
    use tower_gateway::Route;
    builder
        .route(Route::new(Method::GET, "/pets"))
        .route(Route::new(Method::POST, "/pets"))
        .route(Route::new(Method::GET, "/pets/{petId}").api_key_required(keyed))
        .route(Route::new(Method::GET, "/stage"))
        .route(Route::new(Method::GET, "/catalog"))
}
