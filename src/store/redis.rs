//! The Redis backend: the connection, the scripts, the timeouts and the outage bookkeeping.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Script, Value};
use tokio::sync::OnceCell;

use super::{Consistency, OutagePolicy};

mod cache;

use crate::error::ConfigError;
use crate::usage_plan::QuotaChange;
pub(crate) use cache::CachePut;

/// Takes up to `want` units, each one token of a GCRA bucket and one request of a quota, on
/// the server's clock (microseconds, which a Lua number holds exactly).
///
/// KEYS: the bucket, the quota's hash (`used`, `adj`) for the period, the key's first period,
/// the key's daily counts. ARGV: want, the interval between tokens in µs (0: no bucket), the
/// burst, the quota's limit (0: no quota), its offset, the period's number, the seconds the
/// quota's hash is kept (to the period's end and a day, on the gateway's clock), the UTC day.
///
/// Returns {granted, 0 | 1 (throttled) | 2 (quota spent), µs to wait, tokens left (-1: no
/// bucket), quota left (-1: no quota; not used by the gateway, for reading by hand)}.
const TAKE: &str = r"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local grant = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local limit = tonumber(ARGV[4])
local offset = tonumber(ARGV[5])
local tat = now
local tokens = -1
if interval > 0 then
  local stored = redis.call('GET', KEYS[1])
  if stored then tat = math.max(tonumber(stored), now) end
  tokens = math.floor((interval * burst - (tat - now)) / interval + 1e-9)
  if tokens < grant then grant = tokens end
  if grant <= 0 then
    return {0, 1, math.ceil(tat - now - interval * (burst - 1)), 0, -1}
  end
end
local left = -1
if limit > 0 then
  if offset > 0 then
    local first = redis.call('SET', KEYS[3], ARGV[6], 'NX', 'GET')
    if (not first) or first == ARGV[6] then limit = limit - offset end
  end
  local counts = redis.call('HMGET', KEYS[2], 'used', 'adj')
  left = limit + tonumber(counts[2] or '0') - tonumber(counts[1] or '0')
  if left < grant then grant = left end
  if grant <= 0 then return {0, 2, 0, math.max(tokens, 0), 0} end
  redis.call('HINCRBY', KEYS[2], 'used', grant)
  redis.call('EXPIRE', KEYS[2], ARGV[7])
  redis.call('HINCRBY', KEYS[4], ARGV[8], grant)
  redis.call('EXPIRE', KEYS[4], 3024000)
  left = left - grant
end
if interval > 0 then
  local next_tat = tat + interval * grant
  redis.call('SET', KEYS[1], string.format('%.0f', math.ceil(next_tat)), 'PX',
    math.ceil((next_tat - now) / 1000) + 1)
  tokens = tokens - grant
end
return {grant, 0, 0, tokens, left}
";

/// Gives `ARGV[1]` unused requests back to a quota (never below nothing used) and to the
/// count of day `ARGV[2]`. KEYS: the quota's hash, the daily counts.
const GIVE_BACK: &str = r"
local used = tonumber(redis.call('HGET', KEYS[1], 'used') or '0')
local back = math.min(tonumber(ARGV[1]), used)
if back > 0 then
  redis.call('HINCRBY', KEYS[1], 'used', -back)
  local day = tonumber(redis.call('HGET', KEYS[2], ARGV[2]) or '0')
  if day > 0 then redis.call('HINCRBY', KEYS[2], ARGV[2], -math.min(back, day)) end
end
return back
";

/// Reads, and optionally changes, a key's quota in a period. KEYS: the quota's hash, the key's
/// first period. ARGV: the limit, the offset, the period's number, the seconds the hash is
/// kept, the change (`read`, `extend`, `set`, `reset`), its number.
///
/// Returns {used, remaining, limit for the period}.
const USAGE: &str = r"
local limit = tonumber(ARGV[1])
if tonumber(ARGV[2]) > 0 then
  local first = redis.call('GET', KEYS[2])
  if (not first) or first == ARGV[3] then limit = limit - tonumber(ARGV[2]) end
end
local counts = redis.call('HMGET', KEYS[1], 'used', 'adj')
local used = tonumber(counts[1] or '0')
local adj = tonumber(counts[2] or '0')
local change = ARGV[5]
local number = tonumber(ARGV[6])
if change ~= 'read' then
  if change == 'extend' then
    adj = adj + number
  elseif change == 'set' then
    adj = number - limit + used
  else
    adj = used
  end
  redis.call('HSET', KEYS[1], 'adj', adj)
  redis.call('EXPIRE', KEYS[1], ARGV[4])
end
return {used, math.max(limit + adj - used, 0), limit}
";

/// What [`take`](RedisBackend::take) asks of Redis.
pub(crate) struct Take<'a> {
    /// The hash tag's content and the names under it: `{<tag>}:t…`, `{<tag>}:q:<period>`.
    pub(crate) tag: &'a str,
    /// The bucket's name after the tag (`t` or `t:<route>`), with the interval between tokens
    /// in µs and the burst; `None` without a bucket.
    pub(crate) bucket: Option<(&'a str, f64, u32)>,
    pub(crate) quota: Option<QuotaTake>,
    pub(crate) want: u32,
}

/// The quota part of a [`Take`].
#[derive(Clone, Copy)]
pub(crate) struct QuotaTake {
    pub(crate) limit: u64,
    pub(crate) offset: u64,
    pub(crate) period: i64,
    pub(crate) period_end: i64,
    pub(crate) day: i64,
    /// The gateway's Unix time.
    pub(crate) now: i64,
}

impl QuotaTake {
    /// How long the period's hash is kept: to the period's end on the gateway's clock (which
    /// need not agree with the server's), and a day more for clocks a little behind.
    fn keep_seconds(self) -> i64 {
        (self.period_end - self.now).max(0) + EXPIRY_MARGIN_SECONDS
    }
}

/// Units Redis granted for a [`Take`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Granted {
    /// At least 1, at most what was asked.
    pub(crate) units: u32,
    /// The bucket's tokens left after them (`None`: no bucket).
    pub(crate) tokens_left: Option<u32>,
}

/// Why Redis granted nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The bucket is empty for this long.
    Throttled(Duration),
    /// The quota is spent.
    QuotaSpent,
}

/// A key's quota as Redis holds it: (used, remaining, limit) in the period.
pub(crate) type QuotaCounts = (u64, u64, u64);

/// Why Redis did not decide.
#[derive(Debug)]
pub(crate) enum Unavailable {
    /// No answer within the timeout.
    Timeout,
    /// An error from the connection or the server.
    Failed(redis::RedisError),
    /// An earlier call failed moments ago; Redis is not asked again until the back-off ends.
    BackingOff,
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Timeout => f.write_str("Redis did not answer in time"),
            Self::Failed(error) => write!(f, "Redis failed: {error}"),
            Self::BackingOff => f.write_str("Redis failed moments ago"),
        }
    }
}

/// Where Redis is.
#[derive(Clone)]
enum Target {
    Single(String),
    Cluster(Vec<String>),
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Single(url) => f.debug_tuple("Single").field(&redacted(url)).finish(),
            Self::Cluster(urls) => f
                .debug_tuple("Cluster")
                .field(&urls.iter().map(|url| redacted(url)).collect::<Vec<_>>())
                .finish(),
        }
    }
}

/// `url` without the user information (`redis://:password@host` → `redis://***@host`), for
/// `Debug` output: a Redis URL may carry a password.
pub(crate) fn redacted(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let host_and_path = &rest[at + 1..];
    match scheme {
        Some(scheme) => format!("{scheme}://***@{host_and_path}"),
        None => format!("***@{host_and_path}"),
    }
}

/// A connection to one Redis or to a Cluster; both reconnect by themselves.
#[derive(Clone)]
enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(connection) => connection.req_packed_command(cmd),
            Self::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(connection) => connection.req_packed_commands(pipeline, offset, count),
            Self::Cluster(connection) => connection.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(connection) => connection.get_db(),
            Self::Cluster(connection) => connection.get_db(),
        }
    }
}

/// Throttles, quotas and usage of every gateway instance on one Redis (or Redis Cluster).
///
/// Build it with [`RedisBackend::builder`] (one server) or [`RedisBackend::cluster`], and
/// hand it to [`GatewayBuilder::redis`](crate::GatewayBuilder::redis); see the
/// [module docs](crate::store) for what lives on Redis and how. Clones share one connection
/// and one count of [decisions made without Redis](Self::decisions_without_redis).
#[derive(Clone)]
pub struct RedisBackend {
    inner: Arc<BackendInner>,
}

struct BackendInner {
    settings: RedisBackendBuilder,
    connection: OnceCell<Connection>,
    /// Nanoseconds after `epoch` until which Redis is not asked (0: ask).
    down_until: AtomicU64,
    epoch: Instant,
    without_redis: AtomicU64,
    take: Script,
    give_back: Script,
    usage: Script,
    cache: cache::CacheScripts,
}

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The settings' `Debug` hides the password a URL may carry.
        f.debug_struct("RedisBackend")
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

impl RedisBackend {
    /// A backend on the Redis at `url` (`redis://[:password@]host:port[/db]`).
    pub fn builder(url: impl Into<String>) -> RedisBackendBuilder {
        RedisBackendBuilder::new(Target::Single(url.into()))
    }

    /// A backend on the Redis Cluster reached through `urls` (any of its nodes).
    pub fn cluster<I, U>(urls: I) -> RedisBackendBuilder
    where
        I: IntoIterator<Item = U>,
        U: Into<String>,
    {
        RedisBackendBuilder::new(Target::Cluster(urls.into_iter().map(Into::into).collect()))
    }

    /// How many throttle and quota decisions were made without Redis (by the outage policy)
    /// since the backend was built; also the metric `gateway_decisions_without_backend_total`.
    pub fn decisions_without_redis(&self) -> u64 {
        self.inner.without_redis.load(Ordering::Relaxed)
    }

    pub(crate) fn consistency(&self) -> Consistency {
        self.inner.settings.consistency
    }

    pub(crate) fn outage(&self) -> OutagePolicy {
        self.inner.settings.outage
    }

    pub(crate) fn count_without_redis(&self) {
        self.inner.without_redis.fetch_add(1, Ordering::Relaxed);
    }

    async fn connect(inner: &BackendInner) -> redis::RedisResult<Connection> {
        let timeout = inner.settings.timeout;
        match &inner.settings.target {
            Target::Single(url) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(timeout);
                let client = redis::Client::open(url.as_str())?;
                Ok(Connection::Single(
                    ConnectionManager::new_with_config(client, config).await?,
                ))
            }
            Target::Cluster(urls) => {
                let client =
                    redis::cluster::ClusterClient::builder(urls.iter().map(String::as_str))
                        .connection_timeout(timeout)
                        .response_timeout(timeout)
                        .build()?;
                Ok(Connection::Cluster(client.get_async_connection().await?))
            }
        }
    }

    /// Runs `call` on the connection (made on first use) under the timeout; a failure starts
    /// the back-off, in which calls fail at once instead of each waiting for the timeout.
    async fn run<T, F, Fut>(&self, call: F) -> Result<T, Unavailable>
    where
        F: FnOnce(Connection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        self.run_with(call, true).await
    }

    /// Runs `call` as [`run`](Self::run) does; a failure starts the back-off only when
    /// `starts_back_off` (the response cache's calls do not: a slow cache must not send the
    /// throttles and quotas to the outage policy).
    async fn run_with<T, F, Fut>(&self, call: F, starts_back_off: bool) -> Result<T, Unavailable>
    where
        F: FnOnce(Connection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let inner = &*self.inner;
        let down_until = inner.down_until.load(Ordering::Relaxed);
        if down_until != 0 && nanos_since(inner.epoch) < down_until {
            return Err(Unavailable::BackingOff);
        }
        let attempt = async {
            let connection = inner
                .connection
                .get_or_try_init(|| Self::connect(inner))
                .await?
                .clone();
            call(connection).await
        };
        let result = match tokio::time::timeout(inner.settings.timeout, attempt).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(Unavailable::Failed(error)),
            Err(_) => Err(Unavailable::Timeout),
        };
        match &result {
            Ok(_) => inner.down_until.store(0, Ordering::Relaxed),
            Err(error) if !starts_back_off => {
                tracing::warn!(target: "tower_gateway::redis", %error, "Redis unavailable to the response cache");
            }
            Err(error) => {
                tracing::warn!(target: "tower_gateway::redis", %error, "Redis unavailable");
                let until = nanos_since(inner.epoch)
                    .saturating_add(duration_nanos(inner.settings.back_off));
                inner.down_until.store(until.max(1), Ordering::Relaxed);
            }
        }
        result
    }

    fn name(&self, tag: &str, rest: &str) -> String {
        format!("{}{{{tag}}}:{rest}", self.inner.settings.prefix)
    }

    /// Takes up to `take.want` units in one script call.
    pub(crate) async fn take(
        &self,
        take: Take<'_>,
    ) -> Result<Result<Granted, Refusal>, Unavailable> {
        let (bucket, interval, burst) = take.bucket.unwrap_or(("t", 0.0, 0));
        let quota = take.quota;
        let mut invocation = self.inner.take.prepare_invoke();
        invocation
            .key(self.name(take.tag, bucket))
            .key(self.name(
                take.tag,
                &format!("q:{}", quota.map_or(0, |quota| quota.period)),
            ))
            .key(self.name(take.tag, "first"))
            .key(self.name(take.tag, "days"))
            .arg(take.want)
            .arg(interval)
            .arg(burst)
            .arg(quota.map_or(0, |quota| quota.limit))
            .arg(quota.map_or(0, |quota| quota.offset))
            .arg(quota.map_or(0, |quota| quota.period))
            .arg(quota.map_or(0, QuotaTake::keep_seconds))
            .arg(quota.map_or(0, |quota| quota.day));
        let reply: Vec<i64> = self
            .run(|mut connection| async move { invocation.invoke_async(&mut connection).await })
            .await?;
        let [granted, code, wait, tokens, _quota_left] = reply[..] else {
            return Err(Unavailable::Failed(redis::RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "the take script answered with an unexpected shape",
            ))));
        };
        Ok(match code {
            1 => Err(Refusal::Throttled(Duration::from_micros(
                u64::try_from(wait).unwrap_or(0),
            ))),
            2 => Err(Refusal::QuotaSpent),
            _ => Ok(Granted {
                units: u32::try_from(granted).unwrap_or(0).max(1),
                tokens_left: u32::try_from(tokens).ok(),
            }),
        })
    }

    /// Gives `count` unused requests back to the quota of `period` (and to `day`'s count).
    pub(crate) async fn give_back(
        &self,
        tag: &str,
        period: i64,
        day: i64,
        count: u32,
    ) -> Result<(), Unavailable> {
        let mut invocation = self.inner.give_back.prepare_invoke();
        invocation
            .key(self.name(tag, &format!("q:{period}")))
            .key(self.name(tag, "days"))
            .arg(count)
            .arg(day);
        self.run(
            |mut connection| async move { invocation.invoke_async::<i64>(&mut connection).await },
        )
        .await
        .map(drop)
    }

    /// Reads or changes a key's quota for the period `quota` is in.
    pub(crate) async fn quota(
        &self,
        tag: &str,
        quota: QuotaTake,
        change: QuotaChange,
    ) -> Result<QuotaCounts, Unavailable> {
        let (verb, number) = match change {
            QuotaChange::Read => ("read", 0),
            QuotaChange::Extend(extra) => ("extend", extra),
            QuotaChange::Set(remaining) => ("set", remaining),
            QuotaChange::Reset => ("reset", 0),
        };
        let mut invocation = self.inner.usage.prepare_invoke();
        invocation
            .key(self.name(tag, &format!("q:{}", quota.period)))
            .key(self.name(tag, "first"))
            .arg(quota.limit)
            .arg(quota.offset)
            .arg(quota.period)
            .arg(quota.keep_seconds())
            .arg(verb)
            .arg(number);
        let reply: Vec<i64> = self
            .run(|mut connection| async move { invocation.invoke_async(&mut connection).await })
            .await?;
        match reply[..] {
            [used, remaining, limit] => Ok((
                u64::try_from(used).unwrap_or(0),
                u64::try_from(remaining).unwrap_or(0),
                u64::try_from(limit).unwrap_or(0),
            )),
            _ => Err(Unavailable::Failed(redis::RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "the usage script answered with an unexpected shape",
            )))),
        }
    }

    /// A key's requests per UTC day (day number, requests), as counted on Redis.
    pub(crate) async fn days(&self, tag: &str) -> Result<Vec<(i64, u64)>, Unavailable> {
        let name = self.name(tag, "days");
        let days: Vec<(i64, i64)> = self
            .run(|mut connection| async move {
                redis::cmd("HGETALL")
                    .arg(name)
                    .query_async(&mut connection)
                    .await
            })
            .await?;
        Ok(days
            .into_iter()
            .filter_map(|(day, requests)| Some((day, u64::try_from(requests).ok()?)))
            .filter(|(_, requests)| *requests > 0)
            .collect())
    }
}

/// A quota's hash outlives its period by a day.
const EXPIRY_MARGIN_SECONDS: i64 = 86_400;

fn nanos_since(epoch: Instant) -> u64 {
    duration_nanos(epoch.elapsed())
}

fn duration_nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// Builds a [`RedisBackend`].
#[derive(Debug, Clone)]
#[must_use]
pub struct RedisBackendBuilder {
    target: Target,
    consistency: Consistency,
    timeout: Duration,
    outage: OutagePolicy,
    back_off: Duration,
    prefix: String,
}

impl RedisBackendBuilder {
    fn new(target: Target) -> Self {
        Self {
            target,
            consistency: Consistency::Exact,
            timeout: Duration::from_millis(50),
            outage: OutagePolicy::FailOpen { instances: 1 },
            back_off: Duration::from_secs(1),
            prefix: "tower-gateway:".to_owned(),
        }
    }

    /// Exact (default: one script call per metered request) or leased.
    pub fn consistency(mut self, consistency: Consistency) -> Self {
        self.consistency = consistency;
        self
    }

    /// How long a request waits for Redis before the outage policy decides (default 50 ms;
    /// 1 ms to 10 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// What happens when Redis does not answer (default fail open, as one instance).
    pub fn outage(mut self, policy: OutagePolicy) -> Self {
        self.outage = policy;
        self
    }

    /// After a failed call, how long requests go straight to the outage policy before Redis
    /// is asked again (default 1 s; at most 60 s). Without it, every request during an
    /// outage would wait for the timeout.
    pub fn back_off(mut self, back_off: Duration) -> Self {
        self.back_off = back_off;
        self
    }

    /// The prefix of every key the gateway writes (default `tower-gateway:`), so that several
    /// gateways (or other data) can share one Redis.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Checks the settings. The connection is made on first use (and remade after a
    /// failure), so building needs no Redis.
    pub fn build(self) -> Result<RedisBackend, ConfigError> {
        let urls: Vec<&String> = match &self.target {
            Target::Single(url) => vec![url],
            Target::Cluster(urls) => urls.iter().collect(),
        };
        if urls.is_empty() {
            return Err(ConfigError::new(
                "redis.url",
                "a cluster needs at least one URL",
            ));
        }
        for url in urls {
            if let Err(error) = redis::Client::open(url.as_str()) {
                return Err(ConfigError::new(
                    "redis.url",
                    format!("not a Redis URL ({error})"),
                ));
            }
        }
        if !(Duration::from_millis(1)..=Duration::from_secs(10)).contains(&self.timeout) {
            return Err(ConfigError::new(
                "redis.timeout",
                "the timeout is from 1 ms to 10 s",
            ));
        }
        if self.back_off > Duration::from_secs(60) {
            return Err(ConfigError::new(
                "redis.back_off",
                "the back-off is at most 60 s",
            ));
        }
        if let OutagePolicy::FailOpen { instances: 0 } = self.outage {
            return Err(ConfigError::new(
                "redis.outage.instances",
                "the fallback divides the limits by the number of instances: at least 1",
            ));
        }
        if let Consistency::Leased { lease, settle } = self.consistency {
            if !(1..=10_000).contains(&lease) {
                return Err(ConfigError::new(
                    "redis.consistency.lease",
                    "a lease is 1 to 10,000 requests",
                ));
            }
            if !(Duration::from_millis(10)..=Duration::from_secs(3600)).contains(&settle) {
                return Err(ConfigError::new(
                    "redis.consistency.settle",
                    "leases settle every 10 ms to 1 hour",
                ));
            }
        }
        if self.prefix.len() > 256 || self.prefix.contains(['{', '}']) {
            return Err(ConfigError::new(
                "redis.key_prefix",
                "a prefix is at most 256 bytes, without `{` or `}` (they make hash tags)",
            ));
        }
        Ok(RedisBackend {
            inner: Arc::new(BackendInner {
                settings: self,
                connection: OnceCell::new(),
                down_until: AtomicU64::new(0),
                epoch: Instant::now(),
                without_redis: AtomicU64::new(0),
                take: Script::new(TAKE),
                give_back: Script::new(GIVE_BACK),
                usage: Script::new(USAGE),
                cache: cache::CacheScripts::new(),
            }),
        })
    }
}
