//! A fixed number of requests through bare axum or axum behind the gateway, in process, for an
//! instruction counter: no sockets and no second thread, so the count per request is the same
//! on every run (the end-to-end bench's counts move by a few hundred with how the load
//! batches up).
//!
//! Run it twice under callgrind with different counts and divide the difference of the totals
//! by the difference of the counts; that leaves out the setup:
//!
//! ```text
//! cargo bench --bench instructions --no-run
//! for n in 10000 40000; do
//!   valgrind --tool=callgrind --callgrind-out-file=cg.$n target/release/deps/instructions-* gateway $n
//! done
//! ```
//!
//! With `--cache-sim=yes` callgrind also simulates the caches (sized as this machine's): the
//! L1 instruction-cache misses per request (`I1mr`, the same marginal way) show how many lines
//! of code a request runs, which on a busy server costs more than the instructions themselves.
//!
//! The first argument is `bare`, `gateway` (stage by base path, route, context: the end-to-end
//! bench's `full`), `bare-keyed` or `gateway-keyed` (plus an API key and a usage plan; both
//! send the key), `floor` (the end-to-end bench's yardstick: the least code that does the
//! `gateway` mode's required steps) or `floor-keyed` (the yardstick of `gateway-keyed`). Without
//! arguments it runs 1,000 requests through each and checks they succeed.

mod support;

use axum::body::Body;
use http::{HeaderValue, Request, StatusCode};
use http_body_util::BodyExt;
use tower::{Layer, Service, ServiceExt};
use tower_gateway::{Gateway, GatewayBuilder, Stage, StageSelection};

/// The end-to-end bench's `full` gateway (two stages by base path, its routes, the context),
/// with its API key and usage plan when `keyed` (its `keyed`); metrics off.
fn gateway(keyed: bool) -> Gateway {
    let prod = Stage::builder("prod")
        .variable("greeting", "hello")
        .build()
        .unwrap();
    let beta = Stage::builder("beta")
        .variable("greeting", "hola")
        .build()
        .unwrap();
    let mut builder = GatewayBuilder::new()
        .stage(prod)
        .stage(beta)
        .stage_selection(StageSelection::BasePath)
        .metrics(false);
    if keyed {
        builder = support::with_bench_plan(builder);
    }
    support::with_bench_routes(builder, keyed).build().unwrap()
}

async fn send<S>(service: &mut S, path: &str, keyed: bool) -> usize
where
    S: Service<Request<Body>, Response = http::Response<Body>>,
    S::Error: std::fmt::Debug,
{
    let response = respond(service, path, keyed).await;
    assert_eq!(response.status(), StatusCode::OK, "{path}");
    response
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .len()
}

/// Sends one request after the counted ones and checks that its answer carries the usage
/// plan's rate-limit headers: the keyed modes do the work they are measured for. (One more
/// request per run leaves the marginal count per request as it is.)
async fn check_rate_limited<S>(service: &mut S, path: &str)
where
    S: Service<Request<Body>, Response = http::Response<Body>>,
    S::Error: std::fmt::Debug,
{
    let response = respond(service, path, true).await;
    assert_eq!(response.status(), StatusCode::OK, "{path}");
    for name in [
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
    ] {
        assert!(response.headers().contains_key(name), "{path}: {name}");
    }
}

async fn respond<S>(service: &mut S, path: &str, keyed: bool) -> http::Response<Body>
where
    S: Service<Request<Body>, Response = http::Response<Body>>,
    S::Error: std::fmt::Debug,
{
    let mut request = Request::get(path)
        .header("host", "bench.local")
        .body(Body::empty())
        .unwrap();
    if keyed {
        request
            .headers_mut()
            .insert("x-api-key", HeaderValue::from_static(support::BENCH_KEY));
    }
    service.ready().await.unwrap().call(request).await.unwrap()
}

async fn run(mode: &str, requests: usize) -> usize {
    let keyed = mode.ends_with("keyed");
    let mut received = 0;
    if mode.starts_with("bare") {
        let mut bare = support::router();
        for _ in 0..requests {
            received += send(&mut bare, "/pets/42", keyed).await;
        }
    } else if mode.starts_with("floor") {
        let floor = if keyed {
            support::floor::Floor::keyed(support::BENCH_KEY, &support::BENCH_PLAN)
        } else {
            support::floor::Floor::new()
        };
        let mut floored = floor.layer(support::router());
        for _ in 0..requests {
            received += send(&mut floored, "/prod/pets/42", keyed).await;
        }
        if keyed {
            check_rate_limited(&mut floored, "/prod/pets/42").await;
        }
    } else {
        let mut gated = gateway(keyed).layer(support::router());
        for _ in 0..requests {
            received += send(&mut gated, "/prod/pets/42", keyed).await;
        }
        if keyed {
            check_rate_limited(&mut gated, "/prod/pets/42").await;
        }
    }
    received
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    match args.first().map(String::as_str) {
        Some(
            mode @ ("bare" | "gateway" | "bare-keyed" | "gateway-keyed" | "floor" | "floor-keyed"),
        ) => {
            let requests = args.get(1).and_then(|n| n.parse().ok()).unwrap_or(10_000);
            let received = runtime.block_on(run(mode, requests));
            println!("{mode}: {requests} requests, {received} body bytes");
        }
        // `cargo bench` runs every bench target with `--bench`: a short check that each mode
        // serves.
        _ => {
            for mode in [
                "bare",
                "gateway",
                "bare-keyed",
                "gateway-keyed",
                "floor",
                "floor-keyed",
            ] {
                let received = runtime.block_on(run(mode, 1_000));
                println!("{mode}: 1000 requests, {received} body bytes");
            }
        }
    }
}
