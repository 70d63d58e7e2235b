//! Access logs, metrics, spans and the execution log, read back through a capturing
//! `tracing` layer and `metrics-util`'s debugging recorder.

mod support;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use metrics::{SharedString, Unit};
use metrics_util::CompositeKey;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use serde_json::{Value, json};
use support::text;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::{Layer, ServiceExt, service_fn};
use tower_gateway::api_key::{ApiKey, InMemoryApiKeyStore};
use tower_gateway::authorizer::custom::{AuthorizerRequest, AuthorizerResponse, CustomAuthorizer};
use tower_gateway::body::RequestBody;
use tower_gateway::cache::CacheSettings;
use tower_gateway::canary::CanarySettings;
use tower_gateway::clock::ManualClock;
use tower_gateway::observe::{
    ACCESS_LOG_TARGET, AccessLog, EXECUTION_LOG_TARGET, TRACE_TARGET, metrics as names,
};
use tower_gateway::route::ThrottleSettings;
use tower_gateway::usage_plan::UsagePlan;
use tower_gateway::validate::Validator;
use tower_gateway::{GatewayBuilder, GatewayConfig, GatewayService, Route, Stage, StageSelection};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

const ALICE: &str = "alice-key-0123456789abcdef";
const TOKEN: &str = "secret-bearer-token-value";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// Every variable, as one JSON object a line.
const EVERY_VARIABLE: &str = r#"{"requestId":"$context.requestId","extendedRequestId":"$context.extendedRequestId","requestTime":"$context.requestTime","requestTimeEpoch":"$context.requestTimeEpoch","httpMethod":"$context.httpMethod","resourcePath":"$context.resourcePath","path":"$context.path","protocol":"$context.protocol","stage":"$context.stage","domainName":"$context.domainName","sourceIp":"$context.identity.sourceIp","userAgent":"$context.identity.userAgent","apiKeyId":"$context.identity.apiKeyId","caller":"$context.identity.caller","principalId":"$context.authorizer.principalId","claim":"$context.authorizer.claims.sub","tenant":"$context.authorizer.tenant","authorizerLatency":"$context.authorizer.latency","integrationLatency":"$context.integrationLatency","integrationStatus":"$context.integration.status","responseLatency":"$context.responseLatency","responseLength":"$context.responseLength","status":"$context.status","errorMessage":"$context.error.message","errorType":"$context.error.responseType","validation":"$context.error.validationErrorString","greeting":"$stageVariables.greeting","release":"$context.release","cacheStatus":"$context.cacheStatus","traceId":"$context.traceId"}"#;

/// A variable written as a whole number (milliseconds, an epoch), not `-`.
#[track_caller]
fn assert_number(value: &Value) {
    let text = value.as_str().unwrap_or_default();
    assert!(text.parse::<u64>().is_ok(), "not a number: {value}");
}

/// What the capturing layer saw.
#[derive(Clone, Default)]
struct Captured {
    access: Arc<Mutex<Vec<String>>>,
    execution: Arc<Mutex<Vec<String>>>,
    /// `name<parent` of every span on the trace target, with the request span's fields.
    spans: Arc<Mutex<Vec<String>>>,
}

impl Captured {
    fn access_lines(&self) -> Vec<String> {
        self.access.lock().unwrap().clone()
    }

    fn access_json(&self) -> Vec<Value> {
        self.access_lines()
            .iter()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
            .collect()
    }
}

#[derive(Default)]
struct Fields(String);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0.push_str(&format!("{value:?}"));
        } else {
            self.0.push_str(&format!(" {}={value:?}", field.name()));
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        } else {
            self.0.push_str(&format!(" {}={value}", field.name()));
        }
    }
}

impl<S> tracing_subscriber::Layer<S> for Captured
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        match event.metadata().target() {
            ACCESS_LOG_TARGET => self.access.lock().unwrap().push(fields.0),
            EXECUTION_LOG_TARGET => self.execution.lock().unwrap().push(fields.0),
            _ => {}
        }
    }

    fn on_new_span(&self, attributes: &Attributes<'_>, id: &Id, context: Context<'_, S>) {
        if attributes.metadata().target() != TRACE_TARGET {
            return;
        }
        let parent = context
            .span(id)
            .and_then(|span| span.parent())
            .map_or("-", |parent| parent.name());
        let mut fields = Fields::default();
        attributes.record(&mut fields);
        self.spans.lock().unwrap().push(format!(
            "{}<{parent}{}",
            attributes.metadata().name(),
            fields.0
        ));
    }
}

/// Runs `test` on a current-thread runtime with the capturing layer and a debugging metrics
/// recorder installed for this thread.
fn observed<F>(test: impl FnOnce(Captured) -> F) -> (Captured, Snapshotter)
where
    F: std::future::Future<Output = ()>,
{
    let captured = Captured::default();
    let subscriber = tracing_subscriber::registry().with(captured.clone());
    let _default = tracing::subscriber::set_default(subscriber);
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || runtime.block_on(test(captured.clone())));
    (captured, snapshotter)
}

fn keys() -> InMemoryApiKeyStore {
    let store = InMemoryApiKeyStore::new();
    store
        .insert(ApiKey::new("alice", ALICE).id("alice-id"))
        .unwrap();
    store
}

fn authorizer() -> CustomAuthorizer {
    CustomAuthorizer::token(|request: AuthorizerRequest| {
        let answer = match request.token() {
            Some(TOKEN) => AuthorizerResponse::simple(true)
                .principal_id("user-7")
                .context("tenant", "acme\n\"injected\": 1"),
            _ => AuthorizerResponse::simple(false),
        };
        std::future::ready(Ok(answer))
    })
    .build()
    .unwrap()
}

fn gateway(access_log: AccessLog, clock: &ManualClock) -> GatewayBuilder {
    let pet = json!({"type": "object", "required": ["name"]});
    GatewayBuilder::new()
        .stage(
            Stage::builder("prod")
                .variable("greeting", "hello")
                .cache(CacheSettings::new().enabled(false))
                .canary(
                    CanarySettings::new(0.0)
                        .variable_override("greeting", "hola")
                        .force_header("x-canary"),
                )
                .build()
                .unwrap(),
        )
        .stage_selection(StageSelection::BasePath)
        .clock(clock.clock())
        .api_key_store(keys())
        .usage_plan(
            UsagePlan::builder("demo")
                .stage("prod")
                .throttle(ThrottleSettings {
                    rate: 1.0,
                    burst: 1,
                })
                .key("alice-id")
                .build()
                .unwrap(),
        )
        .custom_authorizer("tokens", authorizer())
        .request_validator("all", Validator::all())
        .model("Pet", pet)
        .route(Route::new(Method::GET, "/pets/{petId}"))
        .route(Route::new(Method::GET, "/keyed").api_key_required(true))
        .route(Route::new(Method::GET, "/private").authorizer("tokens"))
        .route(
            Route::new(Method::POST, "/pets")
                .validator("all")
                .request_model("application/json", "Pet"),
        )
        .route(
            Route::new(Method::GET, "/cached").cache(
                tower_gateway::cache::RouteCacheSettings::new()
                    .enabled(true)
                    .ttl_seconds(60),
            ),
        )
        .access_log(access_log)
}

fn router() -> Router {
    Router::new()
        .route("/pets/{petId}", get(|| async { "a pet" }))
        .route("/keyed", get(|| async { "keyed" }))
        .route("/private", get(|| async { "private" }))
        .route("/pets", axum::routing::post(|| async { "created" }))
        .route("/cached", get(|| async { "cached body" }))
}

fn app(access_log: AccessLog, clock: &ManualClock) -> GatewayService<Router> {
    gateway(access_log, clock).build().unwrap().layer(router())
}

async fn send(app: &GatewayService<Router>, request: Request<Body>) -> (StatusCode, String) {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    (status, text(response).await)
}

fn request(method: Method, uri: &str) -> http::request::Builder {
    Request::builder()
        .method(method)
        .uri(uri)
        .header("host", "api.example.com:8443")
        .header("user-agent", "tests/1.0")
}

type Metrics = Vec<(CompositeKey, Option<Unit>, Option<SharedString>, DebugValue)>;

/// The recorder's values, read once: reading drains the histograms.
fn read(snapshotter: &Snapshotter) -> Metrics {
    snapshotter.snapshot().into_vec()
}

fn counter(metrics: &Metrics, name: &str, labels: &[(&str, &str)]) -> u64 {
    sum(metrics, name, labels, |value| match value {
        DebugValue::Counter(count) => *count,
        _ => 0,
    })
}

fn histogram_samples(metrics: &Metrics, name: &str, labels: &[(&str, &str)]) -> u64 {
    sum(metrics, name, labels, |value| match value {
        DebugValue::Histogram(samples) => samples.len() as u64,
        _ => 0,
    })
}

/// The total over the series of `name` that carry all of `labels`.
fn sum(
    metrics: &Metrics,
    name: &str,
    labels: &[(&str, &str)],
    value_of: impl Fn(&DebugValue) -> u64,
) -> u64 {
    metrics
        .iter()
        .filter(|(key, _, _, _)| key.key().name() == name)
        .filter(|(key, _, _, _)| {
            labels.iter().all(|(label, value)| {
                key.key()
                    .labels()
                    .any(|l| l.key() == *label && l.value() == *value)
            })
        })
        .map(|(_, _, _, value)| value_of(value))
        .sum()
}

#[test]
fn every_variable_for_allowed_throttled_unauthorised_invalid_cached_and_canary_requests() {
    let (captured, _) = observed(|captured| async move {
        let clock = ManualClock::starting_at(1_795_273_445);
        let app = app(AccessLog::format(EVERY_VARIABLE).unwrap(), &clock);
        let allowed = request(Method::GET, "/prod/keyed")
            .header("x-api-key", ALICE)
            .header("traceparent", TRACEPARENT);
        assert_eq!(
            send(&app, allowed.body(Body::empty()).unwrap()).await.0,
            StatusCode::OK
        );
        let throttled = request(Method::GET, "/prod/keyed").header("x-api-key", ALICE);
        let (status, _) = send(&app, throttled.body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        let unauthorised = request(Method::GET, "/prod/private").header("authorization", "nope");
        let (status, _) = send(&app, unauthorised.body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let authorised = request(Method::GET, "/prod/private").header("authorization", TOKEN);
        assert_eq!(
            send(&app, authorised.body(Body::empty()).unwrap()).await.0,
            StatusCode::OK
        );
        let invalid = request(Method::POST, "/prod/pets")
            .header("content-type", "application/json")
            .body(Body::from(r#"{"age": 3}"#))
            .unwrap();
        assert_eq!(send(&app, invalid).await.0, StatusCode::BAD_REQUEST);
        for expected in ["miss", "hit"] {
            let cached = request(Method::GET, "/prod/cached")
                .body(Body::empty())
                .unwrap();
            let (status, body) = send(&app, cached).await;
            assert_eq!(
                (status, body.as_str()),
                (StatusCode::OK, "cached body"),
                "{expected}"
            );
        }
        let canary = request(Method::GET, "/prod/pets/7").header("x-canary", "canary");
        assert_eq!(
            send(&app, canary.body(Body::empty()).unwrap()).await.0,
            StatusCode::OK
        );
        let unknown = request(Method::GET, "/prod/nowhere")
            .body(Body::empty())
            .unwrap();
        assert_eq!(send(&app, unknown).await.0, StatusCode::FORBIDDEN);
        let lines = captured.access_json();
        assert_eq!(
            lines.len(),
            9,
            "one line per request, written as each ended"
        );
    });
    let lines = captured.access_json();
    let [
        allowed,
        throttled,
        refused,
        authorised,
        invalid,
        miss,
        hit,
        canary,
        unknown,
    ] = &lines[..]
    else {
        panic!("{lines:?}");
    };

    // Every line: the request's own facts.
    for line in &lines {
        let id = line["requestId"].as_str().unwrap();
        assert_eq!(id.len(), 36, "{line}");
        assert_eq!(line["extendedRequestId"], id);
        assert!(
            line["requestTime"].as_str().unwrap().ends_with(" +0000"),
            "{line}"
        );
        assert_number(&line["requestTimeEpoch"]);
        assert_eq!(line["protocol"], "HTTP/1.1");
        assert_eq!(line["domainName"], "api.example.com");
        assert_eq!(line["userAgent"], "tests/1.0");
        assert_eq!(line["sourceIp"], "-", "no connection address under oneshot");
        assert_eq!(line["caller"], "-");
        assert_eq!(line["stage"], "prod");
        assert_number(&line["responseLatency"]);
    }

    assert_eq!(allowed["httpMethod"], "GET");
    assert_eq!(allowed["resourcePath"], "/keyed");
    assert_eq!(allowed["path"], "/prod/keyed");
    assert_eq!(allowed["status"], "200");
    assert_eq!(allowed["responseLength"], "5");
    assert_eq!(allowed["apiKeyId"], "alice-id");
    assert_eq!(allowed["integrationStatus"], "200");
    assert_number(&allowed["integrationLatency"]);
    assert_eq!(allowed["errorType"], "-");
    assert_eq!(allowed["release"], "baseline");
    assert_eq!(allowed["greeting"], "hello");
    assert_eq!(allowed["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(allowed["cacheStatus"], "-");

    assert_eq!(throttled["status"], "429");
    assert_eq!(throttled["errorType"], "THROTTLED");
    assert_eq!(throttled["errorMessage"], "Too Many Requests");
    assert_eq!(
        throttled["integrationStatus"], "-",
        "the service was not called"
    );
    assert_eq!(throttled["integrationLatency"], "-");
    assert_eq!(throttled["traceId"], "-");

    assert_eq!(refused["status"], "403");
    assert_eq!(refused["errorType"], "ACCESS_DENIED");
    assert_number(&refused["authorizerLatency"]);
    assert_eq!(refused["principalId"], "-");

    assert_eq!(authorised["principalId"], "user-7");
    assert_eq!(
        authorised["tenant"], "acme\n\"injected\": 1",
        "the authorizer's value, escaped in the line and whole in the JSON"
    );
    assert_eq!(
        authorised["claim"], "-",
        "a custom authorizer has no claims"
    );

    assert_eq!(invalid["status"], "400");
    assert_eq!(invalid["errorType"], "BAD_REQUEST_BODY");
    assert_eq!(invalid["httpMethod"], "POST");
    assert!(
        invalid["validation"].as_str().unwrap().contains("name"),
        "{invalid}"
    );

    assert_eq!(miss["cacheStatus"], "miss");
    assert_eq!(miss["integrationStatus"], "200");
    assert_eq!(hit["cacheStatus"], "hit");
    assert_eq!(
        hit["integrationStatus"], "-",
        "a hit never reaches the service"
    );
    assert_eq!(hit["responseLength"], "11");

    assert_eq!(canary["release"], "canary");
    assert_eq!(canary["greeting"], "hola");
    assert_eq!(canary["resourcePath"], "/pets/{petId}");

    assert_eq!(unknown["resourcePath"], "-");
    assert_eq!(unknown["errorType"], "MISSING_AUTHENTICATION_TOKEN");

    // Key values and tokens never appear.
    for line in captured.access_lines() {
        assert!(!line.contains(ALICE) && !line.contains(TOKEN), "{line}");
        assert!(!line.contains('\n'), "one line: {line}");
    }
}

#[test]
fn metrics_count_each_outcome_by_stage_resource_method_and_release() {
    let (_, snapshotter) = observed(|_| async {
        let clock = ManualClock::starting_at(1_795_273_445);
        let app = app(AccessLog::clf(), &clock);
        for _ in 0..2 {
            let keyed = request(Method::GET, "/prod/keyed").header("x-api-key", ALICE);
            send(&app, keyed.body(Body::empty()).unwrap()).await;
        }
        let refused = request(Method::GET, "/prod/private").header("authorization", "nope");
        send(&app, refused.body(Body::empty()).unwrap()).await;
        let authorised = request(Method::GET, "/prod/private").header("authorization", TOKEN);
        send(&app, authorised.body(Body::empty()).unwrap()).await;
        for _ in 0..3 {
            send(
                &app,
                request(Method::GET, "/prod/cached")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        }
        let canary = request(Method::GET, "/prod/pets/7").header("x-canary", "canary");
        send(&app, canary.body(Body::empty()).unwrap()).await;
        send(
            &app,
            request(Method::GET, "/prod/pets/8")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        for method in ["BREW", "PURGE"] {
            let invented = Method::from_bytes(method.as_bytes()).unwrap();
            send(
                &app,
                request(invented, "/prod/pets/9")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        }
    });
    let snapshotter = read(&snapshotter);
    let keyed = [("stage", "prod"), ("resource", "/keyed"), ("method", "GET")];
    assert_eq!(counter(&snapshotter, names::REQUESTS, &keyed), 2);
    assert_eq!(counter(&snapshotter, names::THROTTLED, &keyed), 1);
    assert_eq!(counter(&snapshotter, names::ERRORS_4XX, &keyed), 1);
    assert_eq!(counter(&snapshotter, names::QUOTA_EXCEEDED, &keyed), 0);
    assert_eq!(histogram_samples(&snapshotter, names::LATENCY, &keyed), 2);
    assert_eq!(
        histogram_samples(&snapshotter, names::INTEGRATION_LATENCY, &keyed),
        1,
        "only the admitted request reached the service"
    );

    let private = [("resource", "/private")];
    assert_eq!(counter(&snapshotter, names::REQUESTS, &private), 2);
    assert_eq!(
        counter(&snapshotter, names::AUTHORIZER_FAILURES, &private),
        1
    );
    assert_eq!(
        histogram_samples(&snapshotter, names::AUTHORIZER_LATENCY, &private),
        2
    );

    let cached = [("resource", "/cached")];
    assert_eq!(counter(&snapshotter, names::CACHE_MISSES, &cached), 1);
    assert_eq!(counter(&snapshotter, names::CACHE_HITS, &cached), 2);
    assert_eq!(
        histogram_samples(&snapshotter, names::INTEGRATION_LATENCY, &cached),
        1
    );

    let pets = [("resource", "/pets/{petId}"), ("method", "GET")];
    assert_eq!(counter(&snapshotter, names::REQUESTS, &pets), 2);
    let canary = [("resource", "/pets/{petId}"), ("release", "canary")];
    assert_eq!(counter(&snapshotter, names::REQUESTS, &canary), 1);
    let other = [("method", "OTHER")];
    assert_eq!(
        counter(&snapshotter, names::REQUESTS, &other),
        2,
        "invented methods share one series"
    );
    // No series is labelled by a raw path.
    for (key, _, _, _) in &snapshotter {
        for label in key.key().labels() {
            assert!(!label.value().contains("/prod/"), "{label:?}");
            assert!(!["BREW", "PURGE"].contains(&label.value()), "{label:?}");
        }
    }
}

#[test]
fn a_spent_quota_is_counted_by_the_quota_metric() {
    use tower_gateway::usage_plan::{Quota, QuotaPeriod};
    let (captured, snapshotter) = observed(|_| async {
        let clock = ManualClock::starting_at(1_795_273_445);
        let app = GatewayBuilder::new()
            .stage(Stage::builder("prod").build().unwrap())
            .stage_selection(StageSelection::BasePath)
            .clock(clock.clock())
            .api_key_store(keys())
            .usage_plan(
                UsagePlan::builder("small")
                    .stage("prod")
                    .quota(Quota::new(3, QuotaPeriod::Day))
                    .key("alice-id")
                    .build()
                    .unwrap(),
            )
            .route(Route::new(Method::GET, "/keyed").api_key_required(true))
            .access_log(AccessLog::format("$context.status $context.error.responseType").unwrap())
            .build()
            .unwrap()
            .layer(router());
        let mut statuses = Vec::new();
        for _ in 0..5 {
            let keyed = request(Method::GET, "/prod/keyed").header("x-api-key", ALICE);
            statuses.push(
                send(&app, keyed.body(Body::empty()).unwrap())
                    .await
                    .0
                    .as_u16(),
            );
        }
        assert_eq!(statuses, [200, 200, 200, 429, 429]);
    });
    assert_eq!(
        captured.access_lines()[3..],
        ["429 QUOTA_EXCEEDED", "429 QUOTA_EXCEEDED"]
    );
    let metrics = read(&snapshotter);
    let keyed = [("stage", "prod"), ("resource", "/keyed"), ("method", "GET")];
    assert_eq!(counter(&metrics, names::REQUESTS, &keyed), 5);
    assert_eq!(counter(&metrics, names::QUOTA_EXCEEDED, &keyed), 2);
    assert_eq!(counter(&metrics, names::THROTTLED, &keyed), 0);
    assert_eq!(counter(&metrics, names::ERRORS_4XX, &keyed), 2);
}

#[test]
fn the_access_log_writes_jwt_claims_by_name() {
    const NOW: u64 = 1_795_273_445;
    let (captured, _) = observed(|_| async {
        let clock = ManualClock::starting_at(NOW);
        let users = support::jwt_authorizer(Some(clock.clock()));
        let format = r#"{"sub":"$context.authorizer.claims.sub","email":"$context.authorizer.claims.email","level":"$context.authorizer.claims.level","groups":"$context.authorizer.claims.cognito:groups","absent":"$context.authorizer.claims.nickname","principal":"$context.authorizer.principalId","status":"$context.status"}"#;
        let app = GatewayBuilder::new()
            .stage(Stage::builder("prod").build().unwrap())
            .stage_selection(StageSelection::BasePath)
            .clock(clock.clock())
            .jwt_authorizer("users", users)
            .route(Route::new(Method::GET, "/private").authorizer("users"))
            .access_log(AccessLog::format(format).unwrap())
            .build()
            .unwrap()
            .layer(router());
        let token = support::bearer(json!({
            "sub": "user-42", "email": "ana@example.com", "level": 3,
            "cognito:groups": ["admins", "ops"], "iat": NOW, "exp": NOW + 600,
        }));
        let authorised = request(Method::GET, "/prod/private").header("authorization", token);
        assert_eq!(
            send(&app, authorised.body(Body::empty()).unwrap()).await.0,
            StatusCode::OK
        );
        let anonymous = request(Method::GET, "/prod/private");
        assert_eq!(
            send(&app, anonymous.body(Body::empty()).unwrap()).await.0,
            StatusCode::UNAUTHORIZED
        );
    });
    let lines = captured.access_json();
    assert_eq!(lines.len(), 2);
    assert_eq!(
        lines[0],
        json!({"sub": "user-42", "email": "ana@example.com", "level": "3",
               "groups": r#"["admins","ops"]"#, "absent": "-", "principal": "user-42",
               "status": "200"})
    );
    assert_eq!(
        lines[1],
        json!({"sub": "-", "email": "-", "level": "-", "groups": "-", "absent": "-",
               "principal": "-", "status": "401"})
    );
}

#[test]
fn the_prometheus_exporter_renders_every_metric_by_its_name() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || {
        runtime.block_on(async {
            let clock = ManualClock::starting_at(1_795_273_445);
            let app = app(AccessLog::clf(), &clock);
            let keyed = request(Method::GET, "/prod/keyed").header("x-api-key", ALICE);
            send(&app, keyed.body(Body::empty()).unwrap()).await;
        });
    });
    let text = handle.render();
    for name in [
        names::REQUESTS,
        names::ERRORS_4XX,
        names::ERRORS_5XX,
        names::LATENCY,
        names::INTEGRATION_LATENCY,
        names::CACHE_HITS,
        names::CACHE_MISSES,
        names::THROTTLED,
        names::QUOTA_EXCEEDED,
        names::AUTHORIZER_LATENCY,
        names::AUTHORIZER_FAILURES,
    ] {
        assert!(text.contains(&format!("# TYPE {name} ")), "{name}:\n{text}");
    }
    assert!(
        text.contains(
            r#"gateway_requests_total{stage="prod",resource="/keyed",method="GET",release="baseline"} 1"#
        ),
        "{text}"
    );
}

#[test]
fn metrics_can_be_turned_off() {
    let (captured, snapshotter) = observed(|_| async {
        let clock = ManualClock::starting_at(1_795_273_445);
        let app = gateway(AccessLog::clf(), &clock)
            .metrics(false)
            .build()
            .unwrap()
            .layer(router());
        send(
            &app,
            request(Method::GET, "/prod/pets/1")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    });
    assert_eq!(captured.access_lines().len(), 1);
    assert!(snapshotter.snapshot().into_vec().is_empty());
}

#[test]
fn both_presets_escape_what_a_client_controls() {
    let inbound_id = r#"id"}{"forged":"1\"#;
    for (preset, is_json) in [(AccessLog::json(), true), (AccessLog::clf(), false)] {
        let (captured, _) = observed(|_| async move {
            let clock = ManualClock::starting_at(1_795_273_445);
            let app = gateway(preset, &clock)
                .trust_inbound_request_id(true)
                .build()
                .unwrap()
                .layer(router());
            let forged = request(Method::GET, "/prod/pets/1").header("x-request-id", inbound_id);
            send(&app, forged.body(Body::empty()).unwrap()).await;
        });
        let lines = captured.access_lines();
        assert_eq!(lines.len(), 1);
        let line = &lines[0];
        if is_json {
            let parsed: Value = serde_json::from_str(line).unwrap();
            assert_eq!(parsed["requestId"], inbound_id);
            assert!(parsed.get("forged").is_none(), "{line}");
            assert_eq!(parsed["status"], "200");
            assert_eq!(parsed["resourcePath"], "/pets/{petId}");
            assert_eq!(parsed["responseLength"], "5");
        } else {
            assert!(line.ends_with(r#" 200 5 id\"}{\"forged\":\"1\\"#), "{line}");
            assert!(line.starts_with("- - - ["), "{line}");
            assert!(
                line.contains(r#"] "GET /pets/{petId} HTTP/1.1" "#),
                "{line}"
            );
        }
    }
}

#[test]
fn a_user_agent_cannot_forge_a_custom_json_line() {
    let (captured, _) = observed(|_| async {
        let clock = ManualClock::starting_at(1_795_273_445);
        let format = AccessLog::format(r#"{"ua":"$context.identity.userAgent"}"#).unwrap();
        let app = app(format, &clock);
        let sneaky = Request::get("/prod/pets/1")
            .header("user-agent", r#"x", "status": "200\"#)
            .body(Body::empty())
            .unwrap();
        send(&app, sneaky).await;
    });
    let lines = captured.access_json();
    assert_eq!(lines, vec![json!({"ua": r#"x", "status": "200\"#})]);
}

#[test]
fn the_execution_log_and_the_spans_follow_each_phase() {
    let (captured, _) = observed(|_| async {
        let clock = ManualClock::starting_at(1_795_273_445);
        let seen = Arc::new(Mutex::new(None::<String>));
        let inner_seen = Arc::clone(&seen);
        let router = Router::new()
            .route(
                "/pets/{petId}",
                get(move |request: Request<Body>| async move {
                    *inner_seen.lock().unwrap() = request
                        .headers()
                        .get("traceparent")
                        .map(|value| value.to_str().unwrap().to_owned());
                    "a pet"
                }),
            )
            .route("/keyed", get(|| async { "keyed" }))
            .route("/private", get(|| async { "private" }))
            .route("/pets", axum::routing::post(|| async { "created" }))
            .route("/cached", get(|| async { "cached body" }));
        let app = gateway(AccessLog::clf(), &clock)
            .build()
            .unwrap()
            .layer(router);
        let traced = request(Method::GET, "/prod/pets/1").header("traceparent", TRACEPARENT);
        send(&app, traced.body(Body::empty()).unwrap()).await;
        assert_eq!(
            seen.lock().unwrap().as_deref(),
            Some(TRACEPARENT),
            "propagated unchanged"
        );
        let authorised = request(Method::GET, "/prod/private").header("authorization", TOKEN);
        send(&app, authorised.body(Body::empty()).unwrap()).await;
        let invalid = request(Method::POST, "/prod/pets")
            .header("content-type", "application/json")
            .body(Body::from("{}"))
            .unwrap();
        send(&app, invalid).await;
        send(
            &app,
            request(Method::GET, "/prod/cached")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        let keyed = request(Method::GET, "/prod/keyed").header("x-api-key", ALICE);
        send(&app, keyed.body(Body::empty()).unwrap()).await;
    });
    let spans = captured.spans.lock().unwrap().clone();
    let requests: Vec<_> = spans
        .iter()
        .filter(|s| s.starts_with("request<-"))
        .collect();
    assert_eq!(requests.len(), 5, "{spans:?}");
    assert!(
        requests[0].contains("trace_id=4bf92f3577b34da6a3ce929d0e0e4736"),
        "{}",
        requests[0]
    );
    assert!(requests[0].contains("method=GET"), "{}", requests[0]);
    for phase in [
        "authorizer<request",
        "validation<request",
        "cache<request",
        "integration<request",
    ] {
        assert!(
            spans.iter().any(|s| s.starts_with(phase)),
            "{phase}: {spans:?}"
        );
    }
    // Every request that reached the service (all but the invalid one) has its integration
    // span inside its request span, whichever course through the gateway it took.
    let integrations: Vec<_> = spans
        .iter()
        .filter(|s| s.starts_with("integration<"))
        .collect();
    assert!(
        integrations.len() >= 3
            && integrations
                .iter()
                .all(|s| s.starts_with("integration<request")),
        "{spans:?}"
    );

    let execution = captured.execution.lock().unwrap().join("\n");
    for decision in [
        "stage and route selected",
        "stage=prod resource=/pets/{petId} release=baseline",
        "authorizer accepted the request",
        "request rejected",
        "response_type=BAD_REQUEST_BODY",
        "response cache consulted",
        "status=miss",
        "API key accepted",
        "key_id=alice-id",
        "throttle and quota checks passed",
    ] {
        assert!(execution.contains(decision), "{decision}:\n{execution}");
    }
    assert!(!execution.contains(ALICE) && !execution.contains(TOKEN));
}

/// A body that sends one chunk, then waits for ever.
struct Stalled {
    sent: bool,
}

impl http_body::Body for Stalled {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        if std::mem::replace(&mut self.sent, true) {
            return std::task::Poll::Pending;
        }
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from_static(
            b"hello",
        )))))
    }
}

#[test]
fn a_client_that_leaves_still_gets_its_line_with_what_was_sent() {
    let (captured, _) = observed(|captured| async move {
        let clock = ManualClock::starting_at(1_795_273_445);
        let router = Router::new()
            .route(
                "/stream",
                get(|| async { Body::new(Stalled { sent: false }) }),
            )
            .route("/never", get(std::future::pending::<&'static str>));
        let gateway = GatewayBuilder::new()
            .stage(Stage::builder("prod").build().unwrap())
            .clock(clock.clock())
            .route(Route::new(Method::GET, "/stream"))
            .route(Route::new(Method::GET, "/never"))
            .access_log(
                AccessLog::format("$context.resourcePath $context.status $context.responseLength")
                    .unwrap(),
            )
            .build()
            .unwrap();
        let app = gateway.layer(router);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(
                listener,
                axum::ServiceExt::<axum::extract::Request>::into_make_service(app),
            )
            .await
            .unwrap();
        });

        // Mid-response: the head and one chunk arrive, then the client hangs up.
        let mut client = tokio::net::TcpStream::connect(address).await.unwrap();
        client
            .write_all(b"GET /stream HTTP/1.1\r\nhost: localhost\r\n\r\n")
            .await
            .unwrap();
        let mut received = Vec::new();
        let mut buffer = [0u8; 1024];
        while !String::from_utf8_lossy(&received).contains("hello") {
            let read = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buffer))
                .await
                .expect("the first chunk arrives")
                .unwrap();
            assert!(read > 0, "closed early");
            received.extend_from_slice(&buffer[..read]);
        }
        drop(client);
        wait_for_lines(&captured, 1).await;

        // Before the response: the service never answers, the client gives up.
        let mut client = tokio::net::TcpStream::connect(address).await.unwrap();
        client
            .write_all(b"GET /never HTTP/1.1\r\nhost: localhost\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(client);
        wait_for_lines(&captured, 2).await;
    });
    assert_eq!(
        captured.access_lines(),
        vec!["/stream 200 5".to_owned(), "/never - 0".to_owned()]
    );
}

/// Waits (5 s at most) until the access log has `count` lines.
async fn wait_for_lines(captured: &Captured, count: usize) {
    for _ in 0..500 {
        if captured.access_lines().len() >= count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{:?}", captured.access_lines());
}

#[test]
fn bodies_that_cannot_be_followed_are_logged_with_their_length() {
    let (captured, _) = observed(|_| async {
        let gateway = GatewayBuilder::new()
            .stage(Stage::builder("prod").build().unwrap())
            .route(Route::new(Method::GET, "/full"))
            .access_log(AccessLog::format("$context.status $context.responseLength").unwrap())
            .build()
            .unwrap();
        let service = gateway.layer(service_fn(
            |_request: Request<RequestBody<Full<Bytes>>>| async {
                Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(
                    b"1234567",
                ))))
            },
        ));
        let response = service
            .oneshot(Request::get("/full").body(Full::new(Bytes::new())).unwrap())
            .await
            .unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body.len(), 7);
    });
    assert_eq!(captured.access_lines(), vec!["200 7".to_owned()]);
}

#[test]
fn an_inner_service_that_fails_is_logged_and_counted_as_a_server_error() {
    let (captured, snapshotter) = observed(|_| async {
        let gateway = GatewayBuilder::new()
            .stage(Stage::builder("prod").build().unwrap())
            .route(Route::new(Method::GET, "/fails"))
            .access_log(AccessLog::format("$context.resourcePath $context.status").unwrap())
            .build()
            .unwrap();
        let service = gateway.layer(service_fn(
            |_request: Request<RequestBody<Full<Bytes>>>| async {
                Err::<http::Response<Full<Bytes>>, _>(std::io::Error::other("backend down"))
            },
        ));
        let request = Request::get("/fails")
            .body(Full::new(Bytes::new()))
            .unwrap();
        assert!(service.oneshot(request).await.is_err());
    });
    assert_eq!(captured.access_lines(), vec!["/fails -".to_owned()]);
    let metrics = read(&snapshotter);
    assert_eq!(
        counter(&metrics, names::ERRORS_5XX, &[("resource", "/fails")]),
        1
    );
}

#[test]
fn the_configuration_file_names_the_access_log() {
    let (captured, snapshotter) = observed(|_| async {
        let config: GatewayConfig = serde_json::from_value(json!({
            "stages": [{"name": "prod"}],
            "routes": [{"route": "GET /pets"}],
            "access_log": "clf",
            "metrics": false
        }))
        .unwrap();
        let gateway = GatewayBuilder::from_config(config)
            .unwrap()
            .build()
            .unwrap();
        let app = gateway.layer(Router::new().route("/pets", get(|| async { "[]" })));
        send(
            &app,
            request(Method::GET, "/pets").body(Body::empty()).unwrap(),
        )
        .await;
    });
    let lines = captured.access_lines();
    assert_eq!(lines.len(), 1);
    assert!(
        lines[0].contains(r#""GET /pets HTTP/1.1" 200 2 "#),
        "{}",
        lines[0]
    );
    assert!(read(&snapshotter).is_empty(), "metrics off from the file");
    let config: GatewayConfig = serde_json::from_value(json!({
        "stages": [{"name": "prod"}],
        "access_log": "$context.requestId $context.bogus"
    }))
    .unwrap();
    let error = GatewayBuilder::from_config(config).unwrap_err();
    assert_eq!(error.field(), "access_log.format");
    assert!(error.to_string().contains("$context.bogus"), "{error}");
}

/// The integration is timed for its readers, the access log and the metrics; without them the
/// clock is not read, and the context says so (`None`) rather than giving a made-up time.
#[tokio::test]
async fn the_integration_is_timed_when_an_access_log_or_metrics_read_it() {
    async fn integration_seen_by_context(
        builder: GatewayBuilder,
    ) -> Option<(Duration, StatusCode)> {
        let seen = Arc::new(Mutex::new(None));
        let kept = Arc::clone(&seen);
        let service = service_fn(move |request: Request<RequestBody<Body>>| {
            let context = request
                .extensions()
                .get::<tower_gateway::RequestContext>()
                .cloned();
            *kept.lock().unwrap() = context;
            async { Ok::<_, Infallible>(http::Response::new(Body::from("ok"))) }
        });
        let response = builder
            .build()
            .unwrap()
            .layer(service)
            .oneshot(Request::get("/pets").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let context = seen
            .lock()
            .unwrap()
            .take()
            .expect("the service saw the context");
        context
            .integration_latency()
            .zip(context.integration_status())
    }
    let plain = || {
        GatewayBuilder::new()
            .stage(Stage::builder("prod").build().unwrap())
            .route(Route::new(Method::GET, "/pets"))
    };
    assert_eq!(
        integration_seen_by_context(plain().metrics(false)).await,
        None
    );
    let timed = integration_seen_by_context(plain().metrics(true)).await;
    assert_eq!(timed.map(|(_, status)| status), Some(StatusCode::OK));
    let logged = integration_seen_by_context(plain().metrics(false).access_log(AccessLog::clf()));
    assert_eq!(logged.await.map(|(_, status)| status), Some(StatusCode::OK));
}
