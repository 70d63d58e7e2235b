//! The usage-plan step: what a key's throttle, and then its quota, add to a gateway request,
//! with 1,000 and 100,000 keys active (requests rotate through all of them).
//!
//! ```text
//! cargo bench --bench usage_plan
//! cargo bench --bench usage_plan -- --keys 100000    # one key count only, for profilers
//! ```
//!
//! Four gateways that differ only in their plan (none; a throttle without rate-limit
//! headers; a throttle; a throttle and a quota) are called in process with an inner service that answers at once. They take turns in
//! chunks of 20,000 requests for 15 rounds, so that the machine's drift falls on all four
//! alike; the figures are the medians over the rounds, and the differences are the throttle
//! decision (with and without its response headers) and the quota decision.

mod support;

use http::{Method, Request, Response};
use support::Body;
use tower::{Layer, Service, service_fn};
use tower_gateway::api_key::{ApiKey, InMemoryApiKeyStore};
use tower_gateway::route::ThrottleSettings;
use tower_gateway::usage_plan::{Quota, QuotaPeriod, UsagePlan};
use tower_gateway::{GatewayBuilder, Route, Stage};

const CHUNK: usize = 20_000;
const ROUNDS: usize = 15;

fn key_value(index: usize) -> String {
    format!("bench-key-{index:016}-abcdefghij")
}

#[derive(Clone, Copy)]
enum Plan {
    None,
    ThrottleWithoutHeaders,
    Throttle,
    ThrottleAndQuota,
}

fn service(
    keys: usize,
    plan_kind: Plan,
) -> impl Service<Request<Body>, Response = Response<String>, Error = std::convert::Infallible> {
    let store = InMemoryApiKeyStore::new();
    store
        .insert_all((0..keys).map(|i| ApiKey::new("k", key_value(i)).id(format!("k{i}"))))
        .expect("valid keys");
    let mut builder = GatewayBuilder::new()
        .stage(Stage::builder("prod").build().unwrap())
        .route(Route::new(Method::GET, "/pets/{petId}").api_key_required(true))
        .api_key_store(store);
    let plan = match plan_kind {
        Plan::None => None,
        Plan::Throttle | Plan::ThrottleWithoutHeaders => {
            Some(UsagePlan::builder("p").stage("prod"))
        }
        Plan::ThrottleAndQuota => Some(
            UsagePlan::builder("p")
                .stage("prod")
                .quota(Quota::new(u64::MAX / 2, QuotaPeriod::Month)),
        ),
    };
    if matches!(plan_kind, Plan::ThrottleWithoutHeaders) {
        builder = builder.rate_limit_headers(false);
    }
    if let Some(plan) = plan {
        let plan = (0..keys)
            .fold(plan, |plan, i| plan.key(format!("k{i}")))
            // A rate no request here can reach, with API Gateway's default burst.
            .throttle(ThrottleSettings {
                rate: 1e7,
                burst: 5_000,
            })
            .build()
            .unwrap();
        builder = builder.usage_plan(plan);
    }
    builder.build().unwrap().layer(service_fn(
        |_request: Request<tower_gateway::body::RequestBody<Body>>| {
            std::future::ready(Ok::<_, std::convert::Infallible>(Response::new(
                String::new(),
            )))
        },
    ))
}

fn main() {
    // `--keys N` measures one key count only (for profiling).
    let args: Vec<String> = std::env::args().collect();
    let only: Option<usize> = args
        .iter()
        .position(|arg| arg == "--keys")
        .and_then(|at| args.get(at + 1)?.parse().ok());
    for keys in only.map_or(vec![1_000, 100_000], |keys| vec![keys]) {
        let mut services = [
            service(keys, Plan::None),
            service(keys, Plan::ThrottleWithoutHeaders),
            service(keys, Plan::Throttle),
            service(keys, Plan::ThrottleAndQuota),
        ];
        // One request per key up to 20,000: with 1,000 keys the working set stays in cache, as
        // in a server whose active keys fit; with 100,000 every decision finds its key's state
        // cold, which is what 100,000 active keys cost.
        let requests: Vec<Request<Body>> = (0..CHUNK.min(keys))
            .map(|i| {
                Request::get("/pets/1")
                    .header("x-api-key", key_value(i % keys))
                    .body(Body::new())
                    .unwrap()
            })
            .collect();
        let mut timings = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
        for round in 0..=ROUNDS {
            for (service, timing) in services.iter_mut().zip(timings.iter_mut()) {
                let nanos = support::time_requests(service, &requests, CHUNK);
                // The first round warms caches and fills the per-key state.
                if round > 0 {
                    timing.push(nanos);
                }
            }
        }
        let [key_only, bare_throttle, throttle, quota] = timings.map(support::median);
        println!(
            "{keys:>7} keys: request with key only {key_only:.0} ns; throttle decision {:.0} ns \
             ({:.0} ns without rate-limit headers); quota decision {:.0} ns (budget 200 ns each)",
            throttle - key_only,
            bare_throttle - key_only,
            quota - throttle
        );
    }
}
