//! Usage plans: throttles at four levels and quotas per API key, as in API Gateway.
//!
//! A [`UsagePlan`] names the stages it applies to, the API keys in it, a throttle
//! (`rate` requests per second refilling a bucket of `burst`), per-route throttle overrides
//! and a quota (`limit` requests per UTC day, week (from Monday) or month, with `offset`
//! requests taken off the first period). A key belongs to at most one plan per stage.
//!
//! For each request the gateway applies, most specific first:
//! 1. the client's throttle: the plan's override for the route (key × method) if it has one,
//!    else the plan's throttle (key) — only on routes that require an API key, as in API
//!    Gateway, where methods without a key are not metered by usage plans;
//! 2. the stage's throttle: the route's [`throttle`](crate::Route::throttle) (stage ×
//!    method) if it has one, else the stage's [`throttle`](crate::stage::StageBuilder::throttle)
//!    (shared by every client of the stage);
//! 3. the plan's quota.
//!
//! Throttles are GCRA (governor) with nanosecond precision on the monotonic clock; a request
//! a throttle rejects consumes no quota (though a client token spent before a stage throttle
//! rejects is not returned). When usage plans are configured, a key that is in no plan for the
//! request's stage gets 403 `INVALID_API_KEY`.
//!
//! Rejections: 429 `{"message":"Too Many Requests"}` (`THROTTLED`) and 429
//! `{"message":"Limit Exceeded"}` (`QUOTA_EXCEEDED`), both with `Retry-After` in whole
//! seconds (rounded up, at least 1). Responses carry `x-ratelimit-limit` (the bucket size),
//! `x-ratelimit-remaining` (what is left in it) and `x-ratelimit-reset` (seconds until it is
//! full) for the throttle that applied — the client's, else the stage's; switch them off with
//! [`GatewayBuilder::rate_limit_headers`](crate::GatewayBuilder::rate_limit_headers).
//!
//! State is per key of a plan, and only for the keys listed in plans: a request with any
//! other key is refused before anything is stored for it, so memory is bounded by the
//! configured plans: about 230 bytes per key of a plan (its throttle states at 8 bytes each,
//! its quota and today's counts, its membership), plus 16 bytes per earlier day kept for the
//! daily export (allocated four days at a time); `cargo bench --bench memory` measures it. Membership is fixed when the
//! gateway is built: a key added to the store later is refused on metered routes until a
//! gateway that lists it in a plan is built.
//!
//! Counts live in memory: a restart starts every key's quota afresh, and the quota `offset`
//! applies to the period the gateway starts in. [`Route::throttle`](crate::Route::throttle)
//! gives every stage the same numbers, each stage its own bucket (API Gateway sets method
//! throttles per stage).
//!
//! # Example
//!
//! ```
//! use tower_gateway::route::ThrottleSettings;
//! use tower_gateway::usage_plan::{Quota, QuotaPeriod, UsagePlan};
//!
//! let plan = UsagePlan::builder("demo")
//!     .stage("prod")
//!     .throttle(ThrottleSettings { rate: 5.0, burst: 10 })
//!     .method_throttle("GET /pets/{petId}", ThrottleSettings { rate: 1.0, burst: 2 })
//!     .quota(Quota::new(1000, QuotaPeriod::Day))
//!     .key("demo")
//!     .build()
//!     .expect("valid plan");
//! # let _ = plan;
//! ```

mod engine;

use serde::{Deserialize, Serialize};

#[cfg(feature = "redis")]
pub(crate) use engine::QuotaChange;
#[cfg(feature = "redis")]
pub(crate) use engine::ThrottleFuture;
pub use engine::{DailyUsage, KeyUsage, UsageError, UsagePlans};
pub(crate) use engine::{PlanMemo, RateLimitHeaders, ThrottleEngine, Throttling};

use crate::error::{ConfigError, is_identifier};
use crate::route::ThrottleSettings;

/// The largest rate a throttle accepts, in requests per second. Throttles count whole
/// nanoseconds between requests (rounded up, so never more than the rate), which up to this
/// rate is within 1% of the rate asked for.
pub const MAX_RATE: f64 = 1e7;
/// The smallest non-zero rate a throttle accepts: one request in about eleven days.
pub const MIN_RATE: f64 = 1e-6;
/// governor counts time in 64-bit nanoseconds; a bucket must stay far from that.
const MAX_BUCKET_NANOS: f64 = (1u64 << 62) as f64;

/// A calendar period of a quota, in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum QuotaPeriod {
    /// From 00:00 to 24:00 UTC.
    Day,
    /// From Monday 00:00 UTC to the next Monday.
    Week,
    /// From the first of the month 00:00 UTC to the first of the next.
    Month,
}

/// A quota: `limit` requests per `period`, with `offset` requests taken off the first period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    /// Requests per period.
    pub limit: u64,
    /// The period.
    pub period: QuotaPeriod,
    /// Requests subtracted from the limit in the first period (the one the gateway starts
    /// in).
    #[serde(default)]
    pub offset: u64,
}

impl Quota {
    /// `limit` requests per `period`, no offset.
    pub fn new(limit: u64, period: QuotaPeriod) -> Self {
        Self {
            limit,
            period,
            offset: 0,
        }
    }

    /// Takes `offset` requests off the first period.
    #[must_use]
    pub fn offset(mut self, offset: u64) -> Self {
        self.offset = offset;
        self
    }
}

/// Checks a throttle's numbers: `rate` 0 or 10⁻⁶–10⁷; `burst` at least 1 when `rate` is above
/// 0, and a bucket that refills in under about 146 years. A throttle of rate 0 and burst 0
/// blocks every request.
pub(crate) fn validate_throttle(
    field: &str,
    throttle: &ThrottleSettings,
) -> Result<(), ConfigError> {
    let rate = throttle.rate;
    if !rate.is_finite() || !(rate == 0.0 || (MIN_RATE..=MAX_RATE).contains(&rate)) {
        return Err(ConfigError::new(
            format!("{field}.rate"),
            "a rate is 0 or a number of requests per second from 1e-6 to 1e7",
        ));
    }
    if rate > 0.0 && throttle.burst == 0 {
        return Err(ConfigError::new(
            format!("{field}.burst"),
            "a burst of 0 admits nothing: use at least 1 (or rate 0 and burst 0 to block)",
        ));
    }
    if rate == 0.0 && throttle.burst > 0 {
        return Err(ConfigError::new(
            format!("{field}.rate"),
            "a rate of 0 never refills the burst: use rate 0 with burst 0 to block",
        ));
    }
    if rate > 0.0 && (1e9 / rate).ceil() * f64::from(throttle.burst) > MAX_BUCKET_NANOS {
        return Err(ConfigError::new(
            format!("{field}.burst"),
            "the bucket takes too long to refill (burst / rate must be under about 146 years)",
        ));
    }
    Ok(())
}

/// A usage plan. Build it with [`UsagePlan::builder`].
#[derive(Debug, Clone, PartialEq)]
pub struct UsagePlan {
    pub(crate) id: String,
    pub(crate) stages: Vec<String>,
    pub(crate) throttle: Option<ThrottleSettings>,
    pub(crate) method_throttles: Vec<(String, ThrottleSettings)>,
    pub(crate) quota: Option<Quota>,
    pub(crate) keys: Vec<String>,
}

impl UsagePlan {
    /// Starts a plan called `id`.
    pub fn builder(id: impl Into<String>) -> UsagePlanBuilder {
        UsagePlanBuilder {
            plan: UsagePlan {
                id: id.into(),
                stages: Vec::new(),
                throttle: None,
                method_throttles: Vec::new(),
                quota: None,
                keys: Vec::new(),
            },
        }
    }

    /// The plan's id.
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// Builds a [`UsagePlan`].
#[derive(Debug, Clone)]
#[must_use]
pub struct UsagePlanBuilder {
    plan: UsagePlan,
}

impl UsagePlanBuilder {
    /// A stage the plan applies to.
    pub fn stage(mut self, stage: impl Into<String>) -> Self {
        self.plan.stages.push(stage.into());
        self
    }

    /// The throttle each key of the plan gets.
    pub fn throttle(mut self, throttle: ThrottleSettings) -> Self {
        self.plan.throttle = Some(throttle);
        self
    }

    /// A per-route override of the throttle, by route key (`GET /pets/{petId}`); it must
    /// name a route of the gateway.
    pub fn method_throttle(mut self, route: impl Into<String>, throttle: ThrottleSettings) -> Self {
        self.plan.method_throttles.push((route.into(), throttle));
        self
    }

    /// The quota each key of the plan gets.
    pub fn quota(mut self, quota: Quota) -> Self {
        self.plan.quota = Some(quota);
        self
    }

    /// An API key (by id) in the plan.
    pub fn key(mut self, key_id: impl Into<String>) -> Self {
        self.plan.keys.push(key_id.into());
        self
    }

    /// Checks the numbers; stages, routes and key membership are checked when the gateway is
    /// built.
    pub fn build(self) -> Result<UsagePlan, ConfigError> {
        let plan = self.plan;
        let field = format!("usage_plans[{}]", plan.id);
        let id_ok = is_identifier(&plan.id, 128);
        if !id_ok {
            return Err(ConfigError::new(
                format!("{field}.id"),
                "a plan id is 1–128 letters, digits, `-` and `_`",
            ));
        }
        if plan.stages.is_empty() {
            return Err(ConfigError::new(
                format!("{field}.stages"),
                "a plan applies to at least one stage",
            ));
        }
        if let Some(throttle) = &plan.throttle {
            validate_throttle(&format!("{field}.throttle"), throttle)?;
        }
        for (route, throttle) in &plan.method_throttles {
            validate_throttle(&format!("{field}.method_throttles[{route}]"), throttle)?;
        }
        if let Some(quota) = &plan.quota {
            if quota.limit == 0 {
                return Err(ConfigError::new(
                    format!("{field}.quota.limit"),
                    "a quota limit is at least 1",
                ));
            }
            if quota.offset >= quota.limit {
                return Err(ConfigError::new(
                    format!("{field}.quota.offset"),
                    "the offset must be smaller than the limit",
                ));
            }
        }
        Ok(plan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle(rate: f64, burst: u32) -> ThrottleSettings {
        ThrottleSettings { rate, burst }
    }

    #[test]
    fn throttle_numbers_are_checked() {
        assert!(validate_throttle("t", &throttle(5.0, 10)).is_ok());
        assert!(
            validate_throttle("t", &throttle(0.0, 0)).is_ok(),
            "blocks everything"
        );
        assert!(validate_throttle("t", &throttle(0.5, 1)).is_ok());
        assert!(validate_throttle("t", &throttle(MIN_RATE, 1)).is_ok());
        assert!(validate_throttle("t", &throttle(MAX_RATE, u32::MAX)).is_ok());
        for (rate, burst, field) in [
            (-1.0, 1, "t.rate"),
            (f64::NAN, 1, "t.rate"),
            (f64::INFINITY, 1, "t.rate"),
            (2e7, 1, "t.rate"),
            (1e-12, 1, "t.rate"),
            (5.0, 0, "t.burst"),
            (0.0, 5, "t.rate"),
            (1.0 / 86_400.0, 213_504, "t.burst"),
            (MIN_RATE, u32::MAX, "t.burst"),
        ] {
            let error = validate_throttle("t", &throttle(rate, burst)).unwrap_err();
            assert_eq!(error.field(), field, "{rate} {burst}");
        }
    }

    #[test]
    fn plans_are_checked() {
        let ok = UsagePlan::builder("p")
            .stage("prod")
            .quota(Quota::new(10, QuotaPeriod::Week).offset(9));
        assert!(ok.build().is_ok());
        let cases = [
            (
                UsagePlan::builder("bad id").stage("prod"),
                "usage_plans[bad id].id",
            ),
            (UsagePlan::builder("p"), "usage_plans[p].stages"),
            (
                UsagePlan::builder("p")
                    .stage("prod")
                    .throttle(throttle(-1.0, 1)),
                "usage_plans[p].throttle.rate",
            ),
            (
                UsagePlan::builder("p")
                    .stage("prod")
                    .method_throttle("GET /x", throttle(1.0, 0)),
                "usage_plans[p].method_throttles[GET /x].burst",
            ),
            (
                UsagePlan::builder("p")
                    .stage("prod")
                    .quota(Quota::new(0, QuotaPeriod::Day)),
                "usage_plans[p].quota.limit",
            ),
            (
                UsagePlan::builder("p")
                    .stage("prod")
                    .quota(Quota::new(10, QuotaPeriod::Day).offset(10)),
                "usage_plans[p].quota.offset",
            ),
        ];
        for (builder, field) in cases {
            assert_eq!(builder.build().unwrap_err().field(), field);
        }
    }
}
