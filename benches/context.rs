//! Context creation and the whole in-memory gateway, in process.
//!
//! ```text
//! cargo bench --bench context
//! ```
//!
//! `bare` is the inner service alone; `context` adds the request context (request id,
//! response header); `gateway` is the full stack of this release (context, base-path stage,
//! route). The differences are the layers' own costs per request.

mod support;

use std::hint::black_box;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::{Method, Request};
use tower::{Layer, Service, service_fn};
use tower_gateway::context::RequestContextLayer;
use tower_gateway::{Gateway, GatewayBuilder, RequestId, Route, Stage, StageSelection};

fn request(path: &str) -> Request<support::Body> {
    Request::builder()
        .uri(path)
        .header("user-agent", "bench/1")
        .body(support::Body::new())
        .unwrap()
}

fn bench_context(c: &mut Criterion) {
    c.bench_function("request_id/generate", |b| {
        b.iter(|| black_box(RequestId::generate()))
    });

    let mut bare = service_fn(support::ok_service);
    c.bench_function("context/bare", |b| {
        b.iter_batched(
            || request("/pets/42"),
            |req| black_box(support::now(bare.call(req))),
            BatchSize::SmallInput,
        )
    });

    let mut with_context = RequestContextLayer::builder()
        .build()
        .unwrap()
        .layer(service_fn(support::ok_service));
    c.bench_function("context/create", |b| {
        b.iter_batched(
            || request("/pets/42"),
            |req| black_box(support::now(with_context.call(req))),
            BatchSize::SmallInput,
        )
    });

    let gateway = full_gateway();
    let mut gated = gateway.layer(service_fn(support::ok_service));
    c.bench_function("context/gateway_full", |b| {
        b.iter_batched(
            || request("/prod/pets/42"),
            |req| black_box(support::now(gated.call(req))),
            BatchSize::SmallInput,
        )
    });
}

/// The full stack both benches measure: base-path stages, four routes, the context.
fn full_gateway() -> Gateway {
    GatewayBuilder::new()
        .stage(
            Stage::builder("prod")
                .variable("greeting", "hello")
                .build()
                .unwrap(),
        )
        .stage(Stage::builder("beta").build().unwrap())
        .stage_selection(StageSelection::BasePath)
        .route(Route::new(Method::GET, "/pets"))
        .route(Route::new(Method::GET, "/pets/{petId}"))
        .route(Route::new(Method::POST, "/pets"))
        .route(Route::new(Method::GET, "/stage"))
        .build()
        .unwrap()
}

fn axum_router() -> axum::Router {
    use axum::extract::Path;
    use axum::routing::get;
    axum::Router::new()
        .route("/pets", get(|| async { "[]" }))
        .route(
            "/pets/{petId}",
            get(|Path(id): Path<String>| async move { id }),
        )
        .route("/stage", get(|| async { "prod" }))
}

fn axum_request(path: &str) -> Request<axum::body::Body> {
    Request::builder()
        .uri(path)
        .header("host", "bench.local")
        .header("user-agent", "bench/1")
        .body(axum::body::Body::empty())
        .unwrap()
}

/// The same axum router alone and behind the gateway, called in process: the difference is
/// the CPU the gateway adds per request, without sockets or scheduling in the way.
fn bench_axum(c: &mut Criterion) {
    let mut bare = axum_router();
    c.bench_function("axum/bare_router", |b| {
        b.iter_batched(
            || axum_request("/pets/42"),
            |req| black_box(support::now(bare.call(req))),
            BatchSize::SmallInput,
        )
    });
    let gateway = full_gateway();
    let mut gated = gateway.layer(axum_router());
    c.bench_function("axum/gateway_router", |b| {
        b.iter_batched(
            || axum_request("/prod/pets/42"),
            |req| black_box(support::now(gated.call(req))),
            BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, bench_context, bench_axum);
criterion_main!(benches);
