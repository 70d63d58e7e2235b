//! The response future shared by the crate's services.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::header::{HeaderName, HeaderValue};
use http::{Request, Response};
use pin_project_lite::pin_project;

use tower_service::Service;

use crate::body::GatewayBody;
use crate::canary::Release;
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
/// header, and the rate-limit headers of a request a throttle admitted.
pub(crate) struct Finish {
    pub(crate) request_id_header: Option<(HeaderName, HeaderValue)>,
    pub(crate) rate_limit: Option<RateLimitHeaders>,
    /// The canary's release header, on stages with a canary that sends it.
    pub(crate) release: Option<(HeaderName, Release)>,
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
            StateProjection::Inner { future } => ready!(future.poll(cx))?,
            StateProjection::Rejected { response } => response
                .take()
                .expect("ResponseFuture polled after completion"),
        };
        if let Some(finish) = this.finish.take() {
            // One growth of the header map for everything added here, not one per header.
            let added = usize::from(finish.request_id_header.is_some())
                + 3 * usize::from(finish.rate_limit.is_some())
                + usize::from(finish.release.is_some());
            response.headers_mut().reserve(added);
            if let Some((name, value)) = finish.request_id_header {
                response.headers_mut().insert(name, value);
            }
            if let Some(rate_limit) = finish.rate_limit {
                rate_limit.write(response.headers_mut());
            }
            if let Some((name, release)) = finish.release {
                response
                    .headers_mut()
                    .insert(name, HeaderValue::from_static(release.as_str()));
            }
        }
        Poll::Ready(Ok(response))
    }
}
