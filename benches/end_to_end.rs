//! End to end on loopback: a bare axum server against the same router behind the gateway.
//!
//! ```text
//! cargo bench --bench end_to_end                  # 3 rounds of 3 s per server
//! cargo bench --bench end_to_end -- --seconds 5 --rounds 5 --connections 32
//! cargo bench --bench end_to_end -- --interleaved             # 60 pairs of 0.25 s, servers kept up
//! cargo bench --bench end_to_end -- --gateway fixed-stage     # one stage, no base path
//! cargo bench --bench end_to_end -- --gateway context-only    # RequestContextLayer alone
//! cargo bench --bench end_to_end -- --gateway keyed           # + API key and usage plan
//! cargo bench --bench end_to_end -- --gateway cached          # cache hits vs the router
//! cargo bench --bench end_to_end -- --gateway observed        # access log + metrics on vs off
//! cargo bench --bench end_to_end -- --gateway floor           # the yardstick: a minimal layer
//! cargo bench --bench end_to_end -- --gateway keyed-floor     # the yardstick of `keyed`
//! cargo bench --bench end_to_end -- --no-request-id-header
//! cargo bench --bench end_to_end -- --only gateway --rounds 1    # one server, for profilers
//! ```
//!
//! For a figure that the machine's noise cannot move, count instructions: run each server
//! alone under callgrind and divide the server thread's instructions by the requests served
//! (printed with `--only`):
//!
//! ```text
//! valgrind --tool=callgrind --separate-threads=yes target/release/deps/end_to_end-* \
//!     --only bare --rounds 1 --seconds 2 --connections 8
//! ```
//!
//! `--gateway` picks what stands in front of the router: `full` (the default: base-path stage
//! selection over two stages, four routes, the request context), `fixed-stage` (one stage, so
//! no path rewriting, and the same routes), `context-only`, or `keyed` (the quickstart's
//! stack: `full` plus an API key on the route and a usage plan with a throttle and a daily
//! quota too large to reach; the load sends the key to both servers); together they show what
//! each step costs. Metrics are off in these modes (their budgets are for these layers);
//! `observed` measures the metrics and the access log. A router wrapped in a layer gets
//! `with_state(())`, as `axum::serve` gives a bare one.
//!
//! `floor` puts in front of the router not the gateway but the least code that does `full`'s
//! required steps (`benches/support/floor.rs`: a random request id and its header, the stage
//! from the first segment and the path without it, one route match, one shared context in the
//! extensions), hand-written with no configuration. It shows what those steps cost on the
//! machine at hand, so the gateway's figure can be read against it. `keyed-floor` is the same
//! for `keyed`: the floor plus the key and usage plan steps at their least (a SHA-256 digest
//! looked up in a map, a governor throttle, a daily count, the three `x-ratelimit-*` headers),
//! with the same key sent to both servers.
//!
//! `cached` compares two gateways instead of gateway and bare: the `full` gateway calling the
//! router for `GET /prod/catalog` (a handler that serializes a list of 20 pets, about 1.3 KB
//! of JSON), against the same gateway with a response cache on the stage, which answers
//! every request but the first from the cache. The ratio is cached / uncached: below 1 means a
//! hit costs less than calling the service.
//!
//! `observed` also compares two gateways: the `keyed` stack with its access log (JSON preset,
//! formatted by a `tracing-subscriber` fmt layer into a sink) and its metrics (recorded by
//! `metrics-exporter-prometheus`'s recorder) on, against the same stack with both off. The
//! ratio is on / off (budget ≥ 0.90).
//!
//! The server runs on one thread (a current-thread tokio runtime); the load generator runs
//! on another thread with keep-alive HTTP/1.1 connections, each sending one request at a
//! time. Rounds alternate which server goes first, so drift of the machine shows in both.
//! By default each round starts each server afresh and measures it for `--seconds`.
//! `--interleaved` starts both servers once, keeps their connections, and alternates the
//! load between them in short segments (`--seconds`, 0.25 by default, over `--rounds` pairs,
//! 60 by default): the machine's slow and fast spells, which last seconds to minutes on a
//! shared machine, then fall on both servers alike, and the median of many pairs is steadier
//! than that of a few long rounds.
//! Reported per round: requests per second, and the server thread's CPU time per request
//! (from `/proc/self/task/<tid>/schedstat`). The summary gives the medians of the ratios
//! gateway / bare. On a 2-core machine the load generator can be the bottleneck, which
//! flattens the throughput ratio; the CPU ratio measures the server alone.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use axum::ServiceExt;
use axum::extract::Request;
use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tower::Layer;
use tower_gateway::cache::CacheSettings;
use tower_gateway::context::RequestContextLayer;
use tower_gateway::observe::{ACCESS_LOG_TARGET, AccessLog};
use tower_gateway::{Gateway, GatewayBuilder, Stage, StageSelection};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    Bare,
    Gateway,
}

/// What stands in front of the router in the gateway variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layers {
    Full,
    FixedStage,
    ContextOnly,
    Keyed,
    Cached,
    Observed,
    Floor,
    KeyedFloor,
}

struct Options {
    seconds: f64,
    rounds: usize,
    connections: usize,
    layers: Layers,
    request_id_header: bool,
    only: Option<Variant>,
    interleaved: bool,
}

impl Options {
    fn path(&self, variant: Variant) -> &'static str {
        match (variant, self.layers) {
            (_, Layers::Cached) => "/prod/catalog",
            (
                Variant::Gateway,
                Layers::Full | Layers::Keyed | Layers::Floor | Layers::KeyedFloor,
            )
            | (_, Layers::Observed) => "/prod/pets/42",
            _ => "/pets/42",
        }
    }

    /// Whether the gateway checks an API key and a usage plan (the quickstart's stack, whose
    /// budget is 0.90).
    fn keyed(&self) -> bool {
        matches!(
            self.layers,
            Layers::Keyed | Layers::KeyedFloor | Layers::Observed
        )
    }

    /// The API key both servers get in the keyed modes.
    fn api_key(&self) -> Option<&'static str> {
        // Both servers get the same requests: in keyed mode bare axum receives (and ignores)
        // the key too, so that parsing the header is not counted as the gateway's.
        self.keyed().then_some(support::BENCH_KEY)
    }
}

impl Options {
    fn from_args() -> Self {
        let mut options = Self {
            seconds: 3.0,
            rounds: 3,
            connections: 16,
            layers: Layers::Full,
            request_id_header: true,
            only: None,
            interleaved: false,
        };
        let args: Vec<String> = std::env::args().collect();
        let value = |name: &str| {
            args.iter()
                .position(|a| a == name)
                .and_then(|i| args.get(i + 1))
                .map(String::as_str)
        };
        options.interleaved = args.iter().any(|a| a == "--interleaved");
        if options.interleaved {
            options.seconds = 0.25;
            options.rounds = 60;
        }
        if let Some(seconds) = value("--seconds").and_then(|v| v.parse().ok()) {
            options.seconds = f64::clamp(seconds, 0.05, 60.0);
        }
        if let Some(rounds) = value("--rounds").and_then(|v| v.parse().ok()) {
            options.rounds = usize::clamp(rounds, 1, 400);
        }
        if let Some(connections) = value("--connections").and_then(|v| v.parse().ok()) {
            options.connections = usize::clamp(connections, 1, 256);
        }
        options.layers = match value("--gateway") {
            Some("fixed-stage") => Layers::FixedStage,
            Some("context-only") => Layers::ContextOnly,
            Some("keyed") => Layers::Keyed,
            Some("cached") => Layers::Cached,
            Some("observed") => Layers::Observed,
            Some("floor") => Layers::Floor,
            Some("keyed-floor") => Layers::KeyedFloor,
            _ => Layers::Full,
        };
        options.request_id_header = !args.iter().any(|a| a == "--no-request-id-header");
        options.only = match value("--only") {
            Some("bare") => Some(Variant::Bare),
            Some("gateway") => Some(Variant::Gateway),
            _ => None,
        };
        options
    }
}

/// The gateway of `layers`; `cache` gives stage `prod` a response cache, `observed` turns the
/// access log and metrics on.
fn gateway(layers: Layers, request_id_header: bool, cache: bool, observed: bool) -> Gateway {
    let mut prod = Stage::builder("prod").variable("greeting", "hello");
    if cache {
        prod = prod.cache(CacheSettings::new());
    }
    let mut builder = GatewayBuilder::new().stage(prod.build().unwrap());
    if matches!(
        layers,
        Layers::Full | Layers::Keyed | Layers::Cached | Layers::Observed
    ) {
        let beta = Stage::builder("beta")
            .variable("greeting", "hola")
            .build()
            .unwrap();
        builder = builder
            .stage(beta)
            .stage_selection(StageSelection::BasePath);
    }
    let keyed = matches!(layers, Layers::Keyed | Layers::Observed);
    // Metrics and the access log are on only in observed mode's measured gateway: the budgets
    // of the other modes are for their layer sets (stage, route and context; plus API key and
    // usage plan), and observed mode measures what observing costs on top.
    builder = builder.metrics(observed);
    if observed {
        builder = builder.access_log(AccessLog::json());
    }
    if keyed {
        builder = support::with_bench_plan(builder);
    }
    support::with_bench_routes(builder.send_request_id(request_id_header), keyed)
        .build()
        .unwrap()
}

struct Server {
    addr: SocketAddr,
    thread_id: String,
    shutdown: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

fn start(variant: Variant, layers: Layers, request_id_header: bool) -> Server {
    let (ready_tx, ready_rx) = mpsc::channel();
    let (shutdown, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
    let name = format!("server-{variant:?}").to_lowercase();
    let thread = std::thread::Builder::new().name(name).spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let thread_id = std::fs::read_link("/proc/thread-self")
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_default();
            ready_tx
                .send((listener.local_addr().unwrap(), thread_id))
                .unwrap();
            let stop = async move {
                let _ = shutdown_rx.await;
            };
            match variant {
                // Cached mode's baseline is the gateway without its cache, observed mode's the
                // gateway without its access log and metrics.
                Variant::Bare if matches!(layers, Layers::Cached | Layers::Observed) => {
                    let app =
                        gateway(layers, request_id_header, false, false).layer(support::router());
                    axum::serve(listener, ServiceExt::<Request>::into_make_service(app))
                        .with_graceful_shutdown(stop)
                        .await
                        .unwrap()
                }
                Variant::Bare => axum::serve(listener, support::router())
                    .with_graceful_shutdown(stop)
                    .await
                    .unwrap(),
                Variant::Gateway if layers == Layers::ContextOnly => {
                    let context = RequestContextLayer::builder()
                        .send_request_id(request_id_header)
                        .build()
                        .unwrap();
                    let app = context.layer(support::router());
                    axum::serve(listener, ServiceExt::<Request>::into_make_service(app))
                        .with_graceful_shutdown(stop)
                        .await
                        .unwrap()
                }
                Variant::Gateway if matches!(layers, Layers::Floor | Layers::KeyedFloor) => {
                    let floor = if layers == Layers::KeyedFloor {
                        support::floor::Floor::keyed(support::BENCH_KEY, &support::BENCH_PLAN)
                    } else {
                        support::floor::Floor::new()
                    };
                    let app = floor.layer(support::router());
                    axum::serve(listener, ServiceExt::<Request>::into_make_service(app))
                        .with_graceful_shutdown(stop)
                        .await
                        .unwrap()
                }
                Variant::Gateway => {
                    let cache = layers == Layers::Cached;
                    let observed = layers == Layers::Observed;
                    let app = gateway(layers, request_id_header, cache, observed)
                        .layer(support::router());
                    axum::serve(listener, ServiceExt::<Request>::into_make_service(app))
                        .with_graceful_shutdown(stop)
                        .await
                        .unwrap()
                }
            }
        });
    });
    let thread = thread.expect("spawn the server thread");
    let (addr, thread_id) = ready_rx.recv().unwrap();
    Server {
        addr,
        thread_id,
        shutdown,
        thread,
    }
}

/// CPU time the thread has used, from the scheduler's statistics.
fn thread_cpu(thread_id: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{thread_id}/schedstat")).ok()?;
    let nanos: u64 = stat.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(nanos))
}

/// Keep-alive HTTP/1.1 connections to one server.
type Connections = Vec<hyper::client::conn::http1::SendRequest<Empty<Bytes>>>;

async fn connect(addr: SocketAddr, connections: usize) -> Connections {
    let mut senders = Vec::with_capacity(connections);
    for _ in 0..connections {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(connection);
        senders.push(sender);
    }
    senders
}

/// Sends requests on each of `connections`, one at a time on each, until `duration` is over;
/// returns the connections and how many requests completed with 200.
async fn load(
    connections: Connections,
    path: &'static str,
    api_key: Option<&'static str>,
    duration: Duration,
) -> (Connections, u64) {
    let deadline = Instant::now() + duration;
    let tasks: Vec<_> = connections
        .into_iter()
        .map(|mut sender| {
            tokio::spawn(async move {
                let mut done = 0u64;
                while Instant::now() < deadline {
                    let mut request = http::Request::get(path)
                        .header("host", "bench.local")
                        .body(Empty::<Bytes>::new())
                        .unwrap();
                    if let Some(key) = api_key {
                        request
                            .headers_mut()
                            .insert("x-api-key", http::HeaderValue::from_static(key));
                    }
                    let response = sender.send_request(request).await.unwrap();
                    assert_eq!(response.status(), StatusCode::OK, "{path}");
                    response.into_body().collect().await.unwrap();
                    done += 1;
                }
                (sender, done)
            })
        })
        .collect();
    let mut connections = Vec::with_capacity(tasks.len());
    let mut total = 0;
    for task in tasks {
        let (sender, done) = task.await.unwrap();
        connections.push(sender);
        total += done;
    }
    (connections, total)
}

struct Measurement {
    requests_per_second: f64,
    cpu_per_request: Option<Duration>,
}

/// A started server with its connections, warmed up: connections, allocator and caches are
/// exercised outside the measurement.
struct Loaded {
    variant: Variant,
    server: Server,
    connections: Option<Connections>,
    served: u64,
}

impl Loaded {
    fn start(variant: Variant, options: &Options, client: &tokio::runtime::Runtime) -> Self {
        let server = start(variant, options.layers, options.request_id_header);
        let mut loaded = Self {
            variant,
            connections: Some(client.block_on(connect(server.addr, options.connections))),
            server,
            served: 0,
        };
        loaded.run(options, client, Duration::from_millis(300));
        loaded
    }

    fn run(
        &mut self,
        options: &Options,
        client: &tokio::runtime::Runtime,
        duration: Duration,
    ) -> Measurement {
        let path = options.path(self.variant);
        let connections = self.connections.take().expect("connections are put back");
        let cpu_before = thread_cpu(&self.server.thread_id);
        let started = Instant::now();
        let (connections, completed) =
            client.block_on(load(connections, path, options.api_key(), duration));
        let elapsed = started.elapsed();
        let cpu_after = thread_cpu(&self.server.thread_id);
        self.connections = Some(connections);
        self.served += completed;
        let cpu_per_request = match (cpu_before, cpu_after) {
            (Some(before), Some(after)) if completed > 0 => {
                Some((after - before) / u32::try_from(completed).unwrap_or(u32::MAX))
            }
            _ => None,
        };
        Measurement {
            requests_per_second: completed as f64 / elapsed.as_secs_f64(),
            cpu_per_request,
        }
    }

    /// Stops the server: its graceful shutdown closes the idle keep-alive connections, and the
    /// client's ends go with `self`.
    fn stop(self, options: &Options) {
        let _ = self.server.shutdown.send(());
        self.server.thread.join().unwrap();
        if options.only.is_some() {
            println!(
                "{:?} served {} requests in all (warm-up included)",
                self.variant, self.served
            );
        }
    }
}

/// One server started, warmed up, measured for `--seconds` and stopped.
fn measure(variant: Variant, options: &Options, client: &tokio::runtime::Runtime) -> Measurement {
    let mut loaded = Loaded::start(variant, options, client);
    let measurement = loaded.run(options, client, Duration::from_secs_f64(options.seconds));
    loaded.stop(options);
    measurement
}

/// Installs what a service would have in production: a subscriber that formats the access
/// log (into a sink here) and a Prometheus recorder.
fn observe_into_sinks() {
    use tracing_subscriber::prelude::*;
    let access_log = tracing_subscriber::fmt::layer()
        .with_writer(std::io::sink)
        .without_time()
        .with_target(false)
        .with_level(false)
        .with_ansi(false)
        // The access log's lines come escaped (see `AccessLog`).
        .with_ansi_sanitization(false)
        .with_filter(
            tracing_subscriber::filter::Targets::new()
                .with_target(ACCESS_LOG_TARGET, tracing::Level::INFO),
        );
    tracing_subscriber::registry().with(access_log).init();
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .expect("the only recorder");
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (values[middle - 1] + values[middle]) / 2.0
    } else {
        values[middle]
    }
}

fn main() -> Result<(), Infallible> {
    let options = Options::from_args();
    if options.layers == Layers::Observed {
        observe_into_sinks();
    }
    let client = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "end-to-end: {} round(s) of {:.2} s per server, {} keep-alive connections, GET {}; \
         gateway: {:?}, request-id header {}",
        options.rounds,
        options.seconds,
        options.connections,
        options.path(Variant::Gateway),
        options.layers,
        if options.request_id_header {
            "on"
        } else {
            "off"
        },
    );
    if let Some(variant) = options.only {
        for round in 0..options.rounds {
            let measurement = measure(variant, &options, &client);
            println!(
                "round {}: {variant:?} {:.0} req/s",
                round + 1,
                measurement.requests_per_second
            );
        }
        return Ok(());
    }
    let mut throughput_ratios = Vec::new();
    let mut cpu_ratios = Vec::new();
    // Interleaved, both servers stay up and the load alternates between them segment by
    // segment; otherwise each round starts each server afresh.
    let mut both = options.interleaved.then(|| {
        (
            Loaded::start(Variant::Bare, &options, &client),
            Loaded::start(Variant::Gateway, &options, &client),
        )
    });
    for round in 0..options.rounds {
        let order = if round.is_multiple_of(2) {
            [Variant::Bare, Variant::Gateway]
        } else {
            [Variant::Gateway, Variant::Bare]
        };
        let mut bare = None;
        let mut gated = None;
        for variant in order {
            let measurement = match (&mut both, variant) {
                (Some((loaded, _)), Variant::Bare) | (Some((_, loaded)), Variant::Gateway) => {
                    loaded.run(&options, &client, Duration::from_secs_f64(options.seconds))
                }
                (None, _) => measure(variant, &options, &client),
            };
            match variant {
                Variant::Bare => bare = Some(measurement),
                Variant::Gateway => gated = Some(measurement),
            }
        }
        let (bare, gated) = (bare.unwrap(), gated.unwrap());
        let format_cpu = |m: &Measurement| {
            m.cpu_per_request.map_or("n/a".to_owned(), |d| {
                format!("{:.2} µs", d.as_secs_f64() * 1e6)
            })
        };
        println!(
            "round {}: bare {:>9.0} req/s, server CPU {}/req | gateway {:>9.0} req/s, server CPU {}/req",
            round + 1,
            bare.requests_per_second,
            format_cpu(&bare),
            gated.requests_per_second,
            format_cpu(&gated),
        );
        throughput_ratios.push(gated.requests_per_second / bare.requests_per_second);
        if let (Some(b), Some(g)) = (bare.cpu_per_request, gated.cpu_per_request) {
            cpu_ratios.push(g.as_secs_f64() / b.as_secs_f64());
        }
    }
    if let Some((bare, gated)) = both {
        bare.stop(&options);
        gated.stop(&options);
    }
    let throughput = median(throughput_ratios);
    if options.layers == Layers::Cached {
        println!(
            "(in cached mode, \"bare\" is the gateway without a cache and \"gateway\" the same \
             gateway answering from its cache)"
        );
        println!("throughput cached / uncached (median): {throughput:.3}");
        if !cpu_ratios.is_empty() {
            let cpu = median(cpu_ratios);
            println!(
                "server CPU per request cached / uncached (median): {cpu:.3}   (a hit costs \
                 less than calling the service when below 1)"
            );
        }
        return Ok(());
    }
    if options.layers == Layers::Observed {
        println!(
            "(in observed mode, \"bare\" is the keyed gateway with its access log and metrics \
             off and \"gateway\" the same gateway with both on)"
        );
    }
    let budget = if options.keyed() { 0.90 } else { 0.95 };
    println!("throughput gateway / bare (median): {throughput:.3}   (budget ≥ {budget:.2})");
    if !cpu_ratios.is_empty() {
        let cpu = median(cpu_ratios);
        println!(
            "server CPU per request gateway / bare (median): {cpu:.3}   \
             (throughput the server alone could reach: {:.3} of bare)",
            1.0 / cpu
        );
    }
    Ok(())
}
