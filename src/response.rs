//! Gateway responses: what the gateway answers when it rejects a request.
//!
//! Every rejection has a [`GatewayResponseType`] with API Gateway's name, default status and
//! default message, rendered as `{"message":"…"}` with `content-type: application/json`.
//! Operators override the status, headers and body template per type with
//! [`GatewayResponses`]; an override of `DEFAULT_4XX` or `DEFAULT_5XX` applies to every type of
//! that class that has no override of its own (its headers and body, never its status: a
//! `DEFAULT_4XX` status must not turn a 429 into something else).
//!
//! A request whose `content-type` starts with `application/grpc` gets a gRPC answer instead:
//! a trailers-only response (HTTP 200, empty body) whose `grpc-status` is derived from the
//! HTTP status (401 → `UNAUTHENTICATED`, 403 → `PERMISSION_DENIED`, 429 and 413 →
//! `RESOURCE_EXHAUSTED`, 400 and 415 → `INVALID_ARGUMENT`, 404 → `NOT_FOUND`, 504 →
//! `DEADLINE_EXCEEDED`, 503 → `UNAVAILABLE`, other 5xx → `INTERNAL`) and whose
//! `grpc-message` carries the message, so a tonic client sees a proper `Status`.
//!
//! # Example
//!
//! ```
//! use tower_gateway::response::{GatewayResponse, GatewayResponseType, GatewayResponses};
//!
//! let responses = GatewayResponses::builder()
//!     .response(
//!         GatewayResponseType::Throttled,
//!         GatewayResponse::new()
//!             .header("x-support", "https://status.example.com")
//!             .body(r#"{"error":$context.error.messageString,"id":"$context.requestId"}"#),
//!     )
//!     .response(
//!         GatewayResponseType::Default5xx,
//!         GatewayResponse::new().body(r#"{"error":"internal","id":"$context.requestId"}"#),
//!     )
//!     .build()
//!     .expect("valid responses");
//! # let _ = responses;
//! ```
//!
//! # Body templates
//!
//! A body template is text in which these variables are replaced, each JSON-string-escaped
//! (so a message cannot break out of the JSON it sits in):
//! `$context.error.message`, `$context.error.messageString` (the message as a quoted JSON
//! string), `$context.error.responseType`, `$context.requestId`, `$context.stage`,
//! `$context.resourcePath`, `$context.httpMethod`, `$context.path`,
//! `$context.error.validationErrorString` (why a body failed [validation](crate::validate))
//! and `$stageVariables.<name>`. A variable that has no value for the request (no stage selected
//! yet, an unknown stage variable) is replaced by the empty string. Any other `$context.`
//! variable is a [`ConfigError`]. Header values are sent as written.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use http::{HeaderMap, Response, StatusCode};
use serde::{Deserialize, Serialize};

use crate::body::GatewayBody;
use crate::context::RequestContext;
use crate::error::ConfigError;
use crate::observe::EXECUTION_LOG_TARGET;

macro_rules! response_types {
    ($($variant:ident => $name:literal, $status:literal, $message:literal;)*) => {
        /// A kind of gateway response, with API Gateway's name (`THROTTLED`, …), default
        /// status and default message. One is this crate's own: `BACKEND_UNAVAILABLE`, for
        /// requests refused because the shared backend (Redis) is down and the
        /// [outage policy](crate::store) fails closed.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[non_exhaustive]
        pub enum GatewayResponseType {
            $(
                #[doc = concat!("`", $name, "`: ", stringify!($status), " `", $message, "`.")]
                #[serde(rename = $name)]
                $variant,
            )*
        }

        impl GatewayResponseType {
            /// Every response type, in API Gateway's alphabetical order.
            pub const ALL: &'static [GatewayResponseType] = &[$(Self::$variant),*];

            /// API Gateway's name of the type, e.g. `MISSING_AUTHENTICATION_TOKEN`.
            pub const fn name(self) -> &'static str {
                match self { $(Self::$variant => $name),* }
            }

            /// The status sent when no override sets another.
            pub const fn default_status(self) -> StatusCode {
                match self {
                    $(Self::$variant => match StatusCode::from_u16($status) {
                        Ok(status) => status,
                        Err(_) => panic!("invalid status in the response type table"),
                    }),*
                }
            }

            /// The message sent when the rejecting layer gives none of its own.
            pub const fn default_message(self) -> &'static str {
                match self { $(Self::$variant => $message),* }
            }

            /// The type with API Gateway's name `name`, if there is one.
            pub fn from_name(name: &str) -> Option<Self> {
                match name { $($name => Some(Self::$variant),)* _ => None }
            }
        }
    };
}

response_types! {
    AccessDenied => "ACCESS_DENIED", 403, "User is not authorized to access this resource";
    ApiConfigurationError => "API_CONFIGURATION_ERROR", 500, "Internal server error";
    AuthorizerConfigurationError => "AUTHORIZER_CONFIGURATION_ERROR", 500, "Internal server error";
    AuthorizerFailure => "AUTHORIZER_FAILURE", 500, "Internal server error";
    BackendUnavailable => "BACKEND_UNAVAILABLE", 503, "Service Unavailable";
    BadRequestBody => "BAD_REQUEST_BODY", 400, "Invalid request body";
    BadRequestParameters => "BAD_REQUEST_PARAMETERS", 400, "Missing required request parameters";
    Default4xx => "DEFAULT_4XX", 400, "Bad Request";
    Default5xx => "DEFAULT_5XX", 500, "Internal server error";
    ExpiredToken => "EXPIRED_TOKEN", 403, "The security token included in the request is expired";
    IntegrationFailure => "INTEGRATION_FAILURE", 504, "Internal server error";
    IntegrationTimeout => "INTEGRATION_TIMEOUT", 504, "Endpoint request timed out";
    InvalidApiKey => "INVALID_API_KEY", 403, "Forbidden";
    InvalidSignature => "INVALID_SIGNATURE", 403, "Invalid signature";
    MissingAuthenticationToken => "MISSING_AUTHENTICATION_TOKEN", 403, "Missing Authentication Token";
    QuotaExceeded => "QUOTA_EXCEEDED", 429, "Limit Exceeded";
    RequestTooLarge => "REQUEST_TOO_LARGE", 413, "Request Too Long";
    ResourceNotFound => "RESOURCE_NOT_FOUND", 404, "Not Found";
    Throttled => "THROTTLED", 429, "Too Many Requests";
    Unauthorized => "UNAUTHORIZED", 401, "Unauthorized";
    UnsupportedMediaType => "UNSUPPORTED_MEDIA_TYPE", 415, "Unsupported Media Type";
    WafFiltered => "WAF_FILTERED", 403, "Forbidden";
}

impl std::fmt::Display for GatewayResponseType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A rejection decided by a layer: the response type, the message and any headers the layer
/// adds (such as `Retry-After` or `WWW-Authenticate`). [`GatewayResponses`] renders it.
#[derive(Debug, Clone)]
pub struct GatewayError {
    response_type: GatewayResponseType,
    message: Cow<'static, str>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl GatewayError {
    /// A rejection of type `response_type` with the type's default message.
    // Cold: the compiler then lays out the request path's rejections away from its common
    // course (see `crate::rarely`).
    #[cold]
    pub fn new(response_type: GatewayResponseType) -> Self {
        Self {
            response_type,
            message: Cow::Borrowed(response_type.default_message()),
            headers: Vec::new(),
        }
    }

    /// A rejection with a message of its own, e.g. the list of missing parameters.
    #[cold]
    pub fn with_message(
        response_type: GatewayResponseType,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self {
            response_type,
            message: message.into(),
            headers: Vec::new(),
        }
    }

    /// Adds a header to the rendered response (it wins over an override's header of the same
    /// name).
    #[must_use]
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// The response type.
    pub fn response_type(&self) -> GatewayResponseType {
        self.response_type
    }

    /// The message (`$context.error.message`).
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// A user's override of one response type: status, headers and body template; each part is
/// optional and falls back to the built-in one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[must_use]
pub struct GatewayResponse {
    #[serde(default)]
    status: Option<u16>,
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    body: Option<String>,
}

impl GatewayResponse {
    /// An override that changes nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The HTTP status to send, 200–599.
    pub fn status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }

    /// A header to send (a second value for the same name replaces the first); set
    /// `content-type` here when the body template is not JSON.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// The body template (see the [module docs](self) for its variables).
    pub fn body(mut self, template: impl Into<String>) -> Self {
        self.body = Some(template.into());
        self
    }

    fn compile(&self, field: &str) -> Result<CompiledResponse, ConfigError> {
        // 1xx cannot end a response (hyper turns it into a 500), and `StatusCode` would take
        // up to 999.
        let status = self
            .status
            .map(|code| {
                (200..=599)
                    .contains(&code)
                    .then(|| StatusCode::from_u16(code).ok())
                    .flatten()
                    .ok_or_else(|| ConfigError::new(format!("{field}.status"), "must be 200–599"))
            })
            .transpose()?;
        let mut headers = HeaderMap::new();
        for (name, value) in &self.headers {
            let header_name = HeaderName::try_from(name.as_str()).map_err(|_| {
                ConfigError::new(
                    format!("{field}.headers[{name}]"),
                    "not a valid header name",
                )
            })?;
            let header_value = HeaderValue::try_from(value.as_str()).map_err(|_| {
                ConfigError::new(
                    format!("{field}.headers[{name}]"),
                    "not a valid header value (visible ASCII and spaces only)",
                )
            })?;
            headers.append(header_name, header_value);
        }
        let body = self
            .body
            .as_deref()
            .map(|template| {
                Template::parse(template)
                    .map_err(|rule| ConfigError::new(format!("{field}.body"), rule))
            })
            .transpose()?;
        Ok(CompiledResponse {
            status,
            headers,
            body,
        })
    }
}

#[derive(Debug)]
struct CompiledResponse {
    status: Option<StatusCode>,
    headers: HeaderMap,
    body: Option<Template>,
}

/// Builds [`GatewayResponses`].
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct GatewayResponsesBuilder {
    overrides: Vec<(GatewayResponseType, GatewayResponse)>,
    expose_validation_errors: bool,
}

impl GatewayResponsesBuilder {
    /// Overrides the response for `response_type`; a later call for the same type replaces an
    /// earlier one.
    pub fn response(
        mut self,
        response_type: GatewayResponseType,
        response: GatewayResponse,
    ) -> Self {
        self.overrides
            .retain(|(existing, _)| *existing != response_type);
        self.overrides.push((response_type, response));
        self
    }

    /// Whether `BAD_REQUEST_BODY` responses tell the client why its body was refused (off by
    /// default, as in API Gateway): the body becomes
    /// `{"message":"Invalid request body","validationErrorString":"…"}`, with the headers of
    /// a `DEFAULT_4XX` override. An override of `BAD_REQUEST_BODY` wins; its template can use
    /// `$context.error.validationErrorString`.
    pub fn expose_validation_errors(mut self, expose: bool) -> Self {
        self.expose_validation_errors = expose;
        self
    }

    /// Checks statuses, header names and values, and body templates.
    pub fn build(mut self) -> Result<GatewayResponses, ConfigError> {
        if self.expose_validation_errors
            && !self
                .overrides
                .iter()
                .any(|(kind, _)| *kind == GatewayResponseType::BadRequestBody)
        {
            // The body is ours; the headers of a DEFAULT_4XX override (CORS, say) still apply.
            let headers = self
                .overrides
                .iter()
                .find(|(kind, _)| *kind == GatewayResponseType::Default4xx)
                .map(|(_, response)| response.headers.clone())
                .unwrap_or_default();
            let exposed = GatewayResponse {
                status: None,
                headers,
                body: Some(
                    r#"{"message":$context.error.messageString,"validationErrorString":"$context.error.validationErrorString"}"#
                        .to_owned(),
                ),
            };
            self.overrides
                .push((GatewayResponseType::BadRequestBody, exposed));
        }
        let mut overrides = HashMap::with_capacity(self.overrides.len());
        for (response_type, response) in self.overrides {
            let field = format!("gateway_responses[{}]", response_type.name());
            overrides.insert(response_type, response.compile(&field)?);
        }
        Ok(GatewayResponses {
            overrides: Arc::new(overrides),
        })
    }
}

/// The gateway responses in force: the built-in ones plus the user's overrides.
///
/// Cheap to clone (the overrides are shared). [`GatewayResponses::default`] has no overrides.
#[derive(Debug, Clone, Default)]
pub struct GatewayResponses {
    overrides: Arc<HashMap<GatewayResponseType, CompiledResponse>>,
}

impl GatewayResponses {
    /// Starts a set of overrides.
    pub fn builder() -> GatewayResponsesBuilder {
        GatewayResponsesBuilder::default()
    }

    fn resolve(&self, response_type: GatewayResponseType) -> Option<&CompiledResponse> {
        if self.overrides.is_empty() {
            return None;
        }
        self.overrides.get(&response_type).or_else(|| {
            let fallback = if response_type.default_status().is_server_error() {
                GatewayResponseType::Default5xx
            } else {
                GatewayResponseType::Default4xx
            };
            self.overrides.get(&fallback)
        })
    }

    /// Renders `error` for a request: gRPC when `grpc`, JSON (or the override's template)
    /// otherwise. The error is recorded in `context` when there is one.
    pub fn render<B>(
        &self,
        error: GatewayError,
        grpc: bool,
        context: Option<&RequestContext>,
    ) -> Response<B>
    where
        B: GatewayBody,
    {
        let matching = self.resolve(error.response_type);
        let status = matching
            .and_then(|r| {
                // A DEFAULT_4XX/5XX fallback keeps the specific type's status.
                let own = self.overrides.get(&error.response_type).is_some();
                own.then_some(r.status).flatten()
            })
            .unwrap_or_else(|| error.response_type.default_status());

        let mut response = if grpc {
            grpc_response(status, &error.message)
        } else {
            let body = match matching.and_then(|r| r.body.as_ref()) {
                Some(template) => template.render(&error, context),
                None => default_body(&error.message),
            };
            let mut response = Response::new(B::from_bytes(Bytes::from(body)));
            *response.status_mut() = status;
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        };
        if let Some(matching) = matching {
            for (name, value) in &matching.headers {
                if grpc && name == CONTENT_TYPE {
                    continue;
                }
                response.headers_mut().insert(name.clone(), value.clone());
            }
        }
        if let Some(context) = context {
            tracing::debug!(
                target: EXECUTION_LOG_TARGET,
                request_id = %context.request_id(),
                response_type = error.response_type.name(),
                status = status.as_u16(),
                message = %error.message,
                validation = context.validation_error(),
                "request rejected"
            );
            context.record_error(error.response_type, error.message.clone());
        }
        for (name, value) in error.headers {
            response.headers_mut().insert(name, value);
        }
        response
    }
}

/// Whether the request is gRPC, judged by its `content-type`.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/grpc"))
}

fn default_body(message: &str) -> String {
    let mut body = String::with_capacity(message.len() + 16);
    body.push_str(r#"{"message":"#);
    push_json_string(&mut body, message, true);
    body.push('}');
    body
}

fn push_json_string(out: &mut String, value: &str, quoted: bool) {
    // serde_json's escaping of a &str cannot fail.
    let escaped = serde_json::to_string(value).unwrap_or_default();
    if quoted {
        out.push_str(&escaped);
    } else {
        out.push_str(&escaped[1..escaped.len() - 1]);
    }
}

/// The gRPC status code for an HTTP status, per the mapping in the module docs.
pub fn grpc_status_for(status: StatusCode) -> u8 {
    const INVALID_ARGUMENT: u8 = 3;
    const DEADLINE_EXCEEDED: u8 = 4;
    const NOT_FOUND: u8 = 5;
    const PERMISSION_DENIED: u8 = 7;
    const RESOURCE_EXHAUSTED: u8 = 8;
    const INTERNAL: u8 = 13;
    const UNAVAILABLE: u8 = 14;
    const UNAUTHENTICATED: u8 = 16;
    const UNKNOWN: u8 = 2;
    match status.as_u16() {
        400 | 415 => INVALID_ARGUMENT,
        401 => UNAUTHENTICATED,
        403 => PERMISSION_DENIED,
        404 => NOT_FOUND,
        413 | 429 => RESOURCE_EXHAUSTED,
        503 => UNAVAILABLE,
        504 => DEADLINE_EXCEEDED,
        500..=599 => INTERNAL,
        _ => UNKNOWN,
    }
}

fn grpc_response<B: GatewayBody>(status: StatusCode, message: &str) -> Response<B> {
    let mut response = Response::new(B::from_bytes(Bytes::new()));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert(
        HeaderName::from_static("grpc-status"),
        HeaderValue::from(u16::from(grpc_status_for(status))),
    );
    if let Ok(value) = HeaderValue::try_from(grpc_percent_encode(message)) {
        headers.insert(HeaderName::from_static("grpc-message"), value);
    }
    response
}

/// gRPC's `grpc-message` encoding: bytes outside printable ASCII, and `%`, percent-encoded.
fn grpc_percent_encode(message: &str) -> String {
    let mut encoded = String::with_capacity(message.len());
    for byte in message.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            encoded.push(byte as char);
        } else {
            let _ = write!(encoded, "%{byte:02X}");
        }
    }
    encoded
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    ErrorMessage,
    ErrorMessageString,
    ResponseType,
    RequestId,
    Stage,
    ResourcePath,
    HttpMethod,
    Path,
    ValidationError,
    StageVariable(String),
}

/// A parsed body template.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Template {
    segments: Vec<Segment>,
}

impl Template {
    fn parse(source: &str) -> Result<Self, String> {
        let mut segments = Vec::new();
        let mut literal = String::new();
        let mut rest = source;
        while let Some(dollar) = rest.find('$') {
            literal.push_str(&rest[..dollar]);
            let after = &rest[dollar + 1..];
            let name_len = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
                .unwrap_or(after.len());
            let raw = &after[..name_len];
            let name = raw.trim_end_matches('.');
            if (name == "context" || name == "stageVariables") && raw.len() > name.len() {
                return Err(format!("incomplete variable `${raw}`"));
            }
            let segment = if let Some(variable) = name.strip_prefix("context.") {
                Some(match variable {
                    "error.message" => Segment::ErrorMessage,
                    "error.messageString" => Segment::ErrorMessageString,
                    "error.responseType" => Segment::ResponseType,
                    "requestId" => Segment::RequestId,
                    "stage" => Segment::Stage,
                    "resourcePath" => Segment::ResourcePath,
                    "httpMethod" => Segment::HttpMethod,
                    "path" => Segment::Path,
                    "error.validationErrorString" => Segment::ValidationError,
                    other => return Err(format!("unknown variable `$context.{other}`")),
                })
            } else if let Some(variable) = name.strip_prefix("stageVariables.") {
                if variable.is_empty() || variable.contains('.') {
                    return Err(format!("invalid stage variable reference `${name}`"));
                }
                Some(Segment::StageVariable(variable.to_owned()))
            } else {
                None
            };
            match segment {
                Some(segment) => {
                    if !literal.is_empty() {
                        segments.push(Segment::Literal(std::mem::take(&mut literal)));
                    }
                    segments.push(segment);
                    rest = &after[name.len()..];
                }
                None => {
                    literal.push('$');
                    rest = after;
                }
            }
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            segments.push(Segment::Literal(literal));
        }
        Ok(Self { segments })
    }

    fn render(&self, error: &GatewayError, context: Option<&RequestContext>) -> String {
        let mut out = String::new();
        for segment in &self.segments {
            let value: Option<&str> = match segment {
                Segment::Literal(text) => {
                    out.push_str(text);
                    continue;
                }
                Segment::ErrorMessageString => {
                    push_json_string(&mut out, &error.message, true);
                    continue;
                }
                Segment::ErrorMessage => Some(&error.message),
                Segment::ResponseType => Some(error.response_type.name()),
                Segment::RequestId => context.map(|c| c.request_id().as_str()),
                Segment::Stage => context.and_then(|c| c.stage()).map(|s| s.name()),
                Segment::ResourcePath => context.and_then(|c| c.resource_path()),
                Segment::HttpMethod => context.map(|c| c.http_method().as_str()),
                Segment::Path => context.map(|c| c.path()),
                Segment::ValidationError => context.and_then(|c| c.validation_error()),
                Segment::StageVariable(name) => context.and_then(|c| c.stage_variables().get(name)),
            };
            push_json_string(&mut out, value.unwrap_or(""), false);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    type Body = http_body_util::Full<Bytes>;

    async fn body_of(response: Response<Body>) -> String {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[test]
    fn every_type_round_trips_its_name() {
        assert_eq!(GatewayResponseType::ALL.len(), 22);
        for &response_type in GatewayResponseType::ALL {
            assert_eq!(
                GatewayResponseType::from_name(response_type.name()),
                Some(response_type)
            );
            let json = serde_json::to_string(&response_type).unwrap();
            assert_eq!(json, format!("\"{}\"", response_type.name()));
        }
        assert_eq!(GatewayResponseType::from_name("NOPE"), None);
    }

    #[test]
    fn default_statuses_match_api_gateway() {
        use GatewayResponseType::*;
        let expected = [
            (AccessDenied, 403),
            (ApiConfigurationError, 500),
            (AuthorizerConfigurationError, 500),
            (AuthorizerFailure, 500),
            (BackendUnavailable, 503),
            (BadRequestParameters, 400),
            (BadRequestBody, 400),
            (ExpiredToken, 403),
            (IntegrationFailure, 504),
            (IntegrationTimeout, 504),
            (InvalidApiKey, 403),
            (InvalidSignature, 403),
            (MissingAuthenticationToken, 403),
            (QuotaExceeded, 429),
            (RequestTooLarge, 413),
            (ResourceNotFound, 404),
            (Throttled, 429),
            (Unauthorized, 401),
            (UnsupportedMediaType, 415),
            (WafFiltered, 403),
        ];
        for (response_type, status) in expected {
            assert_eq!(
                response_type.default_status().as_u16(),
                status,
                "{response_type}"
            );
        }
    }

    #[tokio::test]
    async fn default_rendering_is_json_message() {
        let responses = GatewayResponses::default();
        let response: Response<Body> = responses.render(
            GatewayError::new(GatewayResponseType::Throttled),
            false,
            None,
        );
        assert_eq!(response.status(), 429);
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
        assert_eq!(
            body_of(response).await,
            r#"{"message":"Too Many Requests"}"#
        );
    }

    #[tokio::test]
    async fn messages_are_escaped() {
        let responses = GatewayResponses::default();
        let error = GatewayError::with_message(
            GatewayResponseType::BadRequestParameters,
            "quote \" and\nnewline",
        );
        let response: Response<Body> = responses.render(error, false, None);
        let body = body_of(response).await;
        let parsed: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(parsed["message"], "quote \" and\nnewline");
    }

    #[tokio::test]
    async fn override_applies_status_headers_and_template() {
        let responses = GatewayResponses::builder()
            .response(
                GatewayResponseType::Throttled,
                GatewayResponse::new()
                    .status(503)
                    .header("x-why", "slow down")
                    .body(r#"{"type":"$context.error.responseType","msg":$context.error.messageString}"#),
            )
            .build()
            .unwrap();
        let response: Response<Body> = responses.render(
            GatewayError::new(GatewayResponseType::Throttled),
            false,
            None,
        );
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()["x-why"], "slow down");
        assert_eq!(
            body_of(response).await,
            r#"{"type":"THROTTLED","msg":"Too Many Requests"}"#
        );
    }

    #[tokio::test]
    async fn default_4xx_and_5xx_are_fallbacks_that_keep_the_status() {
        let responses = GatewayResponses::builder()
            .response(
                GatewayResponseType::Default4xx,
                GatewayResponse::new()
                    .status(400)
                    .header("x-class", "4xx")
                    .body("four"),
            )
            .response(
                GatewayResponseType::Default5xx,
                GatewayResponse::new().header("x-class", "5xx").body("five"),
            )
            .response(
                GatewayResponseType::Unauthorized,
                GatewayResponse::new().body("own"),
            )
            .build()
            .unwrap();
        let throttled: Response<Body> = responses.render(
            GatewayError::new(GatewayResponseType::Throttled),
            false,
            None,
        );
        assert_eq!(throttled.status(), 429);
        assert_eq!(throttled.headers()["x-class"], "4xx");
        assert_eq!(body_of(throttled).await, "four");

        let failure: Response<Body> = responses.render(
            GatewayError::new(GatewayResponseType::AuthorizerFailure),
            false,
            None,
        );
        assert_eq!(failure.status(), 500);
        assert_eq!(failure.headers()["x-class"], "5xx");
        assert_eq!(body_of(failure).await, "five");

        let own: Response<Body> = responses.render(
            GatewayError::new(GatewayResponseType::Unauthorized),
            false,
            None,
        );
        assert_eq!(own.status(), 401);
        assert!(own.headers().get("x-class").is_none());
        assert_eq!(body_of(own).await, "own");
    }

    #[tokio::test]
    async fn grpc_rendering_is_trailers_only() {
        let responses = GatewayResponses::default();
        let response: Response<Body> = responses.render(
            GatewayError::with_message(GatewayResponseType::Unauthorized, "bad token: ü%"),
            true,
            None,
        );
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()[CONTENT_TYPE], "application/grpc");
        assert_eq!(response.headers()["grpc-status"], "16");
        assert_eq!(response.headers()["grpc-message"], "bad token: %C3%BC%25");
        assert!(http_body::Body::is_end_stream(response.body()));
        assert_eq!(body_of(response).await, "");
    }

    #[test]
    fn grpc_status_mapping() {
        let cases = [
            (400, 3),
            (401, 16),
            (403, 7),
            (404, 5),
            (413, 8),
            (415, 3),
            (429, 8),
            (500, 13),
            (503, 14),
            (504, 4),
            (418, 2),
        ];
        for (http, grpc) in cases {
            assert_eq!(
                grpc_status_for(StatusCode::from_u16(http).unwrap()),
                grpc,
                "{http}"
            );
        }
    }

    #[test]
    fn extra_headers_from_the_error_win() {
        let responses = GatewayResponses::default();
        let error = GatewayError::new(GatewayResponseType::Throttled)
            .header(http::header::RETRY_AFTER, HeaderValue::from_static("3"));
        let response: Response<Body> = responses.render(error, false, None);
        assert_eq!(response.headers()[http::header::RETRY_AFTER], "3");
    }

    #[test]
    fn bad_overrides_are_config_errors() {
        let unknown = GatewayResponses::builder()
            .response(
                GatewayResponseType::Throttled,
                GatewayResponse::new().body("$context.secretThing"),
            )
            .build()
            .unwrap_err();
        assert_eq!(unknown.field(), "gateway_responses[THROTTLED].body");
        assert!(unknown.rule().contains("$context.secretThing"));

        let status = GatewayResponses::builder()
            .response(
                GatewayResponseType::Throttled,
                GatewayResponse::new().status(42),
            )
            .build()
            .unwrap_err();
        assert_eq!(status.field(), "gateway_responses[THROTTLED].status");

        let header = GatewayResponses::builder()
            .response(
                GatewayResponseType::Throttled,
                GatewayResponse::new().header("bad header", "x"),
            )
            .build()
            .unwrap_err();
        assert_eq!(
            header.field(),
            "gateway_responses[THROTTLED].headers[bad header]"
        );

        let value = GatewayResponses::builder()
            .response(
                GatewayResponseType::Throttled,
                GatewayResponse::new().header("x-ok", "line\nbreak"),
            )
            .build()
            .unwrap_err();
        assert!(value.rule().contains("header value"));
    }

    #[test]
    fn template_parsing_keeps_unrelated_dollars_and_trailing_dots() {
        let template =
            Template::parse("cost $5. id=$context.requestId. $stageVariables.x!").unwrap();
        assert_eq!(
            template.segments,
            vec![
                Segment::Literal("cost $5. id=".into()),
                Segment::RequestId,
                Segment::Literal(". ".into()),
                Segment::StageVariable("x".into()),
                Segment::Literal("!".into()),
            ]
        );
        assert!(Template::parse("$stageVariables.").is_err());
    }
}
