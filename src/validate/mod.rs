//! Request validation: required parameters, JSON Schema bodies and the payload limit, as API
//! Gateway's request validators.
//!
//! A [`Validator`] says what to check (`validate_parameters`, `validate_body`); a route names
//! one ([`Route::validator`](crate::Route::validator)) and declares what it needs:
//!
//! - **Required parameters** ([`RequestParameter`]): path, query-string and header parameters
//!   that must be present and non-blank. They are checked first; every missing one is listed
//!   in a 400 `{"message":"Missing required request parameters: [page, x-tenant]"}`
//!   (`BAD_REQUEST_PARAMETERS`).
//! - **Body models**: a JSON Schema per media type, with `$default` for every other type
//!   ([`Route::request_model`](crate::Route::request_model)). Schemas are compiled once, when
//!   the gateway is built; those without a `$schema` are read as draft 4, the dialect of API
//!   Gateway's models (see [`SchemaDraft`]). A body the model refuses gets 400
//!   `{"message":"Invalid request body"}` (`BAD_REQUEST_BODY`); why is in
//!   [`RequestContext::validation_error`](crate::RequestContext::validation_error) (at most
//!   1 KiB: the failing paths and rules, with the offending values masked; property names
//!   from the body do appear), and in the response only when asked for
//!   ([`expose_validation_errors`](crate::GatewayBuilder::expose_validation_errors)).
//! - **The payload limit**: 10 MB by default ([`DEFAULT_MAX_BODY_BYTES`]), per gateway and per
//!   route, on every request, validated or not. A `Content-Length` over the limit gets 413
//!   (`REQUEST_TOO_LARGE`) before a byte is read. A body that is validated is read up to the
//!   limit and no further (413 past it). A body that is not validated streams to the service
//!   as a [`RequestBody`](crate::body::RequestBody) that fails with
//!   `http_body_util::LengthLimitError` past the limit, which axum's extractors answer with 413.
//!
//! # How bodies are judged
//!
//! | request | outcome |
//! |---|---|
//! | media type with a model (`application/json; charset=utf-8` is `application/json`) | parsed and validated |
//! | other media type (`text/plain`, `application/problem+json`) | the `$default` model, else 415 `UNSUPPORTED_MEDIA_TYPE` |
//! | no `Content-Type` | as `application/json`, API Gateway's assumption |
//! | two `Content-Type` headers, or one that is not a media type | 415 |
//! | a `Content-Encoding` other than `identity` (a compressed body) | 415: it cannot be validated |
//! | a `charset` other than UTF-8 (`utf-16`) | 415: JSON is UTF-8 |
//! | an empty body, or one that is not a single JSON document | 400 |
//! | a key twice in one object | 400: the service must not read a value other than the one validated |
//! | nested deeper than 128 levels (`[[[[…`) | 400, without deep recursion |
//! | a lone surrogate (`"\ud800"`), a number out of range (`1E400`) | 400 |
//! | an integer beyond 2^64 | validated as the nearest `f64`; the service gets the digits as sent |
//!
//! A body that passes reaches the service byte for byte as it arrived (with its trailers;
//! `Content-Length` then gives its length and `Transfer-Encoding` is removed), so the service
//! parses exactly what was validated. A `HEAD` or `GET` request served by a route with models
//! has its (usually empty) body validated like any other: an empty body is 400. A route with a validator that validates
//! bodies but no models checks only the payload limit.
//!
//! # Example
//!
//! ```
//! use http::Method;
//! use serde_json::json;
//! use tower_gateway::validate::{RequestParameter, Validator};
//! use tower_gateway::{GatewayBuilder, Route, Stage};
//!
//! let gateway = GatewayBuilder::new()
//!     .stage(Stage::builder("prod").build().unwrap())
//!     .request_validator("all", Validator::all())
//!     .model("Pet", json!({
//!         "type": "object",
//!         "required": ["name"],
//!         "properties": {
//!             "name": { "type": "string" },
//!             "price": { "type": "number", "minimum": 0 }
//!         }
//!     }))
//!     .route(
//!         Route::new(Method::POST, "/pets")
//!             .validator("all")
//!             .required_parameter(RequestParameter::header("x-tenant"))
//!             .request_model("application/json", "Pet"),
//!     )
//!     .build()
//!     .expect("valid gateway");
//! # let _ = gateway;
//! ```
//!
//! [`RequestValidatorLayer`] does the same for one service on its own, and
//! [`OpenApi`] turns an OpenAPI 3 document's operations into routes with their parameters and
//! models.

mod layer;
mod model;
mod openapi;
mod parameters;
mod read;

use std::collections::BTreeMap;
use std::sync::Arc;

use http::Request;
use http::header::CONTENT_LENGTH;
use serde::{Deserialize, Serialize};

pub use layer::ResponseFuture;
pub use layer::{RequestValidator, RequestValidatorLayer, RequestValidatorLayerBuilder};
pub use model::SchemaDraft;
pub use openapi::OpenApi;
pub use parameters::RequestParameter;
use parameters::Required;

pub(crate) use model::{BodyModels, CompiledModel};
pub(crate) use read::ToService;

use crate::context::RequestContext;
use crate::error::ConfigError;
use crate::response::{GatewayError, GatewayResponseType};
use crate::route::RouteTable;

/// The largest request body accepted by default: 10 MB, API Gateway's payload limit.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 10 * 1024 * 1024;

/// What a request validator checks, as API Gateway's `validateRequestParameters` and
/// `validateRequestBody`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Validator {
    /// Check the route's required parameters.
    #[serde(default)]
    pub validate_parameters: bool,
    /// Check the body against the route's model for its media type.
    #[serde(default)]
    pub validate_body: bool,
}

impl Validator {
    /// Parameters and body.
    pub const fn all() -> Self {
        Self {
            validate_parameters: true,
            validate_body: true,
        }
    }

    /// Required parameters only.
    pub const fn parameters_only() -> Self {
        Self {
            validate_parameters: true,
            validate_body: false,
        }
    }

    /// The body only.
    pub const fn body_only() -> Self {
        Self {
            validate_parameters: false,
            validate_body: true,
        }
    }
}

/// What one route (or a standalone layer) checks, compiled. Its parts are empty where the
/// route's validator does not check them (the build refuses declarations it would ignore).
#[derive(Debug)]
pub(crate) struct RouteValidation {
    parameters: Box<[Required]>,
    body: Option<BodyModels>,
    max_body_bytes: u64,
}

/// What happens to a request's body once its head passed.
pub(crate) enum BodyPlan {
    /// The body streams to the service under the limit.
    Stream { limit: u64 },
    /// The body is read up to the limit and validated against this model.
    Validate {
        model: Arc<CompiledModel>,
        limit: u64,
    },
}

impl RouteValidation {
    /// Only the payload limit.
    pub(crate) fn limit_only(max_body_bytes: u64) -> Self {
        Self {
            parameters: Box::default(),
            body: None,
            max_body_bytes,
        }
    }

    pub(crate) fn new(
        parameters: Box<[Required]>,
        body: Option<BodyModels>,
        max_body_bytes: u64,
    ) -> Self {
        Self {
            parameters,
            body,
            max_body_bytes,
        }
    }

    /// The checks made on the request's head, in API Gateway's order: the declared length,
    /// the required parameters, then the media type of a body that has a model.
    #[inline]
    pub(crate) fn check_head<B: http_body::Body>(
        &self,
        request: &Request<B>,
        context: &RequestContext,
    ) -> Result<BodyPlan, GatewayError> {
        let limit = self.max_body_bytes;
        // A request without a body (most `GET`s) has no length to look up.
        if !request.body().is_end_stream()
            && let Some(length) = request.headers().get(CONTENT_LENGTH)
        {
            // hyper has already refused a malformed Content-Length; a body of another origin
            // with one is counted as it streams.
            let declared = length
                .to_str()
                .ok()
                .and_then(|text| text.parse::<u64>().ok());
            if declared.is_some_and(|declared| declared > limit) {
                return Err(payload_too_large());
            }
        }
        if !self.parameters.is_empty() {
            parameters::check(&self.parameters, request, context)?;
        }
        Ok(match &self.body {
            None => BodyPlan::Stream { limit },
            Some(models) => BodyPlan::Validate {
                model: Arc::clone(models.model_for(request.headers(), context)?),
                limit,
            },
        })
    }
}

pub(crate) fn payload_too_large() -> GatewayError {
    GatewayError::with_message(GatewayResponseType::RequestTooLarge, "Request Too Long")
}

/// Everything a gateway validates, compiled by route index, with the limit for requests no
/// route matched.
#[derive(Debug)]
pub(crate) struct GatewayValidation {
    by_route: Vec<RouteValidation>,
    unmatched: RouteValidation,
}

/// The validation settings a [`GatewayBuilder`](crate::GatewayBuilder) collects.
#[derive(Debug, Clone, Default)]
pub(crate) struct ValidationOptions {
    pub(crate) validators: Vec<(String, Validator)>,
    pub(crate) models: Vec<(String, serde_json::Value)>,
    pub(crate) default_draft: SchemaDraft,
    pub(crate) max_body_bytes: Option<u64>,
}

impl GatewayValidation {
    pub(crate) fn new(
        options: ValidationOptions,
        routes: &RouteTable,
    ) -> Result<Self, ConfigError> {
        let mut validators: BTreeMap<&str, Validator> = BTreeMap::new();
        for (name, validator) in &options.validators {
            if name.is_empty() || validators.insert(name, *validator).is_some() {
                return Err(ConfigError::new(
                    format!("request_validators[{name}]"),
                    "validator names must be non-empty and unique",
                ));
            }
        }
        let mut models: BTreeMap<&str, Arc<CompiledModel>> = BTreeMap::new();
        for (name, schema) in &options.models {
            let field = format!("models[{name}]");
            if name.is_empty() || models.contains_key(name.as_str()) {
                return Err(ConfigError::new(
                    field,
                    "model names must be non-empty and unique",
                ));
            }
            let model = CompiledModel::compile(&field, name, schema, options.default_draft)?;
            models.insert(name, Arc::new(model));
        }
        let gateway_limit = options.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
        let mut by_route = Vec::new();
        for (key, settings) in routes.routes() {
            let field = |setting: &str| format!("routes[{key}].{setting}");
            let validator = match &settings.validator {
                None => None,
                Some(name) => Some(*validators.get(name.as_str()).ok_or_else(|| {
                    ConfigError::new(
                        field("validator"),
                        format!("no request validator is declared as `{name}`"),
                    )
                })?),
            };
            let checks_parameters = validator.is_some_and(|v| v.validate_parameters);
            let checks_body = validator.is_some_and(|v| v.validate_body);
            if !settings.required_parameters.is_empty() && !checks_parameters {
                return Err(ConfigError::new(
                    field("required_parameters"),
                    "required parameters are checked only by a validator with \
                     validate_parameters; name one with `validator`, or they would be ignored",
                ));
            }
            if !settings.request_models.is_empty() && !checks_body {
                return Err(ConfigError::new(
                    field("request_models"),
                    "request models are checked only by a validator with validate_body; name \
                     one with `validator`, or they would be ignored",
                ));
            }
            let parameters = settings
                .required_parameters
                .iter()
                .map(|parameter| parameter.compile(&field("required_parameters"), Some(key)))
                .collect::<Result<_, _>>()?;
            let mut resolved = Vec::with_capacity(settings.request_models.len());
            for (media_type, name) in &settings.request_models {
                let model = models.get(name.as_str()).ok_or_else(|| {
                    ConfigError::new(
                        field(&format!("request_models[{media_type}]")),
                        format!("no model is declared as `{name}`"),
                    )
                })?;
                resolved.push((media_type.as_str(), Arc::clone(model)));
            }
            let body = BodyModels::new(&field("request_models"), resolved)?;
            by_route.push(RouteValidation::new(
                parameters,
                body,
                settings.max_body_bytes.unwrap_or(gateway_limit),
            ));
        }
        Ok(Self {
            by_route,
            unmatched: RouteValidation::limit_only(gateway_limit),
        })
    }

    /// The checks for the route the request matched.
    #[inline]
    pub(crate) fn for_request(&self, context: &RequestContext) -> &RouteValidation {
        match context.route() {
            Some(route) => {
                let found = self.by_route.get(route.index());
                debug_assert!(found.is_some(), "one validation per route, by index");
                found.unwrap_or(&self.unmatched)
            }
            None => &self.unmatched,
        }
    }
}
