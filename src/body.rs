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

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody, combinators::UnsyncBoxBody};

/// A response body type the gateway can build a gateway response in.
///
/// Implemented for axum's body (feature `axum`), tonic's body (feature `tonic`),
/// `http_body_util`'s `Full<Bytes>`, `BoxBody` and `UnsyncBoxBody`, and `String`. Implement it
/// for a body type of your own to put the gateway in front of a service that uses it.
pub trait GatewayBody: Sized {
    /// A body holding `bytes` (a JSON document, or nothing for gRPC responses).
    fn from_bytes(bytes: Bytes) -> Self;
}

impl GatewayBody for Full<Bytes> {
    fn from_bytes(bytes: Bytes) -> Self {
        Full::new(bytes)
    }
}

impl<E> GatewayBody for BoxBody<Bytes, E> {
    fn from_bytes(bytes: Bytes) -> Self {
        Full::new(bytes).map_err(|never| match never {}).boxed()
    }
}

impl<E> GatewayBody for UnsyncBoxBody<Bytes, E> {
    fn from_bytes(bytes: Bytes) -> Self {
        Full::new(bytes)
            .map_err(|never| match never {})
            .boxed_unsync()
    }
}

impl GatewayBody for String {
    fn from_bytes(bytes: Bytes) -> Self {
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

#[cfg(feature = "axum")]
impl GatewayBody for axum::body::Body {
    fn from_bytes(bytes: Bytes) -> Self {
        axum::body::Body::from(bytes)
    }
}

#[cfg(feature = "tonic")]
impl GatewayBody for tonic::body::Body {
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

    async fn collected<B>(body: B) -> Bytes
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: std::fmt::Debug,
    {
        body.collect().await.unwrap().to_bytes()
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
