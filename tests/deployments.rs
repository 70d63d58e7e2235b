//! Deployments: deploy, switch, roll back, promote and reload at runtime, atomically, without
//! losing requests, keys' usage or the running deployment on a bad change.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::body::Body;
use axum::extract::Request as AxumRequest;
use axum::routing::get;
use http::{Method, Request, StatusCode};
use support::{get as get_request, release_and_greeting, text};
use tower::ServiceExt;
use tower_gateway::api_key::{ApiKey, InMemoryApiKeyStore};
use tower_gateway::canary::{CanarySettings, RELEASE_HEADER};
use tower_gateway::clock::ManualClock;
use tower_gateway::usage_plan::{Quota, QuotaPeriod, UsagePlan};
use tower_gateway::{GatewayBuilder, GatewayService, Route, Stage};

const ALICE: &str = "alice-key-0123456789abcdef";

fn router() -> Router {
    Router::new()
        .route("/greet", get(release_and_greeting))
        .route("/new", get(|| async { "new" }))
}

fn configuration(greeting: &str) -> GatewayBuilder {
    GatewayBuilder::new()
        .stage(
            Stage::builder("prod")
                .variable("greeting", greeting)
                .build()
                .unwrap(),
        )
        .route(Route::new(Method::GET, "/greet"))
}

fn with_canary(greeting: &str, canary: CanarySettings) -> GatewayBuilder {
    GatewayBuilder::new()
        .stage(
            Stage::builder("prod")
                .variable("greeting", greeting)
                .canary(canary)
                .build()
                .unwrap(),
        )
        .route(Route::new(Method::GET, "/greet"))
}

async fn answer(app: &GatewayService<Router>, request: Request<Body>) -> (StatusCode, String) {
    let response = app.clone().oneshot(request).await.unwrap();
    (response.status(), text(response).await)
}

fn forced(uri: &str, release: &str) -> Request<Body> {
    Request::get(uri)
        .header("x-canary", release)
        .body(Body::empty())
        .unwrap()
}

#[tokio::test]
async fn deploy_switch_and_roll_back() {
    let gateway = configuration("hello").build().unwrap();
    let app = tower::Layer::layer(&gateway, router());
    let deployments = gateway.deployments();
    assert_eq!(deployments.current().get(), 1);

    let second = deployments.deploy(configuration("hi")).unwrap();
    assert_eq!(second.get(), 2);
    assert_eq!(answer(&app, get_request("/greet")).await.1, "baseline hi");
    let third = deployments.deploy(configuration("hey")).unwrap();
    assert_eq!(answer(&app, get_request("/greet")).await.1, "baseline hey");

    deployments.switch(second).unwrap();
    assert_eq!(deployments.current(), second);
    assert_eq!(answer(&app, get_request("/greet")).await.1, "baseline hi");

    // Rollbacks undo the changes one by one: the switch, then the third deployment.
    deployments.rollback().unwrap();
    assert_eq!(deployments.current(), third);
    deployments.rollback().unwrap();
    assert_eq!(deployments.current(), second);
    deployments.rollback().unwrap();
    assert_eq!(deployments.current().get(), 1);
    assert_eq!(
        answer(&app, get_request("/greet")).await.1,
        "baseline hello"
    );
    let error = deployments.rollback().expect_err("nothing left to undo");
    assert_eq!(error.field(), "deployments");

    let error = deployments
        .switch(tower_gateway::gateway::DeploymentId::from(99))
        .expect_err("unknown id");
    assert_eq!(error.field(), "deployments[99]");
}

#[tokio::test]
async fn a_change_that_does_not_build_leaves_the_running_deployment() {
    let gateway = configuration("hello").build().unwrap();
    let app = tower::Layer::layer(&gateway, router());
    let deployments = gateway.deployments();

    let error = deployments
        .deploy(configuration("hi").route(Route::new(Method::GET, "/greet")))
        .expect_err("a route declared twice");
    assert!(error.field().starts_with("routes"), "{error}");
    assert_eq!(deployments.current().get(), 1);
    assert_eq!(
        answer(&app, get_request("/greet")).await.1,
        "baseline hello"
    );

    let error = deployments.promote().expect_err("no canary to promote");
    assert_eq!(error.field(), "canary");
    let error = deployments
        .deploy_canary(configuration("hola"))
        .expect_err("no stage has a canary");
    assert_eq!(error.field(), "canary");
    assert_eq!(deployments.current().get(), 1);
    assert_eq!(deployments.canary(), None);
}

#[tokio::test]
async fn reload_from_a_file() {
    let directory =
        std::env::temp_dir().join(format!("tower-gateway-reload-{}", std::process::id()));
    std::fs::create_dir_all(&directory).unwrap();
    let file = directory.join("gateway.json");
    let write = |json: &str| std::fs::write(&file, json).unwrap();

    let gateway = configuration("hello").build().unwrap();
    let app = tower::Layer::layer(&gateway, router());
    let deployments = gateway.deployments();

    write(
        r#"{"stages": [{"name": "prod", "variables": {"greeting": "bonjour"}}],
            "routes": [{"route": "GET /greet"}]}"#,
    );
    deployments.reload(&file).unwrap();
    assert_eq!(
        answer(&app, get_request("/greet")).await.1,
        "baseline bonjour"
    );

    // Not JSON, an invalid setting, a missing file: each refused, the running one stays.
    write(r#"{"stages": [{"name": "prod""#);
    let error = deployments.reload(&file).expect_err("not JSON");
    assert!(error.field().starts_with("config (line 1"), "{error}");
    write(
        r#"{"stages": [{"name": "prod", "variables": {"greeting": "hola"},
                        "canary": {"percent_traffic": -5}}],
            "routes": [{"route": "GET /greet"}]}"#,
    );
    let error = deployments.reload(&file).expect_err("a bad percentage");
    assert_eq!(error.field(), "stages[prod].canary.percent_traffic");
    let error = deployments
        .reload(directory.join("missing.json"))
        .expect_err("no file");
    assert_eq!(error.field(), "configuration");
    assert_eq!(
        answer(&app, get_request("/greet")).await.1,
        "baseline bonjour"
    );
    std::fs::remove_dir_all(&directory).unwrap();
}

#[tokio::test]
async fn deploy_config_switches_behaviour_and_a_bad_config_changes_nothing() {
    use tower_gateway::GatewayConfig;
    let gateway = configuration("hello").build().unwrap();
    let app = tower::Layer::layer(&gateway, router());
    let deployments = gateway.deployments();
    let (status, body) = answer(&app, get_request("/new")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "no route yet: {body}");

    let config = GatewayConfig::from_json(
        r#"{"stages": [{"name": "prod", "variables": {"greeting": "salut"}}],
            "routes": [{"route": "GET /greet"}, {"route": "GET /new"}]}"#,
    )
    .unwrap();
    let deployed = deployments.deploy_config(config).unwrap();
    assert_eq!(deployed.get(), 2);
    assert_eq!(deployments.current(), deployed);
    assert_eq!(
        answer(&app, get_request("/greet")).await,
        (StatusCode::OK, "baseline salut".to_owned())
    );
    assert_eq!(
        answer(&app, get_request("/new")).await,
        (StatusCode::OK, "new".to_owned())
    );

    // A configuration that parses but does not build: refused with the error, nothing
    // changes.
    let unbuildable = GatewayConfig::from_json(
        r#"{"stages": [{"name": "prod", "variables": {"greeting": "adieu"}}],
            "routes": [{"route": "GET /greet", "authorizer": "nobody"}]}"#,
    )
    .unwrap();
    let error = deployments.deploy_config(unbuildable).unwrap_err();
    assert!(error.field().contains("authorizer"), "{error}");
    assert!(error.to_string().contains("nobody"), "{error}");
    let bad_share = GatewayConfig::from_json(
        r#"{"stages": [{"name": "prod", "variables": {"greeting": "adieu"},
                        "canary": {"percent_traffic": 101}}],
            "routes": [{"route": "GET /greet"}]}"#,
    )
    .unwrap();
    let error = deployments.deploy_config(bad_share).unwrap_err();
    assert_eq!(error.field(), "stages[prod].canary.percent_traffic");
    assert_eq!(deployments.current(), deployed);
    assert_eq!(
        answer(&app, get_request("/greet")).await,
        (StatusCode::OK, "baseline salut".to_owned())
    );
    assert_eq!(answer(&app, get_request("/new")).await.0, StatusCode::OK);
    // The refused ones were not recorded: a rollback returns to the first deployment.
    deployments.rollback().unwrap();
    assert_eq!(deployments.current().get(), 1);
    assert_eq!(
        answer(&app, get_request("/greet")).await.1,
        "baseline hello"
    );
}

#[tokio::test]
async fn promoting_variable_overrides() {
    let canary = CanarySettings::new(50.0)
        .variable_override("greeting", "hola")
        .force_header("x-canary");
    let gateway = with_canary("hello", canary).build().unwrap();
    let app = tower::Layer::layer(&gateway, router());
    let deployments = gateway.deployments();
    assert_eq!(
        answer(&app, forced("/greet", "canary")).await.1,
        "canary hola"
    );

    let promoted = deployments.promote().unwrap();
    assert_eq!(deployments.current(), promoted);
    // The overrides are the stage's now, and the canary has no share (forcing still works,
    // and sees the stage's variables).
    for _ in 0..200 {
        let response = app.clone().oneshot(get_request("/greet")).await.unwrap();
        assert_eq!(response.headers()[RELEASE_HEADER], "baseline");
        assert_eq!(text(response).await, "baseline hola");
    }
    assert_eq!(
        answer(&app, forced("/greet", "canary")).await.1,
        "canary hola"
    );
    // The promoted stage's canary has no share and no overrides: nothing left to promote.
    let error = deployments.promote().expect_err("promoted already");
    assert_eq!(error.field(), "canary");
    deployments.rollback().unwrap();
    assert_eq!(
        answer(&app, forced("/greet", "baseline")).await.1,
        "baseline hello"
    );
}

#[tokio::test]
async fn a_canary_deployment_serves_the_canary_share_until_promoted() {
    let canary = CanarySettings::new(0.0).force_header("x-canary");
    let gateway = with_canary("hello", canary.clone()).build().unwrap();
    let app = tower::Layer::layer(&gateway, router());
    let deployments = gateway.deployments();

    // The canary deployment has a route the baseline lacks, and variables of its own.
    let next = with_canary("hola", canary).route(Route::new(Method::GET, "/new"));
    let id = deployments.deploy_canary(next).unwrap();
    assert_eq!(deployments.canary(), Some(id));
    assert_eq!(deployments.current().get(), 1);
    assert_eq!(
        answer(&app, forced("/new", "canary")).await,
        (StatusCode::OK, "new".into())
    );
    assert_eq!(
        answer(&app, forced("/greet", "canary")).await.1,
        "canary hola"
    );
    assert_eq!(
        answer(&app, get_request("/new")).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        answer(&app, get_request("/greet")).await.1,
        "baseline hello"
    );

    // A canary deployment must declare the stages that have canaries.
    let elsewhere = GatewayBuilder::new()
        .stage(Stage::builder("beta").build().unwrap())
        .route(Route::new(Method::GET, "/greet"));
    let error = deployments
        .deploy_canary(elsewhere)
        .expect_err("no stage prod");
    assert_eq!(error.field(), "canary.stages[prod]");
    assert_eq!(deployments.canary(), Some(id));

    deployments.promote().unwrap();
    assert_eq!(deployments.canary(), None);
    assert_eq!(
        answer(&app, get_request("/new")).await,
        (StatusCode::OK, "new".into())
    );
    assert_eq!(answer(&app, get_request("/greet")).await.1, "baseline hola");
}

fn keyed(uri: &str) -> Request<Body> {
    Request::get(uri)
        .header("x-api-key", ALICE)
        .body(Body::empty())
        .unwrap()
}

fn metered(
    store: &InMemoryApiKeyStore,
    clock: &ManualClock,
    limit: u64,
    keys: &[&str],
) -> GatewayBuilder {
    let mut plan = UsagePlan::builder("gold")
        .stage("prod")
        .quota(Quota::new(limit, QuotaPeriod::Day));
    for key in keys {
        plan = plan.key(*key);
    }
    GatewayBuilder::new()
        .stage(
            Stage::builder("prod")
                .variable("greeting", "hello")
                .canary(CanarySettings::new(0.0).force_header("x-canary"))
                .build()
                .unwrap(),
        )
        .route(Route::new(Method::GET, "/greet").api_key_required(true))
        .api_key_store(store.clone())
        .usage_plan(plan.build().unwrap())
        .clock(clock.clock())
}

#[tokio::test]
async fn key_usage_carries_over_and_canary_requests_count_against_the_same_quota() {
    let store = InMemoryApiKeyStore::new();
    store
        .insert(ApiKey::new("alice", ALICE).id("alice"))
        .unwrap();
    store
        .insert(ApiKey::new("bob", "bob-key-0123456789abcdefgh").id("bob"))
        .unwrap();
    let clock = ManualClock::starting_at(1_772_409_600);
    let gateway = metered(&store, &clock, 10, &["alice"]).build().unwrap();
    let app = tower::Layer::layer(&gateway, router());
    let deployments = gateway.deployments();
    let usage = gateway.usage_plans().unwrap();

    for _ in 0..3 {
        assert_eq!(answer(&app, keyed("/greet")).await.0, StatusCode::OK);
    }
    // Same keys: the slots are shared. The usage handle follows the deployment.
    deployments
        .deploy(metered(&store, &clock, 10, &["alice"]))
        .unwrap();
    assert_eq!(usage.usage("gold", "alice").unwrap().used, 3);
    // Same keys, another quota: the counts are carried over; a higher limit gives what it
    // leaves.
    deployments
        .deploy(metered(&store, &clock, 11, &["alice"]))
        .unwrap();
    let carried = usage.usage("gold", "alice").unwrap();
    assert_eq!((carried.used, carried.remaining), (3, 8));
    // Other keys: the same.
    deployments
        .deploy(metered(&store, &clock, 12, &["alice", "bob"]))
        .unwrap();
    let carried = usage.usage("gold", "alice").unwrap();
    assert_eq!((carried.used, carried.remaining), (3, 9));

    // The canary deployment counts against the same quota.
    deployments
        .deploy_canary(metered(&store, &clock, 12, &["alice", "bob"]))
        .unwrap();
    let mut canary = keyed("/greet");
    canary
        .headers_mut()
        .insert("x-canary", "canary".parse().unwrap());
    assert_eq!(answer(&app, canary).await.1, "canary hello");
    assert_eq!(answer(&app, keyed("/greet")).await.1, "baseline hello");
    assert_eq!(usage.usage("gold", "alice").unwrap().used, 5);
    deployments.promote().unwrap();
    assert_eq!(usage.usage("gold", "alice").unwrap().used, 5);
}

#[tokio::test]
async fn a_request_in_flight_finishes_on_the_deployment_that_admitted_it() {
    let entered = Arc::new(tokio::sync::Notify::new());
    let release = Arc::new(tokio::sync::Notify::new());
    let router = {
        let (entered, release) = (Arc::clone(&entered), Arc::clone(&release));
        Router::new().route(
            "/greet",
            get(move |request: AxumRequest| {
                let (entered, release) = (Arc::clone(&entered), Arc::clone(&release));
                async move {
                    entered.notify_one();
                    release.notified().await;
                    release_and_greeting(request).await
                }
            }),
        )
    };
    let gateway = configuration("hello").build().unwrap();
    let app = tower::Layer::layer(&gateway, router);
    let in_flight = tokio::spawn({
        let app = app.clone();
        async move { answer(&app, get_request("/greet")).await }
    });
    entered.notified().await;
    gateway.deployments().deploy(configuration("hi")).unwrap();
    release.notify_one();
    assert_eq!(
        in_flight.await.unwrap(),
        (StatusCode::OK, "baseline hello".to_owned())
    );
    let next = tokio::spawn({
        let app = app.clone();
        async move { answer(&app, get_request("/greet")).await }
    });
    entered.notified().await;
    release.notify_one();
    assert_eq!(next.await.unwrap().1, "baseline hi");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn changes_under_concurrent_requests_lose_none() {
    let canary = CanarySettings::new(30.0).variable_override("greeting", "hola");
    let gateway = with_canary("hello", canary.clone()).build().unwrap();
    let app = tower::Layer::layer(&gateway, router());
    let deployments = gateway.deployments();
    let stop = Arc::new(AtomicBool::new(false));

    let callers: Vec<_> = (0..4)
        .map(|_| {
            let app = app.clone();
            let stop = Arc::clone(&stop);
            tokio::spawn(async move {
                let mut served = 0u32;
                // Bounded: at most 20,000 requests per caller.
                while !stop.load(Ordering::Relaxed) && served < 20_000 {
                    let (status, release, body) = answer_with_release(&app).await;
                    assert_eq!(status, StatusCode::OK);
                    // One deployment admits a request from start to end: the release the
                    // gateway reports is the one the handler saw, and a canary request sees
                    // the canary's override. `baseline hola` is the promoted stage (its
                    // overrides made its variables, share 0); `canary hello` is never right.
                    assert!(
                        ["baseline hello", "canary hola", "baseline hola"].contains(&body.as_str()),
                        "{body}"
                    );
                    assert_eq!(body.split(' ').next(), Some(release.as_str()), "{body}");
                    served += 1;
                }
                served
            })
        })
        .collect();
    let first = deployments.current().get();
    for round in 0..50 {
        match round % 4 {
            0 => drop(deployments.promote().unwrap()),
            1 => deployments.rollback().unwrap(),
            2 => drop(
                deployments
                    .deploy_canary(with_canary("hello", canary.clone()))
                    .unwrap(),
            ),
            _ => drop(
                deployments
                    .deploy(with_canary("hello", canary.clone()))
                    .unwrap(),
            ),
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut served = 0;
    for caller in callers {
        served += caller.await.expect("no caller panicked");
    }
    assert!(served > 0);

    // Round 49 rolled back round 48's promotion: the deployment of round 47 serves, 30 %
    // canary with its override, and no canary deployment (rollbacks make no new
    // deployment: 36 changes before round 48).
    assert_eq!(deployments.current().get(), first + 36);
    assert_eq!(deployments.canary(), None);
    let mut canary_answers = 0;
    for _ in 0..400 {
        let (_, release, body) = answer_with_release(&app).await;
        match body.as_str() {
            "baseline hello" => assert_eq!(release, "baseline"),
            "canary hola" => {
                assert_eq!(release, "canary");
                canary_answers += 1;
            }
            other => panic!("{other}"),
        }
    }
    assert!(
        (60..=180).contains(&canary_answers),
        "{canary_answers} of 400"
    );
}

/// The status, the release header and the body of `GET /greet`.
async fn answer_with_release(app: &GatewayService<Router>) -> (StatusCode, String, String) {
    let response = app.clone().oneshot(get_request("/greet")).await.unwrap();
    let status = response.status();
    let release = response.headers()[RELEASE_HEADER]
        .to_str()
        .unwrap()
        .to_owned();
    (status, release, text(response).await)
}

#[tokio::test]
async fn the_last_32_deployments_are_kept() {
    let gateway = configuration("v1").build().unwrap();
    let deployments = gateway.deployments();
    for version in 2..=40 {
        deployments
            .deploy(configuration(&format!("v{version}")))
            .unwrap();
    }
    // Deployments 9 to 40 are kept: 1 is gone, and rollbacks stop at the oldest kept.
    let error = deployments
        .switch(tower_gateway::gateway::DeploymentId::from(1))
        .expect_err("too old");
    assert_eq!(error.field(), "deployments[1]");
    let mut rollbacks = 0;
    while deployments.rollback().is_ok() {
        rollbacks += 1;
    }
    assert_eq!(rollbacks, 31);
    assert_eq!(deployments.current().get(), 9);
}

#[tokio::test]
async fn a_canary_deployment_with_use_stage_cache_shares_the_stage_cache() {
    use std::sync::atomic::AtomicUsize;
    use tower_gateway::cache::CacheSettings;

    for share in [false, true] {
        let calls = Arc::new(AtomicUsize::new(0));
        let router = {
            let calls = Arc::clone(&calls);
            Router::new().route(
                "/greet",
                get(move |request: AxumRequest| {
                    calls.fetch_add(1, Ordering::SeqCst);
                    release_and_greeting(request)
                }),
            )
        };
        let cached = |greeting: &str| {
            GatewayBuilder::new()
                .stage(
                    Stage::builder("prod")
                        .variable("greeting", greeting)
                        .cache(CacheSettings::default())
                        .canary(
                            CanarySettings::new(0.0)
                                .force_header("x-canary")
                                .use_stage_cache(share),
                        )
                        .build()
                        .unwrap(),
                )
                .route(Route::new(Method::GET, "/greet"))
        };
        let gateway = cached("hello").build().unwrap();
        let app = tower::Layer::layer(&gateway, router);
        gateway.deployments().deploy_canary(cached("hola")).unwrap();

        assert_eq!(
            answer(&app, get_request("/greet")).await.1,
            "baseline hello"
        );
        let canary = answer(&app, forced("/greet", "canary")).await.1;
        if share {
            assert_eq!(canary, "baseline hello", "the baseline's entry");
            assert_eq!(calls.load(Ordering::SeqCst), 1);
        } else {
            assert_eq!(canary, "canary hola");
            assert_eq!(calls.load(Ordering::SeqCst), 2);
        }
    }
}
