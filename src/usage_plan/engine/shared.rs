//! The throttles and quotas on Redis: exact (a script call per request) or leased (units
//! taken in batches and spent locally), with the outage policy when Redis does not answer.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use super::{
    ClientMetering, FastMap, Limit, Metering, QuotaTake, RateLimitHeaders, ThrottleEngine, blocked,
    period_of, quota_exceeded, throttled, unix_now,
};
use crate::clock::GatewayClock;
use crate::context::RequestContext;
use crate::error::ConfigError;
use crate::response::{GatewayError, GatewayResponseType};
use crate::route::{RouteTable, ThrottleSettings};
use crate::stage::Stage;
use crate::store::{Consistency, OutagePolicy, RedisBackend, Refusal, Take, Unavailable};
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

    /// What the request takes: the client's bucket and quota (if it has either), then the
    /// stage's bucket (if it has one); `None` when nothing meters the request.
    fn charges<'a>(
        &'a self,
        shared: &'a SharedLimits,
        context: &RequestContext,
    ) -> Result<Option<Charges<'a>>, GatewayError> {
        let Some(metering) = self.resolve(context)? else {
            return Ok(None);
        };
        let now = unix_now(&self.clock);
        let client = match &metering.client {
            Some(client) => self.client_charge(shared, client, now)?,
            None => None,
        };
        let stage = self.stage_charge(shared, &metering)?;
        Ok(Some((client, stage)))
    }

    fn client_charge<'a>(
        &'a self,
        shared: &'a SharedLimits,
        client: &ClientMetering<'a>,
        now: i64,
    ) -> Result<Option<Charge<'a>>, GatewayError> {
        let bucket = match client.limit {
            Some((Limit::Block, _)) => return Err(blocked()),
            Some((Limit::Bucket { settings, .. }, route)) => Some((*settings, route)),
            None => None,
        };
        let quota = client.plan.quota.map(|quota| quota_take(&quota, now));
        if bucket.is_none() && quota.is_none() {
            return Ok(None);
        }
        let route = bucket.and_then(|(_, route)| route);
        Ok(Some(Charge {
            pool: PoolKey::Client {
                plan: client.plan_index,
                slot: client.slot,
                route,
            },
            owner: Owner::Key {
                plan: &client.plan.id,
                key: &client.key.id,
            },
            bucket: bucket.map(|(settings, _)| settings),
            route_key: shared.route_key(route),
            quota,
            now,
        }))
    }

    fn stage_charge<'a>(
        &'a self,
        shared: &'a SharedLimits,
        metering: &Metering<'a>,
    ) -> Result<Option<Charge<'a>>, GatewayError> {
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
            owner: Owner::Stage(stage),
            bucket: Some(*settings),
            route_key: shared.route_key(route),
            quota: None,
            now: 0,
        }))
    }

    /// The decision from leases in hand; `None` when one must be drawn from Redis.
    fn spend_leased(
        &self,
        leases: &Arc<Leases>,
        context: &RequestContext,
    ) -> Option<Result<Option<RateLimitHeaders>, GatewayError>> {
        let shared = self.shared.as_deref()?;
        let (client, stage) = match self.charges(shared, context) {
            Ok(Some(charges)) => charges,
            Ok(None) => return Some(Ok(None)),
            Err(error) => return Some(Err(error)),
        };
        let mut headers = None;
        let mut spent = None;
        if let Some(charge) = &client {
            let lease = leases.lease(charge);
            match lease.try_take(charge.period())? {
                Ok(remaining) => headers = charge.headers(remaining),
                Err(refusal) => return Some(Err(self.refused(charge, refusal))),
            }
            spent = Some((lease, charge.period()));
        }
        if let Some(charge) = &stage {
            let taken = leases.lease(charge).try_take(charge.period());
            if let Some(Ok(remaining)) = taken {
                headers = headers.or(charge.headers(remaining));
            } else {
                // The stage refuses, or its lease is empty: the client's unit goes back.
                if let Some((lease, period)) = spent {
                    lease.put_back(period);
                }
                return match taken {
                    Some(Err(refusal)) => Some(Err(self.refused(charge, refusal))),
                    _ => None,
                };
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
        let Some((client, stage)) = self.charges(shared, context)? else {
            return Ok(None);
        };
        let mut headers = None;
        if let Some(charge) = &client {
            match shared.take(charge).await {
                Ok(Ok(remaining)) => headers = charge.headers(remaining),
                Ok(Err(refusal)) => return Err(self.refused(charge, refusal)),
                Err(unavailable) => return self.without_redis(shared, context, &unavailable),
            }
        }
        if let Some(charge) = &stage {
            match shared.take(charge).await {
                Ok(Ok(remaining)) => headers = headers.or(charge.headers(remaining)),
                Ok(Err(refusal)) => {
                    // The stage refused a request the client's call admitted: the quota has it
                    // back.
                    if let Some(client) = &client {
                        shared.give_back(client).await;
                    }
                    return Err(self.refused(charge, refusal));
                }
                Err(unavailable) => return self.without_redis(shared, context, &unavailable),
            }
        }
        Ok(headers.filter(|_| self.headers))
    }

    fn refused(&self, charge: &Charge<'_>, refusal: Refusal) -> GatewayError {
        match refusal {
            Refusal::QuotaSpent => {
                let end = charge.quota.map_or(charge.now, |quota| quota.period_end);
                quota_exceeded(u64::try_from(end - charge.now).unwrap_or(0), None)
            }
            Refusal::Throttled(wait) => throttled(wait, charge.bucket.as_ref(), self.headers),
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
    fn route_key(&self, route: Option<usize>) -> Option<&str> {
        route
            .and_then(|route| self.route_keys.get(route))
            .map(|key| &**key)
    }

    /// One unit of `charge`: from the lease (drawn from Redis when empty), or from Redis.
    async fn take(&self, charge: &Charge<'_>) -> Result<Result<u32, Refusal>, Unavailable> {
        match &self.leases {
            Some(leases) => leases.draw(charge).await,
            None => {
                let names = charge.names();
                let taken = self.backend.take(charge.take(&names, 1)).await?;
                Ok(taken.map(|granted| granted.tokens_left.unwrap_or(0)))
            }
        }
    }

    /// Returns the unit a request took for `charge`.
    async fn give_back(&self, charge: &Charge<'_>) {
        match &self.leases {
            Some(leases) => leases.lease(charge).put_back(charge.period()),
            None => {
                if let Some(quota) = charge.quota {
                    // Best effort: if Redis fails now, the request stays counted.
                    let _ = self
                        .backend
                        .give_back(&charge.names().0, quota.period, quota.day, 1)
                        .await;
                }
            }
        }
    }
}

/// A request's charges: the client's, then the stage's.
type Charges<'a> = (Option<Charge<'a>>, Option<Charge<'a>>);

/// Whose limits a charge takes from.
#[derive(Clone, Copy)]
enum Owner<'a> {
    Key { plan: &'a str, key: &'a str },
    Stage(&'a str),
}

/// What one request takes: a token of a bucket, a request of a quota, or both. Its Redis names
/// are only spelled out when Redis is asked.
struct Charge<'a> {
    pool: PoolKey,
    owner: Owner<'a>,
    bucket: Option<ThrottleSettings>,
    /// The route whose own throttle the bucket is (`GET /pets/{petId}`), if it is one.
    route_key: Option<&'a str>,
    quota: Option<QuotaTake>,
    /// The gateway's Unix time.
    now: i64,
}

/// The hash tag's content for an API key's throttle, quota and counts in a plan.
pub(super) fn key_tag(plan: &str, key: &str) -> String {
    format!("k:{plan}:{key}")
}

impl Charge<'_> {
    /// The hash tag's content (`k:<plan>:<key id>` or `s:<stage>`) and the bucket's name under
    /// it (`t` or `t:<route key>`).
    fn names(&self) -> (String, String) {
        let tag = match self.owner {
            Owner::Key { plan, key } => key_tag(plan, key),
            Owner::Stage(stage) => format!("s:{stage}"),
        };
        let bucket = match self.route_key {
            Some(route) => format!("t:{route}"),
            None => "t".to_owned(),
        };
        (tag, bucket)
    }

    fn take<'n>(&self, (tag, bucket): &'n (String, String), want: u32) -> Take<'n> {
        Take {
            tag,
            bucket: self
                .bucket
                .map(|settings| (bucket.as_str(), 1e6 / settings.rate, settings.burst)),
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
            .map(|settings| RateLimitHeaders::new(settings, remaining.min(settings.burst)))
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
    refused: Option<(Instant, Refusal)>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update is a few assignments; a panic cannot leave them half done.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Lease {
    /// A unit of `period`, or the standing refusal; `None` when the lease is empty.
    fn try_take(&self, period: i64) -> Option<Result<u32, Refusal>> {
        let mut state = lock(&self.state);
        if let Some((until, refusal)) = state.refused {
            let now = Instant::now();
            if now < until {
                return Some(Err(match refusal {
                    Refusal::Throttled(_) => Refusal::Throttled(until - now),
                    Refusal::QuotaSpent => Refusal::QuotaSpent,
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
    fn lease(self: &Arc<Self>, charge: &Charge<'_>) -> Arc<Lease> {
        let mut pools = lock(&self.pools);
        let lease = pools.entry(charge.pool).or_insert_with(|| {
            Arc::new(Lease {
                tag: charge.names().0,
                has_quota: charge.quota.is_some(),
                state: Mutex::default(),
                drawing: tokio::sync::Mutex::new(()),
            })
        });
        Arc::clone(lease)
    }

    /// One unit of `charge` from its lease, drawing a new lease from Redis when it is empty.
    async fn draw(
        self: &Arc<Self>,
        charge: &Charge<'_>,
    ) -> Result<Result<u32, Refusal>, Unavailable> {
        self.start_settling();
        let lease = self.lease(charge);
        let period = charge.period();
        let _drawing = lease.drawing.lock().await;
        if let Some(taken) = lease.try_take(period) {
            return Ok(taken);
        }
        let names = charge.names();
        let taken = self.backend.take(charge.take(&names, self.lease)).await?;
        let mut state = lock(&lease.state);
        Ok(match taken {
            Ok(granted) => {
                // Units of an earlier period are void; of this period none were left.
                state.units = granted.units - 1;
                state.period = period;
                state.day = charge.quota.map_or(0, |quota| quota.day);
                state.tokens_left = granted.tokens_left.unwrap_or(0);
                state.drawn = true;
                Ok(state.tokens_left.saturating_add(state.units))
            }
            Err(refusal) => {
                // A quota may come back (another instance settles, the usage API extends it):
                // ask again after a settlement.
                let wait = match refusal {
                    Refusal::Throttled(wait) => wait,
                    Refusal::QuotaSpent => self.settle,
                };
                state.refused = Some((Instant::now() + wait, refusal));
                Err(refusal)
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
