//! Helpers shared by the integration tests.
#![allow(dead_code)]

use axum::body::Body;
use http::{Request, Response};
use http_body_util::BodyExt;

/// A GET request for `uri`.
pub fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

/// The response body as text.
pub async fn text<B>(response: Response<B>) -> String
where
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// The response body as JSON.
pub async fn json<B>(response: Response<B>) -> serde_json::Value
where
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    serde_json::from_str(&text(response).await).unwrap()
}

/// A handler answering with the release that served the request and the `greeting` stage
/// variable it sees, as `"canary hola"`.
pub async fn release_and_greeting(request: Request<Body>) -> String {
    let context = request
        .extensions()
        .get::<tower_gateway::RequestContext>()
        .unwrap();
    let greeting = context.stage_variables().get("greeting").unwrap_or("-");
    format!("{} {greeting}", context.release())
}

/// An HS256 JWT of `claims`, signed with `secret`.
pub fn hs256(secret: &[u8], claims: &serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .unwrap()
}

/// The secret of the tokens [`bearer`] signs and [`jwt_authorizer`] accepts.
pub const JWT_SECRET: &[u8] = b"a-test-secret-of-at-least-32-bytes-long";

/// A JWT authorizer for the tokens of [`bearer`], reading the time from `clock` (the real
/// clock when `None`).
pub fn jwt_authorizer(
    clock: Option<tower_gateway::clock::GatewayClock>,
) -> tower_gateway::authorizer::jwt::JwtAuthorizer {
    use tower_gateway::authorizer::jwt::{JwtAlgorithm, JwtAuthorizer};
    let mut builder = JwtAuthorizer::builder()
        .issuer("https://issuer.example.com")
        .audience("pets-api")
        .hmac_secret(JwtAlgorithm::HS256, JWT_SECRET);
    if let Some(clock) = clock {
        builder = builder.clock(clock);
    }
    builder.build().unwrap()
}

/// An `Authorization` value with an HS256 JWT of `claims` plus the issuer and audience
/// [`jwt_authorizer`] expects.
pub fn bearer(mut claims: serde_json::Value) -> String {
    claims["iss"] = "https://issuer.example.com".into();
    claims["aud"] = "pets-api".into();
    format!("Bearer {}", hs256(JWT_SECRET, &claims))
}

pub mod redis_server;
