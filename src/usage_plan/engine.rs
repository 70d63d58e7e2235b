//! The throttles and quotas the gateway enforces, and the usage API over them.

use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{NotUntil, RateLimiter};
use http::HeaderValue;
use http::header::{HeaderName, RETRY_AFTER};
use time::{Date, Month, OffsetDateTime};

use super::{Quota, QuotaPeriod, UsagePlan};
use crate::clock::GatewayClock;
use crate::context::RequestContext;
use crate::error::ConfigError;
use crate::response::{GatewayError, GatewayResponseType};
use crate::route::{RouteTable, ThrottleSettings};
use crate::stage::Stage;

type Direct = RateLimiter<NotKeyed, InMemoryState, GatewayClock, StateInformationMiddleware>;
type Keyed =
    RateLimiter<Arc<str>, DashMapStateStore<Arc<str>>, GatewayClock, StateInformationMiddleware>;

/// How many decisions pass between two looks at the size of the per-key state.
const HOUSEKEEPING_EVERY: u64 = 1024;
/// How many days of per-key daily counts are kept for [`UsagePlans::daily_usage`].
const DAILY_RETENTION_DAYS: i64 = 35;

const LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// A throttle: a GCRA limiter, or a block (rate 0, burst 0).
enum Limit<L> {
    Block,
    Bucket {
        settings: ThrottleSettings,
        limiter: L,
    },
}

fn governor_quota(settings: &ThrottleSettings) -> Option<governor::Quota> {
    // The period is rounded up so that rounding never admits more than `rate`.
    let nanos = (1e9 / settings.rate).ceil();
    let period = Duration::from_nanos(if nanos >= u64::MAX as f64 {
        u64::MAX
    } else {
        nanos as u64
    });
    Some(governor::Quota::with_period(period)?.allow_burst(NonZeroU32::new(settings.burst)?))
}

fn direct(settings: ThrottleSettings, clock: &GatewayClock) -> Limit<Direct> {
    match governor_quota(&settings) {
        Some(quota) => Limit::Bucket {
            settings,
            limiter: RateLimiter::direct_with_clock(quota, clock.clone())
                .with_middleware::<StateInformationMiddleware>(),
        },
        None => Limit::Block,
    }
}

fn keyed(settings: ThrottleSettings, clock: &GatewayClock) -> Limit<Keyed> {
    match governor_quota(&settings) {
        Some(quota) => Limit::Bucket {
            settings,
            limiter: RateLimiter::dashmap_with_clock(quota, clock.clone())
                .with_middleware::<StateInformationMiddleware>(),
        },
        None => Limit::Block,
    }
}

/// The `x-ratelimit-*` values for a throttle that admitted a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RateLimitHeaders {
    limit: u32,
    remaining: u32,
    reset_seconds: u64,
}

impl RateLimitHeaders {
    fn new(settings: &ThrottleSettings, remaining: u32) -> Self {
        let missing = f64::from(settings.burst.saturating_sub(remaining));
        Self {
            limit: settings.burst,
            remaining,
            reset_seconds: (missing / settings.rate).ceil() as u64,
        }
    }

    pub(crate) fn write(&self, headers: &mut http::HeaderMap) {
        headers.insert(LIMIT, HeaderValue::from(self.limit));
        headers.insert(REMAINING, HeaderValue::from(self.remaining));
        headers.insert(RESET, HeaderValue::from(self.reset_seconds));
    }

    fn onto(self, mut error: GatewayError) -> GatewayError {
        error = error.header(LIMIT, HeaderValue::from(self.limit));
        error = error.header(REMAINING, HeaderValue::from(self.remaining));
        error.header(RESET, HeaderValue::from(self.reset_seconds))
    }
}

fn retry_after(seconds: u64) -> HeaderValue {
    HeaderValue::from(seconds.max(1))
}

fn throttled(wait: Duration, settings: Option<&ThrottleSettings>, headers: bool) -> GatewayError {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let mut error =
        GatewayError::new(GatewayResponseType::Throttled).header(RETRY_AFTER, retry_after(seconds));
    if let (Some(settings), true) = (settings, headers) {
        error = RateLimitHeaders::new(settings, 0).onto(error);
    }
    error
}

/// The start and end (Unix seconds, UTC) and a number identifying the period `unix` is in.
fn period_of(period: QuotaPeriod, unix: i64) -> (i64, i64, i64) {
    const DAY: i64 = 86_400;
    match period {
        QuotaPeriod::Day => {
            let day = unix.div_euclid(DAY);
            let start = day.saturating_mul(DAY);
            (day, start, start.saturating_add(DAY))
        }
        QuotaPeriod::Week => {
            // 1970-01-01 was a Thursday; weeks start on Monday.
            let week = unix.div_euclid(DAY).saturating_add(3).div_euclid(7);
            let start = week.saturating_mul(7).saturating_sub(3).saturating_mul(DAY);
            (week, start, start.saturating_add(7 * DAY))
        }
        QuotaPeriod::Month => {
            let month_start = |year: i32, month: Month| {
                Date::from_calendar_date(year, month, 1)
                    .ok()
                    .map(|date| date.midnight().assume_utc().unix_timestamp())
            };
            let bounds = OffsetDateTime::from_unix_timestamp(unix)
                .ok()
                .and_then(|now| {
                    let (year, month) = (now.year(), now.month());
                    let next_year = if month == Month::December {
                        year + 1
                    } else {
                        year
                    };
                    let start = month_start(year, month)?;
                    let end = month_start(next_year, month.next())?;
                    Some((
                        i64::from(year) * 12 + i64::from(u8::from(month)),
                        start,
                        end,
                    ))
                });
            // Beyond the calendar's range (year ±9999) all time is one period.
            bounds.unwrap_or((i64::MAX, i64::MAX, i64::MAX))
        }
    }
}

fn unix_now(clock: &GatewayClock) -> i64 {
    i64::try_from(clock.unix_seconds()).unwrap_or(i64::MAX)
}

struct QuotaCounter {
    quota: Quota,
    first_period: i64,
    /// Per key: the period the count belongs to and the requests left in it.
    remaining: DashMap<Arc<str>, (i64, u64)>,
}

impl QuotaCounter {
    fn limit_for(&self, period: i64) -> u64 {
        if period == self.first_period {
            self.quota.limit - self.quota.offset
        } else {
            self.quota.limit
        }
    }

    /// Takes one request from the key's quota, or says how many seconds until it renews.
    fn consume(&self, key: &Arc<str>, now: i64) -> Result<(), u64> {
        let (period, _, end) = period_of(self.quota.period, now);
        let mut entry = self
            .remaining
            .entry(Arc::clone(key))
            .or_insert_with(|| (period, self.limit_for(period)));
        if entry.0 != period {
            *entry = (period, self.limit_for(period));
        }
        if entry.1 == 0 {
            return Err(u64::try_from(end.saturating_sub(now)).unwrap_or(u64::MAX));
        }
        entry.1 -= 1;
        Ok(())
    }

    fn update(&self, key: &str, now: i64, change: impl FnOnce(u64, u64) -> u64) {
        let (period, _, _) = period_of(self.quota.period, now);
        let limit = self.limit_for(period);
        let mut entry = self
            .remaining
            .entry(Arc::from(key))
            .or_insert_with(|| (period, limit));
        if entry.0 != period {
            *entry = (period, limit);
        }
        entry.1 = change(entry.1, limit);
    }
}

struct PlanRuntime {
    id: Box<str>,
    key: Option<Limit<Keyed>>,
    by_route: Vec<Option<Limit<Keyed>>>,
    quota: Option<QuotaCounter>,
    /// Requests admitted per key per UTC day, for billing.
    daily: DashMap<(Arc<str>, i64), u64>,
}

struct StageLimits {
    stage: Stage,
    default: Option<Limit<Direct>>,
    by_route: Vec<Option<Limit<Direct>>>,
    /// Key id → the plan it has on this stage.
    members: HashMap<Arc<str>, usize>,
}

/// Throttles and quotas for one gateway.
pub(crate) struct ThrottleEngine {
    clock: GatewayClock,
    stages: Vec<StageLimits>,
    plans: Vec<PlanRuntime>,
    headers: bool,
    max_tracked_keys: usize,
    decisions: AtomicU64,
}

impl ThrottleEngine {
    /// The engine for these plans, stages and routes; `None` when nothing is throttled.
    pub(crate) fn new(
        plans: Vec<UsagePlan>,
        stages: &[Stage],
        routes: &RouteTable,
        clock: GatewayClock,
        headers: bool,
        max_tracked_keys: usize,
    ) -> Result<Option<Self>, ConfigError> {
        let route_throttles: Vec<Option<ThrottleSettings>> = routes
            .routes()
            .map(|(_, settings)| settings.throttle)
            .collect();
        let anything = !plans.is_empty()
            || stages.iter().any(|stage| stage.throttle().is_some())
            || route_throttles.iter().any(Option::is_some);
        if !anything {
            return Ok(None);
        }
        if max_tracked_keys == 0 {
            return Err(ConfigError::new("max_tracked_keys", "must be at least 1"));
        }
        for (key, settings) in routes.routes() {
            if let Some(throttle) = &settings.throttle {
                super::validate_throttle(&format!("routes[{key}].throttle"), throttle)?;
            }
        }
        let mut stage_limits: Vec<StageLimits> = stages
            .iter()
            .map(|stage| StageLimits {
                stage: stage.clone(),
                default: stage.throttle().map(|t| direct(*t, &clock)),
                by_route: route_throttles
                    .iter()
                    .map(|throttle| throttle.map(|t| direct(t, &clock)))
                    .collect(),
                members: HashMap::new(),
            })
            .collect();
        let first_unix = unix_now(&clock);
        let mut runtimes = Vec::with_capacity(plans.len());
        for (plan_index, plan) in plans.into_iter().enumerate() {
            let field = format!("usage_plans[{}]", plan.id);
            if runtimes.iter().any(|p: &PlanRuntime| *p.id == *plan.id) {
                return Err(ConfigError::new(field, "two plans have this id"));
            }
            let mut by_route: Vec<Option<Limit<Keyed>>> =
                route_throttles.iter().map(|_| None).collect();
            for (route, throttle) in &plan.method_throttles {
                let index = routes.route_index(route).ok_or_else(|| {
                    ConfigError::new(
                        format!("{field}.method_throttles[{route}]"),
                        "no route has this key",
                    )
                })?;
                by_route[index] = Some(keyed(*throttle, &clock));
            }
            for stage_name in &plan.stages {
                let limits = stage_limits
                    .iter_mut()
                    .find(|limits| limits.stage.name() == stage_name)
                    .ok_or_else(|| {
                        ConfigError::new(
                            format!("{field}.stages[{stage_name}]"),
                            "no stage has this name",
                        )
                    })?;
                for key in &plan.keys {
                    if let Some(other) = limits.members.insert(Arc::from(key.as_str()), plan_index)
                    {
                        let other = &runtimes
                            .get(other)
                            .map_or(&*plan.id, |p: &PlanRuntime| &*p.id)
                            .to_owned();
                        return Err(ConfigError::new(
                            format!("{field}.keys[{key}]"),
                            format!(
                                "the key is already in plan `{other}` for stage `{stage_name}`"
                            ),
                        ));
                    }
                }
            }
            runtimes.push(PlanRuntime {
                id: plan.id.into(),
                key: plan.throttle.map(|t| keyed(t, &clock)),
                by_route,
                quota: plan.quota.map(|quota| QuotaCounter {
                    quota,
                    first_period: period_of(quota.period, first_unix).0,
                    remaining: DashMap::new(),
                }),
                daily: DashMap::new(),
            });
        }
        Ok(Some(Self {
            clock,
            stages: stage_limits,
            plans: runtimes,
            headers,
            max_tracked_keys,
            decisions: AtomicU64::new(0),
        }))
    }

    fn check_direct(
        &self,
        limit: &Limit<Direct>,
    ) -> Result<Option<RateLimitHeaders>, GatewayError> {
        match limit {
            Limit::Block => Err(throttled(Duration::from_secs(1), None, false)),
            Limit::Bucket { settings, limiter } => match limiter.check() {
                Ok(snapshot) => Ok(Some(RateLimitHeaders::new(
                    settings,
                    snapshot.remaining_burst_capacity(),
                ))),
                Err(not_until) => Err(self.not_until(&not_until, settings)),
            },
        }
    }

    fn check_keyed(
        &self,
        limit: &Limit<Keyed>,
        key: &Arc<str>,
    ) -> Result<Option<RateLimitHeaders>, GatewayError> {
        match limit {
            Limit::Block => Err(throttled(Duration::from_secs(1), None, false)),
            Limit::Bucket { settings, limiter } => match limiter.check_key(key) {
                Ok(snapshot) => Ok(Some(RateLimitHeaders::new(
                    settings,
                    snapshot.remaining_burst_capacity(),
                ))),
                Err(not_until) => Err(self.not_until(&not_until, settings)),
            },
        }
    }

    fn not_until(
        &self,
        not_until: &NotUntil<governor::nanos::Nanos>,
        settings: &ThrottleSettings,
    ) -> GatewayError {
        use governor::clock::Clock;
        throttled(
            not_until.wait_time_from(self.clock.now()),
            Some(settings),
            self.headers,
        )
    }

    /// Applies the throttles and the quota to a request whose stage, route and key are in
    /// `context`; returns the rate-limit headers for the response.
    pub(crate) fn apply(
        &self,
        context: &RequestContext,
    ) -> Result<Option<RateLimitHeaders>, GatewayError> {
        let Some(stage) = context.stage() else {
            return Ok(None);
        };
        let Some(limits) = self.stages.iter().find(|limits| limits.stage.is(stage)) else {
            return Ok(None);
        };
        self.housekeeping();
        let route = context.route();
        let mut headers = None;
        let mut metered = None;
        // 1. The client: key × method, else key. Only routes that require a key are metered.
        if let (Some(route), Some(key)) = (route, context.api_key_handle())
            && route.settings().api_key_required
            && !self.plans.is_empty()
        {
            let plan = limits
                .members
                .get(key.id())
                .map(|index| &self.plans[*index])
                .ok_or_else(|| GatewayError::new(GatewayResponseType::InvalidApiKey))?;
            let limit = plan.by_route[route.index()].as_ref().or(plan.key.as_ref());
            if let Some(limit) = limit {
                headers = self.check_keyed(limit, key.shared_id())?;
            }
            metered = Some((plan, key));
        }
        // 2. The stage: stage × method, else the stage's default.
        let limit = route
            .and_then(|route| limits.by_route[route.index()].as_ref())
            .or(limits.default.as_ref());
        if let Some(limit) = limit {
            let stage_headers = self.check_direct(limit)?;
            headers = headers.or(stage_headers);
        }
        // 3. The quota, once every throttle has admitted the request.
        if let Some((plan, key)) = metered {
            let now = unix_now(&self.clock);
            if let Some(quota) = &plan.quota {
                quota.consume(key.shared_id(), now).map_err(|seconds| {
                    GatewayError::new(GatewayResponseType::QuotaExceeded)
                        .header(RETRY_AFTER, retry_after(seconds))
                })?;
            }
            let day = now.div_euclid(86_400);
            *plan
                .daily
                .entry((Arc::clone(key.shared_id()), day))
                .or_insert(0) += 1;
        }
        Ok(headers.filter(|_| self.headers))
    }

    /// Every so often: drop per-key throttle state that equals a fresh bucket when a limiter
    /// tracks more keys than allowed, and daily counts past their retention.
    fn housekeeping(&self) {
        let decisions = self.decisions.fetch_add(1, Ordering::Relaxed);
        if decisions % HOUSEKEEPING_EVERY != HOUSEKEEPING_EVERY - 1 {
            return;
        }
        for plan in &self.plans {
            for limit in plan.key.iter().chain(plan.by_route.iter().flatten()) {
                if let Limit::Bucket { limiter, .. } = limit
                    && limiter.len() > self.max_tracked_keys
                {
                    limiter.retain_recent();
                    limiter.shrink_to_fit();
                }
            }
            let oldest = unix_now(&self.clock).div_euclid(86_400) - DAILY_RETENTION_DAYS;
            plan.daily.retain(|(_, day), _| *day >= oldest);
        }
    }

    /// How many keys the plans' throttles track, for tests of the bound.
    #[cfg(test)]
    fn tracked_keys(&self) -> usize {
        self.plans
            .iter()
            .flat_map(|plan| plan.key.iter().chain(plan.by_route.iter().flatten()))
            .map(|limit| match limit {
                Limit::Bucket { limiter, .. } => limiter.len(),
                Limit::Block => 0,
            })
            .sum()
    }

    fn plan(&self, plan_id: &str) -> Result<&PlanRuntime, ConfigError> {
        self.plans
            .iter()
            .find(|plan| &*plan.id == plan_id)
            .ok_or_else(|| {
                ConfigError::new(format!("usage_plans[{plan_id}]"), "no plan has this id")
            })
    }

    fn quota(&self, plan_id: &str) -> Result<&QuotaCounter, ConfigError> {
        self.plan(plan_id)?.quota.as_ref().ok_or_else(|| {
            ConfigError::new(
                format!("usage_plans[{plan_id}].quota"),
                "the plan has no quota",
            )
        })
    }
}

/// A key's use of its quota in the current period.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyUsage {
    /// Requests counted in the period.
    pub used: u64,
    /// Requests left in the period.
    pub remaining: u64,
    /// The period's limit (the plan's, less the offset in the first period).
    pub limit: u64,
    /// The period's start, Unix seconds (UTC).
    pub period_start: i64,
    /// The period's end (the next period's start), Unix seconds (UTC).
    pub period_end: i64,
}

/// Requests admitted for one key on one UTC day.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DailyUsage {
    /// The key's id.
    pub key_id: String,
    /// The day, `YYYY-MM-DD`.
    pub date: String,
    /// Requests admitted that day.
    pub requests: u64,
}

/// The usage API of a gateway's plans (API Gateway's `GetUsage` / `UpdateUsage`): read, extend
/// or reset a key's quota, and export daily counts for billing. Get it from
/// [`Gateway::usage_plans`](crate::Gateway::usage_plans); cheap to clone.
#[derive(Clone)]
pub struct UsagePlans {
    pub(crate) engine: Arc<ThrottleEngine>,
}

impl UsagePlans {
    /// The key's usage of the plan's quota in the current period.
    pub fn usage(&self, plan_id: &str, key_id: &str) -> Result<KeyUsage, ConfigError> {
        let quota = self.engine.quota(plan_id)?;
        let now = unix_now(&self.engine.clock);
        let (period, start, end) = period_of(quota.quota.period, now);
        let limit = quota.limit_for(period);
        let remaining = quota
            .remaining
            .get(key_id)
            .filter(|entry| entry.0 == period)
            .map_or(limit, |entry| entry.1);
        Ok(KeyUsage {
            used: limit.saturating_sub(remaining),
            remaining,
            limit,
            period_start: start,
            period_end: end,
        })
    }

    /// Sets the requests the key has left in the current period (API Gateway's
    /// `replace /remaining`).
    pub fn set_remaining(
        &self,
        plan_id: &str,
        key_id: &str,
        remaining: u64,
    ) -> Result<(), ConfigError> {
        let quota = self.engine.quota(plan_id)?;
        quota.update(key_id, unix_now(&self.engine.clock), |_, _| remaining);
        Ok(())
    }

    /// Gives the key `extra` more requests in the current period.
    pub fn extend(&self, plan_id: &str, key_id: &str, extra: u64) -> Result<(), ConfigError> {
        let quota = self.engine.quota(plan_id)?;
        quota.update(key_id, unix_now(&self.engine.clock), |left, _| {
            left.saturating_add(extra)
        });
        Ok(())
    }

    /// Gives the key its whole limit back for the current period.
    pub fn reset(&self, plan_id: &str, key_id: &str) -> Result<(), ConfigError> {
        let quota = self.engine.quota(plan_id)?;
        quota.update(key_id, unix_now(&self.engine.clock), |_, limit| limit);
        Ok(())
    }

    /// Requests admitted per key per UTC day over the last 35 days, by key then date.
    pub fn daily_usage(&self, plan_id: &str) -> Result<Vec<DailyUsage>, ConfigError> {
        let plan = self.engine.plan(plan_id)?;
        let mut rows: Vec<DailyUsage> = plan
            .daily
            .iter()
            .map(|entry| {
                let ((key, day), requests) = (entry.key(), *entry.value());
                let date = OffsetDateTime::from_unix_timestamp(day * 86_400)
                    .map(|time| {
                        let date = time.date();
                        format!(
                            "{:04}-{:02}-{:02}",
                            date.year(),
                            u8::from(date.month()),
                            date.day()
                        )
                    })
                    .unwrap_or_default();
                DailyUsage {
                    key_id: key.to_string(),
                    date,
                    requests,
                }
            })
            .collect();
        rows.sort_by(|a, b| (&a.key_id, &a.date).cmp(&(&b.key_id, &b.date)));
        Ok(rows)
    }
}

impl fmt::Debug for UsagePlans {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UsagePlans")
            .field(
                "plans",
                &self.engine.plans.iter().map(|p| &*p.id).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl fmt::Debug for ThrottleEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThrottleEngine")
            .field("stages", &self.stages.len())
            .field("plans", &self.plans.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2026-03-01T00:00:00Z, a Sunday.
    const MARCH_1: i64 = 1_772_323_200;

    #[test]
    fn periods_follow_the_utc_calendar() {
        let (day, start, end) = period_of(QuotaPeriod::Day, MARCH_1 + 3600);
        assert_eq!((start, end), (MARCH_1, MARCH_1 + 86_400));
        assert_eq!(period_of(QuotaPeriod::Day, MARCH_1 + 86_399).0, day);
        assert_eq!(period_of(QuotaPeriod::Day, MARCH_1 + 86_400).0, day + 1);

        // The week of Sunday 1 March started on Monday 23 February.
        let (_, start, end) = period_of(QuotaPeriod::Week, MARCH_1);
        assert_eq!(start, MARCH_1 - 6 * 86_400);
        assert_eq!(
            end,
            MARCH_1 + 86_400,
            "the next week starts on Monday 2 March"
        );
        assert_ne!(
            period_of(QuotaPeriod::Week, MARCH_1 + 86_399).0,
            period_of(QuotaPeriod::Week, MARCH_1 + 86_400).0
        );

        // February 2026 has 28 days.
        let (february, start, end) = period_of(QuotaPeriod::Month, MARCH_1 - 1);
        assert_eq!(start, MARCH_1 - 28 * 86_400);
        assert_eq!(end, MARCH_1);
        let (march, start, _) = period_of(QuotaPeriod::Month, MARCH_1);
        assert_eq!(start, MARCH_1);
        assert_eq!(march, february + 1);
        // December rolls into the next year.
        let december_31 = 1_798_675_200;
        let (december, _, end) = period_of(QuotaPeriod::Month, december_31);
        assert_eq!(end, december_31 + 86_400, "2027-01-01");
        assert_eq!(period_of(QuotaPeriod::Month, end).0, december + 1);

        // Far outside the calendar: one period, no panic.
        assert_eq!(period_of(QuotaPeriod::Month, i64::MAX).0, i64::MAX);
        assert!(period_of(QuotaPeriod::Day, i64::MIN).1 <= i64::MIN + 86_400);
    }

    #[test]
    fn rate_limit_headers() {
        let settings = ThrottleSettings {
            rate: 2.0,
            burst: 10,
        };
        let headers = RateLimitHeaders::new(&settings, 7);
        assert_eq!(
            headers,
            RateLimitHeaders {
                limit: 10,
                remaining: 7,
                reset_seconds: 2
            }
        );
        let mut map = http::HeaderMap::new();
        headers.write(&mut map);
        assert_eq!(map["x-ratelimit-limit"], "10");
        assert_eq!(map["x-ratelimit-remaining"], "7");
        assert_eq!(map["x-ratelimit-reset"], "2");
    }

    #[test]
    fn retry_after_rounds_up_to_at_least_one_second() {
        let error = throttled(Duration::from_millis(1), None, false);
        let rendered =
            crate::response::GatewayResponses::default().render::<String>(error, false, None);
        assert_eq!(rendered.headers()[RETRY_AFTER], "1");
        let error = throttled(Duration::from_millis(2001), None, false);
        let rendered =
            crate::response::GatewayResponses::default().render::<String>(error, false, None);
        assert_eq!(rendered.headers()[RETRY_AFTER], "3");
    }

    #[test]
    fn the_tracked_key_bound_drops_only_full_buckets() {
        let manual = crate::clock::ManualClock::starting_at(MARCH_1 as u64);
        let stage = Stage::builder("prod").build().unwrap();
        let routes = RouteTable::new(
            vec![crate::Route::new(http::Method::GET, "/x").api_key_required(true)],
            crate::route::UnmatchedRoutes::Reject,
            1024,
        )
        .unwrap();
        let plan = UsagePlan::builder("p")
            .stage("prod")
            .throttle(ThrottleSettings {
                rate: 1.0,
                burst: 2,
            })
            .build()
            .unwrap();
        let engine = ThrottleEngine::new(vec![plan], &[stage], &routes, manual.clock(), true, 100)
            .unwrap()
            .unwrap();
        let Some(Limit::Bucket { limiter, .. }) = &engine.plans[0].key else {
            panic!("a bucket")
        };
        for i in 0..5_000 {
            let key: Arc<str> = Arc::from(format!("key-{i}"));
            assert!(limiter.check_key(&key).is_ok());
            engine.housekeeping();
        }
        // Every key has spent a token: nothing may be dropped yet, whatever the bound.
        assert_eq!(engine.tracked_keys(), 5_000);
        manual.advance(Duration::from_secs(3));
        for _ in 0..HOUSEKEEPING_EVERY {
            engine.housekeeping();
        }
        assert_eq!(
            engine.tracked_keys(),
            0,
            "refilled buckets are dropped past the bound"
        );
    }
}
