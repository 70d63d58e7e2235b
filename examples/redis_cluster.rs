//! Two gateway instances, on two ports, sharing one quota and one response cache on Redis.
//!
//! ```text
//! redis-server --port 6379 &                      # any Redis 7; REDIS_URL overrides the URL
//! cargo run --example redis_cluster --features redis
//! ```
//!
//! Both instances serve `GET /pets` behind the same gateway configuration: stage `prod`, and
//! a usage plan `demo` whose key may make 5 requests a day and 5 a second (bursts of 10). The
//! instances listen on `127.0.0.1:3001` and `127.0.0.1:3002` (`PORT` moves both: `PORT` and
//! `PORT + 1`) and each has a connection of its own, as two processes would; the quota and the
//! bucket live on Redis, so the 5 requests a day are shared: three on one port and two on the
//! other use them up, and the sixth gets `429 {"message":"Limit Exceeded"}` on either. The
//! example prints the curl commands that show it, and resets the demo key's quota at start
//! (through the usage API) so that it can be run again.
//!
//! `GET /pets/{petId}` needs no key and is cached for 60 s in the stage's cache, which is on
//! Redis too: the first request on one port is a miss (`x-cache: miss`) answered by that
//! instance, and the same request on the other port is a hit with the first instance's
//! answer. The example flushes the cache at start.
//!
//! If Redis stops, each instance fails open for the timeout's sake (the throttle and quota
//! halved, as it is one of two instances) and counts the decisions it made without Redis;
//! `GET /without-redis` on either port says how many.

use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::routing::get;
use http::Method;
use tower::Layer;
use tower_gateway::api_key::{ApiKey, InMemoryApiKeyStore};
use tower_gateway::cache::{CacheSettings, CacheStore};
use tower_gateway::route::ThrottleSettings;
use tower_gateway::store::{Consistency, OutagePolicy, RedisBackend};
use tower_gateway::usage_plan::{Quota, QuotaPeriod, UsagePlan};
use tower_gateway::{ConfigError, Gateway, GatewayBuilder, Route, Stage};

const DEMO_KEY: &str = "redis-demo-key-0123456789abcdef";

fn gateway(redis: RedisBackend) -> Result<Gateway, ConfigError> {
    let keys = InMemoryApiKeyStore::new();
    keys.insert(ApiKey::new("demo", DEMO_KEY).id("demo"))?;
    GatewayBuilder::new()
        .stage(
            Stage::builder("prod")
                .cache(
                    CacheSettings::new()
                        .ttl_seconds(60)
                        .store(CacheStore::Redis),
                )
                .build()?,
        )
        .route(Route::new(Method::GET, "/pets").api_key_required(true))
        .route(Route::new(Method::GET, "/pets/{petId}"))
        .api_key_store(keys)
        .usage_plan(
            UsagePlan::builder("demo")
                .stage("prod")
                .throttle(ThrottleSettings {
                    rate: 5.0,
                    burst: 10,
                })
                .quota(Quota::new(5, QuotaPeriod::Day))
                .key("demo")
                .build()?,
        )
        .redis(redis)
        .build()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let first_port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|port| port.parse().ok())
        .unwrap_or(3001);
    let mut servers = Vec::new();
    for (instance, port) in [first_port, first_port + 1].into_iter().enumerate() {
        let redis = RedisBackend::builder(url.as_str())
            .consistency(Consistency::Exact)
            .timeout(Duration::from_millis(50))
            .outage(OutagePolicy::FailOpen { instances: 2 })
            .build()?;
        let gateway = gateway(redis.clone())?;
        if instance == 0 {
            let usage = gateway.usage_plans().ok_or("the gateway has usage plans")?;
            if let Err(error) = usage.reset_async("demo", "demo").await {
                eprintln!("could not reset the demo quota ({error}): is Redis at {url}?");
            }
            let caches = gateway.response_caches().ok_or("the stage has a cache")?;
            if let Err(error) = caches.flush_stage_async("prod").await {
                eprintln!("could not flush the response cache ({error})");
            }
        }
        let pets = gateway.layer(
            Router::new()
                .route(
                    "/pets",
                    get(move || async move { format!("pets from the instance on port {port}\n") }),
                )
                .route(
                    "/pets/{petId}",
                    get(move |Path(id): Path<String>| async move {
                        format!("pet {id} from the instance on port {port}\n")
                    }),
                )
                .with_state(()),
        );
        let app = Router::new()
            .route(
                "/without-redis",
                get(|State(redis): State<RedisBackend>| async move {
                    format!("{}\n", redis.decisions_without_redis())
                }),
            )
            .with_state(redis)
            .fallback_service(pets);
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        servers.push(tokio::spawn(
            async move { axum::serve(listener, app).await },
        ));
    }
    let (a, b) = (first_port, first_port + 1);
    println!("two gateway instances on ports {a} and {b}, sharing the quota on {url}\n");
    println!("# 5 requests a day for the demo key, shared by both instances:");
    for port in [a, a, a, b, b] {
        println!("curl -i -H 'x-api-key: {DEMO_KEY}' http://127.0.0.1:{port}/pets");
    }
    println!("\n# the sixth, on either port: 429 {{\"message\":\"Limit Exceeded\"}}");
    println!("curl -i -H 'x-api-key: {DEMO_KEY}' http://127.0.0.1:{b}/pets");
    println!("curl -i -H 'x-api-key: {DEMO_KEY}' http://127.0.0.1:{a}/pets");
    println!(
        "\n# the response cache on Redis: a miss on {a}, then its answer from the cache on {b}"
    );
    println!("curl -i http://127.0.0.1:{a}/pets/1");
    println!("curl -i http://127.0.0.1:{b}/pets/1");
    println!("\n# decisions made without Redis (stop Redis to see them count):");
    println!("curl http://127.0.0.1:{a}/without-redis");
    for server in servers {
        server.await??;
    }
    Ok(())
}
