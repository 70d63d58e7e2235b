//! The response cache in process: building the key and looking it up, a hit, a miss that
//! stores, against the same gateway calling an inner service that answers at once.
//!
//! ```text
//! cargo bench --bench cache
//! ```
//!
//! The key holds a path parameter, a query-string parameter and a header. Gateways that
//! differ only in caching take turns in chunks of 5,000 requests for 15 rounds, so that the
//! machine's drift falls on all of them alike; the figures are medians over the rounds.
//!
//! - `uncached`: `GET /plain`, a route without cache: the stage, route and context steps plus
//!   the inner service.
//! - `hit`: `GET /pets/1?fields=name` with `accept-language`, answered from the entry.
//! - `key + lookup`: a `HEAD` on the cached route whose `GET` entry does not exist (the key
//!   is built and looked up, then the request passes), minus a `HEAD` on the uncached route.
//! - `miss + store`: 5,000 distinct pets per chunk, the cache flushed before each chunk, so
//!   every request builds its key, misses, calls the service, reads and stores the response.
//!
//! The end-to-end comparison (a hit against calling a router over loopback) is
//! `cargo bench --bench end_to_end -- --gateway cached`.

mod support;

use std::hint::black_box;

use http::{Method, Request};
use support::{Body, median, now, ok_service, time_requests};
use tower::{Layer, Service, service_fn};
use tower_gateway::cache::{CacheSettings, RouteCacheSettings};
use tower_gateway::validate::RequestParameter;
use tower_gateway::{Gateway, GatewayBuilder, Route, Stage};

const ROUNDS: usize = 15;
const CHUNK: usize = 5_000;

fn request(method: Method, uri: &str) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(uri)
        .header("accept-language", "en")
        .header("user-agent", "bench")
        .body(Body::new())
        .unwrap()
}

fn gateway() -> Gateway {
    GatewayBuilder::new()
        .stage(
            Stage::builder("prod")
                .cache(CacheSettings::new().capacity_bytes(256 * 1024 * 1024))
                .build()
                .unwrap(),
        )
        .route(
            Route::new(Method::GET, "/pets/{petId}").cache(
                RouteCacheSettings::new()
                    .key_parameter(RequestParameter::query("fields"))
                    .key_parameter(RequestParameter::header("accept-language")),
            ),
        )
        .route(Route::new(Method::GET, "/plain").cache(RouteCacheSettings::new().enabled(false)))
        .build()
        .unwrap()
}

fn main() {
    let mut service = gateway().layer(service_fn(ok_service));
    // The misses run on a gateway of their own, flushed before each chunk (and the flush's
    // work done then), so that clearing 5,000 entries never falls on the other requests.
    let filling = gateway();
    let caches = filling.response_caches().unwrap();
    let mut filling = filling.layer(service_fn(ok_service));

    let uncached = [request(Method::GET, "/plain?fields=name")];
    let hit = [request(Method::GET, "/pets/1?fields=name")];
    let head_cached = [request(Method::HEAD, "/pets/2?fields=name")];
    let head_uncached = [request(Method::HEAD, "/plain?fields=name")];
    let misses: Vec<_> = (0..CHUNK)
        .map(|i| request(Method::GET, &format!("/pets/{}?fields=name", 1_000 + i)))
        .collect();
    // Fill the entry the hits read, and check that they do hit.
    let filled = now(service.call(hit[0].clone())).unwrap();
    assert_eq!(filled.headers()["x-cache"], "miss");
    let cached = now(service.call(hit[0].clone())).unwrap();
    assert_eq!(cached.headers()["x-cache"], "hit");

    // uncached, hit, HEAD cached, HEAD uncached, miss + store.
    let mut timings = vec![Vec::new(); 5];
    for round in 0..=ROUNDS {
        caches.flush_stage("prod");
        assert_eq!(caches.entry_count("prod"), Some(0));
        let chunk = [
            time_requests(&mut service, &uncached, CHUNK),
            time_requests(&mut service, &hit, CHUNK),
            time_requests(&mut service, &head_cached, CHUNK),
            time_requests(&mut service, &head_uncached, CHUNK),
            time_requests(&mut filling, &misses, CHUNK),
        ];
        // The first round warms up.
        if round > 0 {
            for (timing, nanos) in timings.iter_mut().zip(chunk) {
                timing.push(black_box(nanos));
            }
        }
    }
    let [uncached, hit, head_cached, head_uncached, miss]: [f64; 5] = timings
        .into_iter()
        .map(median)
        .collect::<Vec<_>>()
        .try_into()
        .unwrap();
    println!("uncached route (the inner service called): {uncached:.0} ns");
    println!(
        "hit: {hit:.0} ns, {:.2}x the uncached request (the inner service here answers at once)",
        hit / uncached
    );
    println!(
        "key build + lookup (HEAD, no entry): +{:.0} ns over a HEAD on the uncached route \
         ({head_uncached:.0} ns)",
        head_cached - head_uncached
    );
    println!(
        "miss + store: {miss:.0} ns, +{:.0} ns over the uncached request ({:.2}x)",
        miss - uncached,
        miss / uncached
    );
}
