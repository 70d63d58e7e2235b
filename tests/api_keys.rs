//! API keys in the gateway and on their own.

mod support;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::{HeaderValue, Method, Request, StatusCode};
use serde_json::json;
use support::{get as get_request, json, text};
use tower::{Layer, ServiceBuilder, ServiceExt};
use tower_gateway::api_key::{ApiKey, ApiKeyLayer, ApiKeySource, InMemoryApiKeyStore, KeyDigest};
use tower_gateway::{GatewayBuilder, GatewayConfig, GatewayService, RequestContext, Route, Stage};

const ALICE: &str = "alice-key-0123456789abcdef";
const BOB: &str = "bob-key-0123456789abcdefgh";

fn store() -> InMemoryApiKeyStore {
    let store = InMemoryApiKeyStore::new();
    store
        .insert(ApiKey::new("alice", ALICE).id("alice").customer_id("acme"))
        .unwrap();
    store.insert(ApiKey::new("bob", BOB).id("bob")).unwrap();
    store
}

fn router() -> Router {
    let who = |context: RequestContext| async move {
        context.api_key_id().unwrap_or("anonymous").to_owned()
    };
    Router::new()
        .route("/pets", get(who))
        .route("/pets/{petId}", get(who))
        .route("/health", get(who))
}

fn gateway(store: InMemoryApiKeyStore) -> GatewayService<Router> {
    GatewayBuilder::new()
        .stage(Stage::builder("prod").build().unwrap())
        .route(Route::new(Method::GET, "/pets").api_key_required(true))
        .route(Route::new(Method::GET, "/pets/{petId}").api_key_required(true))
        .route(Route::new(Method::GET, "/health"))
        .api_key_store(store)
        .build()
        .unwrap()
        .layer(router())
}

fn with_key(path: &str, key: &str) -> Request<Body> {
    Request::get(path)
        .header("x-api-key", key)
        .body(Body::empty())
        .unwrap()
}

#[tokio::test]
async fn required_routes_need_a_valid_key_and_record_its_id() {
    let app = gateway(store());
    let ok = app
        .clone()
        .oneshot(with_key("/pets/1", ALICE))
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(text(ok).await, "alice");

    let missing = app.clone().oneshot(get_request("/pets")).await.unwrap();
    assert_eq!(missing.status(), StatusCode::FORBIDDEN);
    assert_eq!(json(missing).await, json!({"message": "Forbidden"}));

    let unknown = app
        .clone()
        .oneshot(with_key("/pets", "nobody-0123456789abcdefgh"))
        .await
        .unwrap();
    assert_eq!(unknown.status(), StatusCode::FORBIDDEN);

    let open = app.oneshot(get_request("/health")).await.unwrap();
    assert_eq!(
        open.status(),
        StatusCode::OK,
        "routes without api_key_required stay open"
    );
    assert_eq!(text(open).await, "anonymous");
}

#[tokio::test]
async fn keys_change_at_runtime_without_rebuilding() {
    let keys = store();
    let app = gateway(keys.clone());
    keys.set_enabled("alice", false).unwrap();
    let disabled = app.clone().oneshot(with_key("/pets", ALICE)).await.unwrap();
    assert_eq!(disabled.status(), StatusCode::FORBIDDEN);
    keys.set_enabled("alice", true).unwrap();
    assert_eq!(
        app.clone()
            .oneshot(with_key("/pets", ALICE))
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );

    keys.remove("bob").unwrap();
    assert_eq!(
        app.clone()
            .oneshot(with_key("/pets", BOB))
            .await
            .unwrap()
            .status(),
        StatusCode::FORBIDDEN
    );

    let (carol, value) = ApiKey::generate("carol");
    keys.insert(carol.id("carol")).unwrap();
    let response = app.oneshot(with_key("/pets", &value)).await.unwrap();
    assert_eq!(text(response).await, "carol");
}

#[tokio::test]
async fn malformed_keys_are_forbidden_without_panicking() {
    let app = gateway(store());
    let mut cases: Vec<Request<Body>> = vec![
        with_key("/pets", ""),
        with_key("/pets", "short"),
        with_key("/pets", &"k".repeat(129)),
        with_key("/pets", &format!("{ALICE} ")),
        with_key("/pets", "with spaces 0123456789abcdef"),
    ];
    let mut non_ascii = get_request("/pets");
    non_ascii.headers_mut().insert(
        "x-api-key",
        HeaderValue::from_bytes("alice-key-0123456789abcdéf".as_bytes()).unwrap(),
    );
    cases.push(non_ascii);
    let mut twice = with_key("/pets", ALICE);
    twice
        .headers_mut()
        .append("x-api-key", HeaderValue::from_static(ALICE));
    cases.push(twice);
    let mut wrong_header = get_request("/pets");
    wrong_header
        .headers_mut()
        .insert("x-api-keys", HeaderValue::from_static(ALICE));
    cases.push(wrong_header);
    let mut huge = get_request("/pets");
    huge.headers_mut().insert(
        "x-api-key",
        HeaderValue::from_str(&"k".repeat(100_000)).unwrap(),
    );
    cases.push(huge);
    for request in cases {
        let response = app.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        let body = text(response).await;
        assert!(!body.contains(ALICE), "the key is never echoed");
        assert_eq!(body, r#"{"message":"Forbidden"}"#);
    }
}

#[tokio::test]
async fn the_key_source_can_be_an_authorizer() {
    // A stand-in for an authorizer: it finds the caller's key somewhere else (here a bearer
    // token) and records it as the usage identifier.
    let authorizer = tower::util::MapRequestLayer::new(|mut request: Request<Body>| {
        let context = RequestContext::get_or_insert(&mut request);
        if let Some(token) = request
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
        {
            assert!(context.set_usage_identifier_key(token.trim_start_matches("Bearer ")));
        }
        request
    });
    let api_keys = ApiKeyLayer::builder(store())
        .source(ApiKeySource::Authorizer)
        .build()
        .unwrap();
    let app = ServiceBuilder::new()
        .layer(authorizer)
        .layer(api_keys)
        .service(router());
    let ok = Request::get("/pets")
        .header("authorization", format!("Bearer {BOB}"))
        .header("x-api-key", "ignored-0123456789abcdefghij")
        .body(Body::empty())
        .unwrap();
    let response = app.clone().oneshot(ok).await.unwrap();
    assert_eq!(text(response).await, "bob");
    let header_only = with_key("/pets", ALICE);
    assert_eq!(
        app.oneshot(header_only).await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn standalone_layer_with_a_custom_header() {
    let layer = ApiKeyLayer::builder(store())
        .header_name("x-token")
        .build()
        .unwrap();
    let app = layer.layer(router());
    let ok = Request::get("/health")
        .header("x-token", BOB)
        .body(Body::empty())
        .unwrap();
    assert_eq!(text(app.clone().oneshot(ok).await.unwrap()).await, "bob");
    let response = app.oneshot(with_key("/health", BOB)).await.unwrap();
    assert_eq!(
        response.status(),
        StatusCode::FORBIDDEN,
        "no route: every request needs a key"
    );
    assert!(
        ApiKeyLayer::builder(store())
            .header_name("bad header")
            .build()
            .is_err()
    );
}

#[tokio::test]
async fn config_loads_keys_by_value_or_digest() {
    // The hex digest as `sha256sum` prints it, computed without the crate.
    let digest_of_bob = sha2_hex::hex_sha256(BOB);
    assert_eq!(
        KeyDigest::from_hex(&digest_of_bob),
        Some(KeyDigest::of(BOB.as_bytes()))
    );
    let config = format!(
        r#"{{
        "stages": [{{ "name": "prod" }}],
        "routes": [{{ "route": "GET /pets", "api_key_required": true }}],
        "api_keys": {{ "keys": [
            {{ "id": "alice", "name": "alice", "value": "{ALICE}" }},
            {{ "id": "bob", "name": "bob", "value_sha256": "{digest_of_bob}" }},
            {{ "id": "off", "name": "off", "value": "disabled-0123456789abcdef", "enabled": false }}
        ] }}
    }}"#
    );
    let gateway = GatewayBuilder::from_config(GatewayConfig::from_json(&config).unwrap())
        .unwrap()
        .build()
        .unwrap();
    let app = gateway.layer(router());
    assert_eq!(
        text(app.clone().oneshot(with_key("/pets", ALICE)).await.unwrap()).await,
        "alice"
    );
    assert_eq!(
        text(app.clone().oneshot(with_key("/pets", BOB)).await.unwrap()).await,
        "bob"
    );
    let off = app
        .oneshot(with_key("/pets", "disabled-0123456789abcdef"))
        .await
        .unwrap();
    assert_eq!(off.status(), StatusCode::FORBIDDEN);
}

#[test]
fn config_errors_for_keys() {
    let cases = [
        (r#"{"value": "short"}"#, "api_keys[k].value"),
        (
            r#"{"value_sha256": "nothex"}"#,
            "api_keys.keys[0].value_sha256",
        ),
        (r#""#, "api_keys.keys[0]"),
        (
            r#"{"value": "alice-key-0123456789abcdef", "value_sha256": "0000000000000000000000000000000000000000000000000000000000000000"}"#,
            "api_keys.keys[0]",
        ),
    ];
    for (fields, expected) in cases {
        let separator = if fields.is_empty() { "" } else { "," };
        let fields = fields.trim_start_matches('{').trim_end_matches('}');
        let config = format!(
            r#"{{"stages": [{{"name": "prod"}}], "routes": [{{"route": "GET /a"}}],
               "api_keys": {{"keys": [{{"id": "k", "name": "k"{separator}{fields}}}]}}}}"#
        );
        let error = GatewayConfig::from_json(&config)
            .and_then(GatewayBuilder::from_config)
            .unwrap_err();
        assert_eq!(error.field(), expected, "{config}: {error}");
        assert!(!error.to_string().contains("alice-key"), "{error}");
    }
    let no_store = GatewayBuilder::new()
        .stage(Stage::builder("prod").build().unwrap())
        .route(Route::new(Method::GET, "/pets").api_key_required(true))
        .build()
        .unwrap_err();
    assert_eq!(no_store.field(), "routes[GET /pets].api_key_required");
    assert!(no_store.rule().contains("no key store"));
}

/// The hex digest, computed independently of the crate.
mod sha2_hex {
    pub fn hex_sha256(text: &str) -> String {
        use sha2::Digest;
        sha2::Sha256::digest(text.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

#[tokio::test]
async fn a_config_built_gateway_can_share_its_key_store() {
    let config = format!(
        r#"{{
        "stages": [{{ "name": "prod" }}],
        "routes": [{{ "route": "GET /pets", "api_key_required": true }}],
        "api_keys": {{ "keys": [{{ "id": "alice", "name": "alice", "value": "{ALICE}" }}] }}
    }}"#
    );
    let keys = InMemoryApiKeyStore::new();
    let gateway = GatewayBuilder::from_config_with_key_store(
        GatewayConfig::from_json(&config).unwrap(),
        keys.clone(),
    )
    .unwrap()
    .build()
    .unwrap();
    let app = gateway.layer(router());
    assert_eq!(
        text(app.clone().oneshot(with_key("/pets", ALICE)).await.unwrap()).await,
        "alice"
    );
    keys.insert(ApiKey::new("bob", BOB).id("bob")).unwrap();
    assert_eq!(
        text(app.clone().oneshot(with_key("/pets", BOB)).await.unwrap()).await,
        "bob"
    );
    keys.set_enabled("alice", false).unwrap();
    assert_eq!(
        app.oneshot(with_key("/pets", ALICE))
            .await
            .unwrap()
            .status(),
        StatusCode::FORBIDDEN
    );
}
