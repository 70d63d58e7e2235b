//! The request context: what the gateway knows about one request.
//!
//! [`RequestContext`] is the analogue of API Gateway's `$context`. The outermost layer
//! ([`RequestContextLayer`], or the [`Gateway`](crate::Gateway)) creates it and puts it in the
//! request's extensions; every inner layer records what it learns (the stage, the matched
//! route and its path parameters, the API key, a rejection); handlers read it. It is shared
//! (cheap to clone) so that the [access log and metrics](crate::observe) can read it after the
//! response.
//!
//! A layer used without the context layer creates a context itself when the request has none;
//! its request id then appears in `$context.requestId` in gateway responses but is not sent
//! in a response header (only the context layer and the gateway send it).
//!
//! # Example
//!
//! ```
//! use http::{Request, Response};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_gateway::context::{RequestContext, RequestContextLayer};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let service = ServiceBuilder::new()
//!     .layer(RequestContextLayer::builder().build().unwrap())
//!     .service(service_fn(|request: Request<String>| async move {
//!         let context = request.extensions().get::<RequestContext>().unwrap();
//!         Ok::<_, std::convert::Infallible>(Response::new(context.request_id().to_string()))
//!     }));
//!
//! let response = service.oneshot(Request::new(String::new())).await.unwrap();
//! let header = response.headers()["x-request-id"].to_str().unwrap().to_owned();
//! assert_eq!(header.len(), 36);
//! # }
//! ```
//!
//! # Request ids
//!
//! Each request gets a random 128-bit id written as a UUID (version 4), returned in the
//! `x-request-id` response header (the name is configurable). An inbound id in that header is
//! used instead only when [`RequestContextLayerBuilder::trust_inbound_request_id`] is set, and
//! only if it is 1–128 visible ASCII characters; otherwise a fresh id is generated.
//!
//! # Source IP
//!
//! The client address comes from the connection: axum's `ConnectInfo<SocketAddr>` (feature
//! `axum`), tonic's `TcpConnectInfo` (feature `tonic`), or a [`ClientAddr`] that a hyper
//! server puts in the extensions itself. `X-Forwarded-For` is believed only when the
//! connection comes from a configured trusted proxy: then the source is the right-most
//! address in the header that is not itself a trusted proxy.

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{HOST, HeaderName, HeaderValue, USER_AGENT};
use http::{Extensions, HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use ipnet::IpNet;
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use tower_layer::Layer;
use tower_service::Service;

use crate::api_key::{ApiKeyInfo, KeyDigest, valid_key_value};
use crate::authorizer::Identity;
use crate::cache::CacheStatus;
use crate::canary::Release;
use crate::error::ConfigError;
use crate::future::{Finish, ResponseFuture};
use crate::observe::TraceParent;
use crate::response::GatewayResponseType;
use crate::route::MatchedRoute;
use crate::stage::{Stage, StageVariables};

const MAX_INBOUND_REQUEST_ID: usize = 128;

/// The request's id: generated, or taken from the request when so configured.
///
/// Held as the header value the response carries, so that sending it costs a reference count
/// and not a copy.
#[derive(Clone)]
pub struct RequestId(HeaderValue);

/// How many ids [`RequestId::generate`] formats at a time into one shared buffer: each id is
/// then a slice of it, with no allocation of its own.
const IDS_PER_BATCH: usize = 64;
const ID_LEN: usize = 36;

/// A thread's generator of request ids, and the ids it formatted and has not handed out yet.
struct IdBatch {
    rng: StdRng,
    formatted: Bytes,
}

impl IdBatch {
    #[inline]
    fn next(&mut self) -> Bytes {
        if self.formatted.len() < ID_LEN {
            self.refill();
        }
        self.formatted.split_to(ID_LEN)
    }

    // Once in a batch: kept out of the request path's code.
    #[cold]
    #[inline(never)]
    fn refill(&mut self) {
        let mut text = Vec::with_capacity(ID_LEN * IDS_PER_BATCH);
        for _ in 0..IDS_PER_BATCH {
            text.extend_from_slice(&format_uuid_v4(self.rng.next_u64(), self.rng.next_u64()));
        }
        self.formatted = Bytes::from(text);
    }
}

/// Eight lower-case hex digits, one for each byte of `nibbles` (each below 16), made for all
/// eight bytes at once rather than by a table lookup each.
fn hex_digits(nibbles: u64) -> [u8; 8] {
    const ONES: u64 = 0x0101_0101_0101_0101;
    // 1 in the bytes of 10 and above, which take a letter: `a` is 0x27 past `0` + 10. No byte
    // carries into the next: the largest, 15 + 0x30 + 0x27, is `f`.
    let letters = ((nibbles + 6 * ONES) >> 4) & ONES;
    (nibbles + 0x30 * ONES + letters * 0x27).to_le_bytes()
}

/// The 128 random bits of `high` and `low` as a version 4, variant 10xx UUID in lower-case
/// hex. Which bit becomes which digit does not matter, as long as each is used once: the
/// digits are the four-bit halves of every byte, and the version and variant replace two of
/// them (keeping two of the replaced bits), which leaves a v4 UUID's 122 random bits.
fn format_uuid_v4(high: u64, low: u64) -> [u8; ID_LEN] {
    const LOW_HALVES: u64 = 0x0F0F_0F0F_0F0F_0F0F;
    let digits = [
        hex_digits(high & LOW_HALVES),
        hex_digits((high >> 4) & LOW_HALVES),
        hex_digits(low & LOW_HALVES),
        hex_digits((low >> 4) & LOW_HALVES),
    ];
    let mut text = [b'-'; ID_LEN];
    text[0..8].copy_from_slice(&digits[0]);
    text[9..13].copy_from_slice(&digits[1][..4]);
    text[14..18].copy_from_slice(&digits[1][4..]);
    text[19..23].copy_from_slice(&digits[2][..4]);
    text[24..28].copy_from_slice(&digits[2][4..]);
    text[28..36].copy_from_slice(&digits[3]);
    text[14] = b'4';
    // `text[19]` was the digit of `low & 0xF`.
    text[19] = b"89ab"[(low & 3) as usize];
    text
}

impl RequestId {
    /// A fresh random id, formatted as a version 4 UUID.
    ///
    /// The bits come from a per-thread ChaCha12 generator seeded from the operating system, so
    /// the ids a client sees do not reveal the ones other clients get.
    #[inline]
    pub fn generate() -> Self {
        thread_local! {
            static IDS: RefCell<IdBatch> = RefCell::new(IdBatch {
                rng: StdRng::from_os_rng(),
                formatted: Bytes::new(),
            });
        }
        let text = IDS.with(|ids| ids.borrow_mut().next());
        // Hex digits and dashes: always a valid header value.
        Self(HeaderValue::from_maybe_shared(text).unwrap_or_else(|_| HeaderValue::from_static("")))
    }

    fn inbound(value: &HeaderValue) -> Option<Self> {
        let bytes = value.as_bytes();
        let valid = !bytes.is_empty()
            && bytes.len() <= MAX_INBOUND_REQUEST_ID
            && bytes.iter().all(|b| b.is_ascii_graphic());
        valid.then(|| Self(value.clone()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        // Visible ASCII by construction, generated or inbound.
        self.0.to_str().unwrap_or_default()
    }

    #[inline]
    pub(crate) fn header_value(&self) -> HeaderValue {
        self.0.clone()
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RequestId({})", self.as_str())
    }
}

/// The client's address, for servers (such as a plain hyper server) that have no
/// `ConnectInfo` of their own: insert it in the request's extensions before the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub SocketAddr);

/// What the gateway knows about one request. Cheap to clone (one shared allocation).
///
/// Get it from a request's extensions (`request.extensions().get::<RequestContext>()`, for
/// hyper and tonic requests alike) or with the axum extractor (feature `axum`).
#[derive(Clone)]
pub struct RequestContext {
    inner: Arc<ContextInner>,
}

struct ContextInner {
    request_id: RequestId,
    received_at: Instant,
    method: Method,
    uri: Uri,
    version: Version,
    source_ip: Option<IpAddr>,
    user_agent: Option<HeaderValue>,
    host: Option<HeaderValue>,
    trace_parent: Option<TraceParent>,
    // The gateway selects the stage, matches the route and picks the release before it
    // creates the context, so they are plain fields there; a stage, route or canary layer used
    // on its own decides later and fills the `late_` cell in `rare` instead (setting a
    // `OnceLock` costs a synchronised call).
    stage: Option<Stage>,
    route: Option<MatchedRoute>,
    release: Option<Release>,
    identity: OnceLock<Identity>,
    api_key: OnceLock<Arc<ApiKeyInfo>>,
    cache_status: OnceLock<CacheStatus>,
    authorizer: OnceLock<PhaseOutcome>,
    rare: OnceLock<Box<Rare>>,
    // The integration's answer as plain atomics rather than a `OnceLock`: it is written on
    // every request that reaches the service, by that request's one response future, and a
    // `OnceLock` would take its lock for it.
    integration_nanos: AtomicU64,
    /// 0 until the service answered.
    integration_status: AtomicU16,
}

/// What only some requests record (a rejection, a standalone layer's decision, an
/// authorizer's usage identifier), allocated on the first such record. Kept out of the
/// context itself, whose every byte every request builds, copies into its allocation and
/// drops.
#[derive(Default)]
struct Rare {
    late_stage: OnceLock<Stage>,
    late_route: OnceLock<MatchedRoute>,
    late_release: OnceLock<Release>,
    usage_identifier_key: OnceLock<KeyDigest>,
    error: OnceLock<(GatewayResponseType, Cow<'static, str>)>,
    validation_error: OnceLock<Box<str>>,
    without_backend: OnceLock<()>,
}

/// How long the authorizer took, and whether it let the request through.
#[derive(Debug, Clone, Copy)]
struct PhaseOutcome {
    latency: Duration,
    passed: bool,
}

/// What the gateway decided about a request before creating its context.
#[derive(Default)]
pub(crate) struct Decided {
    pub(crate) stage: Option<Stage>,
    /// The canary's pick, on a stage with a canary (or the release forced on the selector).
    pub(crate) release: Option<Release>,
    /// The URI as the client sent it, when the base path was removed from the request's.
    pub(crate) original_uri: Option<Uri>,
    pub(crate) route: Option<MatchedRoute>,
}

impl RequestContext {
    fn create<B>(request: &Request<B>, settings: &ContextSettings, decided: &mut Decided) -> Self {
        let headers = request.headers();
        let kept = KeptHeaders::find(headers, settings.trusted_request_id_header());
        let request_id = kept
            .request_id
            .and_then(RequestId::inbound)
            .unwrap_or_else(RequestId::generate);
        Self {
            inner: Arc::new(ContextInner {
                request_id,
                received_at: Instant::now(),
                method: request.method().clone(),
                uri: decided
                    .original_uri
                    .take()
                    .unwrap_or_else(|| request.uri().clone()),
                version: request.version(),
                source_ip: source_ip(request.extensions(), headers, &settings.trusted_proxies),
                user_agent: kept.user_agent.cloned(),
                host: kept.host.cloned(),
                // A request with several `traceparent` headers has no trace context (W3C).
                trace_parent: kept
                    .trace_parent
                    .filter(|_| kept.trace_parents == 1)
                    .and_then(TraceParent::parse),
                stage: decided.stage.take(),
                route: decided.route.take(),
                release: decided.release,
                identity: OnceLock::new(),
                api_key: OnceLock::new(),
                cache_status: OnceLock::new(),
                authorizer: OnceLock::new(),
                rare: OnceLock::new(),
                integration_nanos: AtomicU64::new(0),
                integration_status: AtomicU16::new(0),
            }),
        }
    }

    /// The request's context; when it has none (no gateway or context layer in front), one is
    /// created with default settings (a fresh request id) and inserted. For layers of your own
    /// that want to record or read what the gateway knows.
    pub fn get_or_insert<B>(request: &mut Request<B>) -> Self {
        if let Some(context) = request.extensions().get::<RequestContext>() {
            return context.clone();
        }
        let context = Self::create(
            request,
            &ContextSettings::default(),
            &mut Decided::default(),
        );
        request.extensions_mut().insert(context.clone());
        context
    }

    /// The request id (`$context.requestId`).
    pub fn request_id(&self) -> &RequestId {
        &self.inner.request_id
    }

    /// When the gateway received the request, on the monotonic clock.
    pub fn received_at(&self) -> Instant {
        self.inner.received_at
    }

    /// When the gateway received the request, on the wall clock (`$context.requestTime`).
    ///
    /// Derived from the monotonic [`received_at`](Self::received_at) when asked, which saves a
    /// clock read on every request; it is exact unless the wall clock was set in between.
    pub fn request_time(&self) -> SystemTime {
        SystemTime::now() - self.inner.received_at.elapsed()
    }

    /// The HTTP method (`$context.httpMethod`).
    pub fn http_method(&self) -> &Method {
        &self.inner.method
    }

    /// The path as the client sent it, before a stage's base path was removed
    /// (`$context.path`).
    pub fn path(&self) -> &str {
        self.inner.uri.path()
    }

    /// The URI as the client sent it.
    pub fn original_uri(&self) -> &Uri {
        &self.inner.uri
    }

    /// The HTTP version (`$context.protocol`).
    pub fn protocol(&self) -> Version {
        self.inner.version
    }

    /// The client's IP address (`$context.identity.sourceIp`), when the server reports the
    /// connection's address (see the [module docs](self)).
    pub fn source_ip(&self) -> Option<IpAddr> {
        self.inner.source_ip
    }

    /// The `User-Agent` header (`$context.identity.userAgent`).
    pub fn user_agent(&self) -> Option<&str> {
        self.inner.user_agent.as_ref().and_then(|v| v.to_str().ok())
    }

    /// The host the client addressed, without a port (`$context.domainName`): the URI's
    /// authority (HTTP/2), else the `Host` header.
    pub fn domain_name(&self) -> Option<&str> {
        let authority = match self.inner.uri.host() {
            Some(host) => host,
            None => self.inner.host.as_ref()?.to_str().ok()?,
        };
        Some(host_without_port(authority)).filter(|host| !host.is_empty())
    }

    /// The W3C trace context the client sent (`traceparent`), when it is well formed. The
    /// header itself reaches the inner service unchanged.
    pub fn trace_parent(&self) -> Option<&TraceParent> {
        self.inner.trace_parent.as_ref()
    }

    /// How long the route's authorizer took (`$context.authorizer.latency`), once it answered.
    pub fn authorizer_latency(&self) -> Option<Duration> {
        self.inner.authorizer.get().map(|outcome| outcome.latency)
    }

    /// Whether the route's authorizer let the request through; `None` when no authorizer ran.
    pub fn authorizer_passed(&self) -> Option<bool> {
        self.inner.authorizer.get().map(|outcome| outcome.passed)
    }

    pub(crate) fn record_authorizer(&self, latency: Duration, passed: bool) {
        let _ = self.inner.authorizer.set(PhaseOutcome { latency, passed });
    }

    /// How long the inner service took to answer with a response head
    /// (`$context.integrationLatency`); `None` when it was not called (a rejection, a cache
    /// hit). Recorded when the gateway has an access log or metrics, its readers, or when its
    /// `integration` span is enabled; otherwise the service is not timed (which saves two
    /// clock reads per request), and this is `None`.
    pub fn integration_latency(&self) -> Option<Duration> {
        self.integration_status()
            .map(|_| Duration::from_nanos(self.inner.integration_nanos.load(Ordering::Relaxed)))
    }

    /// The status the inner service answered with (`$context.integration.status`); recorded
    /// when the [latency](Self::integration_latency) is.
    pub fn integration_status(&self) -> Option<StatusCode> {
        // Acquire: the latency was stored before the status was.
        let status = self.inner.integration_status.load(Ordering::Acquire);
        StatusCode::from_u16(status).ok()
    }

    /// Records the service's answer; the first one recorded stays.
    pub(crate) fn record_integration(&self, latency: Duration, status: StatusCode) {
        if self.inner.integration_status.load(Ordering::Relaxed) != 0 {
            return;
        }
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.inner.integration_nanos.store(nanos, Ordering::Relaxed);
        self.inner
            .integration_status
            .store(status.as_u16(), Ordering::Release);
    }

    /// Whether the throttle and quota decision was made without the shared backend (Redis
    /// failed or did not answer, and the [outage policy](crate::store) decided).
    pub fn decided_without_backend(&self) -> bool {
        self.rare()
            .is_some_and(|rare| rare.without_backend.get().is_some())
    }

    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn set_decided_without_backend(&self) {
        let _ = self.rare_to_record().without_backend.set(());
    }

    /// The stage serving the request (`$context.stage`), once selected.
    pub fn stage(&self) -> Option<&Stage> {
        self.inner
            .stage
            .as_ref()
            .or_else(|| self.rare()?.late_stage.get())
    }

    /// The stage's variables, with the canary's overrides on a canary request; empty before a
    /// stage is selected.
    pub fn stage_variables(&self) -> &StageVariables {
        static EMPTY: OnceLock<StageVariables> = OnceLock::new();
        if self.release().is_canary()
            && let Some(overridden) = self
                .stage()
                .and_then(Stage::compiled_canary)
                .and_then(|canary| canary.variables.as_ref())
        {
            return overridden;
        }
        match self.stage() {
            Some(stage) => stage.variables(),
            None => EMPTY.get_or_init(StageVariables::default),
        }
    }

    /// The matched route, once routing is done.
    pub fn route(&self) -> Option<&MatchedRoute> {
        self.inner
            .route
            .as_ref()
            .or_else(|| self.rare()?.late_route.get())
    }

    /// The matched route's resource template, e.g. `/pets/{petId}`
    /// (`$context.resourcePath`); `$default` for the default route.
    pub fn resource_path(&self) -> Option<&str> {
        self.route().map(MatchedRoute::resource_path)
    }

    /// A path parameter of the matched route, percent-decoded. For `{proxy+}` it is the whole
    /// matched tail (`a/b/c`).
    pub fn path_parameter(&self, name: &str) -> Option<&str> {
        self.path_parameters()
            .find(|(parameter, _)| *parameter == name)
            .map(|(_, value)| value)
    }

    /// All path parameters of the matched route, in template order, percent-decoded.
    pub fn path_parameters(&self) -> impl Iterator<Item = (&str, &str)> {
        self.route()
            .into_iter()
            .flat_map(|route| route.parameters_in(self.path()))
    }

    /// Who the route's authorizer found the caller to be (principal and claims), once it
    /// accepted the request.
    pub fn identity(&self) -> Option<&Identity> {
        self.inner.identity.get()
    }

    pub(crate) fn set_identity(&self, identity: Identity) {
        if self.inner.identity.set(identity).is_err() {
            tracing::debug!("an identity was already recorded for this request; keeping the first");
        }
    }

    /// The API key the request presented, once accepted (its id is
    /// `$context.identity.apiKeyId`; the value itself is never kept).
    pub fn api_key(&self) -> Option<&ApiKeyInfo> {
        self.inner.api_key.get().map(|key| &**key)
    }

    /// The accepted API key's id.
    pub fn api_key_id(&self) -> Option<&str> {
        self.api_key().map(ApiKeyInfo::id)
    }

    /// Records the API key value an authorizer found for this request (API Gateway's
    /// `usageIdentifierKey`), for an API-key check whose source is
    /// [`ApiKeySource::Authorizer`](crate::api_key::ApiKeySource::Authorizer). Only its digest is
    /// kept. Returns false, recording nothing, when the value is not a possible key (20–128
    /// visible ASCII characters) or a key was already recorded.
    pub fn set_usage_identifier_key(&self, value: &str) -> bool {
        valid_key_value(value.as_bytes())
            && self
                .rare_to_record()
                .usage_identifier_key
                .set(KeyDigest::of(value.as_bytes()))
                .is_ok()
    }

    pub(crate) fn set_usage_identifier_digest(&self, digest: KeyDigest) {
        let _ = self.rare_to_record().usage_identifier_key.set(digest);
    }

    pub(crate) fn usage_identifier_key(&self) -> Option<&KeyDigest> {
        self.rare()?.usage_identifier_key.get()
    }

    pub(crate) fn set_api_key(&self, key: Arc<ApiKeyInfo>) {
        let _ = self.inner.api_key.set(key);
    }

    /// The gateway response type, when the gateway rejected the request
    /// (`$context.error.responseType`).
    pub fn error_type(&self) -> Option<GatewayResponseType> {
        self.rare()?.error.get().map(|(kind, _)| *kind)
    }

    /// The rejection's message (`$context.error.message`).
    pub fn error_message(&self) -> Option<&str> {
        self.rare()?.error.get().map(|(_, message)| &**message)
    }

    /// Why the request's body failed validation (`$context.error.validationErrorString`):
    /// the parse error or the schema's complaints, at most 1 KiB, with the offending values
    /// masked (property names and paths from the body do appear).
    pub fn validation_error(&self) -> Option<&str> {
        self.rare()?.validation_error.get().map(|detail| &**detail)
    }

    pub(crate) fn set_validation_error(&self, detail: String) {
        let _ = self
            .rare_to_record()
            .validation_error
            .set(detail.into_boxed_str());
    }

    /// Whether the [response cache](crate::cache) answered (`$context` `CacheHitCount` /
    /// `CacheMissCount`); `None` when the request was not one the cache keeps.
    pub fn cache_status(&self) -> Option<CacheStatus> {
        self.inner.cache_status.get().copied()
    }

    pub(crate) fn set_cache_status(&self, status: CacheStatus) {
        let _ = self.inner.cache_status.set(status);
    }

    /// Which release serves the request: [`Release::Canary`] when its stage's canary (or a
    /// [`CanaryLayer`](crate::canary::CanaryLayer)) picked it, else [`Release::Baseline`].
    pub fn release(&self) -> Release {
        self.decided_release().unwrap_or_default()
    }

    /// The release, when a canary picked one (`None` on stages without a canary).
    pub(crate) fn decided_release(&self) -> Option<Release> {
        self.inner
            .release
            .or_else(|| self.rare()?.late_release.get().copied())
    }

    /// The release a canary picked and the header its canary sends it back in, when it names
    /// one.
    pub(crate) fn release_header(&self) -> Option<(&HeaderName, Release)> {
        let release = self.decided_release()?;
        let canary = self.stage()?.compiled_canary()?;
        Some((canary.release_header.as_ref()?, release))
    }

    /// Records the canary's pick.
    pub(crate) fn set_release(&self, release: Release) {
        if self.inner.release.is_none() {
            let _ = self.rare_to_record().late_release.set(release);
        }
    }

    pub(crate) fn set_stage(&self, stage: Stage) {
        if self.inner.stage.is_some() || self.rare_to_record().late_stage.set(stage).is_err() {
            tracing::debug!("a stage was already selected for this request; keeping the first");
        }
    }

    pub(crate) fn set_route(&self, route: MatchedRoute) {
        if self.inner.route.is_some() || self.rare_to_record().late_route.set(route).is_err() {
            tracing::debug!("a route was already matched for this request; keeping the first");
        }
    }

    pub(crate) fn record_error(&self, kind: GatewayResponseType, message: Cow<'static, str>) {
        let _ = self.rare_to_record().error.set((kind, message));
    }

    /// What only some requests record, when this one recorded any of it.
    fn rare(&self) -> Option<&Rare> {
        self.inner.rare.get().map(|rare| &**rare)
    }

    /// The same, allocated for a first record.
    fn rare_to_record(&self) -> &Rare {
        self.inner.rare.get_or_init(Box::default)
    }
}

impl fmt::Debug for RequestContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestContext")
            .field("request_id", &self.request_id().as_str())
            .field("method", self.http_method())
            .field("path", &self.path())
            .field("stage", &self.stage().map(Stage::name))
            .field("resource_path", &self.resource_path())
            .field("identity", &self.identity())
            .field("api_key_id", &self.api_key_id())
            .field("error_type", &self.error_type())
            .field("validation_error", &self.validation_error())
            .finish_non_exhaustive()
    }
}

/// `host` without its `:port`; an IPv6 literal keeps its brackets. The context's
/// `domainName` and the stage selection by custom domain both use it.
pub(crate) fn host_without_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority
            .find(']')
            .map_or(authority, |end| &authority[..=end]);
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

fn connection_addr(extensions: &Extensions) -> Option<IpAddr> {
    if let Some(ClientAddr(addr)) = extensions.get::<ClientAddr>() {
        return Some(addr.ip());
    }
    #[cfg(feature = "axum")]
    if let Some(info) = extensions.get::<axum::extract::ConnectInfo<SocketAddr>>() {
        return Some(info.0.ip());
    }
    #[cfg(feature = "tonic")]
    if let Some(info) = extensions.get::<tonic::transport::server::TcpConnectInfo>() {
        return info.remote_addr().map(|addr| addr.ip());
    }
    None
}

/// The request headers a context keeps, found in one pass over the headers: for the dozen or
/// so headers of a usual request that costs less than a hash lookup for each. As with
/// `HeaderMap::get`, the first of several values is the one kept.
#[derive(Default)]
struct KeptHeaders<'a> {
    user_agent: Option<&'a HeaderValue>,
    host: Option<&'a HeaderValue>,
    trace_parent: Option<&'a HeaderValue>,
    trace_parents: usize,
    request_id: Option<&'a HeaderValue>,
}

impl<'a> KeptHeaders<'a> {
    #[inline]
    fn find(headers: &'a HeaderMap, request_id_header: Option<&HeaderName>) -> Self {
        const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
        let mut kept = Self::default();
        for (name, value) in headers {
            if name == USER_AGENT {
                kept.user_agent.get_or_insert(value);
            } else if name == HOST {
                kept.host.get_or_insert(value);
            } else if name == TRACEPARENT {
                kept.trace_parent.get_or_insert(value);
                kept.trace_parents += 1;
            }
            if request_id_header == Some(name) {
                kept.request_id.get_or_insert(value);
            }
        }
        kept
    }
}

#[inline]
fn source_ip(extensions: &Extensions, headers: &HeaderMap, trusted: &[IpNet]) -> Option<IpAddr> {
    let peer = connection_addr(extensions)?;
    if !trusted.iter().any(|net| net.contains(&peer)) {
        return Some(peer);
    }
    Some(forwarded_client(peer, headers, trusted))
}

/// The client behind `peer`, a trusted proxy, as its forwarding chain tells. Out of line: the
/// check above runs on every request and is inlined into the gateway's call; this walk only
/// behind trusted proxies.
#[inline(never)]
fn forwarded_client(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    // Walk the forwarding chain from the nearest hop outwards; the first address not added
    // by one of our own proxies is the client as far as we can tell. Anything unreadable
    // (a header that is not text, an entry that is not a bare address, such as `ip:port`)
    // ends the walk: nothing older than it can be trusted.
    let mut client = peer;
    // The header's lines from the last one, without collecting them first.
    for line in headers.get_all("x-forwarded-for").iter().rev() {
        let Ok(line) = line.to_str() else {
            return client;
        };
        for hop in line.rsplit(',').map(str::trim) {
            match hop.parse::<IpAddr>() {
                Ok(ip) if is_trusted(&ip) => client = ip,
                Ok(ip) => return ip,
                Err(_) => return client,
            }
        }
    }
    client
}

#[derive(Debug, Clone)]
pub(crate) struct ContextSettings {
    pub(crate) request_id_header: HeaderName,
    pub(crate) trust_inbound_request_id: bool,
    pub(crate) send_request_id: bool,
    pub(crate) trusted_proxies: Vec<IpNet>,
    /// Given to a request that arrives with no extensions (as hyper's HTTP/1 requests do).
    roomy_extensions: Extensions,
}

impl Default for ContextSettings {
    fn default() -> Self {
        Self {
            request_id_header: HeaderName::from_static("x-request-id"),
            trust_inbound_request_id: false,
            send_request_id: true,
            trusted_proxies: Vec::new(),
            roomy_extensions: roomy_extensions(),
        }
    }
}

/// An empty extension map with room for seven entries. The context, axum's `OriginalUri`,
/// `MatchedPath` and path parameters make four, one more than a map grown from nothing holds
/// before it must grow again; a clone of this map keeps its room (and costs one allocation
/// less than growing).
fn roomy_extensions() -> Extensions {
    #[derive(Clone)]
    struct Slot<const N: usize>;
    let mut extensions = Extensions::new();
    extensions.insert(Slot::<0>);
    extensions.insert(Slot::<1>);
    extensions.insert(Slot::<2>);
    extensions.insert(Slot::<3>);
    extensions.clear();
    extensions
}

impl ContextSettings {
    fn trusted_request_id_header(&self) -> Option<&HeaderName> {
        self.trust_inbound_request_id
            .then_some(&self.request_id_header)
    }

    /// Creates the request's context, with what the gateway `decided` before (taken out of
    /// it), and inserts it in the extensions.
    #[inline]
    pub(crate) fn begin<B>(
        &self,
        request: &mut Request<B>,
        decided: &mut Decided,
    ) -> RequestContext {
        let context = RequestContext::create(request, self, decided);
        if request.extensions().is_empty() {
            *request.extensions_mut() = self.roomy_extensions.clone();
        }
        request.extensions_mut().insert(context.clone());
        context
    }

    /// The work the response future of the request with `context` does at the end.
    #[inline]
    pub(crate) fn finish(&self, context: &RequestContext) -> Finish {
        Finish::new(
            context.clone(),
            self.send_request_id.then(|| self.request_id_header.clone()),
        )
    }
}

/// Configures how the request context is created; shared by [`RequestContextLayerBuilder`]
/// and [`GatewayBuilder`](crate::GatewayBuilder).
#[derive(Debug, Clone, Default)]
pub(crate) struct ContextOptions {
    pub(crate) request_id_header: Option<String>,
    pub(crate) trust_inbound_request_id: bool,
    pub(crate) send_request_id: Option<bool>,
    pub(crate) trusted_proxies: Vec<String>,
}

impl ContextOptions {
    pub(crate) fn build(self) -> Result<ContextSettings, ConfigError> {
        let mut settings = ContextSettings::default();
        if let Some(name) = self.request_id_header {
            settings.request_id_header = HeaderName::try_from(name.as_str()).map_err(|_| {
                ConfigError::new(
                    "request_id.header",
                    format!("`{name}` is not a valid header name"),
                )
            })?;
        }
        settings.trust_inbound_request_id = self.trust_inbound_request_id;
        settings.send_request_id = self.send_request_id.unwrap_or(true);
        for proxy in self.trusted_proxies {
            let net = proxy
                .parse::<IpNet>()
                .or_else(|_| proxy.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    ConfigError::new(
                        format!("trusted_proxies[{proxy}]"),
                        "expected an IP address or a CIDR block such as 10.0.0.0/8",
                    )
                })?;
            settings.trusted_proxies.push(net);
        }
        Ok(settings)
    }
}

/// Builds a [`RequestContextLayer`].
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct RequestContextLayerBuilder {
    options: ContextOptions,
}

impl RequestContextLayerBuilder {
    /// The header that carries the request id in responses (and, when trusted, requests).
    /// Default `x-request-id`.
    pub fn request_id_header(mut self, name: impl Into<String>) -> Self {
        self.options.request_id_header = Some(name.into());
        self
    }

    /// Use the request id the client (or a proxy in front) sent, when it is 1–128 visible
    /// ASCII characters. Off by default: a client could otherwise choose ids that collide
    /// with other requests' in your logs.
    pub fn trust_inbound_request_id(mut self, trust: bool) -> Self {
        self.options.trust_inbound_request_id = trust;
        self
    }

    /// Whether responses carry the request id header. Default on.
    pub fn send_request_id(mut self, send: bool) -> Self {
        self.options.send_request_id = Some(send);
        self
    }

    /// Proxies (addresses or CIDR blocks) whose `X-Forwarded-For` is believed.
    pub fn trusted_proxies<I, P>(mut self, proxies: I) -> Self
    where
        I: IntoIterator<Item = P>,
        P: Into<String>,
    {
        self.options
            .trusted_proxies
            .extend(proxies.into_iter().map(Into::into));
        self
    }

    /// Checks the header name and the proxy addresses.
    pub fn build(self) -> Result<RequestContextLayer, ConfigError> {
        Ok(RequestContextLayer {
            settings: Arc::new(self.options.build()?),
        })
    }
}

/// Creates each request's [`RequestContext`] and returns the request id in a response header.
pub struct RequestContextLayer {
    settings: Arc<ContextSettings>,
}

impl RequestContextLayer {
    /// Starts a context layer.
    pub fn builder() -> RequestContextLayerBuilder {
        RequestContextLayerBuilder::default()
    }
}

impl Clone for RequestContextLayer {
    fn clone(&self) -> Self {
        Self {
            settings: Arc::clone(&self.settings),
        }
    }
}

impl fmt::Debug for RequestContextLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestContextLayer")
            .field("settings", &self.settings)
            .finish()
    }
}

impl<S> Layer<S> for RequestContextLayer {
    type Service = RequestContextService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestContextService {
            inner,
            settings: Arc::clone(&self.settings),
        }
    }
}

/// The service [`RequestContextLayer`] produces.
pub struct RequestContextService<S> {
    inner: S,
    settings: Arc<ContextSettings>,
}

impl<S: Clone> Clone for RequestContextService<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            settings: Arc::clone(&self.settings),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for RequestContextService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestContextService")
            .field("inner", &self.inner)
            .finish()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RequestContextService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let context = self.settings.begin(&mut request, &mut Decided::default());
        let finish = self.settings.finish(&context);
        ResponseFuture::inner(self.inner.call(request), Some(finish))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_uuid_v4_and_distinct() {
        // Across several batches, so that a refill shows too.
        let ids: Vec<RequestId> = (0..3 * IDS_PER_BATCH + 1)
            .map(|_| RequestId::generate())
            .collect();
        let distinct: std::collections::HashSet<&str> = ids.iter().map(RequestId::as_str).collect();
        assert_eq!(distinct.len(), ids.len());
        for id in &ids {
            let text = id.as_str();
            assert_eq!(text.len(), 36);
            let groups: Vec<_> = text.split('-').map(str::len).collect();
            assert_eq!(groups, [8, 4, 4, 4, 12]);
            assert_eq!(&text[14..15], "4");
            assert!(matches!(&text[19..20], "8" | "9" | "a" | "b"));
            assert!(
                text.bytes()
                    .all(|b| b == b'-' || b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            );
            assert_eq!(id.header_value().as_bytes(), text.as_bytes());
        }
    }

    #[test]
    fn ids_are_the_hex_digits_of_122_random_bits() {
        for nibble in 0..16u64 {
            for place in 0..8 {
                let mut expected = *b"00000000";
                expected[place] = b"0123456789abcdef"[nibble as usize];
                assert_eq!(hex_digits(nibble << (8 * place)), expected);
            }
        }
        // Each bit shows in the id, and in its own way, except the six that the version digit
        // and two of the variant's bits replace: 122 random bits, as a v4 UUID has.
        let zero = format_uuid_v4(0, 0);
        let mut seen = std::collections::HashSet::new();
        for bit in 0..128 {
            let one = 1u128 << bit;
            let id = format_uuid_v4((one >> 64) as u64, one as u64);
            let replaced = matches!(bit, 2 | 3 | 100..=103);
            assert_eq!(id == zero, replaced, "bit {bit}");
            if !replaced {
                assert!(seen.insert(id), "bit {bit} looks like another");
            }
        }
        assert_eq!(seen.len(), 122);
    }

    #[test]
    fn a_decided_stage_is_kept_and_a_late_one_fills_an_empty_context() {
        let stage = |name: &str| Stage::builder(name).build().unwrap();
        let settings = ContextSettings::default();
        let mut decided = Decided {
            stage: Some(stage("prod")),
            ..Decided::default()
        };
        let context = settings.begin(&mut Request::new(()), &mut decided);
        context.set_stage(stage("beta"));
        assert_eq!(context.stage().map(Stage::name), Some("prod"));

        let context = settings.begin(&mut Request::new(()), &mut Decided::default());
        assert!(context.stage().is_none());
        context.set_stage(stage("beta"));
        context.set_stage(stage("prod"));
        assert_eq!(context.stage().map(Stage::name), Some("beta"));
    }

    #[test]
    fn the_integration_answer_is_recorded_once() {
        let context = RequestContext::get_or_insert(&mut Request::new(()));
        assert_eq!(context.integration_status(), None);
        assert_eq!(context.integration_latency(), None);
        context.record_integration(Duration::from_millis(7), StatusCode::CREATED);
        context.record_integration(Duration::from_millis(9), StatusCode::BAD_GATEWAY);
        assert_eq!(context.integration_status(), Some(StatusCode::CREATED));
        assert_eq!(
            context.integration_latency(),
            Some(Duration::from_millis(7))
        );
    }

    #[test]
    fn the_request_time_is_when_the_request_arrived() {
        let before = SystemTime::now();
        let context = RequestContext::get_or_insert(&mut Request::new(()));
        std::thread::sleep(std::time::Duration::from_millis(20));
        let after = SystemTime::now();
        let time = context.request_time();
        // Within the clocks' resolution of the moment the context was made, not of now.
        let slack = std::time::Duration::from_millis(5);
        assert!(time + slack >= before, "{time:?} {before:?}");
        assert!(
            time + std::time::Duration::from_millis(15) <= after,
            "{time:?} {after:?}"
        );
    }

    #[test]
    fn inbound_ids_are_checked() {
        assert!(RequestId::inbound(&HeaderValue::from_static("abc-123")).is_some());
        assert!(RequestId::inbound(&HeaderValue::from_static("")).is_none());
        assert!(RequestId::inbound(&HeaderValue::from_static("has space")).is_none());
        let long = "a".repeat(129);
        assert!(RequestId::inbound(&HeaderValue::from_str(&long).unwrap()).is_none());
        let non_ascii = HeaderValue::from_bytes(&[0xC3, 0xA9]).unwrap();
        assert!(RequestId::inbound(&non_ascii).is_none());
    }

    fn request_from(peer: &str, forwarded: &[&str]) -> Request<()> {
        let mut request = Request::new(());
        request
            .extensions_mut()
            .insert(ClientAddr(format!("{peer}:1234").parse().unwrap()));
        for value in forwarded {
            request
                .headers_mut()
                .append("x-forwarded-for", HeaderValue::from_str(value).unwrap());
        }
        request
    }

    fn source_of(request: &Request<()>, trusted: &[&str]) -> Option<IpAddr> {
        let nets: Vec<IpNet> = trusted.iter().map(|t| t.parse().unwrap()).collect();
        source_ip(request.extensions(), request.headers(), &nets)
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let untrusted = request_from("203.0.113.9", &["1.2.3.4"]);
        assert_eq!(
            source_of(&untrusted, &[]),
            Some("203.0.113.9".parse().unwrap())
        );
        assert_eq!(
            source_of(&untrusted, &["10.0.0.0/8"]),
            Some("203.0.113.9".parse().unwrap())
        );

        let via_proxy = request_from("10.0.0.5", &["6.6.6.6, 1.2.3.4", "10.0.0.7"]);
        assert_eq!(
            source_of(&via_proxy, &["10.0.0.0/8"]),
            Some("1.2.3.4".parse().unwrap()),
            "the right-most untrusted hop, not the spoofable left-most one"
        );
        let two_lines = request_from("10.0.0.5", &["1.2.3.4", "10.0.0.7, 5.6.7.8"]);
        assert_eq!(
            source_of(&two_lines, &["10.0.0.0/8"]),
            Some("5.6.7.8".parse().unwrap()),
            "the last header line holds the nearest hops"
        );

        let garbage = request_from("10.0.0.5", &["1.2.3.4, not-an-ip"]);
        assert_eq!(
            source_of(&garbage, &["10.0.0.0/8"]),
            Some("10.0.0.5".parse().unwrap())
        );

        let mut binary = request_from("10.0.0.5", &["6.6.6.6"]);
        binary.headers_mut().append(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"1.2.3.4 \xff").unwrap(),
        );
        assert_eq!(
            source_of(&binary, &["10.0.0.0/8"]),
            Some("10.0.0.5".parse().unwrap()),
            "an unreadable line stops the walk instead of being skipped"
        );
        let with_port = request_from("10.0.0.5", &["1.2.3.4:5678"]);
        assert_eq!(
            source_of(&with_port, &["10.0.0.0/8"]),
            Some("10.0.0.5".parse().unwrap())
        );

        let all_trusted = request_from("10.0.0.5", &["10.1.1.1"]);
        assert_eq!(
            source_of(&all_trusted, &["10.0.0.0/8"]),
            Some("10.1.1.1".parse().unwrap())
        );

        assert_eq!(source_of(&Request::new(()), &[]), None);
    }

    #[test]
    fn options_are_checked() {
        let bad_header = ContextOptions {
            request_id_header: Some("bad header".into()),
            ..Default::default()
        }
        .build()
        .unwrap_err();
        assert_eq!(bad_header.field(), "request_id.header");
        let bad_proxy = ContextOptions {
            trusted_proxies: vec!["10.0.0.0/33".into()],
            ..Default::default()
        }
        .build()
        .unwrap_err();
        assert_eq!(bad_proxy.field(), "trusted_proxies[10.0.0.0/33]");
        let single = ContextOptions {
            trusted_proxies: vec!["192.0.2.1".into()],
            ..Default::default()
        }
        .build()
        .unwrap();
        assert_eq!(
            single.trusted_proxies,
            vec!["192.0.2.1/32".parse::<IpNet>().unwrap()]
        );
    }
}
