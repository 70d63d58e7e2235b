//! The gateway's spans sent to an OpenTelemetry collector over OTLP (X-Ray's role in AWS).
//!
//! ```text
//! docker run -p 4317:4317 otel/opentelemetry-collector:latest     # or Jaeger, Tempo, …
//! cargo run --example opentelemetry          # listens on 127.0.0.1:3001 (PORT overrides)
//! ```
//!
//! The exporter sends to `OTEL_EXPORTER_OTLP_ENDPOINT` (default `http://localhost:4317`,
//! gRPC). Each request becomes a trace: an `http` span made here from the caller's W3C
//! `traceparent` (so the trace continues the caller's), the gateway's `request` span inside
//! it, and the phase spans `authorizer`, `validation`, `cache` and `integration` inside that.
//! The gateway hands `traceparent` to the service unchanged; the access log (CLF) goes to
//! stdout.

use std::error::Error;

use axum::Router;
use axum::extract::Request;
use axum::routing::get;
use http::Method;
use opentelemetry::global;
use opentelemetry::propagation::Extractor;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tower::Layer;
use tower_gateway::observe::{ACCESS_LOG_TARGET, AccessLog, TRACE_TARGET};
use tower_gateway::{GatewayBuilder, Route, Stage, StageSelection};
use tower_http::trace::TraceLayer;
use tracing::Level;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::prelude::*;

/// The example's own spans.
const TARGET: &str = "opentelemetry_example";

/// Reads the caller's trace context from the request's headers.
struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error + Send + Sync>> {
    let port: u16 = match std::env::var("PORT") {
        Ok(port) => port
            .parse()
            .map_err(|_| format!("PORT={port} is not a port number"))?,
        Err(_) => 3001,
    };

    // OTLP over gRPC; the batch exporter sends from a thread of its own.
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name("pets-api").build())
        .build();
    global::set_text_map_propagator(TraceContextPropagator::new());
    let traces = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("tower-gateway"))
        .with_filter(
            Targets::new()
                .with_target(TRACE_TARGET, Level::DEBUG)
                .with_target(TARGET, Level::INFO),
        );
    let access_log = tracing_subscriber::fmt::layer()
        .without_time()
        .with_target(false)
        .with_level(false)
        .with_ansi(false)
        // The access log's lines come escaped (see `AccessLog`).
        .with_ansi_sanitization(false)
        .with_filter(Targets::new().with_target(ACCESS_LOG_TARGET, Level::INFO));
    tracing_subscriber::registry()
        .with(traces)
        .with(access_log)
        .init();

    let gateway = GatewayBuilder::new()
        .stage(Stage::builder("prod").build()?)
        .stage_selection(StageSelection::BasePath)
        .route(Route::new(Method::GET, "/pets"))
        .access_log(AccessLog::clf())
        .build()?;
    let pets = Router::new().route(
        "/pets",
        get(|request: Request| async move {
            // The caller's trace context, as the gateway passed it on.
            let traceparent = request
                .headers()
                .get("traceparent")
                .and_then(|value| value.to_str().ok())
                .unwrap_or("none")
                .to_owned();
            format!("[] (traceparent: {traceparent})\n")
        }),
    );
    // The `http` span continues the caller's trace; the gateway's spans nest inside it.
    let app = Router::new()
        .fallback_service(gateway.layer(pets.with_state(())))
        .layer(
            TraceLayer::new_for_http().make_span_with(|request: &Request| {
                let span = tracing::info_span!(
                    target: TARGET,
                    "http",
                    method = %request.method(),
                    uri = %request.uri(),
                );
                let caller = global::get_text_map_propagator(|propagator| {
                    propagator.extract(&Headers(request.headers()))
                });
                if let Err(error) = span.set_parent(caller) {
                    eprintln!("the caller's trace context was not applied: {error}");
                }
                span
            }),
        );

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let base = format!("http://{}", listener.local_addr()?);
    println!("tower-gateway with OpenTelemetry on {base}; spans go to the OTLP collector");
    println!("# a trace of its own, then one that continues the caller's trace");
    println!("curl -i {base}/prod/pets");
    println!(
        "curl -i {base}/prod/pets -H 'traceparent: \
         00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'"
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    // Sends the spans still buffered.
    provider.shutdown()?;
    Ok(())
}
