//! Each layer on its own, with `tower::ServiceBuilder` and plain `service_fn` services.

mod support;

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::task::{Context, Poll};

use axum::body::Body;
use http::{Method, Request, Response, StatusCode};
use support::{get, json, text};
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
use tower_gateway::context::RequestContextLayer;
use tower_gateway::{
    Gateway, GatewayResponses, RequestContext, Route, RouteLayer, Stage, StageLayer, StageSelection,
};

/// A plain service that reports what the gateway recorded, the way a hyper or tonic service
/// reads it: from the request's extensions.
async fn report(request: Request<Body>) -> Result<Response<String>, Infallible> {
    let context = request.extensions().get::<RequestContext>().cloned();
    let body = serde_json::json!({
        "uri": request.uri().to_string(),
        "stage": context.as_ref().and_then(|c| c.stage()).map(|s| s.name().to_owned()),
        "greeting": context.as_ref().and_then(|c| c.stage_variables().get("greeting").map(str::to_owned)),
        "resource": context.as_ref().and_then(|c| c.resource_path().map(str::to_owned)),
        "id": context.as_ref().map(|c| c.request_id().to_string()),
    });
    Ok(Response::new(body.to_string()))
}

#[tokio::test]
async fn stage_layer_alone() {
    let layer = StageLayer::builder()
        .stage(
            Stage::builder("prod")
                .variable("greeting", "hello")
                .build()
                .unwrap(),
        )
        .selection(StageSelection::BasePath)
        .build()
        .unwrap();
    let service = ServiceBuilder::new()
        .layer(layer)
        .service(service_fn(report));
    let body = json(
        service
            .clone()
            .oneshot(get("/prod/pets?a=b"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(body["uri"], "/pets?a=b");
    assert_eq!(body["stage"], "prod");
    assert_eq!(body["greeting"], "hello");
    assert!(
        body["id"].is_string(),
        "a context is created when none exists"
    );

    let rejected = service.oneshot(get("/dev/pets")).await.unwrap();
    assert_eq!(rejected.status(), StatusCode::FORBIDDEN);
    assert!(
        !rejected.headers().contains_key("x-request-id"),
        "only the context layer sends it"
    );
}

#[tokio::test]
async fn route_layer_alone_and_under_a_context_layer() {
    let routes = RouteLayer::builder()
        .route(Route::new(Method::GET, "/pets/{petId}"))
        .build()
        .unwrap();
    let service = ServiceBuilder::new()
        .layer(RequestContextLayer::builder().build().unwrap())
        .layer(routes)
        .service(service_fn(report));
    let response = service.clone().oneshot(get("/pets/1")).await.unwrap();
    let header = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let body = json(response).await;
    assert_eq!(body["resource"], "/pets/{petId}");
    assert_eq!(
        body["id"], header,
        "the route layer reuses the outer context"
    );

    let denied = service.oneshot(get("/cats")).await.unwrap();
    assert_eq!(denied.status(), StatusCode::FORBIDDEN);
    assert!(denied.headers().contains_key("x-request-id"));
}

#[tokio::test]
async fn layers_share_custom_responses() {
    let responses = GatewayResponses::builder()
        .response(
            tower_gateway::GatewayResponseType::MissingAuthenticationToken,
            tower_gateway::GatewayResponse::new()
                .status(404)
                .body("gone"),
        )
        .build()
        .unwrap();
    let routes = RouteLayer::builder()
        .route(Route::new(Method::GET, "/pets"))
        .responses(responses)
        .build()
        .unwrap();
    let service = ServiceBuilder::new()
        .layer(routes)
        .service(service_fn(report));
    let response = service.oneshot(get("/cats")).await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(text(response).await, "gone");
}

/// A service that is not ready until polled `pending_polls` times.
#[derive(Clone)]
struct SlowToStart {
    pending_polls: usize,
}

impl<B> Service<Request<B>> for SlowToStart {
    type Response = Response<String>;
    type Error = Infallible;
    type Future = Ready<Result<Response<String>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        if self.pending_polls == 0 {
            Poll::Ready(Ok(()))
        } else {
            self.pending_polls -= 1;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }

    fn call(&mut self, _request: Request<B>) -> Self::Future {
        ready(Ok(Response::new("ready".to_owned())))
    }
}

#[tokio::test]
async fn poll_ready_is_forwarded() {
    let gateway = Gateway::builder()
        .stage(Stage::builder("prod").build().unwrap())
        .route(Route::new(Method::GET, "/"))
        .build()
        .unwrap();
    let mut service = ServiceBuilder::new()
        .layer(gateway)
        .service(SlowToStart { pending_polls: 2 });
    let waker = std::task::Waker::noop();
    let mut cx = Context::from_waker(waker);
    let mut poll = || Service::<Request<Body>>::poll_ready(&mut service, &mut cx);
    assert!(poll().is_pending());
    assert!(poll().is_pending());
    assert!(poll().is_ready());
    let response = service.call(get("/")).await.unwrap();
    assert_eq!(text(response).await, "ready");
}
