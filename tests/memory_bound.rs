//! Distinct keys cannot grow the gateway's memory: state exists only for the keys configured
//! in plans, so a flood of other keys (unknown, or known but in no plan) leaves nothing
//! behind. Counted with a global allocator, so this file holds this one test alone.

use std::task::{Context, Poll, Waker};

use http::{Method, Request, Response, StatusCode};

type Body = http_body_util::Empty<bytes::Bytes>;
use tower::{Layer, Service, service_fn};
use tower_gateway::api_key::{ApiKey, InMemoryApiKeyStore};
use tower_gateway::route::ThrottleSettings;
use tower_gateway::usage_plan::{Quota, QuotaPeriod, UsagePlan};
use tower_gateway::{GatewayBuilder, Route, Stage};

#[path = "support/counting_alloc.rs"]
mod counting_alloc;

use counting_alloc::{Counting, live};

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[test]
fn a_flood_of_distinct_keys_leaves_no_state_behind() {
    let store = InMemoryApiKeyStore::new();
    store
        .insert_all(
            (0..1_000)
                .map(|i| ApiKey::new("k", format!("configured-key-{i:012}")).id(format!("k{i}"))),
        )
        .unwrap();
    // Known to the store but in no plan.
    store
        .insert(ApiKey::new("outsider", "outsider-key-0123456789").id("outsider"))
        .unwrap();
    let plan = (0..1_000)
        .fold(UsagePlan::builder("p").stage("prod"), |plan, i| {
            plan.key(format!("k{i}"))
        })
        .throttle(ThrottleSettings {
            rate: 100.0,
            burst: 100,
        })
        .quota(Quota::new(1_000_000, QuotaPeriod::Day))
        .build()
        .unwrap();
    let gateway = GatewayBuilder::new()
        .stage(Stage::builder("prod").build().unwrap())
        .route(Route::new(Method::GET, "/pets").api_key_required(true))
        .api_key_store(store)
        .usage_plan(plan)
        .build()
        .unwrap();
    let mut service = gateway.layer(service_fn(
        |_request: Request<tower_gateway::body::RequestBody<Body>>| {
            std::future::ready(Ok::<_, std::convert::Infallible>(Response::new(
                String::new(),
            )))
        },
    ));
    let mut cx = Context::from_waker(Waker::noop());
    let mut send = |key: &str| {
        let request = Request::get("/pets")
            .header("x-api-key", key)
            .body(Body::new())
            .unwrap();
        match std::pin::pin!(service.call(request)).poll(&mut cx) {
            Poll::Ready(Ok(response)) => response.status(),
            _ => panic!("the gateway answers at once here"),
        }
    };
    // Warm up whatever is created once (thread-locals, the arena).
    assert_eq!(send("configured-key-000000000000"), StatusCode::OK);
    assert_eq!(send("unknown-key-warming-up-000"), StatusCode::FORBIDDEN);

    let before = live();
    for i in 0..100_000 {
        assert_eq!(send(&format!("unknown-key-{i:016}")), StatusCode::FORBIDDEN);
        assert_eq!(send("outsider-key-0123456789"), StatusCode::FORBIDDEN);
    }
    let grown = live().saturating_sub(before);
    assert!(
        grown < 64 * 1024,
        "200,000 refused requests left {grown} bytes behind"
    );
}
