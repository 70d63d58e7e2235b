//! Access-log formats: `$context.*` variables, parsed once, rendered per request.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{StatusCode, Version};
use serde_json::Value;
use time::OffsetDateTime;

use crate::context::RequestContext;
use crate::error::ConfigError;

/// What the access log knows of a response when it writes the line.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sent {
    /// The status sent, or `None` when the client left before a response head.
    pub(crate) status: Option<StatusCode>,
    /// Body bytes handed to the server for the client.
    pub(crate) bytes: u64,
    /// From receipt to the end of the body (or to the client's leaving).
    pub(crate) latency: Duration,
    /// The inner service returned an error instead of a response (a 5XX in the metrics).
    #[cfg(feature = "metrics")]
    pub(crate) failed: bool,
}

/// One piece of a format.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Segment {
    Literal(Box<str>),
    Variable(Variable),
}

/// A variable of a format: API Gateway's `$context` names, and a few of ours.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Variable {
    RequestId,
    RequestTime,
    RequestTimeEpoch,
    HttpMethod,
    ResourcePath,
    Path,
    Protocol,
    Stage,
    DomainName,
    SourceIp,
    UserAgent,
    ApiKeyId,
    /// IAM's caller and user, which this gateway never has: always `-`, so that API Gateway's
    /// CLF format works unchanged.
    IamIdentity,
    PrincipalId,
    Claim(Box<str>),
    AuthorizerProperty(Box<str>),
    AuthorizerLatency,
    IntegrationLatency,
    IntegrationStatus,
    ResponseLatency,
    ResponseLength,
    Status,
    ErrorMessage,
    ErrorResponseType,
    ValidationErrorString,
    StageVariableNamed(Box<str>),
    Release,
    CacheStatus,
    TraceId,
}

/// The name of every `$context` variable a format may use, for error messages and docs.
pub(crate) const CONTEXT_VARIABLES: &[&str] = &[
    "requestId",
    "extendedRequestId",
    "requestTime",
    "requestTimeEpoch",
    "httpMethod",
    "resourcePath",
    "path",
    "protocol",
    "stage",
    "domainName",
    "identity.sourceIp",
    "identity.userAgent",
    "identity.apiKeyId",
    "identity.caller",
    "identity.user",
    "authorizer.principalId",
    "authorizer.claims.<name>",
    "authorizer.latency",
    "authorizer.<key>",
    "integrationLatency",
    "integration.latency",
    "integrationStatus",
    "integration.status",
    "responseLatency",
    "responseLength",
    "status",
    "error.message",
    "error.responseType",
    "error.validationErrorString",
    "stageVariables.<name>",
    "release",
    "cacheStatus",
    "traceId",
];

impl Variable {
    fn from_context_name(name: &str) -> Result<Self, String> {
        Ok(match name {
            "requestId" | "extendedRequestId" => Self::RequestId,
            "requestTime" => Self::RequestTime,
            "requestTimeEpoch" => Self::RequestTimeEpoch,
            "httpMethod" => Self::HttpMethod,
            "resourcePath" => Self::ResourcePath,
            "path" => Self::Path,
            "protocol" => Self::Protocol,
            "stage" => Self::Stage,
            "domainName" => Self::DomainName,
            "identity.sourceIp" => Self::SourceIp,
            "identity.userAgent" => Self::UserAgent,
            "identity.apiKeyId" => Self::ApiKeyId,
            "identity.caller" | "identity.user" => Self::IamIdentity,
            "identity.apiKey" => {
                return Err("the API key's value is never logged; use \
                            `$context.identity.apiKeyId`"
                    .into());
            }
            "authorizer.principalId" => Self::PrincipalId,
            "authorizer.latency" => Self::AuthorizerLatency,
            "integrationLatency" | "integration.latency" => Self::IntegrationLatency,
            "integrationStatus" | "integration.status" => Self::IntegrationStatus,
            "responseLatency" => Self::ResponseLatency,
            "responseLength" => Self::ResponseLength,
            "status" => Self::Status,
            "error.message" => Self::ErrorMessage,
            "error.responseType" => Self::ErrorResponseType,
            "error.validationErrorString" => Self::ValidationErrorString,
            "release" => Self::Release,
            "cacheStatus" => Self::CacheStatus,
            "traceId" => Self::TraceId,
            _ => {
                if let Some(claim) = name.strip_prefix("authorizer.claims.") {
                    return Ok(Self::Claim(claim.into()));
                }
                if let Some(key) = name.strip_prefix("authorizer.")
                    && !key.contains('.')
                    && key != "claims"
                {
                    return Ok(Self::AuthorizerProperty(key.into()));
                }
                if let Some(variable) = name.strip_prefix("stageVariables.") {
                    return Self::stage_variable(variable);
                }
                return Err(format!(
                    "unknown variable `$context.{name}`; known: {}",
                    CONTEXT_VARIABLES.join(", ")
                ));
            }
        })
    }

    fn stage_variable(name: &str) -> Result<Self, String> {
        if name.is_empty() || name.contains(['.', ':']) {
            return Err(format!("`{name}` is not a stage variable name"));
        }
        Ok(Self::StageVariableNamed(name.into()))
    }
}

/// Whether `byte` can be part of a variable's name; a `.` continues a name only when such a
/// byte follows it, so that `$context.status.` ends a sentence.
fn is_name_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'_' || byte == b':'
}

/// The length of the variable name at the start of `text`.
fn name_length(text: &[u8]) -> usize {
    let mut end = 0;
    while end < text.len() {
        let continues = is_name_byte(text[end])
            || (text[end] == b'.' && text.get(end + 1).copied().is_some_and(is_name_byte));
        if !continues {
            break;
        }
        end += 1;
    }
    end
}

/// Parses a format: `$context.<name>` and `$stageVariables.<name>` are variables, everything
/// else (a `$` before anything else too) is written as it is.
pub(crate) fn parse(format: &str) -> Result<Vec<Segment>, ConfigError> {
    const CONTEXT: &str = "$context.";
    const STAGE_VARIABLES: &str = "$stageVariables.";
    let error = |reason: String| ConfigError::new("access_log.format", reason);
    let mut segments = Vec::new();
    let mut literal = String::new();
    let mut rest = format;
    while let Some(dollar) = rest.find('$') {
        literal.push_str(&rest[..dollar]);
        rest = &rest[dollar..];
        let (prefix, is_context) = if rest.starts_with(CONTEXT) {
            (CONTEXT, true)
        } else if rest.starts_with(STAGE_VARIABLES) {
            (STAGE_VARIABLES, false)
        } else {
            literal.push('$');
            rest = &rest[1..];
            continue;
        };
        let after = &rest[prefix.len()..];
        let length = name_length(after.as_bytes());
        if length == 0 {
            return Err(error(format!("`{}` names no variable", prefix)));
        }
        let name = &after[..length];
        let variable = if is_context {
            Variable::from_context_name(name)
        } else {
            Variable::stage_variable(name)
        }
        .map_err(error)?;
        if !literal.is_empty() {
            segments.push(Segment::Literal(std::mem::take(&mut literal).into()));
        }
        segments.push(Segment::Variable(variable));
        rest = &after[length..];
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        segments.push(Segment::Literal(literal.into()));
    }
    if segments.is_empty() {
        return Err(error("the format is empty".into()));
    }
    Ok(segments)
}

/// Writes the line for one request.
pub(crate) fn render(
    segments: &[Segment],
    context: &RequestContext,
    sent: &Sent,
    out: &mut String,
) {
    for segment in segments {
        match segment {
            Segment::Literal(text) => out.push_str(text),
            Segment::Variable(variable) => write_variable(variable, context, sent, out),
        }
    }
}

/// `-` stands for a value the request does not have, as in API Gateway's logs.
const MISSING: &str = "-";

fn write_variable(variable: &Variable, context: &RequestContext, sent: &Sent, out: &mut String) {
    let text = |out: &mut String, value: Option<&str>| match value {
        Some(value) if !value.is_empty() => push_escaped(out, value),
        _ => out.push_str(MISSING),
    };
    let millis = |out: &mut String, value: Option<Duration>| match value {
        Some(duration) => {
            let _ = write!(out, "{}", duration.as_millis());
        }
        None => out.push_str(MISSING),
    };
    match variable {
        // An inbound id (when trusted) is the client's text.
        Variable::RequestId => push_escaped(out, context.request_id().as_str()),
        Variable::RequestTime => push_clf_time(out, context.request_time()),
        Variable::RequestTimeEpoch => {
            let epoch = context
                .request_time()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            let _ = write!(out, "{}", epoch.as_millis());
        }
        Variable::HttpMethod => push_escaped(out, context.http_method().as_str()),
        Variable::ResourcePath => text(out, context.resource_path()),
        Variable::Path => text(out, Some(context.path())),
        Variable::Protocol => out.push_str(protocol(context.protocol())),
        Variable::Stage => text(out, context.stage().map(|stage| stage.name())),
        Variable::DomainName => text(out, context.domain_name()),
        Variable::SourceIp => match context.source_ip() {
            Some(ip) => {
                let _ = write!(out, "{ip}");
            }
            None => out.push_str(MISSING),
        },
        Variable::UserAgent => text(out, context.user_agent()),
        Variable::ApiKeyId => text(out, context.api_key_id()),
        Variable::IamIdentity => out.push_str(MISSING),
        Variable::PrincipalId => text(
            out,
            context
                .identity()
                .and_then(|identity| identity.principal_id()),
        ),
        Variable::Claim(name) => {
            push_json_value(out, context.identity().and_then(|i| i.claim(name)));
        }
        Variable::AuthorizerProperty(key) => {
            push_json_value(
                out,
                context.identity().and_then(|i| i.context().get(&**key)),
            );
        }
        Variable::AuthorizerLatency => millis(out, context.authorizer_latency()),
        Variable::IntegrationLatency => millis(out, context.integration_latency()),
        Variable::IntegrationStatus => match context.integration_status() {
            Some(status) => out.push_str(status.as_str()),
            None => out.push_str(MISSING),
        },
        Variable::ResponseLatency => millis(out, Some(sent.latency)),
        Variable::ResponseLength => {
            let _ = write!(out, "{}", sent.bytes);
        }
        Variable::Status => match sent.status {
            Some(status) => out.push_str(status.as_str()),
            None => out.push_str(MISSING),
        },
        Variable::ErrorMessage => text(out, context.error_message()),
        Variable::ErrorResponseType => text(out, context.error_type().map(|kind| kind.name())),
        Variable::ValidationErrorString => text(out, context.validation_error()),
        Variable::StageVariableNamed(name) => text(out, context.stage_variables().get(name)),
        Variable::Release => out.push_str(context.release().as_str()),
        Variable::CacheStatus => text(out, context.cache_status().map(|status| status.as_str())),
        Variable::TraceId => text(out, context.trace_parent().map(|parent| parent.trace_id())),
    }
}

fn protocol(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => MISSING,
    }
}

/// A claim or an authorizer's value: a string as it is, anything else as JSON text.
fn push_json_value(out: &mut String, value: Option<&Value>) {
    match value {
        None | Some(Value::Null) => out.push_str(MISSING),
        Some(Value::String(text)) if text.is_empty() => out.push_str(MISSING),
        Some(Value::String(text)) => push_escaped(out, text),
        Some(other) => push_escaped(out, &other.to_string()),
    }
}

/// `21/Nov/2026:15:04:05 +0000`, the time format of the Common Log Format, in UTC.
///
/// Requests arrive many to a second: each thread keeps the text of the last second it wrote.
fn push_clf_time(out: &mut String, time: SystemTime) {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    thread_local! {
        static LAST: RefCell<(i64, String)> = const { RefCell::new((i64::MIN, String::new())) };
    }
    let second = match time.duration_since(UNIX_EPOCH) {
        Ok(since) => i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_secs()).unwrap_or(i64::MAX),
    };
    let format = |text: &mut String| {
        let time = OffsetDateTime::from(time);
        let month = MONTHS[usize::from(u8::from(time.month())) - 1];
        let _ = write!(
            text,
            "{:02}/{month}/{}:{:02}:{:02}:{:02} +0000",
            time.day(),
            time.year(),
            time.hour(),
            time.minute(),
            time.second()
        );
    };
    LAST.with(|last| match last.try_borrow_mut() {
        Ok(mut last) => {
            if last.0 != second {
                last.1.clear();
                format(&mut last.1);
                last.0 = second;
            }
            out.push_str(&last.1);
        }
        Err(_) => format(out),
    });
}

/// Escapes what could break a line, a JSON string or a terminal: quotes, backslashes, the C0
/// and C1 control characters (newlines and the escape character among them) and the Unicode
/// line separators. The result is valid inside a JSON string, keeps a CLF line one line, and
/// carries no terminal escape sequence.
pub(crate) fn push_escaped(out: &mut String, value: &str) {
    // Most values need nothing: a byte scan finds out. C1 characters start with 0xC2 in
    // UTF-8, the line separators with 0xE2.
    let plain = value
        .bytes()
        .all(|b| b >= 0x20 && !matches!(b, b'"' | b'\\' | 0x7f | 0xc2 | 0xe2));
    if plain {
        out.push_str(value);
        return;
    }
    let mut start = 0;
    for (index, character) in value.char_indices() {
        let escape: Option<&str> = match character {
            '"' => Some("\\\""),
            '\\' => Some("\\\\"),
            '\n' => Some("\\n"),
            '\r' => Some("\\r"),
            '\t' => Some("\\t"),
            '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}' | '\u{2028}' | '\u{2029}' => None,
            _ => continue,
        };
        out.push_str(&value[start..index]);
        match escape {
            Some(escape) => out.push_str(escape),
            None => {
                let _ = write!(out, "\\u{:04x}", u32::from(character));
            }
        }
        start = index + character.len_utf8();
    }
    out.push_str(&value[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_into_literals_and_variables() {
        let segments =
            parse("$context.requestId \"$context.status\" $5 $stageVariables.env.").unwrap();
        assert_eq!(
            segments,
            vec![
                Segment::Variable(Variable::RequestId),
                Segment::Literal(" \"".into()),
                Segment::Variable(Variable::Status),
                Segment::Literal("\" $5 ".into()),
                Segment::Variable(Variable::StageVariableNamed("env".into())),
                Segment::Literal(".".into()),
            ]
        );
        assert_eq!(
            parse("$context.authorizer.claims.cognito:groups,$context.authorizer.tenant").unwrap(),
            vec![
                Segment::Variable(Variable::Claim("cognito:groups".into())),
                Segment::Literal(",".into()),
                Segment::Variable(Variable::AuthorizerProperty("tenant".into())),
            ]
        );
    }

    #[test]
    fn unknown_or_forbidden_variables_are_config_errors() {
        for (format, says) in [
            ("$context.nope", "unknown variable `$context.nope`"),
            ("$context.identity.apiKey", "never logged"),
            ("$context. x", "names no variable"),
            ("$context.authorizer.a.b", "unknown variable"),
            ("$context.stageVariables.a:b", "not a stage variable"),
            ("", "empty"),
        ] {
            let error = parse(format).unwrap_err();
            assert_eq!(error.field(), "access_log.format", "{format}");
            assert!(error.to_string().contains(says), "{format}: {error}");
        }
    }

    #[test]
    fn escaping_keeps_one_line_and_valid_json() {
        let mut out = String::new();
        let raw = "a\"b\\c\nd\re\tf\u{1}g\u{2028}h é\u{1b}[31m\u{9b}";
        push_escaped(&mut out, raw);
        assert_eq!(out, r#"a\"b\\c\nd\re\tf\u0001g\u2028h é\u001b[31m\u009b"#);
        let json: String = serde_json::from_str(&format!("\"{out}\"")).unwrap();
        assert_eq!(json, raw);
        for unchanged in ["plain é ü", "5 € ¡", ""] {
            let mut out = String::new();
            push_escaped(&mut out, unchanged);
            assert_eq!(out, unchanged);
        }
    }

    #[test]
    fn clf_time_is_utc_with_month_names() {
        let mut out = String::new();
        // 2026-11-21T15:04:05Z
        push_clf_time(&mut out, UNIX_EPOCH + Duration::from_secs(1_795_273_445));
        assert_eq!(out, "21/Nov/2026:15:04:05 +0000");
    }
}
