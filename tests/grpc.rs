//! A tonic server behind the gateway, called by a real tonic client over loopback.

use std::net::SocketAddr;

use http::Method;
use tonic::Code;
use tonic::transport::{Channel, Server, server::TcpIncoming};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tower_gateway::{GatewayBuilder, GatewayResponse, GatewayResponseType, Route, Stage};

const CHECK: &str = "/grpc.health.v1.Health/Check";

async fn serve(gateway: tower_gateway::Gateway) -> SocketAddr {
    let (_reporter, health) = tonic_health::server::health_reporter();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        Server::builder()
            .layer(gateway)
            .add_service(health)
            .serve_with_incoming(TcpIncoming::from(listener))
            .await
            .unwrap();
    });
    addr
}

async fn client(addr: SocketAddr) -> HealthClient<Channel> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    HealthClient::new(channel)
}

fn stage() -> GatewayBuilder {
    GatewayBuilder::new().stage(Stage::builder("prod").build().unwrap())
}

#[tokio::test]
async fn a_routed_call_reaches_the_service() {
    let gateway = stage()
        .route(Route::new(Method::POST, CHECK))
        .build()
        .unwrap();
    let mut client = client(serve(gateway).await).await;
    let response = client
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(response.get_ref().status, 1, "SERVING");
    assert!(response.metadata().get("x-request-id").is_some());
}

#[tokio::test]
async fn a_rejection_arrives_as_a_grpc_status() {
    let gateway = stage()
        .route(Route::new(Method::POST, "/grpc.health.v1.Health/Watch"))
        .build()
        .unwrap();
    let mut client = client(serve(gateway).await).await;
    let status = client
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(status.message(), "Missing Authentication Token");
    assert!(status.metadata().get("x-request-id").is_some());
}

#[tokio::test]
async fn overridden_statuses_map_to_grpc_codes() {
    let gateway = stage()
        .route(Route::new(Method::POST, "/other"))
        .gateway_response(
            GatewayResponseType::MissingAuthenticationToken,
            GatewayResponse::new()
                .status(429)
                .header("x-hint", "retry later"),
        )
        .build()
        .unwrap();
    let mut client = client(serve(gateway).await).await;
    let status = client
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(status.metadata().get("x-hint").unwrap(), "retry later");
}
