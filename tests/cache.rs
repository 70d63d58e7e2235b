//! The response cache: hits and misses, the key, what is stored, refresh and flush, callers
//! kept apart, the stampede, huge and broken responses, the standalone layer and the config.

mod support;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::Path;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::{HeaderMap, Method, Request, StatusCode, Uri};
use http_body::Frame;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use support::{get as get_request, json as json_body, text};
use tokio::sync::Notify;
use tower::{Layer, ServiceExt};
use tower_gateway::api_key::{ApiKey, InMemoryApiKeyStore};
use tower_gateway::authorizer::custom::{
    AuthorizerError, AuthorizerRequest, AuthorizerResponse, CustomAuthorizer,
};
use tower_gateway::cache::{
    BackendCacheControl, CacheSettings, CacheStatus, ResponseCacheLayer, RouteCacheSettings,
    UnauthorizedRefresh,
};
use tower_gateway::clock::ManualClock;
use tower_gateway::validate::RequestParameter;
use tower_gateway::{
    Gateway, GatewayBuilder, GatewayConfig, GatewayService, RequestContext, Route, Stage,
    StageSelection,
};

const ALICE: &str = "alice-key-0123456789abcdef";
const BOB: &str = "bob-key-0123456789abcdefgh";

/// Counts the service's calls.
#[derive(Clone, Default)]
struct Calls(Arc<AtomicUsize>);

impl Calls {
    fn next(&self) -> usize {
        self.0.fetch_add(1, Ordering::SeqCst) + 1
    }

    fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// A body of the given chunks, of unknown length, optionally failing or ending with trailers.
struct Chunks {
    chunks: Vec<Bytes>,
    fail_at_end: bool,
    trailers: Option<HeaderMap>,
}

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if !self.chunks.is_empty() {
            let chunk = self.chunks.remove(0);
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if std::mem::take(&mut self.fail_at_end) {
            return Poll::Ready(Some(Err(std::io::Error::other("the backend died"))));
        }
        Poll::Ready(
            self.trailers
                .take()
                .map(|trailers| Ok(Frame::trailers(trailers))),
        )
    }
}

fn chunks(count: usize, size: usize) -> Vec<Bytes> {
    (0..count)
        .map(|i| Bytes::from(vec![b'a' + (i % 26) as u8; size]))
        .collect()
}

/// Each handler says which call of the service it is and what reached it.
fn router(calls: Calls) -> Router {
    let echo = {
        let calls = calls.clone();
        move |uri: Uri, headers: HeaderMap, context: RequestContext| {
            let call = calls.next();
            async move {
                let headers: BTreeMap<String, String> = headers
                    .iter()
                    .map(|(name, value)| {
                        (name.to_string(), value.to_str().unwrap_or("?").to_owned())
                    })
                    .collect();
                axum::Json(json!({
                    "call": call,
                    "uri": uri.to_string(),
                    "headers": headers,
                    "pet": context.path_parameter("petId"),
                    "caller": context.api_key_id().or_else(|| context.identity().and_then(|i| i.principal_id())),
                }))
            }
        }
    };
    let with_calls = |calls: &Calls| calls.clone();
    let status = {
        let calls = with_calls(&calls);
        move |Path(code): Path<u16>| {
            let call = calls.next();
            async move { (StatusCode::from_u16(code).unwrap(), format!("call {call}")) }
        }
    };
    let cache_control = {
        let calls = with_calls(&calls);
        move |Path(directive): Path<String>| {
            let call = calls.next();
            async move { ([("cache-control", directive)], format!("call {call}")) }
        }
    };
    let header = {
        let calls = with_calls(&calls);
        move |Path((name, value)): Path<(String, String)>| {
            let call = calls.next();
            async move { ([(name, value)], format!("call {call}")) }
        }
    };
    let big = {
        let calls = with_calls(&calls);
        move |Path(size): Path<usize>| {
            calls.next();
            async move { vec![b'x'; size] }
        }
    };
    let stream = {
        let calls = with_calls(&calls);
        move |Path((count, size)): Path<(usize, usize)>| {
            calls.next();
            async move {
                Body::new(Chunks {
                    chunks: chunks(count, size),
                    fail_at_end: false,
                    trailers: None,
                })
            }
        }
    };
    let broken = {
        let calls = with_calls(&calls);
        move || {
            calls.next();
            async move {
                Body::new(Chunks {
                    chunks: chunks(2, 10),
                    fail_at_end: true,
                    trailers: None,
                })
            }
        }
    };
    let trailers = {
        let calls = with_calls(&calls);
        move || {
            calls.next();
            async move {
                let mut trailers = HeaderMap::new();
                trailers.insert("x-checksum", "42".parse().unwrap());
                Body::new(Chunks {
                    chunks: chunks(2, 10),
                    fail_at_end: false,
                    trailers: Some(trailers),
                })
            }
        }
    };
    Router::new()
        .route("/pets/{petId}", get(echo.clone()).post(echo.clone()))
        .route("/orders", post(echo.clone()))
        .route("/search", get(echo.clone()))
        .route("/keyed", get(echo.clone()))
        .route("/shared", get(echo.clone()))
        .route("/private", get(echo.clone()))
        .route("/uncached", get(echo))
        .route("/status/{code}", get(status))
        .route("/cc/{directive}", get(cache_control))
        .route("/header/{name}/{value}", get(header))
        .route("/big/{size}", get(big))
        .route("/stream/{count}/{size}", get(stream))
        .route("/broken", get(broken))
        .route("/trailers", get(trailers))
}

fn keys() -> InMemoryApiKeyStore {
    let store = InMemoryApiKeyStore::new();
    store
        .insert(ApiKey::new("alice", ALICE).id("alice"))
        .unwrap();
    store.insert(ApiKey::new("bob", BOB).id("bob")).unwrap();
    store
}

/// `user-NAME` is principal NAME; `refresher` also holds the refresh scope.
fn authorizer(clock: &ManualClock) -> CustomAuthorizer {
    CustomAuthorizer::token(|request: AuthorizerRequest| {
        let token = request.token().unwrap_or_default().to_owned();
        let answer: Result<AuthorizerResponse, AuthorizerError> = match token.as_str() {
            "refresher" => Ok(AuthorizerResponse::simple(true)
                .principal_id("refresher")
                .context("scope", "cache/refresh")),
            token => match token.strip_prefix("user-") {
                Some(name) => Ok(AuthorizerResponse::simple(true).principal_id(name)),
                None => Err(AuthorizerError::Unauthorized),
            },
        };
        std::future::ready(answer)
    })
    .result_ttl(Duration::ZERO)
    .clock(clock.clock())
    .build()
    .unwrap()
}

fn builder(settings: CacheSettings, clock: &ManualClock) -> GatewayBuilder {
    let keyed_route = |path: &str| Route::new(Method::GET, path).api_key_required(true);
    GatewayBuilder::new()
        .stage(Stage::builder("prod").cache(settings).build().unwrap())
        .stage(Stage::builder("test").build().unwrap())
        .stage_selection(StageSelection::BasePath)
        .clock(clock.clock())
        .api_key_store(keys())
        .custom_authorizer("users", authorizer(clock))
        .route(
            Route::new(Method::GET, "/pets/{petId}").cache(
                RouteCacheSettings::new()
                    .ttl_seconds(60)
                    .key_parameter(RequestParameter::path("petId"))
                    .key_parameter(RequestParameter::query("fields"))
                    .key_parameter(RequestParameter::header("accept-language")),
            ),
        )
        .route(Route::new(Method::POST, "/pets/{petId}"))
        .route(Route::new(Method::POST, "/orders").cache(RouteCacheSettings::new().enabled(true)))
        .route(Route::new(Method::GET, "/search"))
        .route(keyed_route("/keyed"))
        .route(keyed_route("/shared").cache(RouteCacheSettings::new().shared_between_callers(true)))
        .route(Route::new(Method::GET, "/private").authorizer("users"))
        .route(Route::new(Method::GET, "/uncached").cache(RouteCacheSettings::new().enabled(false)))
        .route(Route::new(Method::GET, "/status/{code}"))
        .route(Route::new(Method::GET, "/cc/{directive}"))
        .route(Route::new(Method::GET, "/header/{name}/{value}"))
        .route(Route::new(Method::GET, "/big/{size}"))
        .route(Route::new(Method::GET, "/stream/{count}/{size}"))
        .route(Route::new(Method::GET, "/broken"))
        .route(Route::new(Method::GET, "/trailers"))
}

struct Harness {
    app: GatewayService<Router>,
    gateway: Gateway,
    calls: Calls,
    clock: ManualClock,
}

impl Harness {
    fn new(settings: CacheSettings) -> Self {
        let clock = ManualClock::starting_at(1_700_000_000);
        let gateway = builder(settings, &clock).build().unwrap();
        let calls = Calls::default();
        Self {
            app: gateway.layer(router(calls.clone())),
            gateway,
            calls,
            clock,
        }
    }

    async fn send(&self, request: Request<Body>) -> Response {
        self.app.clone().oneshot(request).await.unwrap()
    }

    async fn get(&self, uri: &str) -> Response {
        self.send(get_request(uri)).await
    }

    fn entries(&self) -> u64 {
        self.gateway
            .response_caches()
            .unwrap()
            .entry_count("prod")
            .unwrap()
    }
}

fn x_cache(response: &Response) -> Option<&str> {
    response
        .headers()
        .get("x-cache")
        .map(|value| value.to_str().unwrap())
}

async fn call_of(response: Response) -> u64 {
    json_body(response).await["call"].as_u64().unwrap()
}

#[tokio::test]
async fn a_miss_then_a_hit_with_age_and_head_from_the_get_entry() {
    let harness = Harness::new(CacheSettings::new());
    let first = harness.get("/prod/pets/1").await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(x_cache(&first), Some("miss"));
    assert!(first.headers().get("age").is_none());
    assert!(first.headers().contains_key("x-request-id"));
    let first_body = json_body(first).await;
    assert_eq!(first_body["call"], 1);
    assert_eq!(first_body["pet"], "1");

    harness.clock.advance(Duration::from_secs(7));
    let second = harness.get("/prod/pets/1").await;
    assert_eq!(x_cache(&second), Some("hit"));
    assert_eq!(second.headers()["age"], "7");
    assert!(
        second.headers().contains_key("x-request-id"),
        "the gateway's headers are added to hits"
    );
    assert_eq!(second.headers()["content-type"], "application/json");
    assert_eq!(json_body(second).await, first_body);
    assert_eq!(harness.calls.count(), 1);

    let head = harness
        .send(Request::head("/prod/pets/1").body(Body::empty()).unwrap())
        .await;
    assert_eq!(x_cache(&head), Some("hit"));
    let length: usize = head.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(length > 0);
    assert!(
        head.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .is_empty()
    );
    assert_eq!(harness.calls.count(), 1);

    // Another pet is another key; a HEAD that misses goes to the service and fills nothing.
    let head_miss = harness
        .send(Request::head("/prod/pets/2").body(Body::empty()).unwrap())
        .await;
    assert_eq!(x_cache(&head_miss), Some("miss"));
    assert_eq!(harness.calls.count(), 2);
    assert_eq!(call_of(harness.get("/prod/pets/2").await).await, 3);
}

#[tokio::test]
async fn entries_expire_after_their_ttl_and_the_stage_default_applies_elsewhere() {
    let harness = Harness::new(CacheSettings::new().ttl_seconds(120));
    assert_eq!(call_of(harness.get("/prod/pets/1").await).await, 1);
    assert_eq!(call_of(harness.get("/prod/search").await).await, 2);
    harness.clock.advance(Duration::from_secs(59));
    assert_eq!(call_of(harness.get("/prod/pets/1").await).await, 1);
    harness.clock.advance(Duration::from_secs(1));
    // The route's 60 s are over; the stage's 120 s for /search are not.
    let expired = harness.get("/prod/pets/1").await;
    assert_eq!(x_cache(&expired), Some("miss"));
    assert_eq!(call_of(expired).await, 3);
    assert_eq!(call_of(harness.get("/prod/search").await).await, 2);
    harness.clock.advance(Duration::from_secs(60));
    assert_eq!(call_of(harness.get("/prod/search").await).await, 4);
}

#[tokio::test]
async fn only_declared_parameters_vary_the_key_and_reach_the_service() {
    let harness = Harness::new(CacheSettings::new());
    let poisoned = harness
        .send(
            Request::get("/prod/pets/1?fields=name&utm=evil")
                .header("accept-language", "en")
                .header("x-forwarded-host", "evil.example")
                .header("x-original-url", "/admin")
                .header("x-http-method-override", "DELETE")
                .header("accept-encoding", "gzip")
                .header("cookie", "session=attacker")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    let body = json_body(poisoned).await;
    assert_eq!(
        body["uri"], "/pets/1?fields=name",
        "undeclared query parameters are left out"
    );
    assert_eq!(
        body["headers"],
        json!({"accept-language": "en"}),
        "undeclared headers too"
    );

    // The next client gets that very entry, and nothing of the attacker's got into it.
    let clean = harness
        .send(
            Request::get("/prod/pets/1?fields=name")
                .header("accept-language", "en")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(x_cache(&clean), Some("hit"));
    assert_eq!(json_body(clean).await, body);

    for (uri, language) in [
        ("/prod/pets/1?fields=id", "en"),
        ("/prod/pets/1?fields=name", "de"),
        ("/prod/pets/1?fields=name&fields=id", "en"),
        ("/prod/pets/1", "en"),
    ] {
        let response = harness
            .send(
                Request::get(uri)
                    .header("accept-language", language)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(x_cache(&response), Some("miss"), "{uri} {language}");
    }
    // Percent-encoding does not make another key: `%6E` is `n`.
    let encoded = harness
        .send(
            Request::get("/prod/pets/1?fields=%6Eame")
                .header("accept-language", "en")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(x_cache(&encoded), Some("hit"));
}

#[tokio::test]
async fn deception_paths_are_keys_of_their_own_or_refused() {
    let harness = Harness::new(CacheSettings::new());
    let pet = json_body(harness.get("/prod/pets/1").await).await;
    assert_eq!(pet["pet"], "1");
    for path in [
        "/prod/pets/1.css",
        "/prod/pets/1;x.css",
        "/prod/pets/1%2Fx.css",
    ] {
        let response = harness.get(path).await;
        assert_eq!(x_cache(&response), Some("miss"), "{path}");
        let body = json_body(response).await;
        assert_ne!(
            body["call"], pet["call"],
            "{path} is not served the entry of /pets/1"
        );
    }
    // The same pet spelled otherwise is the same resource, so the same entry.
    let spelled = harness.get("/prod/pets/%31").await;
    assert_eq!(x_cache(&spelled), Some("hit"));
    assert_eq!(json_body(spelled).await, pet);
    for path in ["/prod/pets/..", "/prod/pets/1%2F..", "/prod/pets/%2e%2e"] {
        let response = harness.get(path).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(x_cache(&response), None, "{path}");
    }
}

#[tokio::test]
async fn callers_never_see_each_others_entries_unless_the_route_shares_them() {
    let harness = Harness::new(CacheSettings::new());
    let keyed = |uri: &str, key: &str| {
        Request::get(uri)
            .header("x-api-key", key)
            .body(Body::empty())
            .unwrap()
    };
    let alice = json_body(harness.send(keyed("/prod/keyed", ALICE)).await).await;
    assert_eq!(alice["caller"], "alice");
    let bob = harness.send(keyed("/prod/keyed", BOB)).await;
    assert_eq!(x_cache(&bob), Some("miss"));
    assert_eq!(json_body(bob).await["caller"], "bob");
    let alice_again = harness.send(keyed("/prod/keyed", ALICE)).await;
    assert_eq!(x_cache(&alice_again), Some("hit"));
    assert_eq!(json_body(alice_again).await, alice);
    // A request without a key is refused before the cache: it never sees an entry.
    let anonymous = harness.get("/prod/keyed").await;
    assert_eq!(anonymous.status(), StatusCode::FORBIDDEN);

    // The shared route gives Bob what Alice filled.
    let shared = json_body(harness.send(keyed("/prod/shared", ALICE)).await).await;
    let bob_shared = harness.send(keyed("/prod/shared", BOB)).await;
    assert_eq!(x_cache(&bob_shared), Some("hit"));
    assert_eq!(json_body(bob_shared).await, shared);

    let bearer = |token: &str| {
        Request::get("/prod/private")
            .header("authorization", token)
            .body(Body::empty())
            .unwrap()
    };
    let carol = json_body(harness.send(bearer("user-carol")).await).await;
    assert_eq!(carol["caller"], "carol");
    let dave = harness.send(bearer("user-dave")).await;
    assert_eq!(x_cache(&dave), Some("miss"));
    assert_eq!(json_body(dave).await["caller"], "dave");
    assert_eq!(
        x_cache(&harness.send(bearer("user-carol")).await),
        Some("hit")
    );
    let refused = harness.send(bearer("nobody")).await;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(x_cache(&refused), None);
}

/// `GET /slow` behind a cached stage: each call waits for `release` (the first never
/// answers when `first_hangs`).
fn slow_app(calls: &Calls, release: &Arc<Notify>, first_hangs: bool) -> GatewayService<Router> {
    let calls = calls.clone();
    let release = Arc::clone(release);
    let service = Router::new().route(
        "/slow",
        get(move || {
            let call = calls.next();
            let release = Arc::clone(&release);
            async move {
                if first_hangs && call == 1 {
                    std::future::pending::<()>().await;
                }
                release.notified().await;
                format!("call {call}")
            }
        }),
    );
    GatewayBuilder::new()
        .stage(
            Stage::builder("prod")
                .cache(CacheSettings::new())
                .build()
                .unwrap(),
        )
        .route(Route::new(Method::GET, "/slow"))
        .build()
        .unwrap()
        .layer(service)
}

#[tokio::test]
async fn concurrent_misses_make_one_call() {
    let calls = Calls::default();
    let release = Arc::new(Notify::new());
    let app = slow_app(&calls, &release, false);
    let tasks: Vec<_> = (0..16)
        .map(|_| tokio::spawn(app.clone().oneshot(get_request("/slow"))))
        .collect();
    // Every task runs until it waits: one on the service, fifteen on its fill.
    while calls.count() == 0 {
        tokio::task::yield_now().await;
    }
    for _ in 0..16 {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        calls.count(),
        1,
        "the other fifteen wait for the first one's fill"
    );
    release.notify_waiters();
    let mut statuses = Vec::new();
    for task in tasks {
        let response = task.await.unwrap().unwrap();
        statuses.push(x_cache(&response).unwrap().to_owned());
        assert_eq!(text(response).await, "call 1");
    }
    assert_eq!(calls.count(), 1, "one call for sixteen concurrent misses");
    assert_eq!(
        statuses.iter().filter(|status| *status == "miss").count(),
        1
    );
    assert_eq!(
        statuses.iter().filter(|status| *status == "hit").count(),
        15
    );
}

#[tokio::test]
async fn a_dropped_fill_lets_the_waiting_requests_call_the_service() {
    let calls = Calls::default();
    let release = Arc::new(Notify::new());
    // The first caller hangs up before its call returns.
    let app = slow_app(&calls, &release, true);
    let leader = tokio::spawn(app.clone().oneshot(get_request("/slow")));
    while calls.count() == 0 {
        tokio::task::yield_now().await;
    }
    let waiter = tokio::spawn(app.clone().oneshot(get_request("/slow")));
    for _ in 0..4 {
        tokio::task::yield_now().await;
    }
    assert_eq!(calls.count(), 1, "the second request waits for the first");
    leader.abort();
    while calls.count() < 2 {
        tokio::task::yield_now().await;
    }
    release.notify_one();
    let response = waiter.await.unwrap().unwrap();
    assert_eq!(x_cache(&response), Some("miss"));
    assert_eq!(text(response).await, "call 2");
}

#[tokio::test]
async fn what_is_not_stored() {
    let harness = Harness::new(CacheSettings::new());
    for uri in [
        "/prod/status/500",
        "/prod/status/404",
        "/prod/status/302",
        "/prod/cc/no-store",
        "/prod/cc/private",
        "/prod/cc/no-cache",
        "/prod/cc/max-age=0",
        "/prod/header/set-cookie/session=1",
        "/prod/header/vary/*",
        "/prod/header/content-type/application%2Fgrpc",
    ] {
        let first = harness.get(uri).await;
        let first_status = first.status();
        let calls = harness.calls.count();
        let second = harness.get(uri).await;
        assert_eq!(second.status(), first_status, "{uri}");
        // Consulted, missed, and the service answered again.
        assert_eq!(x_cache(&second), Some("miss"), "{uri}");
        assert_eq!(harness.calls.count(), calls + 1, "{uri} was stored");
    }
    assert_eq!(harness.entries(), 0);
    assert_eq!(
        x_cache(&harness.get("/prod/uncached").await),
        None,
        "the route is off"
    );

    // Vary on named headers and public max-age are fine.
    for uri in ["/prod/header/vary/accept-language", "/prod/cc/max-age=30"] {
        harness.get(uri).await;
        assert_eq!(x_cache(&harness.get(uri).await), Some("hit"), "{uri}");
    }
    // max-age=30 shortens the stage's 300 s.
    harness.clock.advance(Duration::from_secs(30));
    assert_eq!(
        x_cache(&harness.get("/prod/cc/max-age=30").await),
        Some("miss")
    );
}

#[tokio::test]
async fn statuses_set_cookie_and_the_backend_cache_control_are_settings() {
    let harness = Harness::new(
        CacheSettings::new()
            .cacheable_statuses([200, 404])
            .store_set_cookie(true)
            .backend_cache_control(BackendCacheControl::Ignore),
    );
    for uri in [
        "/prod/status/404",
        "/prod/header/set-cookie/a=1",
        "/prod/cc/no-store",
        "/prod/cc/max-age=0",
    ] {
        harness.get(uri).await;
        let second = harness.get(uri).await;
        assert_eq!(x_cache(&second), Some("hit"), "{uri}");
    }
    let created = harness.get("/prod/status/201").await;
    harness.get("/prod/status/201").await;
    assert_eq!(created.status(), StatusCode::CREATED);
    assert_eq!(
        x_cache(&harness.get("/prod/status/201").await),
        Some("miss")
    );
}

#[tokio::test]
async fn only_get_is_cached_unless_a_route_opts_in() {
    let harness = Harness::new(CacheSettings::new());
    let post = |uri: &str| {
        Request::post(uri)
            .header("content-type", "application/json")
            .header("content-length", "2")
            .header("x-forwarded-host", "evil.example")
            .body(Body::from("{}"))
            .unwrap()
    };
    harness.send(post("/prod/pets/1")).await;
    let second = harness.send(post("/prod/pets/1")).await;
    assert_eq!(x_cache(&second), None);
    assert_eq!(harness.calls.count(), 2);

    let order = json_body(harness.send(post("/prod/orders")).await).await;
    assert_eq!(
        order["headers"],
        json!({"content-length": "2", "content-type": "application/json"}),
        "the body's own headers stay, the rest goes"
    );
    let again = harness.send(post("/prod/orders")).await;
    assert_eq!(x_cache(&again), Some("hit"));

    // A GET with a body is served from an entry but never fills one.
    let with_body = || {
        Request::get("/prod/search")
            .header("content-length", "5")
            .body(Body::from("hello"))
            .unwrap()
    };
    assert_eq!(x_cache(&harness.send(with_body()).await), Some("miss"));
    assert_eq!(x_cache(&harness.send(with_body()).await), Some("miss"));
    harness.get("/prod/search").await;
    assert_eq!(x_cache(&harness.send(with_body()).await), Some("hit"));
}

#[tokio::test]
async fn huge_broken_and_trailing_responses_are_not_stored_and_arrive_whole() {
    let harness = Harness::new(CacheSettings::new().max_entry_bytes(64 * 1024));
    // Declared bigger than the limit: passed through untouched.
    let big = harness.get("/prod/big/100000").await;
    assert_eq!(x_cache(&big), Some("miss"));
    assert_eq!(
        big.into_body().collect().await.unwrap().to_bytes().len(),
        100_000
    );
    // Of unknown length and bigger: read up to the limit, then handed on.
    let streamed = harness.get("/prod/stream/10/10000").await;
    assert_eq!(x_cache(&streamed), Some("miss"));
    let bytes = streamed.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(bytes.len(), 100_000);
    let expected: Vec<u8> = chunks(10, 10_000).concat();
    assert_eq!(&bytes[..], &expected[..], "every byte, in order");
    assert_eq!(harness.entries(), 0);
    // Of unknown length and small enough: stored.
    harness.get("/prod/stream/3/1000").await;
    let small = harness.get("/prod/stream/3/1000").await;
    assert_eq!(x_cache(&small), Some("hit"));
    assert_eq!(small.headers()["content-length"], "3000");
    assert_eq!(
        small.into_body().collect().await.unwrap().to_bytes(),
        chunks(3, 1000).concat()
    );

    // A body that fails half way: a gateway error, and nothing half is stored.
    let broken = harness.get("/prod/broken").await;
    assert_eq!(broken.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(json_body(broken).await["message"], "Internal server error");
    let calls = harness.calls.count();
    let again = harness.get("/prod/broken").await;
    assert_eq!(again.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(harness.calls.count(), calls + 1);

    // Trailers cannot be kept in an entry: the response passes with them.
    let trailing = harness.get("/prod/trailers").await;
    let collected = trailing.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["x-checksum"], "42");
    assert_eq!(collected.to_bytes(), chunks(2, 10).concat());
    assert_eq!(x_cache(&harness.get("/prod/trailers").await), Some("miss"));
}

#[tokio::test]
async fn the_cache_holds_at_most_its_capacity() {
    let harness = Harness::new(
        CacheSettings::new()
            .capacity_bytes(256 * 1024)
            .max_entry_bytes(16 * 1024),
    );
    for i in 0..200 {
        let response = harness.get(&format!("/prod/big/{}", 10_000 + i)).await;
        assert_eq!(response.status(), StatusCode::OK);
    }
    let caches = harness.gateway.response_caches().unwrap();
    let size = caches.weighted_size("prod").unwrap();
    assert!(size <= 256 * 1024, "{size} bytes held");
    assert!(size > 100 * 1024, "{size} bytes held: the cache is used");
    assert!(caches.entry_count("prod").unwrap() < 200);
}

fn refresh(uri: &str, token: Option<&str>) -> Request<Body> {
    let mut request = Request::get(uri).header("cache-control", "max-age=0");
    if let Some(token) = token {
        request = request.header("authorization", token);
    }
    request.body(Body::empty()).unwrap()
}

#[tokio::test]
async fn refreshing_takes_authorization_and_the_strategies_answer_the_rest() {
    let harness = Harness::new(CacheSettings::new().refresh_scope("cache/refresh"));
    assert_eq!(call_of(harness.get("/prod/search").await).await, 1);
    // Without the scope: served from the entry, with a warning.
    let ignored = harness.send(refresh("/prod/search", None)).await;
    assert_eq!(x_cache(&ignored), Some("hit"));
    assert!(
        ignored.headers()["warning"]
            .to_str()
            .unwrap()
            .starts_with("199 ")
    );
    assert_eq!(call_of(ignored).await, 1);

    // On a route with the authorizer, the scope lets the caller refresh its entry.
    let refreshed = harness
        .send(refresh("/prod/private", Some("refresher")))
        .await;
    assert_eq!(x_cache(&refreshed), Some("miss"));
    let first = call_of(refreshed).await;
    let again = harness
        .send(refresh("/prod/private", Some("refresher")))
        .await;
    assert_eq!(x_cache(&again), Some("miss"));
    let second = call_of(again).await;
    assert_eq!(second, first + 1);
    let plain = harness
        .send(
            Request::get("/prod/private")
                .header("authorization", "refresher")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(x_cache(&plain), Some("hit"));
    assert_eq!(
        call_of(plain).await,
        second,
        "the refresh replaced the entry"
    );
    // Another user's refresh is ignored.
    harness
        .send(refresh("/prod/private", Some("user-eve")))
        .await;
    let eve = harness
        .send(refresh("/prod/private", Some("user-eve")))
        .await;
    assert_eq!(x_cache(&eve), Some("hit"));

    let forbidding =
        Harness::new(CacheSettings::new().unauthorized_refresh(UnauthorizedRefresh::FailWith403));
    forbidding.get("/prod/search").await;
    let forbidden = forbidding.send(refresh("/prod/search", None)).await;
    assert_eq!(forbidden.status(), StatusCode::FORBIDDEN);
    assert_eq!(forbidding.calls.count(), 1);

    let silent = Harness::new(
        CacheSettings::new()
            .unauthorized_refresh(UnauthorizedRefresh::SucceedWithoutResponseHeader),
    );
    silent.get("/prod/search").await;
    let quiet = silent.send(refresh("/prod/search", None)).await;
    assert_eq!(x_cache(&quiet), Some("hit"));
    assert!(quiet.headers().get("warning").is_none());

    let open = Harness::new(CacheSettings::new().require_authorization(false));
    open.get("/prod/search").await;
    let anyone = open.send(refresh("/prod/search", None)).await;
    assert_eq!(x_cache(&anyone), Some("miss"));
    assert_eq!(call_of(anyone).await, 2);
}

#[tokio::test]
async fn the_stage_defaults_ttl_300_seconds_and_entries_up_to_1_mib() {
    assert_eq!(tower_gateway::cache::DEFAULT_TTL_SECONDS, 300);
    assert_eq!(tower_gateway::cache::DEFAULT_MAX_ENTRY_BYTES, 1024 * 1024);
    let harness = Harness::new(CacheSettings::new());
    // /search has no TTL of its own: the stage's default of 300 s.
    assert_eq!(call_of(harness.get("/prod/search").await).await, 1);
    harness.clock.advance(Duration::from_secs(299));
    let kept = harness.get("/prod/search").await;
    assert_eq!(x_cache(&kept), Some("hit"));
    assert_eq!(call_of(kept).await, 1);
    harness.clock.advance(Duration::from_secs(1));
    let expired = harness.get("/prod/search").await;
    assert_eq!(x_cache(&expired), Some("miss"), "gone at 300 s");
    assert_eq!(call_of(expired).await, 2);

    // The largest entry is 1 MiB, of a known or an unknown length.
    const MIB: usize = 1024 * 1024;
    let stored_after_two = |uri: String| {
        let harness = Harness::new(CacheSettings::new());
        async move {
            for _ in 0..2 {
                let response = harness.get(&uri).await;
                assert_eq!(response.status(), StatusCode::OK);
                let length = text(response).await.len();
                assert!(length == MIB || length == MIB + 1, "{uri}: {length}");
            }
            (harness.calls.count(), harness.entries())
        }
    };
    assert_eq!(stored_after_two(format!("/prod/big/{MIB}")).await, (1, 1));
    assert_eq!(
        stored_after_two(format!("/prod/big/{}", MIB + 1)).await,
        (2, 0)
    );
    assert_eq!(
        stored_after_two(format!("/prod/stream/16/{}", MIB / 16)).await,
        (1, 1)
    );
    assert_eq!(
        stored_after_two(format!("/prod/stream/1/{}", MIB + 1)).await,
        (2, 0)
    );
}

#[tokio::test]
async fn a_ttl_of_0_turns_caching_off_and_3600_is_the_longest() {
    // On the stage: nothing is cached, and no x-cache header is sent.
    let off = Harness::new(CacheSettings::new().ttl_seconds(0));
    for call in 1..=3 {
        let response = off.get("/prod/search").await;
        assert_eq!(x_cache(&response), None);
        assert_eq!(call_of(response).await, call);
    }
    assert_eq!(off.entries(), 0);

    // On a route: that route only.
    let clock = ManualClock::starting_at(1_700_000_000);
    let calls = Calls::default();
    let app = GatewayBuilder::new()
        .stage(
            Stage::builder("prod")
                .cache(CacheSettings::new())
                .build()
                .unwrap(),
        )
        .stage_selection(StageSelection::BasePath)
        .clock(clock.clock())
        .route(Route::new(Method::GET, "/search").cache(RouteCacheSettings::new().ttl_seconds(0)))
        .route(Route::new(Method::GET, "/pets/{petId}"))
        .build()
        .unwrap()
        .layer(router(calls.clone()));
    let send = |uri: &str| app.clone().oneshot(get_request(uri));
    for call in 1..=2 {
        let response = send("/prod/search").await.unwrap();
        assert_eq!(x_cache(&response), None);
        assert_eq!(call_of(response).await, call);
    }
    assert_eq!(x_cache(&send("/prod/pets/1").await.unwrap()), Some("miss"));
    assert_eq!(x_cache(&send("/prod/pets/1").await.unwrap()), Some("hit"));

    // 0–3600 on the stage and on a route; 3601 is a ConfigError naming the field.
    let with_ttls = |stage: u32, route: u32| -> Result<Gateway, tower_gateway::ConfigError> {
        GatewayBuilder::new()
            .stage(
                Stage::builder("prod")
                    .cache(CacheSettings::new().ttl_seconds(stage))
                    .build()?,
            )
            .route(
                Route::new(Method::GET, "/search")
                    .cache(RouteCacheSettings::new().ttl_seconds(route)),
            )
            .build()
    };
    assert!(with_ttls(3600, 3600).is_ok());
    assert!(with_ttls(0, 0).is_ok());
    let error = with_ttls(3601, 60).unwrap_err();
    assert!(error.field().ends_with("cache.ttl_seconds"), "{error}");
    assert!(error.field().contains("prod"), "{error}");
    let error = with_ttls(60, 3601).unwrap_err();
    assert!(error.field().ends_with("cache.ttl_seconds"), "{error}");
    assert!(error.field().contains("GET /search"), "{error}");
}

/// The cache harness's clock.
const JWT_NOW: u64 = 1_700_000_000;

fn jwt_cached_app(settings: CacheSettings, calls: &Calls) -> GatewayService<Router> {
    let clock = ManualClock::starting_at(JWT_NOW);
    let users = support::jwt_authorizer(Some(clock.clock()));
    GatewayBuilder::new()
        .stage(Stage::builder("prod").cache(settings).build().unwrap())
        .stage_selection(StageSelection::BasePath)
        .clock(clock.clock())
        .jwt_authorizer("users", users)
        .route(Route::new(Method::GET, "/private").authorizer("users"))
        .build()
        .unwrap()
        .layer(router(calls.clone()))
}

fn jwt_bearer(sub: &str, scopes: Value) -> String {
    let mut claims = json!({ "sub": sub, "iat": JWT_NOW, "exp": JWT_NOW + 600 });
    for (name, value) in scopes.as_object().unwrap() {
        claims[name] = value.clone();
    }
    support::bearer(claims)
}

#[tokio::test]
async fn a_jwt_scope_or_scp_holding_the_refresh_scope_refreshes() {
    let calls = Calls::default();
    let app = jwt_cached_app(CacheSettings::new().refresh_scope("cache/refresh"), &calls);
    let send = |request: Request<Body>| app.clone().oneshot(request);
    let plain = |token: &str| {
        Request::get("/prod/private")
            .header("authorization", token)
            .body(Body::empty())
            .unwrap()
    };
    for holder in [
        jwt_bearer("ops", json!({"scope": "pets/read cache/refresh"})),
        jwt_bearer("ops-scp", json!({"scp": ["pets/read", "cache/refresh"]})),
        jwt_bearer("ops-scp-text", json!({"scp": "cache/refresh"})),
    ] {
        let first = call_of(send(plain(&holder)).await.unwrap()).await;
        let refreshed = send(refresh("/prod/private", Some(&holder))).await.unwrap();
        assert_eq!(refreshed.status(), StatusCode::OK);
        assert_eq!(x_cache(&refreshed), Some("miss"), "{holder}");
        assert!(refreshed.headers().get("warning").is_none());
        let second = call_of(refreshed).await;
        assert_eq!(second, first + 1);
        let hit = send(plain(&holder)).await.unwrap();
        assert_eq!(x_cache(&hit), Some("hit"));
        assert_eq!(call_of(hit).await, second, "the refresh replaced the entry");
    }

    // A token without the scope (another scope, or a scope that merely contains the
    // words): the default strategy serves the entry with a warning.
    for lacking in [
        jwt_bearer("reader", json!({"scope": "pets/read"})),
        jwt_bearer("prefix", json!({"scp": ["cache/refresh-all", "cache"]})),
    ] {
        let first = call_of(send(plain(&lacking)).await.unwrap()).await;
        let ignored = send(refresh("/prod/private", Some(&lacking)))
            .await
            .unwrap();
        assert_eq!(x_cache(&ignored), Some("hit"), "{lacking}");
        assert!(
            ignored.headers()["warning"]
                .to_str()
                .unwrap()
                .starts_with("199 ")
        );
        assert_eq!(call_of(ignored).await, first);
    }

    // FailWith403 refuses it.
    let calls = Calls::default();
    let strict = jwt_cached_app(
        CacheSettings::new()
            .refresh_scope("cache/refresh")
            .unauthorized_refresh(UnauthorizedRefresh::FailWith403),
        &calls,
    );
    let reader = jwt_bearer("reader", json!({"scope": "pets/read"}));
    strict.clone().oneshot(plain(&reader)).await.unwrap();
    let refused = strict
        .clone()
        .oneshot(refresh("/prod/private", Some(&reader)))
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let holder = jwt_bearer("ops", json!({"scope": "cache/refresh"}));
    strict.clone().oneshot(plain(&holder)).await.unwrap();
    let allowed = strict
        .oneshot(refresh("/prod/private", Some(&holder)))
        .await
        .unwrap();
    assert_eq!(x_cache(&allowed), Some("miss"));
    assert_eq!(calls.count(), 3, "reader once, the holder twice");
}

#[tokio::test]
async fn flushing_a_stage_or_one_entry() {
    let harness = Harness::new(CacheSettings::new());
    harness.get("/prod/pets/1").await;
    harness.get("/prod/pets/2").await;
    let keyed = |key: &str| {
        Request::get("/prod/keyed")
            .header("x-api-key", key)
            .body(Body::empty())
            .unwrap()
    };
    harness.send(keyed(ALICE)).await;
    harness.send(keyed(BOB)).await;
    let caches = harness.gateway.response_caches().unwrap();
    assert_eq!(caches.entry_count("prod"), Some(4));
    assert_eq!(caches.entry_count("test"), None, "stage test has no cache");

    let entry = |uri: &str| Request::get(uri).body(()).unwrap();
    assert!(caches.flush_entry(entry("/prod/pets/1"), None));
    assert!(
        !caches.flush_entry(entry("/prod/pets/1"), None),
        "already gone"
    );
    assert!(!caches.flush_entry(entry("/prod/nowhere"), None));
    assert!(caches.flush_entry(entry("/prod/keyed"), Some("alice")));
    assert_eq!(x_cache(&harness.get("/prod/pets/1").await), Some("miss"));
    assert_eq!(x_cache(&harness.get("/prod/pets/2").await), Some("hit"));
    assert_eq!(x_cache(&harness.send(keyed(ALICE)).await), Some("miss"));
    assert_eq!(x_cache(&harness.send(keyed(BOB)).await), Some("hit"));

    assert!(caches.flush_stage("prod"));
    assert!(!caches.flush_stage("test"));
    assert_eq!(caches.entry_count("prod"), Some(0));
    assert_eq!(x_cache(&harness.get("/prod/pets/2").await), Some("miss"));
}

#[tokio::test]
async fn stages_without_a_cache_and_the_status_header_setting() {
    let harness = Harness::new(CacheSettings::new().cache_status_header(false));
    harness.get("/test/search").await;
    let uncached = harness.get("/test/search").await;
    assert_eq!(x_cache(&uncached), None);
    assert_eq!(call_of(uncached).await, 2);

    harness.get("/prod/search").await;
    let hit = harness.get("/prod/search").await;
    assert_eq!(x_cache(&hit), None, "the header is off");
    assert!(hit.headers().contains_key("age"));
    assert_eq!(harness.calls.count(), 3);
}

#[tokio::test]
async fn the_context_records_hits_and_misses() {
    let layer = ResponseCacheLayer::builder().build().unwrap();
    let service = layer.layer(tower::service_fn(|_request: Request<Body>| async {
        Ok::<Response, Infallible>("[]".into_response())
    }));
    let mut outcomes = Vec::new();
    for _ in 0..2 {
        let mut request = get_request("/pets");
        let context = RequestContext::get_or_insert(&mut request);
        service.clone().oneshot(request).await.unwrap();
        outcomes.push(context.cache_status());
    }
    assert_eq!(outcomes, [Some(CacheStatus::Miss), Some(CacheStatus::Hit)]);
    // A request the cache does not keep records nothing.
    let mut post = Request::post("/pets").body(Body::empty()).unwrap();
    let context = RequestContext::get_or_insert(&mut post);
    service.oneshot(post).await.unwrap();
    assert_eq!(context.cache_status(), None);
}

#[tokio::test]
async fn the_standalone_layer_keys_by_path_and_declared_parameters() {
    let calls = Calls::default();
    let layer = ResponseCacheLayer::builder()
        .settings(CacheSettings::new().ttl_seconds(30))
        .route_settings(RouteCacheSettings::new().key_parameter(RequestParameter::query("q")))
        .build()
        .unwrap();
    let app = layer.layer(router(calls.clone()));
    let send = |uri: &str| app.clone().oneshot(get_request(uri));
    let first = json_body(send("/search?q=cats&page=2").await.unwrap()).await;
    assert_eq!(first["uri"], "/search?q=cats");
    let hit = send("/search?q=cats&page=3").await.unwrap();
    assert_eq!(x_cache(&hit), Some("hit"));
    assert_eq!(
        x_cache(&send("/search?q=dogs").await.unwrap()),
        Some("miss")
    );
    assert_eq!(x_cache(&send("/pets/1").await.unwrap()), Some("miss"));
    assert_eq!(layer.entry_count(), 3);
    assert!(layer.weighted_size() > 0);
    layer.flush();
    assert_eq!(layer.entry_count(), 0);
    assert_eq!(
        x_cache(&send("/search?q=cats").await.unwrap()),
        Some("miss")
    );
    assert_eq!(calls.count(), 4);

    let error = ResponseCacheLayer::builder()
        .settings(CacheSettings::new().ttl_seconds(3601))
        .build()
        .unwrap_err();
    assert_eq!(error.field(), "cache.ttl_seconds");
}

#[tokio::test]
async fn the_declarative_config_and_its_errors() {
    let config = json!({
        "stages": [{ "name": "prod", "cache": { "ttl_seconds": 60, "refresh_scope": "cache/refresh",
                                               "unauthorized_refresh": "FAIL_WITH_403" } }],
        "routes": [
            { "route": "GET /pets/{petId}",
              "cache": { "ttl_seconds": 10, "key_parameters": ["method.request.path.petId", "method.request.querystring.fields"] } },
            { "route": "GET /search", "cache": { "enabled": false } }
        ]
    });
    let gateway =
        GatewayBuilder::from_config(GatewayConfig::from_json(&config.to_string()).unwrap())
            .unwrap()
            .build()
            .unwrap();
    let calls = Calls::default();
    let app = gateway.layer(router(calls.clone()));
    let send = |uri: &str| app.clone().oneshot(get_request(uri));
    send("/pets/1?fields=a&x=1").await.unwrap();
    let hit = send("/pets/1?fields=a").await.unwrap();
    assert_eq!(x_cache(&hit), Some("hit"));
    send("/search").await.unwrap();
    assert_eq!(x_cache(&send("/search").await.unwrap()), None);
    let forbidden = app
        .clone()
        .oneshot(refresh("/pets/1?fields=a", None))
        .await
        .unwrap();
    assert_eq!(forbidden.status(), StatusCode::FORBIDDEN);

    let refused = |config: Value| {
        GatewayConfig::from_json(&config.to_string())
            .and_then(GatewayBuilder::from_config)
            .and_then(GatewayBuilder::build)
            .unwrap_err()
    };
    let stage = |cache: Value| json!({"stages": [{"name": "prod", "cache": cache}], "routes": [{"route": "GET /pets"}]});
    assert_eq!(
        refused(stage(json!({"ttl_seconds": 3601}))).field(),
        "stages[prod].cache.ttl_seconds"
    );
    assert_eq!(
        refused(stage(json!({"capacity_bytes": 10, "max_entry_bytes": 100}))).field(),
        "stages[prod].cache.capacity_bytes"
    );
    assert_eq!(
        refused(stage(json!({"cacheable_statuses": [99]}))).field(),
        "stages[prod].cache.cacheable_statuses"
    );
    assert_eq!(
        refused(stage(json!({"max_entry_bytes": 0}))).field(),
        "stages[prod].cache.max_entry_bytes"
    );
    let unknown = GatewayConfig::from_json(&stage(json!({"ttl": 5})).to_string()).unwrap_err();
    assert!(unknown.to_string().contains("ttl"), "{unknown}");
    let route = |cache: Value| json!({"stages": [{"name": "prod", "cache": {}}], "routes": [{"route": "GET /pets", "cache": cache}]});
    assert_eq!(
        refused(route(
            json!({"key_parameters": ["method.request.path.petId"]})
        ))
        .field(),
        "routes[GET /pets].cache.key_parameters[method.request.path.petId]"
    );
    assert_eq!(
        refused(route(
            json!({"key_parameters": ["method.request.header.bad header"]})
        ))
        .field(),
        "routes[GET /pets].cache.key_parameters[method.request.header.bad header]"
    );
    assert_eq!(
        refused(route(json!({"ttl_seconds": 4000}))).field(),
        "routes[GET /pets].cache.ttl_seconds"
    );
}

#[tokio::test]
async fn odd_request_headers_cause_no_error_and_no_cached_error() {
    let harness = Harness::new(CacheSettings::new());
    let mut request = Request::get("/prod/pets/7").body(Body::empty()).unwrap();
    request.headers_mut().insert(
        "accept-language",
        http::HeaderValue::from_bytes(b"\xff\xfe").unwrap(),
    );
    request.headers_mut().insert(
        "cache-control",
        http::HeaderValue::from_bytes(b"max-age=\xff").unwrap(),
    );
    request
        .headers_mut()
        .append("x-forwarded-host", http::HeaderValue::from_static(""));
    let odd = harness.send(request).await;
    assert_eq!(odd.status(), StatusCode::OK);
    assert_eq!(json_body(odd).await["headers"]["accept-language"], "?");
    // An error the service gives for a declared header is not stored.
    let harness = Harness::new(CacheSettings::new());
    let error = harness.get("/prod/status/400").await;
    assert_eq!(error.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        x_cache(&harness.get("/prod/status/400").await),
        Some("miss")
    );
}
