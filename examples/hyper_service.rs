//! A plain hyper service behind the gateway, without axum.
//!
//! ```text
//! cargo run --example hyper_service          # listens on 127.0.0.1:3001 (PORT overrides)
//! ```
//!
//! The service reads what the gateway learned (stage, variables, route, path parameters)
//! from the request's extensions. Its request body is the gateway's `RequestBody<Incoming>`:
//! the client's body, streamed under the payload limit. The server puts the client's address in the extensions as
//! a `ClientAddr`, since hyper has no `ConnectInfo` of its own.

use std::convert::Infallible;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tower::{Layer, ServiceBuilder, service_fn};
use tower_gateway::body::RequestBody;
use tower_gateway::{ClientAddr, GatewayBuilder, RequestContext, Route, Stage, StageSelection};

async fn handle(
    request: Request<RequestBody<Incoming>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let context = request.extensions().get::<RequestContext>();
    let body = serde_json::json!({
        "path": request.uri().path(),
        "stage": context.and_then(|c| c.stage()).map(|s| s.name()),
        "backend": context
            .map(|c| c.stage_variables().substitute("http://${stageVariables.backend}/orders"))
            .and_then(Result::ok),
        "resourcePath": context.and_then(|c| c.resource_path()),
        "orderId": context.and_then(|c| c.path_parameter("orderId")),
        "sourceIp": context.and_then(|c| c.source_ip()).map(|ip| ip.to_string()),
    });
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = match std::env::var("PORT") {
        Ok(port) => port
            .parse()
            .map_err(|_| format!("PORT={port} is not a port number"))?,
        Err(_) => 3001,
    };
    let gateway = GatewayBuilder::new()
        .stage(
            Stage::builder("v1")
                .variable("backend", "orders-v1.internal:8080")
                .build()?,
        )
        .stage(
            Stage::builder("v2")
                .variable("backend", "orders-v2.internal:8080")
                .build()?,
        )
        .stage_selection(StageSelection::BasePath)
        .route(Route::new(Method::GET, "/orders/{orderId}"))
        .build()?;
    let service = gateway.layer(service_fn(handle));

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let base = format!("http://{}", listener.local_addr()?);
    println!("hyper service behind tower-gateway on {base}\n");
    println!("curl -i {base}/v1/orders/42     # 200, backend from stage v1");
    println!("curl -i {base}/v2/orders/42     # 200, backend from stage v2");
    println!("curl -i {base}/v3/orders/42     # 403, unknown stage");
    println!("curl -i {base}/v1/customers     # 403, unknown route");

    loop {
        let (stream, peer) = listener.accept().await?;
        // Each connection gets the gateway-wrapped service plus the client's address.
        let per_connection = ServiceBuilder::new()
            .map_request(move |mut request: Request<Incoming>| {
                request.extensions_mut().insert(ClientAddr(peer));
                request
            })
            .service(service.clone());
        tokio::spawn(async move {
            let served = auto::Builder::new(TokioExecutor::new())
                .serve_connection(
                    TokioIo::new(stream),
                    TowerToHyperService::new(per_connection),
                )
                .await;
            if let Err(error) = served {
                eprintln!("connection from {peer}: {error}");
            }
        });
    }
}
