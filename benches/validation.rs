//! Request validation: what validating a small (60-byte) and a 4 KB JSON body costs, parse
//! included, alone and inside the gateway, against the same request on an unvalidated route.
//!
//! ```text
//! cargo bench --bench validation
//! ```
//!
//! Services that differ only in validation are called in process with an inner service that
//! answers at once. They take turns in chunks of 5,000 requests for 15 rounds, so that the
//! machine's drift falls on all of them alike; the figures are medians over the rounds.

mod support;

use std::hint::black_box;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Full;
use serde_json::{Value, json};
use support::{median, ok_service, time_requests};
use tower::{Layer, service_fn};
use tower_gateway::validate::{RequestValidatorLayer, Validator};
use tower_gateway::{GatewayBuilder, Route, Stage};

const ROUNDS: usize = 15;
const CHUNK: usize = 5_000;

fn schema() -> Value {
    json!({
        "$schema": "http://json-schema.org/draft-04/schema#",
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": { "type": "string", "maxLength": 64 },
            "type": { "type": "string", "enum": ["dog", "cat", "fish"] },
            "price": { "type": "number", "minimum": 0 },
            "tags": { "type": "array", "items": { "type": "string", "maxLength": 64 } }
        }
    })
}

fn small_body() -> Bytes {
    Bytes::from_static(br#"{"name":"rex","type":"dog","price":12.5,"tags":["good"]}"#)
}

fn large_body() -> Bytes {
    let tags: Vec<String> = (0..310).map(|i| format!("tag-{i:06}")).collect();
    let body = json!({"name": "rex", "type": "dog", "price": 12.5, "tags": tags}).to_string();
    assert!((4_000..4_200).contains(&body.len()), "{}", body.len());
    Bytes::from(body)
}

fn requests(body: &Bytes) -> Vec<Request<Full<Bytes>>> {
    vec![
        Request::post("/pets")
            .header("content-type", "application/json")
            .body(Full::new(body.clone()))
            .unwrap(),
    ]
}

fn gateway(validated: bool) -> GatewayBuilder {
    let mut route = Route::new(Method::POST, "/pets");
    if validated {
        route = route
            .validator("body")
            .request_model("application/json", "Pet");
    }
    GatewayBuilder::new()
        .stage(Stage::builder("prod").build().unwrap())
        .request_validator("body", Validator::body_only())
        .model("Pet", schema())
        .route(route)
}

fn main() {
    let bodies = [("60-byte", small_body()), ("4 KB", large_body())];
    let request_sets: Vec<_> = bodies.iter().map(|(_, body)| requests(body)).collect();

    let mut bare = service_fn(ok_service);
    let mut layer = RequestValidatorLayer::builder()
        .model("application/json", schema())
        .build()
        .unwrap()
        .layer(service_fn(ok_service));
    let mut unvalidated = gateway(false)
        .build()
        .unwrap()
        .layer(service_fn(ok_service));
    let mut validated = gateway(true).build().unwrap().layer(service_fn(ok_service));

    // Per body: bare, layer, gateway unvalidated, gateway validated.
    let mut timings: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); 4]; bodies.len()];
    for round in 0..=ROUNDS {
        for (index, requests) in request_sets.iter().enumerate() {
            let chunk = [
                time_requests(&mut bare, requests, CHUNK),
                time_requests(&mut layer, requests, CHUNK),
                time_requests(&mut unvalidated, requests, CHUNK),
                time_requests(&mut validated, requests, CHUNK),
            ];
            // The first round warms up.
            if round > 0 {
                for (timing, nanos) in timings[index].iter_mut().zip(chunk) {
                    timing.push(black_box(nanos));
                }
            }
        }
    }
    for ((label, _), timing) in bodies.iter().zip(timings) {
        let [bare, layer, unvalidated, validated]: [f64; 4] = timing
            .into_iter()
            .map(median)
            .collect::<Vec<_>>()
            .try_into()
            .unwrap();
        println!(
            "{label} body, RequestValidatorLayer alone: +{:.0} ns over the bare service ({bare:.0} ns)",
            layer - bare
        );
        println!(
            "{label} body, in the gateway: {validated:.0} ns validated vs {unvalidated:.0} ns \
             unvalidated: +{:.0} ns, {:.2}x",
            validated - unvalidated,
            validated / unvalidated
        );
    }
}
