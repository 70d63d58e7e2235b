//! Response bodies the gateway can write its own responses in.
//!
//! ```
//! use bytes::Bytes;
//! use tower_gateway::GatewayBody;
//!
//! /// A body type of your own, put in front of the gateway.
//! struct MyBody(Bytes);
//!
//! impl GatewayBody for MyBody {
//!     fn from_bytes(bytes: Bytes) -> Self {
//!         MyBody(bytes)
//!     }
//! }
//! # let _ = MyBody::from_bytes(Bytes::from_static(b"{}")).0;
//! ```
//!
//! The gateway keeps the inner service's response type unchanged, as tower-http's layers do,
//! so a wrapped axum router still serves with `axum::serve` and a wrapped tonic server with
//! tonic's `Server`. To answer a rejected request it needs to build a body of that same type
//! from bytes: that is the [`GatewayBody`] trait.
//!
//! Requests reach the inner service with a [`RequestBody`]: the client's body streamed under
//! the payload limit, or the bytes the [validator](crate::validate) read and checked. Like
//! tower-http's `Limited`, it is a body of `Bytes` whose errors are boxed, which axum routers,
//! tonic servers and hyper services all take.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full, Limited, combinators::BoxBody, combinators::UnsyncBoxBody};
use pin_project_lite::pin_project;

use crate::observe::ObservedBody;

/// The error type of a [`RequestBody`]: the client body's own error, or
/// [`LengthLimitError`](http_body_util::LengthLimitError) when the body grows past the
/// payload limit.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pin_project! {
    /// The request body the inner service receives from the gateway or a
    /// [`RequestValidatorLayer`](crate::validate::RequestValidatorLayer).
    ///
    /// Either the client's body, streamed and counted: once more bytes arrive than the payload
    /// limit allows it ends with [`LengthLimitError`](http_body_util::LengthLimitError) (axum's extractors answer that with 413);
    /// or the validated bytes, with the client's trailers, exactly as they arrived.
    pub struct RequestBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProjection]
    enum Kind<B> {
        Streaming { #[pin] body: Limited<B> },
        // Trailers are rare and a `HeaderMap` is large: boxed, they keep every request's body
        // (moved with the request through each layer) small.
        Buffered { data: Option<Bytes>, trailers: Option<Box<HeaderMap>> },
    }
}

impl<B> RequestBody<B> {
    /// The client's body, which may carry at most `limit` bytes.
    pub fn limited(body: B, limit: u64) -> Self {
        Self {
            kind: Kind::Streaming {
                body: Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX)),
            },
        }
    }

    /// Bytes already read (and validated), with the trailers that followed them.
    pub fn buffered(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        Self {
            kind: Kind::Buffered {
                data: (!data.is_empty()).then_some(data),
                trailers: trailers.map(Box::new),
            },
        }
    }

    /// The bytes of a buffered body (`None` while it streams, or once they were read).
    pub fn buffered_bytes(&self) -> Option<&Bytes> {
        match &self.kind {
            Kind::Buffered { data, .. } => data.as_ref(),
            Kind::Streaming { .. } => None,
        }
    }
}

impl<B> std::fmt::Debug for RequestBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            Kind::Streaming { .. } => f
                .debug_struct("RequestBody::Streaming")
                .finish_non_exhaustive(),
            Kind::Buffered { data, .. } => f
                .debug_struct("RequestBody::Buffered")
                .field("len", &data.as_ref().map_or(0, Bytes::len))
                .finish_non_exhaustive(),
        }
    }
}

impl<B> Body for RequestBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().kind.project() {
            KindProjection::Streaming { body } => body.poll_frame(cx),
            KindProjection::Buffered { data, trailers } => Poll::Ready(
                data.take()
                    .map(Frame::data)
                    .or_else(|| trailers.take().map(|trailers| Frame::trailers(*trailers)))
                    .map(Ok),
            ),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Streaming { body } => body.is_end_stream(),
            Kind::Buffered { data, trailers } => data.is_none() && trailers.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Streaming { body } => body.size_hint(),
            Kind::Buffered { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |data| data.len() as u64))
            }
        }
    }
}

/// A response body type the gateway can build a gateway response in.
///
/// Implemented for axum's body (feature `axum`), tonic's body (feature `tonic`),
/// `http_body_util`'s `Full<Bytes>`, `BoxBody` and `UnsyncBoxBody`, and `String`. Implement it
/// for a body type of your own to put the gateway in front of a service that uses it.
///
/// The [response cache](crate::cache) reads a response before it stores it. When it has read
/// only part of one (the response turned out too big to cache, or ended with trailers), it
/// hands the client the rest through [`resume`](Self::resume). The provided implementation
/// rebuilds only a body that was read whole and had no trailers, which is all `Full` and
/// `String` ever need; types that can hold another body (axum's, tonic's, the boxed bodies)
/// override it and set [`RESUMABLE`](Self::RESUMABLE), so that responses of unknown length
/// are cached too.
pub trait GatewayBody: Sized {
    /// Whether [`resume`](Self::resume) can rebuild any partly read body of this type. When it
    /// cannot, the response cache leaves responses whose length is not known in advance
    /// uncached, without reading them.
    const RESUMABLE: bool = false;

    /// A body holding `bytes` (a JSON document, or nothing for gRPC responses).
    fn from_bytes(bytes: Bytes) -> Self;

    /// A body of this type that yields what `partial` yields: the bytes the cache read, then
    /// the trailers it read or the rest of the original body. Gives `partial` back when the
    /// type cannot hold it.
    fn resume(partial: PartlyRead<Self>) -> Result<Self, PartlyRead<Self>>
    where
        Self: Body<Data = Bytes>,
    {
        if partial.trailers.is_none() && !partial.ended && partial.rest.is_end_stream() {
            Ok(Self::from_bytes(partial.read.unwrap_or_default()))
        } else {
            Err(partial)
        }
    }

    /// A body of this type that yields what `observed` yields, so that the
    /// [access log and metrics](crate::observe) see the end of the response. Gives `observed`
    /// back when the type cannot hold it (the provided implementation); the line is then
    /// written when the response head leaves the gateway.
    fn observe(observed: ObservedBody<Self>) -> Result<Self, ObservedBody<Self>>
    where
        Self: Body<Data = Bytes>,
    {
        Err(observed)
    }
}

/// A response body the [response cache](crate::cache) has read the start of: the bytes it
/// read, then the trailers that ended it, or the rest of the original body. See
/// [`GatewayBody::resume`].
pub struct PartlyRead<B> {
    read: Option<Bytes>,
    trailers: Option<Box<HeaderMap>>,
    rest: Pin<Box<B>>,
    /// Whether `rest` already ended (with the trailers read): it is not polled again.
    ended: bool,
}

impl<B> PartlyRead<B> {
    /// `read`, then `trailers` if the body ended with them, else what remains of `rest`.
    pub(crate) fn new(read: Bytes, trailers: Option<HeaderMap>, rest: Pin<Box<B>>) -> Self {
        Self {
            read: (!read.is_empty()).then_some(read),
            ended: trailers.is_some(),
            trailers: trailers.map(Box::new),
            rest,
        }
    }
}

impl<B> std::fmt::Debug for PartlyRead<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartlyRead")
            .field("read", &self.read.as_ref().map_or(0, Bytes::len))
            .field("trailers", &self.trailers.is_some())
            .finish_non_exhaustive()
    }
}

impl<B> Body for PartlyRead<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        if let Some(read) = this.read.take() {
            return Poll::Ready(Some(Ok(Frame::data(read))));
        }
        if let Some(trailers) = this.trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(*trailers))));
        }
        if this.ended {
            return Poll::Ready(None);
        }
        this.rest.as_mut().poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.read.is_none() && self.trailers.is_none() && (self.ended || self.rest.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let read = self.read.as_ref().map_or(0, |read| read.len() as u64);
        if self.ended {
            let trailers_only = SizeHint::with_exact(read);
            return trailers_only;
        }
        let rest = self.rest.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower().saturating_add(read));
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper.saturating_add(read));
        }
        hint
    }
}

impl GatewayBody for Full<Bytes> {
    fn from_bytes(bytes: Bytes) -> Self {
        Full::new(bytes)
    }
}

impl<E: 'static> GatewayBody for BoxBody<Bytes, E> {
    const RESUMABLE: bool = true;

    fn from_bytes(bytes: Bytes) -> Self {
        Full::new(bytes).map_err(|never| match never {}).boxed()
    }

    fn resume(partial: PartlyRead<Self>) -> Result<Self, PartlyRead<Self>> {
        Ok(BoxBody::new(partial))
    }

    fn observe(observed: ObservedBody<Self>) -> Result<Self, ObservedBody<Self>> {
        Ok(BoxBody::new(observed))
    }
}

impl<E: 'static> GatewayBody for UnsyncBoxBody<Bytes, E> {
    const RESUMABLE: bool = true;

    fn from_bytes(bytes: Bytes) -> Self {
        Full::new(bytes)
            .map_err(|never| match never {})
            .boxed_unsync()
    }

    fn resume(partial: PartlyRead<Self>) -> Result<Self, PartlyRead<Self>> {
        Ok(UnsyncBoxBody::new(partial))
    }

    fn observe(observed: ObservedBody<Self>) -> Result<Self, ObservedBody<Self>> {
        Ok(UnsyncBoxBody::new(observed))
    }
}

impl GatewayBody for String {
    fn from_bytes(bytes: Bytes) -> Self {
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

#[cfg(feature = "axum")]
impl GatewayBody for axum::body::Body {
    const RESUMABLE: bool = true;

    fn from_bytes(bytes: Bytes) -> Self {
        axum::body::Body::from(bytes)
    }

    fn resume(partial: PartlyRead<Self>) -> Result<Self, PartlyRead<Self>> {
        Ok(axum::body::Body::new(partial))
    }

    fn observe(observed: ObservedBody<Self>) -> Result<Self, ObservedBody<Self>> {
        Ok(axum::body::Body::new(observed))
    }
}

#[cfg(feature = "tonic")]
impl GatewayBody for tonic::body::Body {
    const RESUMABLE: bool = true;

    fn resume(partial: PartlyRead<Self>) -> Result<Self, PartlyRead<Self>> {
        Ok(tonic::body::Body::new(partial))
    }

    fn observe(observed: ObservedBody<Self>) -> Result<Self, ObservedBody<Self>> {
        Ok(tonic::body::Body::new(observed))
    }

    fn from_bytes(bytes: Bytes) -> Self {
        if bytes.is_empty() {
            tonic::body::Body::default()
        } else {
            tonic::body::Body::new(Full::new(bytes))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_body_is_smaller_than_the_trailers_it_may_carry() {
        // The body moves with the request through every layer, and axum boxes it.
        assert!(std::mem::size_of::<RequestBody<Full<Bytes>>>() < std::mem::size_of::<HeaderMap>());
    }

    async fn collected<B>(body: B) -> Bytes
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: std::fmt::Debug,
    {
        body.collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn request_bodies_stream_under_the_limit_or_hand_back_what_was_read() {
        let within = RequestBody::limited(Full::new(Bytes::from_static(b"12345")), 5);
        assert_eq!(within.collect().await.unwrap().to_bytes(), "12345");
        let over = RequestBody::limited(Full::new(Bytes::from_static(b"123456")), 5);
        let error = over.collect().await.unwrap_err();
        assert!(error.is::<http_body_util::LengthLimitError>(), "{error}");

        let mut trailers = HeaderMap::new();
        trailers.insert("x-sum", "1".parse().unwrap());
        let buffered =
            RequestBody::<Full<Bytes>>::buffered(Bytes::from_static(b"{}"), Some(trailers));
        assert_eq!(buffered.buffered_bytes().map(|b| &b[..]), Some(&b"{}"[..]));
        assert_eq!(buffered.size_hint().exact(), Some(2));
        assert!(!buffered.is_end_stream());
        let collected = buffered.collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["x-sum"], "1");
        assert_eq!(collected.to_bytes(), "{}");
        let empty = RequestBody::<Full<Bytes>>::buffered(Bytes::new(), None);
        assert!(empty.is_end_stream());
    }

    /// `resume` of a body whose first bytes were read: the rest, and the trailers, follow.
    async fn resumes_whole<B>(make: impl Fn(Bytes) -> B)
    where
        B: GatewayBody + Body<Data = Bytes>,
        B::Error: std::fmt::Debug,
    {
        let rest = make(Bytes::from_static(b"-rest"));
        let partial = PartlyRead::new(Bytes::from_static(b"read"), None, Box::pin(rest));
        let resumed = B::resume(partial).map_err(|_| "not resumed").unwrap();
        assert_eq!(collected(resumed).await, "read-rest");

        let mut trailers = HeaderMap::new();
        trailers.insert("x-sum", "1".parse().unwrap());
        let ended = make(Bytes::new());
        let partial = PartlyRead::new(Bytes::from_static(b"all"), Some(trailers), Box::pin(ended));
        let resumed = B::resume(partial).map_err(|_| "not resumed").unwrap();
        let collected = resumed.collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["x-sum"], "1");
        assert_eq!(collected.to_bytes(), "all");
    }

    #[tokio::test]
    async fn bodies_that_can_hold_another_resume_any_partly_read_body() {
        resumes_whole(|bytes| -> BoxBody<Bytes, std::io::Error> { GatewayBody::from_bytes(bytes) })
            .await;
        resumes_whole(|bytes| -> UnsyncBoxBody<Bytes, std::io::Error> {
            GatewayBody::from_bytes(bytes)
        })
        .await;
        #[cfg(feature = "axum")]
        resumes_whole(axum::body::Body::from_bytes).await;
        #[cfg(feature = "tonic")]
        resumes_whole(tonic::body::Body::from_bytes).await;
    }

    #[tokio::test]
    async fn other_bodies_resume_only_when_read_whole_without_trailers() {
        let mut whole = Full::new(Bytes::from_static(b"all"));
        let frame = std::future::poll_fn(|cx| Pin::new(&mut whole).poll_frame(cx)).await;
        let read = frame.unwrap().unwrap().into_data().unwrap();
        let resumed = Full::resume(PartlyRead::new(read, None, Box::pin(whole)));
        assert_eq!(
            collected(resumed.map_err(|_| "not resumed").unwrap()).await,
            "all"
        );

        let unread = Full::new(Bytes::from_static(b"rest"));
        let partial = PartlyRead::new(Bytes::from_static(b"read"), None, Box::pin(unread));
        assert!(Full::resume(partial).is_err(), "Full cannot hold the rest");
        let mut trailers = HeaderMap::new();
        trailers.insert("x-sum", "1".parse().unwrap());
        let ended = Full::new(Bytes::new());
        let partial = PartlyRead::new(Bytes::from_static(b"all"), Some(trailers), Box::pin(ended));
        assert!(
            String::resume(PartlyRead::new(Bytes::new(), None, Box::pin(String::new()))).is_ok()
        );
        assert!(Full::resume(partial).is_err(), "nor trailers");
    }

    #[tokio::test]
    async fn every_provided_body_holds_the_bytes() {
        let bytes = Bytes::from_static(b"{\"message\":\"x\"}");
        assert_eq!(collected(Full::from_bytes(bytes.clone())).await, bytes);
        let boxed: BoxBody<Bytes, std::io::Error> = GatewayBody::from_bytes(bytes.clone());
        assert_eq!(collected(boxed).await, bytes);
        let unsync: UnsyncBoxBody<Bytes, std::io::Error> = GatewayBody::from_bytes(bytes.clone());
        assert_eq!(collected(unsync).await, bytes);
        assert_eq!(String::from_bytes(bytes.clone()), "{\"message\":\"x\"}");
        #[cfg(feature = "axum")]
        assert_eq!(
            collected(axum::body::Body::from_bytes(bytes.clone())).await,
            bytes
        );
        #[cfg(feature = "tonic")]
        {
            assert_eq!(
                collected(tonic::body::Body::from_bytes(bytes.clone())).await,
                bytes
            );
            let empty = tonic::body::Body::from_bytes(Bytes::new());
            assert!(http_body::Body::is_end_stream(&empty));
        }
    }
}
