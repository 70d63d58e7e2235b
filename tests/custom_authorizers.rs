//! Custom (Lambda-style) authorizers in the gateway: TOKEN and REQUEST modes, policies and
//! simple responses, the result cache (per-request policy evaluation, TTL on a manual clock,
//! one call for concurrent misses), failures and timeouts (paused tokio time), and the usage
//! identifier key for the AUTHORIZER key source.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::{Method, Request, StatusCode};
use serde_json::json;
use support::{json, text};
use tower::{Layer, ServiceExt};
use tower_gateway::api_key::{ApiKey, ApiKeySource, InMemoryApiKeyStore};
use tower_gateway::authorizer::custom::{
    AuthorizerError, AuthorizerRequest, AuthorizerResponse, CustomAuthorizer, Policy,
};
use tower_gateway::clock::ManualClock;
use tower_gateway::route::ThrottleSettings;
use tower_gateway::usage_plan::UsagePlan;
use tower_gateway::{
    GatewayBuilder, GatewayResponse, GatewayResponseType, GatewayService, RequestContext, Route,
    Stage,
};

const KEY: &str = "usage-key-0123456789abcdef";

/// Counts the function's calls.
#[derive(Clone, Default)]
struct Calls(Arc<AtomicUsize>);

impl Calls {
    fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// A TOKEN function: `allow-*` tokens may GET anything and nothing else; `simple-yes` and
/// `simple-no` answer simply; `fail`, `panic`, `slow` and `nan` misbehave; anything else is
/// unauthorized.
fn token_function(
    calls: Calls,
) -> impl Fn(
    AuthorizerRequest,
) -> std::pin::Pin<
    Box<dyn Future<Output = Result<AuthorizerResponse, AuthorizerError>> + Send>,
> + Send
+ Sync
+ 'static {
    move |request: AuthorizerRequest| {
        calls.0.fetch_add(1, Ordering::SeqCst);
        assert_ne!(
            request.token(),
            Some("panic-early"),
            "a bug before any future"
        );
        Box::pin(async move {
            let token = request.token().unwrap_or_default().to_owned();
            match token.as_str() {
                "simple-yes" => Ok(AuthorizerResponse::simple(true).principal_id("simple")),
                "simple-no" => Ok(AuthorizerResponse::simple(false)),
                "fail" => Err(AuthorizerError::Failure(
                    "the user directory is down".into(),
                )),
                "panic" => panic!("a bug in the authorizer"),
                "slow" => {
                    tokio::time::sleep(Duration::from_secs(11)).await;
                    Ok(AuthorizerResponse::simple(true))
                }
                "nan" => Ok(AuthorizerResponse::simple(true).context("score", f64::NAN)),
                "bad-arn" => Ok(AuthorizerResponse::policy(
                    "x",
                    Policy::new()
                        .allow("*")
                        .deny("arn:aws:execute-api:eu:1:api"),
                )),
                "keyed" => Ok(AuthorizerResponse::simple(true).usage_identifier_key(KEY)),
                "unknown-key" => Ok(AuthorizerResponse::simple(true)
                    .usage_identifier_key("not-a-key-of-this-store-000")),
                token if token.starts_with("allow-") => Ok(AuthorizerResponse::policy(
                    token.trim_start_matches("allow-"),
                    Policy::new().allow("prod/GET/*").deny("prod/GET/admin"),
                )
                .context("tier", "gold")
                .context("level", 3)
                .context("beta", true)),
                _ => Err(AuthorizerError::Unauthorized),
            }
        })
    }
}

fn router() -> Router {
    let whoami = |context: RequestContext| async move {
        let identity = context.identity().expect("an identity");
        json!({
            "principal": identity.principal_id(),
            "context": identity.context(),
            "api_key": context.api_key_id(),
        })
        .to_string()
    };
    Router::new()
        .route("/pets", get(whoami).delete(|| async { "deleted" }))
        .route("/admin", get(|| async { "admin" }))
}

fn token_app(calls: &Calls, clock: &ManualClock) -> GatewayService<Router> {
    let authorizer = CustomAuthorizer::token(token_function(calls.clone()))
        .token_validation("[a-z-]+")
        .clock(clock.clock())
        .build()
        .unwrap();
    let gateway = GatewayBuilder::new()
        .stage(Stage::builder("prod").build().unwrap())
        .custom_authorizer("tokens", authorizer)
        .route(Route::new(Method::GET, "/pets").authorizer("tokens"))
        .route(Route::new(Method::DELETE, "/pets").authorizer("tokens"))
        .route(Route::new(Method::GET, "/admin").authorizer("tokens"))
        // Server errors name their type, so that tests can tell the two authorizer 500s apart.
        .gateway_response(
            GatewayResponseType::Default5xx,
            GatewayResponse::new().body(
                r#"{"message":$context.error.messageString,"type":"$context.error.responseType"}"#,
            ),
        )
        .build()
        .unwrap();
    gateway.layer(router())
}

fn with_token(method: Method, uri: &str, token: &str) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(uri)
        .header("authorization", token)
        .body(Body::empty())
        .unwrap()
}

async fn send(app: &GatewayService<Router>, request: Request<Body>) -> (StatusCode, String) {
    let response = app.clone().oneshot(request).await.unwrap();
    (response.status(), text(response).await)
}

#[tokio::test]
async fn a_policy_allows_and_denies_per_request_and_reaches_the_handler() {
    let (calls, clock) = (Calls::default(), ManualClock::starting_at(0));
    let app = token_app(&calls, &clock);
    let (status, body) = send(&app, with_token(Method::GET, "/pets", "allow-alice")).await;
    assert_eq!(status, StatusCode::OK);
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["principal"], "alice");
    assert_eq!(
        body["context"],
        json!({"tier": "gold", "level": 3.0, "beta": true})
    );
    // The cached policy is evaluated against each request: no second call, and the Deny
    // statement and the missing DELETE Allow both refuse.
    let response = app
        .clone()
        .oneshot(with_token(Method::GET, "/admin", "allow-alice"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        json(response).await,
        json!({"message": "User is not authorized to access this resource"})
    );
    let (status, _) = send(&app, with_token(Method::DELETE, "/pets", "allow-alice")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(calls.count(), 1);
}

#[tokio::test]
async fn missing_or_malformed_tokens_are_refused_without_calling_the_function() {
    let (calls, clock) = (Calls::default(), ManualClock::starting_at(0));
    let app = token_app(&calls, &clock);
    let missing = app.clone().oneshot(support::get("/pets")).await.unwrap();
    assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(json(missing).await, json!({"message": "Unauthorized"}));
    for token in [
        "",
        "   ",
        "Bearer allow-alice",
        "ALLOW-alice",
        "allow-alice!",
    ] {
        let (status, _) = send(&app, with_token(Method::GET, "/pets", token)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?}");
    }
    let two_headers = Request::get("/pets")
        .header("authorization", "allow-alice")
        .header("authorization", "allow-bob")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&app, two_headers).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(calls.count(), 0);
    // A token the function rejects is a 401 too, and is not cached.
    for _ in 0..2 {
        let (status, _) = send(&app, with_token(Method::GET, "/pets", "nobody")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(calls.count(), 2);
}

#[tokio::test]
async fn a_head_request_is_judged_as_the_get_it_runs_as() {
    let (calls, clock) = (Calls::default(), ManualClock::starting_at(0));
    let app = token_app(&calls, &clock);
    let head = |path: &str| with_token(Method::HEAD, path, "allow-alice");
    assert_eq!(send(&app, head("/pets")).await.0, StatusCode::OK);
    // The policy denies `prod/GET/admin`: the HEAD that the GET route serves is denied too.
    assert_eq!(send(&app, head("/admin")).await.0, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn answers_are_cached_per_stage_and_flushed_on_demand() {
    let calls = Calls::default();
    let counted = calls.clone();
    let authorizer = CustomAuthorizer::token(move |request: AuthorizerRequest| {
        counted.0.fetch_add(1, Ordering::SeqCst);
        async move { Ok(AuthorizerResponse::simple(request.stage() == Some("dev"))) }
    })
    .build()
    .unwrap();
    let app = GatewayBuilder::new()
        .stage(Stage::builder("dev").build().unwrap())
        .stage(Stage::builder("prod").build().unwrap())
        .stage_selection(tower_gateway::StageSelection::BasePath)
        .custom_authorizer("tokens", authorizer.clone())
        .route(Route::new(Method::GET, "/admin").authorizer("tokens"))
        .build()
        .unwrap()
        .layer(router());
    let (dev, prod) = (
        || with_token(Method::GET, "/dev/admin", "same-token"),
        || with_token(Method::GET, "/prod/admin", "same-token"),
    );
    assert_eq!(send(&app, dev()).await.0, StatusCode::OK);
    assert_eq!(send(&app, prod()).await.0, StatusCode::FORBIDDEN);
    assert_eq!(send(&app, dev()).await.0, StatusCode::OK);
    assert_eq!(calls.count(), 2, "one call per stage");
    authorizer.flush_cache();
    assert_eq!(send(&app, dev()).await.0, StatusCode::OK);
    assert_eq!(calls.count(), 3, "a flush forgets the answers");
}

#[tokio::test]
async fn simple_responses() {
    let (calls, clock) = (Calls::default(), ManualClock::starting_at(0));
    let app = token_app(&calls, &clock);
    let (status, body) = send(&app, with_token(Method::DELETE, "/pets", "simple-yes")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "deleted"));
    let (status, _) = send(&app, with_token(Method::GET, "/pets", "simple-no")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn cached_results_expire_after_the_ttl() {
    let (calls, clock) = (Calls::default(), ManualClock::starting_at(0));
    let app = token_app(&calls, &clock);
    for _ in 0..3 {
        assert_eq!(
            send(&app, with_token(Method::GET, "/pets", "allow-alice"))
                .await
                .0,
            StatusCode::OK
        );
    }
    assert_eq!(calls.count(), 1);
    clock.advance(Duration::from_secs(299));
    send(&app, with_token(Method::GET, "/pets", "allow-alice")).await;
    assert_eq!(calls.count(), 1, "still fresh at 299 s");
    clock.advance(Duration::from_secs(1));
    send(&app, with_token(Method::GET, "/pets", "allow-alice")).await;
    assert_eq!(calls.count(), 2, "refreshed at the 300 s default TTL");
    // Another token is another cache entry.
    send(&app, with_token(Method::GET, "/pets", "allow-bob")).await;
    assert_eq!(calls.count(), 3);
}

#[tokio::test(start_paused = true)]
async fn concurrent_misses_share_one_call() {
    let calls = Calls::default();
    let counted = calls.clone();
    let authorizer = CustomAuthorizer::token(move |_request: AuthorizerRequest| {
        counted.0.fetch_add(1, Ordering::SeqCst);
        async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok(AuthorizerResponse::simple(true))
        }
    })
    .build()
    .unwrap();
    let app = GatewayBuilder::new()
        .stage(Stage::builder("prod").build().unwrap())
        .custom_authorizer("tokens", authorizer)
        .route(Route::new(Method::GET, "/admin").authorizer("tokens"))
        .build()
        .unwrap()
        .layer(router());
    let requests: Vec<_> = (0..10)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move {
                app.oneshot(with_token(Method::GET, "/admin", "same-token"))
                    .await
                    .unwrap()
                    .status()
            })
        })
        .collect();
    for request in requests {
        assert_eq!(request.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(calls.count(), 1);
}

#[tokio::test(start_paused = true)]
async fn failures_timeouts_panics_and_bad_context_values_are_authorizer_failures() {
    let (calls, clock) = (Calls::default(), ManualClock::starting_at(0));
    let app = token_app(&calls, &clock);
    // Failures, and answers API Gateway would not accept (a non-finite number, a policy
    // resource that cannot be read: AUTHORIZER_CONFIGURATION_ERROR), are 500s.
    let cases = [
        ("fail", "AUTHORIZER_FAILURE"),
        ("slow", "AUTHORIZER_FAILURE"),
        ("panic", "AUTHORIZER_FAILURE"),
        ("panic-early", "AUTHORIZER_FAILURE"),
        ("nan", "AUTHORIZER_CONFIGURATION_ERROR"),
        ("bad-arn", "AUTHORIZER_CONFIGURATION_ERROR"),
    ];
    for (token, response_type) in cases {
        let response = app
            .clone()
            .oneshot(with_token(Method::GET, "/pets", token))
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::INTERNAL_SERVER_ERROR,
            "{token}"
        );
        assert_eq!(
            json(response).await,
            json!({"message": "Internal server error", "type": response_type}),
            "{token}"
        );
    }
    // Failures are not cached: the next request calls again.
    send(&app, with_token(Method::GET, "/pets", "fail")).await;
    assert_eq!(calls.count(), 7);
}

#[tokio::test(start_paused = true)]
async fn the_timeout_is_configurable() {
    let authorizer = CustomAuthorizer::token(|_request: AuthorizerRequest| async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        Ok(AuthorizerResponse::simple(true))
    })
    .timeout(Duration::from_secs(1))
    .result_ttl(Duration::ZERO)
    .build()
    .unwrap();
    let app = GatewayBuilder::new()
        .stage(Stage::builder("prod").build().unwrap())
        .custom_authorizer("slow", authorizer)
        .route(Route::new(Method::GET, "/admin").authorizer("slow"))
        .build()
        .unwrap()
        .layer(router());
    let (status, _) = send(&app, with_token(Method::GET, "/admin", "x")).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
}

#[tokio::test]
async fn request_mode_uses_its_identity_sources_as_the_cache_key() {
    let calls = Calls::default();
    let counted = calls.clone();
    let authorizer = CustomAuthorizer::request(move |request: AuthorizerRequest| {
        counted.0.fetch_add(1, Ordering::SeqCst);
        async move {
            let tenant = request
                .headers()
                .get("x-tenant")
                .and_then(|value| value.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let user = request.query_parameter("user").unwrap_or_default();
            let region = request.stage_variables().get("region").unwrap_or_default();
            assert_eq!(request.token(), None);
            assert_eq!(request.method_arn(), "prod/GET/pets");
            assert_eq!(request.resource_path(), Some("/pets"));
            if tenant == "acme" {
                Ok(AuthorizerResponse::policy(user, Policy::new().allow("*"))
                    .context("region", region))
            } else {
                Ok(AuthorizerResponse::policy(user, Policy::new()))
            }
        }
    })
    .identity_source("method.request.header.X-Tenant")
    .identity_source("method.request.querystring.user")
    .build()
    .unwrap();
    let app = GatewayBuilder::new()
        .stage(
            Stage::builder("prod")
                .variable("region", "eu")
                .build()
                .unwrap(),
        )
        .custom_authorizer("tenants", authorizer)
        .route(Route::new(Method::GET, "/pets").authorizer("tenants"))
        .build()
        .unwrap()
        .layer(router());
    let request = |tenant: Option<&str>, query: &str| {
        let mut builder = Request::get(format!("/pets{query}"));
        if let Some(tenant) = tenant {
            builder = builder.header("x-tenant", tenant);
        }
        builder.body(Body::empty()).unwrap()
    };
    let (status, body) = send(&app, request(Some("acme"), "?user=ann")).await;
    assert_eq!(status, StatusCode::OK);
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["principal"], "ann");
    assert_eq!(body["context"], json!({"region": "eu"}));
    send(&app, request(Some("acme"), "?user=ann&other=1")).await;
    assert_eq!(calls.count(), 1, "undeclared inputs do not vary the key");
    send(&app, request(Some("acme"), "?user=bob")).await;
    assert_eq!(calls.count(), 2);
    assert_eq!(
        send(&app, request(Some("other"), "?user=ann")).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(calls.count(), 3);
    // A missing or blank identity source is a 401 without a call.
    for (tenant, query) in [
        (None, "?user=ann"),
        (Some("acme"), ""),
        (Some("acme"), "?user="),
    ] {
        assert_eq!(
            send(&app, request(tenant, query)).await.0,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(calls.count(), 3);
}

fn keyed_app(calls: &Calls) -> GatewayService<Router> {
    let store = InMemoryApiKeyStore::new();
    store
        .insert(ApiKey::new("partner", KEY).id("partner"))
        .unwrap();
    let authorizer = CustomAuthorizer::token(token_function(calls.clone()))
        .build()
        .unwrap();
    GatewayBuilder::new()
        .stage(Stage::builder("prod").build().unwrap())
        .custom_authorizer("tokens", authorizer)
        .api_key_store(store)
        .api_key_source(ApiKeySource::Authorizer)
        .usage_plan(
            UsagePlan::builder("partners")
                .stage("prod")
                .key("partner")
                .throttle(ThrottleSettings {
                    rate: 100.0,
                    burst: 2,
                })
                .build()
                .unwrap(),
        )
        .route(
            Route::new(Method::GET, "/pets")
                .authorizer("tokens")
                .api_key_required(true),
        )
        .build()
        .unwrap()
        .layer(router())
}

#[tokio::test]
async fn the_usage_identifier_key_meters_the_request() {
    let calls = Calls::default();
    let app = keyed_app(&calls);
    let (status, body) = send(&app, with_token(Method::GET, "/pets", "keyed")).await;
    assert_eq!(status, StatusCode::OK);
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["api_key"], "partner");
    // The plan's throttle applies to the key the authorizer named (burst 2).
    let (status, _) = send(&app, with_token(Method::GET, "/pets", "keyed")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = send(&app, with_token(Method::GET, "/pets", "keyed")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    // No usage identifier, or one that is no key of the store: 403.
    for token in ["simple-yes", "unknown-key"] {
        let (status, _) = send(&app, with_token(Method::GET, "/pets", token)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{token}");
    }
}

#[test]
fn bad_configurations_name_their_field() {
    let function = |_request: AuthorizerRequest| async { Ok(AuthorizerResponse::simple(true)) };
    let error = |builder: tower_gateway::authorizer::custom::CustomAuthorizerBuilder| {
        builder.build().unwrap_err().field().to_owned()
    };
    assert_eq!(
        error(CustomAuthorizer::token(function).result_ttl(Duration::from_secs(3601))),
        "custom_authorizer.result_ttl"
    );
    assert_eq!(
        error(CustomAuthorizer::token(function).token_validation("(")),
        "custom_authorizer.token_validation"
    );
    assert_eq!(
        error(CustomAuthorizer::token(function).identity_header("bad header")),
        "custom_authorizer.identity_header"
    );
    assert_eq!(
        error(CustomAuthorizer::token(function).timeout(Duration::ZERO)),
        "custom_authorizer.timeout"
    );
    assert_eq!(
        error(CustomAuthorizer::request(function)),
        "custom_authorizer.identity_sources"
    );
    assert_eq!(
        error(CustomAuthorizer::request(function).identity_source("header.x")),
        "custom_authorizer.identity_sources[0]"
    );
    assert_eq!(
        error(
            CustomAuthorizer::request(function)
                .identity_source("method.request.header.x")
                .token_validation(".*")
        ),
        "custom_authorizer.token_validation"
    );
    // REQUEST mode without caching needs no identity source.
    assert!(
        CustomAuthorizer::request(function)
            .result_ttl(Duration::ZERO)
            .build()
            .is_ok()
    );

    let authorizer = CustomAuthorizer::token(function).build().unwrap();
    let scoped = GatewayBuilder::new()
        .stage(Stage::builder("prod").build().unwrap())
        .custom_authorizer("tokens", authorizer.clone())
        .route(
            Route::new(Method::GET, "/pets")
                .authorizer("tokens")
                .authorization_scopes(["read"]),
        )
        .build()
        .unwrap_err();
    assert_eq!(scoped.field(), "routes[GET /pets].authorization_scopes");
    let keyed_without_custom = GatewayBuilder::new()
        .stage(Stage::builder("prod").build().unwrap())
        .api_key_store(InMemoryApiKeyStore::new())
        .api_key_source(ApiKeySource::Authorizer)
        .route(Route::new(Method::GET, "/pets").api_key_required(true))
        .build()
        .unwrap_err();
    assert_eq!(keyed_without_custom.field(), "routes[GET /pets].authorizer");
}
