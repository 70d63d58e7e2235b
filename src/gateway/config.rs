//! The declarative gateway configuration: the same gateway as the builder, from a file.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::GatewayBuilder;
use crate::error::ConfigError;
use crate::response::{GatewayResponse, GatewayResponseType};
use crate::route::{Route, RouteCacheSettings, RouteSettings, ThrottleSettings, UnmatchedRoutes};
use crate::stage::{Stage, StageSelection};

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

    pub(super) fn into_builder(self) -> Result<GatewayBuilder, ConfigError> {
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
        Ok(builder.trusted_proxies(self.trusted_proxies))
    }
}
