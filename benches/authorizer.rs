//! Authorizers in the gateway: JWT verification cold (token cache off) and cached, for HS256,
//! RS256 and ES256, and a custom authorizer's cache hit. Each is measured as a whole gateway
//! request, beside the same gateway on a route without an authorizer (`authorizer/none`): the
//! authorizer's cost is the difference.
//!
//! ```text
//! cargo bench --bench authorizer
//! ```

mod support;

use std::hint::black_box;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::{Method, Request};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_gateway::authorizer::custom::{
    AuthorizerRequest, AuthorizerResponse, CustomAuthorizer, Policy,
};
use tower_gateway::authorizer::jwt::{JwtAlgorithm, JwtAuthorizer};
use tower_gateway::{GatewayBuilder, Route, Stage};

const SECRET: &[u8] = b"a-bench-secret-of-at-least-32-bytes-long";
const RSA_PRIVATE: &[u8] = include_bytes!("../tests/support/keys/rsa_private.pem");
const RSA_PUBLIC: &[u8] = include_bytes!("../tests/support/keys/rsa_public.pem");
const EC_PRIVATE: &[u8] = include_bytes!("../tests/support/keys/ec_private.pem");
const EC_PUBLIC: &[u8] = include_bytes!("../tests/support/keys/ec_public.pem");

fn request(token: &str) -> Request<()> {
    Request::get("/pets")
        .header("authorization", format!("Bearer {token}"))
        .body(())
        .unwrap()
}

fn token(algorithm: Algorithm, key: &EncodingKey, kid: Option<&str>) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 24 * 3600;
    let claims = serde_json::json!({
        "iss": "https://issuer.example.com", "aud": "pets-api", "sub": "user-1",
        "scope": "pets/read pets/write", "exp": exp,
    });
    let mut header = Header::new(algorithm);
    header.kid = kid.map(str::to_owned);
    encode(&header, &claims, key).unwrap()
}

fn jwt_authorizer(cache_bytes: u64) -> JwtAuthorizer {
    JwtAuthorizer::builder()
        .issuer("https://issuer.example.com")
        .audience("pets-api")
        .pem_key_with_id("rsa", JwtAlgorithm::RS256, RSA_PUBLIC)
        .pem_key_with_id("ec", JwtAlgorithm::ES256, EC_PUBLIC)
        .hmac_secret(JwtAlgorithm::HS256, SECRET)
        .token_cache_bytes(cache_bytes)
        .build()
        .unwrap()
}

fn bench_jwt(c: &mut Criterion) {
    let mut bare = GatewayBuilder::new()
        .stage(Stage::builder("prod").build().unwrap())
        .route(Route::new(Method::GET, "/pets"))
        .build()
        .unwrap()
        .layer(service_fn(support::ok_service));
    let tokens = [
        (
            "HS256",
            token(Algorithm::HS256, &EncodingKey::from_secret(SECRET), None),
        ),
        (
            "RS256",
            token(
                Algorithm::RS256,
                &EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap(),
                Some("rsa"),
            ),
        ),
        (
            "ES256",
            token(
                Algorithm::ES256,
                &EncodingKey::from_ec_pem(EC_PRIVATE).unwrap(),
                Some("ec"),
            ),
        ),
    ];
    c.bench_function("authorizer/none", |b| {
        b.iter_batched(
            || request(&tokens[0].1),
            |req| black_box(support::now(bare.call(req))),
            BatchSize::SmallInput,
        )
    });
    for (label, cache_bytes) in [("cached", 16 * 1024 * 1024), ("cold", 0)] {
        let mut guarded = GatewayBuilder::new()
            .stage(Stage::builder("prod").build().unwrap())
            .jwt_authorizer("users", jwt_authorizer(cache_bytes))
            .route(
                Route::new(Method::GET, "/pets")
                    .authorizer("users")
                    .authorization_scopes(["pets/read"]),
            )
            .build()
            .unwrap()
            .layer(service_fn(support::ok_service));
        for (algorithm, token) in &tokens {
            let first = support::now(guarded.call(request(token))).unwrap();
            assert_eq!(first.status(), 200, "{algorithm} must verify");
            c.bench_function(&format!("authorizer/jwt_{label}/{algorithm}"), |b| {
                b.iter_batched(
                    || request(token),
                    |req| black_box(support::now(guarded.call(req))),
                    BatchSize::SmallInput,
                )
            });
        }
    }
}

fn bench_custom(c: &mut Criterion) {
    let authorizer = CustomAuthorizer::token(|request: AuthorizerRequest| async move {
        Ok(AuthorizerResponse::policy(
            request.token().unwrap_or_default().to_owned(),
            Policy::new().allow("prod/GET/*"),
        )
        .context("tier", "gold"))
    })
    .build()
    .unwrap();
    let gateway = GatewayBuilder::new()
        .stage(Stage::builder("prod").build().unwrap())
        .custom_authorizer("tokens", authorizer)
        .route(Route::new(Method::GET, "/pets").authorizer("tokens"))
        .build()
        .unwrap()
        .layer(service_fn(support::ok_service));
    // The first request calls the function (it waits, so it needs a runtime); the benched ones
    // are cache hits, answered at once.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let warm = runtime
        .block_on(gateway.clone().oneshot(request("user-token")))
        .unwrap();
    assert_eq!(warm.status(), 200);
    let mut gateway = gateway;
    c.bench_function("authorizer/custom_cache_hit", |b| {
        b.iter_batched(
            || request("user-token"),
            |req| black_box(support::now(gateway.call(req))),
            BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, bench_jwt, bench_custom);
criterion_main!(benches);
