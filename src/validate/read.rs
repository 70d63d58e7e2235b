//! Reading a body up to the payload limit, then validating it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::request::Parts;
use http::{HeaderValue, Request, Response};
use http_body::Body;
use http_body_util::combinators::Collect;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use pin_project_lite::pin_project;
use tower_service::Service;
use tracing::Instrument;
use tracing::instrument::Instrumented;

use super::model::truncated;
use super::{BodyPlan, CompiledModel, payload_too_large};
use crate::body::{BoxError, GatewayBody, RequestBody};
use crate::context::RequestContext;
use crate::future::{Finish, Integration, ResponseFuture};
use crate::response::{GatewayError, GatewayResponseType, GatewayResponses, is_grpc};

pin_project! {
    /// Reads a request's body, at most `limit` bytes, validates it against `model`, and
    /// yields the request again with the bytes that were validated.
    struct BodyValidation<B>
    where
        B: Body,
        B::Error: Into<BoxError>,
    {
        // `Limited` stops at the first frame past the limit, so no more than the limit is held.
        #[pin]
        body: Collect<Limited<B>>,
        parts: Option<Parts>,
        model: Arc<CompiledModel>,
        context: RequestContext,
    }
}

/// A body the validator refused, with what rendering the rejection needs.
pub(crate) struct Refused {
    error: GatewayError,
    grpc: bool,
    context: RequestContext,
}

impl<B> BodyValidation<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    fn new(
        request: Request<B>,
        model: Arc<CompiledModel>,
        limit: u64,
        context: RequestContext,
    ) -> Self {
        let (parts, body) = request.into_parts();
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        Self {
            body: Limited::new(body, limit).collect(),
            parts: Some(parts),
            model,
            context,
        }
    }
}

impl<B> Future for BodyValidation<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Output = Result<Request<RequestBody<B>>, Refused>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let collected = ready!(this.body.poll(cx));
        let mut parts = this
            .parts
            .take()
            .expect("BodyValidation polled after completion");
        let checked = collected
            .map_err(|error| unreadable(error, this.context))
            .and_then(|collected| {
                let trailers = collected.trailers().cloned();
                let bytes = collected.to_bytes();
                this.model
                    .validate(&bytes, this.context)
                    .map(|()| (bytes, trailers))
            });
        Poll::Ready(match checked {
            Ok((bytes, trailers)) => {
                // The service gets the body whole: its framing headers now describe it.
                parts.headers.remove(TRANSFER_ENCODING);
                parts
                    .headers
                    .insert(CONTENT_LENGTH, HeaderValue::from(bytes.len()));
                Ok(Request::from_parts(
                    parts,
                    RequestBody::buffered(bytes, trailers),
                ))
            }
            Err(error) => Err(Refused {
                error,
                grpc: is_grpc(&parts.headers),
                context: this.context.clone(),
            }),
        })
    }
}

pin_project! {
    /// A request on its way to the service: its body first read and validated, or already
    /// sent (or refused). The one path out of validation for the gateway and the standalone
    /// layer.
    pub(crate) struct ToService<S, B, ResBody>
    where
        S: Service<Request<RequestBody<B>>, Response = Response<ResBody>>,
        B: Body,
        B::Error: Into<BoxError>,
    {
        #[pin]
        state: ToServiceState<S, B, ResBody>,
    }
}

pin_project! {
    #[project = ToServiceProjection]
    enum ToServiceState<S, B, ResBody>
    where
        S: Service<Request<RequestBody<B>>, Response = Response<ResBody>>,
        B: Body,
        B::Error: Into<BoxError>,
    {
        // Boxed: only validated routes come here, and held inline the body being read would
        // make every request's future (and its moves) bigger.
        Validating {
            validation: Pin<Box<Instrumented<BodyValidation<B>>>>,
            // The service polled ready, what renders a refusal, the response's last touches.
            then: Option<Box<(S, GatewayResponses, Option<Finish>)>>,
        },
        Calling {
            #[pin]
            future: ResponseFuture<S::Future, ResBody>,
        },
    }
}

impl<S, B, ResBody> ToService<S, B, ResBody>
where
    S: Service<Request<RequestBody<B>>, Response = Response<ResBody>> + Clone,
    B: Body,
    B::Error: Into<BoxError>,
    ResBody: GatewayBody,
{
    /// Carries out `plan` for a request whose head was checked: the body streams to
    /// `service` under the limit, or is read and validated first (`service`, the one polled
    /// ready, goes with it and a clone takes its place), or the check's refusal is rendered.
    pub(crate) fn start(
        plan: Result<BodyPlan, GatewayError>,
        service: &mut S,
        request: Request<B>,
        context: RequestContext,
        responses: &GatewayResponses,
        finish: Option<Finish>,
    ) -> Self {
        let future = match plan {
            Ok(BodyPlan::Stream { limit }) => Integration::call(
                service,
                request.map(|body| RequestBody::limited(body, limit)),
                finish,
            ),
            Ok(BodyPlan::Validate { model, limit }) => {
                let ready = service.clone();
                return Self {
                    state: ToServiceState::Validating {
                        validation: Box::pin(
                            BodyValidation::new(request, model, limit, context)
                                .instrument(trace_span!("validation")),
                        ),
                        then: Some(Box::new((
                            std::mem::replace(service, ready),
                            responses.clone(),
                            finish,
                        ))),
                    },
                };
            }
            Err(error) => ResponseFuture::rejected(
                responses.render(error, is_grpc(request.headers()), Some(&context)),
                finish,
            ),
        };
        Self {
            state: ToServiceState::Calling { future },
        }
    }
}

impl<S, B, ResBody> Future for ToService<S, B, ResBody>
where
    S: Service<Request<RequestBody<B>>, Response = Response<ResBody>>,
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
    ResBody: GatewayBody,
{
    type Output = Result<Response<ResBody>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            let future = match state.as_mut().project() {
                ToServiceProjection::Calling { future } => return future.poll(cx),
                ToServiceProjection::Validating { validation, then } => {
                    let validated = ready!(validation.as_mut().poll(cx));
                    let (mut service, responses, finish) =
                        *then.take().expect("ToService polled after completion");
                    match validated {
                        Ok(request) => Integration::call(&mut service, request, finish),
                        Err(refused) => ResponseFuture::rejected(
                            responses.render(refused.error, refused.grpc, Some(&refused.context)),
                            finish,
                        ),
                    }
                }
            };
            state.set(ToServiceState::Calling { future });
        }
    }
}

/// The rejection for a body that failed while it was read: 413 when a limit in front of the
/// gateway stopped it, else 400.
fn unreadable(error: BoxError, context: &RequestContext) -> GatewayError {
    if error.is::<LengthLimitError>() {
        return payload_too_large();
    }
    context.set_validation_error(truncated(format!("the body could not be read: {error}")));
    GatewayError::new(GatewayResponseType::BadRequestBody)
}
