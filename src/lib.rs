//! Amazon API Gateway's controls as tower layers, for axum, hyper and tonic services.
//!
//! `tower-gateway` is a library, not a proxy: your own service is the integration, and the
//! gateway is a [`tower::Layer`](tower_layer::Layer) you wrap around it, with no extra network
//! hop. [`GatewayBuilder`] assembles the whole request cycle; each step is also a layer of its
//! own ([`RequestContextLayer`], [`StageLayer`], [`RouteLayer`],
//! [`RequestValidatorLayer`](validate::RequestValidatorLayer),
//! [`ResponseCacheLayer`](cache::ResponseCacheLayer), [`CanaryLayer`](canary::CanaryLayer))
//! for use à la carte. A running gateway can be given new
//! [deployments](gateway::Deployments) (switched, rolled back, canaried, promoted, reloaded
//! from a file) without a restart.
//!
//! The gateway keeps the wrapped service's response type, so a wrapped axum
//! router still serves with `axum::serve` and a tonic server takes it with
//! `Server::builder().layer(gateway)`.
//!
//! # Wrapping an axum router
//!
//! Wrap the whole router, `gateway.layer(router)`, and serve it with
//! `axum::ServiceExt::into_make_service` (or `into_make_service_with_connect_info` for the
//! client address). axum's own `Router::layer` runs a layer *after* axum has routed the
//! request, so it cannot strip a stage's base path (`/prod/pets` → `/pets`) before routing;
//! it is fine for a gateway with a fixed stage, which leaves paths alone.
//!
//! Wrap a router without state as `gateway.layer(router.with_state::<()>(()))`: `axum::serve`
//! prepares a bare router's handlers once that way, and a router inside a layer otherwise
//! prepares the matched handler again on every request (about 2% of a small request).
//!
//! # The request cycle
//!
//! ```text
//! client
//!   │  request id, RequestContext created              context::RequestContextLayer
//!   ▼
//! stage ─────── select the stage (fixed, `/prod/...`, host + base path),
//!   │           strip the base path, attach stage variables   stage::StageLayer
//! canary ────── baseline or canary (random or sticky), the canary's variable
//!   │           overrides, or the canary deployment           canary (in the gateway)
//! route ─────── method + resource template (`/pets/{petId}`, `{proxy+}`, ANY, `$default`)
//!   │           → route settings and path parameters          route::RouteLayer
//! authorizer ── on routes that name one: a JWT (keys local, JWKS URL, OIDC, Cognito),
//!   │           or a custom async function (cached)           authorizer (in the gateway)
//! api key ───── on routes that require one: `x-api-key` (or an authorizer's usage
//!   │           identifier) looked up by SHA-256 digest       api_key::ApiKeyLayer
//! usage plan ── throttles (key × method, key, stage × method, stage), then the quota
//!   │                                                         usage_plan (in the gateway)
//! validator ─── payload limit, required parameters, the JSON body against the route's
//!   │           model for its media type              validate::RequestValidatorLayer
//! cache ─────── on stages with a cache: a hit answers here; a miss fills the entry
//!   │           (one call for concurrent misses)          cache::ResponseCacheLayer
//!   ▼
//! integration = your service (axum Router, hyper service, tonic server);
//!   │           a second service for canary requests         canary::CanaryLayer
//! response ──── request id, rate-limit and release headers; rejections rendered as
//!               gateway responses; at the end of the body, the access log and metrics
//!               from the context                              observe
//! ```
//!
//! With a [Redis backend](store) (feature `redis`), the usage plan step asks Redis, so that
//! many instances share one set of throttles and quotas.
//!
//! The wrapped service receives the request with a [`body::RequestBody`]: the client's body
//! under the payload limit, or the bytes the validator read and checked.
//!
//! # Example
//!
//! ```
//! use axum::{Router, routing::get};
//! use http::{Method, Request, StatusCode};
//! use tower::{Layer, ServiceExt};
//! use tower_gateway::{GatewayBuilder, Route, Stage, StageSelection, StageVariables};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let gateway = GatewayBuilder::new()
//!     .stage(Stage::builder("prod").variable("greeting", "hello").build().unwrap())
//!     .stage_selection(StageSelection::BasePath)
//!     .route(Route::new(Method::GET, "/hello"))
//!     .build()
//!     .expect("valid gateway");
//!
//! let router = Router::new().route("/hello", get(|vars: StageVariables| async move {
//!     vars.get("greeting").unwrap_or("hi").to_owned()
//! }));
//! let app = gateway.layer(router.with_state::<()>(()));
//! // Serve it with:
//! // axum::serve(listener, axum::ServiceExt::<axum::extract::Request>::into_make_service(app))
//!
//! // `/prod/hello` is served by stage `prod`; the router sees `/hello`.
//! let ok = app.clone().oneshot(Request::get("/prod/hello").body(axum::body::Body::empty()).unwrap()).await.unwrap();
//! assert_eq!(ok.status(), StatusCode::OK);
//! assert!(ok.headers().contains_key("x-request-id"));
//!
//! // An undeclared route gets API Gateway's answer.
//! let denied = app.oneshot(Request::get("/prod/admin").body(axum::body::Body::empty()).unwrap()).await.unwrap();
//! assert_eq!(denied.status(), StatusCode::FORBIDDEN);
//! # }
//! ```
//!
//! # Feature flags
//!
//! | feature | what it adds |
//! |---|---|
//! | `axum` (default) | gateway responses in axum's body type, which wrapping an axum router needs; extractors for [`RequestContext`] and [`StageVariables`]; the client address from axum's `ConnectInfo` |
//! | `metrics` (default) | the gateway's [metrics](observe::metrics) through the `metrics` facade |
//! | `tonic` | gateway responses in tonic's body type, which `Server::builder().layer(gateway)` needs; the client address from tonic's `TcpConnectInfo` |
//!
//! Without features the crate works with any `http`-based service whose response body
//! implements [`GatewayBody`] (http-body-util's `Full`, `BoxBody`, `UnsyncBoxBody`, `String`, or
//! your own); stage variables and the context are then read with
//! `request.extensions().get::<RequestContext>()`.

#![cfg_attr(docsrs, feature(doc_auto_cfg))]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]
#![forbid(unsafe_code)]

/// A `DEBUG` span on [`observe::TRACE_TARGET`], or `Span::none()` when no subscriber wants it.
///
/// `tracing` built with its `log` feature (axum turns it on by default) keeps the metadata of a
/// disabled span so that it can log its fields, entries and exits through `log`; that costs
/// several hundred instructions per request even with no logger. A `Span::none()` costs nothing.
/// The span is made out of line (see [`rarely`]): only the global level check stays in the
/// request path.
macro_rules! trace_span {
    ($($span:tt)+) => {
        if $crate::traced() {
            $crate::rarely(|| tracing::debug_span!(target: $crate::observe::TRACE_TARGET, $($span)+))
        } else {
            tracing::Span::none()
        }
    };
}

/// Whether a subscriber wants the gateway's spans ([`observe::TRACE_TARGET`] at `DEBUG`). Only
/// the global level check is in the request path; the subscriber is asked out of line.
#[inline]
pub(crate) fn traced() -> bool {
    tracing::level_enabled!(tracing::Level::DEBUG)
        && rarely(|| tracing::enabled!(target: observe::TRACE_TARGET, tracing::Level::DEBUG))
}

/// A `DEBUG` event of the execution log ([`observe::EXECUTION_LOG_TARGET`]), written out of line
/// (see [`rarely`]) when a subscriber may want `DEBUG` events.
macro_rules! execution_log {
    ($($event:tt)+) => {
        if tracing::level_enabled!(tracing::Level::DEBUG) {
            $crate::rarely(|| {
                tracing::debug!(target: $crate::observe::EXECUTION_LOG_TARGET, $($event)+)
            });
        }
    };
}

/// Runs `work` in a function of its own that the compiler takes to be rarely called: for what a
/// request needs only when someone watches (an enabled span, an execution-log event) or on the
/// less common courses. Its code then does not sit between the hot instructions of the request
/// path, which touches fewer cache lines of code per request: on a server, where the code of
/// one request does not stay in the instruction cache until the next, that is what most of the
/// gateway's cost is.
///
/// The other half of the same rule: the steps every request takes (stage, route, context, API
/// key, usage plan, response headers) are `#[inline]`. The gateway's service is generic, so it
/// is compiled in the user's crate; without the attribute each step stays a separate function
/// in this crate's code, called across, with its own partly used cache lines.
#[cold]
#[inline(never)]
pub(crate) fn rarely<R>(work: impl FnOnce() -> R) -> R {
    work()
}

pub mod api_key;
mod arena;
pub mod authorizer;
pub mod body;
pub mod cache;
pub mod canary;
pub mod clock;
pub mod context;
mod error;
#[cfg(feature = "axum")]
pub mod extract;
pub mod future;
pub mod gateway;
pub mod observe;
pub mod response;
pub mod route;
pub mod stage;
#[cfg(feature = "redis")]
pub mod store;
pub mod usage_plan;
pub mod validate;

pub use body::GatewayBody;
pub use context::{ClientAddr, RequestContext, RequestContextLayer, RequestId};
pub use error::ConfigError;
pub use gateway::{Gateway, GatewayBuilder, GatewayConfig, GatewayService};
pub use response::{GatewayError, GatewayResponse, GatewayResponseType, GatewayResponses};
pub use route::{MatchedRoute, Route, RouteLayer, RouteMethod, RouteSettings, UnmatchedRoutes};
pub use stage::{BasePathMapping, Stage, StageBuilder, StageLayer, StageSelection, StageVariables};
