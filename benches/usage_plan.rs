//! The usage-plan step: what a key's throttle, and then its quota, add to a gateway request,
//! with 1,000 and 100,000 keys active (requests rotate through all of them).
//!
//! ```text
//! cargo bench --bench usage_plan
//! ```
//!
//! Each case calls the whole gateway in process (context, stage, route, API key, plan) with an
//! inner service that answers at once; `key_only` has no plan, so the differences between the
//! cases are the throttle decision and the quota decision.

mod support;

use std::hint::black_box;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::{Method, Request};
use tower::{Layer, Service, service_fn};
use tower_gateway::api_key::{ApiKey, InMemoryApiKeyStore};
use tower_gateway::route::ThrottleSettings;
use tower_gateway::usage_plan::{Quota, QuotaPeriod, UsagePlan};
use tower_gateway::{Gateway, GatewayBuilder, Route, Stage};

fn key_value(index: usize) -> String {
    format!("bench-key-{index:016}-abcdefghij")
}

#[derive(Clone, Copy)]
enum Plan {
    None,
    Throttle,
    ThrottleAndQuota,
}

fn gateway(keys: usize, plan: Plan) -> Gateway {
    let store = InMemoryApiKeyStore::new();
    store
        .insert_all((0..keys).map(|i| ApiKey::new("k", key_value(i)).id(format!("k{i}"))))
        .expect("valid keys");
    let mut builder = GatewayBuilder::new()
        .stage(Stage::builder("prod").build().unwrap())
        .route(Route::new(Method::GET, "/pets/{petId}").api_key_required(true))
        .api_key_store(store);
    let plan = match plan {
        Plan::None => None,
        Plan::Throttle => Some(UsagePlan::builder("p").stage("prod")),
        Plan::ThrottleAndQuota => Some(
            UsagePlan::builder("p")
                .stage("prod")
                .quota(Quota::new(u64::MAX / 2, QuotaPeriod::Month)),
        ),
    };
    if let Some(plan) = plan {
        let plan = (0..keys).fold(plan, |plan, i| plan.key(format!("k{i}")));
        let plan = plan
            .throttle(ThrottleSettings {
                rate: 1e9,
                burst: 1_000_000,
            })
            .build()
            .unwrap();
        builder = builder.usage_plan(plan);
    }
    builder.build().unwrap()
}

fn bench_plans(c: &mut Criterion) {
    for keys in [1_000, 100_000] {
        let values: Vec<String> = (0..keys).map(key_value).collect();
        for (name, plan) in [
            ("key_only", Plan::None),
            ("key_and_throttle", Plan::Throttle),
            ("key_throttle_and_quota", Plan::ThrottleAndQuota),
        ] {
            let mut service = gateway(keys, plan).layer(service_fn(support::ok_service));
            let mut next = 0;
            c.bench_function(&format!("usage_plan/{name}/{keys}_keys"), |b| {
                b.iter_batched(
                    || {
                        next = (next + 1) % keys;
                        Request::get("/pets/1")
                            .header("x-api-key", &values[next])
                            .body(())
                            .unwrap()
                    },
                    |req| {
                        let response = support::now(service.call(req)).unwrap();
                        assert_eq!(response.status(), 200);
                        black_box(response)
                    },
                    BatchSize::SmallInput,
                )
            });
        }
    }
}

criterion_group!(benches, bench_plans);
criterion_main!(benches);
