//! Helpers shared by the criterion benches.
#![allow(dead_code)]

use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use http::{Request, Response};

/// Polls a future that is expected to be ready at once (every service here answers without
/// waiting), so the bench measures the layer and not an executor.
pub fn now<F: Future>(future: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(future).poll(&mut cx) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("the benched service was expected to answer at once"),
    }
}

/// The inner service: answers at once with an empty body.
pub fn ok_service(_request: Request<()>) -> Ready<Result<Response<String>, Infallible>> {
    ready(Ok(Response::new(String::new())))
}
