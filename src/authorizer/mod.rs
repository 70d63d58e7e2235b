//! Authorizers: who the caller is, before the API key and usage plan are checked.
//!
//! A route names the authorizer that guards it ([`Route::authorizer`](crate::Route::authorizer))
//! and, optionally, scopes of which the caller must hold one
//! ([`Route::authorization_scopes`](crate::Route::authorization_scopes)). The gateway runs the
//! authorizer after routing, as API Gateway does; what it establishes, an [`Identity`] (the
//! principal and the token's claims), goes into the [`RequestContext`](crate::RequestContext)
//! for the handler, and into the `Claims<T>` extractor with the `axum` feature.
//!
//! Two kinds, declared once on the builder under a name that routes use:
//!
//! - the [JWT authorizer](jwt) ([`GatewayBuilder::jwt_authorizer`](crate::GatewayBuilder::jwt_authorizer),
//!   or `authorizers` in the [declarative config](crate::GatewayConfig)): keys in the
//!   configuration, from a JWKS URL or through OIDC discovery, and a Cognito user-pool preset;
//! - [custom authorizers](custom) ([`GatewayBuilder::custom_authorizer`](crate::GatewayBuilder::custom_authorizer)):
//!   an async function of yours, in TOKEN or REQUEST mode, with a result cache; the only kind
//!   that can name the API key of the request
//!   ([`ApiKeySource::Authorizer`](crate::api_key::ApiKeySource::Authorizer)).
//!
//! Handlers read the [`Identity`] from the context (`RequestContext::identity`), or with the
//! `Claims<T>` extractor (`Option<Claims<T>>` where authorization is optional).
//!
//! ```
//! use http::Method;
//! use tower_gateway::authorizer::jwt::{JwtAlgorithm, JwtAuthorizer};
//! use tower_gateway::{GatewayBuilder, Route, Stage};
//!
//! let authorizer = JwtAuthorizer::builder()
//!     .issuer("https://issuer.example.com")
//!     .audience("pets-api")
//!     .hmac_secret(JwtAlgorithm::HS256, b"a secret of at least thirty-two bytes!!")
//!     .build()?;
//! let gateway = GatewayBuilder::new()
//!     .stage(Stage::builder("prod").build()?)
//!     .jwt_authorizer("users", authorizer)
//!     .route(
//!         Route::new(Method::POST, "/pets")
//!             .authorizer("users")
//!             .authorization_scopes(["pets/write"]),
//!     )
//!     .build()?;
//! # let _ = gateway;
//! # Ok::<(), tower_gateway::ConfigError>(())
//! ```

pub mod custom;
pub mod jwt;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::api_key::KeyDigest;
use crate::response::GatewayError;

/// What an authorizer accepted: the identity, and the usage identifier key a custom
/// authorizer may name for the API-key step.
pub(crate) struct Authorized {
    pub(crate) identity: Identity,
    pub(crate) usage_identifier: Option<KeyDigest>,
}

pub(crate) type AuthorizationFuture =
    Pin<Box<dyn Future<Output = Result<Authorized, GatewayError>> + Send>>;

/// An authorizer's answer: at once (a cached or locally checked result), or after waiting
/// (a custom authorizer's function, a key fetch).
pub(crate) enum Authorization {
    Done(Result<Authorized, GatewayError>),
    Pending(AuthorizationFuture),
}

/// What an authorizer established about the caller of one request.
///
/// Cheap to clone.
#[derive(Clone)]
pub struct Identity {
    inner: Arc<IdentityInner>,
}

struct IdentityInner {
    principal_id: Option<Box<str>>,
    claims: Map<String, Value>,
    context: Map<String, Value>,
}

impl Identity {
    pub(crate) fn new(principal_id: Option<Box<str>>, claims: Map<String, Value>) -> Self {
        Self::with_context(principal_id, claims, Map::new())
    }

    pub(crate) fn with_context(
        principal_id: Option<Box<str>>,
        claims: Map<String, Value>,
        context: Map<String, Value>,
    ) -> Self {
        Self {
            inner: Arc::new(IdentityInner {
                principal_id,
                claims,
                context,
            }),
        }
    }

    /// The principal (`$context.authorizer.principalId`): a JWT's `sub`, or the principal a
    /// custom authorizer returned.
    pub fn principal_id(&self) -> Option<&str> {
        self.inner.principal_id.as_deref()
    }

    /// The context map a custom authorizer returned (`$context.authorizer.<key>`): strings,
    /// numbers and booleans. Empty for JWT authorizers, whose data is in the
    /// [claims](Self::claims).
    pub fn context(&self) -> &Map<String, Value> {
        &self.inner.context
    }

    /// All claims (`$context.authorizer.claims`).
    pub fn claims(&self) -> &Map<String, Value> {
        &self.inner.claims
    }

    /// One claim.
    pub fn claim(&self, name: &str) -> Option<&Value> {
        self.inner.claims.get(name)
    }

    /// The claims as the caller's own type.
    pub fn deserialize_claims<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        T::deserialize(&self.inner.claims)
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Claims can be personal data: the debug form names only the principal.
        f.debug_struct("Identity")
            .field("principal_id", &self.principal_id())
            .finish_non_exhaustive()
    }
}
