//! [`ApiKeyLayer`]: checks the key a request presents.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::HeaderName;
use http::{Request, Response};
use tower_layer::Layer;
use tower_service::Service;

use super::{ApiKeySource, ApiKeyStore, KeyDigest, valid_key_value};
use crate::body::GatewayBody;
use crate::context::RequestContext;
use crate::error::ConfigError;
use crate::future::{ResponseFuture, run_step};
use crate::response::{GatewayError, GatewayResponseType, GatewayResponses};

pub(crate) const DEFAULT_HEADER: &str = "x-api-key";

/// The header that carries API keys: `name`, or `x-api-key`; `field` names the setting in
/// the error.
pub(crate) fn key_header(name: Option<&str>, field: &str) -> Result<HeaderName, ConfigError> {
    let name = name.unwrap_or(DEFAULT_HEADER);
    HeaderName::try_from(name).map_err(|_| {
        ConfigError::new(
            field,
            format!("`{}` is not a valid header name", name.escape_debug()),
        )
    })
}

/// The key check shared by [`ApiKeyLayer`] and the gateway.
pub(crate) struct ApiKeyCheck {
    store: Arc<dyn ApiKeyStore>,
    source: ApiKeySource,
    header: HeaderName,
    /// Whether a request with no matched route needs a key.
    require_without_route: bool,
}

impl ApiKeyCheck {
    pub(crate) fn new(
        store: Arc<dyn ApiKeyStore>,
        source: ApiKeySource,
        header: HeaderName,
        require_without_route: bool,
    ) -> Self {
        Self {
            store,
            source,
            header,
            require_without_route,
        }
    }

    /// Checks the request's key when its route (or, without one, this check) requires one,
    /// and records the key in the context.
    #[inline]
    pub(crate) fn apply<B>(
        &self,
        request: &Request<B>,
        context: &RequestContext,
    ) -> Result<(), GatewayError> {
        let required = context.route().map_or(self.require_without_route, |route| {
            route.settings().api_key_required
        });
        if !required {
            return Ok(());
        }
        let forbidden = || GatewayError::new(GatewayResponseType::InvalidApiKey);
        let digest = match self.source {
            ApiKeySource::Header => {
                let mut values = request.headers().get_all(&self.header).iter();
                // Exactly one value, of a length and alphabet a key can have; anything else
                // is refused before hashing.
                let value = values
                    .next()
                    .filter(|_| values.next().is_none())
                    .filter(|value| valid_key_value(value.as_bytes()))
                    .ok_or_else(forbidden)?;
                KeyDigest::of(value.as_bytes())
            }
            ApiKeySource::Authorizer => *context.usage_identifier_key().ok_or_else(forbidden)?,
        };
        match self.store.find(&digest) {
            Some(key) if key.enabled() => {
                context.set_api_key(key);
                Ok(())
            }
            _ => Err(forbidden()),
        }
    }
}

impl fmt::Debug for ApiKeyCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeyCheck")
            .field("source", &self.source)
            .field("header", &self.header)
            .field("require_without_route", &self.require_without_route)
            .finish_non_exhaustive()
    }
}

/// Builds an [`ApiKeyLayer`].
#[must_use]
pub struct ApiKeyLayerBuilder {
    store: Arc<dyn ApiKeyStore>,
    source: ApiKeySource,
    header: Option<String>,
    require_without_route: bool,
    responses: GatewayResponses,
}

impl ApiKeyLayerBuilder {
    /// Where the key comes from (default [`ApiKeySource::Header`]).
    pub fn source(mut self, source: ApiKeySource) -> Self {
        self.source = source;
        self
    }

    /// The header that carries the key (default `x-api-key`).
    pub fn header_name(mut self, name: impl Into<String>) -> Self {
        self.header = Some(name.into());
        self
    }

    /// Whether a request for which no route was matched needs a key (default true). A request
    /// with a matched route (a [`RouteLayer`](crate::RouteLayer) in front) needs one exactly
    /// when the route says [`api_key_required`](crate::Route::api_key_required).
    pub fn require_without_route(mut self, required: bool) -> Self {
        self.require_without_route = required;
        self
    }

    /// The gateway responses used for rejections.
    pub fn responses(mut self, responses: GatewayResponses) -> Self {
        self.responses = responses;
        self
    }

    /// Checks the header name.
    pub fn build(self) -> Result<ApiKeyLayer, ConfigError> {
        Ok(ApiKeyLayer {
            shared: Arc::new(Shared {
                check: ApiKeyCheck::new(
                    self.store,
                    self.source,
                    key_header(self.header.as_deref(), "api_keys.header")?,
                    self.require_without_route,
                ),
                responses: self.responses,
            }),
        })
    }
}

impl fmt::Debug for ApiKeyLayerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeyLayerBuilder")
            .field("source", &self.source)
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Shared {
    check: ApiKeyCheck,
    responses: GatewayResponses,
}

/// Rejects requests without a valid, enabled API key with 403 `INVALID_API_KEY`, and records
/// the key (its id, never its value) in the request's [`RequestContext`].
pub struct ApiKeyLayer {
    shared: Arc<Shared>,
}

impl ApiKeyLayer {
    /// Starts a layer that checks keys against `store`.
    pub fn builder(store: impl ApiKeyStore) -> ApiKeyLayerBuilder {
        ApiKeyLayerBuilder {
            store: Arc::new(store),
            source: ApiKeySource::default(),
            header: None,
            require_without_route: true,
            responses: GatewayResponses::default(),
        }
    }
}

impl Clone for ApiKeyLayer {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl fmt::Debug for ApiKeyLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeyLayer")
            .field("check", &self.shared.check)
            .finish()
    }
}

impl<S> Layer<S> for ApiKeyLayer {
    type Service = ApiKeyService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ApiKeyService {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// The service [`ApiKeyLayer`] produces.
pub struct ApiKeyService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: Clone> Clone for ApiKeyService<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for ApiKeyService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeyService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ApiKeyService<S>
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
            |request, context| shared.check.apply(request, context),
        )
    }
}
