//! Shared state for many gateway instances: throttles, quotas, usage and response caches on
//! Redis (feature `redis`).
//!
//! By default every gateway keeps its buckets and counts in memory, so N instances of a
//! service give a customer N times their quota. Hand the gateway a [`RedisBackend`] and the
//! usage plans' throttles (key × method and key), the stages' throttles (stage × method and
//! stage) and the quotas live on one Redis or Redis Cluster instead, shared by every instance
//! that names the same Redis and [key prefix](RedisBackendBuilder::key_prefix).
//!
//! # How
//!
//! - Throttles are GCRA, as in memory, in one atomic Lua script (sent as `EVALSHA`, loaded
//!   again when the server answers `NOSCRIPT`) on the server's clock (`TIME`, in
//!   microseconds). A key's throttle and its quota are checked in the same script call, so a
//!   request a throttle refuses consumes no quota.
//! - Quotas are a hash per key and calendar period (`used`, and `adj` for the usage API's
//!   changes), counted with `HINCRBY` and kept (`EXPIRE`) until a day after the period ends.
//!   The period comes from the instance's clock and UTC calendar
//!   ([`Quota`](crate::usage_plan::Quota)); the instances' clocks should agree (NTP).
//!   The `offset` applies to the first period in which the key is metered, which Redis
//!   records so that every instance agrees.
//! - The [usage API](crate::usage_plan::UsagePlans) reads and changes the counts on Redis
//!   (its `*_async` methods) and exports per-day counts kept on Redis for 35 days.
//! - Keys (with the default prefix `tower-gateway:`), hash-tagged so that everything of one
//!   API key lives on one Cluster slot:
//!
//!   | key | what |
//!   |---|---|
//!   | `tower-gateway:{k:<plan>:<key id>}:t` | the key's bucket (the plan's throttle) |
//!   | `tower-gateway:{k:<plan>:<key id>}:t:<METHOD> <resource>` | the key's bucket for a method override |
//!   | `tower-gateway:{k:<plan>:<key id>}:q:<period>` | the key's quota in a period |
//!   | `tower-gateway:{k:<plan>:<key id>}:first` | the key's first period (for `offset`) |
//!   | `tower-gateway:{k:<plan>:<key id>}:days` | the key's requests per UTC day |
//!   | `tower-gateway:{s:<stage>}:t` | the stage's bucket |
//!   | `tower-gateway:{s:<stage>}:t:<METHOD> <resource>` | the stage's bucket for a route |
//!   | `tower-gateway:{c:<stage>}:e:<cache key>` | a response cache entry (`SET PX`) |
//!   | `tower-gateway:{c:<stage>}:index`, `:sizes` | the stage cache's entries by expiry; their sizes and total |
//!   | `tower-gateway:{c:<stage>~canary}:…` | the same for a canary deployment's own cache |
//!
//! - A stage's response cache is on Redis when its settings say so
//!   ([`CacheStore::Redis`](crate::cache::CacheStore)); see
//!   [Entries on Redis](crate::cache#entries-on-redis).
//!
//! # Consistency
//!
//! - [`Consistency::Exact`] (default): one script call per metered request, two when the
//!   stage also has a throttle (the stage's bucket is on another slot); a quota of N admits
//!   exactly N across all instances. If the key's call admits and the stage's bucket then
//!   refuses, a third call gives the request back to the quota.
//! - [`Consistency::Leased`]: an instance takes up to `lease` requests at once (tokens and
//!   quota together, in the same script) and spends them locally, so most requests make no
//!   round trip. Every `settle` interval, leases not drawn on since the last settlement give
//!   their unused quota back. Quotas are reserved, never overspent: a quota of N admits at
//!   most N, and at least N − instances × lease until the leases settle. A bucket's tokens
//!   may be spent after the bucket has refilled, so in T seconds a key gets at most
//!   burst + rate × T + instances × lease. `cargo bench --bench redis --features redis`
//!   measures both.
//!
//! # Outages
//!
//! Every call has a [timeout](RedisBackendBuilder::timeout) (default 50 ms). When Redis
//! fails or does not answer, the [`OutagePolicy`] decides: fail open (serve, limited by an
//! in-memory copy of the throttles and quotas divided by the number of instances) or fail
//! closed (`BACKEND_UNAVAILABLE`, 503). For a [back-off](RedisBackendBuilder::back_off)
//! after a failure (default 1 s) requests go straight to the policy, and then Redis is asked
//! again: the connection is remade by itself, scripts are loaded again, and the limits apply
//! again with no restart. Each decision made without Redis is counted:
//! [`RedisBackend::decisions_without_redis`], the metric
//! `gateway_decisions_without_backend_total`, and
//! [`RequestContext::decided_without_backend`](crate::RequestContext::decided_without_backend).
//!
//! # Limits
//!
//! - Only the gateway's own cycle ([`GatewayBuilder`](crate::GatewayBuilder)) uses Redis.
//! - The standalone [`ResponseCacheLayer`](crate::cache::ResponseCacheLayer) keeps its
//!   entries in memory.
//! - On Redis a throttle's rate is counted in whole microseconds: rates up to 10⁶ per
//!   second.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tower_gateway::store::{Consistency, OutagePolicy, RedisBackend};
//!
//! let redis = RedisBackend::builder("redis://127.0.0.1:6379")
//!     .consistency(Consistency::Leased { lease: 20, settle: Duration::from_secs(1) })
//!     .timeout(Duration::from_millis(20))
//!     .outage(OutagePolicy::FailOpen { instances: 3 })
//!     .build()
//!     .expect("valid settings");
//! // GatewayBuilder::new()....redis(redis).build()
//! # let _ = redis;
//! ```

mod redis;

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use self::redis::redacted;
pub(crate) use self::redis::{CachePut, QuotaTake, Refusal, Take, Unavailable};
pub use self::redis::{RedisBackend, RedisBackendBuilder};

/// How closely the instances agree on throttles and quotas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Consistency {
    /// One script call per metered request: exact counts.
    Exact,
    /// Each instance takes `lease` requests at once and spends them locally; leases not drawn
    /// on for a `settle` interval give their unused quota back.
    Leased {
        /// Requests taken per call (1 to 10,000).
        lease: u32,
        /// How often idle leases settle (10 ms to 1 hour).
        #[serde(with = "millis", rename = "settle_ms")]
        settle: Duration,
    },
}

/// What the gateway does when Redis fails or does not answer in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum OutagePolicy {
    /// Serve, limited by the throttles and quotas in memory, each divided by `instances` (the
    /// number of gateway instances, so that together they stay near the limits).
    FailOpen {
        /// The number of gateway instances sharing the Redis.
        instances: u32,
    },
    /// Refuse with `BACKEND_UNAVAILABLE` (503, or its configured gateway response).
    FailClosed,
}

/// The Redis backend in a [`GatewayConfig`](crate::GatewayConfig):
///
/// ```
/// use tower_gateway::GatewayConfig;
///
/// let config: GatewayConfig = serde_json::from_value(serde_json::json!({
///     "stages": [{ "name": "prod" }],
///     "redis": {
///         "url": "redis://127.0.0.1:6379",
///         "consistency": { "leased": { "lease": 20, "settle_ms": 1000 } },
///         "timeout_ms": 20,
///         "outage": { "fail_open": { "instances": 3 } }
///     }
/// }))
/// .expect("valid JSON");
/// # let _ = config;
/// ```
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// One Redis's URL; give this or `cluster`.
    #[serde(default)]
    pub url: Option<String>,
    /// The URLs of a Redis Cluster's nodes.
    #[serde(default)]
    pub cluster: Vec<String>,
    /// `exact` (default) or `{"leased": {"lease": n, "settle_ms": ms}}`.
    #[serde(default)]
    pub consistency: Option<Consistency>,
    /// The timeout per call in milliseconds (default 50).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// `fail_closed`, or `{"fail_open": {"instances": n}}` (default, with one instance).
    #[serde(default)]
    pub outage: Option<OutagePolicy>,
    /// The back-off after a failure in milliseconds (default 1000).
    #[serde(default)]
    pub back_off_ms: Option<u64>,
    /// The prefix of every key (default `tower-gateway:`).
    #[serde(default)]
    pub key_prefix: Option<String>,
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A URL may carry a password.
        let cluster: Vec<String> = self.cluster.iter().map(|url| redacted(url)).collect();
        f.debug_struct("RedisConfig")
            .field("url", &self.url.as_deref().map(redacted))
            .field("cluster", &cluster)
            .field("consistency", &self.consistency)
            .field("timeout_ms", &self.timeout_ms)
            .field("outage", &self.outage)
            .field("back_off_ms", &self.back_off_ms)
            .field("key_prefix", &self.key_prefix)
            .finish()
    }
}

impl RedisConfig {
    /// The backend this configuration describes.
    pub fn build(self) -> Result<RedisBackend, crate::ConfigError> {
        let mut builder = match (self.url, self.cluster.is_empty()) {
            (Some(url), true) => RedisBackend::builder(url),
            (None, false) => RedisBackend::cluster(self.cluster),
            _ => {
                return Err(crate::ConfigError::new(
                    "redis.url",
                    "give either `url` (one Redis) or `cluster` (its nodes' URLs)",
                ));
            }
        };
        if let Some(consistency) = self.consistency {
            builder = builder.consistency(consistency);
        }
        if let Some(timeout) = self.timeout_ms {
            builder = builder.timeout(Duration::from_millis(timeout));
        }
        if let Some(outage) = self.outage {
            builder = builder.outage(outage);
        }
        if let Some(back_off) = self.back_off_ms {
            builder = builder.back_off(Duration::from_millis(back_off));
        }
        if let Some(prefix) = self.key_prefix {
            builder = builder.key_prefix(prefix);
        }
        builder.build()
    }
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        value: &Duration,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(u64::try_from(value.as_millis()).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Duration, D::Error> {
        u64::deserialize(deserializer).map(Duration::from_millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_hides_a_urls_password() {
        let url = "redis://user:s3cret@redis.internal:6379/2";
        let config = RedisConfig {
            url: Some(url.to_owned()),
            cluster: vec![
                ":s3cret@node-1:7000".to_owned(),
                "redis://node-2:7000".to_owned(),
            ],
            consistency: None,
            timeout_ms: None,
            outage: None,
            back_off_ms: None,
            key_prefix: None,
        };
        let builder = RedisBackend::builder(url);
        let backend = RedisBackend::builder(url).build().expect("a valid backend");
        let cluster = RedisBackend::cluster(config.cluster.clone());
        for debug in [
            format!("{config:?}"),
            format!("{builder:?}"),
            format!("{backend:?}"),
            format!("{cluster:?}"),
        ] {
            assert!(!debug.contains("s3cret"), "{debug}");
            assert!(debug.contains("***@"), "{debug}");
        }
        assert!(format!("{backend:?}").contains("redis://***@redis.internal:6379/2"));
        assert_eq!(
            redacted("redis://node-2:7000/a@b"),
            "redis://node-2:7000/a@b"
        );
    }
}
