//! [`RequestValidatorLayer`]: validation for one service, without a gateway.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::{
    BodyModels, CompiledModel, DEFAULT_MAX_BODY_BYTES, RequestParameter, RouteValidation,
    SchemaDraft, ToService, Validator,
};
use crate::body::{BoxError, GatewayBody, RequestBody};
use crate::context::RequestContext;
use crate::error::ConfigError;
use crate::response::GatewayResponses;

/// Builds a [`RequestValidatorLayer`].
#[derive(Debug, Clone)]
#[must_use]
pub struct RequestValidatorLayerBuilder {
    validator: Validator,
    parameters: Vec<RequestParameter>,
    models: Vec<(String, serde_json::Value)>,
    default_draft: SchemaDraft,
    max_body_bytes: u64,
    responses: GatewayResponses,
}

impl RequestValidatorLayerBuilder {
    /// What to check (default [`Validator::all`]).
    pub fn validator(mut self, validator: Validator) -> Self {
        self.validator = validator;
        self
    }

    /// Requires a parameter. A path parameter is read from the route a
    /// [`RouteLayer`](crate::RouteLayer) in front matched; without one it is always missing.
    pub fn required_parameter(mut self, parameter: RequestParameter) -> Self {
        self.parameters.push(parameter);
        self
    }

    /// The model for bodies of `media_type` (`application/json`), or of every media type
    /// without a model of its own (`$default`).
    pub fn model(mut self, media_type: impl Into<String>, schema: serde_json::Value) -> Self {
        self.models.push((media_type.into(), schema));
        self
    }

    /// The dialect of schemas without a `$schema` (default draft 4).
    pub fn default_schema_draft(mut self, draft: SchemaDraft) -> Self {
        self.default_draft = draft;
        self
    }

    /// The largest body accepted, in bytes (default 10 MB).
    pub fn max_body_bytes(mut self, bytes: u64) -> Self {
        self.max_body_bytes = bytes;
        self
    }

    /// The gateway responses to render rejections with.
    pub fn responses(mut self, responses: GatewayResponses) -> Self {
        self.responses = responses;
        self
    }

    /// Compiles the models.
    pub fn build(self) -> Result<RequestValidatorLayer, ConfigError> {
        if !self.parameters.is_empty() && !self.validator.validate_parameters {
            return Err(ConfigError::new(
                "required_parameters",
                "the validator does not validate parameters, so they would be ignored",
            ));
        }
        if !self.models.is_empty() && !self.validator.validate_body {
            return Err(ConfigError::new(
                "models",
                "the validator does not validate bodies, so the models would be ignored",
            ));
        }
        let parameters = self
            .parameters
            .iter()
            .map(|parameter| parameter.compile("required_parameters", None))
            .collect::<Result<_, _>>()?;
        let mut compiled = Vec::with_capacity(self.models.len());
        for (media_type, schema) in &self.models {
            let field = format!("models[{media_type}]");
            let model = CompiledModel::compile(&field, media_type, schema, self.default_draft)?;
            compiled.push((media_type.as_str(), Arc::new(model)));
        }
        let body = BodyModels::new("models", compiled)?;
        Ok(RequestValidatorLayer {
            shared: Arc::new(ValidatorShared {
                validation: RouteValidation::new(parameters, body, self.max_body_bytes),
                responses: self.responses,
            }),
        })
    }
}

#[derive(Debug)]
struct ValidatorShared {
    validation: RouteValidation,
    responses: GatewayResponses,
}

/// Validates every request to one service: required parameters, the body against a model
/// per media type, and the payload limit (see the [module docs](super)).
///
/// The service receives `Request<RequestBody<B>>` and must be `Clone` (a request whose body
/// is read takes the service that was polled ready with it; a clone takes its place).
///
/// # Example
///
/// ```
/// use axum::{Router, routing::post};
/// use serde_json::json;
/// use tower_gateway::validate::RequestValidatorLayer;
///
/// let validator = RequestValidatorLayer::builder()
///     .model("application/json", json!({
///         "type": "object",
///         "required": ["name"],
///         "properties": { "name": { "type": "string" } }
///     }))
///     .build()
///     .expect("the schema compiles");
/// let create = post(|body: String| async move { body }).layer(validator);
/// let app: Router = Router::new().route("/pets", create);
/// # let _ = app;
/// ```
pub struct RequestValidatorLayer {
    shared: Arc<ValidatorShared>,
}

impl RequestValidatorLayer {
    /// Starts a validator that checks everything it is given, with a 10 MB payload limit.
    pub fn builder() -> RequestValidatorLayerBuilder {
        RequestValidatorLayerBuilder {
            validator: Validator::all(),
            parameters: Vec::new(),
            models: Vec::new(),
            default_draft: SchemaDraft::default(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            responses: GatewayResponses::default(),
        }
    }
}

impl Clone for RequestValidatorLayer {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl fmt::Debug for RequestValidatorLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestValidatorLayer")
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for RequestValidatorLayer {
    type Service = RequestValidator<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestValidator {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// The service [`RequestValidatorLayer`] produces.
pub struct RequestValidator<S> {
    inner: S,
    shared: Arc<ValidatorShared>,
}

impl<S: Clone> Clone for RequestValidator<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for RequestValidator<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestValidator")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RequestValidator<S>
where
    S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>> + Clone,
    ReqBody: Body<Data = Bytes>,
    ReqBody::Error: Into<BoxError>,
    ResBody: GatewayBody,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let shared = &*self.shared;
        let context = RequestContext::get_or_insert(&mut request);
        let plan = shared.validation.check_head(&request, &context);
        ResponseFuture {
            inner: ToService::start(
                plan,
                &mut self.inner,
                request,
                context,
                &shared.responses,
                None,
            ),
        }
    }
}

pin_project! {
    /// The response future of [`RequestValidator`].
    pub struct ResponseFuture<S, ReqBody, ResBody>
    where
        S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>>,
        ReqBody: Body,
        ReqBody::Error: Into<BoxError>,
    {
        #[pin]
        inner: ToService<S, ReqBody, ResBody>,
    }
}

impl<S, ReqBody, ResBody> Future for ResponseFuture<S, ReqBody, ResBody>
where
    S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>>,
    ReqBody: Body<Data = Bytes>,
    ReqBody::Error: Into<BoxError>,
    ResBody: GatewayBody,
{
    type Output = Result<Response<ResBody>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().inner.poll(cx)
    }
}
