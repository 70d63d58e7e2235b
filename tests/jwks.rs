//! Remote JWT keys: a JWKS URL and OIDC discovery served by a local server on loopback; key
//! rotation without a restart, the unknown-`kid` cool-down, background refresh, and a key
//! server that is down, slow, oversized or serving garbage. The authorizer's clock is manual;
//! only the fetch timeout runs on real time (a server that never answers against a 200 ms
//! timeout). The keys in `support/keys` are test keys generated for this suite only.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{Method, Request};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::json;
use tower::{Layer, ServiceExt};
use tower_gateway::authorizer::jwt::{
    FetchFuture, JwksFetcher, JwtAuthorizer, JwtAuthorizerBuilder,
};
use tower_gateway::clock::ManualClock;
use tower_gateway::{GatewayBuilder, GatewayService, Route, Stage};

const AUDIENCE: &str = "pets-api";
const RSA_PRIVATE: &[u8] = include_bytes!("support/keys/rsa_private.pem");
const EC_PRIVATE: &[u8] = include_bytes!("support/keys/ec_private.pem");
/// 2026-03-02T00:00:00Z.
const NOW: u64 = 1_772_409_600;

/// What the key server answers.
#[derive(Clone)]
enum Serve {
    Jwks(String),
    Garbage,
    Huge,
    Error,
    Hang,
}

#[derive(Clone)]
struct KeyServer {
    serve: Arc<Mutex<Serve>>,
    issuer_in_discovery: Arc<Mutex<String>>,
    hits: Arc<AtomicUsize>,
    base: String,
}

impl KeyServer {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = Self {
            serve: Arc::new(Mutex::new(Serve::Error)),
            issuer_in_discovery: Arc::new(Mutex::new(base.clone())),
            hits: Arc::new(AtomicUsize::new(0)),
            base,
        };
        let app = Router::new()
            .route("/jwks.json", get(jwks))
            .route("/.well-known/openid-configuration", get(discovery))
            .with_state(server.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        server
    }

    fn serve(&self, serve: Serve) {
        *self.serve.lock().unwrap() = serve;
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    fn jwks_url(&self) -> String {
        format!("{}/jwks.json", self.base)
    }
}

async fn jwks(State(server): State<KeyServer>) -> Response {
    server.hits.fetch_add(1, Ordering::SeqCst);
    let serve = server.serve.lock().unwrap().clone();
    match serve {
        Serve::Jwks(document) => document.into_response(),
        Serve::Garbage => "<html>maintenance</html>".into_response(),
        Serve::Huge => "x".repeat(64 * 1024).into_response(),
        Serve::Error => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        Serve::Hang => std::future::pending().await,
    }
}

async fn discovery(State(server): State<KeyServer>) -> Response {
    let issuer = server.issuer_in_discovery.lock().unwrap().clone();
    json!({"issuer": issuer, "jwks_uri": server.jwks_url()})
        .to_string()
        .into_response()
}

struct Signer {
    key: EncodingKey,
    algorithm: Algorithm,
    kid: &'static str,
}

impl Signer {
    fn rsa(kid: &'static str) -> Self {
        Self {
            key: EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap(),
            algorithm: Algorithm::RS256,
            kid,
        }
    }

    fn ec(kid: &'static str) -> Self {
        Self {
            key: EncodingKey::from_ec_pem(EC_PRIVATE).unwrap(),
            algorithm: Algorithm::ES256,
            kid,
        }
    }

    fn jwk(&self) -> Jwk {
        let mut jwk = Jwk::from_encoding_key(&self.key, self.algorithm).unwrap();
        jwk.common.key_id = Some(self.kid.into());
        jwk
    }

    /// A token for `sub`; distinct subjects make distinct tokens (no verified-token cache hit).
    fn token(&self, issuer: &str, sub: &str) -> String {
        let mut header = Header::new(self.algorithm);
        header.kid = Some(self.kid.into());
        let claims = json!({"iss": issuer, "aud": AUDIENCE, "sub": sub, "exp": NOW + 3600});
        encode(&header, &claims, &self.key).unwrap()
    }
}

fn jwks_of(signers: &[&Signer]) -> Serve {
    let set = JwkSet {
        keys: signers.iter().map(|signer| signer.jwk()).collect(),
    };
    Serve::Jwks(serde_json::to_string(&set).unwrap())
}

fn gateway(authorizer: JwtAuthorizer) -> GatewayService<Router> {
    GatewayBuilder::new()
        .stage(Stage::builder("prod").build().unwrap())
        .jwt_authorizer("users", authorizer)
        .route(Route::new(Method::GET, "/pets").authorizer("users"))
        .build()
        .unwrap()
        .layer(Router::new().route("/pets", get(|| async { "pets" })))
}

fn remote(server: &KeyServer, clock: &ManualClock) -> JwtAuthorizerBuilder {
    JwtAuthorizer::builder()
        .issuer(&server.base)
        .audience(AUDIENCE)
        .jwks_url(server.jwks_url())
        .fetch_timeout(Duration::from_millis(200))
        .max_jwks_bytes(16 * 1024)
        .clock(clock.clock())
}

async fn status(app: &GatewayService<Router>, token: &str) -> StatusCode {
    let request = Request::get("/pets")
        .header("authorization", format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap();
    app.clone().oneshot(request).await.unwrap().status()
}

#[tokio::test]
async fn keys_rotate_without_a_restart() {
    let server = KeyServer::start().await;
    let (old, new) = (Signer::rsa("old"), Signer::ec("new"));
    server.serve(jwks_of(&[&old]));
    let clock = ManualClock::starting_at(NOW);
    let app = gateway(remote(&server, &clock).build().unwrap());
    let issuer = server.base.clone();

    // The first token fetches the keys; the next ones use them.
    let cached_old = old.token(&issuer, "a");
    assert_eq!(status(&app, &cached_old).await, StatusCode::OK);
    assert_eq!(status(&app, &old.token(&issuer, "b")).await, StatusCode::OK);
    assert_eq!(server.hits(), 1);

    // The issuer publishes the new key beside the old one. Within the cool-down, a token with
    // the new kid does not trigger a fetch; after it, one fetch brings the new key in.
    server.serve(jwks_of(&[&old, &new]));
    assert_eq!(
        status(&app, &new.token(&issuer, "c")).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(server.hits(), 1);
    clock.advance(Duration::from_secs(30));
    assert_eq!(status(&app, &new.token(&issuer, "c")).await, StatusCode::OK);
    assert_eq!(status(&app, &old.token(&issuer, "d")).await, StatusCode::OK);
    assert_eq!(server.hits(), 2);

    // The old key is withdrawn. Once the keys are older than the refresh interval, a request
    // starts a background refresh; after it, old-key tokens fail, cached ones included.
    server.serve(jwks_of(&[&new]));
    clock.advance(Duration::from_secs(60 * 60));
    let mut refreshed = false;
    for attempt in 0..200 {
        let status = status(&app, &old.token(&issuer, &format!("e{attempt}"))).await;
        if status == StatusCode::UNAUTHORIZED {
            refreshed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        refreshed,
        "the background refresh never dropped the old key"
    );
    assert_eq!(server.hits(), 3);
    assert_eq!(status(&app, &cached_old).await, StatusCode::UNAUTHORIZED);
    assert_eq!(status(&app, &new.token(&issuer, "f")).await, StatusCode::OK);
    assert_eq!(
        server.hits(),
        3,
        "the unknown old kid is within the cool-down"
    );
}

#[tokio::test]
async fn oidc_discovery_finds_the_keys_and_checks_the_issuer() {
    let server = KeyServer::start().await;
    let signer = Signer::rsa("k1");
    server.serve(jwks_of(&[&signer]));
    let clock = ManualClock::starting_at(NOW);
    let authorizer = JwtAuthorizer::builder()
        .oidc_discovery(&server.base)
        .audience(AUDIENCE)
        .clock(clock.clock())
        .build()
        .unwrap();
    assert_eq!(authorizer.refresh_keys().await, Ok(1));
    let app = gateway(authorizer);
    assert_eq!(
        status(&app, &signer.token(&server.base, "a")).await,
        StatusCode::OK
    );
    assert_eq!(
        server.hits(),
        1,
        "refresh_keys fetched them before the request"
    );
    assert_eq!(
        status(&app, &signer.token("https://other.example", "a")).await,
        StatusCode::UNAUTHORIZED
    );

    // A discovery document that names another issuer is refused: its keys are not trusted.
    let impostor = KeyServer::start().await;
    impostor.serve(jwks_of(&[&signer]));
    *impostor.issuer_in_discovery.lock().unwrap() = "https://issuer.example.com".into();
    let authorizer = JwtAuthorizer::builder()
        .oidc_discovery(&impostor.base)
        .audience(AUDIENCE)
        .clock(clock.clock())
        .build()
        .unwrap();
    let error = authorizer.refresh_keys().await.unwrap_err();
    assert!(error.to_string().contains("names the issuer"), "{error}");
    let app = gateway(authorizer);
    assert_eq!(
        status(&app, &signer.token(&impostor.base, "a")).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(impostor.hits(), 0);
}

#[tokio::test]
async fn a_failing_key_server_keeps_the_last_good_keys() {
    let server = KeyServer::start().await;
    let (good, unknown) = (Signer::rsa("good"), Signer::ec("unknown"));
    server.serve(jwks_of(&[&good]));
    let clock = ManualClock::starting_at(NOW);
    let authorizer = remote(&server, &clock).build().unwrap();
    assert_eq!(authorizer.refresh_keys().await, Ok(1));
    let app = gateway(authorizer.clone());
    let mut fetches = server.hits();
    for (failure, expected) in [
        (Serve::Garbage, "not a JWKS document"),
        (Serve::Huge, "16384"),
        (Serve::Error, "500"),
        (Serve::Hang, "did not answer"),
        (Serve::Jwks(r#"{"keys":[]}"#.into()), "no key"),
    ] {
        server.serve(failure);
        clock.advance(Duration::from_secs(30));
        // An unknown kid triggers a fetch, which fails: the token is refused, nothing panics,
        // and the good key still verifies.
        assert_eq!(
            status(&app, &unknown.token(&server.base, "x")).await,
            StatusCode::UNAUTHORIZED
        );
        fetches += 1;
        assert_eq!(server.hits(), fetches);
        assert_eq!(
            status(&app, &good.token(&server.base, "y")).await,
            StatusCode::OK
        );
        clock.advance(Duration::from_secs(30));
        let error = authorizer.refresh_keys().await.unwrap_err();
        fetches += 1;
        assert!(error.to_string().contains(expected), "{error}");
    }
}

#[tokio::test]
async fn a_key_server_down_from_the_start_refuses_tokens_without_panicking() {
    // A port that was bound and released: nothing listens there.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    let clock = ManualClock::starting_at(NOW);
    let authorizer = JwtAuthorizer::builder()
        .issuer("https://issuer.example.com")
        .audience(AUDIENCE)
        .jwks_url(format!("http://{address}/jwks.json"))
        .clock(clock.clock())
        .build()
        .unwrap();
    assert!(authorizer.refresh_keys().await.is_err());
    let app = gateway(authorizer);
    let token = Signer::rsa("k1").token("https://issuer.example.com", "a");
    assert_eq!(status(&app, &token).await, StatusCode::UNAUTHORIZED);
}

/// A fetcher of the user's: here, a document in memory.
struct StaticFetcher {
    document: String,
    calls: Arc<AtomicUsize>,
}

impl JwksFetcher for StaticFetcher {
    fn fetch<'a>(&'a self, url: &'a str, _max_bytes: usize) -> FetchFuture<'a> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            assert_eq!(url, "https://keys.example.com/jwks.json");
            Ok(self.document.clone().into_bytes())
        })
    }
}

#[tokio::test]
async fn a_fetcher_of_the_users_replaces_the_built_in_client() {
    let signer = Signer::ec("k1");
    let Serve::Jwks(document) = jwks_of(&[&signer]) else {
        unreachable!()
    };
    let calls = Arc::new(AtomicUsize::new(0));
    let clock = ManualClock::starting_at(NOW);
    let authorizer = JwtAuthorizer::builder()
        .issuer("https://issuer.example.com")
        .audience(AUDIENCE)
        .jwks_url("https://keys.example.com/jwks.json")
        .fetcher(StaticFetcher {
            document,
            calls: Arc::clone(&calls),
        })
        .clock(clock.clock())
        .build()
        .unwrap();
    let app = gateway(authorizer);
    for sub in ["a", "b"] {
        let token = signer.token("https://issuer.example.com", sub);
        assert_eq!(status(&app, &token).await, StatusCode::OK);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[test]
fn bad_remote_settings_name_their_field() {
    let base = || {
        JwtAuthorizer::builder()
            .issuer("https://issuer.example.com")
            .audience(AUDIENCE)
    };
    let field = |builder: JwtAuthorizerBuilder| builder.build().unwrap_err().field().to_owned();
    assert_eq!(field(base().jwks_url("not a url")), "jwt.jwks_url");
    assert_eq!(
        field(base().jwks_url("ftp://keys.example.com/jwks")),
        "jwt.jwks_url"
    );
    assert_eq!(
        field(base().oidc_discovery("/relative")),
        "jwt.oidc_discovery"
    );
    assert_eq!(
        field(
            base()
                .jwks_url("http://keys.example.com/jwks")
                .fetch_timeout(Duration::ZERO)
        ),
        "jwt.fetch_timeout"
    );
    assert_eq!(
        field(
            base()
                .jwks_url("http://keys.example.com/jwks")
                .refresh_interval(Duration::from_secs(1))
        ),
        "jwt.refresh_interval"
    );
    assert_eq!(
        field(
            base()
                .jwks_url("http://keys.example.com/jwks")
                .max_jwks_bytes(0)
        ),
        "jwt.max_jwks_bytes"
    );
}

/// A fetcher that records the URLs it is asked for and serves one JWKS.
struct RecordingFetcher {
    document: String,
    urls: Arc<Mutex<Vec<String>>>,
}

impl JwksFetcher for RecordingFetcher {
    fn fetch<'a>(&'a self, url: &'a str, _max_bytes: usize) -> FetchFuture<'a> {
        self.urls.lock().unwrap().push(url.to_owned());
        Box::pin(async move { Ok(self.document.clone().into_bytes()) })
    }
}

#[tokio::test]
async fn cognito_checks_token_use_per_route_client_ids_and_groups() {
    const POOL_ISSUER: &str = "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_AbC123";
    let signer = Signer::rsa("cognito-1");
    let Serve::Jwks(document) = jwks_of(&[&signer]) else {
        unreachable!()
    };
    let urls = Arc::new(Mutex::new(Vec::new()));
    let clock = ManualClock::starting_at(NOW);
    let authorizer = JwtAuthorizer::cognito("eu-west-1", "eu-west-1_AbC123")
        .audience("client-1")
        .fetcher(RecordingFetcher {
            document,
            urls: Arc::clone(&urls),
        })
        .clock(clock.clock())
        .build()
        .unwrap();
    let app = GatewayBuilder::new()
        .stage(Stage::builder("prod").build().unwrap())
        .jwt_authorizer("pool", authorizer)
        .route(Route::new(Method::GET, "/profile").authorizer("pool"))
        .route(
            Route::new(Method::GET, "/orders")
                .authorizer("pool")
                .authorization_scopes(["orders/read"]),
        )
        .route(
            Route::new(Method::GET, "/admin")
                .authorizer("pool")
                .authorization_groups(["admins", "owners"]),
        )
        .build()
        .unwrap()
        .layer(
            Router::new()
                .route("/profile", get(|| async { "profile" }))
                .route("/orders", get(|| async { "orders" }))
                .route("/admin", get(|| async { "admin" })),
        );
    let token = |claims: serde_json::Value| {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("cognito-1".into());
        let mut all = json!({"iss": POOL_ISSUER, "sub": "u-1", "exp": NOW + 3600});
        all.as_object_mut()
            .unwrap()
            .extend(claims.as_object().unwrap().clone());
        encode(&header, &all, &signer.key).unwrap()
    };
    let call = |path: &'static str, token: String| {
        let app = app.clone();
        async move {
            let request = Request::get(path)
                .header("authorization", token)
                .body(Body::empty())
                .unwrap();
            app.oneshot(request).await.unwrap().status()
        }
    };
    let id_admin =
        token(json!({"aud": "client-1", "token_use": "id", "cognito:groups": ["admins"]}));
    let id_user = token(json!({"aud": "client-1", "token_use": "id", "cognito:groups": ["users"]}));
    let access =
        token(json!({"client_id": "client-1", "token_use": "access", "scope": "orders/read"}));
    let access_other_client =
        token(json!({"client_id": "client-2", "token_use": "access", "scope": "orders/read"}));
    let access_without_scope = token(json!({"client_id": "client-1", "token_use": "access"}));

    assert_eq!(call("/profile", id_admin.clone()).await, StatusCode::OK);
    assert_eq!(call("/admin", id_admin.clone()).await, StatusCode::OK);
    assert_eq!(call("/orders", access.clone()).await, StatusCode::OK);
    // Swapped token kinds are refused.
    assert_eq!(
        call("/orders", id_admin.clone()).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call("/profile", access.clone()).await,
        StatusCode::UNAUTHORIZED
    );
    // Groups are any-of; scopes too.
    assert_eq!(call("/admin", id_user).await, StatusCode::FORBIDDEN);
    assert_eq!(
        call("/orders", access_without_scope).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call("/orders", access_other_client).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        *urls.lock().unwrap(),
        [format!("{POOL_ISSUER}/.well-known/jwks.json")]
    );

    for (region, pool) in [
        ("eu-west-1", "us-east-1_AbC123"),
        ("eu-west-1", "eu-west-1_"),
        ("xx", "xx_1"),
    ] {
        let error = JwtAuthorizer::cognito(region, pool)
            .audience("client-1")
            .build()
            .unwrap_err();
        assert_eq!(error.field(), "jwt.cognito.user_pool_id", "{pool}");
    }
}

#[tokio::test]
async fn authorizers_from_the_config_file() {
    let server = KeyServer::start().await;
    let signer = Signer::rsa("k1");
    server.serve(jwks_of(&[&signer]));
    let config = tower_gateway::GatewayConfig::from_json(&format!(
        r#"{{
        "stages": [{{ "name": "prod" }}],
        "authorizers": [{{
            "name": "users", "issuer": "{issuer}", "jwks_url": "{url}",
            "audiences": ["{AUDIENCE}"], "algorithms": ["RS256"], "leeway_seconds": 0,
            "required_claims": ["sub"], "groups_claim": "roles"
        }}],
        "routes": [
            {{ "route": "GET /pets", "authorizer": "users" }},
            {{ "route": "GET /admin", "authorizer": "users", "authorization_groups": ["admins"] }},
            {{ "route": "GET /open" }}
        ]
    }}"#,
        issuer = server.base,
        url = server.jwks_url(),
    ))
    .unwrap();
    let app = GatewayBuilder::from_config(config)
        .unwrap()
        .build()
        .unwrap()
        .layer(
            Router::new()
                .route("/pets", get(|| async { "pets" }))
                .route("/admin", get(|| async { "admin" }))
                .route("/open", get(|| async { "open" })),
        );
    // The config's authorizer runs on the system clock: a token valid around now.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("k1".into());
    let claims = json!({"iss": server.base, "aud": AUDIENCE, "sub": "a", "exp": now + 600});
    let token = encode(&header, &claims, &signer.key).unwrap();
    assert_eq!(status(&app, &token).await, StatusCode::OK);
    let request = Request::get("/pets").body(Body::empty()).unwrap();
    assert_eq!(
        app.clone().oneshot(request).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    // The route's groups are read from the configured claim (here a space-separated string).
    let admin = |token: &str| {
        Request::get("/admin")
            .header("authorization", format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap()
    };
    let mut in_group = claims.clone();
    in_group["roles"] = json!("ops admins");
    let in_group = encode(&header, &in_group, &signer.key).unwrap();
    assert_eq!(
        app.clone()
            .oneshot(admin(&in_group))
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        app.clone().oneshot(admin(&token)).await.unwrap().status(),
        StatusCode::FORBIDDEN
    );

    let error = |authorizer: &str| {
        let config = tower_gateway::GatewayConfig::from_json(&format!(
            r#"{{ "stages": [{{ "name": "prod" }}], "authorizers": [{authorizer}] }}"#
        ))
        .unwrap();
        GatewayBuilder::from_config(config)
            .unwrap_err()
            .field()
            .to_owned()
    };
    assert_eq!(
        error(r#"{"name": "a", "issuer": "https://i", "audiences": ["x"]}"#),
        "authorizers[a].keys"
    );
    let groups_without_authorizer = tower_gateway::GatewayConfig::from_json(
        r#"{ "stages": [{ "name": "prod" }],
             "routes": [{ "route": "GET /x", "authorization_groups": ["admins"] }] }"#,
    )
    .unwrap();
    assert_eq!(
        GatewayBuilder::from_config(groups_without_authorizer)
            .unwrap()
            .build()
            .unwrap_err()
            .field(),
        "routes[GET /x].authorization_groups"
    );
    assert_eq!(
        error(
            r#"{"name": "a", "issuer": "https://i", "audiences": ["x"],
                "jwks_url": "https://i/k", "oidc_discovery": true}"#
        ),
        "authorizers[a].keys"
    );
    assert_eq!(
        error(r#"{"name": "a", "jwks_url": "http://i/k", "audiences": ["x"]}"#),
        "authorizers[a].issuer"
    );
    assert_eq!(
        error(
            r#"{"name": "a", "issuer": "https://i", "audiences": ["x"],
                "cognito": {"region": "eu-west-1", "user_pool_id": "eu-west-1_A1"}}"#
        ),
        "authorizers[a].issuer"
    );
    assert_eq!(
        error(r#"{"name": "a", "issuer": "https://i", "jwks_url": "http://i/k"}"#),
        "authorizers[a].audience"
    );
    // A config file cannot point a Cognito pool at other keys (the override is for tests, in
    // code), nor stretch the leeway past 5 minutes.
    assert_eq!(
        error(
            r#"{"name": "a", "audiences": ["x"], "jwks_url": "http://localhost/k",
                "cognito": {"region": "eu-west-1", "user_pool_id": "eu-west-1_A1"}}"#
        ),
        "authorizers[a].keys"
    );
    assert_eq!(
        error(
            r#"{"name": "a", "issuer": "https://i", "audiences": ["x"],
                "jwks_url": "http://i/k", "leeway_seconds": 86400}"#
        ),
        "authorizers[a].leeway"
    );
    assert!(
        tower_gateway::GatewayConfig::from_json(
            r#"{"authorizers": [{"name": "a", "algorithms": ["none"]}]}"#
        )
        .is_err()
    );
}

#[tokio::test]
async fn a_key_replaced_under_the_same_kid_invalidates_its_cached_tokens() {
    const EC2_PRIVATE: &[u8] = include_bytes!("support/keys/ec2_private.pem");
    let server = KeyServer::start().await;
    let first = Signer::ec("k");
    let replacement = Signer {
        key: EncodingKey::from_ec_pem(EC2_PRIVATE).unwrap(),
        algorithm: Algorithm::ES256,
        kid: "k",
    };
    server.serve(jwks_of(&[&first]));
    let clock = ManualClock::starting_at(NOW);
    let authorizer = remote(&server, &clock).build().unwrap();
    let app = gateway(authorizer.clone());
    let cached = first.token(&server.base, "a");
    assert_eq!(status(&app, &cached).await, StatusCode::OK);
    assert_eq!(status(&app, &cached).await, StatusCode::OK);

    // The issuer replaces the key (say it leaked) and keeps the kid.
    server.serve(jwks_of(&[&replacement]));
    assert_eq!(authorizer.refresh_keys().await, Ok(1));
    assert_eq!(status(&app, &cached).await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        status(&app, &replacement.token(&server.base, "b")).await,
        StatusCode::OK
    );
}

#[tokio::test]
async fn symmetric_keys_in_a_remote_jwks_are_never_used() {
    let server = KeyServer::start().await;
    let secret = b"a-secret-anyone-reading-the-jwks-would-know";
    let hmac = Signer {
        key: EncodingKey::from_secret(secret),
        algorithm: Algorithm::HS256,
        kid: "shared",
    };
    server.serve(jwks_of(&[&hmac, &Signer::rsa("rsa")]));
    let clock = ManualClock::starting_at(NOW);
    let authorizer = remote(&server, &clock).build().unwrap();
    assert_eq!(
        authorizer.refresh_keys().await,
        Ok(1),
        "only the RSA key is kept"
    );
    let app = gateway(authorizer);
    assert_eq!(
        status(&app, &hmac.token(&server.base, "a")).await,
        StatusCode::UNAUTHORIZED
    );
}
