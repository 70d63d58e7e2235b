//! Memory per API key and per tracked key, counted by a global allocator.
//!
//! ```text
//! cargo bench --bench memory                 # 1,000,000 keys
//! cargo bench --bench memory -- --keys 100000
//! ```
//!
//! It stores N keys and measures the store's bytes per key; builds a gateway whose plan (with
//! a throttle and a quota) lists every key and measures what the plan holds per key before any
//! request; then sends one request per key and measures what that adds (the daily counts).
//! Keys outside the plans get no state at all, so these are the bounds.

use std::time::Duration;

use http::{Method, Request};

type Body = http_body_util::Empty<bytes::Bytes>;
use tower::{Layer, Service, service_fn};
use tower_gateway::api_key::{ApiKey, InMemoryApiKeyStore};
use tower_gateway::clock::ManualClock;
use tower_gateway::route::ThrottleSettings;
use tower_gateway::usage_plan::{Quota, QuotaPeriod, UsagePlan};
use tower_gateway::{GatewayBuilder, Route, Stage};

#[path = "../tests/support/counting_alloc.rs"]
mod counting_alloc;

use counting_alloc::{Counting, live};

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn key_value(index: usize) -> String {
    format!("memory-key-{index:016}-abcdefghij")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let keys: usize = args
        .iter()
        .position(|a| a == "--keys")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
        .clamp(1, 5_000_000);

    let before_store = live();
    let store = InMemoryApiKeyStore::new();
    store
        .insert_all((0..keys).map(|i| ApiKey::new("k", key_value(i)).id(format!("k{i}"))))
        .expect("valid keys");
    let store_bytes = live() - before_store;

    let manual = ManualClock::starting_at(1_772_409_600);
    let plan = (0..keys)
        .fold(UsagePlan::builder("p").stage("prod"), |plan, i| {
            plan.key(format!("k{i}"))
        })
        .throttle(ThrottleSettings {
            rate: 10.0,
            burst: 10,
        })
        .quota(Quota::new(1_000_000, QuotaPeriod::Day))
        .build()
        .unwrap();
    let before_gateway = live();
    let gateway = GatewayBuilder::new()
        .stage(Stage::builder("prod").build().unwrap())
        .route(Route::new(Method::GET, "/pets").api_key_required(true))
        .api_key_store(store)
        .usage_plan(plan)
        .clock(manual.clock())
        .build()
        .unwrap();
    let plan_bytes = live().saturating_sub(before_gateway);
    let mut service = gateway.layer(service_fn(
        |_request: Request<tower_gateway::body::RequestBody<Body>>| {
            std::future::ready(Ok::<_, std::convert::Infallible>(http::Response::new(
                String::new(),
            )))
        },
    ));
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let before_requests = live();
    for index in 0..keys {
        let request = Request::get("/pets")
            .header("x-api-key", key_value(index))
            .body(Body::new())
            .unwrap();
        let mut future = std::pin::pin!(service.call(request));
        match future.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(Ok(response)) => assert_eq!(response.status(), 200),
            _ => panic!("the gateway answers at once here"),
        }
    }
    let request_bytes = live().saturating_sub(before_requests);
    manual.advance(Duration::from_secs(1));

    let per_key = |bytes: usize| bytes as f64 / keys as f64;
    println!("keys: {keys}");
    println!("API key store: {:.0} bytes per key", per_key(store_bytes));
    println!(
        "usage plan (throttle state, quota and daily counts, membership): {:.0} bytes per key",
        per_key(plan_bytes)
    );
    println!(
        "after one request per key (the first daily count): {:.0} more bytes per key",
        per_key(request_bytes)
    );
}
