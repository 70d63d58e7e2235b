//! The declarative gateway configuration: the same gateway as the builder, from a file.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::GatewayBuilder;
use crate::api_key::{ApiKey, ApiKeySource, InMemoryApiKeyStore, KeyDigest};
use crate::error::ConfigError;
use crate::response::{GatewayResponse, GatewayResponseType};
use crate::route::{Route, RouteCacheSettings, RouteSettings, ThrottleSettings, UnmatchedRoutes};
use crate::stage::{Stage, StageSelection};
use crate::usage_plan::{Quota, UsagePlan};

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
    /// The request validator's name.
    #[serde(default)]
    pub validator: Option<String>,
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
            builder = builder.stage(
                Stage::builder(stage.name)
                    .variables(stage.variables)
                    .build()?,
            );
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
                validator: route.validator,
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
        Ok(builder.trusted_proxies(self.trusted_proxies))
    }
}
