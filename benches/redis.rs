//! Throttles and quotas on Redis, measured against a `redis-server` of the bench's own (it
//! must be on the PATH): Redis commands per gateway request, Redis CPU per decision, and
//! gateway throughput on Redis (exact and leased) as a ratio to the same gateway in memory;
//! then the leased mode's error: a quota's admissions before and after its leases settle,
//! and a throttle's admissions against burst + rate × time, with three instances; last, the
//! response cache on Redis: commands per hit and per miss, and hits per second as a ratio to
//! hits in memory.
//!
//! `cargo bench --bench redis [-- --requests N]` (default 20,000 requests per mode).

#[path = "../tests/support/redis_server.rs"]
mod redis_server;

use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::{Method, Request, StatusCode};
use redis_server::RedisServer;
use tower::{Layer, ServiceExt};
use tower_gateway::api_key::{ApiKey, InMemoryApiKeyStore};
use tower_gateway::cache::{CacheSettings, CacheStore};
use tower_gateway::route::ThrottleSettings;
use tower_gateway::store::{Consistency, RedisBackend};
use tower_gateway::usage_plan::{Quota, QuotaPeriod, UsagePlan};
use tower_gateway::{GatewayBuilder, GatewayService, Route, Stage};

const KEYS: usize = 100;
const CONCURRENCY: usize = 32;

fn key_value(index: usize) -> String {
    format!("bench-key-{index:04}-0123456789abcdef")
}

fn gateway(
    throttle: ThrottleSettings,
    quota: u64,
    redis: Option<RedisBackend>,
) -> GatewayService<Router> {
    let keys = InMemoryApiKeyStore::new();
    let mut plan = UsagePlan::builder("bench")
        .stage("prod")
        .throttle(throttle)
        .quota(Quota::new(quota, QuotaPeriod::Month));
    for index in 0..KEYS {
        let id = format!("k{index}");
        keys.insert(ApiKey::new(id.clone(), key_value(index)).id(id.clone()))
            .expect("a valid key");
        plan = plan.key(id);
    }
    let mut builder = GatewayBuilder::new()
        .stage(Stage::builder("prod").build().expect("a valid stage"))
        .route(Route::new(Method::GET, "/pets").api_key_required(true))
        .api_key_store(keys)
        .usage_plan(plan.build().expect("a valid plan"))
        .metrics(false);
    if let Some(redis) = redis {
        builder = builder.redis(redis);
    }
    builder
        .build()
        .expect("a valid gateway")
        .layer(Router::new().route("/pets", get(|| async { "pets" })))
}

/// A gateway whose stage caches `GET /pets/{petId}` for an hour, in memory or on `redis`.
fn cache_gateway(redis: Option<RedisBackend>) -> GatewayService<Router> {
    let store = if redis.is_some() {
        CacheStore::Redis
    } else {
        CacheStore::Memory
    };
    let mut builder = GatewayBuilder::new()
        .stage(
            Stage::builder("prod")
                .cache(CacheSettings::new().ttl_seconds(3600).store(store))
                .build()
                .expect("a valid stage"),
        )
        .route(Route::new(Method::GET, "/pets/{petId}"))
        .metrics(false);
    if let Some(redis) = redis {
        builder = builder.redis(redis);
    }
    builder
        .build()
        .expect("a valid gateway")
        .layer(Router::new().route(
            "/pets/{petId}",
            get(|| async { r#"{"id":1,"type":"dog","price":249.99}"# }),
        ))
}

/// Sends `requests` requests for `paths` pets from `first` in turn, `CONCURRENCY` at a time;
/// returns (hits, seconds).
async fn drive_cache(
    service: &GatewayService<Router>,
    requests: usize,
    first: usize,
    paths: usize,
) -> (usize, f64) {
    let service = service.clone();
    drive_counting(requests, move |index| {
        let request = Request::get(format!("/pets/{}", first + index % paths))
            .body(Body::empty())
            .expect("a request");
        let service = service.clone();
        async move {
            let response = service.oneshot(request).await.expect("infallible");
            assert_eq!(response.status(), StatusCode::OK);
            response.headers()["x-cache"] == "hit"
        }
    })
    .await
}

/// Sends `requests` requests, `CONCURRENCY` at a time, spread over the instances and keys;
/// returns (admitted, seconds).
async fn drive(
    instances: &[GatewayService<Router>],
    requests: usize,
    key_count: usize,
) -> (usize, f64) {
    let instances = instances.to_vec();
    drive_counting(requests, move |index| {
        let service = instances[index % instances.len()].clone();
        let request = Request::get("/pets")
            .header("x-api-key", key_value(index % key_count))
            .body(Body::empty())
            .expect("a request");
        async move {
            let response = service.oneshot(request).await.expect("infallible");
            response.status() == StatusCode::OK
        }
    })
    .await
}

/// Makes the calls `call(0..requests)`, `CONCURRENCY` at a time; returns (how many said
/// true, seconds).
async fn drive_counting<F, Fut>(requests: usize, call: F) -> (usize, f64)
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = bool> + Send,
{
    let started = Instant::now();
    let mut workers = Vec::new();
    for worker in 0..CONCURRENCY {
        let call = call.clone();
        workers.push(tokio::spawn(async move {
            let mut counted = 0;
            let mut index = worker;
            while index < requests {
                counted += usize::from(call(index).await);
                index += CONCURRENCY;
            }
            counted
        }));
    }
    let mut counted = 0;
    for worker in workers {
        counted += worker.await.expect("a worker");
    }
    (counted, started.elapsed().as_secs_f64())
}

fn redis_cpu_seconds(server: &RedisServer) -> f64 {
    let info = server.command(&["INFO", "cpu"]);
    ["used_cpu_sys:", "used_cpu_user:"]
        .iter()
        .filter_map(|field| {
            info.lines()
                .find_map(|line| line.strip_prefix(field))
                .and_then(|value| value.trim().parse::<f64>().ok())
        })
        .sum()
}

fn script_calls(server: &RedisServer) -> u64 {
    server.calls("evalsha") + server.calls("eval") + server.calls("script|load")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut requests = 20_000;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--requests" {
            requests = args
                .next()
                .and_then(|value| value.parse().ok())
                .expect("--requests N");
        }
    }
    let server = RedisServer::start();
    // Nothing is refused: the numbers are the cost of deciding, not of refusing.
    let open = ThrottleSettings {
        rate: 1e6,
        burst: 100_000,
    };
    let quota = 1_000_000_000;

    println!("{requests} requests per mode, {KEYS} keys, {CONCURRENCY} concurrent, one process");
    let memory = gateway(open, quota, None);
    drive(std::slice::from_ref(&memory), requests / 4, KEYS).await;
    let (_, memory_seconds) = drive(std::slice::from_ref(&memory), requests, KEYS).await;
    let memory_rate = requests as f64 / memory_seconds;
    println!("in memory: {memory_rate:>10.0} requests/s");

    let modes = [
        ("exact", "bench-exact:", Consistency::Exact),
        (
            "leased (lease 100)",
            "bench-leased:",
            Consistency::Leased {
                lease: 100,
                settle: Duration::from_secs(1),
            },
        ),
    ];
    for (name, prefix, consistency) in modes {
        let backend = RedisBackend::builder(server.url())
            .consistency(consistency)
            .key_prefix(prefix)
            .build()
            .expect("a valid backend");
        let service = gateway(open, quota, Some(backend.clone()));
        // Warm up: connect, load the script, take the first leases.
        drive(std::slice::from_ref(&service), requests / 4, KEYS).await;
        server.reset_stats();
        let cpu_before = redis_cpu_seconds(&server);
        let (admitted, seconds) = drive(std::slice::from_ref(&service), requests, KEYS).await;
        let cpu = redis_cpu_seconds(&server) - cpu_before;
        let calls = script_calls(&server);
        assert_eq!(admitted, requests, "nothing is refused");
        assert_eq!(
            backend.decisions_without_redis(),
            0,
            "Redis answered every call"
        );
        let rate = requests as f64 / seconds;
        println!(
            "{name:>18}: {rate:>10.0} requests/s, {:.3} of in memory; {:.4} Redis commands per request; {:.1} µs of Redis CPU per script call",
            rate / memory_rate,
            calls as f64 / requests as f64,
            cpu * 1e6 / calls.max(1) as f64,
        );
    }

    // The leased mode's error, with three instances (each its own connection and leases).
    const LEASE: u32 = 20;
    const INSTANCES: usize = 3;
    let leased = Consistency::Leased {
        lease: LEASE,
        settle: Duration::from_millis(200),
    };
    let instances =
        |prefix: &str, throttle: ThrottleSettings, quota: u64| -> Vec<GatewayService<Router>> {
            (0..INSTANCES)
                .map(|_| {
                    let backend = RedisBackend::builder(server.url())
                        .consistency(leased)
                        .key_prefix(prefix)
                        .build()
                        .expect("a valid backend");
                    gateway(throttle, quota, Some(backend))
                })
                .collect()
        };
    let limit = 1_000;
    let quota_instances = instances("bench-quota:", open, limit);
    let (before, _) = drive(&quota_instances, 3_000, 1).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (after, _) = drive(&quota_instances[..1], 3_000, 1).await;
    println!(
        "leased quota of {limit}, {INSTANCES} instances, lease {LEASE}: {before} admitted before the leases settle ({:.3} of the limit; at least {}), {} in all after ({:.3})",
        before as f64 / limit as f64,
        limit as usize - INSTANCES * LEASE as usize,
        before + after,
        (before + after) as f64 / limit as f64,
    );

    let rate = 200.0;
    let burst = 50;
    let throttle_instances = instances("bench-throttle:", ThrottleSettings { rate, burst }, quota);
    let started = Instant::now();
    let mut admitted = 0;
    // Bounded: at most 40 rounds of 100 requests, and at most two seconds.
    for _ in 0..40 {
        admitted += drive(&throttle_instances, 100, 1).await.0;
        tokio::time::sleep(Duration::from_millis(20)).await;
        if started.elapsed() > Duration::from_secs(2) {
            break;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let allowed = f64::from(burst) + rate * elapsed;
    println!(
        "leased throttle {rate}/s burst {burst}, {INSTANCES} instances, lease {LEASE}: {admitted} admitted in {elapsed:.2} s; burst + rate × T = {allowed:.0}; ratio {:.3} (bound {:.3} with instances × lease)",
        admitted as f64 / allowed,
        (allowed + (INSTANCES as u32 * LEASE) as f64) / allowed,
    );

    // The response cache: 100 pets, filled once, then hits.
    const PETS: usize = 100;
    let memory = cache_gateway(None);
    drive_cache(&memory, PETS, 0, PETS).await;
    let (hits, seconds) = drive_cache(&memory, requests, 0, PETS).await;
    assert_eq!(hits, requests, "every request hits");
    let memory_rate = requests as f64 / seconds;
    let backend = RedisBackend::builder(server.url())
        .key_prefix("bench-cache:")
        .build()
        .expect("a valid backend");
    let on_redis = cache_gateway(Some(backend));
    // Connect and load the script with another pet.
    drive_cache(&on_redis, 1, PETS, 1).await;
    server.reset_stats();
    let (hits, _) = drive_cache(&on_redis, PETS, 0, PETS).await;
    let miss_commands = server.calls("get") + script_calls(&server);
    assert_eq!(hits, 0, "the first request for each pet misses");
    server.reset_stats();
    let (hits, seconds) = drive_cache(&on_redis, requests, 0, PETS).await;
    assert_eq!(hits, requests, "every request hits");
    let rate = requests as f64 / seconds;
    println!(
        "response cache hits: in memory {memory_rate:.0}/s, on Redis {rate:.0}/s ({:.3} of in memory); Redis commands per hit {:.3}, per miss {:.3}",
        rate / memory_rate,
        (server.calls("get") + script_calls(&server)) as f64 / requests as f64,
        miss_commands as f64 / PETS as f64,
    );
}
