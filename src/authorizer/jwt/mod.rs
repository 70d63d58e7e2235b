//! The JWT authorizer: API Gateway's HTTP-API JWT authorizer, and its Cognito user-pool
//! authorizer ([`JwtAuthorizer::cognito`]).
//!
//! A request on a route guarded by a [`JwtAuthorizer`] must carry a token in its identity
//! header (`Authorization` by default, bare or after `Bearer `). The token is accepted when:
//!
//! - it has three base64url segments and is at most 8 KiB;
//! - its header names an algorithm this authorizer allows, no `crit` extension, and a `kid`
//!   of one of the keys (a token without `kid` is tried against the one key when only one is
//!   known); embedded `jwk`, `jku`, `x5u` and `x5c` headers are ignored,
//!   never fetched;
//! - the algorithm is the key's own (a JWK's `alg`, or the key's type: RSA keys verify
//!   `RS*`/`PS*`, EC keys `ES*` on their curve, Ed25519 keys `EdDSA`, secrets `HS*`): the
//!   algorithm comes from the key, so an RSA public key can never serve as an HMAC secret;
//! - the signature verifies (jsonwebtoken with its RustCrypto backend);
//! - `exp` is in the future and `nbf` and `iat` are not (each within the leeway, 60 s by
//!   default; `exp` is required unless [`JwtAuthorizerBuilder::require_exp`] says otherwise);
//!   times must be JSON numbers;
//! - `iss` is one of the configured issuers, compared exactly (a trailing slash matters);
//! - `aud` (a string or an array) holds one of the configured audiences, or, when the token
//!   has no `aud`, its `client_id` is one of them;
//! - every [required claim](JwtAuthorizerBuilder::required_claim) is present;
//! - when the route has scopes, the `scope` claim (space-separated) or `scp` (an array or a
//!   string) holds at least one of them; when it has
//!   [groups](crate::Route::authorization_groups), `cognito:groups` (or the
//!   [groups claim](JwtAuthorizerBuilder::groups_claim)) holds one of them;
//! - for a Cognito authorizer, `token_use` is `access` on a route with scopes and `id` on one
//!   without (so an ID token cannot stand in for an access token, nor the reverse).
//!
//! Failures are 401 `{"message":"Unauthorized"}` (`UNAUTHORIZED`) with
//! `WWW-Authenticate: Bearer error="invalid_token", error_description="…"` naming the reason
//! (never the token); a request without a token gets a plain `WWW-Authenticate: Bearer`. A
//! token without the route's scope gets 403 (`ACCESS_DENIED`) with
//! `error="insufficient_scope"`; so does a caller in none of the route's groups.
//!
//! # Keys
//!
//! Keys are given in the configuration ([`jwks_json`](JwtAuthorizerBuilder::jwks_json),
//! [`pem_key`](JwtAuthorizerBuilder::pem_key), [`hmac_secret`](JwtAuthorizerBuilder::hmac_secret)),
//! or fetched from a [JWKS URL](JwtAuthorizerBuilder::jwks_url) or through the issuer's
//! [OIDC discovery document](JwtAuthorizerBuilder::oidc_discovery):
//!
//! - the first token that needs them fetches them (call [`JwtAuthorizer::refresh_keys`] at
//!   startup to have them before the first request); the fetch has a timeout (1.5 s) and a body
//!   limit (150,000 bytes), API Gateway's figures;
//! - once they are older than the refresh interval (an hour), a request starts a refresh in the
//!   background and goes on with the keys it has;
//! - a token whose `kid` is unknown makes the request wait for a refetch (key rotation), at
//!   most once per cool-down (30 s): made-up `kid`s cannot make the gateway hammer the key
//!   server, and concurrent requests share one fetch;
//! - a failed fetch (server down, slow, a non-2xx answer, a body that is too large or not a
//!   JWKS) keeps the last good keys and is logged; a key withdrawn from the JWKS stops
//!   verifying at the next successful fetch, and tokens it verified leave the cache;
//! - fetching uses hyper-util's client (feature `http-client`, on by default; HTTPS with the
//!   `rustls` feature, which uses the ring provider and the Mozilla roots), or a
//!   [`JwksFetcher`] of your own.
//!
//! Verified tokens are cached, so an RS256 or ES256 signature is checked once per token and
//! not once per request: the cache is bounded in bytes (16 MiB by default), keyed by a hash of
//! the token's signature, and a hit must match the whole token; an entry is never used past the
//! token's `exp`. A cached token costs a request about 180–300 ns (`cargo bench --bench
//! authorizer`, 1,000 callers; RS256's longer tokens cost the most).
//!
//! ```
//! use http::Method;
//! use tower_gateway::authorizer::jwt::{JwtAlgorithm, JwtAuthorizer};
//! use tower_gateway::{GatewayBuilder, Route, Stage};
//!
//! let jwks = r#"{"keys":[{"kty":"oct","kid":"k1","alg":"HS256",
//!     "k":"c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA"}]}"#;
//! let authorizer = JwtAuthorizer::builder()
//!     .issuer("https://issuer.example.com")
//!     .audience("pets-api")
//!     .jwks_json(jwks)
//!     .build()?;
//! let gateway = GatewayBuilder::new()
//!     .stage(Stage::builder("prod").build()?)
//!     .jwt_authorizer("users", authorizer)
//!     .route(Route::new(Method::GET, "/pets").authorizer("users"))
//!     .build()?;
//! # let _ = (gateway, JwtAlgorithm::HS256);
//! # Ok::<(), tower_gateway::ConfigError>(())
//! ```

mod remote;
mod verify;

pub use remote::{FetchFuture, JwksError, JwksFetcher};
pub use verify::{JwtAlgorithm, JwtAuthorizer, JwtAuthorizerBuilder};
pub(crate) use verify::{RouteRequirements, scopes_of};
