//! Reading a body up to the payload limit, then validating it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::Body;
use http_body_util::LengthLimitError;
use pin_project_lite::pin_project;
use tower_service::Service;

use super::model::truncated;
use super::{CompiledModel, payload_too_large};
use crate::body::{BoxError, GatewayBody, RequestBody};
use crate::context::RequestContext;
use crate::future::{Finish, ResponseFuture};
use crate::response::{GatewayError, GatewayResponseType, GatewayResponses, is_grpc};

/// How much is reserved up front for a body that arrives in several frames: a client that
/// announces 10 MB and then trickles must not make the gateway hold 10 MB for it.
const INITIAL_RESERVATION: usize = 16 * 1024;

pin_project! {
    /// Reads a request's body, at most `limit` bytes, validates it against `model`, and
    /// yields the request again with the bytes that were validated.
    pub(crate) struct BodyValidation<B> {
        #[pin]
        body: B,
        parts: Option<Parts>,
        model: Arc<CompiledModel>,
        context: RequestContext,
        limit: u64,
        // A body of one frame (the usual small JSON document) is kept as it came, uncopied.
        first: Option<Bytes>,
        rest: Vec<u8>,
        trailers: Option<HeaderMap>,
    }
}

/// A body the validator refused, with what rendering the rejection needs.
pub(crate) struct Refused {
    pub(crate) error: GatewayError,
    pub(crate) grpc: bool,
    pub(crate) context: RequestContext,
}

impl<B> BodyValidation<B> {
    pub(crate) fn new(
        request: Request<B>,
        model: Arc<CompiledModel>,
        limit: u64,
        context: RequestContext,
    ) -> Self {
        let (parts, body) = request.into_parts();
        Self {
            body,
            parts: Some(parts),
            model,
            context,
            limit,
            first: None,
            rest: Vec::new(),
            trailers: None,
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
        let mut this = self.project();
        let outcome = loop {
            let Some(frame) = ready!(this.body.as_mut().poll_frame(cx)) else {
                break Ok(());
            };
            let frame = match frame {
                Ok(frame) => frame,
                Err(error) => break Err(unreadable(error.into(), this.context)),
            };
            let data = match frame.into_data() {
                Ok(data) => data,
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        this.trailers
                            .get_or_insert_with(HeaderMap::new)
                            .extend(trailers);
                    }
                    continue;
                }
            };
            let held = this.first.as_ref().map_or(0, Bytes::len) + this.rest.len();
            if (held + data.len()) as u64 > *this.limit {
                break Err(payload_too_large());
            }
            if data.is_empty() {
                continue;
            }
            match this.first.take() {
                None if this.rest.is_empty() => *this.first = Some(data),
                first => {
                    if let Some(first) = first {
                        this.rest
                            .reserve(INITIAL_RESERVATION.max(first.len() + data.len()));
                        this.rest.extend_from_slice(&first);
                    }
                    this.rest.extend_from_slice(&data);
                }
            }
        };
        let mut parts = this
            .parts
            .take()
            .expect("BodyValidation polled after completion");
        let bytes = match this.first.take() {
            Some(first) => first,
            None => Bytes::from(std::mem::take(this.rest)),
        };
        // The service gets the body whole: its framing headers now describe these bytes.
        parts.headers.remove(TRANSFER_ENCODING);
        parts
            .headers
            .insert(CONTENT_LENGTH, HeaderValue::from(bytes.len()));
        let checked = outcome.and_then(|()| this.model.validate(&bytes, this.context));
        Poll::Ready(match checked {
            Ok(()) => Ok(Request::from_parts(
                parts,
                RequestBody::buffered(bytes, this.trailers.take()),
            )),
            Err(error) => Err(Refused {
                error,
                grpc: is_grpc(&parts.headers),
                context: this.context.clone(),
            }),
        })
    }
}

/// The end of a validation: the request goes to `service`, or the refusal is rendered.
pub(crate) fn forward_validated<S, B, ResBody>(
    validated: Result<Request<RequestBody<B>>, Refused>,
    service: &mut S,
    responses: &GatewayResponses,
    finish: Option<Finish>,
) -> ResponseFuture<S::Future, ResBody>
where
    S: Service<Request<RequestBody<B>>, Response = Response<ResBody>>,
    ResBody: GatewayBody,
{
    match validated {
        Ok(request) => ResponseFuture::inner(service.call(request), finish),
        Err(refused) => ResponseFuture::rejected(
            responses.render(refused.error, refused.grpc, Some(&refused.context)),
            finish,
        ),
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
