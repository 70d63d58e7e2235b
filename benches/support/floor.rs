//! The least a layer can do for the `full` stack's required steps, hand-written with no
//! configuration: a random request id and its response header, the stage from the first path
//! segment and the path without it, one route match, one shared context in the extensions.
//! It is the yardstick for how close the gateway's overhead can get to zero.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderName, HeaderValue, Method, Request, Response, Uri};
use rand::{Rng, SeedableRng};
use tower::{Layer, Service};

pub struct FloorContext {
    pub id: HeaderValue,
    pub stage: usize,
    pub route: usize,
    pub method: Method,
    pub original: Uri,
    pub received: Instant,
}

#[derive(Clone)]
pub struct Floor {
    routes: Arc<matchit::Router<usize>>,
}

impl Floor {
    pub fn new() -> Self {
        let mut routes = matchit::Router::new();
        for (index, path) in ["/pets", "/pets/{petId}", "/stage", "/catalog"]
            .into_iter()
            .enumerate()
        {
            routes.insert(path, index).unwrap();
        }
        Self {
            routes: Arc::new(routes),
        }
    }
}

impl<S> Layer<S> for Floor {
    type Service = FloorService<S>;
    fn layer(&self, inner: S) -> FloorService<S> {
        FloorService {
            inner,
            routes: Arc::clone(&self.routes),
        }
    }
}

#[derive(Clone)]
pub struct FloorService<S> {
    inner: S,
    routes: Arc<matchit::Router<usize>>,
}

thread_local! {
    // A map with room for the context and axum's three extensions, so it never grows.
    static ROOMY: http::Extensions = {
        #[derive(Clone)]
        struct Slot<const N: usize>;
        let mut extensions = http::Extensions::new();
        extensions.insert(Slot::<0>);
        extensions.insert(Slot::<1>);
        extensions.insert(Slot::<2>);
        extensions.insert(Slot::<3>);
        extensions.clear();
        extensions
    };
}

fn request_id() -> HeaderValue {
    thread_local! {
        static RNG: std::cell::RefCell<rand::rngs::StdRng> =
            std::cell::RefCell::new(rand::rngs::StdRng::from_os_rng());
    }
    let bits: u128 = RNG.with(|rng| rng.borrow_mut().random());
    const HEX: &[u8; 16] = b"0123456789abcdef";
    const PLACES: [usize; 16] = [0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34];
    let mut text = [b'-'; 36];
    for (byte, place) in bits.to_le_bytes().into_iter().zip(PLACES) {
        text[place] = HEX[usize::from(byte >> 4)];
        text[place + 1] = HEX[usize::from(byte & 0xf)];
    }
    HeaderValue::from_bytes(&text).unwrap()
}

impl<S, B, R> Service<Request<B>> for FloorService<S>
where
    S: Service<Request<B>, Response = Response<R>>,
    R: From<&'static str>,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = FloorFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let id = request_id();
        // An asterisk- or authority-form target has no leading `/`, and no stage.
        let Some(inner) = request.uri().path().strip_prefix('/') else {
            return FloorFuture::Rejected { id: Some(id) };
        };
        let (first, rest) = match inner.find('/') {
            Some(end) => (&inner[..end], &inner[end..]),
            None => (inner, "/"),
        };
        let stage = match first {
            "prod" => 0,
            "beta" => 1,
            _ => return FloorFuture::Rejected { id: Some(id) },
        };
        let mut rewritten = rest.to_owned();
        if let Some(query) = request.uri().query() {
            rewritten.push('?');
            rewritten.push_str(query);
        }
        let Ok(route) = self.routes.at(rest).map(|found| *found.value) else {
            return FloorFuture::Rejected { id: Some(id) };
        };
        let path_and_query = PathAndQuery::from_maybe_shared(Bytes::from(rewritten)).unwrap();
        let original = std::mem::replace(request.uri_mut(), Uri::from(path_and_query));
        let context = Arc::new(FloorContext {
            id: id.clone(),
            stage,
            route,
            method: request.method().clone(),
            original,
            received: Instant::now(),
        });
        if request.extensions().is_empty() {
            *request.extensions_mut() = ROOMY.with(Clone::clone);
        }
        request.extensions_mut().insert(context);
        FloorFuture::Inner {
            future: self.inner.call(request),
            id: Some(id),
        }
    }
}

pin_project_lite::pin_project! {
    #[project = FloorProjection]
    pub enum FloorFuture<F> {
        Inner { #[pin] future: F, id: Option<HeaderValue> },
        Rejected { id: Option<HeaderValue> },
    }
}

static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

impl<F, R, E> Future for FloorFuture<F>
where
    F: Future<Output = Result<Response<R>, E>>,
    R: From<&'static str>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let (mut response, id) = match self.project() {
            FloorProjection::Inner { future, id } => (ready!(future.poll(cx))?, id.take()),
            FloorProjection::Rejected { id } => {
                let mut response =
                    Response::new(R::from(r#"{"message":"Missing Authentication Token"}"#));
                *response.status_mut() = http::StatusCode::FORBIDDEN;
                (response, id.take())
            }
        };
        if let Some(id) = id {
            response.headers_mut().insert(REQUEST_ID.clone(), id);
        }
        Poll::Ready(Ok(response))
    }
}
