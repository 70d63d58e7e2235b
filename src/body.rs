//! The response body every layer of the crate returns.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    /// Either the inner service's body, passed through untouched, or the body of a gateway
    /// response the gateway rendered itself (a rejection).
    ///
    /// It implements [`http_body::Body`] with the inner body's error type, so a service
    /// wrapped by the gateway drops into axum, hyper and tonic as before.
    pub struct GatewayBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProjection]
    enum Kind<B> {
        Inner { #[pin] body: B },
        Rendered { bytes: Option<Bytes> },
    }
}

impl<B> GatewayBody<B> {
    /// The inner service's body.
    pub fn inner(body: B) -> Self {
        Self {
            kind: Kind::Inner { body },
        }
    }

    /// A body the gateway rendered; empty bytes make an empty body.
    pub(crate) fn rendered(bytes: Bytes) -> Self {
        Self {
            kind: Kind::Rendered {
                bytes: (!bytes.is_empty()).then_some(bytes),
            },
        }
    }

    /// Whether this body was rendered by the gateway rather than produced by the inner service.
    pub fn is_rendered(&self) -> bool {
        matches!(self.kind, Kind::Rendered { .. })
    }
}

impl<B> Body for GatewayBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.project().kind.project() {
            KindProjection::Inner { body } => body.poll_frame(cx),
            KindProjection::Rendered { bytes } => {
                Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Rendered { bytes } => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } => body.size_hint(),
            Kind::Rendered { bytes } => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}

impl<B> std::fmt::Debug for GatewayBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            Kind::Inner { .. } => f.write_str("GatewayBody::Inner"),
            Kind::Rendered { bytes } => f
                .debug_tuple("GatewayBody::Rendered")
                .field(&bytes.as_ref().map_or(0, Bytes::len))
                .finish(),
        }
    }
}
