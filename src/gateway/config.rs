//! The declarative gateway configuration: the same gateway as the builder, from a file.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::GatewayBuilder;
use crate::api_key::{ApiKey, ApiKeySource, InMemoryApiKeyStore, KeyDigest};
use crate::authorizer::jwt::{JwtAlgorithm, JwtAuthorizer};
use crate::cache::CacheSettings;
use crate::canary::CanarySettings;
use crate::error::ConfigError;
use crate::observe::AccessLog;
use crate::response::{GatewayResponse, GatewayResponseType};
use crate::route::{Route, RouteCacheSettings, RouteSettings, ThrottleSettings, UnmatchedRoutes};
use crate::stage::{Stage, StageSelection};
use crate::usage_plan::{Quota, UsagePlan};
use crate::validate::{RequestParameter, SchemaDraft, Validator};

/// A gateway described as data, for operators who keep their gateway in a file.
///
/// It deserialises from any serde format (JSON, YAML, TOML, …); [`GatewayConfig::from_json`]
/// reads JSON with errors that give the line and column. Unknown fields are errors, so a typo
/// is never silently ignored. Turn it into a gateway with
/// [`GatewayBuilder::from_config`], which applies the same checks as the builder.
///
/// # Example
///
/// ```
/// use tower_gateway::{GatewayBuilder, GatewayConfig};
///
/// let config = GatewayConfig::from_json(r#"{
///     "stages": [{ "name": "prod", "variables": { "greeting": "hello" } }],
///     "stage_selection": { "mode": "base_path" },
///     "routes": [
///         { "route": "GET /pets" },
///         { "route": "GET /pets/{petId}" }
///     ],
///     "gateway_responses": {
///         "MISSING_AUTHENTICATION_TOKEN": { "status": 404, "body": "{\"message\":\"Not here\"}" }
///     }
/// }"#).expect("valid JSON");
/// let gateway = GatewayBuilder::from_config(config)
///     .expect("valid gateway")
///     .build()
///     .expect("valid gateway");
/// # let _ = gateway;
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct GatewayConfig {
    /// The stages.
    #[serde(default)]
    pub stages: Vec<StageConfig>,
    /// How requests find their stage (see [`GatewayBuilder::stage_selection`]).
    #[serde(default)]
    pub stage_selection: Option<StageSelection>,
    /// The stage for requests whose stage is unknown.
    #[serde(default)]
    pub default_stage: Option<String>,
    /// The routes.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// `reject` (default) or `pass_through`.
    #[serde(default)]
    pub unmatched_routes: UnmatchedRoutes,
    /// The longest request path accepted, in bytes.
    #[serde(default)]
    pub max_path_length: Option<usize>,
    /// Overrides of gateway responses by type name (`THROTTLED`, `DEFAULT_4XX`, …).
    #[serde(default)]
    pub gateway_responses: BTreeMap<GatewayResponseType, GatewayResponse>,
    /// Request-id settings.
    #[serde(default)]
    pub request_id: RequestIdConfig,
    /// Proxies (addresses or CIDR blocks) whose `X-Forwarded-For` is believed.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// API keys, for the routes that require one.
    #[serde(default)]
    pub api_keys: Option<ApiKeysConfig>,
    /// Usage plans.
    #[serde(default)]
    pub usage_plans: Vec<UsagePlanConfig>,
    /// Whether responses carry `x-ratelimit-*` headers (default true).
    #[serde(default)]
    pub rate_limit_headers: Option<bool>,
    /// JWT and Cognito authorizers that routes can name. Custom authorizers carry a function
    /// of yours: declare them in code ([`GatewayBuilder::custom_authorizer`] on the builder
    /// that [`GatewayBuilder::from_config`] returns) and name them from routes here.
    #[serde(default)]
    pub authorizers: Vec<JwtAuthorizerConfig>,
    /// Request validators by name (see [`validate`](crate::validate)).
    #[serde(default)]
    pub request_validators: BTreeMap<String, Validator>,
    /// Models (JSON Schemas) by name.
    #[serde(default)]
    pub models: BTreeMap<String, serde_json::Value>,
    /// The dialect of models without a `$schema`: `draft4` (default), `draft6`, `draft7`,
    /// `draft2019-09` or `draft2020-12`.
    #[serde(default)]
    pub default_schema_draft: Option<SchemaDraft>,
    /// The largest request body accepted, in bytes (default 10 MB).
    #[serde(default)]
    pub max_body_bytes: Option<u64>,
    /// Whether `BAD_REQUEST_BODY` responses say why the body was refused (default false).
    #[serde(default)]
    pub expose_validation_errors: bool,
    /// The access log: `clf`, `json`, or a format of `$context` variables (see
    /// [`AccessLog`]). Off when absent.
    #[serde(default)]
    pub access_log: Option<String>,
    /// Whether the gateway records metrics (default true; feature `metrics`).
    #[serde(default)]
    pub metrics: Option<bool>,
    /// Throttles and quotas on Redis (feature `redis`); in memory when absent.
    #[cfg(feature = "redis")]
    #[serde(default)]
    pub redis: Option<crate::store::RedisConfig>,
}

/// A JWT authorizer in a [`GatewayConfig`]; the fields are the
/// [`JwtAuthorizerBuilder`](crate::authorizer::jwt::JwtAuthorizerBuilder)'s. Keys come from
/// exactly one of `jwks_url`, `oidc_discovery` (the issuer's discovery document), `jwks` (an
/// inline document) or `cognito`.
///
/// ```
/// use tower_gateway::{GatewayBuilder, GatewayConfig};
///
/// let config = GatewayConfig::from_json(r#"{
///     "stages": [{ "name": "prod" }],
///     "authorizers": [
///         { "name": "users", "issuer": "https://login.example.com", "oidc_discovery": true,
///           "audiences": ["pets-api"] },
///         { "name": "pool", "cognito": { "region": "eu-west-1",
///           "user_pool_id": "eu-west-1_AbC123" }, "audiences": ["app-client-id"] }
///     ],
///     "routes": [
///         { "route": "GET /pets", "authorizer": "users", "authorization_scopes": ["pets/read"] },
///         { "route": "GET /admin", "authorizer": "pool", "authorization_groups": ["admins"] }
///     ]
/// }"#)?;
/// # #[cfg(feature = "rustls")]
/// let gateway = GatewayBuilder::from_config(config)?.build()?;
/// # Ok::<(), tower_gateway::ConfigError>(())
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct JwtAuthorizerConfig {
    /// The name routes use.
    pub name: String,
    /// The accepted issuer (`iss`); derived for `cognito`.
    #[serde(default)]
    pub issuer: Option<String>,
    /// The accepted audiences (`aud`, or `client_id` when `aud` is absent).
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Keys from a JWKS URL.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// Keys through the issuer's OIDC discovery document.
    #[serde(default)]
    pub oidc_discovery: bool,
    /// Keys from an inline JWKS document.
    #[serde(default)]
    pub jwks: Option<serde_json::Value>,
    /// A Cognito user pool (see [`JwtAuthorizer::cognito`]).
    #[serde(default)]
    pub cognito: Option<CognitoConfig>,
    /// The accepted algorithms (`["RS256"]`); by default every one the keys verify.
    #[serde(default)]
    pub algorithms: Vec<JwtAlgorithm>,
    /// Clock leeway in seconds (default 60).
    #[serde(default)]
    pub leeway_seconds: Option<u64>,
    /// Claims every token must have.
    #[serde(default)]
    pub required_claims: Vec<String>,
    /// The header the token is read from (default `Authorization`).
    #[serde(default)]
    pub identity_header: Option<String>,
    /// The claim route groups are read from (default `cognito:groups`).
    #[serde(default)]
    pub groups_claim: Option<String>,
}

/// A Cognito user pool in a [`JwtAuthorizerConfig`].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct CognitoConfig {
    /// The pool's region (`eu-west-1`).
    pub region: String,
    /// The pool's id (`eu-west-1_AbC123`).
    pub user_pool_id: String,
}

impl JwtAuthorizerConfig {
    fn into_authorizer(self) -> Result<(String, JwtAuthorizer), ConfigError> {
        let name = self.name;
        let field = |field: &str| format!("authorizers[{name}].{field}");
        let sources = usize::from(self.jwks_url.is_some())
            + usize::from(self.oidc_discovery)
            + usize::from(self.jwks.is_some())
            + usize::from(self.cognito.is_some());
        if sources != 1 {
            return Err(ConfigError::new(
                field("keys"),
                "name exactly one of jwks_url, oidc_discovery, jwks or cognito",
            ));
        }
        let mut builder = match (&self.cognito, &self.issuer) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    field("issuer"),
                    "a Cognito authorizer derives its issuer from the user pool",
                ));
            }
            (Some(pool), None) => JwtAuthorizer::cognito(&pool.region, &pool.user_pool_id),
            (None, Some(issuer)) if self.oidc_discovery => {
                JwtAuthorizer::builder().oidc_discovery(issuer)
            }
            (None, Some(issuer)) => JwtAuthorizer::builder().issuer(issuer),
            (None, None) => {
                return Err(ConfigError::new(field("issuer"), "an issuer is required"));
            }
        };
        if let Some(url) = self.jwks_url {
            builder = builder.jwks_url(url);
        }
        if let Some(jwks) = self.jwks {
            builder = builder.jwks_json(jwks.to_string());
        }
        for audience in self.audiences {
            builder = builder.audience(audience);
        }
        if !self.algorithms.is_empty() {
            builder = builder.algorithms(self.algorithms);
        }
        if let Some(seconds) = self.leeway_seconds {
            builder = builder.leeway(std::time::Duration::from_secs(seconds));
        }
        for claim in self.required_claims {
            builder = builder.required_claim(claim);
        }
        if let Some(header) = self.identity_header {
            builder = builder.identity_header(header);
        }
        if let Some(claim) = self.groups_claim {
            builder = builder.groups_claim(claim);
        }
        let authorizer = builder.build().map_err(|error| {
            let inner = error.field().strip_prefix("jwt.").unwrap_or(error.field());
            ConfigError::new(field(inner), error.rule())
        })?;
        Ok((name, authorizer))
    }
}

/// A usage plan in a [`GatewayConfig`].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct UsagePlanConfig {
    /// The plan's id.
    pub id: String,
    /// The stages it applies to.
    #[serde(default)]
    pub stages: Vec<String>,
    /// The throttle each key gets.
    #[serde(default)]
    pub throttle: Option<ThrottleSettings>,
    /// Per-route overrides by route key (`"GET /pets/{petId}"`).
    #[serde(default)]
    pub method_throttles: BTreeMap<String, ThrottleSettings>,
    /// The quota each key gets.
    #[serde(default)]
    pub quota: Option<Quota>,
    /// The ids of the keys in the plan.
    #[serde(default)]
    pub keys: Vec<String>,
}

/// The API keys of a [`GatewayConfig`], loaded into an
/// [`InMemoryApiKeyStore`].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ApiKeysConfig {
    /// `HEADER` (default) or `AUTHORIZER`.
    #[serde(default)]
    pub source: ApiKeySource,
    /// The header that carries keys (default `x-api-key`).
    #[serde(default)]
    pub header: Option<String>,
    /// The keys.
    #[serde(default)]
    pub keys: Vec<ApiKeyConfig>,
}

/// One API key in a [`GatewayConfig`]: give its `value`, or, to keep secrets out of the
/// file, the hex SHA-256 digest of the value as `value_sha256`.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ApiKeyConfig {
    /// The key's id (generated when absent).
    #[serde(default)]
    pub id: Option<String>,
    /// The key's name.
    pub name: String,
    /// The key's value.
    #[serde(default)]
    pub value: Option<String>,
    /// The hex SHA-256 digest of the key's value.
    #[serde(default)]
    pub value_sha256: Option<String>,
    /// Whether the key is accepted (default true).
    #[serde(default)]
    pub enabled: Option<bool>,
    /// The customer the key belongs to.
    #[serde(default)]
    pub customer_id: Option<String>,
    /// A description.
    #[serde(default)]
    pub description: Option<String>,
}

impl std::fmt::Debug for ApiKeyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeyConfig")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("value", &self.value.as_ref().map(|_| "<redacted>"))
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
}

impl ApiKeyConfig {
    fn into_key(self, index: usize) -> Result<ApiKey, ConfigError> {
        let field = format!("api_keys.keys[{index}]");
        let mut key = match (self.value, self.value_sha256) {
            (Some(value), None) => ApiKey::new(self.name, value),
            (None, Some(hex)) => ApiKey::from_digest(
                self.name,
                KeyDigest::from_hex(&hex).ok_or_else(|| {
                    ConfigError::new(format!("{field}.value_sha256"), "expected 64 hex digits")
                })?,
            ),
            _ => {
                return Err(ConfigError::new(
                    field,
                    "give exactly one of `value` and `value_sha256`",
                ));
            }
        };
        if let Some(id) = self.id {
            key = key.id(id);
        }
        if let Some(enabled) = self.enabled {
            key = key.enabled(enabled);
        }
        if let Some(customer_id) = self.customer_id {
            key = key.customer_id(customer_id);
        }
        if let Some(description) = self.description {
            key = key.description(description);
        }
        Ok(key)
    }
}

/// A stage in a [`GatewayConfig`].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct StageConfig {
    /// The stage's name.
    pub name: String,
    /// The stage's variables.
    #[serde(default)]
    pub variables: BTreeMap<String, String>,
    /// The stage's default throttle.
    #[serde(default)]
    pub throttle: Option<ThrottleSettings>,
    /// The stage's response cache (see [`CacheSettings`]): `{}` for the defaults.
    #[serde(default)]
    pub cache: Option<CacheSettings>,
    /// The stage's canary (see [`CanarySettings`]).
    #[serde(default)]
    pub canary: Option<CanarySettings>,
}

/// A route in a [`GatewayConfig`]: its route key and settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RouteConfig {
    /// The route key: `GET /pets/{petId}`, `ANY /{proxy+}` or `$default`.
    pub route: String,
    /// Whether an API key is required.
    #[serde(default)]
    pub api_key_required: bool,
    /// The authorizer's name.
    #[serde(default)]
    pub authorizer: Option<String>,
    /// Scopes of which the caller's token must hold one.
    #[serde(default)]
    pub authorization_scopes: Vec<String>,
    /// Groups (`cognito:groups`) of which the caller must be in one.
    #[serde(default)]
    pub authorization_groups: Vec<String>,
    /// The request validator's name.
    #[serde(default)]
    pub validator: Option<String>,
    /// Required parameters in API Gateway's form: `method.request.querystring.page`,
    /// `method.request.header.x-tenant`, `method.request.path.petId`.
    #[serde(default)]
    pub required_parameters: Vec<RequestParameter>,
    /// Model names by media type (`application/json`, `$default`).
    #[serde(default)]
    pub request_models: BTreeMap<String, String>,
    /// The largest body accepted, in bytes, instead of the gateway's limit.
    #[serde(default)]
    pub max_body_bytes: Option<u64>,
    /// The stage × method throttle.
    #[serde(default)]
    pub throttle: Option<ThrottleSettings>,
    /// The response-cache override.
    #[serde(default)]
    pub cache: Option<RouteCacheSettings>,
}

/// Request-id settings in a [`GatewayConfig`].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RequestIdConfig {
    /// The header name (default `x-request-id`).
    #[serde(default)]
    pub header: Option<String>,
    /// Use the client's id when it sends one (default off).
    #[serde(default)]
    pub trust_inbound: bool,
    /// Send the id in responses (default on).
    #[serde(default)]
    pub send: Option<bool>,
}

impl GatewayConfig {
    /// Reads a configuration from JSON. Syntax errors and unknown fields are reported with
    /// their line and column.
    pub fn from_json(json: &str) -> Result<Self, ConfigError> {
        serde_json::from_str(json).map_err(|error| {
            ConfigError::new(
                format!("config (line {}, column {})", error.line(), error.column()),
                error.to_string(),
            )
        })
    }

    pub(super) fn into_builder(
        self,
        key_store: Option<InMemoryApiKeyStore>,
    ) -> Result<GatewayBuilder, ConfigError> {
        let mut builder = GatewayBuilder::new();
        for stage in self.stages {
            let mut stage_builder = Stage::builder(stage.name).variables(stage.variables);
            if let Some(throttle) = stage.throttle {
                stage_builder = stage_builder.throttle(throttle);
            }
            if let Some(cache) = stage.cache {
                stage_builder = stage_builder.cache(cache);
            }
            if let Some(canary) = stage.canary {
                stage_builder = stage_builder.canary(canary);
            }
            builder = builder.stage(stage_builder.build()?);
        }
        if let Some(selection) = self.stage_selection {
            builder = builder.stage_selection(selection);
        }
        if let Some(default_stage) = self.default_stage {
            builder = builder.default_stage(default_stage);
        }
        for route in self.routes {
            let settings = RouteSettings {
                api_key_required: route.api_key_required,
                authorizer: route.authorizer,
                authorization_scopes: route.authorization_scopes,
                authorization_groups: route.authorization_groups,
                validator: route.validator,
                required_parameters: route.required_parameters,
                request_models: route.request_models,
                max_body_bytes: route.max_body_bytes,
                throttle: route.throttle,
                cache: route.cache,
            };
            builder = builder.route(Route::from_key(&route.route)?.settings(settings));
        }
        builder = builder.unmatched_routes(self.unmatched_routes);
        if let Some(max_path_length) = self.max_path_length {
            builder = builder.max_path_length(max_path_length);
        }
        for (response_type, response) in self.gateway_responses {
            builder = builder.gateway_response(response_type, response);
        }
        if let Some(header) = self.request_id.header {
            builder = builder.request_id_header(header);
        }
        builder = builder.trust_inbound_request_id(self.request_id.trust_inbound);
        if let Some(send) = self.request_id.send {
            builder = builder.send_request_id(send);
        }
        if let Some(store) = &key_store
            && self.api_keys.is_none()
        {
            builder = builder.api_key_store(store.clone());
        }
        if let Some(api_keys) = self.api_keys {
            let store = key_store.unwrap_or_default();
            let keys = api_keys
                .keys
                .into_iter()
                .enumerate()
                .map(|(index, key)| key.into_key(index))
                .collect::<Result<Vec<_>, _>>()?;
            store.insert_all(keys)?;
            builder = builder.api_key_store(store).api_key_source(api_keys.source);
            if let Some(header) = api_keys.header {
                builder = builder.api_key_header(header);
            }
        }
        for plan in self.usage_plans {
            let mut plan_builder = UsagePlan::builder(plan.id);
            for stage in plan.stages {
                plan_builder = plan_builder.stage(stage);
            }
            if let Some(throttle) = plan.throttle {
                plan_builder = plan_builder.throttle(throttle);
            }
            for (route, throttle) in plan.method_throttles {
                plan_builder = plan_builder.method_throttle(route, throttle);
            }
            if let Some(quota) = plan.quota {
                plan_builder = plan_builder.quota(quota);
            }
            for key in plan.keys {
                plan_builder = plan_builder.key(key);
            }
            builder = builder.usage_plan(plan_builder.build()?);
        }
        if let Some(send) = self.rate_limit_headers {
            builder = builder.rate_limit_headers(send);
        }
        for authorizer in self.authorizers {
            let (name, authorizer) = authorizer.into_authorizer()?;
            builder = builder.jwt_authorizer(name, authorizer);
        }
        for (name, validator) in self.request_validators {
            builder = builder.request_validator(name, validator);
        }
        for (name, schema) in self.models {
            builder = builder.model(name, schema);
        }
        if let Some(draft) = self.default_schema_draft {
            builder = builder.default_schema_draft(draft);
        }
        if let Some(bytes) = self.max_body_bytes {
            builder = builder.max_body_bytes(bytes);
        }
        if let Some(format) = self.access_log {
            builder = builder.access_log(AccessLog::from_config(&format)?);
        }
        if let Some(record) = self.metrics {
            builder = builder.metrics(record);
        }
        #[cfg(feature = "redis")]
        if let Some(redis) = self.redis {
            builder = builder.redis(redis.build()?);
        }
        Ok(builder
            .expose_validation_errors(self.expose_validation_errors)
            .trusted_proxies(self.trusted_proxies))
    }
}
