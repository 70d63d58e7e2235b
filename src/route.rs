//! The route table: resources, methods and per-route settings, as in API Gateway.
//!
//! A [`Route`] is a method (or `ANY`) on a resource template: `/pets`, `/pets/{petId}`, or a
//! greedy `/files/{proxy+}` (one or more trailing segments). [`Route::default_route`] is
//! `$default`, which catches requests no other route matches.
//!
//! Selection follows API Gateway: among the routes declared for the request's method or for
//! `ANY`, the most specific template that matches the path wins (segment by segment, static
//! beats `{param}`, which beats `{proxy+}`), so `POST /pets/1` with routes `GET /pets/{id}`
//! and `ANY /{proxy+}` gets the greedy route, not `$default`. When two are equally specific,
//! the method's own route wins over `ANY`. Unlike API Gateway, a `HEAD` request without a
//! `HEAD` route uses the `GET` route (before `ANY`), because axum serves `HEAD` with the `GET`
//! handler and the gateway must apply that handler's settings.
//!
//! Matching uses the path as the client sent it (percent-encoded), like axum's router, so the
//! gateway and an axum router behind it see the same path; path parameters are
//! percent-decoded (a `%` not followed by two hex digits stays as it is, as in axum). A path
//! with a `.` or `..` segment (also written `%2e`) or `%00`, a parameter that is not UTF-8
//! once decoded, or one whose decoded value holds a `.` or `..` between `/` (from `%2F`) gets
//! 400 (`DEFAULT_4XX`); a path longer than 8 KiB gets 413 (`REQUEST_TOO_LARGE`, API Gateway's
//! type for oversize requests, with the message `Request-URI Too Long`).
//!
//! A request that matches no route is rejected with 403 `MISSING_AUTHENTICATION_TOKEN` by
//! default, as API Gateway does: a route that was forgotten in the gateway's table is then
//! closed rather than silently served without its controls. [`UnmatchedRoutes::PassThrough`]
//! passes such requests to the inner service instead (with the stage's defaults), for
//! adopting the gateway one route at a time.
//!
//! # Example
//!
//! ```
//! use http::Method;
//! use tower_gateway::route::{Route, RouteLayer};
//!
//! let layer = RouteLayer::builder()
//!     .route(Route::new(Method::GET, "/pets"))
//!     .route(Route::new(Method::GET, "/pets/{petId}"))
//!     .route(Route::any("/static/{proxy+}"))
//!     .build()
//!     .expect("valid routes");
//! # let _ = layer;
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Method, Request, Response};
use percent_encoding::percent_decode_str;
use serde::{Deserialize, Serialize};
use tower_layer::Layer;
use tower_service::Service;

use crate::body::GatewayBody;
use crate::context::RequestContext;
use crate::error::{ConfigError, is_identifier};
use crate::future::{ResponseFuture, run_step};
use crate::response::{GatewayError, GatewayResponseType, GatewayResponses};
use crate::validate::RequestParameter;

/// The longest request path the route table accepts, by default.
pub const DEFAULT_MAX_PATH_LENGTH: usize = 8 * 1024;

const DEFAULT_ROUTE_KEY: &str = "$default";

/// The method a route answers: one HTTP method, or any.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RouteMethod {
    /// Every method (`ANY`).
    Any,
    /// One method.
    Method(Method),
}

impl fmt::Display for RouteMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("ANY"),
            Self::Method(method) => f.write_str(method.as_str()),
        }
    }
}

impl From<Method> for RouteMethod {
    fn from(method: Method) -> Self {
        Self::Method(method)
    }
}

/// A throttle: a token bucket refilled at `rate` requests per second holding at most `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThrottleSettings {
    /// Steady-state requests per second.
    pub rate: f64,
    /// Bucket size: how many requests may arrive at once.
    pub burst: u32,
}

pub use crate::cache::RouteCacheSettings;

/// The settings a route carries for the layers after routing.
///
/// Each capability reads its own slot: `api_key_required` is enforced by the gateway's API-key
/// check (or an [`ApiKeyLayer`](crate::api_key::ApiKeyLayer) after a [`RouteLayer`]), and
/// `throttle` by the gateway's usage-plan step (see [`usage_plan`](crate::usage_plan)), and
/// `authorizer`, `authorization_scopes` and `authorization_groups` by the gateway's
/// [authorizer](crate::authorizer) step (the standalone [`RouteLayer`] refuses them: it has no
/// authorizer to run), and `validator`, `required_parameters`, `request_models` and
/// `max_body_bytes` by the gateway's [validation](crate::validate) step (the standalone
/// [`RouteLayer`] refuses them too), and `cache` by the gateway's [response
/// cache](crate::cache) (the standalone [`RouteLayer`] refuses it: a standalone
/// [`ResponseCacheLayer`](crate::cache::ResponseCacheLayer) has one set of settings).
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct RouteSettings {
    /// Whether a valid API key is required (API Gateway's `apiKeyRequired`).
    pub api_key_required: bool,
    /// The name of the authorizer that guards the route.
    pub authorizer: Option<String>,
    /// Scopes of which the caller's token must hold at least one.
    pub authorization_scopes: Vec<String>,
    /// Groups (a JWT's `cognito:groups`) of which the caller must be in at least one.
    pub authorization_groups: Vec<String>,
    /// The name of the request validator.
    pub validator: Option<String>,
    /// Parameters that must be present and non-blank (checked by a validator with
    /// `validate_parameters`).
    pub required_parameters: Vec<RequestParameter>,
    /// Model names by media type (`application/json`, or `$default`), checked by a validator
    /// with `validate_body`.
    pub request_models: BTreeMap<String, String>,
    /// The largest body accepted, in bytes, instead of the gateway's limit.
    pub max_body_bytes: Option<u64>,
    /// The stage × method throttle for this route.
    pub throttle: Option<ThrottleSettings>,
    /// The route's response-cache override.
    pub cache: Option<RouteCacheSettings>,
}

impl RouteSettings {
    /// The first setting that, outside the gateway, no layer here enforces, by name.
    pub(crate) fn gateway_only_setting(&self) -> Option<&'static str> {
        // Alone, a route table enforces only `api_key_required` (with an `ApiKeyLayer`).
        let gateway_only = [
            (self.authorizer.is_some(), "authorizer"),
            (!self.authorization_scopes.is_empty(), "authorizer"),
            (!self.authorization_groups.is_empty(), "authorizer"),
            (self.throttle.is_some(), "throttle"),
            (self.validator.is_some(), "validator"),
            (!self.required_parameters.is_empty(), "required_parameters"),
            (!self.request_models.is_empty(), "request_models"),
            (self.max_body_bytes.is_some(), "max_body_bytes"),
            (self.cache.is_some(), "cache"),
        ];
        gateway_only
            .into_iter()
            .find_map(|(set, name)| set.then_some(name))
    }
}

/// A route: a method on a resource template, with its settings.
#[derive(Debug, Clone)]
#[must_use]
pub struct Route {
    method: RouteMethod,
    /// `None` for the `$default` route.
    template: Option<String>,
    settings: RouteSettings,
}

impl Route {
    /// `method` on `template`, e.g. `Route::new(Method::GET, "/pets/{petId}")`.
    pub fn new(method: impl Into<RouteMethod>, template: impl Into<String>) -> Self {
        Self {
            method: method.into(),
            template: Some(template.into()),
            settings: RouteSettings::default(),
        }
    }

    /// Every method on `template`.
    pub fn any(template: impl Into<String>) -> Self {
        Self::new(RouteMethod::Any, template)
    }

    /// The `$default` route, which serves every request that matches no other route.
    pub fn default_route() -> Self {
        Self {
            method: RouteMethod::Any,
            template: None,
            settings: RouteSettings::default(),
        }
    }

    /// A route from API Gateway's route key: `GET /pets/{petId}`, `ANY /{proxy+}` or
    /// `$default`.
    pub fn from_key(key: &str) -> Result<Self, ConfigError> {
        if key == DEFAULT_ROUTE_KEY {
            return Ok(Self::default_route());
        }
        let field = || format!("routes[{key}]");
        let (method, template) = key.split_once(' ').ok_or_else(|| {
            ConfigError::new(field(), "a route key is `METHOD /path` or `$default`")
        })?;
        let method = if method == "ANY" {
            RouteMethod::Any
        } else {
            let valid = !method.is_empty() && method.bytes().all(|b| b.is_ascii_uppercase());
            let parsed = Method::from_bytes(method.as_bytes()).ok().filter(|_| valid);
            RouteMethod::Method(parsed.ok_or_else(|| {
                ConfigError::new(field(), format!("`{method}` is not an HTTP method or ANY"))
            })?)
        };
        Ok(Self::new(method, template))
    }

    /// Requires an API key on this route (API Gateway's `apiKeyRequired`).
    pub fn api_key_required(mut self, required: bool) -> Self {
        self.settings.api_key_required = required;
        self
    }

    /// Guards the route with the authorizer declared under `name`.
    pub fn authorizer(mut self, name: impl Into<String>) -> Self {
        self.settings.authorizer = Some(name.into());
        self
    }

    /// Scopes of which the caller's token must hold one.
    pub fn authorization_scopes<I, S>(mut self, scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.settings.authorization_scopes = scopes.into_iter().map(Into::into).collect();
        self
    }

    /// Groups of which the caller must be in one (a JWT authorizer reads them from
    /// `cognito:groups`, or the claim set with
    /// [`groups_claim`](crate::authorizer::jwt::JwtAuthorizerBuilder::groups_claim)).
    pub fn authorization_groups<I, S>(mut self, groups: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.settings.authorization_groups = groups.into_iter().map(Into::into).collect();
        self
    }

    /// Validates requests with the validator declared under `name`
    /// ([`GatewayBuilder::request_validator`](crate::GatewayBuilder::request_validator)).
    pub fn validator(mut self, name: impl Into<String>) -> Self {
        self.settings.validator = Some(name.into());
        self
    }

    /// Requires a parameter to be present and non-blank (with a validator that validates
    /// parameters).
    pub fn required_parameter(mut self, parameter: RequestParameter) -> Self {
        self.settings.required_parameters.push(parameter);
        self
    }

    /// Validates bodies of `media_type` (`application/json`; or `$default` for every media
    /// type without a model of its own) against the model declared as `model`
    /// ([`GatewayBuilder::model`](crate::GatewayBuilder::model)), with a validator that
    /// validates bodies.
    pub fn request_model(
        mut self,
        media_type: impl Into<String>,
        model: impl Into<String>,
    ) -> Self {
        self.settings
            .request_models
            .insert(media_type.into(), model.into());
        self
    }

    /// The largest body this route accepts, in bytes, instead of the gateway's limit.
    pub fn max_body_bytes(mut self, bytes: u64) -> Self {
        self.settings.max_body_bytes = Some(bytes);
        self
    }

    /// Throttles this route on its stage (API Gateway's method settings).
    pub fn throttle(mut self, throttle: ThrottleSettings) -> Self {
        self.settings.throttle = Some(throttle);
        self
    }

    /// Overrides the stage's response-cache settings for this route.
    pub fn cache(mut self, cache: RouteCacheSettings) -> Self {
        self.settings.cache = Some(cache);
        self
    }

    /// Replaces all the settings at once.
    pub fn settings(mut self, settings: RouteSettings) -> Self {
        self.settings = settings;
        self
    }

    /// The route key, e.g. `GET /pets/{petId}`.
    pub fn key(&self) -> String {
        match &self.template {
            Some(template) => format!("{} {template}", self.method),
            None => DEFAULT_ROUTE_KEY.to_owned(),
        }
    }
}

/// A template segment's kind, in the order of preference when two templates match (the
/// derived order is that preference).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Segment {
    Static,
    /// `{param}`: one segment.
    Parameter,
    /// `{proxy+}`: the rest of the path.
    Greedy,
}

/// A route as compiled into the table, shared by every request it matches.
#[derive(Debug)]
struct RouteEntry {
    /// The position in [`RouteTable::routes`], for per-route state kept elsewhere.
    index: usize,
    key: Box<str>,
    method: RouteMethod,
    resource_path: Arc<str>,
    parameter_names: Box<[Box<str>]>,
    /// The template's segments; of two templates that match one path, the one that is smaller
    /// here is the more specific.
    specificity: Box<[Segment]>,
    settings: RouteSettings,
}

/// Where a matched route's path parameters are.
#[derive(Debug, Clone)]
enum Parameters {
    /// Segments of the path, read when asked for: nothing in the path needed decoding, so each
    /// value is the path's segment at its parameter's place in the template (the rest of the
    /// path for a greedy one). `offset` is where the matched path starts in the path the
    /// values are read from. Most requests never read their parameters, and this way they do
    /// not pay for them.
    InPath { offset: u32 },
    /// Percent-decoded (or copied) when the route was matched, in template order.
    Decoded(Box<[Box<str>]>),
}

/// The route a request matched. Its path parameters are read through
/// [`RequestContext::path_parameter`].
#[derive(Clone)]
pub struct MatchedRoute {
    entry: Arc<RouteEntry>,
    /// Relative to the original path given to [`RouteTable::find_in`].
    parameters: Parameters,
}

impl MatchedRoute {
    /// The resource template, e.g. `/pets/{petId}`, or `$default`.
    pub fn resource_path(&self) -> &str {
        &self.entry.resource_path
    }

    /// The route's method (`ANY` for routes that take every method).
    pub fn method(&self) -> &RouteMethod {
        &self.entry.method
    }

    /// The route's settings.
    pub fn settings(&self) -> &RouteSettings {
        &self.entry.settings
    }

    /// The route's position in the table.
    pub(crate) fn index(&self) -> usize {
        self.entry.index
    }

    /// The parameters, resolved against the path they refer to.
    pub(crate) fn parameters_in<'a>(
        &'a self,
        path: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a str)> {
        let values = match &self.parameters {
            Parameters::InPath { offset } => ParameterValues::InPath {
                kinds: self.entry.specificity.iter(),
                rest: path
                    .get(*offset as usize..)
                    .and_then(|matched| matched.strip_prefix('/'))
                    .unwrap_or(""),
            },
            Parameters::Decoded(values) => ParameterValues::Decoded(values.iter()),
        };
        self.entry
            .parameter_names
            .iter()
            .map(|name| &**name)
            .zip(values)
    }
}

/// The values of [`MatchedRoute::parameters_in`], in template order.
enum ParameterValues<'a> {
    InPath {
        /// The template's segments still to read (see [`RouteEntry::specificity`]).
        kinds: std::slice::Iter<'a, Segment>,
        /// The path from the segment that goes with the next of `kinds`.
        rest: &'a str,
    },
    Decoded(std::slice::Iter<'a, Box<str>>),
}

impl<'a> Iterator for ParameterValues<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        match self {
            Self::InPath { kinds, rest } => loop {
                let kind = *kinds.next()?;
                let (segment, tail) = rest.split_once('/').unwrap_or((rest, ""));
                let value = match kind {
                    Segment::Static => None,
                    Segment::Parameter => Some(segment),
                    Segment::Greedy => Some(*rest),
                };
                *rest = tail;
                if value.is_some() {
                    return value;
                }
            },
            Self::Decoded(values) => values.next().map(|value| &**value),
        }
    }
}

impl fmt::Debug for MatchedRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MatchedRoute")
            .field("method", &self.entry.method)
            .field("resource_path", &self.entry.resource_path)
            .finish_non_exhaustive()
    }
}

/// What happens to a request that matches no route.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnmatchedRoutes {
    /// 403 `MISSING_AUTHENTICATION_TOKEN`, as API Gateway answers (the default).
    #[default]
    Reject,
    /// Pass the request to the inner service with no route in its context.
    PassThrough,
}

/// The compiled route table.
#[derive(Debug)]
pub(crate) struct RouteTable {
    /// One router per declared method.
    by_method: Vec<(Method, matchit::Router<Arc<RouteEntry>>)>,
    any: Option<matchit::Router<Arc<RouteEntry>>>,
    entries: Vec<Arc<RouteEntry>>,
    default_route: Option<Arc<RouteEntry>>,
    unmatched: UnmatchedRoutes,
    max_path_length: usize,
}

/// Why a request could not be routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RouteRejection {
    NoRoute,
    MalformedPath,
    PathTooLong,
}

impl RouteRejection {
    fn into_error(self) -> GatewayError {
        match self {
            Self::NoRoute => GatewayError::new(GatewayResponseType::MissingAuthenticationToken),
            Self::MalformedPath => GatewayError::new(GatewayResponseType::Default4xx),
            Self::PathTooLong => GatewayError::with_message(
                GatewayResponseType::RequestTooLarge,
                "Request-URI Too Long",
            ),
        }
    }
}

impl RouteTable {
    pub(crate) fn new(
        routes: Vec<Route>,
        unmatched: UnmatchedRoutes,
        max_path_length: usize,
    ) -> Result<Self, ConfigError> {
        if routes.is_empty() && unmatched == UnmatchedRoutes::Reject {
            return Err(ConfigError::new(
                "routes",
                "no routes are declared and unmatched requests are rejected: declare routes, \
                 a `$default` route, or pass unmatched requests through",
            ));
        }
        if max_path_length == 0 {
            return Err(ConfigError::new(
                "max_path_length",
                "must be at least 1 (it would refuse every request)",
            ));
        }
        // Every template once, in one router, so that templates that cannot coexist (the
        // same position with different parameter names) are refused whatever their methods.
        let mut shapes = matchit::Router::new();
        let mut templates: Vec<String> = Vec::new();
        let mut default_settings = None;
        let mut table = Self {
            by_method: Vec::new(),
            any: None,
            entries: Vec::new(),
            default_route: None,
            unmatched,
            max_path_length,
        };
        for route in routes {
            let key = route.key();
            let field = format!("routes[{key}]");
            let Some(template) = route.template else {
                if default_settings.is_some() {
                    return Err(ConfigError::new(
                        field,
                        "the `$default` route is declared twice",
                    ));
                }
                if unmatched == UnmatchedRoutes::PassThrough {
                    return Err(ConfigError::new(
                        field,
                        "a `$default` route catches every unmatched request, so passing \
                         unmatched requests through would never apply: choose one",
                    ));
                }
                default_settings = Some(route.settings);
                continue;
            };
            let compiled =
                compile_template(&template).map_err(|rule| ConfigError::new(&field, rule))?;
            if !templates.contains(&template) {
                shapes
                    .insert(compiled.matchit_path.clone(), ())
                    .map_err(|error| {
                        let rule = match error {
                            matchit::InsertError::Conflict { with } => format!(
                                "the template conflicts with `{}` (parameters in the same \
                             position must have the same name)",
                                api_gateway_template(&with)
                            ),
                            other => other.to_string(),
                        };
                        ConfigError::new(&field, rule)
                    })?;
                templates.push(template.clone());
            }
            let entry = Arc::new(RouteEntry {
                index: table.entries.len(),
                key: key.into(),
                method: route.method.clone(),
                resource_path: Arc::from(template.as_str()),
                parameter_names: compiled.parameter_names.into_boxed_slice(),
                specificity: compiled.specificity.into_boxed_slice(),
                settings: route.settings,
            });
            let router = match &route.method {
                RouteMethod::Any => table.any.get_or_insert_with(matchit::Router::new),
                RouteMethod::Method(method) => {
                    let position = match table.by_method.iter().position(|(m, _)| m == method) {
                        Some(position) => position,
                        None => {
                            table
                                .by_method
                                .push((method.clone(), matchit::Router::new()));
                            table.by_method.len() - 1
                        }
                    };
                    &mut table.by_method[position].1
                }
            };
            // Within one method the shapes router has already refused conflicts, so an
            // insertion error here can only be the same template twice.
            router
                .insert(compiled.matchit_path, Arc::clone(&entry))
                .map_err(|_| ConfigError::new(&field, "the route is declared twice"))?;
            table.entries.push(entry);
        }
        table.default_route = default_settings.map(|settings| {
            Arc::new(RouteEntry {
                index: table.entries.len(),
                key: DEFAULT_ROUTE_KEY.into(),
                method: RouteMethod::Any,
                resource_path: Arc::from(DEFAULT_ROUTE_KEY),
                parameter_names: Box::default(),
                specificity: Box::default(),
                settings,
            })
        });
        Ok(table)
    }

    /// The position of the route with this key (`GET /pets/{petId}`, `$default`).
    pub(crate) fn route_index(&self, key: &str) -> Option<usize> {
        self.routes().position(|(route, _)| route == key)
    }

    /// [`find_in`](Self::find_in) for a path that was not rewritten.
    #[cfg(test)]
    pub(crate) fn find(
        &self,
        method: &Method,
        path: &str,
    ) -> Result<Option<MatchedRoute>, RouteRejection> {
        self.find_in(method, path, path)
    }

    /// The route for `method` on `path`: `Ok(None)` when nothing matches and unmatched
    /// requests pass through. The parameters are made relative to `original_path`, the path
    /// as the client sent it, of which `path` is the rewritten form (the stage's base path
    /// removed): the context keeps the original, and reads the parameters from it.
    ///
    /// As API Gateway: the most specific template that matches the path and has a route for
    /// the method (or `ANY`) wins; `$default` only when there is none.
    #[inline]
    pub(crate) fn find_in(
        &self,
        method: &Method,
        path: &str,
        original_path: &str,
    ) -> Result<Option<MatchedRoute>, RouteRejection> {
        if path.len() > self.max_path_length {
            return Err(RouteRejection::PathTooLong);
        }
        let marks = PathMarks::of(path);
        if !path.starts_with('/') || marks.has_dot_segment_or_nul(path) {
            return Err(RouteRejection::MalformedPath);
        }
        let router_for = |wanted: &Method| {
            self.by_method
                .iter()
                .find(|(m, _)| m == wanted)
                .map(|(_, router)| router)
        };
        // In order of preference when two candidates are equally specific: the method
        // itself, then GET for HEAD (as axum serves HEAD with the GET handler), then ANY.
        let head_as_get = (method == Method::HEAD)
            .then(|| router_for(&Method::GET))
            .flatten();
        let exact = router_for(method);
        let best = if head_as_get.is_none() && self.any.is_none() {
            // One candidate, the common case: its match needs no comparing (nor moving).
            exact.and_then(|router| router.at(path).ok())
        } else {
            let mut best: Option<matchit::Match<'_, '_, &Arc<RouteEntry>>> = None;
            for router in [exact, head_as_get, self.any.as_ref()]
                .into_iter()
                .flatten()
            {
                if let Ok(found) = router.at(path) {
                    let better = best
                        .as_ref()
                        .is_none_or(|current| found.value.specificity < current.value.specificity);
                    if better {
                        best = Some(found);
                    }
                }
            }
            best
        };
        let Some(found) = best else {
            return match (&self.default_route, self.unmatched) {
                (Some(entry), _) => Ok(Some(MatchedRoute {
                    entry: Arc::clone(entry),
                    parameters: Parameters::InPath { offset: 0 },
                })),
                (None, UnmatchedRoutes::PassThrough) => Ok(None),
                (None, UnmatchedRoutes::Reject) => Err(RouteRejection::NoRoute),
            };
        };
        // A path without `%` is its own decoded form: its parameters are read from the original
        // path when asked for, where the rewritten one ends it (as it does unless the rewrite
        // put back a `/`). Otherwise they are decoded (and checked) now.
        let parameters = if found.value.parameter_names.is_empty() {
            Parameters::InPath { offset: 0 }
        } else if !marks.percent
            && original_path.ends_with(path)
            && let Ok(offset) = u32::try_from(original_path.len() - path.len())
        {
            Parameters::InPath { offset }
        } else {
            Parameters::Decoded(
                found
                    .params
                    .iter()
                    .map(|(_, raw)| parameter_value(raw))
                    .collect::<Result<_, _>>()?,
            )
        };
        Ok(Some(MatchedRoute {
            entry: Arc::clone(found.value),
            parameters,
        }))
    }

    /// The route for `request`, its parameters found in `original_path` (the path as the
    /// client sent it, which the request's context keeps); `Ok(None)` when nothing matches
    /// and unmatched requests pass through.
    #[inline]
    pub(crate) fn decide<B>(
        &self,
        request: &Request<B>,
        original_path: &str,
    ) -> Result<Option<MatchedRoute>, GatewayError> {
        self.find_in(request.method(), request.uri().path(), original_path)
            .map_err(RouteRejection::into_error)
    }

    /// Routes `request` and records the match in its context.
    pub(crate) fn apply<B>(
        &self,
        request: &Request<B>,
        context: &RequestContext,
    ) -> Result<(), GatewayError> {
        if let Some(route) = self.decide(request, context.path())? {
            context.set_route(route);
        }
        Ok(())
    }

    /// Every declared route's settings, with the route key, for checks at build time.
    pub(crate) fn routes(&self) -> impl Iterator<Item = (&str, &RouteSettings)> {
        self.entries
            .iter()
            .chain(self.default_route.iter())
            .map(|entry| (&*entry.key, &entry.settings))
    }
}

/// A parameter's value, percent-decoded.
fn parameter_value(raw: &str) -> Result<Box<str>, RouteRejection> {
    let decoded = percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| RouteRejection::MalformedPath)?;
    // `%2F` puts a `/` inside a value; a `..` between such slashes would walk out of whatever
    // directory a handler joins the value to.
    if decoded.split('/').any(|part| part == "." || part == "..") {
        return Err(RouteRejection::MalformedPath);
    }
    Ok(decoded.into())
}

/// Whether a path has any of the bytes that need a closer look, and which.
struct PathMarks {
    /// A `.` or a `%`: without either, a path has no dot segment and no encoded NUL.
    marked: bool,
    percent: bool,
}

impl PathMarks {
    #[inline]
    fn of(path: &str) -> Self {
        // Most paths have neither mark: one short loop that stops at the first finds that. A
        // loop over the whole path that the compiler widens runs fewer instructions, but its
        // vector code spans many times the cache lines, which costs more on a busy server.
        let bytes = path.as_bytes();
        match bytes.iter().position(|&byte| byte == b'.' || byte == b'%') {
            None => Self {
                marked: false,
                percent: false,
            },
            Some(first) => Self {
                marked: true,
                percent: bytes[first..].contains(&b'%'),
            },
        }
    }

    /// Whether `path` (the raw path these marks are of) has a `.` or `..` segment (plain or
    /// percent-encoded) or an encoded NUL.
    #[inline]
    fn has_dot_segment_or_nul(&self, path: &str) -> bool {
        self.marked && Self::scan_for_dot_segment_or_nul(path)
    }

    // Out of line: the check above runs on every request and is inlined into the gateway's
    // call; this scan only for paths with a `.` or a `%`.
    #[inline(never)]
    fn scan_for_dot_segment_or_nul(path: &str) -> bool {
        let bytes = path.as_bytes();
        if bytes.windows(3).any(|w| w == b"%00") {
            return true;
        }
        bytes.split(|&b| b == b'/').any(|segment| {
            let segment = segment.split(|&b| b == b';').next().unwrap_or(segment);
            let mut dots = 0;
            let mut rest = segment;
            while !rest.is_empty() {
                if let [b'.', tail @ ..] = rest {
                    rest = tail;
                } else if rest.len() >= 3 && rest[..3].eq_ignore_ascii_case(b"%2e") {
                    rest = &rest[3..];
                } else {
                    return false;
                }
                dots += 1;
            }
            dots == 1 || dots == 2
        })
    }
}

/// A template in matchit's syntax, with its parameter names in order and its specificity.
struct CompiledTemplate {
    matchit_path: String,
    parameter_names: Vec<Box<str>>,
    specificity: Vec<Segment>,
}

/// Turns an API Gateway template into matchit's syntax.
fn compile_template(template: &str) -> Result<CompiledTemplate, String> {
    let mut compiled = CompiledTemplate {
        matchit_path: String::with_capacity(template.len() + 4),
        parameter_names: Vec::new(),
        specificity: Vec::new(),
    };
    if template == "/" {
        compiled.matchit_path.push('/');
        return Ok(compiled);
    }
    let Some(rest) = template.strip_prefix('/') else {
        return Err("a resource template starts with `/`".to_owned());
    };
    let segments: Vec<&str> = rest.split('/').collect();
    for (index, segment) in segments.iter().enumerate() {
        compiled.matchit_path.push('/');
        if segment.is_empty() {
            return Err("a resource template has no empty segments or trailing `/`".to_owned());
        }
        if let Some(inner) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            let (name, greedy) = match inner.strip_suffix('+') {
                Some(name) => (name, true),
                None => (inner, false),
            };
            let name_ok = is_identifier(name, 128);
            if !name_ok {
                return Err(format!(
                    "`{segment}`: a parameter name is letters, digits, `_` and `-`"
                ));
            }
            if compiled.parameter_names.iter().any(|n| &**n == name) {
                return Err(format!("parameter `{name}` appears twice"));
            }
            if greedy {
                if index + 1 != segments.len() {
                    return Err(format!(
                        "`{segment}`: a greedy parameter must be the last segment"
                    ));
                }
                compiled.matchit_path.push_str("{*");
                compiled.specificity.push(Segment::Greedy);
            } else {
                compiled.matchit_path.push('{');
                compiled.specificity.push(Segment::Parameter);
            }
            compiled.matchit_path.push_str(name);
            compiled.matchit_path.push('}');
            compiled.parameter_names.push(name.into());
        } else {
            let literal_ok = segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~:@".contains(&b));
            if !literal_ok || *segment == "." || *segment == ".." {
                return Err(format!(
                    "`{segment}`: a segment is `{{name}}`, `{{name+}}`, or letters, digits and \
                     `-._~:@`"
                ));
            }
            compiled.matchit_path.push_str(segment);
            compiled.specificity.push(Segment::Static);
        }
    }
    Ok(compiled)
}

/// matchit's syntax back to API Gateway's, for error messages.
fn api_gateway_template(matchit_path: &str) -> String {
    let mut out = String::with_capacity(matchit_path.len());
    let mut rest = matchit_path;
    while let Some(start) = rest.find("{*") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').unwrap_or(after.len());
        out.push('{');
        out.push_str(&after[..end]);
        out.push_str("+}");
        rest = after.get(end + 1..).unwrap_or("");
    }
    out.push_str(rest);
    out
}

/// Builds a [`RouteLayer`].
#[derive(Debug, Clone)]
#[must_use]
pub struct RouteLayerBuilder {
    routes: Vec<Route>,
    unmatched: UnmatchedRoutes,
    max_path_length: usize,
    responses: GatewayResponses,
}

impl RouteLayerBuilder {
    /// Declares a route.
    pub fn route(mut self, route: Route) -> Self {
        self.routes.push(route);
        self
    }

    /// What happens to requests that match no route (default: rejected).
    pub fn unmatched(mut self, unmatched: UnmatchedRoutes) -> Self {
        self.unmatched = unmatched;
        self
    }

    /// The longest path accepted, in bytes (default 8 KiB).
    pub fn max_path_length(mut self, bytes: usize) -> Self {
        self.max_path_length = bytes;
        self
    }

    /// The gateway responses used for rejections.
    pub fn responses(mut self, responses: GatewayResponses) -> Self {
        self.responses = responses;
        self
    }

    /// Compiles the table; malformed templates, conflicts and duplicates are errors.
    pub fn build(self) -> Result<RouteLayer, ConfigError> {
        let table = RouteTable::new(self.routes, self.unmatched, self.max_path_length)?;
        reject_gateway_only_settings(&table)?;
        Ok(RouteLayer {
            shared: Arc::new(RouteShared {
                table,
                responses: self.responses,
            }),
        })
    }
}

/// Refuses, in a route table used on its own, settings only the gateway enforces.
fn reject_gateway_only_settings(table: &RouteTable) -> Result<(), ConfigError> {
    for (key, settings) in table.routes() {
        if let Some(setting) = settings.gateway_only_setting() {
            return Err(ConfigError::new(
                format!("routes[{key}].{setting}"),
                "a route layer used on its own enforces only api_key_required (with an \
                 ApiKeyLayer); this setting needs the gateway, and is refused rather than ignored",
            ));
        }
    }
    Ok(())
}

#[derive(Debug)]
struct RouteShared {
    table: RouteTable,
    responses: GatewayResponses,
}

/// Matches each request against the route table and records the route and its path
/// parameters in the request's [`RequestContext`].
pub struct RouteLayer {
    shared: Arc<RouteShared>,
}

impl RouteLayer {
    /// Starts a route layer.
    pub fn builder() -> RouteLayerBuilder {
        RouteLayerBuilder {
            routes: Vec::new(),
            unmatched: UnmatchedRoutes::default(),
            max_path_length: DEFAULT_MAX_PATH_LENGTH,
            responses: GatewayResponses::default(),
        }
    }
}

impl Clone for RouteLayer {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl fmt::Debug for RouteLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteLayer").finish_non_exhaustive()
    }
}

impl<S> Layer<S> for RouteLayer {
    type Service = RouteService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RouteService {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// The service [`RouteLayer`] produces.
pub struct RouteService<S> {
    inner: S,
    shared: Arc<RouteShared>,
}

impl<S: Clone> Clone for RouteService<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for RouteService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteService")
            .field("inner", &self.inner)
            .finish()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RouteService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: GatewayBody,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let shared = &*self.shared;
        run_step(
            &mut self.inner,
            &shared.responses,
            request,
            |request, context| shared.table.apply(request, context),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn table(routes: Vec<Route>) -> RouteTable {
        RouteTable::new(routes, UnmatchedRoutes::Reject, DEFAULT_MAX_PATH_LENGTH).unwrap()
    }

    fn matched(
        table: &RouteTable,
        method: Method,
        path: &str,
    ) -> Option<(String, Vec<(String, String)>)> {
        table.find(&method, path).ok().flatten().map(|m| {
            (
                format!("{} {}", m.method(), m.resource_path()),
                m.parameters_in(path)
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect(),
            )
        })
    }

    fn pets() -> RouteTable {
        table(vec![
            Route::new(Method::GET, "/"),
            Route::new(Method::GET, "/pets"),
            Route::new(Method::POST, "/pets"),
            Route::new(Method::GET, "/pets/{petId}"),
            Route::new(Method::GET, "/pets/mine"),
            Route::any("/pets/{petId}/toys/{toyId}"),
            Route::any("/files/{proxy+}"),
        ])
    }

    #[test]
    fn matches_methods_templates_and_parameters() {
        let table = pets();
        let p = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        assert_eq!(
            matched(&table, Method::GET, "/"),
            Some(("GET /".into(), vec![]))
        );
        assert_eq!(
            matched(&table, Method::GET, "/pets"),
            Some(("GET /pets".into(), vec![]))
        );
        assert_eq!(
            matched(&table, Method::POST, "/pets"),
            Some(("POST /pets".into(), vec![]))
        );
        assert_eq!(matched(&table, Method::DELETE, "/pets"), None);
        assert_eq!(
            matched(&table, Method::GET, "/pets/42"),
            Some(("GET /pets/{petId}".into(), vec![p("petId", "42")]))
        );
        assert_eq!(
            matched(&table, Method::GET, "/pets/mine"),
            Some(("GET /pets/mine".into(), vec![]))
        );
        assert_eq!(
            matched(&table, Method::PATCH, "/pets/1/toys/b%20all"),
            Some((
                "ANY /pets/{petId}/toys/{toyId}".into(),
                vec![p("petId", "1"), p("toyId", "b all")]
            ))
        );
        assert_eq!(
            matched(&table, Method::GET, "/files/a/b/c.txt"),
            Some(("ANY /files/{proxy+}".into(), vec![p("proxy", "a/b/c.txt")]))
        );
        assert_eq!(
            matched(&table, Method::GET, "/files"),
            None,
            "greedy needs a segment"
        );
        assert_eq!(matched(&table, Method::GET, "/pets/"), None);
        assert_eq!(
            matched(&table, Method::GET, "/Pets"),
            None,
            "case-sensitive"
        );
        assert_eq!(
            matched(&table, Method::HEAD, "/pets"),
            Some(("GET /pets".into(), vec![])),
            "HEAD falls back to GET"
        );
    }

    #[test]
    fn parameters_are_copied_when_the_path_was_rewritten_in_between() {
        let table = pets();
        let route = table
            .find_in(&Method::GET, "/pets/7/toys/ball", "/something/else")
            .unwrap()
            .unwrap();
        let values: Vec<_> = route.parameters_in("/something/else").collect();
        assert_eq!(values, vec![("petId", "7"), ("toyId", "ball")]);
    }

    #[test]
    fn a_method_missing_on_the_closest_template_falls_back_to_a_wider_one() {
        // API Gateway: full match with the method, then a greedy route with it, then $default.
        let table = table(vec![
            Route::new(Method::GET, "/pets/{id}"),
            Route::any("/{proxy+}").api_key_required(true),
            Route::default_route(),
        ]);
        assert_eq!(
            matched(&table, Method::POST, "/pets/1").map(|m| m.0),
            Some("ANY /{proxy+}".into()),
            "not $default, which would skip the greedy route's settings"
        );
        assert_eq!(
            matched(&table, Method::GET, "/pets/1").map(|m| m.0),
            Some("GET /pets/{id}".into())
        );
        let specific_any = super::tests::table(vec![
            Route::new(Method::GET, "/{proxy+}"),
            Route::any("/pets/{id}"),
        ]);
        assert_eq!(
            matched(&specific_any, Method::GET, "/pets/1").map(|m| m.0),
            Some("ANY /pets/{id}".into()),
            "a more specific ANY beats a greedy route with the method"
        );
    }

    #[test]
    fn head_prefers_head_then_get_then_any() {
        let table = table(vec![
            Route::new(Method::GET, "/x").api_key_required(true),
            Route::any("/x"),
        ]);
        let head = table.find(&Method::HEAD, "/x").unwrap().unwrap();
        assert_eq!(head.method(), &RouteMethod::Method(Method::GET));
        assert!(
            head.settings().api_key_required,
            "axum serves HEAD with the GET handler"
        );
        let own = super::tests::table(vec![
            Route::new(Method::GET, "/x"),
            Route::new(Method::HEAD, "/x"),
        ]);
        assert_eq!(
            own.find(&Method::HEAD, "/x").unwrap().unwrap().method(),
            &RouteMethod::Method(Method::HEAD)
        );
    }

    #[test]
    fn decoded_parameters_cannot_climb_directories() {
        let table = pets();
        for path in [
            "/files/%2e%2e%2fetc",
            "/files/a/%2E%2E%2Fetc",
            "/files/x%2F..%2Fy",
            "/pets/..%2Fadmin",
        ] {
            assert_eq!(
                table.find(&Method::GET, path).unwrap_err(),
                RouteRejection::MalformedPath,
                "{path}"
            );
        }
        assert_eq!(
            matched(&table, Method::GET, "/files/a%2Fb..c").map(|m| m.1),
            Some(vec![("proxy".into(), "a/b..c".into())])
        );
    }

    #[test]
    fn encoded_slash_stays_inside_a_parameter() {
        let table = pets();
        assert_eq!(
            matched(&table, Method::GET, "/pets/a%2Fb"),
            Some((
                "GET /pets/{petId}".into(),
                vec![("petId".into(), "a/b".into())]
            ))
        );
    }

    #[test]
    fn default_route_and_unmatched_policies() {
        let with_default = table(vec![
            Route::new(Method::GET, "/pets"),
            Route::default_route(),
        ]);
        assert_eq!(
            matched(&with_default, Method::GET, "/nothing"),
            Some(("ANY $default".into(), vec![]))
        );
        assert_eq!(
            with_default
                .find(&Method::GET, "/nothing")
                .unwrap()
                .unwrap()
                .resource_path(),
            "$default"
        );

        let strict = table(vec![Route::new(Method::GET, "/pets")]);
        assert_eq!(
            strict.find(&Method::GET, "/nothing").unwrap_err(),
            RouteRejection::NoRoute
        );

        let lenient = RouteTable::new(
            vec![Route::new(Method::GET, "/pets")],
            UnmatchedRoutes::PassThrough,
            DEFAULT_MAX_PATH_LENGTH,
        )
        .unwrap();
        assert!(lenient.find(&Method::GET, "/nothing").unwrap().is_none());
        assert!(RouteTable::new(vec![], UnmatchedRoutes::PassThrough, 10).is_ok());

        let contradictory = RouteTable::new(
            vec![Route::default_route()],
            UnmatchedRoutes::PassThrough,
            DEFAULT_MAX_PATH_LENGTH,
        )
        .unwrap_err();
        assert_eq!(contradictory.field(), "routes[$default]");
        let zero = RouteTable::new(vec![Route::default_route()], UnmatchedRoutes::Reject, 0);
        assert_eq!(zero.unwrap_err().field(), "max_path_length");

        let short =
            RouteTable::new(vec![Route::default_route()], UnmatchedRoutes::Reject, 6).unwrap();
        assert!(short.find(&Method::GET, "/abcde").is_ok());
        assert_eq!(
            short.find(&Method::GET, "/abcdef").unwrap_err(),
            RouteRejection::PathTooLong
        );
    }

    #[test]
    fn malformed_and_long_paths_are_rejected() {
        let table = pets();
        for path in [
            "/pets/../admin",
            "/pets/./1",
            "/pets/%2e%2E/admin",
            "/pets/.%2e",
            "/pets/..;x=1",
            "/pets/%ff",
            "/pets/a%00b",
            "pets",
        ] {
            assert_eq!(
                table.find(&Method::GET, path).unwrap_err(),
                RouteRejection::MalformedPath,
                "{path}"
            );
        }
        assert_eq!(
            matched(&table, Method::GET, "/pets/...").map(|m| m.1),
            Some(vec![("petId".into(), "...".into())]),
            "three dots are a name, not a dot segment"
        );
        assert_eq!(
            matched(&table, Method::GET, "/pets/.hidden").map(|m| m.1),
            Some(vec![("petId".into(), ".hidden".into())])
        );
        let long = format!("/files/{}", "a".repeat(DEFAULT_MAX_PATH_LENGTH));
        assert_eq!(
            table.find(&Method::GET, &long).unwrap_err(),
            RouteRejection::PathTooLong
        );
    }

    #[test]
    fn bad_tables_name_the_route() {
        let cases: Vec<(Vec<Route>, &str, &str)> = vec![
            (
                vec![Route::new(Method::GET, "pets")],
                "routes[GET pets]",
                "starts with",
            ),
            (
                vec![Route::new(Method::GET, "/pets/")],
                "routes[GET /pets/]",
                "trailing",
            ),
            (
                vec![Route::new(Method::GET, "/pets//x")],
                "routes[GET /pets//x]",
                "empty",
            ),
            (
                vec![Route::new(Method::GET, "/pets/{}")],
                "routes[GET /pets/{}]",
                "parameter name",
            ),
            (
                vec![Route::new(Method::GET, "/a{id}")],
                "routes[GET /a{id}]",
                "segment",
            ),
            (
                vec![Route::new(Method::GET, "/{p+}/x")],
                "routes[GET /{p+}/x]",
                "last segment",
            ),
            (
                vec![Route::new(Method::GET, "/{a}/{a}")],
                "routes[GET /{a}/{a}]",
                "twice",
            ),
            (
                vec![Route::new(Method::GET, "/a/../b")],
                "routes[GET /a/../b]",
                "segment",
            ),
            (
                vec![
                    Route::new(Method::GET, "/pets"),
                    Route::new(Method::GET, "/pets"),
                ],
                "routes[GET /pets]",
                "declared twice",
            ),
            (
                vec![Route::any("/pets"), Route::any("/pets")],
                "routes[ANY /pets]",
                "declared twice",
            ),
            (
                vec![Route::default_route(), Route::default_route()],
                "routes[$default]",
                "twice",
            ),
            (
                vec![
                    Route::new(Method::GET, "/pets/{id}"),
                    Route::new(Method::GET, "/pets/{petId}"),
                ],
                "routes[GET /pets/{petId}]",
                "conflicts with `/pets/{id}`",
            ),
            (vec![], "routes", "no routes"),
            (
                vec![
                    Route::new(Method::GET, "/pets/{id}"),
                    Route::new(Method::POST, "/pets/{petId}"),
                ],
                "routes[POST /pets/{petId}]",
                "conflicts with `/pets/{id}`",
            ),
        ];
        for (routes, field, rule) in cases {
            let error = RouteTable::new(routes, UnmatchedRoutes::Reject, 100).unwrap_err();
            assert_eq!(error.field(), field, "{error}");
            assert!(error.rule().contains(rule), "{error}");
        }
    }

    #[test]
    fn route_keys() {
        assert_eq!(
            Route::from_key("GET /pets/{petId}").unwrap().key(),
            "GET /pets/{petId}"
        );
        assert_eq!(
            Route::from_key("ANY /{proxy+}").unwrap().key(),
            "ANY /{proxy+}"
        );
        assert_eq!(Route::from_key("$default").unwrap().key(), "$default");
        assert!(Route::from_key("GET").is_err());
        assert!(Route::from_key("get /pets").is_err());
        assert!(Route::from_key(" /pets").is_err());
    }

    #[test]
    fn gateway_only_settings_are_refused_alone() {
        let refused = |route: Route| {
            reject_gateway_only_settings(&table(vec![route]))
                .unwrap_err()
                .field()
                .to_owned()
        };
        let keyed = table(vec![
            Route::new(Method::GET, "/pets").api_key_required(true),
        ]);
        assert!(
            reject_gateway_only_settings(&keyed).is_ok(),
            "an ApiKeyLayer after the RouteLayer enforces API keys"
        );
        let throttle = ThrottleSettings {
            rate: 1.0,
            burst: 1,
        };
        assert_eq!(
            refused(Route::new(Method::GET, "/pets").throttle(throttle)),
            "routes[GET /pets].throttle"
        );
        assert_eq!(
            refused(Route::default_route().validator("v")),
            "routes[$default].validator"
        );
        assert_eq!(
            refused(Route::new(Method::GET, "/pets").cache(RouteCacheSettings::new())),
            "routes[GET /pets].cache"
        );
    }

    proptest! {
        #[test]
        fn matching_never_panics(
            path in "(/(pets|files|static|toys|[a-z0-9]{1,3}|%[0-9A-Fa-f]{2}|%|\\.|\\.\\.|;|\\PC{1,3}){0,6})|\\PC{0,20}",
            method in "[A-Z]{1,7}",
        ) {
            let table = pets();
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            if let Ok(Some(route)) = table.find(&method, &path) {
                let declared = ["/", "/pets", "/pets/{petId}", "/pets/mine", "/pets/{petId}/toys/{toyId}", "/files/{proxy+}"];
                prop_assert!(declared.contains(&route.resource_path()));
            }
        }

        #[test]
        fn parameters_round_trip(id in "[A-Za-z0-9 /é%?#]{1,20}") {
            let table = pets();
            let encoded = percent_encoding::utf8_percent_encode(&id, percent_encoding::NON_ALPHANUMERIC).to_string();
            let path = format!("/pets/{encoded}");
            let route = table.find(&Method::GET, &path).unwrap().unwrap();
            let values: Vec<_> = route.parameters_in(&path).collect();
            prop_assert_eq!(values, vec![("petId", id.as_str())]);
            let original = format!("/prod{path}");
            let rebased = table.find_in(&Method::GET, &path, &original).unwrap().unwrap();
            let values: Vec<_> = rebased.parameters_in(&original).collect();
            prop_assert_eq!(values, vec![("petId", id.as_str())]);
        }

        #[test]
        fn parameters_read_from_the_path_are_the_segments_matched(
            id in "[A-Za-z0-9_~:@-]{1,12}",
            toy in "[A-Za-z0-9._~:@-]{1,12}",
            tail in "[a-z0-9]{1,4}(/[a-z0-9;=]{1,4}){0,3}",
        ) {
            prop_assume!(toy != "." && toy != "..");
            let table = pets();
            for (path, expected) in [
                (format!("/pets/{id}/toys/{toy}"), vec![("petId", id.as_str()), ("toyId", toy.as_str())]),
                (format!("/files/{tail}"), vec![("proxy", tail.as_str())]),
            ] {
                let route = table.find(&Method::GET, &path).unwrap().unwrap();
                let values: Vec<_> = route.parameters_in(&path).collect();
                prop_assert_eq!(&values, &expected);
                let original = format!("/prod{path}");
                let rebased = table.find_in(&Method::GET, &path, &original).unwrap().unwrap();
                let values: Vec<_> = rebased.parameters_in(&original).collect();
                prop_assert_eq!(&values, &expected);
                let copied = table.find_in(&Method::GET, &path, "/elsewhere").unwrap().unwrap();
                let values: Vec<_> = copied.parameters_in("/elsewhere").collect();
                prop_assert_eq!(&values, &expected);
            }
        }

        #[test]
        fn template_compilation_never_panics(template in "\\PC{0,40}") {
            let _ = compile_template(&template);
            let _ = RouteTable::new(vec![Route::any(template)], UnmatchedRoutes::Reject, 100);
        }
    }
}
