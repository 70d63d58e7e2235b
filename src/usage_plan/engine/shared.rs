//! The throttles and quotas on Redis: exact (a script call per request) or leased (units
//! taken in batches and spent locally), with the outage policy when Redis does not answer.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use super::{
    ClientMetering, FastMap, Limit, Metering, QuotaTake, RateLimitHeaders, ThrottleEngine,
    period_of, quota_exceeded, throttled, unix_now,
};
use crate::clock::GatewayClock;
use crate::context::RequestContext;
use crate::error::ConfigError;
use crate::response::{GatewayError, GatewayResponseType};
use crate::route::{RouteTable, ThrottleSettings};
use crate::stage::Stage;
use crate::store::{Consistency, OutagePolicy, RedisBackend, Take, Taken, Unavailable};
use crate::usage_plan::{Quota, UsagePlan};

/// A decision that waits for Redis.
pub(crate) type ThrottleFuture =
    Pin<Box<dyn Future<Output = Result<Option<RateLimitHeaders>, GatewayError>> + Send>>;

/// The Redis side of a [`ThrottleEngine`].
pub(in crate::usage_plan) struct SharedLimits {
    pub(super) backend: RedisBackend,
    /// The limits divided among the instances, for failing open.
    fallback: Option<ThrottleEngine>,
    /// Each route's key (`GET /pets/{petId}`), which names its buckets.
    route_keys: Vec<Box<str>>,
    leases: Option<Arc<Leases>>,
    metrics: bool,
}

impl ThrottleEngine {
    /// The engine for these plans, stages and routes with its limits on `backend`.
    pub(crate) fn on_redis(
        plans: Vec<UsagePlan>,
        stages: &[Stage],
        routes: &RouteTable,
        clock: GatewayClock,
        headers: bool,
        backend: RedisBackend,
        metrics: bool,
    ) -> Result<Option<Self>, ConfigError> {
        let fallback = match backend.outage() {
            OutagePolicy::FailOpen { instances } => Self::with_share(
                plans.clone(),
                stages,
                routes,
                clock.clone(),
                headers,
                None,
                instances,
            )?,
            OutagePolicy::FailClosed => None,
        };
        let Some(mut engine) = Self::new(plans, stages, routes, clock, headers, None)? else {
            return Ok(None);
        };
        let leases = match backend.consistency() {
            Consistency::Exact => None,
            Consistency::Leased { lease, settle } => Some(Arc::new(Leases {
                backend: backend.clone(),
                lease,
                settle,
                pools: Mutex::default(),
                settling: AtomicBool::new(false),
            })),
        };
        engine.shared = Some(Box::new(SharedLimits {
            backend,
            fallback,
            route_keys: routes.routes().map(|(key, _)| key.into()).collect(),
            leases,
            metrics,
        }));
        Ok(Some(engine))
    }

    /// The request's decision: from the leases in hand when they suffice, else from Redis.
    pub(super) fn admit_shared(
        self: &Arc<Self>,
        shared: &SharedLimits,
        context: &RequestContext,
    ) -> super::Throttling {
        if let Some(leases) = &shared.leases
            && let Some(decided) = self.spend_leased(leases, context)
        {
            return super::Throttling::Done(decided);
        }
        let engine = Arc::clone(self);
        let context = context.clone();
        super::Throttling::Pending(Box::pin(async move { engine.decide(&context).await }))
    }

    /// The client's bucket and quota as Redis sees them, if it has either.
    fn client_take(
        &self,
        shared: &SharedLimits,
        client: &ClientMetering<'_>,
        now: i64,
    ) -> Result<Option<Charge>, GatewayError> {
        let bucket = match client.limit {
            Some((Limit::Block, _)) => return Err(blocked()),
            Some((Limit::Bucket { settings, .. }, route)) => Some((*settings, route)),
            None => None,
        };
        let quota = client.plan.quota.map(|quota| quota_take(&quota, now));
        if bucket.is_none() && quota.is_none() {
            return Ok(None);
        }
        Ok(Some(Charge {
            pool: PoolKey::Client {
                plan: client.plan_index,
                slot: client.slot,
                route: bucket.and_then(|(_, route)| route),
            },
            tag: format!("k:{}:{}", client.plan.id, client.key.id),
            bucket: bucket.map(|(settings, route)| (settings, shared.bucket_name(route))),
            quota,
        }))
    }

    /// The stage's bucket for the request, if it has one.
    fn stage_take(
        &self,
        shared: &SharedLimits,
        metering: &Metering<'_>,
    ) -> Result<Option<Charge>, GatewayError> {
        let Some((limit, route)) = metering.stage_limit else {
            return Ok(None);
        };
        let Limit::Bucket { settings, .. } = limit else {
            return Err(blocked());
        };
        let stage = self
            .stages
            .get(metering.stage_index)
            .map_or("", |limits| limits.stage.name());
        Ok(Some(Charge {
            pool: PoolKey::Stage {
                stage: metering.stage_index,
                route,
            },
            tag: format!("s:{stage}"),
            bucket: Some((*settings, shared.bucket_name(route))),
            quota: None,
        }))
    }

    /// The decision from leases in hand; `None` when one must be drawn from Redis.
    fn spend_leased(
        &self,
        leases: &Arc<Leases>,
        context: &RequestContext,
    ) -> Option<Result<Option<RateLimitHeaders>, GatewayError>> {
        let shared = self.shared.as_deref()?;
        let metering = match self.resolve(context) {
            Ok(Some(metering)) => metering,
            Ok(None) => return Some(Ok(None)),
            Err(error) => return Some(Err(error)),
        };
        let now = unix_now(&self.clock);
        let client = match metering
            .client
            .as_ref()
            .map(|client| self.client_take(shared, client, now))
            .transpose()
        {
            Ok(client) => client.flatten(),
            Err(error) => return Some(Err(error)),
        };
        let stage = match self.stage_take(shared, &metering) {
            Ok(stage) => stage,
            Err(error) => return Some(Err(error)),
        };
        let mut headers = None;
        let mut spent = None;
        if let Some(charge) = &client {
            let lease = leases.lease(charge);
            match lease.try_take(charge.period())? {
                Ok(remaining) => {
                    headers = charge.headers(remaining);
                    spent = Some(lease);
                }
                Err(refusal) => return Some(Err(self.refused(charge, refusal, now))),
            }
        }
        if let Some(charge) = &stage {
            let taken = leases.lease(charge).try_take(charge.period());
            let refusal = match taken {
                Some(Ok(remaining)) => {
                    headers = headers.or(charge.headers(remaining));
                    None
                }
                Some(Err(refusal)) => Some(refusal),
                None => {
                    if let (Some(lease), Some(client)) = (&spent, &client) {
                        lease.put_back(client.period());
                    }
                    return None;
                }
            };
            if let Some(refusal) = refusal {
                if let (Some(lease), Some(client)) = (&spent, &client) {
                    lease.put_back(client.period());
                }
                return Some(Err(self.refused(charge, refusal, now)));
            }
        }
        Some(Ok(headers.filter(|_| self.headers)))
    }

    /// The decision from Redis: the client's bucket and quota in one call, then the stage's
    /// bucket (on its own slot) in another.
    async fn decide(
        &self,
        context: &RequestContext,
    ) -> Result<Option<RateLimitHeaders>, GatewayError> {
        let Some(shared) = self.shared.as_deref() else {
            return self.apply(context);
        };
        let Some(metering) = self.resolve(context)? else {
            return Ok(None);
        };
        let now = unix_now(&self.clock);
        let client = metering
            .client
            .as_ref()
            .map(|client| self.client_take(shared, client, now))
            .transpose()?
            .flatten();
        let stage = self.stage_take(shared, &metering)?;
        let mut headers = None;
        if let Some(charge) = &client {
            match shared.take(charge).await {
                Ok(Ok(remaining)) => headers = charge.headers(remaining),
                Ok(Err(refusal)) => return Err(self.refused(charge, refusal, now)),
                Err(unavailable) => return self.without_redis(shared, context, &unavailable),
            }
        }
        if let Some(charge) = &stage {
            let refusal = match shared.take(charge).await {
                Ok(Ok(remaining)) => {
                    headers = headers.or(charge.headers(remaining));
                    None
                }
                Ok(Err(refusal)) => Some(refusal),
                Err(unavailable) => return self.without_redis(shared, context, &unavailable),
            };
            if let Some(refusal) = refusal {
                // The stage refused a request the client's call admitted: the quota has it back.
                if let Some(client) = &client {
                    shared.give_back(client, now).await;
                }
                return Err(self.refused(charge, refusal, now));
            }
        }
        Ok(headers.filter(|_| self.headers))
    }

    fn refused(&self, charge: &Charge, refusal: Taken, now: i64) -> GatewayError {
        match refusal {
            Taken::QuotaSpent => {
                let end = charge.quota.map_or(now, |quota| quota.period_end);
                quota_exceeded(u64::try_from(end.saturating_sub(now)).unwrap_or(0), None)
            }
            Taken::Throttled(wait) => throttled(
                wait,
                charge.bucket.as_ref().map(|(settings, _)| settings),
                self.headers,
            ),
            Taken::Granted { .. } => throttled(Duration::from_secs(1), None, false),
        }
    }

    /// The outage policy's decision, counted.
    fn without_redis(
        &self,
        shared: &SharedLimits,
        context: &RequestContext,
        why: &Unavailable,
    ) -> Result<Option<RateLimitHeaders>, GatewayError> {
        shared.backend.count_without_redis();
        context.set_decided_without_backend();
        let policy = shared.backend.outage();
        #[cfg(feature = "metrics")]
        if shared.metrics {
            let label = match policy {
                OutagePolicy::FailOpen { .. } => "fail_open",
                OutagePolicy::FailClosed => "fail_closed",
            };
            metrics::counter!(crate::observe::metrics::DECISIONS_WITHOUT_BACKEND, "policy" => label)
                .increment(1);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = shared.metrics;
        tracing::debug!(
            target: crate::observe::EXECUTION_LOG_TARGET,
            request_id = %context.request_id(),
            %why,
            ?policy,
            "throttle and quota decided without Redis"
        );
        match &shared.fallback {
            Some(fallback) => fallback.apply(context),
            None => Err(GatewayError::new(GatewayResponseType::BackendUnavailable)),
        }
    }
}

/// A bucket of rate 0 and burst 0.
fn blocked() -> GatewayError {
    throttled(Duration::from_secs(1), None, false)
}

pub(super) fn quota_take(quota: &Quota, now: i64) -> QuotaTake {
    let (period, _, period_end) = period_of(quota.period, now);
    QuotaTake {
        limit: quota.limit,
        offset: quota.offset,
        period,
        period_end,
        day: now.div_euclid(86_400),
        now,
    }
}

impl SharedLimits {
    fn bucket_name(&self, route: Option<usize>) -> String {
        match route.and_then(|route| self.route_keys.get(route)) {
            Some(key) => format!("t:{key}"),
            None => "t".to_owned(),
        }
    }

    /// One unit of `charge`: from the lease (drawn from Redis when empty), or from Redis.
    async fn take(&self, charge: &Charge) -> Result<Result<u32, Taken>, Unavailable> {
        match &self.leases {
            Some(leases) => leases.draw(charge).await,
            None => Ok(match self.backend.take(charge.take(1)).await? {
                Taken::Granted { tokens_left, .. } => Ok(tokens_left.unwrap_or(0)),
                refusal => Err(refusal),
            }),
        }
    }

    /// Returns the unit a request took for `charge`.
    async fn give_back(&self, charge: &Charge, now: i64) {
        match &self.leases {
            Some(leases) => leases.lease(charge).put_back(charge.period()),
            None => {
                if let Some(quota) = charge.quota {
                    // Best effort: if Redis fails now, the request stays counted.
                    let _ = self
                        .backend
                        .give_back(&charge.tag, quota.period, now.div_euclid(86_400), 1)
                        .await;
                }
            }
        }
    }
}

/// What one request takes: a token of a bucket, a request of a quota, or both.
struct Charge {
    pool: PoolKey,
    /// The hash tag's content: `k:<plan>:<key id>` or `s:<stage>`.
    tag: String,
    bucket: Option<(ThrottleSettings, String)>,
    quota: Option<QuotaTake>,
}

impl Charge {
    fn take(&self, want: u32) -> Take<'_> {
        Take {
            tag: &self.tag,
            bucket: self
                .bucket
                .as_ref()
                .map(|(settings, name)| (name.as_str(), 1e6 / settings.rate, settings.burst)),
            quota: self.quota,
            want,
        }
    }

    /// The quota period the units belong to (0 without a quota).
    fn period(&self) -> i64 {
        self.quota.map_or(0, |quota| quota.period)
    }

    fn headers(&self, remaining: u32) -> Option<RateLimitHeaders> {
        self.bucket
            .as_ref()
            .map(|(settings, _)| RateLimitHeaders::new(settings, remaining.min(settings.burst)))
    }
}

/// Which lease a charge draws on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum PoolKey {
    Client {
        plan: usize,
        slot: u32,
        route: Option<usize>,
    },
    Stage {
        stage: usize,
        route: Option<usize>,
    },
}

/// The leases of one engine, and the settlement of idle ones.
struct Leases {
    backend: RedisBackend,
    lease: u32,
    settle: Duration,
    pools: Mutex<FastMap<PoolKey, Arc<Lease>>>,
    settling: AtomicBool,
}

/// Units taken from Redis and not yet spent.
struct Lease {
    tag: String,
    has_quota: bool,
    state: Mutex<LeaseState>,
    /// Held while drawing from Redis, so that concurrent requests wait for one draw instead of
    /// each taking a lease.
    drawing: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct LeaseState {
    units: u32,
    /// The quota period the units belong to.
    period: i64,
    day: i64,
    /// The bucket's tokens left on Redis when the units were drawn.
    tokens_left: u32,
    /// Whether a unit was spent since the last settlement.
    drawn: bool,
    /// Redis's last refusal, repeated until it may have changed, so that refused requests
    /// do not each ask again.
    refused: Option<(Instant, Taken)>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update is a few assignments; a panic cannot leave them half done.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Lease {
    /// A unit of `period`, or the standing refusal; `None` when the lease is empty.
    fn try_take(&self, period: i64) -> Option<Result<u32, Taken>> {
        let mut state = lock(&self.state);
        if let Some((until, refusal)) = state.refused {
            let now = Instant::now();
            if now < until {
                return Some(Err(match refusal {
                    Taken::Throttled(_) => Taken::Throttled(until - now),
                    other => other,
                }));
            }
            state.refused = None;
        }
        if state.period == period && state.units > 0 {
            state.units -= 1;
            state.drawn = true;
            return Some(Ok(state.tokens_left.saturating_add(state.units)));
        }
        None
    }

    fn put_back(&self, period: i64) {
        let mut state = lock(&self.state);
        if state.period == period {
            state.units = state.units.saturating_add(1);
        }
    }
}

impl Leases {
    fn lease(self: &Arc<Self>, charge: &Charge) -> Arc<Lease> {
        let mut pools = lock(&self.pools);
        let lease = pools.entry(charge.pool).or_insert_with(|| {
            Arc::new(Lease {
                tag: charge.tag.clone(),
                has_quota: charge.quota.is_some(),
                state: Mutex::default(),
                drawing: tokio::sync::Mutex::new(()),
            })
        });
        Arc::clone(lease)
    }

    /// One unit of `charge` from its lease, drawing a new lease from Redis when it is empty.
    async fn draw(self: &Arc<Self>, charge: &Charge) -> Result<Result<u32, Taken>, Unavailable> {
        self.start_settling();
        let lease = self.lease(charge);
        let period = charge.period();
        let _drawing = lease.drawing.lock().await;
        if let Some(taken) = lease.try_take(period) {
            return Ok(taken);
        }
        let taken = self.backend.take(charge.take(self.lease)).await?;
        let mut state = lock(&lease.state);
        Ok(match taken {
            Taken::Granted {
                granted,
                tokens_left,
                ..
            } => {
                // Units of an earlier period are void; of this period none were left.
                state.units = granted - 1;
                state.period = period;
                state.day = charge.quota.map_or(0, |quota| quota.day);
                state.tokens_left = tokens_left.unwrap_or(0);
                state.drawn = true;
                Ok(state.tokens_left.saturating_add(state.units))
            }
            Taken::Throttled(wait) => {
                state.refused = Some((Instant::now() + wait, taken));
                Err(taken)
            }
            Taken::QuotaSpent => {
                // Another instance may give units back, or the usage API extend the quota:
                // ask again after a settlement.
                state.refused = Some((Instant::now() + self.settle, taken));
                Err(taken)
            }
        })
    }

    /// Starts the task that settles idle leases; it ends with the engine.
    fn start_settling(self: &Arc<Self>) {
        if self.settling.swap(true, Ordering::Relaxed) {
            return;
        }
        let leases: Weak<Self> = Arc::downgrade(self);
        let every = self.settle;
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                let Some(leases) = leases.upgrade() else {
                    break;
                };
                leases.settle().await;
            }
        });
    }

    /// Gives back the quota of leases not drawn on since the last settlement.
    async fn settle(&self) {
        let idle: Vec<(Arc<Lease>, u32, i64, i64)> = lock(&self.pools)
            .values()
            .filter_map(|lease| {
                let mut state = lock(&lease.state);
                if std::mem::take(&mut state.drawn) || state.units == 0 {
                    return None;
                }
                let units = std::mem::take(&mut state.units);
                Some((Arc::clone(lease), units, state.period, state.day))
            })
            .collect();
        for (lease, units, period, day) in idle {
            if lease.has_quota {
                // Best effort: units not given back are simply not used this period.
                let _ = self.backend.give_back(&lease.tag, period, day, units).await;
            }
        }
    }
}
