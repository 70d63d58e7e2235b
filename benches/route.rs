//! Route matching: the route phase on a realistic table, and stage base-path selection.
//!
//! ```text
//! cargo bench --bench route
//! ```
//!
//! Each case calls the layer's service with an inner service that answers at once; `bare`
//! is that inner service alone, so a case minus `bare` is the layer's own cost. The request
//! already carries a context (as it does behind the gateway), created outside the timing.

mod support;

use std::hint::black_box;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::{Method, Request};
use tower::{Layer, Service, service_fn};
use tower_gateway::{RequestContext, Route, RouteLayer, Stage, StageLayer, StageSelection};

fn table() -> RouteLayer {
    let mut builder = RouteLayer::builder();
    for resource in ["pets", "owners", "vets", "visits", "orders", "invoices"] {
        builder = builder
            .route(Route::new(Method::GET, format!("/{resource}")))
            .route(Route::new(Method::POST, format!("/{resource}")))
            .route(Route::new(Method::GET, format!("/{resource}/{{id}}")))
            .route(Route::new(Method::DELETE, format!("/{resource}/{{id}}")));
    }
    builder
        .route(Route::any("/pets/{id}/toys/{toyId}"))
        .route(Route::any("/static/{proxy+}"))
        .build()
        .expect("valid table")
}

fn request(method: Method, path: &str) -> Request<()> {
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .body(())
        .unwrap();
    RequestContext::get_or_insert(&mut request);
    request
}

fn bench_routes(c: &mut Criterion) {
    let mut bare = service_fn(support::ok_service);
    c.bench_function("route/bare", |b| {
        b.iter_batched(
            || request(Method::GET, "/pets/42"),
            |req| black_box(support::now(bare.call(req))),
            BatchSize::SmallInput,
        )
    });

    let mut routed = table().layer(service_fn(support::ok_service));
    let cases = [
        ("static", Method::GET, "/invoices"),
        ("param", Method::GET, "/invoices/42"),
        ("two_params", Method::PUT, "/pets/42/toys/ball"),
        ("greedy", Method::GET, "/static/css/site/main.css"),
        ("miss_403", Method::GET, "/nowhere/at/all"),
    ];
    for (name, method, path) in cases {
        c.bench_function(&format!("route/{name}"), |b| {
            b.iter_batched(
                || request(method.clone(), path),
                |req| black_box(support::now(routed.call(req))),
                BatchSize::SmallInput,
            )
        });
    }

    let stages = StageLayer::builder()
        .stage(
            Stage::builder("prod")
                .variable("greeting", "hello")
                .build()
                .unwrap(),
        )
        .stage(Stage::builder("beta").build().unwrap())
        .selection(StageSelection::BasePath)
        .build()
        .unwrap();
    let mut staged = stages.layer(service_fn(support::ok_service));
    c.bench_function("stage/base_path", |b| {
        b.iter_batched(
            || request(Method::GET, "/prod/pets/42"),
            |req| black_box(support::now(staged.call(req))),
            BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, bench_routes);
criterion_main!(benches);
