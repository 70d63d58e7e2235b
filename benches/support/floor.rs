//! The least a layer can do for the `full` stack's required steps, hand-written with no
//! configuration: a random request id and its response header, the stage from the first path
//! segment and the path without it, one route match, one shared context in the extensions.
//! It is the yardstick for how close the gateway's overhead can get to zero.
//!
//! [`Floor::keyed`] adds the `keyed` stack's steps at their least, on `GET /pets/{petId}`: the
//! one `x-api-key` header (20–128 characters), its SHA-256 digest looked up in a map, the
//! key's plan checked against the stage, a GCRA throttle (governor, as the gateway) with its
//! remaining burst, a daily quota counted under a lock, and the three `x-ratelimit-*` headers
//! on the response.

use std::collections::HashMap;
use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::{Arc, LazyLock, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use governor::clock::DefaultClock;
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use http::uri::PathAndQuery;
use http::{HeaderName, HeaderValue, Method, Request, Response, Uri};
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};
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
    keys: Option<Arc<FloorKeys>>,
}

/// The route that requires a key in keyed mode (`/pets/{petId}`).
const KEYED_ROUTE: usize = 1;

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
            keys: None,
        }
    }

    /// With `key` accepted on stage `prod` (index 0) under `plan`.
    pub fn keyed(key: &str, plan: &super::BenchPlan) -> Self {
        let quota = Quota::with_period(Duration::from_secs_f64(1.0 / plan.rate))
            .unwrap()
            .allow_burst(NonZeroU32::new(plan.burst).unwrap());
        let plan_key = FloorKey {
            stage: 0,
            throttle: RateLimiter::direct(quota).with_middleware::<StateInformationMiddleware>(),
            burst: plan.burst,
            rate: plan.rate,
            daily_quota: plan.daily_quota,
            used_today: Mutex::new((0, 0)),
        };
        let mut by_digest = HashMap::default();
        by_digest.insert(<[u8; 32]>::from(Sha256::digest(key)), plan_key);
        Self {
            keys: Some(Arc::new(FloorKeys {
                by_digest,
                epoch: (Instant::now(), SystemTime::now()),
            })),
            ..Self::new()
        }
    }
}

impl<S> Layer<S> for Floor {
    type Service = FloorService<S>;
    fn layer(&self, inner: S) -> FloorService<S> {
        FloorService {
            inner,
            routes: Arc::clone(&self.routes),
            keys: self.keys.clone(),
        }
    }
}

#[derive(Clone)]
pub struct FloorService<S> {
    inner: S,
    routes: Arc<matchit::Router<usize>>,
    keys: Option<Arc<FloorKeys>>,
}

type Throttle = RateLimiter<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>;

struct FloorKeys {
    by_digest: HashMap<[u8; 32], FloorKey, foldhash::fast::FixedState>,
    /// An instant and the wall-clock time at it: the UTC day of a request's arrival comes from
    /// the instant already read for its context, not from a second clock read.
    epoch: (Instant, SystemTime),
}

struct FloorKey {
    stage: usize,
    throttle: Throttle,
    burst: u32,
    rate: f64,
    daily_quota: u64,
    /// The UTC day and the requests counted on it.
    used_today: Mutex<(u64, u64)>,
}

/// What the key check decided: the `x-ratelimit-*` numbers, or a rejection.
enum KeyCheck {
    Admitted([u32; 3]),
    Rejected(http::StatusCode, &'static str),
}

impl FloorKeys {
    fn check(&self, headers: &http::HeaderMap, stage: usize, received: Instant) -> KeyCheck {
        const FORBIDDEN: KeyCheck = KeyCheck::Rejected(http::StatusCode::FORBIDDEN, FORBIDDEN_BODY);
        let mut values = headers.get_all(&API_KEY).iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            return FORBIDDEN;
        };
        if !(20..=128).contains(&value.len()) {
            return FORBIDDEN;
        }
        let digest = <[u8; 32]>::from(Sha256::digest(value.as_bytes()));
        let Some(key) = self.by_digest.get(&digest).filter(|key| key.stage == stage) else {
            return FORBIDDEN;
        };
        let Ok(snapshot) = key.throttle.check() else {
            return KeyCheck::Rejected(http::StatusCode::TOO_MANY_REQUESTS, THROTTLED_BODY);
        };
        let since_epoch = self.epoch.1 + received.saturating_duration_since(self.epoch.0);
        let day = since_epoch
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs() / 86_400);
        {
            let mut used_today = key.used_today.lock().unwrap();
            if used_today.0 != day {
                *used_today = (day, 0);
            }
            if used_today.1 >= key.daily_quota {
                return KeyCheck::Rejected(http::StatusCode::TOO_MANY_REQUESTS, QUOTA_BODY);
            }
            used_today.1 += 1;
        }
        let remaining = snapshot.remaining_burst_capacity();
        let reset = (f64::from(key.burst - remaining) / key.rate).ceil() as u32;
        KeyCheck::Admitted([key.burst, remaining, reset])
    }
}

const FORBIDDEN_BODY: &str = r#"{"message":"Forbidden"}"#;
const THROTTLED_BODY: &str = r#"{"message":"Too Many Requests"}"#;
const QUOTA_BODY: &str = r#"{"message":"Limit Exceeded"}"#;
const MISSING_TOKEN_BODY: &str = r#"{"message":"Missing Authentication Token"}"#;

static API_KEY: HeaderName = HeaderName::from_static("x-api-key");
static RATE_LIMIT_HEADERS: [HeaderName; 3] = [
    HeaderName::from_static("x-ratelimit-limit"),
    HeaderName::from_static("x-ratelimit-remaining"),
    HeaderName::from_static("x-ratelimit-reset"),
];

/// The numbers the rate-limit headers carry, as static text: no allocation per header.
static NUMBERS: LazyLock<Vec<&'static str>> = LazyLock::new(|| {
    (0..=10_000)
        .map(|number: u32| &*Box::leak(number.to_string().into_boxed_str()))
        .collect()
});

fn number_value(number: u32) -> HeaderValue {
    match NUMBERS.get(number as usize) {
        Some(text) => HeaderValue::from_static(text),
        None => HeaderValue::from(number),
    }
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
            return FloorFuture::rejected(id, http::StatusCode::FORBIDDEN, MISSING_TOKEN_BODY);
        };
        let (first, rest) = match inner.find('/') {
            Some(end) => (&inner[..end], &inner[end..]),
            None => (inner, "/"),
        };
        let stage = match first {
            "prod" => 0,
            "beta" => 1,
            _ => {
                return FloorFuture::rejected(id, http::StatusCode::FORBIDDEN, MISSING_TOKEN_BODY);
            }
        };
        let mut rewritten = rest.to_owned();
        if let Some(query) = request.uri().query() {
            rewritten.push('?');
            rewritten.push_str(query);
        }
        let Ok(route) = self.routes.at(rest).map(|found| *found.value) else {
            return FloorFuture::rejected(id, http::StatusCode::FORBIDDEN, MISSING_TOKEN_BODY);
        };
        let received = Instant::now();
        let mut rate_limit = None;
        if let Some(keys) = self.keys.as_ref().filter(|_| route == KEYED_ROUTE) {
            match keys.check(request.headers(), stage, received) {
                KeyCheck::Admitted(numbers) => rate_limit = Some(numbers),
                KeyCheck::Rejected(status, body) => {
                    return FloorFuture::rejected(id, status, body);
                }
            }
        }
        let path_and_query = PathAndQuery::from_maybe_shared(Bytes::from(rewritten)).unwrap();
        let original = std::mem::replace(request.uri_mut(), Uri::from(path_and_query));
        let context = Arc::new(FloorContext {
            id: id.clone(),
            stage,
            route,
            method: request.method().clone(),
            original,
            received,
        });
        if request.extensions().is_empty() {
            *request.extensions_mut() = ROOMY.with(Clone::clone);
        }
        request.extensions_mut().insert(context);
        FloorFuture::Inner {
            future: self.inner.call(request),
            id: Some(id),
            rate_limit,
        }
    }
}

pin_project_lite::pin_project! {
    #[project = FloorProjection]
    pub enum FloorFuture<F> {
        Inner { #[pin] future: F, id: Option<HeaderValue>, rate_limit: Option<[u32; 3]> },
        Rejected { id: Option<HeaderValue>, status: http::StatusCode, body: &'static str },
    }
}

impl<F> FloorFuture<F> {
    fn rejected(id: HeaderValue, status: http::StatusCode, body: &'static str) -> Self {
        Self::Rejected {
            id: Some(id),
            status,
            body,
        }
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
            FloorProjection::Inner {
                future,
                id,
                rate_limit,
            } => {
                let mut response = ready!(future.poll(cx))?;
                if let Some(numbers) = rate_limit.take() {
                    for (name, number) in RATE_LIMIT_HEADERS.iter().zip(numbers) {
                        response
                            .headers_mut()
                            .insert(name.clone(), number_value(number));
                    }
                }
                (response, id.take())
            }
            FloorProjection::Rejected { id, status, body } => {
                let mut response = Response::new(R::from(body));
                *response.status_mut() = *status;
                if *status == http::StatusCode::TOO_MANY_REQUESTS {
                    response
                        .headers_mut()
                        .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
                }
                (response, id.take())
            }
        };
        if let Some(id) = id {
            response.headers_mut().insert(REQUEST_ID.clone(), id);
        }
        Poll::Ready(Ok(response))
    }
}
