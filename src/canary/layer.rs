use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::header::HeaderName;
use http::{HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::{CanarySettings, CompiledCanary, Release};
use crate::api_key::key_header;
use crate::context::RequestContext;
use crate::error::ConfigError;

/// Sends canary requests to a second service: `CanaryLayer::new(v2).layer(v1)`.
///
/// Behind a [`Gateway`](crate::Gateway), the release is the one the gateway picked for the
/// request's stage ([`StageBuilder::canary`](crate::StageBuilder::canary)); requests on stages
/// without a canary go to the baseline. Used alone (no stage selected in front of it), the
/// layer picks with its own settings ([`CanaryLayer::builder`]); a layer without settings
/// sends every request that was not marked as canary to the baseline.
///
/// Unlike `tower::steer::Steer`, [`Canary`] does not wait for both services to be ready:
/// `poll_ready` asks the baseline service (which takes most requests), and a canary request
/// is given to a clone of the canary service, made ready in the response future. The canary
/// service must therefore be `Clone`, as axum's routers and tonic's services are.
pub struct CanaryLayer<C> {
    canary: C,
    own: Option<Arc<Own>>,
}

/// A standalone layer's own pick.
struct Own {
    canary: CompiledCanary,
    key_header: HeaderName,
}

impl<C> CanaryLayer<C> {
    /// Sends the requests the gateway marks as canary to `canary`.
    pub fn new(canary: C) -> Self {
        Self { canary, own: None }
    }

    /// A layer that picks the release itself when no gateway did.
    pub fn builder(canary: C) -> CanaryLayerBuilder<C> {
        CanaryLayerBuilder {
            canary,
            settings: CanarySettings::default(),
            api_key_header: None,
        }
    }
}

impl<C: Clone> Clone for CanaryLayer<C> {
    fn clone(&self) -> Self {
        Self {
            canary: self.canary.clone(),
            own: self.own.clone(),
        }
    }
}

impl<C: fmt::Debug> fmt::Debug for CanaryLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CanaryLayer")
            .field("canary", &self.canary)
            .field(
                "settings",
                &self.own.as_ref().map(|own| &own.canary.settings),
            )
            .finish()
    }
}

impl<S, C: Clone> Layer<S> for CanaryLayer<C> {
    type Service = Canary<S, C>;

    fn layer(&self, baseline: S) -> Self::Service {
        Canary {
            baseline,
            canary: self.canary.clone(),
            own: self.own.clone(),
        }
    }
}

/// Builds a [`CanaryLayer`] that picks the release itself.
#[must_use]
pub struct CanaryLayerBuilder<C> {
    canary: C,
    settings: CanarySettings,
    api_key_header: Option<String>,
}

impl<C> fmt::Debug for CanaryLayerBuilder<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CanaryLayerBuilder")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl<C> CanaryLayerBuilder<C> {
    /// The share, assignment and headers. Stage-variable overrides belong to a gateway's
    /// stages and are refused here.
    pub fn settings(mut self, settings: CanarySettings) -> Self {
        self.settings = settings;
        self
    }

    /// The header that carries API keys, for [`Sticky::ApiKey`](super::Sticky::ApiKey)
    /// (default `x-api-key`).
    pub fn api_key_header(mut self, name: impl Into<String>) -> Self {
        self.api_key_header = Some(name.into());
        self
    }

    /// Checks the settings.
    pub fn build(self) -> Result<CanaryLayer<C>, ConfigError> {
        let canary = self.settings.compile("canary", None)?;
        let key_header = key_header(self.api_key_header.as_deref(), "api_key_header")?;
        Ok(CanaryLayer {
            canary: self.canary,
            own: Some(Arc::new(Own { canary, key_header })),
        })
    }
}

/// Sends each request to the baseline or the canary service; see [`CanaryLayer`].
pub struct Canary<S, C> {
    baseline: S,
    canary: C,
    own: Option<Arc<Own>>,
}

impl<S: Clone, C: Clone> Clone for Canary<S, C> {
    fn clone(&self) -> Self {
        Self {
            baseline: self.baseline.clone(),
            canary: self.canary.clone(),
            own: self.own.clone(),
        }
    }
}

impl<S: fmt::Debug, C: fmt::Debug> fmt::Debug for Canary<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Canary")
            .field("baseline", &self.baseline)
            .field("canary", &self.canary)
            .finish_non_exhaustive()
    }
}

impl<S, C, ReqBody, ResBody> Service<Request<ReqBody>> for Canary<S, C>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    C: Service<Request<ReqBody>, Response = Response<ResBody>, Error = S::Error> + Clone,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, C, Request<ReqBody>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.baseline.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let context = request.extensions().get::<RequestContext>();
        let decided = context.and_then(RequestContext::decided_release);
        // Behind a gateway (a stage is selected), the stage's canary decides: a pick made
        // here would come after the gateway's cache had keyed the request as baseline.
        let behind_gateway = context.and_then(RequestContext::stage).is_some();
        let (release, header) = match (decided, &self.own) {
            (Some(release), _) => (release, None),
            (None, None) => (Release::Baseline, None),
            (None, Some(_)) if behind_gateway => (Release::Baseline, None),
            (None, Some(own)) => {
                let release = own.canary.picker.pick(request.headers(), &own.key_header);
                RequestContext::get_or_insert(&mut request).set_release(release);
                let header = own
                    .canary
                    .release_header
                    .clone()
                    .map(|name| (name, release));
                (release, header)
            }
        };
        let state = match release {
            Release::Baseline => State::Baseline {
                future: self.baseline.call(request),
            },
            Release::Canary => State::CanaryReadying {
                service: self.canary.clone(),
                request: Some(request),
            },
        };
        ResponseFuture { state, header }
    }
}

pin_project! {
    /// The response future of [`Canary`].
    pub struct ResponseFuture<F, C, R>
    where
        C: Service<R>,
    {
        #[pin]
        state: State<F, C, R>,
        header: Option<(HeaderName, Release)>,
    }
}

pin_project! {
    #[project = StateProjection]
    enum State<F, C, R>
    where
        C: Service<R>,
    {
        Baseline { #[pin] future: F },
        CanaryReadying { service: C, request: Option<R> },
        Canary { #[pin] future: C::Future },
    }
}

impl<F, C, R, ResBody, E> Future for ResponseFuture<F, C, R>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    C: Service<R, Response = Response<ResBody>, Error = E>,
{
    type Output = Result<Response<ResBody>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let mut response = loop {
            let next = match this.state.as_mut().project() {
                StateProjection::Baseline { future } => break ready!(future.poll(cx))?,
                StateProjection::Canary { future } => break ready!(future.poll(cx))?,
                StateProjection::CanaryReadying { service, request } => {
                    ready!(service.poll_ready(cx))?;
                    let request = request
                        .take()
                        .expect("ResponseFuture polled after completion");
                    State::Canary {
                        future: service.call(request),
                    }
                }
            };
            this.state.set(next);
        };
        if let Some((name, release)) = this.header.take() {
            response
                .headers_mut()
                .insert(name, HeaderValue::from_static(release.as_str()));
        }
        Poll::Ready(Ok(response))
    }
}
