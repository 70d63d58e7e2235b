//! Usage plans: four levels of throttling, quotas on UTC calendar periods, the usage API.
//! Time is a manual clock throughout.

mod support;

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::{Method, Request, StatusCode};
use support::json;
use tower::{Layer, ServiceExt};
use tower_gateway::api_key::{ApiKey, InMemoryApiKeyStore};
use tower_gateway::clock::ManualClock;
use tower_gateway::route::ThrottleSettings;
use tower_gateway::usage_plan::{Quota, QuotaPeriod, UsagePlan};
use tower_gateway::{
    Gateway, GatewayBuilder, GatewayConfig, GatewayService, Route, Stage, StageSelection,
};

const ALICE: &str = "alice-key-0123456789abcdef";
const BOB: &str = "bob-key-0123456789abcdefgh";
const CAROL: &str = "carol-key-0123456789abcdef";
/// 2026-03-02T00:00:00Z, a Monday.
const MONDAY: u64 = 1_772_409_600;

fn throttle(rate: f64, burst: u32) -> ThrottleSettings {
    ThrottleSettings { rate, burst }
}

fn keys() -> InMemoryApiKeyStore {
    let store = InMemoryApiKeyStore::new();
    store
        .insert(ApiKey::new("alice", ALICE).id("alice"))
        .unwrap();
    store.insert(ApiKey::new("bob", BOB).id("bob")).unwrap();
    store
        .insert(ApiKey::new("carol", CAROL).id("carol"))
        .unwrap();
    store
}

fn router() -> Router {
    Router::new()
        .route("/pets", get(|| async { "pets" }))
        .route("/pets/{petId}", get(|| async { "pet" }))
        .route("/health", get(|| async { "ok" }))
}

fn stages() -> GatewayBuilder {
    GatewayBuilder::new()
        .stage(Stage::builder("prod").build().unwrap())
        .stage(Stage::builder("beta").build().unwrap())
        .stage_selection(StageSelection::BasePath)
        .route(Route::new(Method::GET, "/pets").api_key_required(true))
        .route(Route::new(Method::GET, "/pets/{petId}").api_key_required(true))
        .api_key_store(keys())
}

fn app(gateway: Gateway) -> GatewayService<Router> {
    gateway.layer(router())
}

fn keyed(path: &str, key: &str) -> Request<Body> {
    Request::get(path)
        .header("x-api-key", key)
        .body(Body::empty())
        .unwrap()
}

async fn status(app: &GatewayService<Router>, request: Request<Body>) -> StatusCode {
    app.clone().oneshot(request).await.unwrap().status()
}

/// The statuses of `count` requests in a row with `key`.
async fn statuses(
    app: &GatewayService<Router>,
    path: &str,
    key: &str,
    count: usize,
) -> Vec<StatusCode> {
    let mut statuses = Vec::with_capacity(count);
    for _ in 0..count {
        statuses.push(status(app, keyed(path, key)).await);
    }
    statuses
}

/// Sends a request every `step` for `total`, returns how many were admitted.
async fn admitted_over(
    app: &GatewayService<Router>,
    clock: &ManualClock,
    path: &str,
    key: &str,
    step: Duration,
    total: Duration,
) -> u64 {
    let mut admitted = 0;
    let mut elapsed = Duration::ZERO;
    while elapsed <= total {
        if status(app, keyed(path, key)).await == StatusCode::OK {
            admitted += 1;
        }
        clock.advance(step);
        elapsed += step;
    }
    admitted
}

#[tokio::test]
async fn the_key_throttle_admits_at_most_burst_plus_rate_times_t() {
    let clock = ManualClock::starting_at(MONDAY);
    let plan = UsagePlan::builder("demo")
        .stage("prod")
        .throttle(throttle(5.0, 10))
        .key("alice")
        .build()
        .unwrap();
    let app = app(stages()
        .usage_plan(plan)
        .clock(clock.clock())
        .build()
        .unwrap());
    // Hammer it: a request every millisecond for 4 seconds.
    let admitted = admitted_over(
        &app,
        &clock,
        "/prod/pets",
        ALICE,
        Duration::from_millis(1),
        Duration::from_secs(4),
    )
    .await;
    assert!(admitted <= 10 + 5 * 4, "{admitted}");
    assert!(
        admitted >= 10 + 5 * 4 - 1,
        "GCRA admits what it may: {admitted}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_callers_on_one_key_share_its_bucket() {
    let clock = ManualClock::starting_at(MONDAY);
    let plan = UsagePlan::builder("demo")
        .stage("prod")
        .throttle(throttle(10.0, 20))
        .key("alice")
        .build()
        .unwrap();
    let app = app(stages()
        .usage_plan(plan)
        .clock(clock.clock())
        .build()
        .unwrap());
    let mut admitted = 0;
    for _ in 0..30 {
        // 16 callers at once, then 100 ms pass: 3 seconds in all.
        let calls = (0..16).map(|_| {
            let app = app.clone();
            tokio::spawn(async move {
                app.oneshot(keyed("/prod/pets", ALICE))
                    .await
                    .unwrap()
                    .status()
            })
        });
        for call in calls.collect::<Vec<_>>() {
            if call.await.unwrap() == StatusCode::OK {
                admitted += 1;
            }
        }
        clock.advance(Duration::from_millis(100));
    }
    assert!(admitted <= 20 + 10 * 3, "{admitted}");
    assert!(admitted >= 20 + 10 * 3 - 2, "{admitted}");
}

#[tokio::test]
async fn throttled_requests_get_429_with_retry_after_and_rate_limit_headers() {
    let clock = ManualClock::starting_at(MONDAY);
    let plan = UsagePlan::builder("demo")
        .stage("prod")
        .throttle(throttle(0.5, 2))
        .key("alice")
        .build()
        .unwrap();
    let app = app(stages()
        .usage_plan(plan)
        .clock(clock.clock())
        .build()
        .unwrap());
    let first = app
        .clone()
        .oneshot(keyed("/prod/pets", ALICE))
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(first.headers()["x-ratelimit-limit"], "2");
    assert_eq!(first.headers()["x-ratelimit-remaining"], "1");
    assert_eq!(first.headers()["x-ratelimit-reset"], "2");
    assert_eq!(
        status(&app, keyed("/prod/pets", ALICE)).await,
        StatusCode::OK
    );
    let throttled = app
        .clone()
        .oneshot(keyed("/prod/pets", ALICE))
        .await
        .unwrap();
    assert_eq!(throttled.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(throttled.headers()["retry-after"], "2", "a token every 2 s");
    assert_eq!(throttled.headers()["x-ratelimit-remaining"], "0");
    assert_eq!(
        json(throttled).await,
        serde_json::json!({"message": "Too Many Requests"})
    );
    clock.advance(Duration::from_millis(1500));
    let soon = app
        .clone()
        .oneshot(keyed("/prod/pets", ALICE))
        .await
        .unwrap();
    assert_eq!(soon.headers()["retry-after"], "1", "rounded up, at least 1");
    clock.advance(Duration::from_millis(500));
    assert_eq!(
        status(&app, keyed("/prod/pets", ALICE)).await,
        StatusCode::OK
    );

    let quiet = stages()
        .usage_plan(
            UsagePlan::builder("demo")
                .stage("prod")
                .throttle(throttle(1.0, 1))
                .key("alice")
                .build()
                .unwrap(),
        )
        .rate_limit_headers(false)
        .clock(clock.clock())
        .build()
        .unwrap();
    let response = app_of(quiet)
        .oneshot(keyed("/prod/pets", ALICE))
        .await
        .unwrap();
    assert!(!response.headers().contains_key("x-ratelimit-limit"));
}

fn app_of(gateway: Gateway) -> GatewayService<Router> {
    app(gateway)
}

#[tokio::test]
async fn four_levels_most_specific_first() {
    let clock = ManualClock::starting_at(MONDAY);
    let gateway = GatewayBuilder::new()
        .stage(
            Stage::builder("prod")
                .throttle(throttle(100.0, 6))
                .build()
                .unwrap(),
        )
        .route(Route::new(Method::GET, "/pets").api_key_required(true))
        .route(Route::new(Method::GET, "/pets/{petId}").api_key_required(true))
        .route(Route::new(Method::GET, "/health").throttle(throttle(100.0, 2)))
        .api_key_store(keys())
        .usage_plan(
            UsagePlan::builder("demo")
                .stage("prod")
                .throttle(throttle(100.0, 4))
                .method_throttle("GET /pets/{petId}", throttle(100.0, 1))
                .key("alice")
                .key("bob")
                .build()
                .unwrap(),
        )
        .clock(clock.clock())
        .build()
        .unwrap();
    let app = app(gateway);
    // Key × method: one request per burst on /pets/{petId}, for each key on its own.
    assert_eq!(status(&app, keyed("/pets/1", ALICE)).await, StatusCode::OK);
    assert_eq!(
        status(&app, keyed("/pets/2", ALICE)).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(status(&app, keyed("/pets/1", BOB)).await, StatusCode::OK);
    // Key: four on the other routes (the override does not spend the key's bucket).
    for _ in 0..4 {
        assert_eq!(status(&app, keyed("/pets", ALICE)).await, StatusCode::OK);
    }
    assert_eq!(
        status(&app, keyed("/pets", ALICE)).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    // Stage default: six for everyone together; alice and bob have used 6 so far, bob's
    // next one passes his own bucket but not the stage's.
    let stage_limited = app.clone().oneshot(keyed("/pets", BOB)).await.unwrap();
    assert_eq!(stage_limited.status(), StatusCode::TOO_MANY_REQUESTS);
    // Stage × method: /health needs no key, so no plan meters it, but its own throttle holds.
    let health = || Request::get("/health").body(Body::empty()).unwrap();
    assert_eq!(status(&app, health()).await, StatusCode::OK);
    assert_eq!(status(&app, health()).await, StatusCode::OK);
    assert_eq!(status(&app, health()).await, StatusCode::TOO_MANY_REQUESTS);
    clock.advance(Duration::from_secs(1));
    assert_eq!(status(&app, keyed("/pets", BOB)).await, StatusCode::OK);
}

#[tokio::test]
async fn keys_outside_a_plan_for_the_stage_are_forbidden() {
    let plan = UsagePlan::builder("prod-only")
        .stage("prod")
        .throttle(throttle(10.0, 10))
        .key("alice")
        .build()
        .unwrap();
    let app = app(stages().usage_plan(plan).build().unwrap());
    assert_eq!(
        status(&app, keyed("/prod/pets", ALICE)).await,
        StatusCode::OK
    );
    assert_eq!(
        status(&app, keyed("/beta/pets", ALICE)).await,
        StatusCode::FORBIDDEN,
        "plan for another stage"
    );
    let outsider = app
        .clone()
        .oneshot(keyed("/prod/pets", CAROL))
        .await
        .unwrap();
    assert_eq!(outsider.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        json(outsider).await,
        serde_json::json!({"message": "Forbidden"})
    );
}

/// Two gateways share one key store, and a key's plan differs by gateway and by stage: each
/// request is metered by its own gateway's plan for its own stage, however they interleave.
#[tokio::test]
async fn gateways_sharing_a_store_each_apply_their_own_plans() {
    let clock = ManualClock::starting_at(MONDAY);
    let store = keys();
    let plan = |id: &str, stage: &str, burst: u32, key: &str| {
        UsagePlan::builder(id)
            .stage(stage)
            .throttle(throttle(0.001, burst))
            .key(key)
            .build()
            .unwrap()
    };
    let first = app(stages()
        .api_key_store(store.clone())
        .clock(clock.clock())
        .usage_plan(plan("one-prod", "prod", 1, "alice"))
        .usage_plan(plan("one-beta", "beta", 3, "alice"))
        .build()
        .unwrap());
    let second = app(stages()
        .api_key_store(store)
        .clock(clock.clock())
        .usage_plan(plan("two-prod", "prod", 2, "alice"))
        .usage_plan(plan("two-beta", "beta", 1, "bob"))
        .build()
        .unwrap());
    let mut admitted = [0; 4];
    for _ in 0..5 {
        for (index, (app, path)) in [
            (&first, "/prod/pets"),
            (&first, "/beta/pets"),
            (&second, "/prod/pets"),
            (&second, "/beta/pets"),
        ]
        .into_iter()
        .enumerate()
        {
            match status(app, keyed(path, ALICE)).await {
                StatusCode::OK => admitted[index] += 1,
                StatusCode::TOO_MANY_REQUESTS => {}
                StatusCode::FORBIDDEN => assert_eq!(index, 3, "alice has no plan there"),
                other => panic!("unexpected {other}"),
            }
        }
    }
    assert_eq!(admitted, [1, 3, 2, 0]);
    assert_eq!(
        status(&second, keyed("/beta/pets", BOB)).await,
        StatusCode::OK
    );
    assert_eq!(
        status(&first, keyed("/beta/pets", BOB)).await,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn quotas_count_per_utc_day_and_throttled_requests_cost_nothing() {
    let clock = ManualClock::starting_at(MONDAY + 86_400 - 10);
    let plan = UsagePlan::builder("daily")
        .stage("prod")
        .throttle(throttle(1.0, 3))
        .quota(Quota::new(5, QuotaPeriod::Day))
        .key("alice")
        .build()
        .unwrap();
    let gateway = stages()
        .usage_plan(plan)
        .clock(clock.clock())
        .build()
        .unwrap();
    let usage = gateway.usage_plans().unwrap();
    let app = app(gateway);
    // Three pass, the fourth is throttled: the quota counts three.
    assert_eq!(
        statuses(&app, "/prod/pets", ALICE, 4).await,
        [
            [StatusCode::OK; 3].as_slice(),
            &[StatusCode::TOO_MANY_REQUESTS]
        ]
        .concat()
    );
    assert_eq!(usage.usage("daily", "alice").unwrap().used, 3);
    clock.advance(Duration::from_secs(3));
    assert_eq!(
        statuses(&app, "/prod/pets", ALICE, 2).await,
        [StatusCode::OK; 2]
    );
    let exhausted = app
        .clone()
        .oneshot(keyed("/prod/pets", ALICE))
        .await
        .unwrap();
    assert_eq!(exhausted.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        exhausted.headers()["retry-after"],
        "7",
        "until midnight UTC"
    );
    assert_eq!(
        json(exhausted).await,
        serde_json::json!({"message": "Limit Exceeded"})
    );
    // Midnight: a new day, a new quota.
    clock.advance(Duration::from_secs(7));
    assert_eq!(
        status(&app, keyed("/prod/pets", ALICE)).await,
        StatusCode::OK
    );
    let today = usage.usage("daily", "alice").unwrap();
    assert_eq!((today.used, today.remaining, today.limit), (1, 4, 5));
    assert_eq!(today.period_start, (MONDAY + 86_400) as i64);
}

#[tokio::test]
async fn the_offset_applies_to_the_first_period_only_and_weeks_start_on_monday() {
    // Sunday 1 March 2026, 23:00 UTC: the first week ends in an hour.
    let clock = ManualClock::starting_at(MONDAY - 3600);
    let plan = UsagePlan::builder("weekly")
        .stage("prod")
        .quota(Quota::new(4, QuotaPeriod::Week).offset(3))
        .key("alice")
        .build()
        .unwrap();
    let app = app(stages()
        .usage_plan(plan)
        .clock(clock.clock())
        .build()
        .unwrap());
    assert_eq!(
        status(&app, keyed("/prod/pets", ALICE)).await,
        StatusCode::OK
    );
    assert_eq!(
        status(&app, keyed("/prod/pets", ALICE)).await,
        StatusCode::TOO_MANY_REQUESTS,
        "4 - 3 = 1"
    );
    clock.advance(Duration::from_secs(3600));
    assert_eq!(
        statuses(&app, "/prod/pets", ALICE, 5).await,
        [
            [StatusCode::OK; 4].as_slice(),
            &[StatusCode::TOO_MANY_REQUESTS]
        ]
        .concat()
    );
    // Sunday 23:59:59 is still the same week; Monday 00:00 starts the next.
    clock.advance(Duration::from_secs(7 * 86_400 - 1));
    assert_eq!(
        status(&app, keyed("/prod/pets", ALICE)).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    clock.advance(Duration::from_secs(1));
    assert_eq!(
        status(&app, keyed("/prod/pets", ALICE)).await,
        StatusCode::OK
    );
}

#[tokio::test]
async fn monthly_quotas_roll_over_on_the_first() {
    // 2026-03-31T23:59:59Z.
    let clock = ManualClock::starting_at(MONDAY + 29 * 86_400 + 86_399);
    let plan = UsagePlan::builder("monthly")
        .stage("prod")
        .quota(Quota::new(1, QuotaPeriod::Month))
        .key("alice")
        .build()
        .unwrap();
    let app = app(stages()
        .usage_plan(plan)
        .clock(clock.clock())
        .build()
        .unwrap());
    assert_eq!(
        status(&app, keyed("/prod/pets", ALICE)).await,
        StatusCode::OK
    );
    let exhausted = app
        .clone()
        .oneshot(keyed("/prod/pets", ALICE))
        .await
        .unwrap();
    assert_eq!(exhausted.headers()["retry-after"], "1");
    clock.advance(Duration::from_secs(1));
    assert_eq!(
        status(&app, keyed("/prod/pets", ALICE)).await,
        StatusCode::OK,
        "April"
    );
}

#[tokio::test]
async fn the_usage_api_reads_extends_resets_and_exports() {
    let clock = ManualClock::starting_at(MONDAY);
    let plan = UsagePlan::builder("billing")
        .stage("prod")
        .quota(Quota::new(3, QuotaPeriod::Month))
        .key("alice")
        .key("bob")
        .build()
        .unwrap();
    let gateway = stages()
        .usage_plan(plan)
        .clock(clock.clock())
        .build()
        .unwrap();
    let usage = gateway.usage_plans().unwrap();
    let app = app(gateway);
    assert_eq!(
        statuses(&app, "/prod/pets", ALICE, 4).await,
        [
            [StatusCode::OK; 3].as_slice(),
            &[StatusCode::TOO_MANY_REQUESTS]
        ]
        .concat()
    );
    usage.extend("billing", "alice", 2).unwrap();
    let extended = usage.usage("billing", "alice").unwrap();
    assert_eq!(
        (extended.used, extended.remaining),
        (3, 2),
        "used counts requests, not the limit"
    );
    assert_eq!(
        status(&app, keyed("/prod/pets", ALICE)).await,
        StatusCode::OK
    );
    usage.set_remaining("billing", "alice", 0).unwrap();
    assert_eq!(
        status(&app, keyed("/prod/pets", ALICE)).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    usage.reset("billing", "alice").unwrap();
    assert_eq!(usage.usage("billing", "alice").unwrap().remaining, 3);
    clock.advance(Duration::from_secs(86_400));
    assert_eq!(status(&app, keyed("/prod/pets", BOB)).await, StatusCode::OK);

    let rows: Vec<_> = usage
        .daily_usage("billing")
        .unwrap()
        .into_iter()
        .map(|row| (row.key_id, row.date, row.requests))
        .collect();
    assert_eq!(
        rows,
        vec![
            ("alice".into(), "2026-03-02".into(), 4),
            ("bob".into(), "2026-03-03".into(), 1),
        ]
    );
    assert!(usage.usage("nope", "alice").is_err());
    assert!(
        usage.usage("billing", "carol").is_err(),
        "carol is not in the plan"
    );
    usage.extend("billing", "bob", u64::MAX).unwrap();
    assert_eq!(
        usage.usage("billing", "bob").unwrap().remaining,
        u64::MAX,
        "saturates"
    );
}

#[test]
fn bad_plans_are_config_errors() {
    let plan = |builder: tower_gateway::usage_plan::UsagePlanBuilder| builder.build().unwrap();
    let two_plans_one_stage = stages()
        .usage_plan(plan(UsagePlan::builder("a").stage("prod").key("alice")))
        .usage_plan(plan(UsagePlan::builder("b").stage("prod").key("alice")))
        .build()
        .unwrap_err();
    assert_eq!(two_plans_one_stage.field(), "usage_plans[b].keys[alice]");
    assert!(two_plans_one_stage.rule().contains("already in plan `a`"));
    assert!(
        stages()
            .usage_plan(plan(UsagePlan::builder("a").stage("prod").key("alice")))
            .usage_plan(plan(UsagePlan::builder("b").stage("beta").key("alice")))
            .build()
            .is_ok(),
        "one plan per stage is fine"
    );
    let unknown_stage = stages()
        .usage_plan(plan(UsagePlan::builder("a").stage("gamma")))
        .build()
        .unwrap_err();
    assert_eq!(unknown_stage.field(), "usage_plans[a].stages[gamma]");
    let unknown_route = stages()
        .usage_plan(plan(
            UsagePlan::builder("a")
                .stage("prod")
                .method_throttle("GET /cats", throttle(1.0, 1)),
        ))
        .build()
        .unwrap_err();
    assert_eq!(
        unknown_route.field(),
        "usage_plans[a].method_throttles[GET /cats]"
    );
    let no_keys = GatewayBuilder::new()
        .stage(Stage::builder("prod").build().unwrap())
        .route(Route::new(Method::GET, "/pets"))
        .usage_plan(plan(UsagePlan::builder("a").stage("prod")))
        .build()
        .unwrap_err();
    assert_eq!(no_keys.field(), "usage_plans");
    let bad_stage_throttle = Stage::builder("prod")
        .throttle(throttle(-1.0, 1))
        .build()
        .unwrap_err();
    assert_eq!(bad_stage_throttle.field(), "stages[prod].throttle.rate");
    let bad_route_throttle = stages()
        .route(Route::new(Method::GET, "/x").throttle(throttle(5.0, 0)))
        .build()
        .unwrap_err();
    assert_eq!(bad_route_throttle.field(), "routes[GET /x].throttle.burst");
    let twice = stages()
        .usage_plan(plan(UsagePlan::builder("a").stage("prod").stage("prod")))
        .build()
        .unwrap_err();
    assert_eq!(twice.field(), "usage_plans[a].stages[prod]");
    assert!(twice.rule().contains("twice"));
    let authorizer_source = stages()
        .api_key_source(tower_gateway::api_key::ApiKeySource::Authorizer)
        .build()
        .unwrap_err();
    assert_eq!(authorizer_source.field(), "routes[GET /pets].authorizer");
    let slow_refill = UsagePlan::builder("a")
        .stage("prod")
        .throttle(throttle(1e-6, 10_000_000))
        .build()
        .unwrap_err();
    assert_eq!(slow_refill.field(), "usage_plans[a].throttle.burst");
}

#[tokio::test]
async fn plans_from_the_config_file() {
    let config = format!(
        r#"{{
        "stages": [{{ "name": "prod", "throttle": {{ "rate": 1000, "burst": 1000 }} }}],
        "routes": [{{ "route": "GET /pets", "api_key_required": true }}],
        "api_keys": {{ "keys": [{{ "id": "alice", "name": "alice", "value": "{ALICE}" }}] }},
        "usage_plans": [{{
            "id": "demo", "stages": ["prod"], "keys": ["alice"],
            "throttle": {{ "rate": 5, "burst": 10 }},
            "method_throttles": {{ "GET /pets": {{ "rate": 1, "burst": 1 }} }},
            "quota": {{ "limit": 1000, "period": "DAY" }}
        }}]
    }}"#
    );
    let gateway = GatewayBuilder::from_config(GatewayConfig::from_json(&config).unwrap())
        .unwrap()
        .build()
        .unwrap();
    let app = gateway.layer(Router::new().route("/pets", get(|| async { "pets" })));
    let ok = app.clone().oneshot(keyed("/pets", ALICE)).await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(
        ok.headers()["x-ratelimit-limit"],
        "1",
        "the method override applies"
    );
    assert_eq!(
        app.oneshot(keyed("/pets", ALICE)).await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // The stage's own throttle holds for requests no plan meters.
    let stage_only = GatewayConfig::from_json(
        r#"{ "stages": [{ "name": "prod", "throttle": { "rate": 0.001, "burst": 2 } }],
             "routes": [{ "route": "GET /health" }] }"#,
    )
    .unwrap();
    let app = GatewayBuilder::from_config(stage_only)
        .unwrap()
        .clock(ManualClock::starting_at(MONDAY).clock())
        .build()
        .unwrap()
        .layer(Router::new().route("/health", get(|| async { "ok" })));
    let statuses: Vec<StatusCode> = health_statuses(&app, 3).await;
    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    let bad = r#"{"stages": [{"name": "prod"}], "routes": [{"route": "GET /a"}],
        "usage_plans": [{"id": "p", "stages": ["prod"], "quota": {"limit": 5, "period": "DAY", "offset": 5}}]}"#;
    let error = GatewayConfig::from_json(bad)
        .and_then(GatewayBuilder::from_config)
        .unwrap_err();
    assert_eq!(error.field(), "usage_plans[p].quota.offset");
}

/// The statuses of `count` requests to `/health`, one after the other.
async fn health_statuses(app: &GatewayService<Router>, count: usize) -> Vec<StatusCode> {
    let mut statuses = Vec::with_capacity(count);
    for _ in 0..count {
        let request = Request::get("/health").body(Body::empty()).unwrap();
        statuses.push(app.clone().oneshot(request).await.unwrap().status());
    }
    statuses
}

#[test]
fn a_quota_admits_exactly_its_limit_under_concurrent_threads() {
    let clock = ManualClock::starting_at(MONDAY);
    let plan = UsagePlan::builder("exact")
        .stage("prod")
        .quota(Quota::new(500, QuotaPeriod::Day))
        .key("alice")
        .build()
        .unwrap();
    let app = app(stages()
        .usage_plan(plan)
        .clock(clock.clock())
        .build()
        .unwrap());
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let app = app.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap();
                barrier.wait();
                (0..100)
                    .filter(|_| {
                        let response =
                            runtime.block_on(app.clone().oneshot(keyed("/prod/pets", ALICE)));
                        response.unwrap().status() == StatusCode::OK
                    })
                    .count()
            })
        })
        .collect();
    let admitted: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(admitted, 500, "800 requests from 8 threads, a quota of 500");
}

#[tokio::test]
async fn a_request_the_stage_throttle_refuses_costs_no_quota() {
    let clock = ManualClock::starting_at(MONDAY);
    let gateway = GatewayBuilder::new()
        .stage(
            Stage::builder("prod")
                .throttle(throttle(1.0, 1))
                .build()
                .unwrap(),
        )
        .route(Route::new(Method::GET, "/pets").api_key_required(true))
        .api_key_store(keys())
        .usage_plan(
            UsagePlan::builder("q")
                .stage("prod")
                .quota(Quota::new(10, QuotaPeriod::Day))
                .key("alice")
                .build()
                .unwrap(),
        )
        .clock(clock.clock())
        .build()
        .unwrap();
    let usage = gateway.usage_plans().unwrap();
    let app = app(gateway);
    assert_eq!(status(&app, keyed("/pets", ALICE)).await, StatusCode::OK);
    for _ in 0..3 {
        assert_eq!(
            status(&app, keyed("/pets", ALICE)).await,
            StatusCode::TOO_MANY_REQUESTS
        );
    }
    assert_eq!(usage.usage("q", "alice").unwrap().used, 1);
}

#[tokio::test]
async fn a_quota_rejection_carries_the_throttle_headers() {
    let clock = ManualClock::starting_at(MONDAY);
    let plan = UsagePlan::builder("q")
        .stage("prod")
        .throttle(throttle(10.0, 5))
        .quota(Quota::new(1, QuotaPeriod::Day))
        .key("alice")
        .build()
        .unwrap();
    let app = app(stages()
        .usage_plan(plan)
        .clock(clock.clock())
        .build()
        .unwrap());
    assert_eq!(
        status(&app, keyed("/prod/pets", ALICE)).await,
        StatusCode::OK
    );
    let exhausted = app
        .clone()
        .oneshot(keyed("/prod/pets", ALICE))
        .await
        .unwrap();
    assert_eq!(exhausted.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(exhausted.headers()["x-ratelimit-limit"], "5");
    assert!(exhausted.headers().contains_key("retry-after"));
}
