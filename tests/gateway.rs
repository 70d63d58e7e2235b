//! The assembled gateway in front of an axum router.

mod support;

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::Path;
use axum::routing::{any, get, post};
use axum::{Json, Router};
use http::{Method, Request, StatusCode};
use serde_json::{Value, json};
use support::{get as get_request, json as json_body, text};
use tower::{Layer, ServiceExt};
use tower_gateway::route::{RouteCacheSettings, UnmatchedRoutes};
use tower_gateway::{
    BasePathMapping, GatewayBuilder, GatewayResponse, GatewayResponseType, GatewayService,
    RequestContext, Route, Stage, StageSelection, StageVariables,
};

async fn describe(context: RequestContext, variables: StageVariables) -> Json<Value> {
    Json(json!({
        "stage": context.stage().map(|s| s.name()),
        "variables": variables,
        "resource": context.resource_path(),
        "path": context.path(),
        "pet": context.path_parameter("petId"),
        "request_id": context.request_id().as_str(),
    }))
}

fn pets_router() -> Router {
    Router::new()
        .route("/pets", get(describe).post(describe))
        .route("/pets/{petId}", get(describe))
        .route("/stage", get(describe))
        .route(
            "/seen-path/{*rest}",
            any(|Path(rest): Path<String>| async move { rest }),
        )
        .fallback(|| async { (StatusCode::NOT_FOUND, "router fallback") })
}

fn stages() -> GatewayBuilder {
    GatewayBuilder::new()
        .stage(
            Stage::builder("prod")
                .variable("greeting", "hello")
                .build()
                .unwrap(),
        )
        .stage(
            Stage::builder("beta")
                .variable("greeting", "hola")
                .build()
                .unwrap(),
        )
        .stage_selection(StageSelection::BasePath)
}

fn pets_gateway() -> GatewayService<Router> {
    let gateway = stages()
        .route(Route::new(Method::GET, "/pets"))
        .route(Route::new(Method::POST, "/pets"))
        .route(Route::new(Method::GET, "/pets/{petId}"))
        .route(Route::new(Method::GET, "/stage"))
        .route(Route::any("/seen-path/{proxy+}"))
        .build()
        .unwrap();
    gateway.layer(pets_router())
}

#[tokio::test]
async fn base_path_selects_the_stage_and_the_router_sees_the_rest() {
    let response = pets_gateway()
        .oneshot(get_request("/prod/pets/7?x=1"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let id_header = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let body = json_body(response).await;
    assert_eq!(body["stage"], "prod");
    assert_eq!(body["variables"], json!({"greeting": "hello"}));
    assert_eq!(body["resource"], "/pets/{petId}");
    assert_eq!(
        body["path"], "/prod/pets/7",
        "the context keeps the original path"
    );
    assert_eq!(body["pet"], "7");
    assert_eq!(body["request_id"], id_header);

    let beta = json_body(
        pets_gateway()
            .oneshot(get_request("/beta/stage"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(beta["stage"], "beta");
    assert_eq!(beta["variables"]["greeting"], "hola");
}

#[tokio::test]
async fn the_query_string_survives_base_path_stripping() {
    let app = pets_gateway();
    let response = app
        .oneshot(get_request("/prod/seen-path/a/b%20c?q=1&r=%2F"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(text(response).await, "a/b c");

    let router = Router::new().route(
        "/q",
        get(|request: Request<Body>| async move { request.uri().to_string() }),
    );
    let gateway = stages()
        .route(Route::new(Method::GET, "/q"))
        .build()
        .unwrap();
    let response = gateway
        .layer(router)
        .oneshot(get_request("/prod/q?a=1&b=%2F"))
        .await
        .unwrap();
    assert_eq!(text(response).await, "/q?a=1&b=%2F");
}

#[tokio::test]
async fn unknown_stage_and_unknown_route_get_missing_authentication_token() {
    for path in [
        "/gamma/pets",
        "/",
        "/prod/admin",
        "/prod/pets/1/extra",
        "/prod",
    ] {
        let response = pets_gateway().oneshot(get_request(path)).await.unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{path}");
        assert_eq!(response.headers()["content-type"], "application/json");
        assert!(response.headers().contains_key("x-request-id"));
        assert_eq!(
            json_body(response).await,
            json!({"message": "Missing Authentication Token"}),
            "{path}"
        );
    }
    let wrong_method = Request::delete("/prod/pets").body(Body::empty()).unwrap();
    let response = pets_gateway().oneshot(wrong_method).await.unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn default_stage_serves_unknown_stages_with_the_path_unchanged() {
    let gateway = stages()
        .default_stage("prod")
        .route(Route::new(Method::GET, "/pets"))
        .build()
        .unwrap();
    let app = gateway.layer(pets_router());
    let body = json_body(app.clone().oneshot(get_request("/pets")).await.unwrap()).await;
    assert_eq!(body["stage"], "prod");
    assert_eq!(body["path"], "/pets");
    let response = app.oneshot(get_request("/gamma/pets")).await.unwrap();
    assert_eq!(
        response.status(),
        StatusCode::FORBIDDEN,
        "the route /gamma/pets is unknown"
    );
}

#[tokio::test]
async fn custom_domains_map_host_and_base_path() {
    let gateway = stages()
        .stage_selection(StageSelection::Domains {
            mappings: vec![
                BasePathMapping::new("api.example.com", "v2", "prod"),
                BasePathMapping::new("api.example.com", "beta/v2", "beta"),
            ],
        })
        .route(Route::new(Method::GET, "/pets"))
        .build()
        .unwrap();
    let app = gateway.layer(pets_router());
    let request = |host: &str, path: &str| {
        Request::get(path)
            .header("host", host)
            .body(Body::empty())
            .unwrap()
    };
    let prod = json_body(
        app.clone()
            .oneshot(request("api.example.com", "/v2/pets"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(prod["stage"], "prod");
    let beta = json_body(
        app.clone()
            .oneshot(request("API.example.com:8443", "/beta/v2/pets"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(beta["stage"], "beta");
    let other = app
        .oneshot(request("evil.example.com", "/v2/pets"))
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn pass_through_lets_unmatched_requests_reach_the_router() {
    let gateway = stages()
        .route(Route::new(Method::GET, "/pets"))
        .unmatched_routes(UnmatchedRoutes::PassThrough)
        .build()
        .unwrap();
    let app = gateway.layer(pets_router());
    let response = app
        .clone()
        .oneshot(get_request("/prod/elsewhere"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(text(response).await, "router fallback");
    let body = json_body(app.oneshot(get_request("/prod/stage")).await.unwrap()).await;
    assert_eq!(body["resource"], Value::Null, "no route recorded");
    assert_eq!(body["stage"], "prod");
}

#[tokio::test]
async fn default_route_catches_the_rest() {
    let gateway = stages()
        .route(Route::new(Method::GET, "/pets"))
        .route(Route::default_route())
        .build()
        .unwrap();
    let app = gateway.layer(pets_router());
    let body = json_body(app.oneshot(get_request("/prod/stage")).await.unwrap()).await;
    assert_eq!(body["resource"], "$default");
}

#[tokio::test]
async fn request_ids_are_fresh_unless_inbound_ids_are_trusted() {
    let request = || {
        Request::get("/prod/pets")
            .header("x-request-id", "client-chosen")
            .body(Body::empty())
            .unwrap()
    };
    let first = pets_gateway().oneshot(request()).await.unwrap();
    let second = pets_gateway().oneshot(request()).await.unwrap();
    let first_id = first.headers()["x-request-id"].clone();
    assert_ne!(first_id, "client-chosen");
    assert_ne!(first_id, second.headers()["x-request-id"]);

    let trusting = stages()
        .route(Route::new(Method::GET, "/pets"))
        .trust_inbound_request_id(true)
        .request_id_header("x-correlation-id")
        .build()
        .unwrap();
    let app = trusting.layer(pets_router());
    let inbound = Request::get("/prod/pets")
        .header("x-correlation-id", "abc-123")
        .body(Body::empty())
        .unwrap();
    let response = app.clone().oneshot(inbound).await.unwrap();
    assert_eq!(response.headers()["x-correlation-id"], "abc-123");
    assert_eq!(json_body(response).await["request_id"], "abc-123");

    let hostile = Request::get("/prod/pets")
        .header("x-correlation-id", "a".repeat(500))
        .body(Body::empty())
        .unwrap();
    let response = app.oneshot(hostile).await.unwrap();
    assert_eq!(
        response.headers()["x-correlation-id"].len(),
        36,
        "replaced by a fresh id"
    );

    let silent = stages()
        .route(Route::new(Method::GET, "/pets"))
        .send_request_id(false)
        .build()
        .unwrap();
    let response = silent
        .layer(pets_router())
        .oneshot(get_request("/prod/pets"))
        .await
        .unwrap();
    assert!(!response.headers().contains_key("x-request-id"));
}

#[tokio::test]
async fn rejections_use_overrides_and_carry_the_request_id() {
    let gateway = stages()
        .route(Route::new(Method::GET, "/pets"))
        .gateway_response(
            GatewayResponseType::MissingAuthenticationToken,
            GatewayResponse::new()
                .status(404)
                .header("x-gateway", "tower")
                .body(r#"{"error":$context.error.messageString,"stage":"$context.stage","greeting":"$stageVariables.greeting","id":"$context.requestId"}"#),
        )
        .build()
        .unwrap();
    let app = gateway.layer(pets_router());
    let response = app.oneshot(get_request("/prod/nope")).await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(response.headers()["x-gateway"], "tower");
    let id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let body = json_body(response).await;
    assert_eq!(
        body,
        json!({"error": "Missing Authentication Token", "stage": "prod", "greeting": "hello", "id": id})
    );
}

#[tokio::test]
async fn grpc_requests_get_grpc_rejections() {
    let request = Request::post("/prod/pkg.Service/Method")
        .header("content-type", "application/grpc+proto")
        .body(Body::empty())
        .unwrap();
    let response = pets_gateway().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/grpc");
    assert_eq!(response.headers()["grpc-status"], "7");
    assert_eq!(
        response.headers()["grpc-message"],
        "Missing Authentication Token"
    );
    assert_eq!(text(response).await, "");
}

#[tokio::test]
async fn hostile_paths_get_gateway_responses() {
    let cases = [
        ("/prod/pets/../admin", StatusCode::BAD_REQUEST),
        ("/prod/pets/%2e%2e/admin", StatusCode::BAD_REQUEST),
        ("/prod/pets/%C3%28", StatusCode::BAD_REQUEST),
        ("/prod/pets/%00", StatusCode::BAD_REQUEST),
        ("/prod/pets/%", StatusCode::OK),
        ("/prod/pets/%zz", StatusCode::OK),
        ("/prod//pets", StatusCode::FORBIDDEN),
    ];
    for (path, status) in cases {
        let response = pets_gateway().oneshot(get_request(path)).await.unwrap();
        assert_eq!(response.status(), status, "{path}");
    }
    let long = format!("/prod/pets/{}", "x".repeat(9000));
    let response = pets_gateway().oneshot(get_request(&long)).await.unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(json_body(response).await["message"], "Request-URI Too Long");

    let mut huge_headers = get_request("/prod/pets");
    for i in 0..200 {
        huge_headers.headers_mut().append(
            "x-filler",
            format!("{i}{}", "y".repeat(1000)).parse().unwrap(),
        );
    }
    let response = pets_gateway().oneshot(huge_headers).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_route_cache_needs_a_stage_with_a_cache() {
    let error = stages()
        .route(Route::new(Method::GET, "/pets").cache(RouteCacheSettings::new().ttl_seconds(60)))
        .build()
        .unwrap_err();
    assert_eq!(error.field(), "routes[GET /pets].cache");
    assert!(
        error.to_string().contains("no stage has a response cache"),
        "{error}"
    );
}

#[tokio::test]
async fn build_errors_name_the_item() {
    let no_stage = GatewayBuilder::new()
        .route(Route::new(Method::GET, "/pets"))
        .build()
        .unwrap_err();
    assert_eq!(no_stage.field(), "stages");
    let no_routes = stages().build().unwrap_err();
    assert_eq!(no_routes.field(), "routes");
    let bad_template = stages()
        .route(Route::new(Method::GET, "/pets/{id"))
        .build()
        .unwrap_err();
    assert_eq!(bad_template.field(), "routes[GET /pets/{id]");
    let bad_response = stages()
        .route(Route::new(Method::GET, "/pets"))
        .gateway_response(
            GatewayResponseType::Throttled,
            GatewayResponse::new().body("$context.nope"),
        )
        .build()
        .unwrap_err();
    assert_eq!(bad_response.field(), "gateway_responses[THROTTLED].body");
    let bad_proxy = stages()
        .route(Route::new(Method::GET, "/pets"))
        .trusted_proxies(["not-an-ip"])
        .build()
        .unwrap_err();
    assert_eq!(bad_proxy.field(), "trusted_proxies[not-an-ip]");
}

#[tokio::test]
async fn a_single_stage_is_fixed_by_default() {
    let gateway = GatewayBuilder::new()
        .stage(Stage::builder("only").build().unwrap())
        .route(Route::new(Method::GET, "/pets"))
        .build()
        .unwrap();
    let body = json_body(
        gateway
            .layer(pets_router())
            .oneshot(get_request("/pets"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(body["stage"], "only");
    assert_eq!(body["path"], "/pets");
}

#[tokio::test]
async fn handlers_without_the_gateway_get_a_clear_500() {
    let response = pets_router().oneshot(get_request("/stage")).await.unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        text(response)
            .await
            .contains("the gateway layer does not wrap this route")
    );

    let optional = Router::new().route(
        "/",
        get(
            |context: Option<RequestContext>, vars: Option<StageVariables>| async move {
                format!("{} {}", context.is_some(), vars.is_some())
            },
        ),
    );
    assert_eq!(
        text(optional.oneshot(get_request("/")).await.unwrap()).await,
        "false false"
    );
}

#[tokio::test]
async fn post_bodies_pass_through_untouched() {
    let router = Router::new().route("/pets", post(|body: String| async move { body }));
    let gateway = stages()
        .route(Route::new(Method::POST, "/pets"))
        .build()
        .unwrap();
    let request = Request::post("/prod/pets")
        .body(Body::from("{\"name\":\"rex\"}"))
        .unwrap();
    let response = gateway.layer(router).oneshot(request).await.unwrap();
    assert_eq!(text(response).await, "{\"name\":\"rex\"}");
}

#[tokio::test]
async fn over_a_real_socket_with_the_client_address() {
    let gateway = stages()
        .route(Route::new(Method::GET, "/ip"))
        .build()
        .unwrap();
    let router = Router::new().route(
        "/ip",
        get(|context: RequestContext| async move {
            format!(
                "{} {:?} {}",
                context
                    .source_ip()
                    .map(|ip| ip.to_string())
                    .unwrap_or_default(),
                context.protocol(),
                context.user_agent().unwrap_or("")
            )
        }),
    );
    let app = gateway.layer(router);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let make_service = axum::ServiceExt::<Request<Body>>::into_make_service_with_connect_info::<
            SocketAddr,
        >(app);
        axum::serve(listener, make_service).await.unwrap();
    });

    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = Request::get("/prod/ip")
        .header("host", "localhost")
        .header("user-agent", "itest/1")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().contains_key("x-request-id"));
    assert_eq!(text(response).await, "127.0.0.1 HTTP/1.1 itest/1");

    let request = Request::get("/prod/../etc/passwd")
        .header("host", "localhost")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(
        response.status(),
        StatusCode::BAD_REQUEST,
        "a `..` segment is refused"
    );
    server.abort();
}

#[tokio::test]
async fn router_layer_works_with_a_fixed_stage() {
    // `Router::layer` runs after axum's routing, so it suits gateways that do not rewrite the
    // path: a fixed stage.
    let gateway = GatewayBuilder::new()
        .stage(
            Stage::builder("prod")
                .variable("greeting", "hello")
                .build()
                .unwrap(),
        )
        .route(Route::new(Method::GET, "/pets/{petId}"))
        .build()
        .unwrap();
    let app = pets_router().layer(gateway);
    let body = json_body(app.clone().oneshot(get_request("/pets/5")).await.unwrap()).await;
    assert_eq!(body["stage"], "prod");
    assert_eq!(body["pet"], "5");
    let denied = app.oneshot(get_request("/pets")).await.unwrap();
    assert_eq!(denied.status(), StatusCode::FORBIDDEN);
}
