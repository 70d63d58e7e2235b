//! Where entries live: one bounded moka cache per stage, and the misses in flight.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{
    AGE, CACHE_CONTROL, CONNECTION, CONTENT_LENGTH, HeaderName, HeaderValue, SET_COOKIE, TE,
    TRAILER, TRANSFER_ENCODING, UPGRADE, VARY,
};
use http::response::Parts;
use http::{HeaderMap, Response, StatusCode};
use moka::Expiry;
use tokio::sync::oneshot;

use super::key::{RoutePolicy, caller_of};
use super::{BackendCacheControl, CacheError, CacheSettings, CacheStore};
use crate::body::GatewayBody;
use crate::clock::GatewayClock;
use crate::context::RequestContext;
use crate::error::ConfigError;
use crate::response::{GatewayResponses, is_grpc};
use crate::route::RouteTable;
use crate::stage::Stage;

/// A stored response.
pub(crate) struct CachedResponse {
    pub(super) status: StatusCode,
    pub(super) headers: HeaderMap,
    pub(super) body: Bytes,
    /// On the gateway's monotonic clock.
    pub(super) stored_at: Duration,
    pub(super) expires_at: Duration,
    pub(super) ttl: Duration,
    pub(super) weight: u32,
}

impl CachedResponse {
    /// The response for a client: the stored one, with its `Age` when it comes from the cache;
    /// `head_only` for a `HEAD` (the headers, no body).
    pub(crate) fn response<B: GatewayBody>(
        &self,
        head_only: bool,
        age: Option<u64>,
    ) -> Response<B> {
        let body = if head_only {
            Bytes::new()
        } else {
            self.body.clone()
        };
        let mut response = Response::new(B::from_bytes(body));
        *response.status_mut() = self.status;
        let mut headers = self.headers.clone();
        if let Some(age) = age {
            headers.insert(AGE, HeaderValue::from(age));
        }
        *response.headers_mut() = headers;
        response
    }
}

/// Each entry's own TTL, for moka to reclaim its memory; whether an entry is still fresh is
/// decided on the gateway's clock (so that tests can move it).
struct EntryTtl;

impl Expiry<Box<[u8]>, Arc<CachedResponse>> for EntryTtl {
    fn expire_after_create(
        &self,
        _key: &Box<[u8]>,
        value: &Arc<CachedResponse>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(value.ttl)
    }

    fn expire_after_update(
        &self,
        _key: &Box<[u8]>,
        value: &Arc<CachedResponse>,
        _updated_at: Instant,
        _until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

type Waiters = Vec<oneshot::Sender<Option<Arc<CachedResponse>>>>;

/// A lookup on Redis under way: the entry and its age in seconds, or none (missing, expired,
/// unreadable, or Redis unavailable: a miss).
pub(crate) type PendingLookup =
    Pin<Box<dyn Future<Output = Option<(Arc<CachedResponse>, u64)>> + Send>>;

/// A store on Redis under way (its failure is logged: the entry is then only not shared).
pub(crate) type PendingPut = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Where a stage cache's entries are.
enum Entries {
    Memory(moka::sync::Cache<Box<[u8]>, Arc<CachedResponse>>),
    #[cfg(feature = "redis")]
    Redis(super::shared::RedisEntries),
}

/// One stage's cache.
pub(crate) struct StageCache {
    pub(super) settings: CacheSettings,
    statuses: Box<[u16]>,
    entries: Entries,
    /// Keys whose miss is being filled, with the requests waiting for it.
    flights: Mutex<HashMap<Box<[u8]>, Waiters, foldhash::fast::RandomState>>,
    clock: GatewayClock,
}

impl fmt::Debug for StageCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StageCache")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// How a miss goes on.
pub(crate) enum Miss {
    /// Another request stored the entry meanwhile.
    Found(Arc<CachedResponse>),
    /// This request calls the service and fills the entry.
    Lead(Flight),
    /// Another request is filling it: wait for its outcome.
    Wait(oneshot::Receiver<Option<Arc<CachedResponse>>>),
}

impl StageCache {
    /// A cache in memory.
    pub(crate) fn new(settings: CacheSettings, clock: GatewayClock) -> Arc<Self> {
        let entries = moka::sync::Cache::<Box<[u8]>, Arc<CachedResponse>>::builder()
            .max_capacity(settings.capacity_bytes)
            .weigher(|_key, value| value.weight)
            .expire_after(EntryTtl)
            .build();
        Self::with_entries(settings, clock, Entries::Memory(entries))
    }

    /// A cache whose entries are on Redis: `stage`'s, or its canary deployments'.
    #[cfg(feature = "redis")]
    pub(crate) fn on_redis(
        settings: CacheSettings,
        clock: GatewayClock,
        backend: crate::store::RedisBackend,
        stage: &str,
        canary: bool,
    ) -> Arc<Self> {
        let entries = super::shared::RedisEntries::new(backend, stage, canary);
        Self::with_entries(settings, clock, Entries::Redis(entries))
    }

    fn with_entries(settings: CacheSettings, clock: GatewayClock, entries: Entries) -> Arc<Self> {
        let mut statuses: Vec<u16> = settings.cacheable_statuses.clone();
        statuses.sort_unstable();
        statuses.dedup();
        Arc::new(Self {
            settings,
            statuses: statuses.into(),
            entries,
            flights: Mutex::default(),
            clock,
        })
    }

    fn in_memory(&self) -> Option<&moka::sync::Cache<Box<[u8]>, Arc<CachedResponse>>> {
        match &self.entries {
            Entries::Memory(entries) => Some(entries),
            #[cfg(feature = "redis")]
            Entries::Redis(_) => None,
        }
    }

    /// The fresh entry for `key`, from memory (entries on Redis are [fetched](Self::fetch)).
    pub(crate) fn get(&self, key: &[u8]) -> Option<Arc<CachedResponse>> {
        let entries = self.in_memory()?;
        let entry = entries.get(key)?;
        if self.clock.elapsed() < entry.expires_at {
            return Some(entry);
        }
        entries.invalidate(key);
        None
    }

    /// The lookup of `key` on Redis; `None` for a cache in memory (which [`get`](Self::get)
    /// answers at once).
    #[cfg_attr(not(feature = "redis"), expect(unused_variables))]
    pub(crate) fn fetch(&self, key: &[u8]) -> Option<PendingLookup> {
        match &self.entries {
            Entries::Memory(_) => None,
            #[cfg(feature = "redis")]
            Entries::Redis(entries) => Some(entries.fetch(key, &self.clock)),
        }
    }

    /// After a miss: the entry if it arrived meanwhile (unless `refresh`), else lead the fill
    /// or wait for the one under way.
    pub(crate) fn miss(self: &Arc<Self>, key: &[u8], refresh: bool) -> Miss {
        let mut flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(waiters) = flights.get_mut(key) {
            let (sender, receiver) = oneshot::channel();
            waiters.push(sender);
            return Miss::Wait(receiver);
        }
        if !refresh && let Some(entry) = self.get(key) {
            return Miss::Found(entry);
        }
        let key: Box<[u8]> = key.into();
        flights.insert(key.clone(), Vec::new());
        Miss::Lead(Flight {
            cache: Arc::clone(self),
            key,
            completed: false,
        })
    }

    /// How long a response may be stored, from its head: `None` when it must not be.
    pub(crate) fn storable(&self, head: &Parts, ttl: Duration) -> Option<Duration> {
        if self.statuses.binary_search(&head.status.as_u16()).is_err() {
            return None;
        }
        let headers = &head.headers;
        if !self.settings.store_set_cookie && headers.contains_key(SET_COOKIE) {
            return None;
        }
        let varies_on_everything = list_elements(headers, &VARY).any(|field| field == "*");
        if varies_on_everything || is_grpc(headers) || headers.contains_key(TRAILER) {
            return None;
        }
        match self.settings.backend_cache_control {
            BackendCacheControl::Ignore => Some(ttl),
            BackendCacheControl::Honour => backend_ttl(headers, ttl),
        }
    }

    /// The body sizes worth reading: up to the largest entry.
    pub(crate) fn max_entry_bytes(&self) -> u64 {
        self.settings.max_entry_bytes
    }

    /// Stores a response read whole; returns the entry, and the store on Redis to wait for.
    pub(crate) fn store(
        &self,
        key: Box<[u8]>,
        mut head: Parts,
        body: Bytes,
        ttl: Duration,
    ) -> (Arc<CachedResponse>, Option<PendingPut>) {
        for hop_by_hop in [CONNECTION, TE, TRANSFER_ENCODING, UPGRADE, TRAILER] {
            head.headers.remove(hop_by_hop);
        }
        head.headers.remove(HeaderName::from_static("keep-alive"));
        head.headers
            .insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        let header_bytes: usize = head
            .headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 32)
            .sum();
        let weight = key.len() + body.len() + header_bytes + 128;
        let stored_at = self.clock.elapsed();
        let entry = Arc::new(CachedResponse {
            status: head.status,
            headers: head.headers,
            body,
            stored_at,
            expires_at: stored_at + ttl,
            ttl,
            weight: u32::try_from(weight).unwrap_or(u32::MAX),
        });
        match &self.entries {
            Entries::Memory(entries) => {
                entries.insert(key, Arc::clone(&entry));
                (entry, None)
            }
            #[cfg(feature = "redis")]
            Entries::Redis(entries) => {
                let put = entries.put(&key, &entry, &self.settings, &self.clock);
                (entry, Some(put))
            }
        }
    }

    /// Seconds since `entry` was stored.
    pub(crate) fn age(&self, entry: &CachedResponse) -> u64 {
        self.clock
            .elapsed()
            .saturating_sub(entry.stored_at)
            .as_secs()
    }

    /// Removes `key`'s entry; true when there was one (on Redis: when its removal was
    /// started, see [`ResponseCaches::flush_entry`](super::ResponseCaches::flush_entry)).
    pub(crate) fn remove(&self, key: &[u8]) -> bool {
        match &self.entries {
            Entries::Memory(entries) => entries.remove(key).is_some(),
            #[cfg(feature = "redis")]
            Entries::Redis(entries) => entries.spawn_remove(key),
        }
    }

    /// Removes every entry; false when a flush on Redis could not be started.
    pub(crate) fn flush(&self) -> bool {
        match &self.entries {
            Entries::Memory(entries) => {
                entries.invalidate_all();
                true
            }
            #[cfg(feature = "redis")]
            Entries::Redis(entries) => entries.spawn_flush(),
        }
    }

    pub(crate) async fn remove_async(&self, key: &[u8]) -> Result<bool, CacheError> {
        match &self.entries {
            Entries::Memory(entries) => Ok(entries.remove(key).is_some()),
            #[cfg(feature = "redis")]
            Entries::Redis(entries) => entries.remove(key).await,
        }
    }

    pub(crate) async fn flush_async(&self) -> Result<(), CacheError> {
        match &self.entries {
            Entries::Memory(entries) => {
                entries.invalidate_all();
                Ok(())
            }
            #[cfg(feature = "redis")]
            Entries::Redis(entries) => entries.flush().await,
        }
    }

    /// The entries and their bytes, wherever they are.
    pub(crate) async fn counts_async(&self) -> Result<(u64, u64), CacheError> {
        match &self.entries {
            Entries::Memory(entries) => {
                entries.run_pending_tasks();
                Ok((entries.entry_count(), entries.weighted_size()))
            }
            #[cfg(feature = "redis")]
            Entries::Redis(entries) => entries.counts().await,
        }
    }

    /// The entries in memory (`None` on Redis).
    pub(crate) fn entry_count(&self) -> Option<u64> {
        let entries = self.in_memory()?;
        entries.run_pending_tasks();
        Some(entries.entry_count())
    }

    /// The bytes of the entries in memory (`None` on Redis).
    pub(crate) fn weighted_size(&self) -> Option<u64> {
        let entries = self.in_memory()?;
        entries.run_pending_tasks();
        Some(entries.weighted_size())
    }
}

/// The TTL the backend's `Cache-Control` leaves: none for `no-store`, `private`, `no-cache`
/// or an age of 0; else `s-maxage` (else `max-age`) when it is shorter.
fn backend_ttl(headers: &HeaderMap, ttl: Duration) -> Option<Duration> {
    let mut max_age = None;
    let mut shared_max_age = None;
    for (name, argument) in directives(headers) {
        let seconds = || argument.and_then(|argument| argument.parse::<u64>().ok());
        if name.eq_ignore_ascii_case("no-store")
            || name.eq_ignore_ascii_case("private")
            || name.eq_ignore_ascii_case("no-cache")
        {
            return None;
        } else if name.eq_ignore_ascii_case("s-maxage") {
            shared_max_age = Some(seconds().unwrap_or(0));
        } else if name.eq_ignore_ascii_case("max-age") {
            max_age = Some(seconds().unwrap_or(0));
        }
    }
    match shared_max_age.or(max_age) {
        Some(0) => None,
        Some(seconds) => Some(ttl.min(Duration::from_secs(seconds))),
        None => Some(ttl),
    }
}

/// The fill of one key by the request that missed first. Whatever happens to it, the
/// requests waiting for it hear the outcome: the entry, or none (they then call the service
/// themselves), also when the request is dropped half way.
pub(crate) struct Flight {
    cache: Arc<StageCache>,
    key: Box<[u8]>,
    completed: bool,
}

impl Flight {
    pub(crate) fn cache(&self) -> &StageCache {
        &self.cache
    }

    /// Stores the response and hands the entry to the waiting requests; returns it, and the
    /// store on Redis to wait for (which hands it on when it is done).
    pub(crate) fn complete(
        self,
        head: Parts,
        body: Bytes,
        ttl: Duration,
    ) -> (Arc<CachedResponse>, Option<PendingPut>) {
        let (entry, put) = self.cache.store(self.key.clone(), head, body, ttl);
        let Some(put) = put else {
            self.hand_on(Arc::clone(&entry));
            return (entry, None);
        };
        // The waiting requests hear of the entry once it is on Redis, so that a request that
        // missed on Redis meanwhile waits for this fill instead of starting another.
        let stored = Arc::clone(&entry);
        let put = Box::pin(async move {
            put.await;
            self.hand_on(stored);
        });
        (entry, Some(put))
    }

    fn hand_on(mut self, entry: Arc<CachedResponse>) {
        self.finish(&self.key, Some(entry));
        self.completed = true;
    }

    fn finish(&self, key: &[u8], entry: Option<Arc<CachedResponse>>) {
        let waiters = self
            .cache
            .flights
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key)
            .unwrap_or_default();
        for waiter in waiters {
            // A waiter that went away needs nothing.
            let _ = waiter.send(entry.clone());
        }
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        if !self.completed {
            self.finish(&self.key, None);
        }
    }
}

/// Where a gateway deployment's stage caches keep their entries.
pub(crate) struct CacheHome<'a> {
    pub(crate) clock: &'a GatewayClock,
    /// The caches of stages whose canary uses the stage cache.
    pub(crate) lent: &'a [(Box<str>, Arc<StageCache>)],
    #[cfg(feature = "redis")]
    pub(crate) redis: Option<&'a crate::store::RedisBackend>,
    /// Whether the deployment is a canary deployment, whose entries on Redis are its own.
    #[cfg(feature = "redis")]
    pub(crate) canary: bool,
}

impl CacheHome<'_> {
    fn cache_for(
        &self,
        stage: &Stage,
        settings: CacheSettings,
    ) -> Result<Arc<StageCache>, ConfigError> {
        if let Some((_, cache)) = self.lent.iter().find(|(name, _)| **name == *stage.name()) {
            return Ok(Arc::clone(cache));
        }
        match settings.store {
            CacheStore::Memory => Ok(StageCache::new(settings, self.clock.clone())),
            CacheStore::Redis => self.on_redis(stage, settings),
        }
    }

    #[cfg(feature = "redis")]
    fn on_redis(
        &self,
        stage: &Stage,
        settings: CacheSettings,
    ) -> Result<Arc<StageCache>, ConfigError> {
        let Some(backend) = self.redis else {
            return Err(ConfigError::new(
                format!("stages[{}].cache.store", stage.name()),
                "the stage keeps its cache on Redis, and the gateway has no Redis backend \
                 (GatewayBuilder::redis, or `redis` in the configuration)",
            ));
        };
        Ok(StageCache::on_redis(
            settings,
            self.clock.clone(),
            backend.clone(),
            stage.name(),
            self.canary,
        ))
    }

    #[cfg(not(feature = "redis"))]
    fn on_redis(
        &self,
        stage: &Stage,
        _settings: CacheSettings,
    ) -> Result<Arc<StageCache>, ConfigError> {
        Err(ConfigError::new(
            format!("stages[{}].cache.store", stage.name()),
            "a cache on Redis needs the crate's feature `redis`",
        ))
    }
}

/// A stage's name (none: every stage) and its cache.
type NamedCache = (Option<Box<str>>, Arc<StageCache>);

/// Everything the cache step of a gateway (or a standalone layer) needs.
pub(crate) struct CacheState {
    /// Each cached stage, by name; a single unnamed one serves every stage (standalone).
    stages: Box<[NamedCache]>,
    /// The gateway's routes' policies, by route index; empty for the standalone layer.
    routes: Box<[RoutePolicy]>,
    /// The standalone layer's policy, for every request.
    every_request: Option<RoutePolicy>,
    pub(super) responses: GatewayResponses,
}

impl fmt::Debug for CacheState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheState")
            .field("stages", &self.stages.len())
            .finish_non_exhaustive()
    }
}

/// What the cache does with one request.
pub(crate) struct Decision<'a> {
    pub(crate) cache: &'a Arc<StageCache>,
    pub(crate) policy: &'a RoutePolicy,
    pub(crate) key: super::key::Key,
    pub(crate) ttl: Duration,
    pub(crate) head_only: bool,
    pub(crate) refresh: Refresh,
}

/// What becomes of a client's `Cache-Control: max-age=0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refresh {
    /// It did not ask.
    NotAsked,
    /// It may: the entry is replaced.
    Granted,
    /// It may not: served as if it had not asked, with a `Warning` or without.
    Ignored { warn: bool },
    /// It may not: 403.
    Refused,
}

impl CacheState {
    /// The gateway's cache: a cache for each stage that has settings, a policy for each route;
    /// `None` when no stage has a cache (then no route may ask for one).
    pub(crate) fn for_gateway(
        stages: &[Stage],
        routes: &RouteTable,
        responses: &GatewayResponses,
        home: &CacheHome<'_>,
    ) -> Result<Option<Self>, ConfigError> {
        let cached: Box<[_]> = stages
            .iter()
            .filter_map(|stage| {
                let settings = stage.cache()?.clone();
                Some(
                    home.cache_for(stage, settings)
                        .map(|cache| (Some(stage.name().into()), cache)),
                )
            })
            .collect::<Result<_, _>>()?;
        if cached.is_empty() {
            if let Some((key, _)) = routes
                .routes()
                .find(|(_, settings)| settings.cache.is_some())
            {
                return Err(ConfigError::new(
                    format!("routes[{key}].cache"),
                    "no stage has a response cache (StageBuilder::cache, or `cache` on a stage \
                     in the configuration)",
                ));
            }
            return Ok(None);
        }
        let policies = routes
            .routes()
            .map(|(key, settings)| {
                let protected = settings.authorizer.is_some() || settings.api_key_required;
                RoutePolicy::compile(
                    settings.cache.as_ref(),
                    &format!("routes[{key}].cache"),
                    Some(key),
                    Some(protected),
                )
            })
            .collect::<Result<Box<[_]>, _>>()?;
        Ok(Some(Self {
            stages: cached,
            routes: policies,
            every_request: None,
            responses: responses.clone(),
        }))
    }

    /// A standalone layer's cache: one cache and one policy for every request.
    pub(crate) fn standalone(
        cache: Arc<StageCache>,
        policy: RoutePolicy,
        responses: GatewayResponses,
    ) -> Self {
        Self {
            stages: Box::new([(None, cache)]),
            routes: Box::new([]),
            every_request: Some(policy),
            responses,
        }
    }

    pub(crate) fn stage_named(&self, name: &str) -> Option<&Arc<StageCache>> {
        self.stages
            .iter()
            .find(|(stage, _)| stage.as_deref().is_none_or(|stage| stage == name))
            .map(|(_, cache)| cache)
    }

    fn stage_index(&self, context: &RequestContext) -> Option<usize> {
        self.stages.iter().position(|(name, _)| match name {
            None => true,
            Some(name) => context.stage().is_some_and(|stage| stage.name() == &**name),
        })
    }

    pub(crate) fn stage(&self, index: usize) -> &StageCache {
        &self.stages[index].1
    }

    fn policy_for(&self, context: &RequestContext) -> Option<&RoutePolicy> {
        match &self.every_request {
            Some(policy) => Some(policy),
            // In a gateway, requests no route matched are not cached.
            None => self.routes.get(context.route()?.index()),
        }
    }

    /// Whether and how `request` is cached; `None` leaves it alone.
    pub(crate) fn decide<B>(
        &self,
        request: &http::Request<B>,
        context: &RequestContext,
    ) -> Option<Decision<'_>> {
        let stage = self.stage_index(context)?;
        let cache = &self.stages[stage].1;
        let policy = self.policy_for(context)?;
        let settings = &cache.settings;
        let opted_in = policy.enabled == Some(true);
        if !policy.enabled.unwrap_or(settings.enabled) {
            return None;
        }
        let ttl = policy.ttl_seconds.unwrap_or(settings.ttl_seconds);
        if ttl == 0 {
            return None;
        }
        let method = request.method();
        let (key_method, head_only) = if method == http::Method::GET {
            (method, false)
        } else if method == http::Method::HEAD {
            (&http::Method::GET, true)
        } else if opted_in {
            (method, false)
        } else {
            return None;
        };
        let caller = if policy.by_caller {
            caller_of(context)
        } else {
            None
        };
        if policy.requires_caller && caller.is_none() {
            return None;
        }
        let key = policy.key(key_method, request, context, caller);
        let refresh = if !asks_refresh(request.headers()) {
            Refresh::NotAsked
        } else if !settings.require_authorization || may_refresh(settings, context) {
            Refresh::Granted
        } else {
            match settings.unauthorized_refresh {
                super::UnauthorizedRefresh::FailWith403 => Refresh::Refused,
                super::UnauthorizedRefresh::SucceedWithResponseHeader => {
                    Refresh::Ignored { warn: true }
                }
                super::UnauthorizedRefresh::SucceedWithoutResponseHeader => {
                    Refresh::Ignored { warn: false }
                }
            }
        };
        Some(Decision {
            cache,
            policy,
            key,
            ttl: Duration::from_secs(u64::from(ttl)),
            head_only,
            refresh,
        })
    }

    /// The stage and key of a request that went through stage selection and routing (for
    /// flushing one entry), with the caller given.
    pub(crate) fn key_for_flush<B>(
        &self,
        request: &http::Request<B>,
        context: &RequestContext,
        caller: Option<&str>,
    ) -> Option<(usize, Vec<u8>)> {
        let stage = self.stage_index(context)?;
        let policy = self.policy_for(context)?;
        let method = if request.method() == http::Method::HEAD {
            &http::Method::GET
        } else {
            request.method()
        };
        let caller = caller.filter(|_| policy.by_caller);
        let key = policy.key(method, request, context, caller);
        Some((stage, key.as_bytes().to_vec()))
    }
}

/// The elements of a comma-separated list header (`Vary`, `Cache-Control`), trimmed; values
/// that are not text are skipped.
fn list_elements<'h>(headers: &'h HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'h str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
}

/// `Cache-Control` directives: the name, and the argument without its quotes.
fn directives(headers: &HeaderMap) -> impl Iterator<Item = (&str, Option<&str>)> {
    list_elements(headers, &CACHE_CONTROL).map(|directive| match directive.split_once('=') {
        Some((name, argument)) => (name.trim(), Some(argument.trim().trim_matches('"'))),
        None => (directive, None),
    })
}

/// Whether the client asks for a fresh response (`Cache-Control: max-age=0` or `no-cache`).
fn asks_refresh(headers: &HeaderMap) -> bool {
    directives(headers).any(|(name, argument)| {
        name.eq_ignore_ascii_case("no-cache")
            || (name.eq_ignore_ascii_case("max-age") && argument == Some("0"))
    })
}

/// Whether the caller holds the scope that lets it refresh entries.
fn may_refresh(settings: &CacheSettings, context: &RequestContext) -> bool {
    let (Some(scope), Some(identity)) = (settings.refresh_scope.as_deref(), context.identity())
    else {
        return false;
    };
    let custom = identity
        .context()
        .get("scope")
        .and_then(serde_json::Value::as_str)
        .is_some_and(|scopes| scopes.split_whitespace().any(|held| held == scope));
    custom
        || crate::authorizer::jwt::scopes_of(identity.claims())
            .iter()
            .any(|held| &**held == scope)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    #[test]
    fn the_backend_cache_control_shortens_or_forbids_storing() {
        let ttl = Duration::from_secs(300);
        let of = |value: &str| backend_ttl(&headers(&[("cache-control", value)]), ttl);
        assert_eq!(backend_ttl(&HeaderMap::new(), ttl), Some(ttl));
        assert_eq!(of("public, max-age=60"), Some(Duration::from_secs(60)));
        assert_eq!(of("max-age=600"), Some(ttl));
        assert_eq!(of("max-age=60, s-maxage=30"), Some(Duration::from_secs(30)));
        assert_eq!(of("max-age=0"), None);
        assert_eq!(of("max-age=nonsense"), None);
        assert_eq!(of("No-Store"), None);
        assert_eq!(of("private=\"set-cookie\""), None);
        assert_eq!(of("no-cache"), None);
    }

    #[test]
    fn refresh_requests_are_recognised() {
        assert!(asks_refresh(&headers(&[("cache-control", "max-age=0")])));
        assert!(asks_refresh(&headers(&[(
            "cache-control",
            "no-transform, Max-Age = 0"
        )])));
        assert!(asks_refresh(&headers(&[("cache-control", "no-cache")])));
        assert!(!asks_refresh(&headers(&[("cache-control", "max-age=10")])));
        assert!(!asks_refresh(&headers(&[("cache-control", "max-age=00x")])));
        assert!(!asks_refresh(&HeaderMap::new()));
    }
}
