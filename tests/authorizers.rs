//! The JWT authorizer in the gateway: the security checklist's JWT cases for keys given in the
//! configuration. Time is a manual clock throughout. The keys in `support/keys` are test keys
//! generated for this suite only.

mod support;

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{Method, Request, StatusCode};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde::Deserialize;
use serde_json::{Value, json};
use support::json;
use tower::{Layer, ServiceExt};
use tower_gateway::authorizer::jwt::{JwtAlgorithm, JwtAuthorizer};
use tower_gateway::clock::ManualClock;
use tower_gateway::extract::Claims;
use tower_gateway::{GatewayBuilder, GatewayService, Route, Stage};

const ISSUER: &str = "https://issuer.example.com";
const AUDIENCE: &str = "pets-api";
const SECRET: &[u8] = b"a-test-secret-of-at-least-32-bytes-long";
const RSA_PRIVATE: &[u8] = include_bytes!("support/keys/rsa_private.pem");
const RSA_PUBLIC: &[u8] = include_bytes!("support/keys/rsa_public.pem");
const EC_PRIVATE: &[u8] = include_bytes!("support/keys/ec_private.pem");
const EC_PUBLIC: &[u8] = include_bytes!("support/keys/ec_public.pem");
const ED_PRIVATE: &[u8] = include_bytes!("support/keys/ed25519_private.pem");
/// 2026-03-02T00:00:00Z.
const NOW: u64 = 1_772_409_600;

#[derive(Deserialize)]
struct PetClaims {
    sub: String,
}

fn app(clock: &ManualClock) -> GatewayService<Router> {
    let authorizer = JwtAuthorizer::builder()
        .issuer(ISSUER)
        .audience(AUDIENCE)
        .hmac_secret(JwtAlgorithm::HS256, SECRET)
        .pem_key_with_id("rsa", JwtAlgorithm::RS256, RSA_PUBLIC)
        .pem_key_with_id("ec", JwtAlgorithm::ES256, EC_PUBLIC)
        .clock(clock.clock())
        .build()
        .unwrap();
    let gateway = GatewayBuilder::new()
        .stage(Stage::builder("prod").build().unwrap())
        .jwt_authorizer("users", authorizer)
        .route(Route::new(Method::GET, "/pets").authorizer("users"))
        .route(
            Route::new(Method::GET, "/admin")
                .authorizer("users")
                .authorization_scopes(["pets/admin", "pets/owner"]),
        )
        .route(Route::new(Method::GET, "/open"))
        .build()
        .unwrap();
    let router = Router::new()
        .route(
            "/pets",
            get(|Claims(claims): Claims<PetClaims>| async move { claims.sub }),
        )
        .route("/admin", get(|| async { "admin" }))
        .route(
            "/open",
            get(|claims: Option<Claims<PetClaims>>| async move {
                claims.map_or("anonymous".to_owned(), |Claims(c)| c.sub)
            }),
        );
    gateway.layer(router)
}

fn claims() -> Value {
    json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "exp": NOW + 600, "iat": NOW})
}

fn with(changes: Value) -> Value {
    let mut claims = claims();
    for (name, value) in changes.as_object().unwrap() {
        if value.is_null() {
            claims.as_object_mut().unwrap().remove(name);
        } else {
            claims[name] = value.clone();
        }
    }
    claims
}

fn hs256(claims: &Value) -> String {
    support::hs256(SECRET, claims)
}

fn signed(algorithm: Algorithm, kid: &str, claims: &Value) -> String {
    let key = match algorithm {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap(),
        Algorithm::ES256 => EncodingKey::from_ec_pem(EC_PRIVATE).unwrap(),
        _ => unreachable!("the suite signs RS256 and ES256 only"),
    };
    let mut header = Header::new(algorithm);
    header.kid = Some(kid.to_owned());
    encode(&header, claims, &key).unwrap()
}

fn b64(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

async fn call(
    app: &GatewayService<Router>,
    path: &str,
    authorization: &[&str],
) -> (StatusCode, Option<String>, String) {
    let mut request = Request::get(path);
    for value in authorization {
        request = request.header("authorization", *value);
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|value| value.to_str().unwrap().to_owned());
    let body = axum::body::to_bytes(response.into_body(), 1 << 16)
        .await
        .unwrap();
    (status, challenge, String::from_utf8(body.to_vec()).unwrap())
}

async fn refused(app: &GatewayService<Router>, token: &str, reason: &str) {
    let (status, challenge, body) = call(app, "/pets", &[&format!("Bearer {token}")]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{reason}: {body}");
    let challenge = challenge.expect("a WWW-Authenticate challenge");
    assert!(
        challenge.starts_with("Bearer error=\"invalid_token\""),
        "{reason}: {challenge}"
    );
    assert!(challenge.contains(reason), "{reason}: {challenge}");
    assert!(!challenge.contains(token), "the token is never echoed");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"message": "Unauthorized"})
    );
}

#[tokio::test]
async fn valid_tokens_reach_the_handler_with_their_claims() {
    let clock = ManualClock::starting_at(NOW);
    let app = app(&clock);
    for token in [
        hs256(&claims()),
        signed(Algorithm::RS256, "rsa", &claims()),
        signed(Algorithm::ES256, "ec", &claims()),
    ] {
        let bearer = format!("Bearer {token}");
        let (status, _, body) = call(&app, "/pets", &[&bearer]).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "alice"));
        // A bare token (no scheme) is accepted too.
        let (status, _, _) = call(&app, "/pets", &[&token]).await;
        assert_eq!(status, StatusCode::OK);
    }
    let (status, _, body) = call(&app, "/open", &[]).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "anonymous"));
}

#[tokio::test]
async fn a_missing_token_is_401_with_a_bare_challenge() {
    let app = app(&ManualClock::starting_at(NOW));
    for headers in [&[][..], &["Bearer"], &["Bearer   "]] {
        let (status, challenge, _) = call(&app, "/pets", headers).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(challenge.as_deref(), Some("Bearer"));
    }
    // The token in another header does not count.
    let response = app
        .clone()
        .oneshot(
            Request::get("/pets")
                .header("x-token", format!("Bearer {}", hs256(&claims())))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(json(response).await, json!({"message": "Unauthorized"}));
}

#[tokio::test]
async fn two_authorization_headers_are_refused() {
    let app = app(&ManualClock::starting_at(NOW));
    let token = format!("Bearer {}", hs256(&claims()));
    let (status, challenge, _) = call(&app, "/pets", &[&token, &token]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(challenge.unwrap().contains("more than one"));
}

#[tokio::test]
async fn times_are_checked_at_their_boundaries_with_the_leeway() {
    let clock = ManualClock::starting_at(NOW);
    let app = app(&clock);
    // Leeway 60 s: valid until exp + 60.
    refused(&app, &hs256(&with(json!({"exp": NOW - 60}))), "expired").await;
    let (status, _, _) = call(&app, "/pets", &[&hs256(&with(json!({"exp": NOW - 59})))]).await;
    assert_eq!(status, StatusCode::OK);
    refused(
        &app,
        &hs256(&with(json!({"nbf": NOW + 61}))),
        "not valid yet",
    )
    .await;
    refused(
        &app,
        &hs256(&with(json!({"iat": NOW + 61}))),
        "issued in the future",
    )
    .await;
    refused(&app, &hs256(&with(json!({"exp": null}))), "no exp").await;
    for odd in [json!("1772410000"), json!(-1), json!(true), json!([1])] {
        let token = hs256(&with(json!({ "exp": odd })));
        let (status, _, _) = call(&app, "/pets", &[&token]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "exp {odd}");
    }
    let far = hs256(&with(json!({"exp": 1e300})));
    assert_eq!(call(&app, "/pets", &[&far]).await.0, StatusCode::OK);

    // A cached token stops working at its expiry.
    let token = hs256(&with(json!({"exp": NOW + 10})));
    assert_eq!(call(&app, "/pets", &[&token]).await.0, StatusCode::OK);
    clock.advance(Duration::from_secs(69));
    assert_eq!(call(&app, "/pets", &[&token]).await.0, StatusCode::OK);
    clock.advance(Duration::from_secs(1));
    refused(&app, &token, "expired").await;
}

#[tokio::test]
async fn issuer_and_audience_must_match() {
    let app = app(&ManualClock::starting_at(NOW));
    let trailing = format!("{ISSUER}/");
    refused(&app, &hs256(&with(json!({"iss": trailing}))), "issuer").await;
    refused(&app, &hs256(&with(json!({"iss": null}))), "issuer").await;
    refused(&app, &hs256(&with(json!({"aud": "other"}))), "audience").await;
    let listed = hs256(&with(json!({"aud": ["other", AUDIENCE]})));
    assert_eq!(call(&app, "/pets", &[&listed]).await.0, StatusCode::OK);
    // `client_id` stands in for a missing `aud`, and only then.
    let client = hs256(&with(json!({"aud": null, "client_id": AUDIENCE})));
    assert_eq!(call(&app, "/pets", &[&client]).await.0, StatusCode::OK);
    let both = hs256(&with(json!({"aud": "other", "client_id": AUDIENCE})));
    refused(&app, &both, "audience").await;
    refused(&app, &hs256(&with(json!({"aud": null}))), "audience").await;
}

#[tokio::test]
async fn scopes_are_any_of_and_missing_ones_are_403() {
    let app = app(&ManualClock::starting_at(NOW));
    let none = hs256(&claims());
    let (status, challenge, body) = call(&app, "/admin", &[&none]).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(challenge.unwrap().contains("error=\"insufficient_scope\""));
    let wrong = hs256(&with(json!({"scope": "pets/read pets/write"})));
    assert_eq!(
        call(&app, "/admin", &[&wrong]).await.0,
        StatusCode::FORBIDDEN
    );
    let scope = hs256(&with(json!({"scope": "pets/read pets/owner"})));
    assert_eq!(call(&app, "/admin", &[&scope]).await.0, StatusCode::OK);
    let scp = hs256(&with(json!({"scp": ["pets/admin"]})));
    assert_eq!(call(&app, "/admin", &[&scp]).await.0, StatusCode::OK);
}

#[tokio::test]
async fn forged_and_hostile_headers_are_refused() {
    let app = app(&ManualClock::starting_at(NOW));
    let payload = b64(&claims());
    // alg none, in any case, with or without a signature.
    for alg in ["none", "None", "NONE"] {
        let header = b64(&json!({"alg": alg, "typ": "JWT"}));
        for token in [
            format!("{header}.{payload}."),
            format!("{header}.{payload}.c2ln"),
        ] {
            let (status, _, _) = call(&app, "/pets", &[&token]).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "alg {alg}");
        }
    }
    // HS256 signed with the RSA public key as the secret, against the RSA key's id.
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("rsa".into());
    let confused = encode(&header, &claims(), &EncodingKey::from_secret(RSA_PUBLIC)).unwrap();
    refused(&app, &confused, "not accepted for its key").await;
    // An embedded key, or URLs to fetch one from, change nothing: the attacker's own secret,
    // offered in the token and at a reachable address, does not verify, and nothing is
    // fetched.
    let attacker = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = attacker.local_addr().unwrap();
    let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = std::sync::Arc::clone(&connections);
    tokio::spawn(async move {
        while attacker.accept().await.is_ok() {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let attacker_secret = b"the-attackers-own-secret-of-32-bytes+";
    let mut header = Header::new(Algorithm::HS256);
    header.jku = Some(format!("http://{address}/jwks.json"));
    header.x5u = Some(format!("http://{address}/cert.pem"));
    header.jwk = Some(jsonwebtoken::jwk::Jwk {
        common: jsonwebtoken::jwk::CommonParameters::default(),
        algorithm: jsonwebtoken::jwk::AlgorithmParameters::OctetKey(
            jsonwebtoken::jwk::OctetKeyParameters {
                key_type: jsonwebtoken::jwk::OctetKeyType::Octet,
                value: URL_SAFE_NO_PAD.encode(attacker_secret),
            },
        ),
    });
    let embedded = encode(
        &header,
        &claims(),
        &EncodingKey::from_secret(attacker_secret),
    )
    .unwrap();
    refused(&app, &embedded, "signature").await;
    tokio::task::yield_now().await;
    assert_eq!(
        connections.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "jku and x5u are never followed"
    );
    // Unknown and hostile key ids.
    for kid in ["unknown", "../../etc/passwd", "' OR 1=1 --", ""] {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(kid.into());
        let token = encode(
            &header,
            &claims(),
            &EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap(),
        )
        .unwrap();
        refused(&app, &token, "key id").await;
    }
    let numeric_kid = format!("{}.{payload}.c2ln", b64(&json!({"alg": "RS256", "kid": 7})));
    assert_eq!(
        call(&app, "/pets", &[&numeric_kid]).await.0,
        StatusCode::UNAUTHORIZED
    );
    // A critical extension nobody here understands.
    let mut header = Header::new(Algorithm::HS256);
    header.crit = Some(vec!["exp-ext".into()]);
    let critical = encode(&header, &claims(), &EncodingKey::from_secret(SECRET)).unwrap();
    refused(&app, &critical, "critical").await;
    // A valid signature on other claims, once the genuine token is in the verified-token cache:
    // a cache hit must match the whole token, not just its signature.
    let genuine = hs256(&claims());
    assert_eq!(call(&app, "/pets", &[&genuine]).await.0, StatusCode::OK);
    let (head, rest) = genuine.split_once('.').unwrap();
    let signature = rest.rsplit_once('.').unwrap().1;
    let tampered = format!(
        "{head}.{}.{signature}",
        b64(&with(json!({"sub": "mallory"})))
    );
    refused(&app, &tampered, "signature").await;
}

/// An ES256 signature re-encoded from JOSE's r‖s into ASN.1 DER.
fn der_signature(jose: &[u8]) -> Vec<u8> {
    let integer = |bytes: &[u8]| {
        let trimmed: Vec<u8> = bytes.iter().copied().skip_while(|b| *b == 0).collect();
        let mut value = if trimmed.first().is_some_and(|b| b & 0x80 != 0) {
            vec![0]
        } else {
            Vec::new()
        };
        value.extend(trimmed);
        let mut out = vec![0x02, value.len() as u8];
        out.extend(value);
        out
    };
    let (r, s) = jose.split_at(32);
    let body = [integer(r), integer(s)].concat();
    let mut out = vec![0x30, body.len() as u8];
    out.extend(body);
    out
}

#[tokio::test]
async fn ecdsa_signatures_in_der_are_refused() {
    let app = app(&ManualClock::starting_at(NOW));
    let token = signed(Algorithm::ES256, "ec", &claims());
    let (message, signature) = token.rsplit_once('.').unwrap();
    let der = der_signature(&URL_SAFE_NO_PAD.decode(signature).unwrap());
    let token = format!("{message}.{}", URL_SAFE_NO_PAD.encode(der));
    refused(&app, &token, "signature").await;
}

#[tokio::test]
async fn malformed_tokens_are_401_without_a_panic() {
    let app = app(&ManualClock::starting_at(NOW));
    let genuine = hs256(&claims());
    let parts: Vec<&str> = genuine.split('.').collect();
    let huge = format!("{}.{}.{}", parts[0], "A".repeat(9 * 1024), parts[2]);
    let cases = [
        format!("{}.{}", parts[0], parts[1]),
        format!("{genuine}.{}", parts[2]),
        format!("{}..{}", parts[0], parts[2]),
        format!("{}.{}.", parts[0], parts[1]),
        format!("{}=.{}.{}", parts[0], parts[1], parts[2]),
        format!("{}.{}!.{}", parts[0], parts[1], parts[2]),
        format!("{}.{}.{}", b64(&json!("not an object")), parts[1], parts[2]),
        format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode("{not json"),
            parts[2]
        ),
        "....".to_owned(),
        huge,
    ];
    for token in cases {
        let (status, challenge, _) = call(&app, "/pets", &[&token]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:.80}");
        assert!(challenge.unwrap().contains("invalid_token"));
    }
    let response = app
        .clone()
        .oneshot(
            Request::get("/pets")
                .header(
                    "authorization",
                    http::HeaderValue::from_bytes(b"Bearer \xff\xfe").unwrap(),
                )
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn keys_from_a_jwks_document_required_claims_and_the_scheme_in_any_case() {
    use jsonwebtoken::jwk::{Jwk, JwkSet};
    let jwk = |key: &EncodingKey, algorithm: Algorithm, kid: &str| {
        let mut jwk = Jwk::from_encoding_key(key, algorithm).unwrap();
        jwk.common.key_id = Some(kid.into());
        jwk
    };
    let rsa = EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap();
    let ed = EncodingKey::from_ed_pem(ED_PRIVATE).unwrap();
    let jwks = JwkSet {
        keys: vec![
            jwk(&rsa, Algorithm::RS256, "rsa-2026"),
            jwk(&ed, Algorithm::EdDSA, "ed-2026"),
        ],
    };
    let clock = ManualClock::starting_at(NOW);
    let authorizer = JwtAuthorizer::builder()
        .issuer(ISSUER)
        .audience(AUDIENCE)
        .jwks_json(serde_json::to_string(&jwks).unwrap())
        .required_claim("tenant")
        .clock(clock.clock())
        .build()
        .unwrap();
    let app = GatewayBuilder::new()
        .stage(Stage::builder("prod").build().unwrap())
        .jwt_authorizer("users", authorizer)
        .route(Route::new(Method::GET, "/pets").authorizer("users"))
        .build()
        .unwrap()
        .layer(Router::new().route(
            "/pets",
            get(|Claims(claims): Claims<PetClaims>| async move { claims.sub }),
        ));
    let token = |key: &EncodingKey, algorithm: Algorithm, kid: &str, claims: &Value| {
        let mut header = Header::new(algorithm);
        header.kid = Some(kid.into());
        encode(&header, claims, key).unwrap()
    };
    let tenant = with(json!({"tenant": "acme"}));
    for (key, algorithm, kid) in [
        (&rsa, Algorithm::RS256, "rsa-2026"),
        (&ed, Algorithm::EdDSA, "ed-2026"),
    ] {
        let bearer = format!("bEaReR {}", token(key, algorithm, kid, &tenant));
        let (status, _, body) = call(&app, "/pets", &[&bearer]).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, "alice"),
            "{algorithm:?}"
        );
        refused(
            &app,
            &token(key, algorithm, kid, &claims()),
            "required claim",
        )
        .await;
    }
    // The RSA key verifies RS256 only (its JWK says so), not PS256.
    let pss = token(&rsa, Algorithm::PS256, "rsa-2026", &tenant);
    refused(&app, &pss, "not accepted for its key").await;
}

#[test]
fn bad_configurations_are_config_errors() {
    let base = || {
        JwtAuthorizer::builder()
            .issuer(ISSUER)
            .audience(AUDIENCE)
            .hmac_secret(JwtAlgorithm::HS256, SECRET)
    };
    let field = |result: Result<JwtAuthorizer, tower_gateway::ConfigError>| {
        result.unwrap_err().field().to_owned()
    };
    assert_eq!(
        field(
            JwtAuthorizer::builder()
                .audience(AUDIENCE)
                .hmac_secret(JwtAlgorithm::HS256, SECRET)
                .build()
        ),
        "jwt.issuer"
    );
    assert_eq!(
        field(
            JwtAuthorizer::builder()
                .issuer(ISSUER)
                .hmac_secret(JwtAlgorithm::HS256, SECRET)
                .build()
        ),
        "jwt.audience"
    );
    assert_eq!(
        field(
            JwtAuthorizer::builder()
                .issuer(ISSUER)
                .audience(AUDIENCE)
                .build()
        ),
        "jwt.keys"
    );
    assert_eq!(
        field(
            JwtAuthorizer::builder()
                .issuer(ISSUER)
                .audience(AUDIENCE)
                .hmac_secret(JwtAlgorithm::HS256, b"short")
                .build()
        ),
        "jwt.keys[0]"
    );
    assert_eq!(field(base().jwks_json("{not json").build()), "jwt.keys[1]");
    assert_eq!(
        field(base().pem_key(JwtAlgorithm::RS256, b"not a pem").build()),
        "jwt.keys[1]"
    );
    let mismatched = r#"{"keys":[{"kty":"EC","crv":"P-256","alg":"RS256","x":"AA","y":"AA"}]}"#;
    assert_eq!(
        field(base().jwks_json(mismatched).build()),
        "jwt.keys[1].keys[0]"
    );
    let short_ed = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"AAAA"}]}"#;
    assert_eq!(
        field(base().jwks_json(short_ed).build()),
        "jwt.keys[1].keys[0]"
    );
    assert_eq!(
        field(base().algorithms([JwtAlgorithm::RS256]).build()),
        "jwt.keys"
    );
    assert_eq!(
        field(base().identity_header("bad header").build()),
        "jwt.identity_header"
    );

    let gateway = |route: Route| {
        GatewayBuilder::new()
            .stage(Stage::builder("prod").build().unwrap())
            .jwt_authorizer("users", base().build().unwrap())
            .route(route)
            .build()
            .map(drop)
            .unwrap_err()
            .field()
            .to_owned()
    };
    assert_eq!(
        gateway(Route::new(Method::GET, "/pets").authorizer("nobody")),
        "routes[GET /pets].authorizer"
    );
    assert_eq!(
        gateway(Route::new(Method::GET, "/pets").authorization_scopes(["a"])),
        "routes[GET /pets].authorization_scopes"
    );
}
