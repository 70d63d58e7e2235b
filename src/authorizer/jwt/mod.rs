//! The JWT authorizer: API Gateway's HTTP-API JWT authorizer, with keys in the configuration.
//!
//! A request on a route guarded by a [`JwtAuthorizer`] must carry a token in its identity
//! header (`Authorization` by default, bare or after `Bearer `). The token is accepted when:
//!
//! - it has three base64url segments and is at most 8 KiB;
//! - its header names an algorithm this authorizer allows, no `crit` extension, and a `kid`
//!   of one of the configured keys (a token without `kid` is tried against the one key when
//!   only one is configured); embedded `jwk`, `jku`, `x5u` and `x5c` headers are ignored,
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
//!   string) holds at least one of them.
//!
//! Failures are 401 `{"message":"Unauthorized"}` (`UNAUTHORIZED`) with
//! `WWW-Authenticate: Bearer error="invalid_token", error_description="…"` naming the reason
//! (never the token); a request without a token gets a plain `WWW-Authenticate: Bearer`. A
//! token without the route's scope gets 403 (`ACCESS_DENIED`) with
//! `error="insufficient_scope"`.
//!
//! Verified tokens are cached, so an RS256 or ES256 signature is checked once per token and
//! not once per request: the cache is bounded in bytes, keyed by a hash of the token's
//! signature, and a hit must match the whole token; an entry is never used past the token's
//! `exp`.
//!
//! Not in this release: keys from a JWKS URL or an OIDC discovery document (with refresh and
//! rotation), and the Cognito preset.
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
pub(crate) use verify::RouteRequirements;
pub use verify::{JwtAlgorithm, JwtAuthorizer, JwtAuthorizerBuilder};
