//! The first example to run: an axum pets API behind the gateway.
//!
//! ```text
//! cargo run --example quickstart            # listens on 127.0.0.1:3000 (PORT overrides)
//! ```
//!
//! Stage `prod` is selected by the base path (`/prod/pets` reaches the router as `/pets`) and
//! carries the stage variable `greeting=hello`. Only the declared routes are open: any other
//! path under `/prod`, or another stage, gets API Gateway's
//! `403 {"message":"Missing Authentication Token"}`. `GET /pets` and `GET /pets/{petId}` need
//! the API key printed at start in `x-api-key`; without it they answer
//! `403 {"message":"Forbidden"}`. The key is in usage plan `demo` (5 requests/s, bursts of 10,
//! 1000 requests a day): a burst of 15 gets `429 {"message":"Too Many Requests"}` with
//! `Retry-After` once the bucket is empty.
//!
//! Stage `prod` has a response cache, and `GET /pets/{petId}` keeps its responses for 60 s,
//! keyed by `petId` (and by the caller's API key, as the route requires one): the first
//! request says `x-cache: miss`, the next one `x-cache: hit` with its `Age`.
//!
//! `POST /pets` validates its body against the `Pet` model (`name` a string and required,
//! `type` one of dog, cat, fish, bird, `price` a number ≥ 0): a bad body gets
//! `400 {"message":"Invalid request body"}` with the reason in `validationErrorString`, a
//! good one reaches the handler (201 with the stored pet).
//!
//! `GET /me` and `DELETE /pets/{petId}` need a JWT from the issuer `https://quickstart.local`
//! (HS256, with a secret made at start). The example prints a token valid for an hour with the
//! scope `pets/read`: `/me` answers 200 with its claims, a tampered token gets 401 with
//! `WWW-Authenticate: Bearer error="invalid_token"`, and `DELETE /pets/1`, which needs the
//! scope `pets/admin`, gets 403.
//!
//! Stage `prod` runs a canary: one request in ten sees `greeting=hola` instead of `hello`.
//! `GET /stage` shows which release served it (also in the `x-gateway-release` header), and
//! `x-canary: canary` forces the canary (a header for testing, turned on here).
//! `POST /admin/promote` promotes the canary (every request then sees `hola`) and
//! `POST /admin/rollback` undoes that, while the server runs; these two routes are mounted
//! beside the gated router, outside the gateway, and only listen on loopback.
//!
//! Every request writes one access-log line to stdout (API Gateway's JSON preset), and
//! `GET /metrics` (beside the gateway too) serves the gateway's metrics in Prometheus' text
//! format: `gateway_requests_total`, `gateway_4xx_errors_total`, `gateway_latency_seconds`, …
//! labelled by stage, route template, method and release.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use jsonwebtoken::{EncodingKey, Header};
use rand::{RngCore, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tower::Layer;
use tower_gateway::api_key::{ApiKey, InMemoryApiKeyStore};
use tower_gateway::authorizer::jwt::{JwtAlgorithm, JwtAuthorizer};
use tower_gateway::cache::{CacheSettings, RouteCacheSettings};
use tower_gateway::canary::CanarySettings;
use tower_gateway::extract::Claims;
use tower_gateway::gateway::Deployments;
use tower_gateway::observe::{ACCESS_LOG_TARGET, AccessLog};
use tower_gateway::route::ThrottleSettings;
use tower_gateway::usage_plan::{Quota, QuotaPeriod, UsagePlan};
use tower_gateway::validate::{RequestParameter, Validator};
use tower_gateway::{
    ConfigError, GatewayBuilder, RequestContext, Route, Stage, StageSelection, StageVariables,
};

#[derive(Clone, Serialize, Deserialize)]
struct Pet {
    #[serde(default)]
    id: u64,
    name: String,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    price: Option<f64>,
}

type Pets = Arc<Mutex<BTreeMap<u64, Pet>>>;

async fn list_pets(State(pets): State<Pets>) -> Json<Vec<Pet>> {
    let pets = pets.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    Json(pets.values().cloned().collect())
}

async fn get_pet(
    State(pets): State<Pets>,
    Path(id): Path<String>,
) -> Result<Json<Pet>, (StatusCode, Json<Value>)> {
    let pets = pets.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    id.parse()
        .ok()
        .and_then(|id: u64| pets.get(&id).cloned())
        .map(Json)
        .ok_or((
            StatusCode::NOT_FOUND,
            Json(json!({"message": format!("no pet {id}")})),
        ))
}

async fn create_pet(State(pets): State<Pets>, Json(mut pet): Json<Pet>) -> (StatusCode, Json<Pet>) {
    let mut pets = pets.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    pet.id = pets.keys().next_back().map_or(1, |last| last + 1);
    pets.insert(pet.id, pet.clone());
    (StatusCode::CREATED, Json(pet))
}

async fn delete_pet(State(pets): State<Pets>, Path(id): Path<String>) -> StatusCode {
    let mut pets = pets.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    match id.parse().ok().and_then(|id: u64| pets.remove(&id)) {
        Some(_) => StatusCode::NO_CONTENT,
        None => StatusCode::NOT_FOUND,
    }
}

/// The caller's verified claims, as the JWT authorizer put them in the request.
async fn me(Claims(claims): Claims<Value>) -> Json<Value> {
    Json(claims)
}

/// A token from the quickstart's issuer, valid for an hour.
fn demo_token(secret: &[u8], scope: &str) -> Result<String, jsonwebtoken::errors::Error> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    let claims = json!({
        "iss": ISSUER, "aud": "pets-api", "sub": "demo-user", "scope": scope,
        "iat": now, "exp": now + 3600,
    });
    jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret),
    )
}

const ISSUER: &str = "https://quickstart.local";

async fn stage(context: RequestContext, variables: StageVariables) -> Json<Value> {
    Json(json!({
        "stage": context.stage().map(|stage| stage.name()),
        "release": context.release().as_str(),
        "variables": variables,
        "path": context.path(),
        "resourcePath": context.resource_path(),
        "apiKeyId": context.api_key_id(),
        "requestId": context.request_id().as_str(),
    }))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = match std::env::var("PORT") {
        Ok(port) => port
            .parse()
            .map_err(|_| format!("PORT={port} is not a port number"))?,
        Err(_) => 3000,
    };

    // The access log goes to stdout, one JSON object a line and nothing else; the metrics go
    // to a Prometheus recorder, installed before the gateway serves.
    {
        use tracing_subscriber::prelude::*;
        let access_log = tracing_subscriber::fmt::layer()
            .without_time()
            .with_target(false)
            .with_level(false)
            .with_ansi(false)
            // The access log's lines come escaped (see `AccessLog`).
            .with_ansi_sanitization(false)
            .with_filter(
                tracing_subscriber::filter::Targets::new()
                    .with_target(ACCESS_LOG_TARGET, tracing::Level::INFO),
            );
        tracing_subscriber::registry().with(access_log).init();
    }
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;

    // A demo key: the store keeps only its digest, so this is the one time it can be printed.
    let api_keys = InMemoryApiKeyStore::new();
    let (demo_key, demo_value) = ApiKey::generate("demo");
    api_keys.insert(demo_key.id("demo"))?;

    // The JWT issuer's secret: made at start, so the tokens printed below only work on this
    // run.
    let mut secret = [0u8; 32];
    rand::rngs::StdRng::from_os_rng().fill_bytes(&mut secret);
    let users = JwtAuthorizer::builder()
        .issuer(ISSUER)
        .audience("pets-api")
        .hmac_secret(JwtAlgorithm::HS256, secret)
        .build()?;
    let token = demo_token(&secret, "pets/read")?;

    // One request in ten goes to the canary, which overrides `greeting`.
    let canary = CanarySettings::new(10.0)
        .variable_override("greeting", "hola")
        .force_header("x-canary");
    let prod = Stage::builder("prod")
        .variable("greeting", "hello")
        .cache(CacheSettings::new())
        .canary(canary)
        .build()?;
    let gateway = GatewayBuilder::new()
        .stage(prod)
        .stage_selection(StageSelection::BasePath)
        .route(Route::new(Method::GET, "/pets").api_key_required(true))
        // Each pet is cached for 60 s (per API key, as the route requires one).
        .route(
            Route::new(Method::GET, "/pets/{petId}")
                .api_key_required(true)
                .cache(
                    RouteCacheSettings::new()
                        .ttl_seconds(60)
                        .key_parameter(RequestParameter::path("petId")),
                ),
        )
        // The body of a new pet is validated before the handler sees it.
        .request_validator("all", Validator::all())
        .model(
            "Pet",
            json!({
                "$schema": "http://json-schema.org/draft-04/schema#",
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": { "type": "string", "minLength": 1 },
                    "type": { "type": "string", "enum": ["dog", "cat", "fish", "bird"] },
                    "price": { "type": "number", "minimum": 0 }
                }
            }),
        )
        .expose_validation_errors(true)
        .route(
            Route::new(Method::POST, "/pets")
                .validator("all")
                .request_model("application/json", "Pet"),
        )
        .route(Route::new(Method::GET, "/stage"))
        .jwt_authorizer("users", users)
        .route(Route::new(Method::GET, "/me").authorizer("users"))
        .route(
            Route::new(Method::DELETE, "/pets/{petId}")
                .authorizer("users")
                .authorization_scopes(["pets/admin"]),
        )
        .api_key_store(api_keys)
        // The demo key's plan: 5 requests/s with bursts of 10, and 1000 requests a day.
        .usage_plan(
            UsagePlan::builder("demo")
                .stage("prod")
                .throttle(ThrottleSettings {
                    rate: 5.0,
                    burst: 10,
                })
                .quota(Quota::new(1000, QuotaPeriod::Day))
                .key("demo")
                .build()?,
        )
        .access_log(AccessLog::json())
        .build()?;

    let pets: Pets = Arc::new(Mutex::new(BTreeMap::from([
        (
            1,
            Pet {
                id: 1,
                name: "Rex".into(),
                kind: Some("dog".into()),
                price: Some(249.99),
            },
        ),
        (
            2,
            Pet {
                id: 2,
                name: "Tom".into(),
                kind: Some("cat".into()),
                price: Some(124.99),
            },
        ),
        (
            3,
            Pet {
                id: 3,
                name: "Nemo".into(),
                kind: Some("fish".into()),
                price: Some(0.99),
            },
        ),
    ])));
    let router = Router::new()
        .route("/pets", get(list_pets).post(create_pet))
        .route("/pets/{petId}", get(get_pet).delete(delete_pet))
        .route("/me", get(me))
        .route("/stage", get(stage))
        .with_state(pets);
    // The gateway wraps the whole router so that it can strip `/prod` before axum routes. The
    // admin routes sit beside it, outside the gateway.
    let deployments = gateway.deployments();
    let admin = |change: fn(&Deployments) -> Result<String, ConfigError>| {
        let deployments = deployments.clone();
        post(move || async move {
            match change(&deployments) {
                Ok(done) => (StatusCode::OK, done),
                Err(error) => (StatusCode::CONFLICT, error.to_string()),
            }
        })
    };
    let app = Router::new()
        .route("/metrics", get(move || async move { prometheus.render() }))
        .route(
            "/admin/promote",
            admin(|deployments| {
                let id = deployments.promote()?;
                Ok(format!("promoted: deployment {id} serves every request\n"))
            }),
        )
        .route(
            "/admin/rollback",
            admin(|deployments| {
                deployments.rollback()?;
                Ok(format!(
                    "rolled back to deployment {}\n",
                    deployments.current()
                ))
            }),
        )
        .fallback_service(gateway.layer(router));

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let base = format!("http://{}", listener.local_addr()?);
    println!("tower-gateway quickstart listening on {base} (stage `prod`, greeting=hello)");
    println!("demo API key (id `demo`): {demo_value}\n");
    println!(
        "# 200 with the key, 403 {{\"message\":\"Forbidden\"}} without it: routes that require an API key"
    );
    println!("curl -i {base}/prod/pets -H 'x-api-key: {demo_value}'");
    println!("curl -i {base}/prod/pets/1 -H 'x-api-key: {demo_value}'");
    println!("curl -i {base}/prod/pets");
    println!(
        "# usage plan `demo` (5/s, burst 10, 1000/day): a burst of 15 gets 429 Too Many Requests after ~10"
    );
    println!(
        "for i in $(seq 15); do curl -s -o /dev/null -w '%{{http_code}} ' {base}/prod/pets -H 'x-api-key: {demo_value}'; done; echo"
    );
    println!(
        "# request validation on POST /pets: 201 for a good pet; 400 Invalid request body for a \
         missing name, an unknown type or a negative price; 415 for text/plain"
    );
    println!(
        "curl -i -X POST {base}/prod/pets -H 'content-type: application/json' \
         -d '{{\"name\":\"Kiki\",\"type\":\"bird\",\"price\":19.5}}'"
    );
    println!(
        "curl -i -X POST {base}/prod/pets -H 'content-type: application/json' \
         -d '{{\"type\":\"dragon\",\"price\":-1}}'"
    );
    println!("curl -i -X POST {base}/prod/pets -H 'content-type: text/plain' -d 'Kiki'");
    println!(
        "# JWT: 200 with the token's claims; 401 with a tampered token; 403 without the scope"
    );
    println!("curl -i {base}/prod/me -H 'authorization: Bearer {token}'");
    println!("curl -i {base}/prod/me -H 'authorization: Bearer {token}x'");
    println!("curl -i -X DELETE {base}/prod/pets/1 -H 'authorization: Bearer {token}'");
    println!(
        "# response cache on GET /pets/{{petId}} (60 s, keyed by petId): x-cache: miss, then x-cache: hit with Age"
    );
    println!(
        "curl -s -D - -o /dev/null {base}/prod/pets/2 -H 'x-api-key: {demo_value}' | grep -i -E '^(x-cache|age):'"
    );
    println!(
        "curl -s -D - -o /dev/null {base}/prod/pets/2 -H 'x-api-key: {demo_value}' | grep -i -E '^(x-cache|age):'"
    );
    println!(
        "# 200: the stage, the release and the variables a handler sees: greeting=hello, or \
         greeting=hola for the 10% canary"
    );
    println!("curl -i {base}/prod/stage");
    println!("# the canary, forced; then promoted (everyone sees hola) and rolled back");
    println!("curl -i {base}/prod/stage -H 'x-canary: canary'");
    println!("curl -i -X POST {base}/admin/promote");
    println!("curl -i -X POST {base}/admin/rollback");
    println!(
        "# the gateway's metrics in Prometheus' format (every request above also wrote a JSON \
         access-log line to this terminal)"
    );
    println!("curl -s {base}/metrics | grep '^gateway_'");
    println!(
        "# 403 {{\"message\":\"Missing Authentication Token\"}}: a route or stage the gateway does not know"
    );
    println!("curl -i {base}/prod/admin");
    println!("curl -i -X PUT {base}/prod/pets/1");
    println!("curl -i {base}/dev/pets");

    let make_service =
        axum::ServiceExt::<axum::extract::Request>::into_make_service_with_connect_info::<SocketAddr>(
            app,
        );
    axum::serve(listener, make_service).await?;
    Ok(())
}
