//! A tonic gRPC server behind the gateway, and a tonic client that calls it.
//!
//! ```text
//! cargo run --example tonic_grpc --features tonic
//! ```
//!
//! The server is tonic-health's ready-made health service (no protobuf compiler needed). The
//! gateway opens one route, `POST /grpc.health.v1.Health/Check`; a call to `Watch`, which has
//! no route, is rejected by the gateway, and the client receives the rejection as a gRPC
//! status (`PERMISSION_DENIED`, "Missing Authentication Token") rather than an HTTP error.

use http::Method;
use tonic::transport::{Channel, Server, server::TcpIncoming};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tower_gateway::{GatewayBuilder, Route, Stage};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let gateway = GatewayBuilder::new()
        .stage(Stage::builder("prod").build()?)
        .route(Route::new(Method::POST, "/grpc.health.v1.Health/Check"))
        .build()?;
    let (_reporter, health) = tonic_health::server::health_reporter();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(
        Server::builder()
            .layer(gateway)
            .add_service(health)
            .serve_with_incoming(TcpIncoming::from(listener)),
    );
    println!("gRPC health service behind tower-gateway on {addr}");

    let channel = Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let mut client = HealthClient::new(channel);

    let check = client
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await?;
    println!(
        "Check (routed):     status {:?}, x-request-id {:?}",
        check.get_ref().status(),
        check.metadata().get("x-request-id")
    );

    match client
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
    {
        Ok(_) => println!("Watch (not routed): unexpectedly accepted"),
        Err(status) => println!(
            "Watch (not routed): gRPC status {:?}, message {:?}",
            status.code(),
            status.message()
        ),
    }
    Ok(())
}
