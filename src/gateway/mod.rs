//! [`GatewayBuilder`] assembles the gateway; [`Gateway`] is the resulting `tower::Layer`.
//!
//! The gateway runs the request cycle of API Gateway in order (see the crate docs). Each step
//! either rejects the request with a [gateway response](crate::response) or records what it
//! learned in the request's [`RequestContext`] and lets the request go on.
//!
//! # Example
//!
//! ```
//! use axum::{Router, routing::get};
//! use http::Method;
//! use tower::Layer;
//! use tower_gateway::{GatewayBuilder, Route, Stage, StageSelection};
//!
//! let gateway = GatewayBuilder::new()
//!     .stage(Stage::builder("prod").variable("greeting", "hello").build().unwrap())
//!     .stage_selection(StageSelection::BasePath)
//!     .route(Route::new(Method::GET, "/pets"))
//!     .build()
//!     .expect("valid gateway");
//!
//! // The gateway wraps the whole router, so that `/prod/pets` reaches axum as `/pets`.
//! let router: Router = Router::new().route("/pets", get(|| async { "[]" }));
//! let app = gateway.layer(router.with_state::<()>(()));
//! # async fn serve(app: tower_gateway::GatewayService<Router>) {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await.unwrap();
//! axum::serve(listener, axum::ServiceExt::<axum::extract::Request>::into_make_service(app))
//!     .await
//!     .unwrap();
//! # }
//! ```

mod config;
mod deploy;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;
use tracing::Instrument;

use deploy::Live;
pub use deploy::{DeploymentId, Deployments};

pub use config::{
    ApiKeyConfig, ApiKeysConfig, CognitoConfig, GatewayConfig, JwtAuthorizerConfig,
    RequestIdConfig, RouteConfig, StageConfig, UsagePlanConfig,
};

use crate::api_key::{ApiKeyCheck, ApiKeySource, ApiKeyStore, InMemoryApiKeyStore, key_header};
use crate::authorizer::custom::CustomAuthorizer;
use crate::authorizer::jwt::{JwtAuthorizer, RouteRequirements};
use crate::authorizer::{Authorization, AuthorizationFuture, Authorized};
use crate::body::{BoxError, GatewayBody, RequestBody};
use crate::cache::{CacheHome, CacheState, KeyOf, ResponseCache, ResponseCaches, StageCache};
use crate::canary::Release;
use crate::clock::GatewayClock;
use crate::context::{ContextOptions, ContextSettings, Decided, RequestContext};
use crate::error::ConfigError;
use crate::future::{Finish, Integration, ResponseFuture};
use crate::observe::{AccessLog, Observer, Watch};
use crate::response::{
    GatewayError, GatewayResponse, GatewayResponseType, GatewayResponses, GatewayResponsesBuilder,
};
use crate::route::{DEFAULT_MAX_PATH_LENGTH, Route, RouteTable, UnmatchedRoutes};
use crate::stage::{Stage, StageSelection, StageSelector, resolve_selection};
use crate::usage_plan::{RateLimitHeaders, ThrottleEngine, Throttling, UsagePlan, UsagePlans};
use crate::validate::{
    BodyPlan, GatewayValidation, OpenApi, SchemaDraft, ToService, ValidationOptions, Validator,
};

/// Builds a [`Gateway`]: stages, routes, API keys, usage plans, gateway responses and
/// request-id settings.
///
/// Nothing is checked until [`build`](Self::build), which reports the first problem as a
/// [`ConfigError`] naming the item.
#[derive(Clone, Default)]
#[must_use]
pub struct GatewayBuilder {
    stages: Vec<Stage>,
    selection: Option<StageSelection>,
    default_stage: Option<String>,
    routes: Vec<Route>,
    unmatched: UnmatchedRoutes,
    max_path_length: Option<usize>,
    responses: GatewayResponsesBuilder,
    context: ContextOptions,
    api_keys: Option<Arc<dyn ApiKeyStore>>,
    api_key_source: ApiKeySource,
    api_key_header: Option<String>,
    usage_plans: Vec<UsagePlan>,
    clock: Option<GatewayClock>,
    rate_limit_headers: Option<bool>,
    authorizers: Vec<(String, DeclaredAuthorizer)>,
    validation: ValidationOptions,
    access_log: Option<AccessLog>,
    metrics: Option<bool>,
    #[cfg(feature = "redis")]
    redis: Option<crate::store::RedisBackend>,
}

impl fmt::Debug for GatewayBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatewayBuilder")
            .field("stages", &self.stages)
            .field("selection", &self.selection)
            .field("routes", &self.routes)
            .field("api_keys", &self.api_keys.is_some())
            .finish_non_exhaustive()
    }
}

impl GatewayBuilder {
    /// An empty gateway; declare at least one stage and some routes.
    pub fn new() -> Self {
        Self::default()
    }

    /// The builder a declarative [`GatewayConfig`] describes. Its API keys go into a store of
    /// their own; use [`from_config_with_key_store`](Self::from_config_with_key_store) to
    /// manage them while the gateway runs.
    pub fn from_config(config: GatewayConfig) -> Result<Self, ConfigError> {
        config.into_builder(None)
    }

    /// Like [`from_config`](Self::from_config), with the configuration's API keys loaded (all
    /// or none) into `store`, which the gateway then uses: keep a clone of it to add, disable
    /// or remove keys at runtime.
    pub fn from_config_with_key_store(
        config: GatewayConfig,
        store: InMemoryApiKeyStore,
    ) -> Result<Self, ConfigError> {
        config.into_builder(Some(store))
    }

    /// Declares a JWT authorizer under `name`, for routes that name it
    /// ([`Route::authorizer`]).
    pub fn jwt_authorizer(mut self, name: impl Into<String>, authorizer: JwtAuthorizer) -> Self {
        self.authorizers
            .push((name.into(), DeclaredAuthorizer::Jwt(authorizer)));
        self
    }

    /// Declares a [custom authorizer](crate::authorizer::custom) that routes can name
    /// ([`Route::authorizer`]).
    pub fn custom_authorizer(
        mut self,
        name: impl Into<String>,
        authorizer: CustomAuthorizer,
    ) -> Self {
        self.authorizers
            .push((name.into(), DeclaredAuthorizer::Custom(authorizer)));
        self
    }

    /// Declares a stage.
    pub fn stage(mut self, stage: Stage) -> Self {
        self.stages.push(stage);
        self
    }

    /// How requests find their stage. It may be left out when one stage is declared (that
    /// stage is then fixed); with several it is required.
    pub fn stage_selection(mut self, selection: StageSelection) -> Self {
        self.selection = Some(selection);
        self
    }

    /// The stage that serves requests whose stage is unknown, instead of a 403.
    pub fn default_stage(mut self, name: impl Into<String>) -> Self {
        self.default_stage = Some(name.into());
        self
    }

    /// Declares a route.
    pub fn route(mut self, route: Route) -> Self {
        self.routes.push(route);
        self
    }

    /// What happens to requests that match no route. Default
    /// [`UnmatchedRoutes::Reject`]: a 403 `MISSING_AUTHENTICATION_TOKEN`, as API Gateway
    /// answers, so that a route missing from the gateway's table is closed rather than served
    /// without its controls.
    pub fn unmatched_routes(mut self, unmatched: UnmatchedRoutes) -> Self {
        self.unmatched = unmatched;
        self
    }

    /// The longest request path accepted, in bytes (default 8 KiB); longer paths get 413.
    pub fn max_path_length(mut self, bytes: usize) -> Self {
        self.max_path_length = Some(bytes);
        self
    }

    /// Overrides the gateway response of one type.
    pub fn gateway_response(
        mut self,
        response_type: GatewayResponseType,
        response: GatewayResponse,
    ) -> Self {
        self.responses = self.responses.response(response_type, response);
        self
    }

    /// The header that carries the request id (default `x-request-id`).
    pub fn request_id_header(mut self, name: impl Into<String>) -> Self {
        self.context.request_id_header = Some(name.into());
        self
    }

    /// Use a request id the client sent in the request-id header (off by default).
    pub fn trust_inbound_request_id(mut self, trust: bool) -> Self {
        self.context.trust_inbound_request_id = trust;
        self
    }

    /// Whether responses carry the request-id header (default on).
    pub fn send_request_id(mut self, send: bool) -> Self {
        self.context.send_request_id = Some(send);
        self
    }

    /// Proxies (addresses or CIDR blocks) whose `X-Forwarded-For` is believed.
    pub fn trusted_proxies<I, P>(mut self, proxies: I) -> Self
    where
        I: IntoIterator<Item = P>,
        P: Into<String>,
    {
        self.context
            .trusted_proxies
            .extend(proxies.into_iter().map(Into::into));
        self
    }

    /// The API keys that routes marked [`api_key_required`](Route::api_key_required) accept.
    /// Pass an [`InMemoryApiKeyStore`] (a clone of it
    /// stays usable for adding, disabling and removing keys while the gateway runs) or a store
    /// of your own.
    pub fn api_key_store(mut self, store: impl ApiKeyStore) -> Self {
        self.api_keys = Some(Arc::new(store));
        self
    }

    /// Where API keys come from (default [`ApiKeySource::Header`]).
    pub fn api_key_source(mut self, source: ApiKeySource) -> Self {
        self.api_key_source = source;
        self
    }

    /// The header that carries API keys (default `x-api-key`).
    pub fn api_key_header(mut self, name: impl Into<String>) -> Self {
        self.api_key_header = Some(name.into());
        self
    }

    /// Adds a usage plan: throttles and a quota for the API keys in it (see
    /// [`usage_plan`](crate::usage_plan)).
    pub fn usage_plan(mut self, plan: UsagePlan) -> Self {
        self.usage_plans.push(plan);
        self
    }

    /// The clock for throttles and quotas (default the system's); a
    /// [`ManualClock`](crate::clock::ManualClock) makes tests deterministic.
    pub fn clock(mut self, clock: GatewayClock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Keeps the throttles and quotas on Redis, shared by every instance given the same
    /// backend (see [`store`](crate::store)); without it they are in memory, per instance.
    #[cfg(feature = "redis")]
    pub fn redis(mut self, backend: crate::store::RedisBackend) -> Self {
        self.redis = Some(backend);
        self
    }

    /// Whether responses carry `x-ratelimit-limit`, `x-ratelimit-remaining` and
    /// `x-ratelimit-reset` for the throttle that applied (default on).
    pub fn rate_limit_headers(mut self, send: bool) -> Self {
        self.rate_limit_headers = Some(send);
        self
    }

    /// Declares a request validator under `name`, for routes that name it
    /// ([`Route::validator`]); see [`validate`](crate::validate).
    pub fn request_validator(mut self, name: impl Into<String>, validator: Validator) -> Self {
        self.validation.validators.push((name.into(), validator));
        self
    }

    /// Declares a model (a JSON Schema) under `name`, for routes that name it
    /// ([`Route::request_model`]). It is compiled by [`build`](Self::build).
    pub fn model(mut self, name: impl Into<String>, schema: serde_json::Value) -> Self {
        self.validation.models.push((name.into(), schema));
        self
    }

    /// The dialect of models without a `$schema` (default draft 4, as API Gateway's models).
    pub fn default_schema_draft(mut self, draft: SchemaDraft) -> Self {
        self.validation.default_draft = draft;
        self
    }

    /// The largest request body accepted, in bytes, on routes without a limit of their own
    /// ([`Route::max_body_bytes`]). Default 10 MB, API Gateway's payload limit.
    pub fn max_body_bytes(mut self, bytes: u64) -> Self {
        self.validation.max_body_bytes = Some(bytes);
        self
    }

    /// Whether `BAD_REQUEST_BODY` responses say why the body was refused (off by default):
    /// see [`GatewayResponsesBuilder::expose_validation_errors`].
    pub fn expose_validation_errors(mut self, expose: bool) -> Self {
        self.responses = self.responses.expose_validation_errors(expose);
        self
    }

    /// Adds an OpenAPI document's operations as routes, with their required parameters and
    /// request-body models, validated by the validator `validator` names (declare it with
    /// [`request_validator`](Self::request_validator)). See [`OpenApi`].
    pub fn openapi(mut self, document: &OpenApi, validator: &str) -> Self {
        for (name, schema) in document.models() {
            self.validation.models.push((name, schema));
        }
        self.routes.extend(document.routes(validator));
        self
    }

    /// Writes an access-log line for every request, in `format` (see
    /// [`observe`](crate::observe)). Off by default.
    pub fn access_log(mut self, format: AccessLog) -> Self {
        self.access_log = Some(format);
        self
    }

    /// Whether the gateway records its [metrics](crate::observe::metrics) (default on; the
    /// crate records metrics only with its feature `metrics`).
    pub fn metrics(mut self, record: bool) -> Self {
        self.metrics = Some(record);
        self
    }

    /// Checks everything and assembles the gateway, serving this configuration as its first
    /// [deployment](Deployments).
    pub fn build(self) -> Result<Gateway, ConfigError> {
        let deployment = self.build_deployment(DeploymentId(1), None, &[], false)?;
        Ok(Gateway {
            live: Arc::new(Live::start(deployment)),
        })
    }

    /// Builds one deployment. `share_with` (the deployment serving now) lends the slots of
    /// its usage plans with the same keys, and `stage_caches` the caches of stages whose canary
    /// uses the stage cache; `canary` says it is a canary deployment.
    pub(crate) fn build_deployment(
        self,
        id: DeploymentId,
        share_with: Option<&GatewayShared>,
        stage_caches: &[(Box<str>, Arc<StageCache>)],
        canary: bool,
    ) -> Result<GatewayShared, ConfigError> {
        let source = self.clone();
        let selection = resolve_selection(self.selection, &self.stages)?;
        let declared_stages = self.stages.clone();
        let key_header = key_header(self.api_key_header.as_deref(), "api_key_header")?;
        let stages = StageSelector::new(self.stages, selection, self.default_stage)?
            .with_key_header(key_header.clone());
        let routes = RouteTable::new(
            self.routes,
            self.unmatched,
            self.max_path_length.unwrap_or(DEFAULT_MAX_PATH_LENGTH),
        )?;
        let validation = GatewayValidation::new(self.validation, &routes)?;
        let authorizers = RouteAuthorizers::new(self.authorizers, &routes)?;
        if self.api_key_source == ApiKeySource::Authorizer {
            // Only a custom authorizer names a usage identifier key; any other keyed route
            // would refuse every request.
            for (index, (key, settings)) in routes.routes().enumerate() {
                let custom = authorizers
                    .as_ref()
                    .is_some_and(|authorizers| authorizers.has_custom(index));
                if settings.api_key_required && !custom {
                    return Err(ConfigError::new(
                        format!("routes[{key}].authorizer"),
                        "with the AUTHORIZER key source, a route that requires an API key needs \
                         a custom authorizer to name the key (its usage identifier)",
                    ));
                }
            }
        }
        let api_keys = match self.api_keys {
            Some(store) => Some(ApiKeyCheck::new(
                store,
                self.api_key_source,
                key_header,
                // Requests no route matched (passed through) carry no route settings.
                false,
            )),
            None => {
                if let Some((key, _)) = routes.routes().find(|(_, s)| s.api_key_required) {
                    return Err(ConfigError::new(
                        format!("routes[{key}].api_key_required"),
                        "the route requires an API key but the gateway has no key store \
                         (GatewayBuilder::api_key_store, or `api_keys` in the configuration)",
                    ));
                }
                None
            }
        };
        if api_keys.is_none() && !self.usage_plans.is_empty() {
            return Err(ConfigError::new(
                "usage_plans",
                "usage plans meter API keys, and the gateway has no key store",
            ));
        }
        let clock = self.clock.unwrap_or_default();
        let responses = self.responses.build()?;
        let cache_home = CacheHome {
            clock: &clock,
            lent: stage_caches,
            #[cfg(feature = "redis")]
            redis: self.redis.as_ref(),
            #[cfg(feature = "redis")]
            canary,
        };
        #[cfg(not(feature = "redis"))]
        let _ = canary;
        let cache = CacheState::for_gateway(&declared_stages, &routes, &responses, &cache_home)?
            .map(Arc::new);
        let headers = self.rate_limit_headers.unwrap_or(true);
        #[cfg(feature = "redis")]
        let redis = self.redis;
        #[cfg(not(feature = "redis"))]
        let redis: Option<std::convert::Infallible> = None;
        let throttles = match redis {
            #[cfg(feature = "redis")]
            Some(backend) => ThrottleEngine::on_redis(
                self.usage_plans,
                &declared_stages,
                &routes,
                clock,
                headers,
                backend,
                self.metrics.unwrap_or(true),
            )?,
            _ => ThrottleEngine::new(
                self.usage_plans,
                &declared_stages,
                &routes,
                clock,
                headers,
                share_with.and_then(|shared| shared.throttles.as_deref()),
            )?,
        }
        .map(Arc::new);
        Ok(GatewayShared {
            id,
            source,
            observer: Observer::new(self.access_log, self.metrics.unwrap_or(true)),
            context: self.context.build()?,
            stages,
            routes,
            authorizers,
            api_keys,
            throttles,
            validation,
            cache,
            responses,
        })
    }
}

/// One deployment: the gateway's configuration, built.
#[derive(Debug)]
pub(crate) struct GatewayShared {
    id: DeploymentId,
    /// What it was built from, for rebuilding it (rollback, promotion).
    source: GatewayBuilder,
    /// The access log and metrics, when either is on.
    observer: Option<Arc<Observer>>,
    context: ContextSettings,
    stages: StageSelector,
    routes: RouteTable,
    authorizers: Option<RouteAuthorizers>,
    api_keys: Option<ApiKeyCheck>,
    throttles: Option<Arc<ThrottleEngine>>,
    validation: GatewayValidation,
    cache: Option<Arc<CacheState>>,
    responses: GatewayResponses,
}

impl KeyOf for Live {
    fn baseline(&self) -> Option<Arc<CacheState>> {
        self.active.load().baseline.cache.clone()
    }

    fn states(&self) -> Vec<Arc<CacheState>> {
        let active = self.active.load();
        std::iter::once(&active.baseline)
            .chain(&active.canary)
            .filter_map(|deployment| deployment.cache.clone())
            .collect()
    }

    fn key_of(
        &self,
        mut request: Request<()>,
        caller: Option<&str>,
    ) -> Option<(Arc<CacheState>, usize, Vec<u8>)> {
        let active = self.active.load();
        let baseline = &active.baseline;
        let context = baseline
            .context
            .begin(&mut request, &mut Decided::default());
        baseline
            .stages
            .apply(&mut request, &context, Some(Release::Baseline))
            .ok()?;
        baseline.routes.apply(&request, &context).ok()?;
        let cache = baseline.cache.as_ref()?;
        let (stage, key) = cache.key_for_flush(&request, &context, caller)?;
        Some((Arc::clone(cache), stage, key))
    }
}

/// A request every step before the body accepted.
struct Admitted {
    rate_limit: Option<RateLimitHeaders>,
    body: BodyPlan,
}

/// How far [`GatewayShared::admit`] got.
enum Admission {
    /// Every step accepted the request.
    Admitted(Admitted),
    /// A step needs to wait; the steps after it run when it answers.
    Waiting(Pending),
}

/// A step of admission that waits.
enum Pending {
    /// The route's authorizer (a custom authorizer's function, a key fetch).
    Authorizer(AuthorizationFuture),
    /// The throttles and quota on Redis.
    #[cfg(feature = "redis")]
    Throttle(crate::usage_plan::ThrottleFuture),
}

impl GatewayShared {
    /// The first steps of the request cycle, which come before the request's context: it is
    /// created with what they decided (in `decided`, also when one of them rejects the
    /// request).
    #[inline]
    fn decide<B>(
        &self,
        request: &mut Request<B>,
        release: Option<Release>,
        decided: &mut Decided,
    ) -> Result<(), GatewayError> {
        // Stage: select it, strip the base path; the stage variables come with it. Canary:
        // baseline or canary for this request (`release` when the gateway picked it to choose
        // between deployments), with the canary's variable overrides.
        self.stages.decide(request, release, decided)?;
        // Route: method + resource template, path parameters.
        let original_path = decided
            .original_uri
            .as_ref()
            .unwrap_or(request.uri())
            .path();
        decided.route = self.routes.decide(request, original_path)?;
        Ok(())
    }

    /// The rest of the request cycle up to the integration, in API Gateway's order, once the
    /// stage and route are in `context`. Each step records what it learns in `context` or
    /// rejects the request.
    #[inline]
    fn admit<B: Body>(
        &self,
        request: &mut Request<B>,
        context: &RequestContext,
    ) -> Result<Admission, GatewayError> {
        execution_log!(
            request_id = %context.request_id(),
            stage = context.stage().map(Stage::name),
            resource = context.resource_path(),
            release = context.release().as_str(),
            "stage and route selected"
        );
        // Authorizer: who the caller is, on routes that name one.
        if let Some(authorizers) = &self.authorizers {
            match authorizers.authorize(request, context) {
                None => {}
                Some(Authorization::Done(result)) => record_authorized(context, result?),
                Some(Authorization::Pending(future)) => {
                    return Ok(Admission::Waiting(Pending::Authorizer(future)));
                }
            }
        }
        self.admit_after_authorizer(request, context)
    }

    #[inline]
    fn admit_after_authorizer<B: Body>(
        &self,
        request: &Request<B>,
        context: &RequestContext,
    ) -> Result<Admission, GatewayError> {
        // API key: on routes that require one.
        if let Some(api_keys) = &self.api_keys {
            api_keys.apply(request, context)?;
            if let Some(key_id) = context.api_key_id() {
                execution_log!(
                    request_id = %context.request_id(),
                    key_id,
                    "API key accepted"
                );
            }
        }
        // Usage plan: the client's throttle, the stage's throttle, the quota.
        let rate_limit = match &self.throttles {
            Some(throttles) => match throttles.admit(context) {
                Throttling::Done(decided) => decided?,
                #[cfg(feature = "redis")]
                Throttling::Pending(future) => {
                    return Ok(Admission::Waiting(Pending::Throttle(future)));
                }
            },
            None => None,
        };
        self.admit_after_throttle(request, context, rate_limit)
            .map(Admission::Admitted)
    }

    #[inline]
    fn admit_after_throttle<B: Body>(
        &self,
        request: &Request<B>,
        context: &RequestContext,
        rate_limit: Option<RateLimitHeaders>,
    ) -> Result<Admitted, GatewayError> {
        if self.throttles.is_some() {
            execution_log!(
                request_id = %context.request_id(),
                "throttle and quota checks passed"
            );
        }
        // Validator: the payload limit, required parameters, the body's media type; the body
        // itself is read and validated on its way to the service.
        let body = self
            .validation
            .for_request(context)
            .check_head(request, context)?;
        // The response cache runs in front of the service (see `GatewayService::inner`), once
        // the body is through.
        Ok(Admitted { rate_limit, body })
    }
}

/// Records the authorizer's answer: its latency, and an execution-log event.
fn authorizer_answered(
    context: &RequestContext,
    started: Instant,
    result: &Result<Authorized, GatewayError>,
) {
    context.record_authorizer(started.elapsed(), result.is_ok());
    match result {
        Ok(authorized) => execution_log!(
            request_id = %context.request_id(),
            principal = authorized.identity.principal_id(),
            "authorizer accepted the request"
        ),
        Err(error) => execution_log!(
            request_id = %context.request_id(),
            response_type = error.response_type().name(),
            "authorizer refused the request"
        ),
    }
}

fn record_authorized(context: &RequestContext, authorized: Authorized) {
    context.set_identity(authorized.identity);
    if let Some(digest) = authorized.usage_identifier {
        context.set_usage_identifier_digest(digest);
    }
}

/// The assembled gateway: a `tower::Layer` for any HTTP service.
///
/// Cheap to clone. Wrap a service with `gateway.layer(service)` or a
/// `tower::ServiceBuilder`; give it to tonic as `Server::builder().layer(gateway)`. With axum,
/// wrap the whole router (`gateway.layer(router)`): `Router::new()...layer(gateway)` also
/// works, but axum runs such layers after its own routing, so only a gateway with a fixed
/// stage (no base path to strip) belongs there.
pub struct Gateway {
    live: Arc<Live>,
}

impl Gateway {
    /// Starts a [`GatewayBuilder`].
    pub fn builder() -> GatewayBuilder {
        GatewayBuilder::new()
    }

    /// Flushing and sizing the stages' [response caches](crate::cache), when the deployment
    /// serving now has a cache. The handle follows later deployments.
    pub fn response_caches(&self) -> Option<ResponseCaches> {
        self.live.active.load().baseline.cache.as_ref()?;
        Some(ResponseCaches {
            source: Arc::clone(&self.live) as Arc<dyn KeyOf>,
        })
    }

    /// The usage API of the gateway's plans (read, extend or reset a key's quota; daily
    /// counts), when the deployment serving now has any throttle or plan. The handle follows
    /// later deployments.
    pub fn usage_plans(&self) -> Option<UsagePlans> {
        self.live.active.load().baseline.throttles.as_ref()?;
        let live = Arc::clone(&self.live);
        Some(UsagePlans {
            engine: Arc::new(move || live.active.load().baseline.throttles.clone()),
        })
    }

    /// Switching, rolling back and promoting [deployments](Deployments) while the gateway
    /// serves.
    pub fn deployments(&self) -> Deployments {
        Deployments {
            live: Arc::clone(&self.live),
        }
    }
}

impl Clone for Gateway {
    fn clone(&self) -> Self {
        Self {
            live: Arc::clone(&self.live),
        }
    }
}

impl fmt::Debug for Gateway {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gateway").finish_non_exhaustive()
    }
}

impl<S> Layer<S> for Gateway {
    type Service = GatewayService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GatewayService {
            // Set to the admitting deployment's cache on each call.
            inner: ResponseCache::new(inner, None),
            live: Arc::clone(&self.live),
        }
    }
}

/// The service a [`Gateway`] wraps around the user's service.
///
/// The wrapped service must be `Clone` (axum's `Router`, tonic's routes and `service_fn`
/// closures are; wrap others in `tower::buffer::Buffer`): a request that waits for its
/// authorizer takes the service that was polled ready with it, and a clone takes its place.
pub struct GatewayService<S> {
    /// The user's service, behind the last step of the cycle: the response cache.
    inner: ResponseCache<S>,
    live: Arc<Live>,
}

impl<S: Clone> Clone for GatewayService<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            live: Arc::clone(&self.live),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for GatewayService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatewayService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for GatewayService<S>
where
    S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>> + Clone,
    ReqBody: Body<Data = Bytes>,
    ReqBody::Error: Into<BoxError>,
    ResBody: GatewayBody + Body<Data = Bytes>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = GatewayFuture<S, ReqBody, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let active = self.live.active.load();
        // With a canary deployment, the pick comes first: it says which deployment admits
        // the request.
        let (deployment, release) = match &active.canary {
            None => (&active.baseline, None),
            Some(canary) => match active.baseline.stages.pick_release(&request) {
                Some(Release::Canary) => (canary, Some(Release::Canary)),
                picked => (&active.baseline, picked),
            },
        };
        let shared = &**deployment;
        // The cache step is the deployment's too.
        self.inner.follow(shared.cache.as_ref());
        let mut decided = Decided::default();
        let routed = shared.decide(&mut request, release, &mut decided);
        let context = shared.context.begin(&mut request, &mut decided);
        let mut finish = shared.context.finish(&context);
        finish.time_integration = shared.observer.is_some();
        let span = trace_span!(
            "request",
            request_id = %context.request_id(),
            method = %context.http_method(),
            stage = tracing::field::Empty,
            resource = tracing::field::Empty,
            trace_id = context.trace_parent().map(|parent| parent.trace_id()),
            status = tracing::field::Empty,
        );
        // Owned, so that the future can be built where it is returned (taking the span) while
        // the span is still entered: the integration span is the request span's child. A
        // disabled span is not entered: with `tracing`'s `log` feature, entering and leaving
        // it would still ask `log` whether to write about it, on every request.
        let entered = (!span.is_disabled()).then(|| span.clone().entered());
        let watch = shared
            .observer
            .as_ref()
            .map(|observer| observer.watch(&context));
        // As every admission step's rejection, the response carries the canary's release once
        // the request is routed.
        finish.send_release = routed.is_ok();
        let admitted = routed.and_then(|()| shared.admit(&mut request, &context));
        if !span.is_disabled() {
            crate::rarely(|| {
                span.record("stage", context.stage().map(Stage::name));
                span.record("resource", context.resource_path());
            });
        }
        let admitted = match admitted {
            Ok(Admission::Admitted(admitted)) => Ok(admitted),
            Ok(Admission::Waiting(pending)) => {
                drop(entered);
                return crate::rarely(|| {
                    // The service polled ready is the one that must take the request: it goes
                    // into the future, and a fresh clone waits here for the next `poll_ready`.
                    let ready = self.inner.clone();
                    let service = std::mem::replace(&mut self.inner, ready);
                    GatewayFuture {
                        state: GatewayState::Waiting {
                            pending,
                            waiting: Some(Box::new(Waiting {
                                service,
                                request,
                                context,
                                finish,
                                shared: Arc::clone(deployment),
                            })),
                        },
                        span,
                        watch,
                    }
                });
            }
            Err(error) => Err(error),
        };
        match (admitted, self.inner.uncached()) {
            // The common course, without the steps that do nothing for it (no body to
            // validate, no cache): the service's future is held with fewer layers to move
            // it through. The future is built where it is returned, not moved there.
            (
                Ok(Admitted {
                    rate_limit,
                    body: BodyPlan::Stream { limit },
                }),
                Some(service),
            ) => {
                finish.rate_limit = rate_limit;
                GatewayFuture {
                    state: GatewayState::Direct {
                        future: Integration::call(
                            service,
                            request.map(|body| RequestBody::limited(body, limit)),
                            Some(finish),
                        ),
                    },
                    span,
                    watch,
                }
            }
            // Out of line: requests that are validated, cached or rejected are fewer, and they
            // cost more than the call anyway.
            (admitted, _) => crate::rarely(|| GatewayFuture {
                state: GatewayState::Admitted {
                    future: Box::pin(shared.proceed(
                        &mut self.inner,
                        request,
                        context,
                        finish,
                        admitted,
                    )),
                },
                span,
                watch,
            }),
        }
    }
}

impl GatewayShared {
    /// The end of admission: the request goes to the service (its body streamed under the
    /// limit, or first read and validated), or its rejection is rendered.
    fn proceed<S, ReqBody, ResBody>(
        &self,
        service: &mut S,
        request: Request<ReqBody>,
        context: RequestContext,
        mut finish: Finish,
        admitted: Result<Admitted, GatewayError>,
    ) -> ToService<S, ReqBody, ResBody>
    where
        S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>> + Clone,
        ReqBody: Body,
        ReqBody::Error: Into<BoxError>,
        ResBody: GatewayBody,
    {
        let plan = admitted.map(|Admitted { rate_limit, body }| {
            finish.rate_limit = rate_limit;
            body
        });
        ToService::start(
            plan,
            service,
            request,
            context,
            &self.responses,
            Some(finish),
        )
    }
}

pin_project! {
    /// The response future of [`GatewayService`].
    pub struct GatewayFuture<S, ReqBody, ResBody>
    where
        S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>>,
        ResponseCache<S>: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>>,
        ReqBody: Body,
        ReqBody::Error: Into<BoxError>,
    {
        #[pin]
        state: GatewayState<S, ReqBody, ResBody>,
        // The request's span, entered while the future is polled.
        span: tracing::Span,
        // Writes the access log and metrics once the response ends (or the client leaves).
        watch: Option<Watch>,
    }
}

pin_project! {
    #[project = GatewayStateProjection]
    enum GatewayState<S, ReqBody, ResBody>
    where
        S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>>,
        ResponseCache<S>: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>>,
        ReqBody: Body,
        ReqBody::Error: Into<BoxError>,
    {
        Direct {
            #[pin]
            future: ResponseFuture<S::Future, ResBody>,
        },
        // Boxed, as the two below: only requests that are validated, cached or rejected come
        // here, and held inline its (bigger) future would make every request's future, and
        // every move of it, bigger.
        Admitted {
            future: Pin<Box<ToService<ResponseCache<S>, ReqBody, ResBody>>>,
        },
        // Boxed: only requests waiting for an authorizer or a shared throttle come here, and
        // held inline the request would make every request's future (and its moves) bigger.
        Waiting {
            pending: Pending,
            waiting: Option<Box<Waiting<ResponseCache<S>, ReqBody>>>,
        },
    }
}

/// A request waiting for its authorizer, with the service that will take it.
struct Waiting<S, ReqBody> {
    service: S,
    request: Request<ReqBody>,
    context: RequestContext,
    finish: Finish,
    shared: Arc<GatewayShared>,
}

impl<S, ReqBody, ResBody> Future for GatewayFuture<S, ReqBody, ResBody>
where
    S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>> + Clone,
    ReqBody: Body<Data = Bytes>,
    ReqBody::Error: Into<BoxError>,
    ResBody: GatewayBody + Body<Data = Bytes>,
{
    type Output = Result<Response<ResBody>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut state = this.state;
        // The common course, with nothing to record about the answer: the response is passed on
        // as it comes, not moved through the steps below.
        if this.watch.is_none()
            && this.span.is_disabled()
            && let GatewayStateProjection::Direct { future } = state.as_mut().project()
        {
            return future.poll(cx);
        }
        let _entered = (!this.span.is_disabled()).then(|| this.span.enter());
        loop {
            let answered = match state.as_mut().project() {
                GatewayStateProjection::Direct { future } => ready!(future.poll(cx)),
                GatewayStateProjection::Admitted { future } => ready!(future.as_mut().poll(cx)),
                GatewayStateProjection::Waiting { pending, waiting } => {
                    let Some(held) = waiting.as_ref() else {
                        panic!("GatewayFuture polled after completion");
                    };
                    let admission = match pending {
                        Pending::Authorizer(authorization) => {
                            ready!(authorization.as_mut().poll(cx)).and_then(|authorized| {
                                record_authorized(&held.context, authorized);
                                held.shared
                                    .admit_after_authorizer(&held.request, &held.context)
                            })
                        }
                        #[cfg(feature = "redis")]
                        Pending::Throttle(throttle) => {
                            ready!(throttle.as_mut().poll(cx)).and_then(|rate_limit| {
                                held.shared
                                    .admit_after_throttle(&held.request, &held.context, rate_limit)
                                    .map(Admission::Admitted)
                            })
                        }
                    };
                    let admitted = match admission {
                        Ok(Admission::Waiting(next)) => {
                            *pending = next;
                            continue;
                        }
                        Ok(Admission::Admitted(admitted)) => Ok(admitted),
                        Err(error) => Err(error),
                    };
                    let Waiting {
                        mut service,
                        request,
                        context,
                        finish,
                        shared,
                    } = *waiting
                        .take()
                        .expect("GatewayFuture polled after completion");
                    let next = shared.proceed(&mut service, request, context, finish, admitted);
                    state.set(GatewayState::Admitted {
                        future: Box::pin(next),
                    });
                    continue;
                }
            };
            let response = match answered {
                Ok(response) => response,
                Err(error) => {
                    if let Some(watch) = this.watch.take() {
                        watch.failed();
                    }
                    return Poll::Ready(Err(error));
                }
            };
            if !this.span.is_disabled() {
                this.span.record("status", response.status().as_u16());
            }
            return Poll::Ready(Ok(match this.watch.take() {
                Some(watch) => watch.respond(response),
                None => response,
            }));
        }
    }
}

/// An authorizer as declared on the builder.
#[derive(Clone)]
enum DeclaredAuthorizer {
    Jwt(JwtAuthorizer),
    Custom(CustomAuthorizer),
}

/// A route's authorizer, with what the route asks of it.
enum RouteAuthorizer {
    Jwt(JwtAuthorizer, RouteRequirements),
    Custom(CustomAuthorizer),
}

/// Each route's authorizer, resolved by route index when the gateway is built.
struct RouteAuthorizers {
    by_route: Vec<Option<RouteAuthorizer>>,
}

impl fmt::Debug for RouteAuthorizers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteAuthorizers").finish_non_exhaustive()
    }
}

impl RouteAuthorizers {
    fn new(
        declared: Vec<(String, DeclaredAuthorizer)>,
        routes: &RouteTable,
    ) -> Result<Option<Self>, ConfigError> {
        let mut named: Vec<(String, DeclaredAuthorizer)> = Vec::with_capacity(declared.len());
        for (name, authorizer) in declared {
            if name.is_empty() || named.iter().any(|(existing, _)| *existing == name) {
                return Err(ConfigError::new(
                    format!("authorizers[{name}]"),
                    "authorizer names must be non-empty and unique",
                ));
            }
            named.push((name, authorizer));
        }
        let mut by_route = Vec::new();
        for (key, settings) in routes.routes() {
            let guard = match &settings.authorizer {
                None if !settings.authorization_scopes.is_empty() => {
                    return Err(ConfigError::new(
                        format!("routes[{key}].authorization_scopes"),
                        "scopes need an authorizer on the route",
                    ));
                }
                None if !settings.authorization_groups.is_empty() => {
                    return Err(ConfigError::new(
                        format!("routes[{key}].authorization_groups"),
                        "groups need an authorizer on the route",
                    ));
                }
                None => None,
                Some(name) => {
                    let (_, authorizer) = named
                        .iter()
                        .find(|(declared, _)| declared == name)
                        .ok_or_else(|| {
                            ConfigError::new(
                                format!("routes[{key}].authorizer"),
                                format!("no authorizer is declared as `{name}`"),
                            )
                        })?;
                    Some(match authorizer {
                        DeclaredAuthorizer::Jwt(jwt) => RouteAuthorizer::Jwt(
                            jwt.clone(),
                            RouteRequirements {
                                scopes: settings.authorization_scopes.clone().into(),
                                groups: settings.authorization_groups.clone().into(),
                            },
                        ),
                        DeclaredAuthorizer::Custom(_)
                            if !settings.authorization_scopes.is_empty()
                                || !settings.authorization_groups.is_empty() =>
                        {
                            return Err(ConfigError::new(
                                format!("routes[{key}].authorization_scopes"),
                                "scopes and groups are checked by JWT authorizers; a custom \
                                 authorizer decides with its policy",
                            ));
                        }
                        DeclaredAuthorizer::Custom(custom) => {
                            RouteAuthorizer::Custom(custom.clone())
                        }
                    })
                }
            };
            by_route.push(guard);
        }
        Ok(by_route
            .iter()
            .any(Option::is_some)
            .then_some(Self { by_route }))
    }

    /// Whether the route at `index` has a custom authorizer, which can name a usage
    /// identifier key.
    fn has_custom(&self, index: usize) -> bool {
        matches!(
            self.by_route.get(index),
            Some(Some(RouteAuthorizer::Custom(_)))
        )
    }

    /// The route's authorizer's answer, or `None` for a route without one. The answer is
    /// timed for `$context.authorizer.latency` and runs in the `authorizer` span.
    fn authorize<B>(
        &self,
        request: &Request<B>,
        context: &RequestContext,
    ) -> Option<Authorization> {
        let guard = context
            .route()
            .and_then(|route| self.by_route.get(route.index()))
            .and_then(Option::as_ref)?;
        let span = trace_span!("authorizer");
        let started = Instant::now();
        let authorization = span.in_scope(|| match guard {
            RouteAuthorizer::Jwt(authorizer, scopes) => {
                authorizer.authorize(request.headers(), scopes)
            }
            RouteAuthorizer::Custom(authorizer) => authorizer.authorize(request, context),
        });
        Some(match authorization {
            Authorization::Done(result) => {
                authorizer_answered(context, started, &result);
                Authorization::Done(result)
            }
            Authorization::Pending(future) => {
                let context = context.clone();
                Authorization::Pending(Box::pin(
                    async move {
                        let result = future.await;
                        authorizer_answered(&context, started, &result);
                        result
                    }
                    .instrument(span),
                ))
            }
        })
    }
}
