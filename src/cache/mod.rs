//! The response cache: responses kept per stage for a TTL, keyed by exactly what the route
//! declares, and never served to another caller.
//!
//! A stage gets a cache with [`StageBuilder::cache`](crate::stage::StageBuilder::cache)
//! ([`CacheSettings`]: TTL 300 s by default, at most 3600; 64 MiB of entries; responses up to
//! 1 MiB). Routes then cache their `GET` responses, and answer `HEAD` from the `GET` entry. A
//! route overrides the stage with [`RouteCacheSettings`]: off, another TTL, the parameters in
//! its key, another method opted in.
//!
//! # The key
//!
//! The key holds the method, the route's resource template and its path parameters (decoded,
//! as the route match read them: `/pets/1.css` and `/pets/1` are two keys), then exactly the
//! declared query-string parameters and headers ([`RouteCacheSettings::key_parameter`]). On a
//! route with an authorizer or that requires an API key it also holds the caller: the
//! principal, else the API key id; a caller with neither is not cached. A route shares its
//! entries between callers only with [`RouteCacheSettings::shared_between_callers`].
//!
//! So that nothing outside the key can shape a stored response, the request that fills an
//! entry reaches the service with only what the key holds: its path, the declared
//! query-string parameters and the declared headers (plus the body's own headers on a method
//! with a body). An `X-Forwarded-Host`, `X-Original-URL`, `X-HTTP-Method-Override`,
//! `Accept-Encoding`, cookie or `Authorization` header the route does not declare never
//! reaches a service whose response is stored, so it cannot poison the entry (and `Vary` on
//! an undeclared header needs nothing more). Declare what the response depends on. A `GET`
//! with a body is never used to fill an entry.
//!
//! # What is stored
//!
//! A response is stored when its status is in [`CacheSettings::cacheable_statuses`] (2xx by
//! default), it has no `Set-Cookie` ([`CacheSettings::store_set_cookie`]), no `Vary: *`, is not
//! a gRPC response, and its body, read to the end, holds at most
//! [`CacheSettings::max_entry_bytes`]. A response declared bigger streams through untouched;
//! one of unknown length is read up to the limit and, past it, handed on without more being
//! held. A body that fails while it is read is stored nowhere and answered with
//! `INTEGRATION_FAILURE`.
//!
//! By default the backend's `Cache-Control` is honoured ([`BackendCacheControl::Honour`]):
//! `no-store`, `private` and `no-cache` responses are not stored, and `s-maxage` or `max-age`
//! shortens the TTL. [`BackendCacheControl::Ignore`] is API Gateway's behaviour (only the
//! configured TTL counts).
//!
//! # Refreshing and flushing
//!
//! A client's `Cache-Control: max-age=0` (or `no-cache`) asks for a fresh response, which
//! then replaces the entry. As in API Gateway, that takes authorisation by default: the
//! caller's token (or custom authorizer context) must hold
//! [`CacheSettings::refresh_scope`], and a refresh without it gets
//! [`UnauthorizedRefresh::SucceedWithResponseHeader`] (served as if it had not asked, with a
//! `Warning` header) unless another strategy is set. [`ResponseCaches`]
//! ([`Gateway::response_caches`](crate::Gateway::response_caches)) flushes a stage's cache or
//! one entry.
//!
//! Concurrent misses on one key make one call to the service; the others wait for it and
//! share its response (or, if it was not stored, call the service themselves).
//!
//! Each response says `x-cache: hit` or `x-cache: miss` (switch it off with
//! [`CacheSettings::cache_status_header`]), a hit carries `Age`, and the
//! [`RequestContext`](crate::RequestContext) records the [`CacheStatus`].
//!
//! # Entries on Redis
//!
//! With the feature `redis`, a stage's entries can live on the gateway's Redis
//! ([`CacheStore::Redis`], `"store": "redis"` in a configuration, and
//! [`GatewayBuilder::redis`](crate::GatewayBuilder::redis)), so that every instance serves
//! what any of them stored. Everything above holds; what differs:
//!
//! - An entry is one string, written with `SET PX` for its TTL under
//!   `<prefix>{c:<stage>}:e:<key>` (a canary deployment with a cache of its own uses
//!   `{c:<stage>~canary}`). A lookup is one `GET`, a store one script call. Freshness is
//!   checked on both the server's expiry and the instance's clock.
//! - [`CacheSettings::max_entry_bytes`] applies as in memory. [`CacheSettings::capacity_bytes`]
//!   bounds the stage's entries on Redis, counted as in memory; a store that would pass it
//!   evicts the entries closest to expiry (in memory, moka evicts the least likely to be
//!   used). The stage's entries share one hash tag, so on a Cluster they live on one slot.
//! - Concurrent misses on one key make one call to the service per instance: the requests
//!   waiting for it are answered once the entry is on Redis.
//! - When Redis fails, times out or is in the backend's back-off, a lookup is a miss and a
//!   store is skipped (and logged): the service answers. A failing cache call does not start
//!   the back-off, so it does not send the throttles and quotas to the outage policy.
//! - An entry is written before its response is sent, so the next request to any instance
//!   finds it.
//! - Entries outlive a redeployment of the stage (each instance deploys on its own); flush
//!   the stage when a deployment changes what its routes answer. Flushing a stage also
//!   flushes what its canary deployments stored, running or ended.
//! - [`ResponseCaches`] flushes and counts entries on Redis with its `*_async` methods; its
//!   plain `flush_stage` and `flush_entry` start the same work on the current Tokio runtime,
//!   and its plain counts are `None`.
//!
//! # Example
//!
//! ```
//! use http::Method;
//! use tower_gateway::cache::{CacheSettings, RouteCacheSettings};
//! use tower_gateway::validate::RequestParameter;
//! use tower_gateway::{GatewayBuilder, Route, Stage};
//!
//! let gateway = GatewayBuilder::new()
//!     .stage(
//!         Stage::builder("prod")
//!             .cache(CacheSettings::new().ttl_seconds(300))
//!             .build()
//!             .unwrap(),
//!     )
//!     .route(
//!         Route::new(Method::GET, "/pets/{petId}").cache(
//!             RouteCacheSettings::new()
//!                 .ttl_seconds(60)
//!                 .key_parameter(RequestParameter::query("fields")),
//!         ),
//!     )
//!     .build()
//!     .expect("valid gateway");
//! let caches = gateway.response_caches().expect("the stage has a cache");
//! caches.flush_stage("prod");
//! ```
//!
//! Used alone, [`ResponseCacheLayer`] caches in front of any service with one set of
//! settings.

mod key;
mod layer;
#[cfg(feature = "redis")]
mod shared;
mod store;

use std::fmt;
use std::sync::Arc;

use http::Request;
use serde::{Deserialize, Serialize};

pub use layer::{ResponseCache, ResponseCacheLayer, ResponseCacheLayerBuilder, ResponseFuture};

pub(crate) use key::RoutePolicy;
pub(crate) use store::{CacheHome, CacheState, StageCache};

use crate::error::ConfigError;
use crate::validate::RequestParameter;

/// The default TTL, in seconds (API Gateway's).
pub const DEFAULT_TTL_SECONDS: u32 = 300;
/// The longest TTL, in seconds (API Gateway's).
pub const MAX_TTL_SECONDS: u32 = 3600;
/// The default bound on a stage's cached bytes.
pub const DEFAULT_CAPACITY_BYTES: u64 = 64 * 1024 * 1024;
/// The default largest cacheable response body, in bytes (API Gateway's 1 MiB).
pub const DEFAULT_MAX_ENTRY_BYTES: u64 = 1024 * 1024;

/// Whether the backend's `Cache-Control` counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendCacheControl {
    /// `no-store`, `private` and `no-cache` responses are not stored; `s-maxage` (else
    /// `max-age`) shortens the TTL. The default.
    #[default]
    Honour,
    /// Only the configured TTL counts, as in API Gateway: responses marked `private` or
    /// `no-store` are stored too.
    Ignore,
}

/// Where a stage's cache keeps its entries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum CacheStore {
    /// In this instance's memory. The default.
    #[default]
    Memory,
    /// On the gateway's Redis (needs the feature `redis` and
    /// [`GatewayBuilder::redis`](crate::GatewayBuilder::redis)), shared by every instance:
    /// see [Entries on Redis](self#entries-on-redis).
    Redis,
}

/// What a client that asks for a refresh (`Cache-Control: max-age=0`) without authorisation
/// gets, when refreshing [requires it](CacheSettings::require_authorization) (API Gateway's
/// `unauthorizedCacheControlHeaderStrategy`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum UnauthorizedRefresh {
    /// 403 `ACCESS_DENIED`.
    #[serde(rename = "FAIL_WITH_403")]
    FailWith403,
    /// Served as if it had not asked, with a `Warning` header saying the refresh was
    /// ignored. The default, as in API Gateway.
    #[default]
    #[serde(rename = "SUCCEED_WITH_RESPONSE_HEADER")]
    SucceedWithResponseHeader,
    /// Served as if it had not asked.
    #[serde(rename = "SUCCEED_WITHOUT_RESPONSE_HEADER")]
    SucceedWithoutResponseHeader,
}

/// Whether a response came from the cache (`$context` has it for the `CacheHitCount` and
/// `CacheMissCount` metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CacheStatus {
    /// Answered from the cache, without calling the service.
    Hit,
    /// The cache was consulted (or refreshed) and the service answered.
    Miss,
}

impl CacheStatus {
    /// `hit` or `miss`, as in the `x-cache` header.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Miss => "miss",
        }
    }
}

/// A stage's response cache (see the [module docs](self)).
///
/// In a [`GatewayConfig`](crate::GatewayConfig), `cache` on a stage, every field optional:
/// `{"ttl_seconds": 60, "capacity_bytes": 16777216, "refresh_scope": "cache/refresh"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
#[must_use]
pub struct CacheSettings {
    /// Whether the stage's routes cache by default (their `GET` responses); when off, only
    /// routes that [enable](RouteCacheSettings::enabled) it cache. Default on.
    pub enabled: bool,
    /// How long entries live, in seconds, 0–3600; 0 turns caching off. Default 300.
    pub ttl_seconds: u32,
    /// The most bytes the stage's entries may hold (bodies, headers and keys). Default 64 MiB.
    pub capacity_bytes: u64,
    /// The largest response body stored, in bytes. Default 1 MiB.
    pub max_entry_bytes: u64,
    /// The statuses that are stored. Default every 2xx.
    pub cacheable_statuses: Vec<u16>,
    /// Whether the backend's `Cache-Control` counts. Default [`BackendCacheControl::Honour`].
    pub backend_cache_control: BackendCacheControl,
    /// Whether responses that set cookies are stored (and so served to everyone with the same
    /// key). Default off.
    pub store_set_cookie: bool,
    /// Whether a client's refresh needs [`refresh_scope`](Self::refresh_scope). Default on.
    pub require_authorization: bool,
    /// What an unauthorised refresh gets. Default
    /// [`UnauthorizedRefresh::SucceedWithResponseHeader`].
    pub unauthorized_refresh: UnauthorizedRefresh,
    /// The scope (in a token's `scope` or `scp` claim, or a custom authorizer's `scope`
    /// context value) that lets a caller refresh entries. Without one, no caller may.
    pub refresh_scope: Option<String>,
    /// Whether responses carry `x-cache: hit|miss`. Default on.
    pub cache_status_header: bool,
    /// Where the entries live. Default [`CacheStore::Memory`].
    pub store: CacheStore,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            ttl_seconds: DEFAULT_TTL_SECONDS,
            capacity_bytes: DEFAULT_CAPACITY_BYTES,
            max_entry_bytes: DEFAULT_MAX_ENTRY_BYTES,
            cacheable_statuses: (200..300).collect(),
            backend_cache_control: BackendCacheControl::default(),
            store_set_cookie: false,
            require_authorization: true,
            unauthorized_refresh: UnauthorizedRefresh::default(),
            refresh_scope: None,
            cache_status_header: true,
            store: CacheStore::Memory,
        }
    }
}

impl CacheSettings {
    /// The defaults: every `GET` cached for 300 s, 64 MiB, responses up to 1 MiB.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether routes cache by default.
    pub fn enabled(mut self, enabled: bool) -> Self {
        self.enabled = enabled;
        self
    }

    /// How long entries live, in seconds (0–3600; 0 turns caching off).
    pub fn ttl_seconds(mut self, seconds: u32) -> Self {
        self.ttl_seconds = seconds;
        self
    }

    /// The most bytes the stage's entries may hold.
    pub fn capacity_bytes(mut self, bytes: u64) -> Self {
        self.capacity_bytes = bytes;
        self
    }

    /// The largest response body stored, in bytes.
    pub fn max_entry_bytes(mut self, bytes: u64) -> Self {
        self.max_entry_bytes = bytes;
        self
    }

    /// The statuses that are stored, instead of every 2xx.
    pub fn cacheable_statuses(mut self, statuses: impl IntoIterator<Item = u16>) -> Self {
        self.cacheable_statuses = statuses.into_iter().collect();
        self
    }

    /// Whether the backend's `Cache-Control` counts.
    pub fn backend_cache_control(mut self, backend: BackendCacheControl) -> Self {
        self.backend_cache_control = backend;
        self
    }

    /// Whether responses that set cookies are stored.
    pub fn store_set_cookie(mut self, store: bool) -> Self {
        self.store_set_cookie = store;
        self
    }

    /// Whether a client's refresh needs the [refresh scope](Self::refresh_scope).
    pub fn require_authorization(mut self, require: bool) -> Self {
        self.require_authorization = require;
        self
    }

    /// What an unauthorised refresh gets.
    pub fn unauthorized_refresh(mut self, strategy: UnauthorizedRefresh) -> Self {
        self.unauthorized_refresh = strategy;
        self
    }

    /// The scope that lets a caller refresh entries.
    pub fn refresh_scope(mut self, scope: impl Into<String>) -> Self {
        self.refresh_scope = Some(scope.into());
        self
    }

    /// Whether responses carry `x-cache: hit|miss`.
    pub fn cache_status_header(mut self, send: bool) -> Self {
        self.cache_status_header = send;
        self
    }

    /// Where the entries live: in memory, or on the gateway's Redis.
    pub fn store(mut self, store: CacheStore) -> Self {
        self.store = store;
        self
    }

    /// Checks the settings; `field` names them in errors (`stages[prod].cache`).
    pub(crate) fn validate(&self, field: &str) -> Result<(), ConfigError> {
        if self.ttl_seconds > MAX_TTL_SECONDS {
            return Err(ConfigError::new(
                format!("{field}.ttl_seconds"),
                format!("must be 0–{MAX_TTL_SECONDS} seconds"),
            ));
        }
        if self.max_entry_bytes == 0 {
            return Err(ConfigError::new(
                format!("{field}.max_entry_bytes"),
                "must be at least one byte",
            ));
        }
        if self.capacity_bytes < self.max_entry_bytes {
            return Err(ConfigError::new(
                format!("{field}.capacity_bytes"),
                "must hold at least one entry of max_entry_bytes",
            ));
        }
        if let Some(status) = self
            .cacheable_statuses
            .iter()
            .find(|status| !(100..=599).contains(*status))
        {
            return Err(ConfigError::new(
                format!("{field}.cacheable_statuses"),
                format!("{status} is not an HTTP status"),
            ));
        }
        if self.refresh_scope.as_deref() == Some("") {
            return Err(ConfigError::new(
                format!("{field}.refresh_scope"),
                "must not be empty",
            ));
        }
        Ok(())
    }
}

/// A route's response-cache settings, over its stage's [`CacheSettings`].
///
/// In a [`GatewayConfig`](crate::GatewayConfig), `cache` on a route:
/// `{"ttl_seconds": 60, "key_parameters": ["method.request.querystring.fields"]}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
#[must_use]
pub struct RouteCacheSettings {
    /// Whether the route caches: `None` follows the stage (its `GET` responses when the
    /// stage's cache is enabled); `Some(true)` also caches a route of another method (its
    /// body is not part of the key); `Some(false)` turns it off.
    pub enabled: Option<bool>,
    /// The TTL, in seconds, instead of the stage's (0–3600; 0 turns caching off).
    pub ttl_seconds: Option<u32>,
    /// The query-string parameters and headers in the key (API Gateway's
    /// `cacheKeyParameters`). Path parameters are always in it; declaring them is allowed.
    #[serde(serialize_with = "serialize_parameters")]
    pub key_parameters: Vec<RequestParameter>,
    /// Whether callers share entries on a route with an authorizer or an API key (off: each
    /// caller has entries of their own).
    pub shared_between_callers: bool,
}

fn serialize_parameters<S: serde::Serializer>(
    parameters: &[RequestParameter],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(parameters.iter().map(ToString::to_string))
}

impl RouteCacheSettings {
    /// Follows the stage.
    pub fn new() -> Self {
        Self::default()
    }

    /// Turns caching on (for any method) or off for the route.
    pub fn enabled(mut self, enabled: bool) -> Self {
        self.enabled = Some(enabled);
        self
    }

    /// The route's TTL, in seconds.
    pub fn ttl_seconds(mut self, seconds: u32) -> Self {
        self.ttl_seconds = Some(seconds);
        self
    }

    /// Adds a query-string parameter or header to the key.
    pub fn key_parameter(mut self, parameter: RequestParameter) -> Self {
        self.key_parameters.push(parameter);
        self
    }

    /// Lets callers share entries on a route with an authorizer or an API key.
    pub fn shared_between_callers(mut self, shared: bool) -> Self {
        self.shared_between_callers = shared;
        self
    }
}

/// Flushes the gateway's response caches, and says what they hold.
///
/// Get it from [`Gateway::response_caches`](crate::Gateway::response_caches); cheap to clone.
#[derive(Clone)]
pub struct ResponseCaches {
    pub(crate) source: Arc<dyn KeyOf>,
}

/// The caches of the deployments serving now, and which stage cache and key a request would
/// use (the serving deployment's stage selection and route match).
pub(crate) trait KeyOf: Send + Sync {
    /// The cache of the deployment serving the stages.
    fn baseline(&self) -> Option<Arc<CacheState>>;
    /// The caches of the deployments serving now (a canary deployment's too).
    fn states(&self) -> Vec<Arc<CacheState>>;
    fn key_of(
        &self,
        request: Request<()>,
        caller: Option<&str>,
    ) -> Option<(Arc<CacheState>, usize, Vec<u8>)>;
}

impl fmt::Debug for ResponseCaches {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseCaches").finish_non_exhaustive()
    }
}

/// Why a cache could not be flushed or counted: its entries are on Redis, and Redis did not
/// answer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CacheError {
    /// Redis failed, timed out, or failed moments ago (the backend's back-off).
    Backend(String),
}

impl fmt::Display for CacheError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Backend(reason) => write!(f, "the response cache's backend: {reason}"),
        }
    }
}

impl std::error::Error for CacheError {}

impl ResponseCaches {
    /// Removes every entry of `stage`'s cache (the canary deployment's too, when one runs);
    /// false when the stage has none.
    ///
    /// A cache on Redis is flushed by a task spawned on the current Tokio runtime (none
    /// outside one: the flush is logged as failed and false returned); its outcome is only
    /// logged. [`flush_stage_async`](Self::flush_stage_async) waits for it and reports it.
    pub fn flush_stage(&self, stage: &str) -> bool {
        let mut flushed = false;
        for state in self.source.states() {
            if let Some(cache) = state.stage_named(stage) {
                flushed |= cache.flush();
            }
        }
        flushed
    }

    /// Removes every entry of `stage`'s cache, in memory or on Redis; `Ok(false)` when the
    /// stage has none.
    pub async fn flush_stage_async(&self, stage: &str) -> Result<bool, CacheError> {
        let mut flushed = false;
        for state in self.source.states() {
            if let Some(cache) = state.stage_named(stage) {
                cache.flush_async().await?;
                flushed = true;
            }
        }
        Ok(flushed)
    }

    /// Removes the baseline entry that `request` (as a client sends it: the stage's base path
    /// or host included) would be answered from; `caller` is the principal or API key id the
    /// entry belongs to, on a route whose entries are per caller. True when there was one.
    ///
    /// On a cache on Redis, the removal is spawned as for
    /// [`flush_stage`](Self::flush_stage), and true says it was started;
    /// [`flush_entry_async`](Self::flush_entry_async) says whether there was an entry.
    pub fn flush_entry(&self, request: Request<()>, caller: Option<&str>) -> bool {
        self.source
            .key_of(request, caller)
            .is_some_and(|(state, stage, key)| state.stage(stage).remove(&key))
    }

    /// Removes the baseline entry that `request` would be answered from, in memory or on
    /// Redis (see [`flush_entry`](Self::flush_entry)); true when there was one.
    pub async fn flush_entry_async(
        &self,
        request: Request<()>,
        caller: Option<&str>,
    ) -> Result<bool, CacheError> {
        match self.source.key_of(request, caller) {
            Some((state, stage, key)) => state.stage(stage).remove_async(&key).await,
            None => Ok(false),
        }
    }

    /// How many entries `stage`'s cache holds in the deployment serving the stages (`None`
    /// without a cache, or when the cache is on Redis:
    /// [`entry_count_async`](Self::entry_count_async) counts those).
    pub fn entry_count(&self, stage: &str) -> Option<u64> {
        self.source
            .baseline()?
            .stage_named(stage)
            .and_then(|cache| cache.entry_count())
    }

    /// How many bytes `stage`'s entries take, as counted against its capacity (`None` as for
    /// [`entry_count`](Self::entry_count)).
    pub fn weighted_size(&self, stage: &str) -> Option<u64> {
        self.source
            .baseline()?
            .stage_named(stage)
            .and_then(|cache| cache.weighted_size())
    }

    /// How many entries `stage`'s cache holds, in memory or on Redis (`None` without a
    /// cache). On Redis, the count is of every instance's entries.
    pub async fn entry_count_async(&self, stage: &str) -> Result<Option<u64>, CacheError> {
        self.counts(stage)
            .await
            .map(|counts| counts.map(|(entries, _)| entries))
    }

    /// How many bytes `stage`'s entries take, in memory or on Redis (`None` without a cache).
    pub async fn weighted_size_async(&self, stage: &str) -> Result<Option<u64>, CacheError> {
        self.counts(stage)
            .await
            .map(|counts| counts.map(|(_, bytes)| bytes))
    }

    async fn counts(&self, stage: &str) -> Result<Option<(u64, u64)>, CacheError> {
        let Some(state) = self.source.baseline() else {
            return Ok(None);
        };
        match state.stage_named(stage) {
            Some(cache) => cache.counts_async().await.map(Some),
            None => Ok(None),
        }
    }
}
