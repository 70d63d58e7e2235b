//! Throttles and quotas on Redis, shared by several gateway instances: each test starts its
//! own `redis-server` on a free loopback port. Every instance has a backend (a connection) of
//! its own, as separate processes would.
//!
//! Redis's buckets run on the server's clock, so the throttle tests bound what real time
//! allows (at least the burst, at most burst + rate × elapsed); quota periods follow each
//! gateway's clock, a manual one here.

mod support;

use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::{Method, Request, StatusCode};
use support::redis_server::RedisServer;
use support::text;
use tower::{Layer, ServiceExt};
use tower_gateway::api_key::{ApiKey, InMemoryApiKeyStore};
use tower_gateway::clock::{GatewayClock, ManualClock};
use tower_gateway::route::ThrottleSettings;
use tower_gateway::store::{Consistency, OutagePolicy, RedisBackend};
use tower_gateway::usage_plan::{Quota, QuotaPeriod, UsagePlan, UsagePlans};
use tower_gateway::{
    Gateway, GatewayBuilder, GatewayConfig, GatewayService, RequestContext, Route, Stage,
};

const ALICE: &str = "alice-key-0123456789abcdef";
const BOB: &str = "bob-key-0123456789abcdefgh";
/// 2026-03-02T00:00:00Z, a Monday.
const MONDAY: u64 = 1_772_409_600;

type Instance = GatewayService<Router>;

fn throttle(rate: f64, burst: u32) -> ThrottleSettings {
    ThrottleSettings { rate, burst }
}

fn router() -> Router {
    Router::new().route(
        "/pets",
        get(|context: RequestContext| async move {
            if context.decided_without_backend() {
                "fallback"
            } else {
                "redis"
            }
        }),
    )
}

/// A plan's quota, and optionally its throttle, for alice and bob.
fn plan(quota: Option<Quota>, client: Option<ThrottleSettings>) -> UsagePlan {
    let mut plan = UsagePlan::builder("demo")
        .stage("prod")
        .key("alice")
        .key("bob");
    if let Some(quota) = quota {
        plan = plan.quota(quota);
    }
    if let Some(client) = client {
        plan = plan.throttle(client);
    }
    plan.build().unwrap()
}

fn builder(plan: UsagePlan, clock: &GatewayClock) -> GatewayBuilder {
    let keys = InMemoryApiKeyStore::new();
    keys.insert(ApiKey::new("alice", ALICE).id("alice"))
        .unwrap();
    keys.insert(ApiKey::new("bob", BOB).id("bob")).unwrap();
    GatewayBuilder::new()
        .stage(Stage::builder("prod").build().unwrap())
        .route(Route::new(Method::GET, "/pets").api_key_required(true))
        .api_key_store(keys)
        .usage_plan(plan)
        .clock(clock.clone())
}

fn backend(server: &RedisServer) -> tower_gateway::store::RedisBackendBuilder {
    RedisBackend::builder(server.url()).timeout(Duration::from_millis(200))
}

fn instance(builder: GatewayBuilder, backend: RedisBackend) -> (Gateway, Instance) {
    let gateway = builder.redis(backend).build().unwrap();
    let service = gateway.layer(router());
    (gateway, service)
}

async fn call(service: &Instance, key: &str) -> (StatusCode, http::HeaderMap, String) {
    let request = Request::get("/pets")
        .header("x-api-key", key)
        .body(Body::empty())
        .unwrap();
    let response = service.clone().oneshot(request).await.unwrap();
    let (status, headers) = (response.status(), response.headers().clone());
    (status, headers, text(response).await)
}

/// Sends `count` requests for `key`, spread over the instances in turn, `concurrency` at a
/// time; returns the statuses.
async fn spread(
    instances: &[Instance],
    key: &str,
    count: usize,
    concurrency: usize,
) -> Vec<StatusCode> {
    let mut statuses = Vec::with_capacity(count);
    for batch in (0..count).collect::<Vec<_>>().chunks(concurrency) {
        let calls = batch.iter().map(|index| {
            let service = instances[index % instances.len()].clone();
            let key = key.to_owned();
            tokio::spawn(async move { call(&service, &key).await.0 })
        });
        for handle in calls.collect::<Vec<_>>() {
            statuses.push(handle.await.unwrap());
        }
    }
    statuses
}

fn admitted(statuses: &[StatusCode]) -> usize {
    statuses
        .iter()
        .filter(|status| **status == StatusCode::OK)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exact_quota_admits_exactly_its_limit_across_instances() {
    let server = RedisServer::start();
    let clock = ManualClock::starting_at(MONDAY + 3600);
    let instances: Vec<Instance> = (0..3)
        .map(|_| {
            let builder = builder(
                plan(Some(Quota::new(25, QuotaPeriod::Day)), None),
                &clock.clock(),
            );
            instance(builder, backend(&server).build().unwrap()).1
        })
        .collect();
    // Each instance connects and loads the script with bob's first request.
    for instance in &instances {
        assert_eq!(call(instance, BOB).await.0, StatusCode::OK);
    }
    server.reset_stats();
    let statuses = spread(&instances, ALICE, 60, 8).await;
    assert_eq!(admitted(&statuses), 25, "{statuses:?}");
    assert!(
        statuses
            .iter()
            .all(|status| matches!(*status, StatusCode::OK | StatusCode::TOO_MANY_REQUESTS))
    );
    // One script call per request.
    assert_eq!(server.calls("evalsha"), 60);

    let (status, headers, body) = call(&instances[1], ALICE).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body, r#"{"message":"Limit Exceeded"}"#);
    assert_eq!(headers["retry-after"], (23 * 3600).to_string().as_str());
    // Bob's quota is his own.
    assert_eq!(call(&instances[2], BOB).await.0, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_usage_api_reads_and_changes_the_counts_on_redis() {
    let server = RedisServer::start();
    let clock = ManualClock::starting_at(MONDAY + 3600);
    let make = || {
        let builder = builder(
            plan(Some(Quota::new(10, QuotaPeriod::Day)), None),
            &clock.clock(),
        );
        instance(builder, backend(&server).build().unwrap())
    };
    let (first, one) = make();
    let (_, two) = make();
    let usage: UsagePlans = first.usage_plans().unwrap();
    assert_eq!(
        admitted(&spread(&[one.clone(), two.clone()], ALICE, 4, 1).await),
        4
    );

    let read = usage.usage_async("demo", "alice").await.unwrap();
    assert_eq!((read.used, read.remaining, read.limit), (4, 6, 10));
    assert_eq!(read.period_start, MONDAY as i64);
    assert_eq!(read.period_end, MONDAY as i64 + 86_400);
    assert!(
        usage.usage("demo", "alice").is_err(),
        "the in-memory API says the counts are on Redis"
    );

    usage.set_remaining_async("demo", "alice", 1).await.unwrap();
    assert_eq!(
        admitted(&spread(&[two.clone(), one.clone()], ALICE, 3, 1).await),
        1
    );
    usage.extend_async("demo", "alice", 2).await.unwrap();
    assert_eq!(
        admitted(&spread(&[one.clone(), two.clone()], ALICE, 3, 1).await),
        2
    );
    usage.reset_async("demo", "alice").await.unwrap();
    let read = usage.usage_async("demo", "alice").await.unwrap();
    assert_eq!((read.used, read.remaining), (7, 10));

    let rows = usage.daily_usage_async("demo").await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (
            rows[0].key_id.as_str(),
            rows[0].date.as_str(),
            rows[0].requests
        ),
        ("alice", "2026-03-02", 7)
    );
    assert!(matches!(
        usage.usage_async("demo", "nobody").await,
        Err(tower_gateway::usage_plan::UsageError::Config(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_offset_applies_to_the_first_period_only_and_periods_roll_over() {
    let server = RedisServer::start();
    let clock = ManualClock::starting_at(MONDAY + 3600);
    let quota = Quota::new(5, QuotaPeriod::Day).offset(2);
    let instances: Vec<Instance> = (0..2)
        .map(|_| {
            let builder = builder(plan(Some(quota), None), &clock.clock());
            instance(builder, backend(&server).build().unwrap()).1
        })
        .collect();
    assert_eq!(admitted(&spread(&instances, ALICE, 6, 1).await), 3);
    clock.advance(Duration::from_secs(86_400));
    assert_eq!(admitted(&spread(&instances, ALICE, 8, 1).await), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leased_quota_stays_within_its_bound_and_settles_to_the_limit() {
    const LEASE: u32 = 5;
    const INSTANCES: usize = 3;
    let server = RedisServer::start();
    let clock = ManualClock::starting_at(MONDAY + 3600);
    let leased = Consistency::Leased {
        lease: LEASE,
        settle: Duration::from_millis(100),
    };
    let instances: Vec<Instance> = (0..INSTANCES)
        .map(|_| {
            let builder = builder(
                plan(Some(Quota::new(40, QuotaPeriod::Day)), None),
                &clock.clock(),
            );
            instance(
                builder,
                backend(&server).consistency(leased).build().unwrap(),
            )
            .1
        })
        .collect();
    server.reset_stats();
    let first = admitted(&spread(&instances, ALICE, 100, 6).await);
    let bound = INSTANCES * LEASE as usize;
    assert!(
        (40 - bound..=40).contains(&first),
        "{first} admitted: reserved leases never overspend"
    );
    let calls = server.calls("evalsha");
    assert!(
        calls <= 100 / LEASE as u64 + 2 * INSTANCES as u64 + 10,
        "{calls} script calls for 100 requests with leases of {LEASE}"
    );
    // Idle leases give their units back; then the whole quota is spent, and no more.
    tokio::time::sleep(Duration::from_millis(350)).await;
    let second = admitted(&spread(&instances[..1], ALICE, 60, 1).await);
    assert_eq!(first + second, 40, "{first} then {second}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_leases_give_their_quota_back_to_the_other_instances() {
    let server = RedisServer::start();
    let clock = ManualClock::starting_at(MONDAY + 3600);
    let leased = Consistency::Leased {
        lease: 5,
        settle: Duration::from_millis(100),
    };
    let instances: Vec<Instance> = (0..3)
        .map(|_| {
            let builder = builder(
                plan(Some(Quota::new(10, QuotaPeriod::Day)), None),
                &clock.clock(),
            );
            instance(
                builder,
                backend(&server).consistency(leased).build().unwrap(),
            )
            .1
        })
        .collect();
    // The first two instances lease the whole quota, five each, and spend one each.
    assert_eq!(call(&instances[0], ALICE).await.0, StatusCode::OK);
    assert_eq!(call(&instances[1], ALICE).await.0, StatusCode::OK);
    assert_eq!(
        call(&instances[2], ALICE).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    // Once their leases settle, the eight units they did not spend serve the third.
    tokio::time::sleep(Duration::from_millis(450)).await;
    let statuses = spread(&instances[2..], ALICE, 10, 1).await;
    assert_eq!(admitted(&statuses), 8, "{statuses:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttles_hold_across_instances_within_burst_plus_rate_times_time() {
    const RATE: f64 = 20.0;
    const BURST: u32 = 10;
    let server = RedisServer::start();
    let clock = ManualClock::starting_at(MONDAY);
    for consistency in [
        Consistency::Exact,
        Consistency::Leased {
            lease: 4,
            settle: Duration::from_secs(1),
        },
    ] {
        let prefix = format!("{consistency:?}:").replace(['{', '}', ' '], "");
        let instances: Vec<Instance> = (0..2)
            .map(|_| {
                let builder = builder(plan(None, Some(throttle(RATE, BURST))), &clock.clock());
                let backend = backend(&server)
                    .consistency(consistency)
                    .key_prefix(prefix.clone())
                    .build()
                    .unwrap();
                instance(builder, backend).1
            })
            .collect();
        let started = Instant::now();
        let mut statuses = Vec::new();
        // 25 rounds of 4 concurrent requests, 20 ms apart: about half a second.
        for _ in 0..25 {
            statuses.extend(spread(&instances, ALICE, 4, 4).await);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let elapsed = started.elapsed().as_secs_f64();
        let admitted = admitted(&statuses);
        let lease_slack = match consistency {
            Consistency::Leased { lease, .. } => 2 * lease as usize,
            Consistency::Exact => 0,
        };
        let most = BURST as usize + (RATE * elapsed).ceil() as usize + lease_slack;
        assert!(
            (BURST as usize..=most).contains(&admitted),
            "{consistency:?}: {admitted} admitted in {elapsed:.3} s (at most {most})"
        );
        let throttled = statuses
            .iter()
            .filter(|status| **status == StatusCode::TOO_MANY_REQUESTS)
            .count();
        assert_eq!(admitted + throttled, 100);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_throttle_holds_across_instances_and_its_refusal_gives_the_quota_back() {
    let server = RedisServer::start();
    let clock = ManualClock::starting_at(MONDAY + 3600);
    // The stage admits a burst of 3 and then one request every 100 s, across both instances:
    // the stage's bucket is on Redis too.
    let (gateway, first) = instance(
        builder_with_throttled_prod(&clock.clock()),
        backend(&server).build().unwrap(),
    );
    let (_, second) = instance(
        builder_with_throttled_prod(&clock.clock()),
        backend(&server).build().unwrap(),
    );
    let statuses = spread(&[first, second], ALICE, 6, 1).await;
    assert_eq!(admitted(&statuses), 3, "{statuses:?}");
    let usage = gateway
        .usage_plans()
        .unwrap()
        .usage_async("demo", "alice")
        .await
        .unwrap();
    assert_eq!(
        usage.used, 3,
        "the 3 requests the stage refused are not counted"
    );
}

fn builder_with_throttled_prod(clock: &GatewayClock) -> GatewayBuilder {
    let keys = InMemoryApiKeyStore::new();
    keys.insert(ApiKey::new("alice", ALICE).id("alice"))
        .unwrap();
    GatewayBuilder::new()
        .stage(
            Stage::builder("prod")
                .throttle(throttle(0.01, 3))
                .build()
                .unwrap(),
        )
        .route(Route::new(Method::GET, "/pets").api_key_required(true))
        .api_key_store(keys)
        .usage_plan(
            UsagePlan::builder("demo")
                .stage("prod")
                .key("alice")
                .quota(Quota::new(100, QuotaPeriod::Day))
                .build()
                .unwrap(),
        )
        .clock(clock.clone())
}

/// An instance whose fail-open fallback divides a throttle of burst 4 among 2 instances.
fn outage_instance(server: &RedisServer, outage: OutagePolicy) -> (RedisBackend, Instance) {
    let clock = ManualClock::starting_at(MONDAY + 3600);
    let builder = builder(
        plan(
            Some(Quota::new(3, QuotaPeriod::Day)),
            Some(throttle(0.001, 4)),
        ),
        &clock.clock(),
    );
    let backend = RedisBackend::builder(server.url())
        .timeout(Duration::from_millis(100))
        .back_off(Duration::from_millis(300))
        .outage(outage)
        .build()
        .unwrap();
    (backend.clone(), instance(builder, backend).1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_fails_open_within_the_timeout_and_the_limits_return_with_it() {
    let server = RedisServer::start();
    let backend = |instances| OutagePolicy::FailOpen { instances };
    let (redis, service) = outage_instance(&server, backend(2));
    // Redis's quota of 3 is spent.
    for expected in ["redis", "redis", "redis"] {
        let (status, _, body) = call(&service, ALICE).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, expected));
    }
    assert_eq!(call(&service, ALICE).await.0, StatusCode::TOO_MANY_REQUESTS);

    server.pause();
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let started = Instant::now();
        let (status, _, body) = call(&service, ALICE).await;
        // The timeout (100 ms) bounds the wait, with room for a loaded machine.
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "{:?}",
            started.elapsed()
        );
        if status == StatusCode::OK {
            assert_eq!(body, "fallback");
        }
        statuses.push(status);
    }
    // The fallback is the plan divided by 2: a burst of 2 and a quota of 2.
    assert_eq!(admitted(&statuses), 2, "{statuses:?}");
    assert_eq!(redis.decisions_without_redis(), 4);

    server.resume();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (status, _, body) = call(&service, ALICE).await;
    assert_eq!(
        (status, body.as_str()),
        (
            StatusCode::TOO_MANY_REQUESTS,
            r#"{"message":"Limit Exceeded"}"#
        ),
        "Redis decides again, and its quota is still spent"
    );
    assert_eq!(redis.decisions_without_redis(), 4);
    let (status, _, body) = call(&service, BOB).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "redis"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_redis_fails_closed_and_a_restarted_one_is_used_again() {
    let mut server = RedisServer::start();
    let (redis, service) = outage_instance(&server, OutagePolicy::FailClosed);
    assert_eq!(call(&service, ALICE).await.0, StatusCode::OK);

    server.kill();
    let started = Instant::now();
    let (status, _, body) = call(&service, ALICE).await;
    assert!(started.elapsed() < Duration::from_millis(1500));
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, r#"{"message":"Service Unavailable"}"#);
    // In the back-off, requests do not wait for Redis at all.
    let started = Instant::now();
    assert_eq!(call(&service, BOB).await.0, StatusCode::SERVICE_UNAVAILABLE);
    assert!(started.elapsed() < Duration::from_millis(100));
    assert_eq!(redis.decisions_without_redis(), 2);

    // A fresh server knows neither the scripts nor the counts: the connection is remade and
    // the script loaded again, with no restart of the gateway.
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        tokio::time::sleep(Duration::from_millis(350)).await;
        let (status, _, body) = call(&service, ALICE).await;
        if status == StatusCode::OK {
            assert_eq!(body, "redis");
            break;
        }
        assert!(Instant::now() < deadline, "Redis never came back: {status}");
    }
    assert!(server.calls("evalsha") >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_keeps_a_keys_throttle_and_quota_on_one_slot() {
    let server = RedisServer::start_cluster();
    let clock = ManualClock::starting_at(MONDAY + 3600);
    let instances: Vec<Instance> = (0..2)
        .map(|_| {
            let builder = builder(
                plan(
                    Some(Quota::new(7, QuotaPeriod::Week)),
                    Some(throttle(1000.0, 100)),
                ),
                &clock.clock(),
            );
            let backend = RedisBackend::cluster([server.url()])
                .timeout(Duration::from_millis(500))
                .build()
                .unwrap();
            instance(builder, backend).1
        })
        .collect();
    let statuses = spread(&instances, ALICE, 12, 3).await;
    assert_eq!(admitted(&statuses), 7, "{statuses:?}");
    // The script touched the bucket, the quota, the first period and the day counts in one
    // call: a cluster refuses that unless they share a slot.
    let cluster_keys = server.command(&["KEYS", "*"]);
    assert!(
        cluster_keys.contains("tower-gateway:{k:demo:alice}:q:"),
        "{cluster_keys}"
    );
}

#[tokio::test]
async fn redis_settings_and_configs_are_checked() {
    let error = |builder: tower_gateway::store::RedisBackendBuilder| builder.build().unwrap_err();
    assert_eq!(
        error(RedisBackend::builder("http://nope")).field(),
        "redis.url"
    );
    assert_eq!(
        error(RedisBackend::builder("redis://127.0.0.1").timeout(Duration::ZERO)).field(),
        "redis.timeout"
    );
    assert_eq!(
        error(
            RedisBackend::builder("redis://127.0.0.1").consistency(Consistency::Leased {
                lease: 0,
                settle: Duration::from_secs(1)
            })
        )
        .field(),
        "redis.consistency.lease"
    );
    assert_eq!(
        error(
            RedisBackend::builder("redis://127.0.0.1")
                .outage(OutagePolicy::FailOpen { instances: 0 })
        )
        .field(),
        "redis.outage.instances"
    );
    assert_eq!(
        error(RedisBackend::builder("redis://127.0.0.1").key_prefix("{x}")).field(),
        "redis.key_prefix"
    );
    assert_eq!(
        error(RedisBackend::cluster(Vec::<String>::new())).field(),
        "redis.url"
    );

    let config = |redis: serde_json::Value| {
        let config: GatewayConfig = serde_json::from_value(serde_json::json!({
            "stages": [{ "name": "prod" }],
            "routes": [{ "route": "GET /pets" }],
            "redis": redis,
        }))
        .unwrap();
        GatewayBuilder::from_config(config).and_then(GatewayBuilder::build)
    };
    assert_eq!(
        config(serde_json::json!({ "timeout_ms": 5 }))
            .unwrap_err()
            .field(),
        "redis.url"
    );
    assert_eq!(
        config(serde_json::json!({
            "url": "redis://127.0.0.1:1",
            "consistency": { "leased": { "lease": 10, "settle_ms": 1 } }
        }))
        .unwrap_err()
        .field(),
        "redis.consistency.settle"
    );
    if let Err(error) = config(serde_json::json!({ "url": "redis://127.0.0.1:1" })) {
        panic!("{error}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_file_puts_the_quota_on_redis() {
    let server = RedisServer::start();
    let config: GatewayConfig = serde_json::from_value(serde_json::json!({
        "stages": [{ "name": "prod" }],
        "routes": [{ "route": "GET /pets", "api_key_required": true }],
        "api_keys": { "keys": [{ "id": "alice", "name": "alice", "value": ALICE }] },
        "usage_plans": [{
            "id": "demo", "stages": ["prod"], "keys": ["alice"],
            "quota": { "limit": 2, "period": "DAY" }
        }],
        "redis": { "url": server.url(), "outage": "fail_closed" }
    }))
    .unwrap();
    let services: Vec<Instance> = (0..2)
        .map(|_| {
            let builder = GatewayBuilder::from_config(config.clone()).unwrap();
            builder.build().unwrap().layer(router())
        })
        .collect();
    assert_eq!(admitted(&spread(&services, ALICE, 5, 1).await), 2);
}

/// With nothing listening, every call fails at once: the decisions are the policy's, and they
/// are counted in the metric (read with a local recorder) and by the backend.
#[test]
fn decisions_without_redis_are_counted_in_the_metric() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    use tower_gateway::observe::metrics::DECISIONS_WITHOUT_BACKEND;

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .unwrap()
        .port();
    let clock = ManualClock::starting_at(MONDAY);
    let backend = RedisBackend::builder(format!("redis://127.0.0.1:{port}"))
        .outage(OutagePolicy::FailClosed)
        .build()
        .unwrap();
    let (_, service) = instance(
        builder(
            plan(Some(Quota::new(5, QuotaPeriod::Day)), None),
            &clock.clock(),
        ),
        backend.clone(),
    );
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || {
        runtime.block_on(async {
            for _ in 0..2 {
                assert_eq!(
                    call(&service, ALICE).await.0,
                    StatusCode::SERVICE_UNAVAILABLE
                );
            }
        })
    });
    let count = |name: &str, label: Option<(&str, &str)>| -> u64 {
        snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .filter(|(key, ..)| key.key().name() == name)
            .filter(|(key, ..)| {
                label
                    .is_none_or(|(k, v)| key.key().labels().any(|l| l.key() == k && l.value() == v))
            })
            .map(|(.., value)| match value {
                DebugValue::Counter(count) => count,
                _ => 0,
            })
            .sum()
    };
    assert_eq!(
        count(DECISIONS_WITHOUT_BACKEND, Some(("policy", "fail_closed"))),
        2
    );
    assert_eq!(backend.decisions_without_redis(), 2);
}

// The response cache on Redis.

const CACHE_INDEX: &str = "tower-gateway:{c:prod}:index";

/// A pets API that counts its calls; `/pets/big` answers more than the largest entry and
/// `/pets/short` says `max-age=5`.
fn counted_router(calls: &std::sync::Arc<std::sync::atomic::AtomicUsize>) -> Router {
    use std::sync::atomic::Ordering;
    let calls = std::sync::Arc::clone(calls);
    Router::new().route(
        "/pets/{id}",
        get(
            move |axum::extract::Path(id): axum::extract::Path<String>| {
                let call = calls.fetch_add(1, Ordering::SeqCst) + 1;
                async move {
                    let cache_control = if id == "short" { "max-age=5" } else { "public" };
                    let body = if id == "big" {
                        "x".repeat(4096)
                    } else {
                        format!("pet {id}, call {call}")
                    };
                    ([("cache-control", cache_control)], body)
                }
            },
        ),
    )
}

fn cached_builder(
    server: &RedisServer,
    clock: &GatewayClock,
    settings: tower_gateway::cache::CacheSettings,
) -> GatewayBuilder {
    GatewayBuilder::new()
        .stage(
            Stage::builder("prod")
                .cache(settings.store(tower_gateway::cache::CacheStore::Redis))
                .build()
                .unwrap(),
        )
        .route(Route::new(Method::GET, "/pets/{petId}"))
        .clock(clock.clone())
        .redis(backend(server).build().unwrap())
}

fn cached_instance(
    server: &RedisServer,
    clock: &GatewayClock,
    calls: &std::sync::Arc<std::sync::atomic::AtomicUsize>,
    settings: tower_gateway::cache::CacheSettings,
) -> (Gateway, GatewayService<Router>) {
    let gateway = cached_builder(server, clock, settings).build().unwrap();
    let service = gateway.layer(counted_router(calls));
    (gateway, service)
}

async fn fetch(service: &GatewayService<Router>, path: &str) -> (StatusCode, String, String) {
    let request = Request::get(path).body(Body::empty()).unwrap();
    let response = service.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let cache = response
        .headers()
        .get("x-cache")
        .map(|value| value.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, cache, text(response).await)
}

/// The longest time to live (ms) of the stage's entries on Redis; -3 without entries.
fn longest_pttl(server: &RedisServer) -> i64 {
    let script = "local most = -3 \
        for _, name in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do \
            most = math.max(most, redis.call('PTTL', name)) \
        end \
        return most";
    let reply = server.command(&["EVAL", script, "1", CACHE_INDEX]);
    reply.trim().trim_start_matches(':').parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_cached_on_redis_is_served_by_every_instance_until_it_expires() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let server = RedisServer::start();
    let manual = ManualClock::starting_at(MONDAY);
    let calls = std::sync::Arc::new(AtomicUsize::new(0));
    let settings = tower_gateway::cache::CacheSettings::new().ttl_seconds(60);
    let (gateway_a, a) = cached_instance(&server, &manual.clock(), &calls, settings.clone());
    let (_gateway_b, b) = cached_instance(&server, &manual.clock(), &calls, settings);

    assert_eq!(
        fetch(&a, "/pets/1").await,
        (StatusCode::OK, "miss".into(), "pet 1, call 1".into())
    );
    // Stored with `SET PX` for the TTL.
    let pttl = longest_pttl(&server);
    assert!((1..=60_000).contains(&pttl), "PTTL {pttl}");
    manual.advance(Duration::from_secs(7));
    server.reset_stats();
    let request = Request::get("/pets/1").body(Body::empty()).unwrap();
    let response = b.clone().oneshot(request).await.unwrap();
    assert_eq!(response.headers()["x-cache"], "hit");
    assert_eq!(response.headers()["age"], "7");
    assert_eq!(text(response).await, "pet 1, call 1");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // A hit is one command: the lookup.
    assert_eq!(server.calls("get"), 1);
    assert_eq!(server.calls("evalsha"), 0);
    // The entry outlives a redeployment of the stage.
    let settings = tower_gateway::cache::CacheSettings::new().ttl_seconds(60);
    gateway_a
        .deployments()
        .deploy(cached_builder(&server, &manual.clock(), settings))
        .unwrap();
    assert_eq!(fetch(&a, "/pets/1").await.1, "hit");
    let caches = gateway_a.response_caches().unwrap();
    assert_eq!(caches.entry_count_async("prod").await, Ok(Some(1)));
    assert!(caches.weighted_size_async("prod").await.unwrap().unwrap() > 13);
    // Entries on Redis are not counted in memory.
    assert_eq!(caches.entry_count("prod"), None);

    // The backend's max-age shortens the TTL on Redis too.
    assert_eq!(fetch(&b, "/pets/short").await.1, "miss");
    let request = Request::get("/pets/short").body(Body::empty()).unwrap();
    let response = a.clone().oneshot(request).await.unwrap();
    assert_eq!(response.headers()["x-cache"], "hit");
    let script = "local least = 1e12 \
        for _, name in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do \
            least = math.min(least, redis.call('PTTL', name)) \
        end \
        return least";
    let least: i64 = server
        .command(&["EVAL", script, "1", CACHE_INDEX])
        .trim()
        .trim_start_matches(':')
        .parse()
        .unwrap();
    assert!((1..=5_000).contains(&least), "PTTL {least}");

    // Past the TTL on the gateways' clock, both miss and the service answers again.
    manual.advance(Duration::from_secs(54));
    assert_eq!(
        fetch(&b, "/pets/1").await,
        (StatusCode::OK, "miss".into(), "pet 1, call 3".into())
    );
    assert_eq!(fetch(&a, "/pets/1").await.1, "hit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_on_redis_is_flushed_for_every_instance_and_keeps_to_its_limits() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let server = RedisServer::start();
    let clock = ManualClock::starting_at(MONDAY).clock();
    let calls = std::sync::Arc::new(AtomicUsize::new(0));
    let settings = tower_gateway::cache::CacheSettings::new()
        .capacity_bytes(2048)
        .max_entry_bytes(1024);
    let (gateway_a, a) = cached_instance(&server, &clock, &calls, settings.clone());
    let (gateway_b, b) = cached_instance(&server, &clock, &calls, settings);
    let caches_a = gateway_a.response_caches().unwrap();
    let caches_b = gateway_b.response_caches().unwrap();

    // Too big to store: streamed through, nothing on Redis.
    assert_eq!(fetch(&a, "/pets/big").await.2.len(), 4096);
    assert_eq!(caches_a.entry_count_async("prod").await, Ok(Some(0)));

    // Ten entries of about 300 bytes in 2048: the oldest go, the newest stays.
    for id in 0..10 {
        assert_eq!(fetch(&a, &format!("/pets/{id}")).await.1, "miss");
    }
    let entries = caches_b.entry_count_async("prod").await.unwrap().unwrap();
    let bytes = caches_b.weighted_size_async("prod").await.unwrap().unwrap();
    assert!((1..10).contains(&entries), "{entries} entries");
    assert!(bytes <= 2048, "{bytes} bytes");
    assert_eq!(fetch(&b, "/pets/9").await.1, "hit");
    assert_eq!(fetch(&b, "/pets/0").await.1, "miss");

    // One entry, then the whole stage, flushed from one instance for both.
    assert_eq!(fetch(&a, "/pets/9").await.1, "hit");
    let one = Request::get("/pets/9").body(()).unwrap();
    assert_eq!(caches_a.flush_entry_async(one, None).await, Ok(true));
    assert_eq!(fetch(&b, "/pets/9").await.1, "miss");
    assert_eq!(caches_b.flush_stage_async("prod").await, Ok(true));
    assert_eq!(caches_a.entry_count_async("prod").await, Ok(Some(0)));
    assert_eq!(caches_a.weighted_size_async("prod").await, Ok(Some(0)));
    assert_eq!(fetch(&a, "/pets/9").await.1, "miss");

    // The plain flush starts the same flush on the runtime.
    assert_eq!(fetch(&b, "/pets/9").await.1, "hit");
    assert!(caches_b.flush_stage("prod"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while caches_a.entry_count_async("prod").await != Ok(Some(0)) {
        assert!(Instant::now() < deadline, "the spawned flush never ran");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = calls.load(Ordering::SeqCst);
    assert_eq!(fetch(&b, "/pets/9").await.1, "miss");
    assert_eq!(calls.load(Ordering::SeqCst), before + 1);
    // An index lost (to Redis's own eviction, say) takes the count of bytes with it.
    for id in 10..13 {
        assert_eq!(fetch(&a, &format!("/pets/{id}")).await.1, "miss");
    }
    let three = caches_a.weighted_size_async("prod").await.unwrap().unwrap();
    server.command(&["DEL", CACHE_INDEX]);
    assert_eq!(fetch(&a, "/pets/13").await.1, "miss");
    let one = caches_a.weighted_size_async("prod").await.unwrap().unwrap();
    assert!(
        one * 2 < three,
        "{one} bytes for one entry, {three} for three"
    );
    assert_eq!(caches_a.entry_count_async("prod").await, Ok(Some(1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_entries_and_an_unreachable_redis_are_misses() {
    let mut server = RedisServer::start();
    let clock = ManualClock::starting_at(MONDAY).clock();
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let settings = tower_gateway::cache::CacheSettings::new();
    let (_gateway, a) = cached_instance(&server, &clock, &calls, settings);

    assert_eq!(fetch(&a, "/pets/1").await.1, "miss");
    assert_eq!(fetch(&a, "/pets/1").await.1, "hit");
    let damage = "for _, name in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do \
            redis.call('SET', name, 'not an entry', 'KEEPTTL') \
        end \
        return 1";
    server.command(&["EVAL", damage, "1", CACHE_INDEX]);
    assert_eq!(
        fetch(&a, "/pets/1").await,
        (StatusCode::OK, "miss".into(), "pet 1, call 2".into())
    );
    // The miss stored a good entry again.
    assert_eq!(fetch(&a, "/pets/1").await.2, "pet 1, call 2");

    // Without Redis, the service answers (within the timeout), and nothing is refused.
    server.kill();
    let started = Instant::now();
    assert_eq!(
        fetch(&a, "/pets/1").await,
        (StatusCode::OK, "miss".into(), "pet 1, call 3".into())
    );
    assert_eq!(fetch(&a, "/pets/2").await.0, StatusCode::OK);
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_keeps_its_entries_apart_on_redis() {
    use tower_gateway::canary::CanarySettings;
    let server = RedisServer::start();
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let stage = |canary: Option<f64>| {
        let mut stage = Stage::builder("prod").cache(
            tower_gateway::cache::CacheSettings::new()
                .store(tower_gateway::cache::CacheStore::Redis),
        );
        if let Some(percent) = canary {
            stage = stage.canary(CanarySettings::new(percent));
        }
        stage.build().unwrap()
    };
    let builder = |canary: Option<f64>| {
        GatewayBuilder::new()
            .stage(stage(canary))
            .route(Route::new(Method::GET, "/pets/{petId}"))
            .redis(backend(&server).build().unwrap())
    };
    let gateway = builder(Some(100.0)).build().unwrap();
    let service = gateway.layer(counted_router(&calls));
    gateway.deployments().deploy_canary(builder(None)).unwrap();
    // Every request goes to the canary, whose entries are under their own tag.
    assert_eq!(fetch(&service, "/pets/1").await.1, "miss");
    assert_eq!(fetch(&service, "/pets/1").await.1, "hit");
    let canary_entries = || server.command(&["ZCARD", "tower-gateway:{c:prod~canary}:index"]);
    assert_eq!(canary_entries().trim(), ":1");
    assert_eq!(server.command(&["ZCARD", CACHE_INDEX]).trim(), ":0");
    // Once the canary is rolled back, flushing the stage still reaches what it stored, which
    // a later canary deployment would otherwise serve.
    gateway.deployments().rollback().unwrap();
    let caches = gateway.response_caches().unwrap();
    assert_eq!(caches.flush_stage_async("prod").await, Ok(true));
    assert_eq!(canary_entries().trim(), ":0");
}

/// A cache call that fails (here an entry Redis holds as a hash: `WRONGTYPE`) is a miss, and
/// does not start the back-off that would send the quota to the outage policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_cache_call_leaves_the_limits_on_redis() {
    let server = RedisServer::start();
    let clock = ManualClock::starting_at(MONDAY).clock();
    let redis = backend(&server)
        .outage(OutagePolicy::FailClosed)
        .build()
        .unwrap();
    let keys = InMemoryApiKeyStore::new();
    keys.insert(ApiKey::new("alice", ALICE).id("alice"))
        .unwrap();
    let gateway = GatewayBuilder::new()
        .stage(
            Stage::builder("prod")
                .cache(
                    tower_gateway::cache::CacheSettings::new()
                        .store(tower_gateway::cache::CacheStore::Redis),
                )
                .build()
                .unwrap(),
        )
        .route(Route::new(Method::GET, "/pets").api_key_required(true))
        .api_key_store(keys)
        .usage_plan(plan(Some(Quota::new(100, QuotaPeriod::Day)), None))
        .clock(clock)
        .redis(redis.clone())
        .build()
        .unwrap();
    let service = gateway.layer(router());
    let (status, headers, _) = call(&service, ALICE).await;
    assert_eq!(
        (status, &headers["x-cache"]),
        (StatusCode::OK, &"miss".parse().unwrap())
    );
    let (_, headers, _) = call(&service, ALICE).await;
    assert_eq!(headers["x-cache"], "hit");
    let to_hash = "for _, name in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do \
            redis.call('DEL', name) \
            redis.call('HSET', name, 'not', 'a string') \
        end \
        return 1";
    server.command(&["EVAL", to_hash, "1", CACHE_INDEX]);
    let (status, headers, _) = call(&service, ALICE).await;
    assert_eq!(
        (status, &headers["x-cache"]),
        (StatusCode::OK, &"miss".parse().unwrap())
    );
    let (status, _, _) = call(&service, ALICE).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(redis.decisions_without_redis(), 0);
}

#[test]
fn a_cache_on_redis_needs_the_backend() {
    let config: GatewayConfig = serde_json::from_value(serde_json::json!({
        "stages": [{ "name": "prod", "cache": { "store": "redis" } }],
        "routes": [{ "route": "GET /pets" }],
    }))
    .unwrap();
    let error = GatewayBuilder::from_config(config)
        .and_then(GatewayBuilder::build)
        .unwrap_err();
    assert_eq!(error.field(), "stages[prod].cache.store");
    let layer = tower_gateway::cache::ResponseCacheLayer::builder()
        .settings(
            tower_gateway::cache::CacheSettings::new()
                .store(tower_gateway::cache::CacheStore::Redis),
        )
        .build()
        .unwrap_err();
    assert_eq!(layer.field(), "cache.store");
}

/// Concurrent misses on one key make one call to the service per instance: the requests that
/// missed on Redis wait for the fill under way and are answered with its entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_on_redis_make_one_call() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let server = RedisServer::start();
    let clock = ManualClock::starting_at(MONDAY).clock();
    let calls = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = std::sync::Arc::clone(&calls);
    let gateway = cached_builder(&server, &clock, tower_gateway::cache::CacheSettings::new())
        .build()
        .unwrap();
    // Slow enough that every request has missed before the first is answered.
    let service = gateway.layer(Router::new().route(
        "/pets/{id}",
        get(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                "pet"
            }
        }),
    ));
    let requests: Vec<_> = (0..10)
        .map(|_| {
            let service = service.clone();
            tokio::spawn(async move { fetch(&service, "/pets/1").await })
        })
        .collect();
    let mut misses = 0;
    for request in requests {
        let (status, cache, body) = request.await.unwrap();
        assert_eq!((status, body.as_str()), (StatusCode::OK, "pet"));
        misses += usize::from(cache == "miss");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(misses, 1, "the others are answered from the fill");
}
