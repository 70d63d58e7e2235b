//! Observability: access logs, metrics, traces and the execution log, all read from the
//! [`RequestContext`].
//!
//! API Gateway gives its users access logs with `$context` variables, CloudWatch metrics,
//! X-Ray traces and an execution log. The gateway gives the same through the Rust ecosystem's
//! facades, so they go wherever your `tracing` subscriber and `metrics` recorder send them:
//!
//! - **Access log** ([`AccessLog`], [`GatewayBuilder::access_log`](crate::GatewayBuilder::access_log)):
//!   one line per request, written when the response body has ended (so that
//!   `$context.responseLength` and the latencies are true) or when the client left, as an
//!   `INFO` event on the target [`ACCESS_LOG_TARGET`] whose message is the line. The
//!   [CLF](AccessLog::clf) and [JSON](AccessLog::json) presets are API Gateway's; a
//!   [format of your own](AccessLog::format) may use the variables listed there. Values are
//!   escaped, so a header cannot forge a line or break the JSON; API key values and tokens are
//!   not among the variables.
//! - **Metrics** (feature `metrics`, on unless
//!   [`GatewayBuilder::metrics`](crate::GatewayBuilder::metrics) turns them off): see
//!   [`metrics`] for the names and labels.
//! - **Traces**: a `DEBUG` span `request` per request on the target [`TRACE_TARGET`] (fields
//!   `request_id`, `method`, `stage`, `resource`, `trace_id`, `status`), with child spans
//!   `authorizer`, `validation`, `cache` and `integration`. A well-formed W3C `traceparent`
//!   header is recorded ([`RequestContext::trace_parent`], the span's `trace_id`,
//!   `$context.traceId`) and reaches the inner service unchanged; the `opentelemetry` example
//!   shows the spans exported to an OTLP collector as children of the caller's trace.
//! - **Execution log**: `DEBUG` events on the target [`EXECUTION_LOG_TARGET`], one per
//!   decision (stage, route, authorizer, API key, usage plan, rejection with its validation
//!   detail, cache), like API Gateway's execution log. Off unless your subscriber enables that
//!   target at `DEBUG`.
//!
//! # Example
//!
//! ```
//! use axum::{Router, routing::get};
//! use http::Method;
//! use tower::{Layer, ServiceExt};
//! use tower_gateway::observe::{ACCESS_LOG_TARGET, AccessLog};
//! use tower_gateway::{GatewayBuilder, Route, Stage};
//! use tracing_subscriber::{filter::Targets, fmt, prelude::*};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! // The access log alone, one JSON object a line on stdout.
//! tracing_subscriber::registry()
//!     .with(
//!         fmt::layer()
//!             .without_time()
//!             .with_target(false)
//!             .with_level(false)
//!             .with_ansi(false)
//!             // The lines come escaped: see `AccessLog`.
//!             .with_ansi_sanitization(false)
//!             .with_filter(Targets::new().with_target(ACCESS_LOG_TARGET, tracing::Level::INFO)),
//!     )
//!     .init();
//!
//! let gateway = GatewayBuilder::new()
//!     .stage(Stage::builder("prod").build().unwrap())
//!     .route(Route::new(Method::GET, "/pets"))
//!     .access_log(AccessLog::json())
//!     .build()
//!     .unwrap();
//! let router: Router = Router::new().route("/pets", get(|| async { "[]" }));
//! let app = gateway.layer(router);
//!
//! // Prints {"requestId":"…","ip":"-",…,"resourcePath":"/pets","status":"200",…}
//! let request = http::Request::get("/pets").body(axum::body::Body::empty()).unwrap();
//! let response = app.oneshot(request).await.unwrap();
//! # let _ = axum::body::to_bytes(response.into_body(), 1024).await.unwrap();
//! # }
//! ```

mod format;
#[cfg(feature = "metrics")]
pub mod metrics;

use std::cell::RefCell;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::header::HeaderValue;
use http::{Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::body::GatewayBody;
use crate::context::RequestContext;
use crate::error::ConfigError;
use format::{Segment, Sent};

/// The target of the access log's events.
pub const ACCESS_LOG_TARGET: &str = "tower_gateway::access_log";
/// The target of the request spans and their phase spans (`DEBUG`, as tower-http's).
pub const TRACE_TARGET: &str = "tower_gateway::trace";
/// The target of the execution log's `DEBUG` events.
pub const EXECUTION_LOG_TARGET: &str = "tower_gateway::execution";

/// API Gateway's CLF preset.
const CLF: &str = "$context.identity.sourceIp $context.identity.caller $context.identity.user \
                   [$context.requestTime] \"$context.httpMethod $context.resourcePath \
                   $context.protocol\" $context.status $context.responseLength \
                   $context.requestId";

/// API Gateway's JSON preset.
const JSON: &str = r#"{"requestId":"$context.requestId","ip":"$context.identity.sourceIp","caller":"$context.identity.caller","user":"$context.identity.user","requestTime":"$context.requestTime","httpMethod":"$context.httpMethod","resourcePath":"$context.resourcePath","status":"$context.status","protocol":"$context.protocol","responseLength":"$context.responseLength"}"#;

/// An access-log format: the line written for each request.
///
/// Variables are written `$context.<name>` (and `$stageVariables.<name>`); a value the
/// request does not have is written `-`. Every value is escaped as inside a JSON string
/// (quotes, backslashes, C0 and C1 control characters), so a line stays one line, a JSON
/// format stays JSON, and no value can send a terminal escape sequence. A
/// `tracing-subscriber` fmt layer that writes only the access log can therefore skip its own
/// escaping (`.with_ansi_sanitization(false)`), which costs more than the line itself.
///
/// | variable | value |
/// |---|---|
/// | `requestId`, `extendedRequestId` | the request id |
/// | `requestTime`, `requestTimeEpoch` | receipt time, CLF (`21/Nov/2026:15:04:05 +0000`) or milliseconds since the epoch |
/// | `httpMethod`, `path`, `protocol` | as the client sent them (`HTTP/1.1`) |
/// | `resourcePath` | the matched route's template |
/// | `stage`, `stageVariables.<name>` | the stage, its variables (with a canary's overrides) |
/// | `domainName` | the host the client addressed |
/// | `identity.sourceIp`, `identity.userAgent` | the client |
/// | `identity.apiKeyId` | the accepted API key's id (`identity.apiKey`, the value, is refused) |
/// | `identity.caller`, `identity.user` | always `-` (IAM), for API Gateway's CLF format |
/// | `authorizer.principalId`, `authorizer.claims.<name>`, `authorizer.<key>` | what the authorizer found |
/// | `authorizer.latency`, `integrationLatency`, `responseLatency` | milliseconds |
/// | `integrationStatus`, `integration.status`, `integration.latency` | the inner service's answer |
/// | `status`, `responseLength` | status and body bytes sent |
/// | `error.message`, `error.responseType`, `error.validationErrorString` | the gateway's rejection |
/// | `release`, `cacheStatus`, `traceId` | `baseline`/`canary`, `hit`/`miss`, the W3C trace id |
///
/// An unknown variable is a [`ConfigError`] from [`format`](Self::format).
#[derive(Clone)]
pub struct AccessLog {
    segments: Arc<[Segment]>,
}

impl AccessLog {
    /// API Gateway's CLF preset:
    /// `$context.identity.sourceIp $context.identity.caller $context.identity.user
    /// [$context.requestTime] "$context.httpMethod $context.resourcePath $context.protocol"
    /// $context.status $context.responseLength $context.requestId`.
    pub fn clf() -> Self {
        Self::preset(CLF)
    }

    /// API Gateway's JSON preset: `requestId`, `ip`, `caller`, `user`, `requestTime`,
    /// `httpMethod`, `resourcePath`, `status`, `protocol` and `responseLength`, all strings,
    /// one object a line.
    pub fn json() -> Self {
        Self::preset(JSON)
    }

    fn preset(format: &str) -> Self {
        match format::parse(format) {
            Ok(segments) => Self {
                segments: segments.into(),
            },
            // The presets are constants, parsed by the tests.
            Err(_) => unreachable!("the access-log presets parse"),
        }
    }

    /// A format of your own, such as `$context.requestId $context.status
    /// $context.authorizer.claims.email`. An unknown variable is an error naming it.
    pub fn format(format: &str) -> Result<Self, ConfigError> {
        Ok(Self {
            segments: format::parse(format)?.into(),
        })
    }

    /// `clf`, `json`, or else a format: what a configuration file's `access_log` holds.
    pub fn from_config(value: &str) -> Result<Self, ConfigError> {
        match value {
            "clf" => Ok(Self::clf()),
            "json" => Ok(Self::json()),
            format => Self::format(format),
        }
    }

    fn write(&self, context: &RequestContext, sent: &Sent) {
        if !tracing::enabled!(target: ACCESS_LOG_TARGET, tracing::Level::INFO) {
            return;
        }
        // Each thread reuses one buffer for its lines.
        thread_local! {
            static LINE: RefCell<String> = const { RefCell::new(String::new()) };
        }
        let emit = |line: &mut String| {
            line.clear();
            format::render(&self.segments, context, sent, line);
            // No parent: the line is the same whatever span is current when it is written.
            tracing::info!(target: ACCESS_LOG_TARGET, parent: None, "{line}");
        };
        LINE.with(|line| match line.try_borrow_mut() {
            Ok(mut line) => emit(&mut line),
            // A subscriber that finished another request while writing this one's line.
            Err(_) => emit(&mut String::new()),
        });
    }
}

impl fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessLog")
            .field("segments", &self.segments.len())
            .finish()
    }
}

/// A W3C trace context (`traceparent`), checked as the recommendation asks: a known layout,
/// lower-case hex, no all-zero ids, version `ff` refused.
#[derive(Clone, PartialEq, Eq)]
pub struct TraceParent {
    value: HeaderValue,
}

impl TraceParent {
    /// `value`, when it is a well-formed `traceparent`.
    pub fn parse(value: &HeaderValue) -> Option<Self> {
        let bytes = value.as_bytes();
        // Later versions may append fields, which must be text like the rest.
        if !bytes.iter().all(u8::is_ascii_graphic) {
            return None;
        }
        let lower_hex = |part: &[u8]| {
            part.iter()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
        };
        let nonzero = |part: &[u8]| part.iter().any(|b| *b != b'0');
        if bytes.len() < 55 {
            return None;
        }
        let (version, trace_id, parent_id, flags) =
            (&bytes[..2], &bytes[3..35], &bytes[36..52], &bytes[53..55]);
        let layout = bytes[2] == b'-' && bytes[35] == b'-' && bytes[52] == b'-';
        let known_length = match version {
            b"00" => bytes.len() == 55,
            // A later version may append fields after a dash.
            _ => bytes.len() == 55 || bytes[55] == b'-',
        };
        let valid = layout
            && known_length
            && version != b"ff"
            && [version, trace_id, parent_id, flags]
                .into_iter()
                .all(lower_hex)
            && nonzero(trace_id)
            && nonzero(parent_id);
        valid.then(|| Self {
            value: value.clone(),
        })
    }

    /// The header as it came.
    pub fn as_str(&self) -> &str {
        // Checked to be visible ASCII by `parse`.
        self.value.to_str().unwrap_or_default()
    }

    /// The trace id: 32 hex digits.
    pub fn trace_id(&self) -> &str {
        self.as_str().get(3..35).unwrap_or_default()
    }

    /// The caller's span id: 16 hex digits.
    pub fn parent_id(&self) -> &str {
        self.as_str().get(36..52).unwrap_or_default()
    }

    /// Whether the caller sampled the trace (flag `01`).
    pub fn sampled(&self) -> bool {
        self.as_str()
            .get(53..55)
            .and_then(|flags| u8::from_str_radix(flags, 16).ok())
            .is_some_and(|flags| flags & 1 == 1)
    }
}

impl fmt::Debug for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TraceParent").field(&self.as_str()).finish()
    }
}

/// What a deployment does with each finished request: its access log and metrics.
pub(crate) struct Observer {
    access_log: Option<AccessLog>,
    #[cfg(feature = "metrics")]
    metrics: Option<metrics::GatewayMetrics>,
}

impl fmt::Debug for Observer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Observer")
            .field("access_log", &self.access_log)
            .finish_non_exhaustive()
    }
}

impl Observer {
    /// An observer, when there is anything to observe.
    pub(crate) fn new(access_log: Option<AccessLog>, metrics: bool) -> Option<Arc<Self>> {
        #[cfg(feature = "metrics")]
        let metrics = metrics.then(metrics::GatewayMetrics::new);
        #[cfg(not(feature = "metrics"))]
        let _ = metrics;
        #[cfg(feature = "metrics")]
        let any = access_log.is_some() || metrics.is_some();
        #[cfg(not(feature = "metrics"))]
        let any = access_log.is_some();
        any.then(|| {
            Arc::new(Self {
                access_log,
                #[cfg(feature = "metrics")]
                metrics,
            })
        })
    }

    /// Starts watching a request: the returned guard writes its line and metrics when the
    /// response ends, or when it is dropped first.
    pub(crate) fn watch(self: &Arc<Self>, context: &RequestContext) -> Watch {
        Watch {
            observer: Arc::clone(self),
            context: context.clone(),
            status: None,
            bytes: 0,
            done: false,
            failed: false,
        }
    }

    fn finished(&self, context: &RequestContext, sent: &Sent) {
        if let Some(access_log) = &self.access_log {
            access_log.write(context, sent);
        }
        #[cfg(feature = "metrics")]
        if let Some(metrics) = &self.metrics {
            metrics.record(context, sent);
        }
    }
}

/// One request being watched; see [`Observer::watch`].
pub(crate) struct Watch {
    observer: Arc<Observer>,
    context: RequestContext,
    status: Option<StatusCode>,
    bytes: u64,
    done: bool,
    failed: bool,
}

impl Watch {
    /// The inner service failed instead of answering: there is no status to log, and the
    /// request counts as a server error.
    pub(crate) fn failed(mut self) {
        self.failed = true;
        self.finish();
    }

    /// Follows `response` to the end of its body, when its body type can hold an
    /// [`ObservedBody`]; otherwise the line is written now, with the body's known length.
    pub(crate) fn respond<B>(mut self, response: Response<B>) -> Response<B>
    where
        B: GatewayBody + Body<Data = Bytes>,
    {
        self.status = Some(response.status());
        let (head, body) = response.into_parts();
        let observed = ObservedBody {
            body,
            watch: Some(self),
        };
        let body = B::observe(observed).unwrap_or_else(|observed| {
            let hint = observed.body.size_hint();
            if let Some(mut watch) = observed.watch {
                watch.bytes = hint.exact().unwrap_or(hint.lower());
                watch.finish();
            }
            observed.body
        });
        Response::from_parts(head, body)
    }

    fn finish(&mut self) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let sent = Sent {
            status: self.status,
            bytes: self.bytes,
            latency: self.context.received_at().elapsed(),
            #[cfg(feature = "metrics")]
            failed: self.failed,
        };
        self.observer.finished(&self.context, &sent);
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        // The client left (the response future or body was dropped): the line is written
        // with what was sent so far.
        self.finish();
    }
}

pin_project! {
    /// A response body the access log and metrics follow to its end: it counts the bytes
    /// handed on, and writes the request's line when the body ends, fails or is dropped (the
    /// client left).
    ///
    /// Response bodies that can hold another body (axum's, tonic's, the boxed bodies) carry it
    /// through [`GatewayBody::observe`]; for other types the line is written when the
    /// response head leaves the gateway, with the body's known length.
    pub struct ObservedBody<B> {
        #[pin]
        body: B,
        watch: Option<Watch>,
    }
}

impl<B> fmt::Debug for ObservedBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObservedBody")
            .field("bytes", &self.watch.as_ref().map(|watch| watch.bytes))
            .finish_non_exhaustive()
    }
}

impl<B> Body for ObservedBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let frame = ready!(this.body.poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let (Some(data), Some(watch)) = (frame.data_ref(), this.watch.as_mut()) {
                    watch.bytes += data.len() as u64;
                }
            }
            Some(Err(_)) | None => {
                if let Some(mut watch) = this.watch.take() {
                    watch.finish();
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_presets_parse() {
        assert_eq!(format::parse(CLF).unwrap().len(), 19);
        assert!(format::parse(JSON).unwrap().len() > 10);
        assert!(AccessLog::from_config("$context.nope").is_err());
    }

    #[test]
    fn trace_parents_are_checked() {
        let parse = |text: &str| TraceParent::parse(&HeaderValue::from_str(text).unwrap());
        let valid = parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(valid.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(valid.parent_id(), "00f067aa0ba902b7");
        assert!(valid.sampled());
        assert!(
            !parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")
                .unwrap()
                .sampled()
        );
        // A later version may carry more.
        assert!(parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra").is_some());
        for invalid in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            assert!(parse(invalid).is_none(), "{invalid}");
        }
        let non_ascii = HeaderValue::from_bytes(
            b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-\x80",
        )
        .unwrap();
        assert!(
            TraceParent::parse(&non_ascii).is_none(),
            "later fields are text too"
        );
        let value =
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let mut request = http::Request::new(());
        request.headers_mut().append("traceparent", value.clone());
        let once = RequestContext::get_or_insert(&mut request.clone());
        assert!(once.trace_parent().is_some());
        request.headers_mut().append("traceparent", value);
        let twice = RequestContext::get_or_insert(&mut request);
        assert!(
            twice.trace_parent().is_none(),
            "two headers: no trace context"
        );
    }
}
