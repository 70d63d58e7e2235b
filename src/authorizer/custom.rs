//! Custom authorizers: an async function of the user's decides, as a Lambda authorizer does
//! in API Gateway.
//!
//! Two modes, as in API Gateway:
//!
//! - **TOKEN** ([`CustomAuthorizer::token`]): the function gets one header's value (by default
//!   `Authorization`, passed as it is, `Bearer ` included). A missing or empty header, or one
//!   that does not match the optional validation regex, is refused with 401 without calling
//!   the function.
//! - **REQUEST** ([`CustomAuthorizer::request`]): the function gets the request's headers,
//!   query string, path parameters, stage variables and context. Its identity sources
//!   (`method.request.header.X`, `method.request.querystring.q`, `stageVariables.v`,
//!   `context.identity.sourceIp`, …) must all be present and non-empty, or the request is
//!   refused with 401 without calling the function; they are also the cache key.
//!
//! The function answers with an [`AuthorizerResponse`]: either an IAM-style [`Policy`] (Allow
//! and Deny statements over resources `{stage}/{METHOD}/{path}`, with `*` matching any run of
//! characters, `/` included; a Deny wins, and a request no Allow covers is denied) or a
//! simple yes/no, plus the principal, a context map (strings, numbers and booleans, available
//! to the handler as [`Identity::context`]) and an optional usage identifier key for
//! [`ApiKeySource::Authorizer`](crate::api_key::ApiKeySource::Authorizer).
//!
//! | outcome | response |
//! |---|---|
//! | identity source missing, token not matching the regex, [`AuthorizerError::Unauthorized`] | 401 `UNAUTHORIZED` |
//! | the policy or simple response denies this request | 403 `ACCESS_DENIED` |
//! | [`AuthorizerError::Failure`], a panic, a timeout (10 s by default), an invalid context value | 500 `AUTHORIZER_FAILURE` |
//!
//! Responses are cached by the identity sources for the result TTL (300 s by default, at most
//! 3,600 s, 0 turns the cache off), in a cache bounded by entries. The policy of a cached
//! response is evaluated against each request, as API Gateway does, so a policy cached for
//! `GET /pets` can still deny `DELETE /pets`. Concurrent requests with the same identity
//! sources wait for one call of the function. Errors and 401s are not cached.
//!
//! The function runs on the caller's tokio runtime (the timeout uses tokio's timer).
//!
//! ```
//! use http::Method;
//! use tower_gateway::authorizer::custom::{
//!     AuthorizerError, AuthorizerRequest, AuthorizerResponse, CustomAuthorizer, Policy,
//! };
//! use tower_gateway::{GatewayBuilder, Route, Stage};
//!
//! async fn check(request: AuthorizerRequest) -> Result<AuthorizerResponse, AuthorizerError> {
//!     match request.token() {
//!         Some("allow-me") => Ok(AuthorizerResponse::policy(
//!             "user-1",
//!             Policy::new().allow("prod/GET/*").deny("prod/DELETE/*"),
//!         )
//!         .context("tier", "gold")),
//!         _ => Err(AuthorizerError::Unauthorized),
//!     }
//! }
//!
//! let authorizer = CustomAuthorizer::token(check)
//!     .token_validation("^[a-z-]+$")
//!     .build()?;
//! let gateway = GatewayBuilder::new()
//!     .stage(Stage::builder("prod").build()?)
//!     .custom_authorizer("tokens", authorizer)
//!     .route(Route::new(Method::GET, "/pets").authorizer("tokens"))
//!     .build()?;
//! # let _ = gateway;
//! # Ok::<(), tower_gateway::ConfigError>(())
//! ```

use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use http::header::{AUTHORIZATION, HeaderName};
use http::{HeaderMap, Method, Request};
use moka::future::Cache;
use percent_encoding::percent_decode_str;
use regex::Regex;
use serde_json::{Map, Number, Value};

use super::{Authorization, Authorized, Identity};
use crate::api_key::{KeyDigest, valid_key_value};
use crate::clock::GatewayClock;
use crate::context::RequestContext;
use crate::error::ConfigError;
use crate::response::{GatewayError, GatewayResponseType};
use crate::route::RouteMethod;
use crate::stage::{Stage, StageVariables};

const DEFAULT_RESULT_TTL: Duration = Duration::from_secs(300);
const MAX_RESULT_TTL: Duration = Duration::from_secs(3600);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_CACHE_ENTRIES: u64 = 10_000;

type BoxedResponse =
    Pin<Box<dyn Future<Output = Result<AuthorizerResponse, AuthorizerError>> + Send>>;
type AuthorizerFn = dyn Fn(AuthorizerRequest) -> BoxedResponse + Send + Sync;

/// Why a custom authorizer's function did not produce a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthorizerError {
    /// The caller is not authenticated: 401 `UNAUTHORIZED` (a Lambda authorizer's
    /// `"Unauthorized"` error).
    Unauthorized,
    /// The authorizer itself failed (a dependency is down, …): 500 `AUTHORIZER_FAILURE`. The
    /// text goes to the log, not to the client.
    Failure(String),
}

impl fmt::Display for AuthorizerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unauthorized => f.write_str("unauthorized"),
            Self::Failure(reason) => write!(f, "authorizer failure: {reason}"),
        }
    }
}

impl std::error::Error for AuthorizerError {}

/// How a call of the function failed, as the cache shares it between waiting requests.
#[derive(Debug, Clone)]
enum CallError {
    /// The function's own answer.
    Returned(AuthorizerError),
    /// The function answered something API Gateway would not accept (a resource it cannot
    /// read, a non-finite number, an impossible key): `AUTHORIZER_CONFIGURATION_ERROR`.
    Malformed(String),
}

/// A value of an authorizer's context map: API Gateway allows strings, numbers and booleans
/// only.
#[derive(Debug, Clone, PartialEq)]
pub enum ContextValue {
    /// A string.
    String(String),
    /// A number; a NaN or infinite one fails the request with `AUTHORIZER_FAILURE`.
    Number(f64),
    /// A boolean.
    Bool(bool),
}

impl From<&str> for ContextValue {
    fn from(value: &str) -> Self {
        Self::String(value.to_owned())
    }
}

impl From<String> for ContextValue {
    fn from(value: String) -> Self {
        Self::String(value)
    }
}

impl From<bool> for ContextValue {
    fn from(value: bool) -> Self {
        Self::Bool(value)
    }
}

impl From<f64> for ContextValue {
    fn from(value: f64) -> Self {
        Self::Number(value)
    }
}

impl From<i64> for ContextValue {
    fn from(value: i64) -> Self {
        // Context numbers are JSON numbers; i64 beyond 2^53 loses precision, as in JSON.
        Self::Number(value as f64)
    }
}

impl From<i32> for ContextValue {
    fn from(value: i32) -> Self {
        Self::Number(f64::from(value))
    }
}

/// An IAM-style policy: Allow and Deny statements over resources `{stage}/{METHOD}/{path}`
/// (for `GET /pets/1` on stage `prod`: `prod/GET/pets/1`), where `*` matches any run of
/// characters. A full ARN (`arn:aws:execute-api:…:api-id/prod/GET/pets/1`) is accepted too;
/// the part before the stage is ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[must_use]
pub struct Policy {
    allow: Vec<String>,
    deny: Vec<String>,
}

impl Policy {
    /// An empty policy, which denies everything.
    pub fn new() -> Self {
        Self::default()
    }

    /// Allows requests matching `resource`.
    pub fn allow(mut self, resource: impl Into<String>) -> Self {
        self.allow.push(resource.into());
        self
    }

    /// Denies requests matching `resource`, whatever the Allow statements say.
    pub fn deny(mut self, resource: impl Into<String>) -> Self {
        self.deny.push(resource.into());
        self
    }

    /// The statements as patterns over `{stage}/{METHOD}/{path}`; a resource that fits no
    /// known form is an error (an unreadable Deny must not be dropped silently).
    fn compile(self) -> Result<CompiledPolicy, String> {
        let patterns = |resources: Vec<String>| -> Result<Box<[Box<str>]>, String> {
            resources
                .iter()
                .map(|resource| resource_pattern(resource).map(Box::from))
                .collect()
        };
        Ok(CompiledPolicy {
            allow: patterns(self.allow)?,
            deny: patterns(self.deny)?,
        })
    }
}

/// A policy's statements, ready to match.
#[derive(Debug)]
struct CompiledPolicy {
    allow: Box<[Box<str>]>,
    deny: Box<[Box<str>]>,
}

impl CompiledPolicy {
    fn allows(&self, method_arn: &str) -> bool {
        let matches = |pattern: &str| glob_matches(pattern, method_arn);
        !self.deny.iter().any(|pattern| matches(pattern))
            && self.allow.iter().any(|pattern| matches(pattern))
    }
}

/// A policy resource as a pattern over `{stage}/{METHOD}/{path}`: `prod/GET/pets`, the same
/// with a leading `/`, or an execute-api ARN (`arn:aws:execute-api:{region}:{account}:{api}/…`,
/// where an ARN without a path part, `arn:aws:execute-api:*:*:*`, means every resource).
fn resource_pattern(resource: &str) -> Result<&str, String> {
    let Some(arn) = resource.strip_prefix("arn:") else {
        return Ok(resource.strip_prefix('/').unwrap_or(resource));
    };
    // partition:service:region:account:resource
    let Some(api_and_path) = arn.splitn(5, ':').nth(4) else {
        return Err(format!(
            "the policy resource `{resource}` is not an execute-api ARN"
        ));
    };
    match api_and_path.split_once('/') {
        Some((_, path)) => Ok(path),
        None if api_and_path.bytes().all(|byte| byte == b'*') => Ok("*"),
        None => Err(format!(
            "the policy resource `{resource}` names an API but no stage, method or path"
        )),
    }
}

/// `*` matches any run of characters, `/` included, as in IAM resource patterns.
fn glob_matches(pattern: &str, text: &str) -> bool {
    let (pattern, text) = (pattern.as_bytes(), text.as_bytes());
    let (mut p, mut t) = (0, 0);
    // Where the last `*` was, and how much of the text it has swallowed so far.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((star_p, star_t)) = star {
            p = star_p + 1;
            t = star_t + 1;
            star = Some((star_p, star_t + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&byte| byte == b'*')
}

#[derive(Debug, Clone, PartialEq)]
enum Decision {
    Policy(Policy),
    Simple(bool),
}

/// A decision as cached.
#[derive(Debug)]
enum CompiledDecision {
    Policy(CompiledPolicy),
    Simple(bool),
}

/// What a custom authorizer's function decided.
#[derive(Clone, PartialEq)]
#[must_use]
pub struct AuthorizerResponse {
    principal_id: Option<String>,
    decision: Decision,
    context: Vec<(String, ContextValue)>,
    usage_identifier_key: Option<String>,
}

impl fmt::Debug for AuthorizerResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The usage identifier is an API key value: never printed.
        f.debug_struct("AuthorizerResponse")
            .field("principal_id", &self.principal_id)
            .field("decision", &self.decision)
            .field("context", &self.context)
            .finish_non_exhaustive()
    }
}

impl AuthorizerResponse {
    /// A principal and a policy, evaluated against every request (also from the cache).
    pub fn policy(principal_id: impl Into<String>, policy: Policy) -> Self {
        Self {
            principal_id: Some(principal_id.into()),
            decision: Decision::Policy(policy),
            context: Vec::new(),
            usage_identifier_key: None,
        }
    }

    /// A simple response (HTTP APIs' `{"isAuthorized": …}`): authorized for every route the
    /// authorizer guards, or for none.
    pub fn simple(is_authorized: bool) -> Self {
        Self {
            principal_id: None,
            decision: Decision::Simple(is_authorized),
            context: Vec::new(),
            usage_identifier_key: None,
        }
    }

    /// Sets the principal (for a [simple](Self::simple) response).
    pub fn principal_id(mut self, principal_id: impl Into<String>) -> Self {
        self.principal_id = Some(principal_id.into());
        self
    }

    /// Adds a context entry (`$context.authorizer.<key>`).
    pub fn context(mut self, key: impl Into<String>, value: impl Into<ContextValue>) -> Self {
        self.context.push((key.into(), value.into()));
        self
    }

    /// The API key to meter the request with, when the gateway's key source is
    /// [`ApiKeySource::Authorizer`](crate::api_key::ApiKeySource::Authorizer) (API Gateway's
    /// `usageIdentifierKey`).
    pub fn usage_identifier_key(mut self, key: impl Into<String>) -> Self {
        self.usage_identifier_key = Some(key.into());
        self
    }
}

/// What the function gets about the request.
#[derive(Debug, Clone)]
pub struct AuthorizerRequest {
    token: Option<String>,
    method_arn: String,
    http_method: Method,
    path: String,
    resource_path: Option<String>,
    stage: Option<String>,
    headers: HeaderMap,
    query: Option<String>,
    path_parameters: Vec<(String, String)>,
    stage_variables: StageVariables,
    source_ip: Option<IpAddr>,
    request_id: String,
}

impl AuthorizerRequest {
    /// TOKEN mode: the identity header's value, as sent (`Bearer ` included).
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// The resource a policy is matched against: `{stage}/{METHOD}/{path}` (API Gateway's
    /// `methodArn` without the `arn:…:api-id/` prefix).
    pub fn method_arn(&self) -> &str {
        &self.method_arn
    }

    /// The request's method.
    pub fn http_method(&self) -> &Method {
        &self.http_method
    }

    /// The request's path, after the stage's base path was removed.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The matched route's template (`/pets/{petId}`).
    pub fn resource_path(&self) -> Option<&str> {
        self.resource_path.as_deref()
    }

    /// The stage's name.
    pub fn stage(&self) -> Option<&str> {
        self.stage.as_deref()
    }

    /// REQUEST mode: the request's headers (empty in TOKEN mode).
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// REQUEST mode: the raw query string.
    pub fn query_string(&self) -> Option<&str> {
        self.query.as_deref()
    }

    /// REQUEST mode: the first value of a query-string parameter, percent-decoded.
    pub fn query_parameter(&self, name: &str) -> Option<String> {
        query_parameter(self.query.as_deref(), name)
    }

    /// A path parameter of the matched route.
    pub fn path_parameter(&self, name: &str) -> Option<&str> {
        self.path_parameters
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// The stage's variables.
    pub fn stage_variables(&self) -> &StageVariables {
        &self.stage_variables
    }

    /// The client's address (`$context.identity.sourceIp`).
    pub fn source_ip(&self) -> Option<IpAddr> {
        self.source_ip
    }

    /// The request id.
    pub fn request_id(&self) -> &str {
        &self.request_id
    }
}

fn query_parameter(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode_str(key).decode_utf8_lossy() == name)
            .then(|| percent_decode_str(value).decode_utf8_lossy().into_owned())
    })
}

/// Where a REQUEST authorizer's identity comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum IdentitySource {
    Header(HeaderName),
    Query(String),
    StageVariable(String),
    Context(ContextField),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ContextField {
    HttpMethod,
    Path,
    ResourcePath,
    Stage,
    SourceIp,
    UserAgent,
}

impl IdentitySource {
    /// API Gateway's REST syntax (`method.request.header.X`) or its HTTP API syntax
    /// (`$request.header.X`).
    fn parse(source: &str) -> Option<Self> {
        let source = source.trim();
        let rest = source
            .strip_prefix("method.request.")
            .or_else(|| source.strip_prefix("$request."));
        if let Some(rest) = rest {
            if let Some(name) = rest.strip_prefix("header.") {
                return HeaderName::try_from(name).ok().map(Self::Header);
            }
            let name = rest.strip_prefix("querystring.")?;
            return (!name.is_empty()).then(|| Self::Query(name.to_owned()));
        }
        if let Some(name) = source
            .strip_prefix("stageVariables.")
            .or_else(|| source.strip_prefix("$stageVariables."))
        {
            return (!name.is_empty()).then(|| Self::StageVariable(name.to_owned()));
        }
        let field = source
            .strip_prefix("context.")
            .or_else(|| source.strip_prefix("$context."))?;
        Some(Self::Context(match field {
            "httpMethod" => ContextField::HttpMethod,
            "path" => ContextField::Path,
            "resourcePath" => ContextField::ResourcePath,
            "stage" => ContextField::Stage,
            "identity.sourceIp" => ContextField::SourceIp,
            "identity.userAgent" => ContextField::UserAgent,
            _ => return None,
        }))
    }

    fn value<B>(&self, request: &Request<B>, context: &RequestContext) -> Option<String> {
        let value = match self {
            Self::Header(name) => request.headers().get(name)?.to_str().ok()?.to_owned(),
            Self::Query(name) => query_parameter(request.uri().query(), name)?,
            Self::StageVariable(name) => context.stage_variables().get(name)?.to_owned(),
            Self::Context(field) => match field {
                ContextField::HttpMethod => request.method().as_str().to_owned(),
                ContextField::Path => request.uri().path().to_owned(),
                ContextField::ResourcePath => context.resource_path()?.to_owned(),
                ContextField::Stage => context.stage()?.name().to_owned(),
                ContextField::SourceIp => context.source_ip()?.to_string(),
                ContextField::UserAgent => context.user_agent()?.to_owned(),
            },
        };
        (!value.trim().is_empty()).then_some(value)
    }
}

enum Mode {
    Token {
        header: HeaderName,
        validation: Option<Regex>,
    },
    Request {
        sources: Vec<IdentitySource>,
    },
}

/// Builds a [`CustomAuthorizer`]; see the [module docs](self).
#[must_use]
pub struct CustomAuthorizerBuilder {
    function: Arc<AuthorizerFn>,
    token_mode: bool,
    identity_header: String,
    token_validation: Option<String>,
    identity_sources: Vec<String>,
    result_ttl: Duration,
    cache_entries: u64,
    timeout: Duration,
    clock: Option<GatewayClock>,
}

impl fmt::Debug for CustomAuthorizerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CustomAuthorizerBuilder")
            .field("token_mode", &self.token_mode)
            .field("identity_sources", &self.identity_sources)
            .field("result_ttl", &self.result_ttl)
            .finish_non_exhaustive()
    }
}

impl CustomAuthorizerBuilder {
    fn new<F, Fut>(function: F, token_mode: bool) -> Self
    where
        F: Fn(AuthorizerRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<AuthorizerResponse, AuthorizerError>> + Send + 'static,
    {
        Self {
            function: Arc::new(move |request| Box::pin(function(request)) as BoxedResponse),
            token_mode,
            identity_header: AUTHORIZATION.as_str().to_owned(),
            token_validation: None,
            identity_sources: Vec::new(),
            result_ttl: DEFAULT_RESULT_TTL,
            cache_entries: DEFAULT_CACHE_ENTRIES,
            timeout: DEFAULT_TIMEOUT,
            clock: None,
        }
    }

    /// TOKEN mode: the header holding the token (`Authorization` by default).
    pub fn identity_header(mut self, name: impl Into<String>) -> Self {
        self.identity_header = name.into();
        self
    }

    /// TOKEN mode: a regex the whole token must match before the function is called (a
    /// token that does not match gets 401).
    pub fn token_validation(mut self, regex: impl Into<String>) -> Self {
        self.token_validation = Some(regex.into());
        self
    }

    /// REQUEST mode: an identity source, in API Gateway's syntax:
    /// `method.request.header.NAME`, `method.request.querystring.NAME`,
    /// `stageVariables.NAME`, or `context.httpMethod` / `path` / `resourcePath` / `stage` /
    /// `identity.sourceIp` / `identity.userAgent` (HTTP APIs' `$request.header.NAME`,
    /// `$request.querystring.NAME`, `$stageVariables.NAME` and `$context.NAME` too).
    pub fn identity_source(mut self, source: impl Into<String>) -> Self {
        self.identity_sources.push(source.into());
        self
    }

    /// How long a response is cached (300 s by default, at most 3,600 s; zero turns the
    /// cache off).
    pub fn result_ttl(mut self, ttl: Duration) -> Self {
        self.result_ttl = ttl;
        self
    }

    /// How many responses the cache holds at most (10,000 by default).
    pub fn cache_entries(mut self, entries: u64) -> Self {
        self.cache_entries = entries;
        self
    }

    /// How long the function may take before the request fails with `AUTHORIZER_FAILURE`
    /// (10 s by default).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The clock cached results age by (the system clock by default).
    pub fn clock(mut self, clock: GatewayClock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Checks the configuration and builds the authorizer.
    pub fn build(self) -> Result<CustomAuthorizer, ConfigError> {
        if self.result_ttl > MAX_RESULT_TTL {
            return Err(ConfigError::new(
                "custom_authorizer.result_ttl",
                "must be at most 3600 seconds",
            ));
        }
        if self.timeout.is_zero() {
            return Err(ConfigError::new(
                "custom_authorizer.timeout",
                "must be more than zero",
            ));
        }
        let caching = !self.result_ttl.is_zero();
        if caching && self.cache_entries == 0 {
            return Err(ConfigError::new(
                "custom_authorizer.cache_entries",
                "must be at least 1 while results are cached (set result_ttl to zero to turn \
                 the cache off)",
            ));
        }
        let mode = if self.token_mode {
            if !self.identity_sources.is_empty() {
                return Err(ConfigError::new(
                    "custom_authorizer.identity_sources",
                    "a TOKEN authorizer reads one header (identity_header); identity sources \
                     are for REQUEST authorizers",
                ));
            }
            let header = HeaderName::try_from(self.identity_header.as_str()).map_err(|_| {
                ConfigError::new(
                    "custom_authorizer.identity_header",
                    "not a valid header name",
                )
            })?;
            let validation = self
                .token_validation
                .map(|pattern| {
                    Regex::new(&format!("^(?:{pattern})$")).map_err(|error| {
                        ConfigError::new(
                            "custom_authorizer.token_validation",
                            format!("not a valid regex: {error}"),
                        )
                    })
                })
                .transpose()?;
            Mode::Token { header, validation }
        } else {
            if self.token_validation.is_some() {
                return Err(ConfigError::new(
                    "custom_authorizer.token_validation",
                    "token validation is for TOKEN authorizers",
                ));
            }
            let mut sources = Vec::with_capacity(self.identity_sources.len());
            for (index, source) in self.identity_sources.iter().enumerate() {
                sources.push(IdentitySource::parse(source).ok_or_else(|| {
                    ConfigError::new(
                        format!("custom_authorizer.identity_sources[{index}]"),
                        format!("`{source}` is not a supported identity source"),
                    )
                })?);
            }
            if caching && sources.is_empty() {
                return Err(ConfigError::new(
                    "custom_authorizer.identity_sources",
                    "caching needs at least one identity source, the cache key (or set \
                     result_ttl to zero)",
                ));
            }
            Mode::Request { sources }
        };
        // The cache's own expiry (on the system clock) frees memory; whether an entry is still
        // fresh is decided on the authorizer's clock, which tests can drive.
        let cache = caching.then(|| {
            Cache::builder()
                .max_capacity(self.cache_entries)
                .time_to_live(self.result_ttl)
                .build()
        });
        Ok(CustomAuthorizer {
            inner: Arc::new(Inner {
                function: self.function,
                mode,
                cache,
                result_ttl: self.result_ttl,
                timeout: self.timeout,
                clock: self.clock.unwrap_or_default(),
                generation: AtomicU64::new(0),
            }),
        })
    }
}

/// A response as cached: checked once, evaluated per request.
struct Decided {
    identity: Identity,
    decision: CompiledDecision,
    /// The cache generation the call started in; a flush makes older answers stale.
    generation: u64,
    usage_identifier: Option<KeyDigest>,
    /// When it stops being served, on the authorizer's clock.
    fresh_until: Duration,
}

impl Decided {
    fn from_response(
        response: AuthorizerResponse,
        fresh_until: Duration,
        generation: u64,
    ) -> Result<Self, String> {
        let mut context = Map::new();
        for (key, value) in response.context {
            let value = match value {
                ContextValue::String(text) => Value::String(text),
                ContextValue::Bool(flag) => Value::Bool(flag),
                ContextValue::Number(number) => {
                    Value::Number(Number::from_f64(number).ok_or_else(|| {
                        format!("the context value of `{key}` is not a finite number")
                    })?)
                }
            };
            context.insert(key, value);
        }
        let usage_identifier = match response.usage_identifier_key {
            Some(key) if valid_key_value(key.as_bytes()) => Some(KeyDigest::of(key.as_bytes())),
            Some(_) => {
                return Err(
                    "the usage identifier key is not a possible API key (20–128 \
                            visible ASCII characters)"
                        .to_owned(),
                );
            }
            None => None,
        };
        Ok(Self {
            identity: Identity::with_context(
                response.principal_id.map(Into::into),
                Map::new(),
                context,
            ),
            decision: match response.decision {
                Decision::Simple(allowed) => CompiledDecision::Simple(allowed),
                Decision::Policy(policy) => CompiledDecision::Policy(policy.compile()?),
            },
            generation,
            usage_identifier,
            fresh_until,
        })
    }

    /// The decision for one request; `method_arn` is only built for a policy.
    fn evaluate(&self, method_arn: impl FnOnce() -> String) -> Result<Authorized, GatewayError> {
        let allowed = match &self.decision {
            CompiledDecision::Simple(allowed) => *allowed,
            CompiledDecision::Policy(policy) => policy.allows(&method_arn()),
        };
        if allowed {
            Ok(Authorized {
                identity: self.identity.clone(),
                usage_identifier: self.usage_identifier,
            })
        } else {
            Err(GatewayError::new(GatewayResponseType::AccessDenied))
        }
    }
}

/// An authorizer whose decision is an async function of the user's; see the
/// [module docs](self).
///
/// Cheap to clone: clones share the function and the result cache.
pub struct CustomAuthorizer {
    inner: Arc<Inner>,
}

struct Inner {
    function: Arc<AuthorizerFn>,
    mode: Mode,
    cache: Option<Cache<Box<str>, Arc<Decided>>>,
    result_ttl: Duration,
    timeout: Duration,
    clock: GatewayClock,
    /// Bumped by every flush.
    generation: AtomicU64,
}

impl Clone for CustomAuthorizer {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl fmt::Debug for CustomAuthorizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CustomAuthorizer")
            .field(
                "mode",
                &match self.inner.mode {
                    Mode::Token { .. } => "TOKEN",
                    Mode::Request { .. } => "REQUEST",
                },
            )
            .field("cached", &self.inner.cache.is_some())
            .finish_non_exhaustive()
    }
}

impl CustomAuthorizer {
    /// A TOKEN authorizer: `function` gets the identity header's value.
    pub fn token<F, Fut>(function: F) -> CustomAuthorizerBuilder
    where
        F: Fn(AuthorizerRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<AuthorizerResponse, AuthorizerError>> + Send + 'static,
    {
        CustomAuthorizerBuilder::new(function, true)
    }

    /// A REQUEST authorizer: `function` gets the request's headers, query string, path
    /// parameters, stage variables and context.
    pub fn request<F, Fut>(function: F) -> CustomAuthorizerBuilder
    where
        F: Fn(AuthorizerRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<AuthorizerResponse, AuthorizerError>> + Send + 'static,
    {
        CustomAuthorizerBuilder::new(function, false)
    }

    /// Forgets every cached response (e.g. after revoking a user's access); an answer to a
    /// call that was already running is not cached either.
    pub fn flush_cache(&self) {
        self.inner.generation.fetch_add(1, Ordering::AcqRel);
        if let Some(cache) = &self.inner.cache {
            cache.invalidate_all();
        }
    }

    pub(crate) fn authorize<B>(
        &self,
        request: &Request<B>,
        context: &RequestContext,
    ) -> Authorization {
        let inner = &self.inner;
        let unauthorized =
            || Authorization::Done(Err(GatewayError::new(GatewayResponseType::Unauthorized)));
        let stage = context.stage().map(Stage::name);
        // Stage first: an answer given on one stage (where stage variables may differ) is not
        // reused on another.
        let mut cache_key = String::from(stage.unwrap_or("$default"));
        cache_key.push('\0');
        let token = match &inner.mode {
            Mode::Token { header, validation } => {
                let mut values = request.headers().get_all(header).iter();
                let (Some(value), None) = (values.next(), values.next()) else {
                    return unauthorized();
                };
                let Some(token) = value.to_str().ok().filter(|token| !token.trim().is_empty())
                else {
                    return unauthorized();
                };
                if validation
                    .as_ref()
                    .is_some_and(|regex| !regex.is_match(token))
                {
                    return unauthorized();
                }
                cache_key.push_str(token);
                Some(token)
            }
            Mode::Request { sources } => {
                for source in sources {
                    let Some(value) = source.value(request, context) else {
                        return unauthorized();
                    };
                    // Length-prefixed, so that no two lists of values make the same key.
                    cache_key.push_str(&value.len().to_string());
                    cache_key.push(':');
                    cache_key.push_str(&value);
                }
                None
            }
        };
        // The method a policy sees is the route's: a HEAD request served by a GET route is
        // judged as the GET it runs as, so a Deny on GET covers it.
        let method = match context.route().map(|route| route.method()) {
            Some(RouteMethod::Method(method)) => method.as_str(),
            _ => request.method().as_str(),
        };
        let method_arn = || {
            let (stage, path) = (stage.unwrap_or("$default"), request.uri().path());
            let mut arn = String::with_capacity(stage.len() + method.len() + path.len() + 1);
            arn.push_str(stage);
            arn.push('/');
            arn.push_str(method);
            arn.push_str(path);
            arn
        };
        if let Some(cache) = &inner.cache
            && let Some(decided) = cached(cache, &cache_key)
            && inner.is_fresh(&decided)
        {
            return Authorization::Done(decided.evaluate(method_arn));
        }
        let call = AuthorizerRequest {
            token: token.map(str::to_owned),
            method_arn: method_arn(),
            http_method: request.method().clone(),
            path: request.uri().path().to_owned(),
            resource_path: context.resource_path().map(str::to_owned),
            stage: stage.map(str::to_owned),
            headers: match inner.mode {
                Mode::Token { .. } => HeaderMap::new(),
                Mode::Request { .. } => request.headers().clone(),
            },
            query: request.uri().query().map(str::to_owned),
            path_parameters: context
                .path_parameters()
                .map(|(name, value)| (name.to_owned(), value.to_owned()))
                .collect(),
            stage_variables: context.stage_variables().clone(),
            source_ip: context.source_ip(),
            request_id: context.request_id().as_str().to_owned(),
        };
        let inner = Arc::clone(&self.inner);
        let cache_key = cache_key.into_boxed_str();
        Authorization::Pending(Box::pin(async move {
            let method_arn = call.method_arn.clone();
            let decided = match &inner.cache {
                Some(cache) => {
                    if cache
                        .get(&cache_key)
                        .await
                        .is_some_and(|decided| !inner.is_fresh(&decided))
                    {
                        cache.invalidate(&cache_key).await;
                    }
                    cache
                        .try_get_with(cache_key, invoke(&inner, call))
                        .await
                        .map_err(|error| (*error).clone())
                }
                None => invoke(&inner, call).await,
            };
            match decided {
                Ok(decided) => decided.evaluate(|| method_arn),
                Err(CallError::Returned(AuthorizerError::Unauthorized)) => {
                    Err(GatewayError::new(GatewayResponseType::Unauthorized))
                }
                Err(CallError::Returned(AuthorizerError::Failure(reason))) => {
                    tracing::warn!(%reason, "custom authorizer failed");
                    Err(GatewayError::new(GatewayResponseType::AuthorizerFailure))
                }
                Err(CallError::Malformed(reason)) => {
                    tracing::warn!(%reason, "custom authorizer answered something unusable");
                    Err(GatewayError::new(
                        GatewayResponseType::AuthorizerConfigurationError,
                    ))
                }
            }
        }))
    }
}

impl Inner {
    /// Whether a cached answer may still be served: within its TTL, and not older than the
    /// last flush.
    fn is_fresh(&self, decided: &Decided) -> bool {
        self.clock.elapsed() < decided.fresh_until
            && decided.generation == self.generation.load(Ordering::Acquire)
    }
}

/// A cache lookup without waiting: moka's lookups do not wait for anything, so the first poll
/// answers. Should one ever wait, the request takes the slow path, which looks again.
fn cached(cache: &Cache<Box<str>, Arc<Decided>>, key: &str) -> Option<Arc<Decided>> {
    let lookup = pin!(cache.get(key));
    match lookup.poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(hit) => hit,
        Poll::Pending => None,
    }
}

async fn invoke(inner: &Inner, request: AuthorizerRequest) -> Result<Arc<Decided>, CallError> {
    let generation = inner.generation.load(Ordering::Acquire);
    let failure = |reason: &str| CallError::Returned(AuthorizerError::Failure(reason.to_owned()));
    // The function itself may panic before it returns a future, as may the future.
    let Ok(future) = catch_unwind(AssertUnwindSafe(|| (inner.function)(request))) else {
        return Err(failure("the function panicked"));
    };
    match tokio::time::timeout(inner.timeout, CatchUnwind(future)).await {
        Err(_) => Err(failure("timed out")),
        Ok(None) => Err(failure("the function panicked")),
        Ok(Some(Err(error))) => Err(CallError::Returned(error)),
        Ok(Some(Ok(response))) => {
            let fresh_until = inner.clock.elapsed() + inner.result_ttl;
            Decided::from_response(response, fresh_until, generation)
                .map(Arc::new)
                .map_err(CallError::Malformed)
        }
    }
}

/// Runs the user's future, turning a panic into `None`, so that a bug in the function fails
/// one request with `AUTHORIZER_FAILURE` instead of the connection.
struct CatchUnwind(BoxedResponse);

impl Future for CatchUnwind {
    type Output = Option<Result<AuthorizerResponse, AuthorizerError>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let future = self.0.as_mut();
        match catch_unwind(AssertUnwindSafe(|| future.poll(cx))) {
            Ok(Poll::Ready(output)) => Poll::Ready(Some(output)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(_) => Poll::Ready(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_any_run_of_characters() {
        assert!(glob_matches("prod/GET/pets", "prod/GET/pets"));
        assert!(glob_matches("prod/GET/*", "prod/GET/pets/1"));
        assert!(glob_matches("*", "prod/DELETE/"));
        assert!(glob_matches("prod/*/pets/*", "prod/PUT/pets/7"));
        assert!(glob_matches("*/GET/*/photos", "prod/GET/pets/1/photos"));
        assert!(!glob_matches("prod/GET/*", "prod/POST/pets"));
        assert!(!glob_matches("prod/GET/pets", "prod/GET/pets/1"));
        assert!(!glob_matches("prod/GET/pets/*", "prod/GET/pets"));
        assert!(!glob_matches("", "x"));
        assert!(glob_matches("", ""));
    }

    fn compiled(policy: Policy) -> CompiledPolicy {
        policy.compile().unwrap()
    }

    #[test]
    fn deny_wins_and_no_allow_means_deny() {
        let policy = compiled(Policy::new().allow("prod/*").deny("/prod/DELETE/*"));
        assert!(policy.allows("prod/GET/pets"));
        assert!(!policy.allows("prod/DELETE/pets/1"));
        assert!(!policy.allows("test/GET/pets"));
        assert!(!compiled(Policy::new()).allows("prod/GET/pets"));
        let arn = compiled(
            Policy::new().allow("arn:aws:execute-api:eu-west-1:123456789012:abc/prod/GET/*"),
        );
        assert!(arn.allows("prod/GET/pets"));
        assert!(!arn.allows("prod/POST/pets"));
        // An ARN without a path part covers everything, for a Deny as for an Allow.
        let deny_all = compiled(
            Policy::new()
                .allow("prod/*")
                .deny("arn:aws:execute-api:*:*:*"),
        );
        assert!(!deny_all.allows("prod/GET/pets"));
        for unreadable in ["arn:aws:execute-api", "arn:aws:execute-api:eu:1:abc"] {
            assert!(
                Policy::new().deny(unreadable).compile().is_err(),
                "{unreadable}"
            );
        }
    }

    #[test]
    fn identity_sources_parse_in_both_syntaxes() {
        assert_eq!(
            IdentitySource::parse("method.request.header.X-Tenant"),
            Some(IdentitySource::Header(HeaderName::from_static("x-tenant")))
        );
        assert_eq!(
            IdentitySource::parse("$request.querystring.token"),
            Some(IdentitySource::Query("token".to_owned()))
        );
        assert_eq!(
            IdentitySource::parse("stageVariables.tier"),
            Some(IdentitySource::StageVariable("tier".to_owned()))
        );
        assert_eq!(
            IdentitySource::parse("context.identity.sourceIp"),
            Some(IdentitySource::Context(ContextField::SourceIp))
        );
        for bad in [
            "method.request.header.bad header",
            "method.request.querystring.",
            "context.requestTimeEpoch",
            "header.x",
            "",
        ] {
            assert_eq!(IdentitySource::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn query_parameters_are_decoded() {
        assert_eq!(
            query_parameter(Some("a=1&to%20ken=x%2Fy&a=2"), "to ken"),
            Some("x/y".to_owned())
        );
        assert_eq!(query_parameter(Some("a=1&a=2"), "a"), Some("1".to_owned()));
        assert_eq!(query_parameter(Some("flag"), "flag"), Some(String::new()));
        assert_eq!(query_parameter(None, "a"), None);
    }
}
