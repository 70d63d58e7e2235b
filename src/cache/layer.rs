//! [`ResponseCacheLayer`], and the cache step the gateway runs in front of its service.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, HeaderName, HeaderValue, WARNING};
use http::response::Parts;
use http::{Method, Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tokio::sync::oneshot;
use tower_layer::Layer;
use tower_service::Service;

use super::store::{
    CacheState, CachedResponse, Flight, Miss, PendingLookup, PendingPut, Refresh, StageCache,
};
use super::{CacheSettings, CacheStatus, CacheStore, RouteCacheSettings, RoutePolicy};
use crate::body::{GatewayBody, PartlyRead};
use crate::clock::GatewayClock;
use crate::context::RequestContext;
use crate::error::ConfigError;
use crate::observe::EXECUTION_LOG_TARGET;
use crate::response::{GatewayError, GatewayResponseType, GatewayResponses, is_grpc};

const X_CACHE: HeaderName = HeaderName::from_static("x-cache");
const REFRESH_IGNORED: HeaderValue = HeaderValue::from_static(
    "199 tower-gateway \"Cache-Control ignored: the caller may not refresh the cache\"",
);

/// Builds a [`ResponseCacheLayer`].
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct ResponseCacheLayerBuilder {
    settings: CacheSettings,
    route: RouteCacheSettings,
    responses: GatewayResponses,
    clock: Option<GatewayClock>,
}

impl ResponseCacheLayerBuilder {
    /// The cache's settings (default [`CacheSettings::new`]).
    pub fn settings(mut self, settings: CacheSettings) -> Self {
        self.settings = settings;
        self
    }

    /// The key's parameters and the rest of what a route would say. Alone, the layer keys by
    /// the caller a gateway or authorizer in front recorded in the request's
    /// [`RequestContext`] (none for anonymous requests) unless entries are
    /// [shared](RouteCacheSettings::shared_between_callers).
    pub fn route_settings(mut self, route: RouteCacheSettings) -> Self {
        self.route = route;
        self
    }

    /// The gateway responses to render refusals with.
    pub fn responses(mut self, responses: GatewayResponses) -> Self {
        self.responses = responses;
        self
    }

    /// The clock that ages entries (default the system's); a
    /// [`ManualClock`](crate::clock::ManualClock) makes tests deterministic.
    pub fn clock(mut self, clock: GatewayClock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Checks the settings. The layer keeps its entries in memory: settings that put them on
    /// Redis are refused (only a gateway's stages can).
    pub fn build(self) -> Result<ResponseCacheLayer, ConfigError> {
        self.settings.validate("cache")?;
        if self.settings.store != CacheStore::Memory {
            return Err(ConfigError::new(
                "cache.store",
                "ResponseCacheLayer keeps its entries in memory; a gateway stage's cache can be \
                 on Redis (GatewayBuilder::redis)",
            ));
        }
        let policy = RoutePolicy::compile(Some(&self.route), "cache", None, None)?;
        let cache = StageCache::new(self.settings, self.clock.unwrap_or_default());
        Ok(ResponseCacheLayer {
            state: Arc::new(CacheState::standalone(cache, policy, self.responses)),
        })
    }
}

/// The response cache for one service, without a gateway: one set of [`CacheSettings`] and
/// one key definition for every request (see the [module docs](super)).
///
/// Behind a [`RouteLayer`](crate::RouteLayer) the key holds the matched resource and path
/// parameters; without one, the request's path.
///
/// ```
/// use axum::{Router, routing::get};
/// use tower::Layer;
/// use tower_gateway::cache::{CacheSettings, ResponseCacheLayer, RouteCacheSettings};
/// use tower_gateway::validate::RequestParameter;
///
/// let cache = ResponseCacheLayer::builder()
///     .settings(CacheSettings::new().ttl_seconds(60))
///     .route_settings(RouteCacheSettings::new().key_parameter(RequestParameter::query("q")))
///     .build()
///     .expect("valid settings");
/// let router: Router = Router::new().route("/search", get(|| async { "[]" }));
/// let app = cache.layer(router);
/// # let _ = app;
/// cache.flush();
/// ```
#[derive(Clone)]
pub struct ResponseCacheLayer {
    state: Arc<CacheState>,
}

impl fmt::Debug for ResponseCacheLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseCacheLayer").finish_non_exhaustive()
    }
}

impl ResponseCacheLayer {
    /// Starts a builder with the default settings.
    pub fn builder() -> ResponseCacheLayerBuilder {
        ResponseCacheLayerBuilder::default()
    }

    /// Removes every entry.
    pub fn flush(&self) {
        self.state.stage(0).flush();
    }

    /// How many entries the cache holds.
    pub fn entry_count(&self) -> u64 {
        // The standalone layer keeps its entries in memory, where they are counted.
        self.state.stage(0).entry_count().unwrap_or_default()
    }

    /// How many bytes the entries take, as counted against the capacity.
    pub fn weighted_size(&self) -> u64 {
        self.state.stage(0).weighted_size().unwrap_or_default()
    }
}

impl<S> Layer<S> for ResponseCacheLayer {
    type Service = ResponseCache<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ResponseCache {
            inner,
            state: Some(Arc::clone(&self.state)),
        }
    }
}

/// The service of a [`ResponseCacheLayer`] (and the gateway's cache step).
///
/// The inner service must be `Clone`: a request that waits for another's fill takes the
/// service that was polled ready with it, in case it must call it after all.
pub struct ResponseCache<S> {
    inner: S,
    /// `None` when the cache is off (in a gateway, a deployment without a cache).
    state: Option<Arc<CacheState>>,
}

impl<S> ResponseCache<S> {
    pub(crate) fn new(inner: S, state: Option<Arc<CacheState>>) -> Self {
        Self { inner, state }
    }

    /// The inner service when the cache is off, for a gateway to call it directly: a cache
    /// that is off only passes requests through.
    pub(crate) fn uncached(&mut self) -> Option<&mut S> {
        match self.state {
            None => Some(&mut self.inner),
            Some(_) => None,
        }
    }

    /// Caches with `state` from now on: in a gateway, the cache of the deployment admitting
    /// the next request. Only a change of deployment costs a reference count.
    pub(crate) fn follow(&mut self, state: Option<&Arc<CacheState>>) {
        let same = match (&self.state, state) {
            (Some(current), Some(next)) => Arc::ptr_eq(current, next),
            (None, None) => true,
            _ => false,
        };
        if !same {
            self.state = state.cloned();
        }
    }
}

impl<S: Clone> Clone for ResponseCache<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            state: self.state.clone(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for ResponseCache<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseCache")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ResponseCache<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    ReqBody: Body,
    ResBody: GatewayBody + Body<Data = Bytes>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let Some(state) = self.state.as_deref() else {
            return ResponseFuture::passing(self.inner.call(request), None);
        };
        if request.extensions().get::<RequestContext>().is_none() {
            RequestContext::get_or_insert(&mut request);
        }
        // Cloned only after a decision, so that requests the cache leaves alone cost no
        // reference count.
        let decided = request
            .extensions()
            .get::<RequestContext>()
            .and_then(|context| {
                let decision = state.decide(&request, context)?;
                Some((decision, context.clone()))
            });
        let Some((decision, context)) = decided else {
            return ResponseFuture::passing(self.inner.call(request), None);
        };
        let cache = decision.cache;
        let mut mark = Mark {
            status: CacheStatus::Miss,
            header: cache.settings.cache_status_header,
            warn: decision.refresh == Refresh::Ignored { warn: true },
            context,
        };
        if decision.refresh == Refresh::Refused {
            let refused = GatewayError::new(GatewayResponseType::AccessDenied);
            let response =
                state
                    .responses
                    .render(refused, is_grpc(request.headers()), Some(&mark.context));
            return ResponseFuture::ready(response, None);
        }
        let key = decision.key.as_bytes();
        let refresh = decision.refresh == Refresh::Granted;
        let keeps_body = request.method() != Method::GET;
        // A `HEAD` is answered from the `GET` entry only; a body on a `GET` is input the key
        // does not hold, so neither fills an entry.
        let fills = !(decision.head_only || (!keeps_body && !request.body().is_end_stream()));
        let fill = |request: &Request<ReqBody>| FillSettings {
            ttl: decision.ttl,
            grpc: is_grpc(request.headers()),
        };
        if !refresh && let Some(lookup) = cache.fetch(key) {
            // On Redis: the lookup, then the course of a miss in memory.
            let fill = fill(&request);
            if fills {
                decision.policy.strip_for_fill(&mut request, keeps_body);
            }
            let ready = self.inner.clone();
            let service = std::mem::replace(&mut self.inner, ready);
            let retry = AfterLookup {
                cache: Arc::clone(cache),
                key: key.into(),
                fills,
                head_only: decision.head_only,
                fill,
                responses: state.responses.clone(),
            };
            return ResponseFuture {
                state: State::Looking {
                    lookup,
                    then: Some(Box::new((service, request, retry))),
                },
                mark: Some(mark),
            };
        }
        let found = trace_span!("cache").in_scope(|| (!refresh).then(|| cache.get(key)).flatten());
        if let Some(entry) = found {
            mark.status = CacheStatus::Hit;
            let response = entry.response(decision.head_only, Some(cache.age(&entry)));
            return ResponseFuture::ready(response, Some(mark));
        }
        if !fills {
            return ResponseFuture::passing(self.inner.call(request), Some(mark));
        }
        let fill = fill(&request);
        decision.policy.strip_for_fill(&mut request, keeps_body);
        let (state, hit) = after_miss(
            &mut self.inner,
            request,
            cache,
            key,
            refresh,
            fill,
            &state.responses,
        );
        if hit {
            mark.status = CacheStatus::Hit;
        }
        ResponseFuture {
            state,
            mark: Some(mark),
        }
    }
}

/// How an entry is filled.
#[derive(Clone, Copy)]
struct FillSettings {
    ttl: Duration,
    grpc: bool,
}

/// What a request looked up on Redis goes on with when it misses.
struct AfterLookup {
    cache: Arc<StageCache>,
    key: Box<[u8]>,
    fills: bool,
    head_only: bool,
    fill: FillSettings,
    responses: GatewayResponses,
}

/// After a miss on a request that may fill the entry: the entry another request stored
/// meanwhile (true: a hit), else the fill this request leads or the one it waits for.
fn after_miss<S, ReqBody, ResBody>(
    service: &mut S,
    request: Request<ReqBody>,
    cache: &Arc<StageCache>,
    key: &[u8],
    refresh: bool,
    fill: FillSettings,
    responses: &GatewayResponses,
) -> (State<S, ReqBody, ResBody>, bool)
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    ResBody: GatewayBody,
{
    match cache.miss(key, refresh) {
        Miss::Found(entry) => {
            let response = entry.response(false, Some(cache.age(&entry)));
            (
                State::Ready {
                    response: Some(response),
                },
                true,
            )
        }
        Miss::Wait(receiver) => {
            let ready = service.clone();
            let service = std::mem::replace(service, ready);
            (
                State::Waiting {
                    receiver,
                    then: Some(Box::new((service, request, Arc::clone(cache)))),
                },
                false,
            )
        }
        Miss::Lead(flight) => (
            State::Filling {
                future: service.call(request),
                fill: Some(Fill {
                    flight,
                    settings: fill,
                    responses: responses.clone(),
                }),
            },
            false,
        ),
    }
}

/// What the cache adds to a response it was consulted for.
struct Mark {
    status: CacheStatus,
    header: bool,
    warn: bool,
    context: RequestContext,
}

impl Mark {
    fn apply<B>(self, response: &mut Response<B>) {
        self.context.set_cache_status(self.status);
        tracing::debug!(
            target: EXECUTION_LOG_TARGET,
            request_id = %self.context.request_id(),
            status = self.status.as_str(),
            "response cache consulted"
        );
        if self.header {
            response
                .headers_mut()
                .insert(X_CACHE, HeaderValue::from_static(self.status.as_str()));
        }
        if self.warn {
            response.headers_mut().insert(WARNING, REFRESH_IGNORED);
        }
    }
}

/// A miss being filled by this request.
struct Fill {
    flight: Flight,
    settings: FillSettings,
    responses: GatewayResponses,
}

impl Fill {
    fn max_bytes(&self) -> u64 {
        self.flight.cache().max_entry_bytes()
    }

    /// How long the response may be kept, if it may be and its body is worth reading.
    fn reading_plan<B: Body + GatewayBody>(&self, head: &Parts, body: &B) -> Option<Duration> {
        let ttl = self.flight.cache().storable(head, self.settings.ttl)?;
        let declared = head
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<u64>().ok());
        let max_bytes = self.max_bytes();
        let hint = body.size_hint();
        if declared.is_some_and(|length| length > max_bytes) || hint.lower() > max_bytes {
            return None;
        }
        let bounded = hint.upper().is_some_and(|upper| upper <= max_bytes);
        (bounded || B::RESUMABLE).then_some(ttl)
    }
}

/// The bytes read so far: the first frame kept as it came, copied only when a second one
/// follows.
#[derive(Default)]
enum Collected {
    #[default]
    Empty,
    One(Bytes),
    Many(BytesMut),
}

impl Collected {
    fn len(&self) -> usize {
        match self {
            Self::Empty => 0,
            Self::One(bytes) => bytes.len(),
            Self::Many(bytes) => bytes.len(),
        }
    }

    fn push(&mut self, data: Bytes) {
        *self = match std::mem::take(self) {
            Self::Empty => Self::One(data),
            Self::One(first) => {
                let mut many = BytesMut::with_capacity(first.len() + data.len());
                many.extend_from_slice(&first);
                many.extend_from_slice(&data);
                Self::Many(many)
            }
            Self::Many(mut many) => {
                many.extend_from_slice(&data);
                Self::Many(many)
            }
        }
    }

    fn take(&mut self) -> Bytes {
        match std::mem::take(self) {
            Self::Empty => Bytes::new(),
            Self::One(bytes) => bytes,
            Self::Many(bytes) => bytes.freeze(),
        }
    }
}

pin_project! {
    /// The response future of [`ResponseCache`].
    pub struct ResponseFuture<S, ReqBody, ResBody>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    {
        #[pin]
        state: State<S, ReqBody, ResBody>,
        mark: Option<Mark>,
    }
}

pin_project! {
    #[project = StateProjection]
    enum State<S, ReqBody, ResBody>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    {
        // The service's response, handed on as it is.
        Passing { #[pin] future: S::Future },
        Ready { response: Option<Response<ResBody>> },
        // The entry is being looked up on Redis.
        Looking {
            lookup: PendingLookup,
            // Boxed, as in `Waiting` and `Reading`: these states are rare, and held inline they
            // would make every request's future (and its moves) bigger.
            then: Option<Box<(S, Request<ReqBody>, AfterLookup)>>,
        },
        // Another request fills the entry; if it stores none, this one calls the service.
        Waiting {
            receiver: oneshot::Receiver<Option<Arc<CachedResponse>>>,
            then: Option<Box<(S, Request<ReqBody>, Arc<StageCache>)>>,
        },
        Filling { #[pin] future: S::Future, fill: Option<Fill> },
        Reading {
            body: Option<Pin<Box<ResBody>>>,
            head: Option<Box<Parts>>,
            read: Collected,
            fill: Option<Fill>,
        },
        // The filled entry is being stored on Redis; the response follows.
        Storing { put: PendingPut, response: Option<Response<ResBody>> },
    }
}

impl<S, ReqBody, ResBody> ResponseFuture<S, ReqBody, ResBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    fn passing(future: S::Future, mark: Option<Mark>) -> Self {
        Self {
            state: State::Passing { future },
            mark,
        }
    }

    fn ready(response: Response<ResBody>, mark: Option<Mark>) -> Self {
        Self {
            state: State::Ready {
                response: Some(response),
            },
            mark,
        }
    }
}

/// How reading a response body ended.
enum Read<B> {
    Whole(Bytes),
    /// Past the largest entry, or ended with trailers: handed on without being stored.
    Partly(PartlyRead<B>),
    Failed,
}

impl<S, ReqBody, ResBody> Future for ResponseFuture<S, ReqBody, ResBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    ResBody: GatewayBody + Body<Data = Bytes>,
{
    type Output = Result<Response<ResBody>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            let next = match this.state.as_mut().project() {
                StateProjection::Passing { future } => {
                    let response = ready!(future.poll(cx))?;
                    return Poll::Ready(Ok(marked(response, this.mark.take())));
                }
                StateProjection::Ready { response } => {
                    let response = response
                        .take()
                        .expect("ResponseFuture polled after completion");
                    return Poll::Ready(Ok(marked(response, this.mark.take())));
                }
                StateProjection::Looking { lookup, then } => {
                    let found = ready!(lookup.as_mut().poll(cx));
                    let (mut service, request, retry) =
                        *then.take().expect("ResponseFuture polled after completion");
                    match found {
                        Some((entry, age)) => {
                            if let Some(mark) = this.mark.as_mut() {
                                mark.status = CacheStatus::Hit;
                            }
                            State::Ready {
                                response: Some(entry.response(retry.head_only, Some(age))),
                            }
                        }
                        None if !retry.fills => State::Passing {
                            future: service.call(request),
                        },
                        None => {
                            let (next, hit) = after_miss(
                                &mut service,
                                request,
                                &retry.cache,
                                &retry.key,
                                false,
                                retry.fill,
                                &retry.responses,
                            );
                            if hit && let Some(mark) = this.mark.as_mut() {
                                mark.status = CacheStatus::Hit;
                            }
                            next
                        }
                    }
                }
                StateProjection::Storing { put, response } => {
                    ready!(put.as_mut().poll(cx));
                    let response = response
                        .take()
                        .expect("ResponseFuture polled after completion");
                    return Poll::Ready(Ok(marked(response, this.mark.take())));
                }
                StateProjection::Waiting { receiver, then } => {
                    let outcome = ready!(Pin::new(receiver).poll(cx));
                    let (mut service, request, cache) =
                        *then.take().expect("ResponseFuture polled after completion");
                    match outcome {
                        Ok(Some(entry)) => {
                            if let Some(mark) = this.mark.as_mut() {
                                mark.status = CacheStatus::Hit;
                            }
                            State::Ready {
                                response: Some(entry.response(false, Some(cache.age(&entry)))),
                            }
                        }
                        // Nothing was stored (or the fill was dropped): ask the service.
                        _ => State::Passing {
                            future: service.call(request),
                        },
                    }
                }
                StateProjection::Filling { future, fill } => {
                    let response = ready!(future.poll(cx))?;
                    let mut fill = fill.take().expect("ResponseFuture polled after completion");
                    let (head, body) = response.into_parts();
                    match fill.reading_plan(&head, &body) {
                        Some(ttl) => {
                            fill.settings.ttl = ttl;
                            State::Reading {
                                body: Some(Box::pin(body)),
                                head: Some(Box::new(head)),
                                read: Collected::Empty,
                                fill: Some(fill),
                            }
                        }
                        // Not storable: it goes to the client untouched, and the waiting
                        // requests (told by the flight's drop) call the service themselves.
                        None => {
                            let response = Response::from_parts(head, body);
                            return Poll::Ready(Ok(marked(response, this.mark.take())));
                        }
                    }
                }
                StateProjection::Reading {
                    body,
                    head,
                    read,
                    fill,
                } => {
                    let max_bytes = fill.as_ref().map_or(0, Fill::max_bytes);
                    let ended = ready!(read_body(body, read, max_bytes, cx));
                    let head = *head.take().expect("ResponseFuture polled after completion");
                    let fill = fill.take().expect("ResponseFuture polled after completion");
                    let response = match ended {
                        Read::Whole(bytes) => {
                            let (entry, put) = fill.flight.complete(head, bytes, fill.settings.ttl);
                            let response = entry.response(false, None);
                            match put {
                                Some(put) => {
                                    this.state.set(State::Storing {
                                        put,
                                        response: Some(response),
                                    });
                                    continue;
                                }
                                None => response,
                            }
                        }
                        Read::Partly(partial) => match ResBody::resume(partial) {
                            Ok(body) => Response::from_parts(head, body),
                            Err(_) => {
                                tracing::error!(
                                    "the response cache read part of a response whose body type \
                                     cannot be resumed; implement GatewayBody::resume for it"
                                );
                                failure(
                                    &fill.responses,
                                    GatewayResponseType::ApiConfigurationError,
                                    fill.settings.grpc,
                                    this.mark,
                                )
                            }
                        },
                        Read::Failed => failure(
                            &fill.responses,
                            GatewayResponseType::IntegrationFailure,
                            fill.settings.grpc,
                            this.mark,
                        ),
                    };
                    return Poll::Ready(Ok(marked(response, this.mark.take())));
                }
            };
            this.state.set(next);
        }
    }
}

/// Reads frames until the body ends, fails, outgrows the largest entry or ends with trailers.
fn read_body<B>(
    body: &mut Option<Pin<Box<B>>>,
    read: &mut Collected,
    max_bytes: u64,
    cx: &mut Context<'_>,
) -> Poll<Read<B>>
where
    B: Body<Data = Bytes>,
{
    let Some(pinned) = body.as_mut() else {
        return Poll::Ready(Read::Failed);
    };
    loop {
        match ready!(pinned.as_mut().poll_frame(cx)) {
            None => return Poll::Ready(Read::Whole(read.take())),
            Some(Err(_)) => return Poll::Ready(Read::Failed),
            Some(Ok(frame)) => {
                let trailers = match frame.into_data() {
                    Ok(data) => {
                        let over = (read.len() + data.len()) as u64 > max_bytes;
                        read.push(data);
                        if !over {
                            continue;
                        }
                        None
                    }
                    Err(frame) => match frame.into_trailers() {
                        Ok(trailers) => Some(trailers),
                        // A kind of frame this version of http-body does not know: no data.
                        Err(_) => continue,
                    },
                };
                let rest = body.take().expect("the body is there while it is read");
                return Poll::Ready(Read::Partly(PartlyRead::new(read.take(), trailers, rest)));
            }
        }
    }
}

/// The gateway response for a fill that went wrong; nothing was stored.
fn failure<B: GatewayBody>(
    responses: &GatewayResponses,
    kind: GatewayResponseType,
    grpc: bool,
    mark: &Option<Mark>,
) -> Response<B> {
    let context = mark.as_ref().map(|mark| &mark.context);
    responses.render(GatewayError::new(kind), grpc, context)
}

fn marked<B>(mut response: Response<B>, mark: Option<Mark>) -> Response<B> {
    if let Some(mark) = mark {
        mark.apply(&mut response);
    }
    response
}
