//! API key checks: the lookup (SHA-256 of the presented value + digest index) with 1,000 and
//! 100,000 keys in the store, and the whole `ApiKeyLayer` step.
//!
//! ```text
//! cargo bench --bench api_key
//! ```

mod support;

use std::hint::black_box;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::Request;
use tower::{Layer, Service, service_fn};
use tower_gateway::RequestContext;
use tower_gateway::api_key::{ApiKey, ApiKeyLayer, InMemoryApiKeyStore};

fn key_value(index: usize) -> String {
    format!("bench-key-{index:016}-abcdefghij")
}

fn store_with(keys: usize) -> InMemoryApiKeyStore {
    let store = InMemoryApiKeyStore::new();
    store
        .insert_all(
            (0..keys).map(|i| ApiKey::new(format!("key {i}"), key_value(i)).id(format!("k{i}"))),
        )
        .expect("valid keys");
    store
}

fn bench_lookup(c: &mut Criterion) {
    for keys in [1_000, 100_000] {
        let store = store_with(keys);
        let present = key_value(keys / 2);
        c.bench_function(&format!("api_key/lookup_hit/{keys}_keys"), |b| {
            b.iter(|| black_box(store.find_value(black_box(&present))))
        });
        let absent = key_value(keys + 1);
        c.bench_function(&format!("api_key/lookup_miss/{keys}_keys"), |b| {
            b.iter(|| black_box(store.find_value(black_box(&absent))))
        });
    }
}

fn request(key: &str) -> Request<()> {
    let mut request = Request::builder()
        .uri("/pets")
        .header("x-api-key", key)
        .body(())
        .unwrap();
    RequestContext::get_or_insert(&mut request);
    request
}

fn bench_layer(c: &mut Criterion) {
    let mut bare = service_fn(support::ok_service);
    c.bench_function("api_key/layer_bare", |b| {
        b.iter_batched(
            || request(&key_value(1)),
            |req| black_box(support::now(bare.call(req))),
            BatchSize::SmallInput,
        )
    });
    let store = store_with(100_000);
    let mut checked = ApiKeyLayer::builder(store)
        .build()
        .unwrap()
        .layer(service_fn(support::ok_service));
    c.bench_function("api_key/layer_accept/100000_keys", |b| {
        b.iter_batched(
            || request(&key_value(7)),
            |req| black_box(support::now(checked.call(req))),
            BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, bench_lookup, bench_layer);
criterion_main!(benches);
