//! Authorizers in the gateway: what a JWT authorizer (HS256, RS256, ES256) adds to a request
//! when the token is in its verified-token cache (budget ≤ 300 ns), what a signature check
//! costs when it is not, and what a custom authorizer's cache hit adds.
//!
//! ```text
//! cargo bench --bench authorizer
//! ```
//!
//! Gateways that differ only in their route's authorizer are called in process with an inner
//! service that answers at once. For the cached paths they take turns in chunks of 20,000
//! requests for 15 rounds, cycling through 1,000 callers' tokens, so that the machine's drift
//! falls on all of them alike; the figures are medians over the rounds, and each authorizer's
//! cost is its difference from the gateway without one. Cold checks (token cache off) are
//! timed over fewer requests: they take microseconds.

mod support;

use support::{Body, median, time_requests};

use http::{Method, Request, Response};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use tower::{Layer, ServiceExt, service_fn};
use tower_gateway::authorizer::custom::{
    AuthorizerRequest, AuthorizerResponse, CustomAuthorizer, Policy,
};
use tower_gateway::authorizer::jwt::{JwtAlgorithm, JwtAuthorizer};
use tower_gateway::body::RequestBody;
use tower_gateway::{GatewayBuilder, Route, Stage};

const CHUNK: usize = 20_000;
const ROUNDS: usize = 15;
const CALLERS: usize = 1_000;
const SECRET: &[u8] = b"a-bench-secret-of-at-least-32-bytes-long";
const RSA_PRIVATE: &[u8] = include_bytes!("../tests/support/keys/rsa_private.pem");
const RSA_PUBLIC: &[u8] = include_bytes!("../tests/support/keys/rsa_public.pem");
const EC_PRIVATE: &[u8] = include_bytes!("../tests/support/keys/ec_private.pem");
const EC_PUBLIC: &[u8] = include_bytes!("../tests/support/keys/ec_public.pem");

type Inner = tower::util::ServiceFn<
    fn(
        Request<RequestBody<Body>>,
    ) -> std::future::Ready<Result<Response<String>, std::convert::Infallible>>,
>;

fn inner() -> Inner {
    service_fn(support::ok_service as fn(_) -> _)
}

fn requests(tokens: &[String]) -> Vec<Request<Body>> {
    tokens
        .iter()
        .map(|token| {
            Request::get("/pets")
                .header("authorization", format!("Bearer {token}"))
                .body(Body::new())
                .unwrap()
        })
        .collect()
}

fn jwt(algorithm: Algorithm, key: &EncodingKey, kid: Option<&str>, caller: usize) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 24 * 3600;
    let claims = serde_json::json!({
        "iss": "https://issuer.example.com", "aud": "pets-api", "sub": format!("user-{caller}"),
        "scope": "pets/read pets/write", "exp": exp,
    });
    let mut header = Header::new(algorithm);
    header.kid = kid.map(str::to_owned);
    encode(&header, &claims, key).unwrap()
}

fn jwt_gateway(cache_bytes: u64) -> tower_gateway::GatewayService<Inner> {
    let authorizer = JwtAuthorizer::builder()
        .issuer("https://issuer.example.com")
        .audience("pets-api")
        .pem_key_with_id("rsa", JwtAlgorithm::RS256, RSA_PUBLIC)
        .pem_key_with_id("ec", JwtAlgorithm::ES256, EC_PUBLIC)
        .hmac_secret(JwtAlgorithm::HS256, SECRET)
        .token_cache_bytes(cache_bytes)
        .build()
        .unwrap();
    GatewayBuilder::new()
        .stage(Stage::builder("prod").build().unwrap())
        .jwt_authorizer("users", authorizer)
        .route(
            Route::new(Method::GET, "/pets")
                .authorizer("users")
                .authorization_scopes(["pets/read"]),
        )
        .build()
        .unwrap()
        .layer(inner())
}

fn custom_gateway() -> tower_gateway::GatewayService<Inner> {
    let authorizer = CustomAuthorizer::token(|request: AuthorizerRequest| async move {
        Ok(AuthorizerResponse::policy(
            request.token().unwrap_or_default().to_owned(),
            Policy::new().allow("prod/GET/*"),
        )
        .context("tier", "gold"))
    })
    .build()
    .unwrap();
    GatewayBuilder::new()
        .stage(Stage::builder("prod").build().unwrap())
        .custom_authorizer("tokens", authorizer)
        .route(Route::new(Method::GET, "/pets").authorizer("tokens"))
        .build()
        .unwrap()
        .layer(inner())
}

fn bare_gateway() -> tower_gateway::GatewayService<Inner> {
    GatewayBuilder::new()
        .stage(Stage::builder("prod").build().unwrap())
        .route(Route::new(Method::GET, "/pets"))
        .build()
        .unwrap()
        .layer(inner())
}

fn main() {
    let keys = [
        (
            "HS256",
            Algorithm::HS256,
            EncodingKey::from_secret(SECRET),
            None,
        ),
        (
            "RS256",
            Algorithm::RS256,
            EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap(),
            Some("rsa"),
        ),
        (
            "ES256",
            Algorithm::ES256,
            EncodingKey::from_ec_pem(EC_PRIVATE).unwrap(),
            Some("ec"),
        ),
    ];
    let jwt_requests: Vec<(&str, Vec<Request<Body>>)> = keys
        .iter()
        .map(|(label, algorithm, key, kid)| {
            let tokens: Vec<String> = (0..CALLERS)
                .map(|caller| jwt(*algorithm, key, *kid, caller))
                .collect();
            (*label, requests(&tokens))
        })
        .collect();
    let custom_requests = requests(
        &(0..CALLERS)
            .map(|caller| format!("session-{caller:06}"))
            .collect::<Vec<_>>(),
    );

    // Cached paths, interleaved.
    let mut bare = bare_gateway();
    let mut cached = jwt_gateway(16 * 1024 * 1024);
    let mut custom = custom_gateway();
    // The custom authorizer's first call per caller waits for its function: warm it on a
    // runtime, so that every benched request is a cache hit.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for request in &custom_requests {
        let response = runtime
            .block_on(custom.clone().oneshot(request.clone()))
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let mut timings: Vec<Vec<f64>> = vec![Vec::new(); 5];
    for round in 0..=ROUNDS {
        let mut chunk = Vec::with_capacity(5);
        chunk.push(time_requests(&mut bare, &jwt_requests[0].1, CHUNK));
        for (_, requests) in &jwt_requests {
            chunk.push(time_requests(&mut cached, requests, CHUNK));
        }
        chunk.push(time_requests(&mut custom, &custom_requests, CHUNK));
        // The first round warms the caches (and verifies each token once).
        if round > 0 {
            for (timing, nanos) in timings.iter_mut().zip(chunk) {
                timing.push(nanos);
            }
        }
    }
    let medians: Vec<f64> = timings.into_iter().map(median).collect();
    let none = medians[0];
    println!("gateway request without an authorizer: {none:.0} ns");
    for (index, (label, _)) in jwt_requests.iter().enumerate() {
        let with = medians[index + 1];
        println!(
            "JWT {label}, cached token: {with:.0} ns, +{:.0} ns ({:.2}x) (budget +300 ns)",
            with - none,
            with / none
        );
    }
    let with = medians[4];
    println!(
        "custom authorizer, cache hit with a policy: {with:.0} ns, +{:.0} ns ({:.2}x)",
        with - none,
        with / none
    );

    // Cold checks: every request verifies its signature.
    let mut cold = jwt_gateway(0);
    for (label, requests) in &jwt_requests {
        let count = if *label == "HS256" { CHUNK } else { 500 };
        let nanos = median(
            (0..3)
                .map(|_| time_requests(&mut cold, requests, count))
                .collect(),
        );
        println!(
            "JWT {label}, signature checked (token cache off): {:.1} µs per request",
            (nanos - none) / 1000.0
        );
    }
}
