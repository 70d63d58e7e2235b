//! The throttles and quotas the gateway enforces, and the usage API over them.

use std::cell::Cell;
use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use compact_str::CompactString;
use governor::middleware::{NoOpMiddleware, StateInformationMiddleware};
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed, StateStore};
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

#[cfg(feature = "redis")]
mod shared;

#[cfg(feature = "redis")]
use crate::store::QuotaTake;
#[cfg(feature = "redis")]
pub(crate) use shared::ThrottleFuture;

type Direct = RateLimiter<NotKeyed, InMemoryState, ThrottleClock, StateInformationMiddleware>;
type Keyed = RateLimiter<u32, SlotStates, ThrottleClock, StateInformationMiddleware>;
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// The gateway's clock as governor sees it (kept private so that governor's traits stay out
/// of the public API).
#[derive(Clone, Debug)]
struct ThrottleClock(GatewayClock);

impl governor::clock::Clock for ThrottleClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        Nanos::from(decision_time(&self.0))
    }
}

/// The time of the decision being made on this thread (see [`DECIDING_AT`]), else a reading
/// of `clock`.
fn decision_time(clock: &GatewayClock) -> Duration {
    DECIDING_AT.get().unwrap_or_else(|| clock.elapsed())
}

thread_local! {
    /// The monotonic time of the decision [`ThrottleEngine::apply`] is making on this thread,
    /// if it is making one: the decision's throttles and quota share one clock reading (a
    /// reading costs as much as a throttle's check).
    static DECIDING_AT: Cell<Option<Duration>> = const { Cell::new(None) };
}

/// While alive, [`ThrottleClock`]s on this thread read `now` (see [`DECIDING_AT`]). Only one
/// engine decides on a thread at a time, and all its limiters run on its one clock.
struct Deciding;

impl Deciding {
    fn at(now: Duration) -> Self {
        DECIDING_AT.set(Some(now));
        Self
    }
}

impl Drop for Deciding {
    fn drop(&mut self) {
        DECIDING_AT.set(None);
    }
}

/// One GCRA state per key of a plan, indexed by the key's slot: the memory is exactly one
/// 8-byte state per key, with nothing to hash on the request path and nothing to evict.
struct SlotStates {
    states: SlotStateArray,
    /// Slots are handed out by the plan and always in range; should one not be, it shares
    /// this state rather than going unthrottled.
    stray: InMemoryState,
}

enum SlotStateArray {
    /// A per-method override's states, one per key.
    Own(Box<[InMemoryState]>),
    /// The plan's own throttle keeps its state in the key's slot, on the cache line that the
    /// quota's count is on: with many active keys, one cache miss fewer per request.
    InSlots(Arc<[KeySlot]>),
}

impl StateStore for SlotStates {
    type Key = u32;

    fn measure_and_replace<T, F, E>(&self, slot: &u32, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let state = match &self.states {
            SlotStateArray::Own(states) => states.get(*slot as usize),
            SlotStateArray::InSlots(slots) => slots.get(*slot as usize).map(|slot| &slot.gcra),
        };
        state
            .unwrap_or(&self.stray)
            .measure_and_replace(&NotKeyed::NonKey, f)
    }
}

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

/// `settings` for one of `instances` sharing them: the rate divided, the burst divided
/// rounding up (so never below 1). With one instance, `settings` themselves.
fn share_of(settings: ThrottleSettings, instances: u32) -> ThrottleSettings {
    if instances <= 1 || settings.burst == 0 {
        return settings;
    }
    ThrottleSettings {
        rate: (settings.rate / f64::from(instances)).max(super::MIN_RATE),
        burst: settings.burst.div_ceil(instances),
    }
}

fn direct(settings: ThrottleSettings, clock: &GatewayClock) -> Limit<Direct> {
    match governor_quota(&settings) {
        Some(quota) => Limit::Bucket {
            settings,
            limiter: RateLimiter::direct_with_clock(quota, ThrottleClock(clock.clone()))
                .with_middleware::<StateInformationMiddleware>(),
        },
        None => Limit::Block,
    }
}

fn keyed(settings: ThrottleSettings, clock: &GatewayClock, states: SlotStateArray) -> Limit<Keyed> {
    match governor_quota(&settings) {
        Some(quota) => {
            let states = SlotStates {
                states,
                stray: InMemoryState::default(),
            };
            Limit::Bucket {
                settings,
                limiter: RateLimiter::<u32, SlotStates, ThrottleClock, NoOpMiddleware<Nanos>>::new(
                    quota,
                    states,
                    ThrottleClock(clock.clone()),
                )
                .with_middleware::<StateInformationMiddleware>(),
            }
        }
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

    #[inline]
    fn values(&self) -> [(HeaderName, HeaderValue); 3] {
        [
            (LIMIT, number_value(u64::from(self.limit))),
            (REMAINING, number_value(u64::from(self.remaining))),
            (RESET, number_value(self.reset_seconds)),
        ]
    }

    #[inline]
    pub(crate) fn write(&self, headers: &mut http::HeaderMap) {
        for (name, value) in self.values() {
            headers.insert(name, value);
        }
    }

    fn onto(self, error: GatewayError) -> GatewayError {
        self.values()
            .into_iter()
            .fold(error, |error, (name, value)| error.header(name, value))
    }
}

/// The numbers below 10,000, each as four zero-padded digits, built at compile time.
static PADDED_DIGITS: [u8; 40_000] = {
    let mut digits = [0u8; 40_000];
    let mut number = 0;
    while number < 10_000 {
        let mut place = 0;
        let mut rest = number;
        while place < 4 {
            digits[number * 4 + 3 - place] = b'0' + (rest % 10) as u8;
            rest /= 10;
            place += 1;
        }
        number += 1;
    }
    digits
};

/// [`PADDED_DIGITS`] as text (checked at compile time).
static PADDED_NUMBERS: &str = match std::str::from_utf8(&PADDED_DIGITS) {
    Ok(text) => text,
    Err(_) => panic!("digits are ASCII"),
};

/// `number` as a header value. Rate-limit headers carry three numbers on every response; those
/// below 10,000 (which is nearly all of them) point into a static table instead of costing a
/// heap allocation each (and, being `'static` text, skip the shared-bytes checks too).
#[inline]
fn number_value(number: u64) -> HeaderValue {
    let small = usize::try_from(number).ok().filter(|small| *small < 10_000);
    let Some(small) = small else {
        return HeaderValue::from(number);
    };
    let leading_zeros = match small {
        0..10 => 3,
        10..100 => 2,
        100..1000 => 1,
        _ => 0,
    };
    match PADDED_NUMBERS.get(small * 4 + leading_zeros..small * 4 + 4) {
        // Digits only: `from_static`'s check of them cannot fail.
        Some(digits) => HeaderValue::from_static(digits),
        None => HeaderValue::from(number),
    }
}

/// `QUOTA_EXCEEDED`, renewed in `seconds`, with the rate-limit headers of the throttle that
/// let the request through.
// The rejections are cold: the compiler then lays them out away from the request path's
// common course (see `crate::rarely`).
#[cold]
fn quota_exceeded(seconds: u64, headers: Option<RateLimitHeaders>) -> GatewayError {
    let error = GatewayError::new(GatewayResponseType::QuotaExceeded)
        .header(RETRY_AFTER, retry_after(seconds));
    match headers {
        Some(headers) => headers.onto(error),
        None => error,
    }
}

fn retry_after(seconds: u64) -> HeaderValue {
    number_value(seconds.max(1))
}

/// A bucket of rate 0 and burst 0.
#[cold]
fn blocked() -> GatewayError {
    throttled(Duration::from_secs(1), None, false)
}

#[cold]
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

/// [`unix_now`] at the monotonic reading `elapsed` of `clock`.
#[inline]
fn unix_at(clock: &GatewayClock, elapsed: Duration) -> i64 {
    i64::try_from(clock.unix_seconds_at(elapsed)).unwrap_or(i64::MAX)
}

/// A key's counts in one plan: its quota in the current period and its daily totals.
#[derive(Default, Clone)]
struct SlotCounts {
    quota_period: Option<i64>,
    remaining: u64,
    /// Requests admitted in the quota period (kept apart from `remaining`, which the usage
    /// API can change).
    used: u64,
    /// (UTC day, requests admitted) for the day of the latest request, kept inline so that
    /// counting a request touches no other memory.
    today: (i64, u64),
    /// (UTC day, requests admitted) for earlier days, oldest first, at most the retention's
    /// worth.
    past_days: Vec<(i64, u64)>,
}

impl SlotCounts {
    /// Counts a request on a new `day`, keeping the finished day's count. Cold: it runs once
    /// a day per key, and its code stays out of the request path's.
    #[cold]
    fn start_day(&mut self, day: i64) {
        let finished = std::mem::replace(&mut self.today, (day, 1));
        if finished.1 > 0 {
            self.past_days.push(finished);
        }
        self.past_days
            .retain(|(past, _)| *past > day - DAILY_RETENTION_DAYS);
    }

    fn days(&self) -> impl Iterator<Item = (i64, u64)> + '_ {
        let today = Some(self.today).filter(|(_, requests)| *requests > 0);
        self.past_days.iter().copied().chain(today)
    }
}

struct KeySlot {
    /// The key's GCRA state for the plan's throttle.
    gcra: InMemoryState,
    counts: Mutex<SlotCounts>,
    id: Arc<str>,
}

impl KeySlot {
    fn counts(&self) -> MutexGuard<'_, SlotCounts> {
        // Every update is a few integer assignments; a panic cannot leave them half done.
        self.counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

struct PlanRuntime {
    id: Box<str>,
    key: Option<Limit<Keyed>>,
    by_route: Vec<Option<Limit<Keyed>>>,
    quota: Option<Quota>,
    first_period: i64,
    slots: Arc<[KeySlot]>,
    slot_of: FastMap<Arc<str>, u32>,
}

impl PlanRuntime {
    fn limit_for(&self, quota: &Quota, period: i64) -> u64 {
        if period == self.first_period {
            quota.limit - quota.offset
        } else {
            quota.limit
        }
    }

    /// The key's counts with its quota brought to the period `now` is in. A clock that goes
    /// back never returns a period already left behind (which would give quota back).
    fn current<'a>(
        &self,
        slot: &'a KeySlot,
        now: i64,
    ) -> (MutexGuard<'a, SlotCounts>, Option<(i64, i64, u64)>) {
        let mut counts = slot.counts();
        let period = self.quota.map(|quota| {
            let (period, start, end) = period_of(quota.period, now);
            let limit = self.limit_for(&quota, period);
            if counts.quota_period.is_none_or(|current| period > current) {
                counts.quota_period = Some(period);
                counts.remaining = limit;
                counts.used = 0;
            }
            (start, end, limit)
        });
        (counts, period)
    }

    /// Takes one request from the key's quota (if the plan has one) and counts it for the
    /// day; or says how many seconds until the quota renews.
    #[inline]
    fn admit(&self, slot: &KeySlot, now: i64) -> Result<(), u64> {
        let (mut counts, period) = self.current(slot, now);
        if let Some((_, end, _)) = period {
            if counts.remaining == 0 {
                return Err(u64::try_from(end.saturating_sub(now)).unwrap_or(u64::MAX));
            }
            counts.remaining -= 1;
            counts.used += 1;
        }
        let day = now.div_euclid(86_400);
        if counts.today.0 == day {
            counts.today.1 += 1;
        } else {
            counts.start_day(day);
        }
        Ok(())
    }

    fn slot(&self, key_id: &str) -> Result<&KeySlot, ConfigError> {
        self.slot_of
            .get(key_id)
            .and_then(|slot| self.slots.get(*slot as usize))
            .ok_or_else(|| {
                ConfigError::new(
                    format!("usage_plans[{}].keys[{key_id}]", self.id),
                    "the key is not in the plan",
                )
            })
    }
}

/// A key's plan and slot on one stage of one engine, remembered in the key's own record.
///
/// One word, read and written whole: the stage's token (high 32 bits), then the plan's index
/// plus one (0: in no plan; 8 bits), then the slot (24 bits). Tokens are never reused, so a
/// memo written for another engine or stage never matches; plans and slots too large to
/// encode are simply not remembered.
#[derive(Default)]
pub(crate) struct PlanMemo(AtomicU64);

impl PlanMemo {
    const NOT_A_MEMBER: u64 = 0;

    fn get(&self, token: u32) -> Option<Option<(usize, u32)>> {
        let memo = self.0.load(Ordering::Relaxed);
        if token == 0 || memo >> 32 != u64::from(token) {
            return None;
        }
        let plan = (memo >> 24) & 0xff;
        let slot = (memo & 0xff_ffff) as u32;
        Some((plan != Self::NOT_A_MEMBER).then(|| (plan as usize - 1, slot)))
    }

    fn set(&self, token: u32, membership: Option<(usize, u32)>) {
        let encoded = match membership {
            None => Self::NOT_A_MEMBER,
            Some((plan, slot)) if plan < 0xff && slot <= 0xff_ffff => {
                (plan as u64 + 1) << 24 | u64::from(slot)
            }
            Some(_) => return,
        };
        if token != 0 {
            self.0
                .store(u64::from(token) << 32 | encoded, Ordering::Relaxed);
        }
    }
}

// A memo is as good as the word it is in, whatever the clone or comparison of the key.
impl Clone for PlanMemo {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl PartialEq for PlanMemo {
    fn eq(&self, _other: &Self) -> bool {
        true
    }
}

impl Eq for PlanMemo {}

/// A token no stage of any engine has had; 0 once they run out (no memo then).
fn next_memo_token() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    NEXT.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |token| {
        token.checked_add(1)
    })
    .unwrap_or(0)
}

struct StageLimits {
    stage: Stage,
    /// Identifies this stage of this engine in [`PlanMemo`]s.
    memo_token: u32,
    default: Option<Limit<Direct>>,
    by_route: Vec<Option<Limit<Direct>>>,
    /// Key id → its plan on this stage and its slot in that plan. Ids of up to 24 bytes sit
    /// in the table itself, so a lookup does not chase a pointer to compare them: on the
    /// request path that is one cache miss fewer.
    members: FastMap<CompactString, (usize, u32)>,
}

/// Throttles and quotas for one gateway.
pub(crate) struct ThrottleEngine {
    clock: GatewayClock,
    stages: Vec<StageLimits>,
    plans: Vec<PlanRuntime>,
    headers: bool,
    /// The limits on Redis, when the gateway has a backend: the buckets and quotas above
    /// then only say which limits apply.
    #[cfg(feature = "redis")]
    shared: Option<Box<shared::SharedLimits>>,
}

/// A throttle and quota decision, made now or waiting for the shared backend.
pub(crate) enum Throttling {
    Done(Result<Option<RateLimitHeaders>, GatewayError>),
    #[cfg(feature = "redis")]
    Pending(ThrottleFuture),
}

/// What a request is metered by, once its stage, route and key are known.
struct Metering<'a> {
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    stage_index: usize,
    client: Option<ClientMetering<'a>>,
    /// The stage's throttle for the route (stage × method), else the stage's own, with the
    /// route's index when it is the route's.
    stage_limit: Option<(&'a Limit<Direct>, Option<usize>)>,
}

/// The client's part of [`Metering`]: its plan, its slot, and its throttle (key × method, with
/// the route's index, else key).
struct ClientMetering<'a> {
    plan: &'a PlanRuntime,
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    plan_index: usize,
    slot: u32,
    key: &'a KeySlot,
    limit: Option<(&'a Limit<Keyed>, Option<usize>)>,
}

impl ThrottleEngine {
    /// The engine for these plans, stages and routes; `None` when nothing is throttled.
    pub(crate) fn new(
        plans: Vec<UsagePlan>,
        stages: &[Stage],
        routes: &RouteTable,
        clock: GatewayClock,
        headers: bool,
        share_with: Option<&ThrottleEngine>,
    ) -> Result<Option<Self>, ConfigError> {
        Self::with_share(plans, stages, routes, clock, headers, share_with, 1)
    }

    /// [`new`](Self::new), with every throttle and quota divided among `instances`.
    fn with_share(
        plans: Vec<UsagePlan>,
        stages: &[Stage],
        routes: &RouteTable,
        clock: GatewayClock,
        headers: bool,
        share_with: Option<&ThrottleEngine>,
        instances: u32,
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
        for (key, settings) in routes.routes() {
            if let Some(throttle) = &settings.throttle {
                super::validate_throttle(&format!("routes[{key}].throttle"), throttle)?;
            }
        }
        let mut stage_limits: Vec<StageLimits> = stages
            .iter()
            .map(|stage| StageLimits {
                stage: stage.clone(),
                default: stage
                    .throttle()
                    .map(|t| direct(share_of(*t, instances), &clock)),
                by_route: route_throttles
                    .iter()
                    .map(|throttle| throttle.map(|t| direct(share_of(t, instances), &clock)))
                    .collect(),
                members: FastMap::default(),
                memo_token: next_memo_token(),
            })
            .collect();
        let first_unix = unix_now(&clock);
        let mut runtimes = Vec::with_capacity(plans.len());
        for (plan_index, plan) in plans.into_iter().enumerate() {
            let field = format!("usage_plans[{}]", plan.id);
            if runtimes.iter().any(|p: &PlanRuntime| *p.id == *plan.id) {
                return Err(ConfigError::new(field, "two plans have this id"));
            }
            let mut slots = Vec::with_capacity(plan.keys.len());
            let mut slot_of = FastMap::default();
            for key in &plan.keys {
                let id: Arc<str> = Arc::from(key.as_str());
                if slot_of.contains_key(&id) {
                    continue;
                }
                let slot = u32::try_from(slots.len()).map_err(|_| {
                    ConfigError::new(format!("{field}.keys"), "a plan holds at most 2^32 keys")
                })?;
                slot_of.insert(Arc::clone(&id), slot);
                slots.push(KeySlot {
                    gcra: InMemoryState::default(),
                    counts: Mutex::new(SlotCounts::default()),
                    id,
                });
            }
            // Another deployment's plan with the same keys and quota lends its slots: its keys'
            // buckets and counts go on, and requests of both deployments count against one
            // quota.
            let lent = share_with
                .and_then(|engine| engine.plans.iter().find(|p| *p.id == *plan.id))
                .filter(|other| {
                    other.quota == plan.quota
                        && other.slots.len() == slots.len()
                        && other.slots.iter().zip(&slots).all(|(a, b)| a.id == b.id)
                });
            let slots: Arc<[KeySlot]> = match lent {
                Some(other) => Arc::clone(&other.slots),
                None => slots.into(),
            };
            let mut by_route: Vec<Option<Limit<Keyed>>> =
                route_throttles.iter().map(|_| None).collect();
            for (route, throttle) in &plan.method_throttles {
                let index = routes.route_index(route).ok_or_else(|| {
                    ConfigError::new(
                        format!("{field}.method_throttles[{route}]"),
                        "no route has this key",
                    )
                })?;
                let states = (0..slots.len()).map(|_| InMemoryState::default()).collect();
                by_route[index] = Some(keyed(
                    share_of(*throttle, instances),
                    &clock,
                    SlotStateArray::Own(states),
                ));
            }
            for (position, stage_name) in plan.stages.iter().enumerate() {
                if plan.stages[..position].contains(stage_name) {
                    return Err(ConfigError::new(
                        format!("{field}.stages[{stage_name}]"),
                        "the stage is listed twice",
                    ));
                }
                let limits = stage_limits
                    .iter_mut()
                    .find(|limits| limits.stage.name() == stage_name)
                    .ok_or_else(|| {
                        ConfigError::new(
                            format!("{field}.stages[{stage_name}]"),
                            "no stage has this name",
                        )
                    })?;
                for (id, slot) in &slot_of {
                    if let Some((other, _)) = limits
                        .members
                        .insert(CompactString::from(&**id), (plan_index, *slot))
                    {
                        let other = runtimes
                            .get(other)
                            .map_or(&*plan.id, |p: &PlanRuntime| &*p.id)
                            .to_owned();
                        return Err(ConfigError::new(
                            format!("{field}.keys[{id}]"),
                            format!(
                                "the key is already in plan `{other}` for stage `{stage_name}`"
                            ),
                        ));
                    }
                }
            }
            let quota = plan.quota.map(|quota| Quota {
                limit: quota.limit.div_ceil(u64::from(instances.max(1))),
                offset: quota.offset / u64::from(instances.max(1)),
                ..quota
            });
            runtimes.push(PlanRuntime {
                id: plan.id.into(),
                key: plan.throttle.map(|t| {
                    keyed(
                        share_of(t, instances),
                        &clock,
                        SlotStateArray::InSlots(Arc::clone(&slots)),
                    )
                }),
                by_route,
                quota,
                first_period: quota.map_or(0, |quota| period_of(quota.period, first_unix).0),
                slots,
                slot_of,
            });
        }
        Ok(Some(Self {
            clock,
            stages: stage_limits,
            plans: runtimes,
            headers,
            #[cfg(feature = "redis")]
            shared: None,
        }))
    }

    #[inline]
    fn check_direct(
        &self,
        limit: &Limit<Direct>,
    ) -> Result<Option<RateLimitHeaders>, GatewayError> {
        match limit {
            Limit::Block => Err(blocked()),
            Limit::Bucket { settings, limiter } => match limiter.check() {
                Ok(snapshot) => Ok(Some(RateLimitHeaders::new(
                    settings,
                    snapshot.remaining_burst_capacity(),
                ))),
                Err(not_until) => Err(self.not_until(&not_until, settings)),
            },
        }
    }

    #[inline]
    fn check_keyed(
        &self,
        limit: &Limit<Keyed>,
        slot: u32,
    ) -> Result<Option<RateLimitHeaders>, GatewayError> {
        match limit {
            Limit::Block => Err(blocked()),
            Limit::Bucket { settings, limiter } => match limiter.check_key(&slot) {
                Ok(snapshot) => Ok(Some(RateLimitHeaders::new(
                    settings,
                    snapshot.remaining_burst_capacity(),
                ))),
                Err(not_until) => Err(self.not_until(&not_until, settings)),
            },
        }
    }

    #[cold]
    fn not_until(&self, not_until: &NotUntil<Nanos>, settings: &ThrottleSettings) -> GatewayError {
        throttled(
            // From the time governor decided at, not a second reading.
            not_until.wait_time_from(Nanos::from(decision_time(&self.clock))),
            Some(settings),
            self.headers,
        )
    }

    /// The request's throttle and quota decision: made now in memory (or from leases in hand),
    /// or a future that asks Redis.
    #[inline]
    pub(crate) fn admit(self: &Arc<Self>, context: &RequestContext) -> Throttling {
        #[cfg(feature = "redis")]
        if let Some(shared) = &self.shared {
            return self.admit_shared(shared, context);
        }
        Throttling::Done(self.apply(context))
    }

    /// Refuses the in-memory usage API when the counts are on Redis.
    fn in_memory(&self) -> Result<(), ConfigError> {
        #[cfg(feature = "redis")]
        if self.shared.is_some() {
            return Err(ConfigError::new(
                "redis",
                "the counts are on Redis: use the usage API's `_async` methods",
            ));
        }
        Ok(())
    }

    /// What meters a request whose stage, route and key are in `context`: `None` when nothing
    /// does, an error when a metered route has no key in a plan for the stage.
    #[inline]
    fn resolve(&self, context: &RequestContext) -> Result<Option<Metering<'_>>, GatewayError> {
        let route = context.route();
        let metered_route =
            route.is_some_and(|route| route.settings().api_key_required) && !self.plans.is_empty();
        let found = context.stage().and_then(|stage| {
            self.stages
                .iter()
                .enumerate()
                .find(|(_, limits)| limits.stage.is(stage))
        });
        let Some((stage_index, limits)) = found else {
            // Every stage of the gateway has its limits; a request without one cannot be in a
            // plan, so a metered route refuses it.
            return if metered_route {
                Err(GatewayError::new(GatewayResponseType::InvalidApiKey))
            } else {
                Ok(None)
            };
        };
        // The client: key × method, else key. Only routes that require a key are metered.
        let client = match (route, context.api_key(), metered_route) {
            (Some(route), Some(key), true) => {
                let membership = key.plan_memo.get(limits.memo_token).unwrap_or_else(|| {
                    let membership = limits.members.get(key.id()).copied();
                    key.plan_memo.set(limits.memo_token, membership);
                    membership
                });
                let (plan_index, slot) = membership
                    .ok_or_else(|| GatewayError::new(GatewayResponseType::InvalidApiKey))?;
                let (plan, counts) = self
                    .plans
                    .get(plan_index)
                    .and_then(|plan| Some((plan, plan.slots.get(slot as usize)?)))
                    .ok_or_else(|| GatewayError::new(GatewayResponseType::InvalidApiKey))?;
                let limit = match plan.by_route.get(route.index()).and_then(Option::as_ref) {
                    Some(limit) => Some((limit, Some(route.index()))),
                    None => plan.key.as_ref().map(|limit| (limit, None)),
                };
                Some(ClientMetering {
                    plan,
                    plan_index,
                    slot,
                    key: counts,
                    limit,
                })
            }
            (_, _, true) => return Err(GatewayError::new(GatewayResponseType::InvalidApiKey)),
            _ => None,
        };
        let route_limit = route.and_then(|route| {
            let limit = limits.by_route.get(route.index())?.as_ref()?;
            Some((limit, Some(route.index())))
        });
        let stage_limit =
            route_limit.or_else(|| limits.default.as_ref().map(|limit| (limit, None)));
        Ok(Some(Metering {
            stage_index,
            client,
            stage_limit,
        }))
    }

    /// Applies the throttles and the quota in memory to a request whose stage, route and key
    /// are in `context`; returns the rate-limit headers for the response.
    #[inline]
    pub(crate) fn apply(
        &self,
        context: &RequestContext,
    ) -> Result<Option<RateLimitHeaders>, GatewayError> {
        let Some(metering) = self.resolve(context)? else {
            return Ok(None);
        };
        let now = self.clock.elapsed();
        let _deciding = Deciding::at(now);
        let mut headers = None;
        if let Some(ClientMetering {
            slot,
            limit: Some((limit, _)),
            ..
        }) = &metering.client
        {
            headers = self.check_keyed(limit, *slot)?;
        }
        if let Some((limit, _)) = metering.stage_limit {
            let stage_headers = self.check_direct(limit)?;
            headers = headers.or(stage_headers);
        }
        let headers = headers.filter(|_| self.headers);
        if let Some(client) = &metering.client {
            client
                .plan
                .admit(client.key, unix_at(&self.clock, now))
                .map_err(|seconds| quota_exceeded(seconds, headers))?;
        }
        Ok(headers)
    }

    fn plan(&self, plan_id: &str) -> Result<&PlanRuntime, ConfigError> {
        self.plans
            .iter()
            .find(|plan| &*plan.id == plan_id)
            .ok_or_else(|| {
                ConfigError::new(format!("usage_plans[{plan_id}]"), "no plan has this id")
            })
    }

    fn quota(&self, plan_id: &str) -> Result<(&PlanRuntime, Quota), ConfigError> {
        let plan = self.plan(plan_id)?;
        let quota = plan.quota.ok_or_else(|| {
            ConfigError::new(
                format!("usage_plans[{plan_id}].quota"),
                "the plan has no quota",
            )
        })?;
        Ok((plan, quota))
    }

    /// Takes over the quota and daily counts of `from`'s keys, for plans (by id) whose slots
    /// are not already shared with it (other keys, or another quota); their buckets start
    /// full. A plan whose quota changed keeps the requests used in the current period and gives
    /// the key what the new limit leaves.
    pub(crate) fn adopt_usage(&self, from: &ThrottleEngine) {
        // On Redis the counts are shared already.
        if self.in_memory().is_err() {
            return;
        }
        let now = unix_now(&self.clock);
        for plan in &self.plans {
            let Some(old) = from.plans.iter().find(|old| old.id == plan.id) else {
                continue;
            };
            if Arc::ptr_eq(&plan.slots, &old.slots) {
                continue;
            }
            for slot in plan.slots.iter() {
                let Ok(old_slot) = old.slot(&slot.id) else {
                    continue;
                };
                // Brought to the current period first, so that a finished period's count is
                // not carried into this one.
                let mut counts = old.current(old_slot, now).0.clone();
                if plan.quota != old.quota {
                    counts.quota_period = None;
                    let used = counts.used;
                    drop(plan.current(slot, now));
                    let mut mine = slot.counts();
                    let renewed = mine.remaining;
                    counts.quota_period = mine.quota_period;
                    counts.remaining = renewed.saturating_sub(used);
                    *mine = counts;
                } else {
                    *slot.counts() = counts;
                }
            }
        }
    }

    /// Changes the remaining quota of a key: `change(remaining, limit)`.
    fn update(&self, plan_id: &str, key_id: &str, change: QuotaChange) -> Result<(), ConfigError> {
        self.in_memory()?;
        let (plan, _) = self.quota(plan_id)?;
        let (mut counts, period) = plan.current(plan.slot(key_id)?, unix_now(&self.clock));
        let limit = period.map_or(0, |(_, _, limit)| limit);
        counts.remaining = change.remaining(counts.remaining, limit);
        Ok(())
    }
}

/// A change the usage API makes to a key's quota.
#[derive(Debug, Clone, Copy)]
pub(crate) enum QuotaChange {
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    Read,
    Extend(u64),
    Set(u64),
    Reset,
}

impl QuotaChange {
    /// What is left after the change, of `left`, in a period of `limit`.
    fn remaining(self, left: u64, limit: u64) -> u64 {
        match self {
            Self::Read => left,
            Self::Extend(extra) => left.saturating_add(extra),
            Self::Set(remaining) => remaining,
            Self::Reset => limit,
        }
    }
}

/// A key's use of its quota in the current period.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyUsage {
    /// Requests admitted in the period.
    pub used: u64,
    /// Requests left in the period (the limit less `used`, unless the usage API changed it).
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
    /// The engine of the deployment serving now.
    pub(crate) engine: Arc<dyn Fn() -> Option<Arc<ThrottleEngine>> + Send + Sync>,
}

impl UsagePlans {
    fn engine(&self) -> Result<Arc<ThrottleEngine>, ConfigError> {
        (self.engine)().ok_or_else(|| {
            ConfigError::new(
                "usage_plans",
                "the deployment serving now has no usage plans or throttles",
            )
        })
    }

    /// The key's usage of the plan's quota in the current period.
    pub fn usage(&self, plan_id: &str, key_id: &str) -> Result<KeyUsage, ConfigError> {
        let engine = self.engine()?;
        engine.in_memory()?;
        let (plan, _) = engine.quota(plan_id)?;
        let (counts, period) = plan.current(plan.slot(key_id)?, unix_now(&engine.clock));
        let (start, end, limit) = period.unwrap_or_default();
        Ok(KeyUsage {
            used: counts.used,
            remaining: counts.remaining,
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
        let engine = self.engine()?;
        engine.update(plan_id, key_id, QuotaChange::Set(remaining))
    }

    /// Gives the key `extra` more requests in the current period.
    pub fn extend(&self, plan_id: &str, key_id: &str, extra: u64) -> Result<(), ConfigError> {
        let engine = self.engine()?;
        engine.update(plan_id, key_id, QuotaChange::Extend(extra))
    }

    /// Gives the key its whole limit back for the current period.
    pub fn reset(&self, plan_id: &str, key_id: &str) -> Result<(), ConfigError> {
        let engine = self.engine()?;
        engine.update(plan_id, key_id, QuotaChange::Reset)
    }

    /// Requests admitted per key per UTC day over the last 35 days, by key then date.
    pub fn daily_usage(&self, plan_id: &str) -> Result<Vec<DailyUsage>, ConfigError> {
        let engine = self.engine()?;
        engine.in_memory()?;
        let plan = engine.plan(plan_id)?;
        let days = plan
            .slots
            .iter()
            .map(|slot| (slot, slot.counts().days().collect()));
        Ok(daily_rows(days, unix_now(&engine.clock)))
    }

    /// [`usage`](Self::usage), also when the counts are on Redis.
    pub async fn usage_async(&self, plan_id: &str, key_id: &str) -> Result<KeyUsage, UsageError> {
        #[cfg(feature = "redis")]
        if let Some(usage) = self.on_redis(plan_id, key_id, QuotaChange::Read).await? {
            return Ok(usage);
        }
        Ok(self.usage(plan_id, key_id)?)
    }

    /// [`set_remaining`](Self::set_remaining), also when the counts are on Redis.
    pub async fn set_remaining_async(
        &self,
        plan_id: &str,
        key_id: &str,
        remaining: u64,
    ) -> Result<(), UsageError> {
        self.change_async(plan_id, key_id, QuotaChange::Set(remaining))
            .await
    }

    /// [`extend`](Self::extend), also when the counts are on Redis.
    pub async fn extend_async(
        &self,
        plan_id: &str,
        key_id: &str,
        extra: u64,
    ) -> Result<(), UsageError> {
        self.change_async(plan_id, key_id, QuotaChange::Extend(extra))
            .await
    }

    /// [`reset`](Self::reset), also when the counts are on Redis.
    pub async fn reset_async(&self, plan_id: &str, key_id: &str) -> Result<(), UsageError> {
        self.change_async(plan_id, key_id, QuotaChange::Reset).await
    }

    async fn change_async(
        &self,
        plan_id: &str,
        key_id: &str,
        change: QuotaChange,
    ) -> Result<(), UsageError> {
        #[cfg(feature = "redis")]
        if self.on_redis(plan_id, key_id, change).await?.is_some() {
            return Ok(());
        }
        Ok(self.engine()?.update(plan_id, key_id, change)?)
    }

    /// [`daily_usage`](Self::daily_usage), also when the counts are on Redis (one call per key
    /// of the plan).
    pub async fn daily_usage_async(&self, plan_id: &str) -> Result<Vec<DailyUsage>, UsageError> {
        #[cfg(feature = "redis")]
        {
            let engine = self.engine()?;
            if let Some(shared) = &engine.shared {
                let plan = engine.plan(plan_id)?;
                let mut days = Vec::with_capacity(plan.slots.len());
                for slot in plan.slots.iter() {
                    let tag = shared::key_tag(&plan.id, &slot.id);
                    let counted = shared
                        .backend
                        .days(&tag)
                        .await
                        .map_err(|error| UsageError::Backend(error.to_string()))?;
                    days.push((slot, counted));
                }
                return Ok(daily_rows(days.into_iter(), unix_now(&engine.clock)));
            }
        }
        Ok(self.daily_usage(plan_id)?)
    }

    /// The key's usage after `change`, when the counts are on Redis.
    #[cfg(feature = "redis")]
    async fn on_redis(
        &self,
        plan_id: &str,
        key_id: &str,
        change: QuotaChange,
    ) -> Result<Option<KeyUsage>, UsageError> {
        let engine = self.engine()?;
        let Some(shared) = &engine.shared else {
            return Ok(None);
        };
        let (plan, quota) = engine.quota(plan_id)?;
        let slot = plan.slot(key_id)?;
        let now = unix_now(&engine.clock);
        let (_, start, end) = period_of(quota.period, now);
        let (used, remaining, limit) = shared
            .backend
            .quota(
                &shared::key_tag(&plan.id, &slot.id),
                shared::quota_take(&quota, now),
                change,
            )
            .await
            .map_err(|error| UsageError::Backend(error.to_string()))?;
        Ok(Some(KeyUsage {
            used,
            remaining,
            limit,
            period_start: start,
            period_end: end,
        }))
    }
}

/// Rows of the daily export from each key's (day, requests), within the retention, by key
/// then date.
fn daily_rows<'a>(
    days: impl Iterator<Item = (&'a KeySlot, Vec<(i64, u64)>)>,
    now: i64,
) -> Vec<DailyUsage> {
    let oldest = now.div_euclid(86_400) - DAILY_RETENTION_DAYS;
    let mut rows = Vec::new();
    for (slot, counted) in days {
        for (day, requests) in counted.into_iter().filter(|(day, _)| *day > oldest) {
            let date = OffsetDateTime::from_unix_timestamp(day.saturating_mul(86_400))
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
            rows.push(DailyUsage {
                key_id: slot.id.to_string(),
                date,
                requests,
            });
        }
    }
    rows.sort_by(|a, b| (&a.key_id, &a.date).cmp(&(&b.key_id, &b.date)));
    rows
}

/// Why the usage API could not answer.
#[derive(Debug)]
#[non_exhaustive]
pub enum UsageError {
    /// No such plan, key or quota, or a gateway without plans.
    Config(ConfigError),
    /// The shared backend (Redis) failed or did not answer in time.
    Backend(String),
}

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Config(error) => error.fmt(f),
            Self::Backend(error) => write!(f, "the usage is on a backend that failed: {error}"),
        }
    }
}

impl std::error::Error for UsageError {}

impl From<ConfigError> for UsageError {
    fn from(error: ConfigError) -> Self {
        Self::Config(error)
    }
}

impl fmt::Debug for UsagePlans {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UsagePlans")
            .field(
                "plans",
                &(self.engine)().map(|engine| {
                    engine
                        .plans
                        .iter()
                        .map(|p| p.id.to_string())
                        .collect::<Vec<_>>()
                }),
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
    fn number_values_match_their_decimal_text() {
        for number in (0..10_100).chain([99_999, u64::from(u32::MAX), u64::MAX]) {
            assert_eq!(
                number_value(number).to_str().unwrap(),
                number.to_string(),
                "{number}"
            );
        }
    }

    #[test]
    fn plan_memos_answer_only_their_own_token() {
        let memo = PlanMemo::default();
        let (one, two) = (next_memo_token(), next_memo_token());
        assert_ne!(one, two);
        assert_eq!(memo.get(one), None, "empty");
        memo.set(one, Some((3, 0xff_ffff)));
        assert_eq!(memo.get(one), Some(Some((3, 0xff_ffff))));
        assert_eq!(memo.get(two), None);
        memo.set(two, None);
        assert_eq!(memo.get(two), Some(None), "not a member is remembered too");
        assert_eq!(memo.get(one), None);
        memo.set(one, Some((0, 0x100_0000)));
        memo.set(one, Some((0xff, 0)));
        assert_eq!(memo.get(one), None, "too large to encode: not remembered");
        memo.set(0, Some((0, 0)));
        assert_eq!(memo.get(0), None, "token 0 never remembers");
    }

    #[test]
    fn a_decision_shares_one_clock_reading() {
        use governor::clock::Clock;
        let manual = crate::clock::ManualClock::starting_at(0);
        let clock = ThrottleClock(manual.clock());
        manual.advance(Duration::from_secs(5));
        {
            let _deciding = Deciding::at(Duration::from_secs(1));
            assert_eq!(clock.now(), Nanos::from(Duration::from_secs(1)));
            manual.advance(Duration::from_secs(1));
            assert_eq!(clock.now(), Nanos::from(Duration::from_secs(1)));
        }
        assert_eq!(
            clock.now(),
            Nanos::from(Duration::from_secs(6)),
            "read again after"
        );
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
    fn slot_states_are_per_key_and_strays_share_one() {
        let manual = crate::clock::ManualClock::starting_at(MARCH_1 as u64);
        let Limit::Bucket { limiter, .. } = keyed(
            ThrottleSettings {
                rate: 1.0,
                burst: 1,
            },
            &manual.clock(),
            SlotStateArray::Own((0..3).map(|_| InMemoryState::default()).collect()),
        ) else {
            panic!("a bucket")
        };
        for slot in 0..3 {
            assert!(
                limiter.check_key(&slot).is_ok(),
                "each key has its own bucket"
            );
            assert!(limiter.check_key(&slot).is_err());
        }
        assert!(limiter.check_key(&7).is_ok());
        assert!(
            limiter.check_key(&8).is_err(),
            "out-of-range slots share one bucket"
        );
        manual.advance(Duration::from_secs(1));
        assert!(limiter.check_key(&0).is_ok());
    }
}
