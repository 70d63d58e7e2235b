//! Canary releases: a share of a stage's traffic goes to a new release.
//!
//! A stage's [`CanarySettings`] say what share of its requests (`percent_traffic`, 0–100) the
//! canary serves. The canary takes one of two forms, or both:
//!
//! - **Stage-variable overrides** (API Gateway's way): the same service, but canary requests
//!   see the overridden variables, for example `backend=v2`.
//! - **A second service**: [`CanaryLayer`] sends canary requests to another tower service (the
//!   new version of a router), and baseline requests to the one it wraps.
//!
//! A third form comes with [deployments](crate::gateway::Deployments): a canary *deployment*
//! (other routes and settings) serves the canary share until it is promoted.
//!
//! Requests are assigned at random by default, as API Gateway does; [`Sticky`] assignment
//! hashes the API key, the principal, a header or a cookie instead, so that one user always
//! sees one release. A header that forces a release for testing can be turned on
//! ([`CanarySettings::force_header`]); it is off by default because it lets any client choose.
//! The release is in the [`RequestContext`](crate::RequestContext)
//! ([`release`](crate::RequestContext::release)), so logs and metrics can be split, and in the
//! `x-gateway-release` response header unless that is switched off. The
//! [response cache](crate::cache) keeps canary and baseline entries apart unless
//! [`use_stage_cache`](CanarySettings::use_stage_cache) is set.
//!
//! # Example
//!
//! ```
//! use axum::{Router, extract::Request, routing::get};
//! use http::Method;
//! use tower::{Layer, ServiceExt};
//! use tower_gateway::canary::{CanaryLayer, CanarySettings, Release};
//! use tower_gateway::{GatewayBuilder, RequestContext, Route, Stage};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // One request in ten sees `greeting=hola` and is served by the v2 router.
//! let canary = CanarySettings::new(10.0)
//!     .variable_override("greeting", "hola")
//!     .force_header("x-canary");
//! let gateway = GatewayBuilder::new()
//!     .stage(
//!         Stage::builder("prod")
//!             .variable("greeting", "hello")
//!             .canary(canary)
//!             .build()
//!             .unwrap(),
//!     )
//!     .route(Route::new(Method::GET, "/greet"))
//!     .build()
//!     .unwrap();
//!
//! let greet = |version: &'static str| {
//!     move |request: Request| async move {
//!         let context = request.extensions().get::<RequestContext>().unwrap();
//!         let greeting = context.stage_variables().get("greeting").unwrap_or("?").to_owned();
//!         format!("{greeting} from {version}")
//!     }
//! };
//! let v1 = Router::new().route("/greet", get(greet("v1")));
//! let v2 = Router::new().route("/greet", get(greet("v2")));
//! let app = gateway.layer(CanaryLayer::new(v2).layer(v1));
//!
//! // The force header (turned on above) picks the canary for this request.
//! let request = http::Request::get("/greet").header("x-canary", "canary").body(axum::body::Body::empty()).unwrap();
//! let response = app.oneshot(request).await.unwrap();
//! assert_eq!(response.headers()["x-gateway-release"], Release::Canary.as_str());
//! let body = axum::body::to_bytes(response.into_body(), 1024).await.unwrap();
//! assert_eq!(&body[..], b"hola from v2");
//! # }
//! ```

mod layer;

use std::collections::BTreeMap;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::Mutex;

use base64::Engine as _;
use http::header::{AUTHORIZATION, COOKIE, HeaderName};
use http::{HeaderMap, HeaderValue};
use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};
use serde::Deserialize;

pub use layer::{Canary, CanaryLayer, CanaryLayerBuilder, ResponseFuture};

use crate::error::ConfigError;
use crate::stage::StageVariables;

/// The response header that names the release, unless switched off.
pub const RELEASE_HEADER: &str = "x-gateway-release";

/// Which release served a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Release {
    /// The stage's own release.
    #[default]
    Baseline,
    /// The canary.
    Canary,
}

impl Release {
    /// `"baseline"` or `"canary"`, as in the response header and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Baseline => "baseline",
            Self::Canary => "canary",
        }
    }

    /// Whether this is the canary.
    pub fn is_canary(self) -> bool {
        self == Self::Canary
    }
}

impl fmt::Display for Release {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a sticky assignment hashes, so that one user always sees one release.
///
/// A request that lacks the value (no key, no token, no such header or cookie) is assigned at
/// random.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "by", content = "name", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Sticky {
    /// The API key, as sent in the gateway's API key header (`x-api-key` by default).
    ApiKey,
    /// The caller: the `sub` claim of a bearer JWT, or else the whole `Authorization` value.
    /// The token is only read here, to pick; the route's authorizer still verifies it, so a
    /// forged token chooses a release only for a request that is then refused.
    Principal,
    /// The value of a request header.
    Header(String),
    /// The value of a cookie.
    Cookie(String),
}

/// A stage's canary (API Gateway's `canarySettings`), also the settings of a standalone
/// [`CanaryLayer`].
///
/// In a declarative configuration it is a stage's `canary`:
/// `{"percent_traffic": 10, "stage_variable_overrides": {"backend": "v2"}}`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
#[must_use]
pub struct CanarySettings {
    /// The share of the stage's requests the canary serves, 0.0–100.0.
    pub percent_traffic: f64,
    /// Stage variables with other values for canary requests. Each must be a variable of the
    /// stage.
    pub stage_variable_overrides: BTreeMap<String, String>,
    /// Whether canary requests share the baseline's cache entries (default `false`: their
    /// entries are kept apart).
    pub use_stage_cache: bool,
    /// Sticky assignment; `None` (the default) assigns each request at random.
    pub sticky: Option<Sticky>,
    /// A request header whose value `canary` or `baseline` forces the release, for testing.
    /// `None` by default: with it, any client can choose.
    pub force_header: Option<String>,
    /// The response header naming the release (default `x-gateway-release`); `None` sends
    /// none.
    pub release_header: Option<String>,
    /// Seeds the random assignment, for reproducible tests (not in the configuration).
    #[serde(skip)]
    pub seed: Option<u64>,
}

impl Default for CanarySettings {
    fn default() -> Self {
        Self {
            percent_traffic: 0.0,
            stage_variable_overrides: BTreeMap::new(),
            use_stage_cache: false,
            sticky: None,
            force_header: None,
            release_header: Some(RELEASE_HEADER.to_owned()),
            seed: None,
        }
    }
}

impl CanarySettings {
    /// A canary serving `percent_traffic` percent of the requests.
    pub fn new(percent_traffic: f64) -> Self {
        Self {
            percent_traffic,
            ..Self::default()
        }
    }

    /// Overrides a stage variable for canary requests.
    pub fn variable_override(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.stage_variable_overrides
            .insert(name.into(), value.into());
        self
    }

    /// Whether canary requests share the baseline's cache entries.
    pub fn use_stage_cache(mut self, share: bool) -> Self {
        self.use_stage_cache = share;
        self
    }

    /// Assigns each user to one release.
    pub fn sticky(mut self, sticky: Sticky) -> Self {
        self.sticky = Some(sticky);
        self
    }

    /// Lets requests force their release with this header (`canary` or `baseline`).
    pub fn force_header(mut self, name: impl Into<String>) -> Self {
        self.force_header = Some(name.into());
        self
    }

    /// The response header naming the release; `None` sends none.
    pub fn release_header(mut self, name: Option<&str>) -> Self {
        self.release_header = name.map(str::to_owned);
        self
    }

    /// Seeds the random assignment (for tests): the same seed and the same requests give the
    /// same assignments. A seeded canary takes a lock per pick.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Checks the settings against the stage's `variables`; `field` names them in errors.
    pub(crate) fn compile(
        &self,
        field: &str,
        variables: Option<&StageVariables>,
    ) -> Result<CompiledCanary, ConfigError> {
        let percent = self.percent_traffic;
        if !(0.0..=100.0).contains(&percent) {
            return Err(ConfigError::new(
                format!("{field}.percent_traffic"),
                format!("a percentage is a number from 0 to 100, not {percent}"),
            ));
        }
        let header = |what: &str, name: &str| {
            HeaderName::try_from(name).map_err(|_| {
                ConfigError::new(
                    format!("{field}.{what}"),
                    format!("`{}` is not a valid header name", name.escape_debug()),
                )
            })
        };
        let sticky = match &self.sticky {
            None => None,
            Some(Sticky::ApiKey) => Some(StickyKey::ApiKey),
            Some(Sticky::Principal) => Some(StickyKey::Principal),
            Some(Sticky::Header(name)) => Some(StickyKey::Header(header("sticky", name)?)),
            Some(Sticky::Cookie(name)) => {
                let valid = !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b));
                if !valid {
                    return Err(ConfigError::new(
                        format!("{field}.sticky"),
                        format!("`{}` is not a valid cookie name", name.escape_debug()),
                    ));
                }
                Some(StickyKey::Cookie(name.as_str().into()))
            }
        };
        let variables = match variables {
            None if !self.stage_variable_overrides.is_empty() => {
                return Err(ConfigError::new(
                    format!("{field}.stage_variable_overrides"),
                    "overrides need a stage: give the canary to a stage of a gateway",
                ));
            }
            None => None,
            Some(_) if self.stage_variable_overrides.is_empty() => None,
            Some(variables) => {
                for name in self.stage_variable_overrides.keys() {
                    if variables.get(name).is_none() {
                        return Err(ConfigError::new(
                            format!("{field}.stage_variable_overrides[{}]", name.escape_debug()),
                            "the stage has no variable of this name to override",
                        ));
                    }
                }
                let merged = variables.iter().map(|(name, value)| {
                    let value = self
                        .stage_variable_overrides
                        .get(name)
                        .map_or(value, String::as_str);
                    (name.to_owned(), value.to_owned())
                });
                Some(
                    StageVariables::from_pairs(merged.collect())
                        .map_err(|e| e.within(&format!("{field}.stage_variable_overrides")))?,
                )
            }
        };
        Ok(CompiledCanary {
            picker: CanaryPicker {
                threshold: threshold(percent),
                sticky,
                force_header: self
                    .force_header
                    .as_deref()
                    .map(|name| header("force_header", name))
                    .transpose()?,
                seeded: self
                    .seed
                    .map(|seed| Mutex::new(SmallRng::seed_from_u64(seed))),
            },
            variables,
            release_header: self
                .release_header
                .as_deref()
                .map(|name| header("release_header", name))
                .transpose()?,
            settings: self.clone(),
        })
    }
}

/// A draw below the threshold is a canary request. Every `u64` is below `All`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Threshold {
    None,
    Below(u64),
    All,
}

fn threshold(percent: f64) -> Threshold {
    if percent <= 0.0 {
        Threshold::None
    } else if percent >= 100.0 {
        Threshold::All
    } else {
        // 2^64 draws, of which `percent` in a hundred are canary; the cast saturates.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        Threshold::Below((percent / 100.0 * 18_446_744_073_709_551_616.0) as u64)
    }
}

/// Checked canary settings, ready to pick.
pub(crate) struct CompiledCanary {
    pub(crate) picker: CanaryPicker,
    /// The stage's variables with the overrides, when there are overrides.
    pub(crate) variables: Option<StageVariables>,
    pub(crate) release_header: Option<HeaderName>,
    pub(crate) settings: CanarySettings,
}

impl fmt::Debug for CompiledCanary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.settings.fmt(f)
    }
}

impl PartialEq for CompiledCanary {
    fn eq(&self, other: &Self) -> bool {
        self.settings == other.settings
    }
}

enum StickyKey {
    ApiKey,
    Principal,
    Header(HeaderName),
    Cookie(Box<str>),
}

/// Picks the release of each request.
pub(crate) struct CanaryPicker {
    threshold: Threshold,
    sticky: Option<StickyKey>,
    force_header: Option<HeaderName>,
    seeded: Option<Mutex<SmallRng>>,
}

/// Sticky hashes must agree between instances of one build, so the hasher's seed is fixed.
const STICKY_SEED: u64 = 0x6361_6e61_7279_2121;

impl CanaryPicker {
    /// The release of a request with these headers; `key_header` carries API keys.
    pub(crate) fn pick(&self, headers: &HeaderMap, key_header: &HeaderName) -> Release {
        if let Some(forced) = self
            .force_header
            .as_ref()
            .and_then(|name| headers.get(name))
            .and_then(forced_release)
        {
            return forced;
        }
        let below = match self.threshold {
            Threshold::None => return Release::Baseline,
            Threshold::All => return Release::Canary,
            Threshold::Below(below) => below,
        };
        let draw = self
            .sticky
            .as_ref()
            .and_then(|sticky| sticky_hash(sticky, headers, key_header))
            .unwrap_or_else(|| self.draw());
        if draw < below {
            Release::Canary
        } else {
            Release::Baseline
        }
    }

    fn draw(&self) -> u64 {
        thread_local! {
            static DRAWS: std::cell::RefCell<SmallRng> = std::cell::RefCell::new(SmallRng::from_os_rng());
        }
        match &self.seeded {
            Some(rng) => rng
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .next_u64(),
            None => DRAWS.with(|rng| rng.borrow_mut().next_u64()),
        }
    }
}

fn forced_release(value: &HeaderValue) -> Option<Release> {
    let value = value.as_bytes();
    if value.eq_ignore_ascii_case(b"canary") {
        Some(Release::Canary)
    } else if value.eq_ignore_ascii_case(b"baseline") {
        Some(Release::Baseline)
    } else {
        None
    }
}

fn sticky_hash(sticky: &StickyKey, headers: &HeaderMap, key_header: &HeaderName) -> Option<u64> {
    let hasher = foldhash::quality::FixedState::with_seed(STICKY_SEED);
    let hash = |value: &[u8]| Some(hasher.hash_one(value)).filter(|_| !value.is_empty());
    match sticky {
        StickyKey::ApiKey => hash(headers.get(key_header)?.as_bytes()),
        StickyKey::Header(name) => hash(headers.get(name)?.as_bytes()),
        StickyKey::Cookie(name) => headers
            .get_all(COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(';'))
            .find_map(|pair| {
                let (key, value) = pair.trim().split_once('=')?;
                (key == &**name).then(|| hash(value.as_bytes()))?
            }),
        StickyKey::Principal => {
            let authorization = headers.get(AUTHORIZATION)?.as_bytes();
            match bearer_subject(authorization) {
                Some(subject) => hash(subject.as_bytes()),
                None => hash(authorization),
            }
        }
    }
}

/// The `sub` claim of a bearer JWT, read without verifying it.
fn bearer_subject(authorization: &[u8]) -> Option<String> {
    let token = authorization
        .get(..7)
        .filter(|scheme| scheme.eq_ignore_ascii_case(b"bearer "))
        .and(authorization.get(7..))?;
    let mut parts = token.split(|&b| b == b'.');
    let (_, payload) = (parts.next()?, parts.next()?);
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    #[derive(Deserialize)]
    struct Subject {
        sub: String,
    }
    serde_json::from_slice::<Subject>(&payload)
        .ok()
        .map(|claims| claims.sub)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn picker(settings: CanarySettings) -> CanaryPicker {
        settings.compile("canary", None).unwrap().picker
    }

    fn key_header() -> HeaderName {
        HeaderName::from_static("x-api-key")
    }

    #[test]
    fn the_ends_send_none_and_all() {
        let headers = HeaderMap::new();
        let none = picker(CanarySettings::new(0.0));
        let all = picker(CanarySettings::new(100.0));
        for _ in 0..1000 {
            assert_eq!(none.pick(&headers, &key_header()), Release::Baseline);
            assert_eq!(all.pick(&headers, &key_header()), Release::Canary);
        }
    }

    #[test]
    fn bad_percentages_and_names_are_refused() {
        for percent in [-0.1, 100.1, f64::NAN, f64::INFINITY] {
            let error = CanarySettings::new(percent)
                .compile("stages[prod].canary", None)
                .expect_err("refused");
            assert_eq!(error.field(), "stages[prod].canary.percent_traffic");
        }
        let error = CanarySettings::new(5.0)
            .force_header("bad header")
            .compile("canary", None)
            .expect_err("refused");
        assert_eq!(error.field(), "canary.force_header");
        let error = CanarySettings::new(5.0)
            .sticky(Sticky::Cookie("a;b".into()))
            .compile("canary", None)
            .expect_err("refused");
        assert_eq!(error.field(), "canary.sticky");
    }

    #[test]
    fn the_force_header_wins_and_other_values_are_ignored() {
        let canary = picker(CanarySettings::new(0.0).force_header("x-canary"));
        let mut headers = HeaderMap::new();
        headers.insert("x-canary", HeaderValue::from_static("Canary"));
        assert_eq!(canary.pick(&headers, &key_header()), Release::Canary);
        let baseline = picker(CanarySettings::new(100.0).force_header("x-canary"));
        headers.insert("x-canary", HeaderValue::from_static("baseline"));
        assert_eq!(baseline.pick(&headers, &key_header()), Release::Baseline);
        headers.insert("x-canary", HeaderValue::from_static("please"));
        assert_eq!(baseline.pick(&headers, &key_header()), Release::Canary);
    }

    #[test]
    fn sticky_cookies_and_principals_are_read() {
        let mut headers = HeaderMap::new();
        headers.insert(COOKIE, HeaderValue::from_static("a=1; user=alice; b=2"));
        let cookie = StickyKey::Cookie("user".into());
        let alice = sticky_hash(&cookie, &headers, &key_header()).expect("cookie found");
        headers.insert(COOKIE, HeaderValue::from_static("user=bob"));
        assert_ne!(sticky_hash(&cookie, &headers, &key_header()), Some(alice));
        headers.insert(COOKIE, HeaderValue::from_static("username=alice"));
        assert_eq!(sticky_hash(&cookie, &headers, &key_header()), None);

        // Two tokens of one subject (different expiries) hash alike.
        let token = |claims: &str| {
            let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims);
            HeaderValue::try_from(format!("Bearer e30.{payload}.sig")).unwrap()
        };
        headers.insert(AUTHORIZATION, token(r#"{"sub":"alice","exp":1}"#));
        let first = sticky_hash(&StickyKey::Principal, &headers, &key_header());
        headers.insert(AUTHORIZATION, token(r#"{"sub":"alice","exp":2}"#));
        assert_eq!(
            sticky_hash(&StickyKey::Principal, &headers, &key_header()),
            first
        );
        headers.insert(AUTHORIZATION, token(r#"{"sub":"bob","exp":2}"#));
        assert_ne!(
            sticky_hash(&StickyKey::Principal, &headers, &key_header()),
            first
        );
    }
}
