//! The response future shared by the crate's services.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use http::header::{HeaderName, HeaderValue};
use http::{Request, Response};
use pin_project_lite::pin_project;

use tower_service::Service;

use crate::body::GatewayBody;
use crate::cache::CacheStatus;
use crate::context::RequestContext;
use crate::response::{GatewayError, GatewayResponses, is_grpc};
use crate::usage_plan::RateLimitHeaders;

pin_project! {
    /// The future of every service in this crate: either the inner service's response, or a
    /// gateway response rendered without calling the inner service.
    pub struct ResponseFuture<F, B> {
        #[pin]
        state: State<F, B>,
        finish: Option<Finish>,
    }
}

pin_project! {
    #[project = StateProjection]
    enum State<F, B> {
        Inner { #[pin] future: F },
        Rejected { response: Option<Response<B>> },
    }
}

/// Work done on every response, whether the inner service's or a rejection: the request id
/// header, the rate-limit headers of a request a throttle admitted, the canary's release
/// header. Every request's future holds one, so what it can read from the context it does not
/// keep a copy of.
pub(crate) struct Finish {
    context: RequestContext,
    /// The header the request id goes back in, when it is sent.
    request_id_header: Option<HeaderName>,
    pub(crate) rate_limit: Option<RateLimitHeaders>,
    /// Whether the release the gateway picked goes back in its canary's release header (on
    /// stages whose canary names one).
    pub(crate) send_release: bool,
    /// Whether the service's answer is timed for an access log or metrics
    /// (`$context.integrationLatency`, `$context.integrationStatus`).
    pub(crate) time_integration: bool,
    /// Set when the request is handed to the service: times the service's answer.
    integration: Option<Integration>,
}

impl Finish {
    pub(crate) fn new(context: RequestContext, request_id_header: Option<HeaderName>) -> Self {
        Self {
            context,
            request_id_header,
            rate_limit: None,
            send_release: false,
            time_integration: false,
            integration: None,
        }
    }

    fn write(self, response: &mut Response<impl Sized>) {
        let release = self
            .send_release
            .then(|| self.context.release_header())
            .flatten();
        let headers = response.headers_mut();
        // One growth of the header map for everything added here, not one per header.
        let added = usize::from(self.request_id_header.is_some())
            + 3 * usize::from(self.rate_limit.is_some())
            + usize::from(release.is_some());
        headers.reserve(added);
        if let Some(name) = self.request_id_header {
            headers.insert(name, self.context.request_id().header_value());
        }
        if let Some(rate_limit) = self.rate_limit {
            rate_limit.write(headers);
        }
        if let Some((name, release)) = release {
            headers.insert(name.clone(), HeaderValue::from_static(release.as_str()));
        }
    }
}

/// The integration phase of a request the gateway hands to the service: the clock for
/// `$context.integrationLatency`, and its span.
pub(crate) struct Integration {
    started: Instant,
    /// Boxed, and only when enabled: every request's future holds the phase.
    span: Option<Box<tracing::Span>>,
}

impl Integration {
    /// Calls `service` with `request`, and returns the future with `finish` set to time it and
    /// to poll it in the integration span. The call itself stays outside that span, so that
    /// the response cache in front of the service gets a span beside it, not inside. With no
    /// one to read the time (no access log, no metrics) and the span disabled, neither is
    /// kept: a clock read and the span cost every request.
    pub(crate) fn call<S, Req, B>(
        service: &mut S,
        request: Req,
        mut finish: Option<Finish>,
    ) -> ResponseFuture<S::Future, B>
    where
        S: Service<Req, Response = Response<B>>,
    {
        let Some(finishing) = finish.as_mut() else {
            return ResponseFuture::inner(service.call(request), None);
        };
        // Asked before the span is made: a disabled one still costs its making and dropping.
        let traced = crate::traced();
        if !finishing.time_integration && !traced {
            return ResponseFuture::inner(service.call(request), finish);
        }
        // Asked again by the macro, but only for a request that is timed or traced.
        let span = trace_span!("integration");
        let started = Instant::now();
        let future = service.call(request);
        finishing.integration = Some(Self {
            started,
            span: (!span.is_disabled()).then(|| Box::new(span)),
        });
        ResponseFuture::inner(future, finish)
    }

    fn answered(self, context: &RequestContext, status: http::StatusCode) {
        // A cache hit never reached the service.
        if context.cache_status() != Some(CacheStatus::Hit) {
            context.record_integration(self.started.elapsed(), status);
        }
    }
}

impl<F, B> ResponseFuture<F, B> {
    pub(crate) fn inner(future: F, finish: Option<Finish>) -> Self {
        Self {
            state: State::Inner { future },
            finish,
        }
    }

    pub(crate) fn rejected(response: Response<B>, finish: Option<Finish>) -> Self {
        Self {
            state: State::Rejected {
                response: Some(response),
            },
            finish,
        }
    }
}

/// The `call` of a layer used on its own: run one step of the request cycle on the request
/// (creating its context if no layer in front did), then either call the inner service or
/// answer with the step's rejection.
pub(crate) fn run_step<S, ReqBody, ResBody>(
    inner: &mut S,
    responses: &GatewayResponses,
    mut request: Request<ReqBody>,
    step: impl FnOnce(&mut Request<ReqBody>, &RequestContext) -> Result<(), GatewayError>,
) -> ResponseFuture<S::Future, ResBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: GatewayBody,
{
    let context = RequestContext::get_or_insert(&mut request);
    match step(&mut request, &context) {
        Ok(()) => ResponseFuture::inner(inner.call(request), None),
        Err(error) => ResponseFuture::rejected(
            responses.render(error, is_grpc(request.headers()), Some(&context)),
            None,
        ),
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = match this.state.project() {
            StateProjection::Inner { future } => {
                let span = this
                    .finish
                    .as_ref()
                    .and_then(|finish| finish.integration.as_ref())
                    .and_then(|integration| integration.span.as_deref())
                    .map(tracing::Span::enter);
                let response = ready!(future.poll(cx))?;
                drop(span);
                response
            }
            StateProjection::Rejected { response } => response
                .take()
                .expect("ResponseFuture polled after completion"),
        };
        if let Some(mut finish) = this.finish.take() {
            if let Some(integration) = finish.integration.take() {
                integration.answered(&finish.context, response.status());
            }
            finish.write(&mut response);
        }
        Poll::Ready(Ok(response))
    }
}
