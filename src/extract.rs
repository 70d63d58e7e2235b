//! axum extractors (feature `axum`).
//!
//! [`RequestContext`] and [`StageVariables`] extract from any request that went through the
//! gateway; `Option<RequestContext>` and `Option<StageVariables>` for handlers that also run
//! without it. When the gateway is missing, the plain forms reject with 500 and a message that
//! says so (a wiring mistake, not a client error).
//!
//! # Example
//!
//! ```
//! use axum::{Json, Router, routing::get};
//! use tower_gateway::{RequestContext, StageVariables};
//!
//! async fn stage(context: RequestContext, variables: StageVariables) -> Json<serde_json::Value> {
//!     Json(serde_json::json!({
//!         "stage": context.stage().map(|s| s.name()),
//!         "greeting": variables.get("greeting"),
//!     }))
//! }
//!
//! let app: Router = Router::new().route("/stage", get(stage));
//! # let _ = app;
//! ```

use std::convert::Infallible;
use std::fmt;

use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use http::request::Parts;

use crate::context::RequestContext;
use crate::stage::StageVariables;

/// The rejection of an extractor used on a route the gateway does not wrap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MissingGateway {
    what: &'static str,
}

impl fmt::Display for MissingGateway {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} is not available: the gateway layer does not wrap this route",
            self.what
        )
    }
}

impl std::error::Error for MissingGateway {}

impl IntoResponse for MissingGateway {
    fn into_response(self) -> Response {
        (StatusCode::INTERNAL_SERVER_ERROR, self.to_string()).into_response()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RequestContext {
    type Rejection = MissingGateway;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<RequestContext>()
            .cloned()
            .ok_or(MissingGateway {
                what: "RequestContext",
            })
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for RequestContext {
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<RequestContext>().cloned())
    }
}

fn stage_variables(parts: &Parts) -> Option<StageVariables> {
    let context = parts.extensions.get::<RequestContext>()?;
    context.stage()?;
    Some(context.stage_variables().clone())
}

impl<S: Send + Sync> FromRequestParts<S> for StageVariables {
    type Rejection = MissingGateway;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        stage_variables(parts).ok_or(MissingGateway {
            what: "StageVariables",
        })
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for StageVariables {
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(stage_variables(parts))
    }
}

/// The claims of the token the route's authorizer accepted, deserialised into `T`.
///
/// As `Option<Claims<T>>` it is `None` on routes without an authorizer (or where the claims do
/// not fit `T`), for handlers whose authentication is optional.
#[derive(Debug, Clone)]
pub struct Claims<T>(pub T);

/// Why [`Claims`] could not be extracted: no authorizer accepted the request (500: the route
/// is not guarded, a configuration mistake), or the claims do not fit the type (401).
#[derive(Debug)]
pub struct ClaimsRejection {
    status: StatusCode,
    message: String,
}

impl fmt::Display for ClaimsRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ClaimsRejection {}

impl IntoResponse for ClaimsRejection {
    fn into_response(self) -> Response {
        (self.status, self.message).into_response()
    }
}

fn claims<T: serde::de::DeserializeOwned>(parts: &Parts) -> Result<T, ClaimsRejection> {
    let identity = parts
        .extensions
        .get::<RequestContext>()
        .and_then(RequestContext::identity)
        .ok_or_else(|| ClaimsRejection {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: "Claims are not available: no authorizer guards this route".to_owned(),
        })?;
    identity
        .deserialize_claims()
        .map_err(|error| ClaimsRejection {
            status: StatusCode::UNAUTHORIZED,
            message: format!("the token's claims do not have the expected shape: {error}"),
        })
}

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequestParts<S> for Claims<T> {
    type Rejection = ClaimsRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        claims(parts).map(Claims)
    }
}

impl<S: Send + Sync, T: serde::de::DeserializeOwned> OptionalFromRequestParts<S> for Claims<T> {
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(claims(parts).ok().map(Claims))
    }
}
