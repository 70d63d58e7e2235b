//! Canary releases: the split, sticky and forced assignment, variable overrides, the release
//! in the context and the response, the second service, the cache, and bad settings.

mod support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use axum::Router;
use axum::body::Body;
use axum::extract::Request as AxumRequest;
use axum::routing::get;
use http::{Method, Request, Response, StatusCode};
use support::{get as get_request, json, release_and_greeting, text};
use tower::{Layer, Service, ServiceExt};
use tower_gateway::cache::CacheSettings;
use tower_gateway::canary::{CanaryLayer, CanarySettings, RELEASE_HEADER, Release, Sticky};
use tower_gateway::{
    GatewayBuilder, GatewayConfig, GatewayService, RequestContext, Route, Stage, StageVariables,
};

fn router() -> Router {
    Router::new()
        .route("/stage", get(release_and_greeting))
        .route(
            "/extracted",
            get(|variables: StageVariables| async move {
                variables.get("greeting").unwrap_or("-").to_owned()
            }),
        )
}

fn gateway(canary: CanarySettings) -> GatewayService<Router> {
    GatewayBuilder::new()
        .stage(
            Stage::builder("prod")
                .variable("greeting", "hello")
                .variable("backend", "v1")
                .canary(canary)
                .build()
                .unwrap(),
        )
        .route(Route::new(Method::GET, "/stage"))
        .route(Route::new(Method::GET, "/extracted"))
        .build()
        .unwrap()
        .layer(router())
}

async fn call(app: &GatewayService<Router>, request: Request<Body>) -> (String, Option<String>) {
    let response = app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let header = response
        .headers()
        .get(RELEASE_HEADER)
        .map(|value| value.to_str().unwrap().to_owned());
    (text(response).await, header)
}

#[tokio::test]
async fn the_split_converges_to_the_setting() {
    let app = gateway(
        CanarySettings::new(10.0)
            .variable_override("greeting", "hola")
            .seed(7),
    );
    let requests = 100_000;
    let mut canary = 0;
    for _ in 0..requests {
        let (body, header) = call(&app, get_request("/stage")).await;
        match body.as_str() {
            "canary hola" => {
                canary += 1;
                assert_eq!(header.as_deref(), Some("canary"));
            }
            "baseline hello" => assert_eq!(header.as_deref(), Some("baseline")),
            other => panic!("unexpected answer {other}"),
        }
    }
    let share = f64::from(canary) * 100.0 / f64::from(requests);
    assert!((share - 10.0).abs() <= 0.5, "canary share {share}%");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unseeded_picks_split_too() {
    let app = gateway(CanarySettings::new(50.0));
    let calls = (0..4_000).map(|_| {
        let app = app.clone();
        tokio::spawn(async move { call(&app, get_request("/stage")).await.0 })
    });
    let mut canary = 0;
    for call in calls.collect::<Vec<_>>() {
        if call.await.unwrap().starts_with("canary") {
            canary += 1;
        }
    }
    // 4,000 fair draws: 50 % give or take 5 points is more than six standard deviations.
    assert!((1_800..=2_200).contains(&canary), "{canary} of 4000");
}

#[tokio::test]
async fn zero_sends_none_and_a_hundred_sends_all() {
    for (percent, expected) in [(0.0, "baseline hello"), (100.0, "canary hola")] {
        let app = gateway(CanarySettings::new(percent).variable_override("greeting", "hola"));
        for _ in 0..2_000 {
            assert_eq!(call(&app, get_request("/stage")).await.0, expected);
        }
    }
}

#[tokio::test]
async fn sticky_assignment_never_flips_for_a_user() {
    let settings = [
        Sticky::Header("x-user".into()),
        Sticky::Cookie("user".into()),
        Sticky::ApiKey,
    ];
    for sticky in settings {
        let app = gateway(CanarySettings::new(20.0).sticky(sticky.clone()));
        let mut canary_users = 0;
        let users = 1_000;
        for user in 0..users {
            let request = || {
                let builder = Request::get("/stage");
                let builder = match &sticky {
                    Sticky::Header(name) => builder.header(name, format!("user-{user}")),
                    Sticky::Cookie(name) => {
                        builder.header("cookie", format!("theme=dark; {name}=user-{user}"))
                    }
                    _ => builder.header("x-api-key", format!("key-of-user-{user}-0123456789")),
                };
                builder.body(Body::empty()).unwrap()
            };
            let (first, _) = call(&app, request()).await;
            for _ in 0..5 {
                assert_eq!(call(&app, request()).await.0, first, "{sticky:?} flipped");
            }
            if first.starts_with("canary") {
                canary_users += 1;
            }
        }
        let share = f64::from(canary_users) * 100.0 / f64::from(users);
        assert!((share - 20.0).abs() <= 4.0, "{sticky:?}: {share}% of users");
    }
}

#[tokio::test]
async fn sticky_by_principal_follows_the_bearer_jwt_sub_through_the_authorizer() {
    // Tokens valid for the real clock: issued 2020, expiring 2100.
    const ISSUED: u64 = 1_577_836_800;
    const EXPIRES: u64 = 4_102_444_800;
    let users = support::jwt_authorizer(None);
    let app = GatewayBuilder::new()
        .stage(
            Stage::builder("prod")
                .variable("greeting", "hello")
                .canary(
                    CanarySettings::new(30.0)
                        .variable_override("greeting", "hola")
                        .sticky(Sticky::Principal),
                )
                .build()
                .unwrap(),
        )
        .jwt_authorizer("users", users)
        .route(Route::new(Method::GET, "/stage").authorizer("users"))
        .build()
        .unwrap()
        .layer(router());
    // Each of a user's tokens differs (issued at another second, another id), so only the
    // `sub` they share can keep the user on one release.
    let request = |user: u32, token: u64| {
        let claims = serde_json::json!({
            "sub": format!("user-{user}"), "jti": format!("{user}-{token}"),
            "iat": ISSUED + token, "exp": EXPIRES,
        });
        Request::get("/stage")
            .header("authorization", support::bearer(claims))
            .body(Body::empty())
            .unwrap()
    };
    let users = 300;
    let mut canary_users = 0;
    for user in 0..users {
        let (first, header) = call(&app, request(user, 0)).await;
        assert!(
            ["baseline hello", "canary hola"].contains(&first.as_str()),
            "{first}"
        );
        assert_eq!(Some(first.split(' ').next().unwrap()), header.as_deref());
        for token in 1..4 {
            assert_eq!(
                call(&app, request(user, token)).await.0,
                first,
                "user-{user} flipped with another token"
            );
        }
        if first.starts_with("canary") {
            canary_users += 1;
        }
    }
    // Different subjects split: 30 % of 300 users, give or take about five deviations.
    assert!(
        (50..=130).contains(&canary_users),
        "{canary_users} of {users}"
    );
}

#[tokio::test]
async fn a_request_without_the_sticky_value_is_assigned_at_random() {
    let app = gateway(
        CanarySettings::new(50.0)
            .sticky(Sticky::Header("x-user".into()))
            .seed(3),
    );
    let mut seen = HashMap::new();
    for _ in 0..200 {
        *seen
            .entry(call(&app, get_request("/stage")).await.0)
            .or_insert(0) += 1;
    }
    assert_eq!(
        seen.len(),
        2,
        "both releases serve users without the header"
    );
}

#[tokio::test]
async fn the_force_header_is_off_unless_configured() {
    let forced = |release: &str| {
        Request::get("/stage")
            .header("x-canary", release)
            .body(Body::empty())
            .unwrap()
    };
    let closed = gateway(CanarySettings::new(0.0));
    assert_eq!(call(&closed, forced("canary")).await.0, "baseline hello");

    let open = gateway(
        CanarySettings::new(0.0)
            .variable_override("greeting", "hola")
            .force_header("x-canary"),
    );
    assert_eq!(call(&open, forced("canary")).await.0, "canary hola");
    assert_eq!(call(&open, forced("something")).await.0, "baseline hello");
    let all = gateway(CanarySettings::new(100.0).force_header("x-canary"));
    assert_eq!(call(&all, forced("baseline")).await.0, "baseline hello");
}

#[tokio::test]
async fn overrides_reach_extractors_and_the_release_header_can_be_switched_off() {
    let app = gateway(
        CanarySettings::new(100.0)
            .variable_override("greeting", "hola")
            .release_header(None),
    );
    let (greeting, header) = call(&app, get_request("/extracted")).await;
    assert_eq!(greeting, "hola");
    assert_eq!(header, None);

    // A stage without a canary: baseline, and no header.
    let plain = GatewayBuilder::new()
        .stage(
            Stage::builder("prod")
                .variable("greeting", "hello")
                .build()
                .unwrap(),
        )
        .route(Route::new(Method::GET, "/stage"))
        .build()
        .unwrap()
        .layer(router());
    assert_eq!(
        call(&plain, get_request("/stage")).await,
        ("baseline hello".to_owned(), None)
    );
}

/// A service that is never ready.
#[derive(Clone)]
struct NeverReady;

impl Service<Request<Body>> for NeverReady {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Pending
    }

    fn call(&mut self, _: Request<Body>) -> Self::Future {
        unreachable!("never ready, so never called")
    }
}

fn named(version: &'static str) -> Router {
    Router::new().route("/stage", get(move || async move { version }))
}

#[tokio::test]
async fn the_canary_layer_follows_the_gateway_and_does_not_wait_for_the_canary() {
    let gateway = GatewayBuilder::new()
        .stage(
            Stage::builder("prod")
                .canary(CanarySettings::new(0.0).force_header("x-canary"))
                .build()
                .unwrap(),
        )
        .route(Route::new(Method::GET, "/stage"))
        .build()
        .unwrap();
    let app = gateway.layer(CanaryLayer::new(named("v2")).layer(named("v1")));
    let forced = Request::get("/stage")
        .header("x-canary", "canary")
        .body(Body::empty())
        .unwrap();
    assert_eq!(text(app.clone().oneshot(forced).await.unwrap()).await, "v2");
    assert_eq!(
        text(app.clone().oneshot(get_request("/stage")).await.unwrap()).await,
        "v1"
    );

    // Baseline requests are served while the canary service is not ready.
    let stuck = CanaryLayer::new(NeverReady).layer(named("v1"));
    let response = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        stuck.oneshot(get_request("/stage")),
    )
    .await
    .expect("the baseline does not wait for the canary")
    .unwrap();
    assert_eq!(text(response).await, "v1");
}

#[tokio::test]
async fn a_standalone_canary_layer_picks_and_marks_the_release() {
    let layer = CanaryLayer::builder(named("v2"))
        .settings(CanarySettings::new(100.0))
        .build()
        .unwrap();
    let response = layer
        .layer(named("v1"))
        .oneshot(get_request("/stage"))
        .await
        .unwrap();
    assert_eq!(response.headers()[RELEASE_HEADER], "canary");
    assert_eq!(text(response).await, "v2");

    // Behind a gateway whose stage has no canary, the layer leaves the choice to the stage.
    let layer = CanaryLayer::builder(named("v2"))
        .settings(CanarySettings::new(100.0))
        .build()
        .unwrap();
    let gated = GatewayBuilder::new()
        .stage(Stage::builder("prod").build().unwrap())
        .route(Route::new(Method::GET, "/stage"))
        .build()
        .unwrap()
        .layer(layer.layer(named("v1")));
    let response = gated.oneshot(get_request("/stage")).await.unwrap();
    assert!(response.headers().get(RELEASE_HEADER).is_none());
    assert_eq!(text(response).await, "v1");

    let refused = CanaryLayer::builder(named("v2"))
        .settings(CanarySettings::new(10.0).variable_override("greeting", "hola"))
        .build();
    assert_eq!(
        refused.err().unwrap().field(),
        "canary.stage_variable_overrides"
    );
}

#[test]
fn bad_canary_settings_are_config_errors_naming_the_field() {
    for percent in [-1.0, 100.5, f64::NAN] {
        let error = Stage::builder("prod")
            .canary(CanarySettings::new(percent))
            .build()
            .expect_err("refused");
        assert_eq!(error.field(), "stages[prod].canary.percent_traffic");
    }
    let error = Stage::builder("prod")
        .variable("greeting", "hello")
        .canary(CanarySettings::new(5.0).variable_override("backend", "v2"))
        .build()
        .expect_err("refused");
    assert_eq!(
        error.field(),
        "stages[prod].canary.stage_variable_overrides[backend]"
    );
    let error = Stage::builder("prod")
        .variable("greeting", "hello")
        .canary(CanarySettings::new(5.0).variable_override("greeting", "not allowed!"))
        .build()
        .expect_err("refused");
    assert!(
        error
            .field()
            .starts_with("stages[prod].canary.stage_variable_overrides"),
        "{error}"
    );

    let config = |canary: &str| {
        GatewayConfig::from_json(&format!(
            r#"{{"stages": [{{"name": "prod", "variables": {{"greeting": "hello"}}, "canary": {canary}}}],
                "routes": [{{"route": "GET /stage"}}]}}"#
        ))
        .and_then(GatewayBuilder::from_config)
        .and_then(GatewayBuilder::build)
    };
    let error = config(r#"{"percent_traffic": 101}"#).expect_err("refused");
    assert_eq!(error.field(), "stages[prod].canary.percent_traffic");
    assert!(config(r#"{"percent_traffic": 10, "typo": 1}"#).is_err());
    config(
        r#"{"percent_traffic": 10, "stage_variable_overrides": {"greeting": "hola"},
            "sticky": {"by": "header", "name": "x-user"}, "use_stage_cache": true}"#,
    )
    .expect("a valid canary");
}

/// Counts calls and answers with the release that served.
fn counting_router(calls: Arc<AtomicUsize>) -> Router {
    Router::new().route(
        "/pets/{id}",
        get(move |request: AxumRequest| {
            let calls = Arc::clone(&calls);
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                let context = request.extensions().get::<RequestContext>().unwrap();
                serde_json::json!({"release": context.release().as_str()}).to_string()
            }
        }),
    )
}

#[tokio::test]
async fn the_cache_keeps_canary_entries_apart_unless_told_to_share() {
    for share in [false, true] {
        let calls = Arc::new(AtomicUsize::new(0));
        let app = GatewayBuilder::new()
            .stage(
                Stage::builder("prod")
                    .cache(CacheSettings::default())
                    .canary(
                        CanarySettings::new(0.0)
                            .force_header("x-canary")
                            .use_stage_cache(share),
                    )
                    .build()
                    .unwrap(),
            )
            .route(Route::new(Method::GET, "/pets/{id}"))
            .build()
            .unwrap()
            .layer(counting_router(Arc::clone(&calls)));
        let request = |release: &str| {
            Request::get("/pets/1")
                .header("x-canary", release)
                .body(Body::empty())
                .unwrap()
        };
        let baseline = json(app.clone().oneshot(request("baseline")).await.unwrap()).await;
        assert_eq!(baseline["release"], "baseline");
        let canary = app.clone().oneshot(request("canary")).await.unwrap();
        assert_eq!(canary.headers()[RELEASE_HEADER], Release::Canary.as_str());
        let canary = json(canary).await;
        if share {
            assert_eq!(canary["release"], "baseline", "served from the stage cache");
            assert_eq!(calls.load(Ordering::SeqCst), 1);
        } else {
            assert_eq!(canary["release"], "canary");
            assert_eq!(calls.load(Ordering::SeqCst), 2);
        }
        // Both entries are now stored: no more calls.
        app.clone().oneshot(request("canary")).await.unwrap();
        app.clone().oneshot(request("baseline")).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), if share { 1 } else { 2 });
    }
}
