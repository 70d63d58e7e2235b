//! Canary releases and deployments in process: what the canary pick adds to a gateway request,
//! and the request rate while deployments are swapped every millisecond.
//!
//! ```text
//! cargo bench --bench canary
//! ```
//!
//! - The pick: gateways that differ only in their stage's canary take turns in chunks of
//!   5,000 `GET /pets/1` requests for 15 rounds (medians over the rounds), against an inner
//!   service that answers at once. `random` picks 10 % at random with a variable override;
//!   `sticky` hashes an `x-user` header. The pick's cost is a case minus `no canary`.
//! - Swapping: one thread sends requests for 300 ms while nothing changes, then 300 ms while
//!   another thread deploys a new configuration (built from scratch, as a reload does) every
//!   millisecond; 7 rounds, medians. The ratio is requests/s while swapping over quiet.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::{Method, Request};
use support::{Body, median, now, ok_service, time_requests};
use tower::{Layer, Service, service_fn};
use tower_gateway::canary::{CanarySettings, Sticky};
use tower_gateway::{GatewayBuilder, Route, Stage};

const ROUNDS: usize = 15;
const CHUNK: usize = 5_000;

fn configuration(canary: Option<CanarySettings>, greeting: &str) -> GatewayBuilder {
    let mut stage = Stage::builder("prod")
        .variable("greeting", greeting)
        .variable("backend", "v1");
    if let Some(canary) = canary {
        stage = stage.canary(canary);
    }
    GatewayBuilder::new()
        .stage(stage.build().expect("valid stage"))
        .route(Route::new(Method::GET, "/pets"))
        .route(Route::new(Method::GET, "/pets/{id}"))
        .send_request_id(false)
}

fn requests(user_header: bool) -> Vec<Request<Body>> {
    (0..64)
        .map(|user| {
            let mut request = Request::get("/pets/1");
            if user_header {
                request = request.header("x-user", format!("user-{user}"));
            }
            request.body(Body::default()).unwrap()
        })
        .collect()
}

fn pick() {
    let quiet = |canary| {
        configuration(canary, "hello")
            .build()
            .expect("valid gateway")
            .layer(service_fn(ok_service))
    };
    let random = CanarySettings::new(10.0)
        .variable_override("greeting", "hola")
        .release_header(None);
    let sticky = random.clone().sticky(Sticky::Header("x-user".into()));
    let mut cases = [
        ("no canary", quiet(None), requests(true)),
        ("random 10 %", quiet(Some(random)), requests(true)),
        ("sticky header", quiet(Some(sticky)), requests(true)),
    ];
    let mut timings = vec![Vec::new(); cases.len()];
    for _ in 0..ROUNDS {
        for (index, (_, service, requests)) in cases.iter_mut().enumerate() {
            timings[index].push(time_requests(service, requests, CHUNK));
        }
    }
    let medians: Vec<f64> = timings.into_iter().map(median).collect();
    println!("canary pick, ns per gateway request (median of {ROUNDS} rounds):");
    for ((name, _, _), ns) in cases.iter().zip(&medians) {
        println!("  {name:<14} {ns:>8.0} ns");
    }
    for (index, (name, _, _)) in cases.iter().enumerate().skip(1) {
        println!(
            "  pick ({name}): {:+.0} ns (budget 50 ns)",
            medians[index] - medians[0]
        );
    }
}

fn swapping() {
    let canary = CanarySettings::new(10.0).variable_override("greeting", "hola");
    let gateway = configuration(Some(canary.clone()), "hello")
        .build()
        .expect("valid gateway");
    let deployments = gateway.deployments();
    let mut service = gateway.layer(service_fn(ok_service));
    let requests = requests(false);
    let window = Duration::from_millis(300);
    let rate = |service: &mut _| {
        let started = Instant::now();
        let mut served = 0usize;
        while started.elapsed() < window {
            time_requests(service, &requests, 1_000);
            served += 1_000;
        }
        served as f64 / started.elapsed().as_secs_f64()
    };
    let (mut quiet, mut busy) = (Vec::new(), Vec::new());
    let swaps = Arc::new(AtomicUsize::new(0));
    for _ in 0..7 {
        quiet.push(rate(&mut service));
        let stop = Arc::new(AtomicBool::new(false));
        let swapper = {
            let (stop, swaps, deployments) =
                (Arc::clone(&stop), Arc::clone(&swaps), deployments.clone());
            let canary = canary.clone();
            std::thread::spawn(move || {
                let mut hi = false;
                while !stop.load(Ordering::Relaxed) {
                    hi = !hi;
                    let greeting = if hi { "hi" } else { "hello" };
                    deployments
                        .deploy(configuration(Some(canary.clone()), greeting))
                        .expect("valid deployment");
                    swaps.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(1));
                }
            })
        };
        busy.push(rate(&mut service));
        stop.store(true, Ordering::Relaxed);
        swapper.join().expect("the swapper finished");
    }
    let (quiet, busy) = (median(quiet), median(busy));
    // Every request was answered by some deployment; one more to show the service still works.
    let _ = now(service.call(Request::get("/pets/1").body(Body::default()).unwrap()));
    println!("requests/s with deployments swapped every millisecond (median of 7 rounds):");
    println!("  quiet    {quiet:>12.0}");
    println!(
        "  swapping {busy:>12.0}  ({} swaps in all)",
        swaps.load(Ordering::Relaxed)
    );
    println!("  ratio swapping / quiet: {:.3}", busy / quiet);
}

fn main() {
    pick();
    swapping();
}
