//! Request validation: required parameters, JSON Schema bodies, media types, the payload limit,
//! the standalone layer, the declarative config and OpenAPI documents.

mod support;

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::routing::post;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body::Frame;
use http_body_util::BodyExt;
use proptest::prelude::*;
use serde_json::{Value, json};
use support::{json as json_body, text};
use tower::{Layer, ServiceExt};
use tower_gateway::authorizer::custom::{AuthorizerRequest, AuthorizerResponse, CustomAuthorizer};
use tower_gateway::validate::{
    OpenApi, RequestParameter, RequestValidatorLayer, SchemaDraft, Validator,
};
use tower_gateway::{
    GatewayBuilder, GatewayConfig, GatewayResponse, GatewayResponseType, GatewayService, Route,
    Stage,
};

fn pet_schema() -> Value {
    json!({
        "$schema": "http://json-schema.org/draft-04/schema#",
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": { "type": "string" },
            "type": { "type": "string", "enum": ["dog", "cat", "fish"] },
            "price": { "type": "number", "minimum": 0 }
        }
    })
}

/// Echoes the body it received, byte for byte.
fn echo_router() -> Router {
    Router::new()
        .route("/pets", post(|body: Bytes| async move { body }))
        .route("/pets/{petId}", post(|body: Bytes| async move { body }))
        .route("/raw", post(|body: Bytes| async move { body }))
}

/// `POST path`, its JSON body validated against `model` by the `all` validator.
fn json_validated(path: &str, model: &str) -> Route {
    Route::new(Method::POST, path)
        .validator("all")
        .request_model("application/json", model)
}

fn gateway() -> GatewayBuilder {
    GatewayBuilder::new()
        .stage(Stage::builder("prod").build().unwrap())
        .request_validator("all", Validator::all())
        .request_validator("params", Validator::parameters_only())
        .model("Pet", pet_schema())
}

/// `service` behind `POST /pets`, whose body of any media type is validated against `Pet`.
fn any_body_validated<S>(service: S) -> GatewayService<S> {
    gateway()
        .route(
            Route::new(Method::POST, "/pets")
                .validator("all")
                .request_model("$default", "Pet"),
        )
        .build()
        .unwrap()
        .layer(service)
}

fn pets_app() -> GatewayService<Router> {
    gateway()
        .route(
            Route::new(Method::POST, "/pets")
                .validator("all")
                .required_parameter(RequestParameter::query("page"))
                .required_parameter(RequestParameter::header("x-tenant"))
                .request_model("application/json", "Pet"),
        )
        .build()
        .unwrap()
        .layer(echo_router())
}

fn post_json(uri: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post(uri)
        .header("content-type", "application/json")
        .header("x-tenant", "acme")
        .body(body.into())
        .unwrap()
}

async fn send<B>(app: &GatewayService<Router>, request: Request<B>) -> (StatusCode, String)
where
    GatewayService<Router>: tower::Service<
            Request<B>,
            Response = http::Response<Body>,
            Error = std::convert::Infallible,
        >,
{
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    (status, text(response).await)
}

#[tokio::test]
async fn every_missing_parameter_is_listed_before_the_body_is_looked_at() {
    let app = pets_app();
    let request = Request::post("/pets")
        .header("content-type", "application/json")
        .body(Body::from("not json"))
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        json_body(response).await,
        json!({"message": "Missing required request parameters: [page, x-tenant]"})
    );
    // Blank values count as missing.
    let blank = Request::post("/pets?page=%20&other=1")
        .header("content-type", "application/json")
        .header("x-tenant", "  ")
        .body(Body::from(r#"{"name":"rex"}"#))
        .unwrap();
    let (status, body) = send(&app, blank).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("[page, x-tenant]"), "{body}");
    // Percent-encoded names are decoded; a later non-blank value is enough.
    let (status, _) = send(&app, post_json("/pets?pa%67e=&page=2", r#"{"name":"rex"}"#)).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn path_parameters_are_checked_on_the_matched_route() {
    let app = gateway()
        .route(
            Route::new(Method::POST, "/pets/{petId}")
                .validator("params")
                .required_parameter(RequestParameter::path("petId")),
        )
        .build()
        .unwrap()
        .layer(echo_router());
    let (status, body) = send(&app, post_json("/pets/7", "anything")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "anything"));
    let (status, body) = send(&app, post_json("/pets/%20", "x")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("[petId]"), "{body}");
}

#[tokio::test]
async fn a_valid_body_reaches_the_service_as_it_was_sent() {
    let app = pets_app();
    let sent = "{ \"name\" : \"rex\",\n \"price\": 1.50, \"type\":\"dog\", \"extra\": [1, 2] }  ";
    let (status, received) = send(&app, post_json("/pets?page=1", sent)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(received, sent);
}

#[tokio::test]
async fn an_invalid_body_is_400_without_the_detail_unless_asked() {
    let app = pets_app();
    for bad in [
        r#"{"type":"dog"}"#,
        r#"{"name":"rex","price":-5}"#,
        r#"{"name":"rex","type":"dragon"}"#,
        r#"["name"]"#,
    ] {
        let response = app
            .clone()
            .oneshot(post_json("/pets?page=1", bad))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(
            json_body(response).await,
            json!({"message": "Invalid request body"}),
            "{bad}"
        );
    }
    let exposed = gateway()
        .expose_validation_errors(true)
        .route(json_validated("/pets", "Pet"))
        .build()
        .unwrap()
        .layer(echo_router());
    let response = exposed
        .oneshot(post_json("/pets", r#"{"name":987654321,"price":-123456}"#))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body = json_body(response).await;
    assert_eq!(body["message"], "Invalid request body");
    let detail = body["validationErrorString"].as_str().unwrap();
    assert!(
        detail.contains("/name") && detail.contains("/price"),
        "{detail}"
    );
    assert!(
        !detail.contains("987654321") && !detail.contains("123456"),
        "values from the body are not echoed: {detail}"
    );
}

#[tokio::test]
async fn the_detail_is_a_template_variable() {
    let app = gateway()
        .gateway_response(
            GatewayResponseType::BadRequestBody,
            GatewayResponse::new()
                .status(422)
                .body(r#"{"error":"$context.error.validationErrorString"}"#),
        )
        .expose_validation_errors(true)
        .route(json_validated("/pets", "Pet"))
        .build()
        .unwrap()
        .layer(echo_router());
    let response = app
        .oneshot(post_json("/pets", r#"{"name":"a","name":"b"}"#))
        .await
        .unwrap();
    assert_eq!(response.status(), 422, "the user's override wins");
    let body = json_body(response).await;
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("a key appears twice"),
        "{body}"
    );
}

fn media_app(with_default: bool) -> GatewayService<Router> {
    let mut route = json_validated("/pets", "Pet");
    if with_default {
        route = route.request_model("$default", "Pet");
    }
    gateway().route(route).build().unwrap().layer(echo_router())
}

fn with_content_types(types: &[&str], body: &'static str) -> Request<Body> {
    let mut builder = Request::post("/pets");
    for content_type in types {
        builder = builder.header("content-type", *content_type);
    }
    builder.body(Body::from(body)).unwrap()
}

#[tokio::test]
async fn media_types_have_documented_outcomes() {
    const PET: &str = r#"{"name":"rex"}"#;
    let strict = media_app(false);
    let fallback = media_app(true);
    let cases: [(&[&str], &str, StatusCode, StatusCode); 9] = [
        (&["application/json"], PET, StatusCode::OK, StatusCode::OK),
        (
            &["Application/JSON; charset=\"UTF-8\""],
            PET,
            StatusCode::OK,
            StatusCode::OK,
        ),
        // No Content-Type: application/json, as API Gateway assumes.
        (&[], PET, StatusCode::OK, StatusCode::OK),
        (
            &[],
            r#"{}"#,
            StatusCode::BAD_REQUEST,
            StatusCode::BAD_REQUEST,
        ),
        // Another media type: the $default model, else 415; never unvalidated.
        (
            &["text/plain"],
            PET,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            StatusCode::OK,
        ),
        (
            &["text/plain"],
            "hello",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            StatusCode::BAD_REQUEST,
        ),
        (
            &["application/problem+json"],
            r#"{"title":"x"}"#,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            StatusCode::BAD_REQUEST,
        ),
        // JSON is UTF-8; two Content-Types are ambiguous: 415 even with $default.
        (
            &["application/json; charset=utf-16"],
            PET,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            &["application/json", "text/plain"],
            PET,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
    ];
    for (types, body, without_default, with_default) in cases {
        let (status, _) = send(&strict, with_content_types(types, body)).await;
        assert_eq!(status, without_default, "{types:?} {body}");
        let (status, _) = send(&fallback, with_content_types(types, body)).await;
        assert_eq!(status, with_default, "{types:?} {body} with $default");
    }
    let response = strict
        .oneshot(with_content_types(&["text/plain"], PET))
        .await
        .unwrap();
    assert_eq!(
        json_body(response).await,
        json!({"message": "Unsupported Media Type"})
    );
}

#[tokio::test]
async fn hostile_json_gets_400_and_never_reaches_the_service() {
    let app = media_app(false);
    let deep_array = "[".repeat(100_000);
    let deep_object = "{\"a\":".repeat(100_000);
    let cases = [
        deep_array,
        deep_object,
        // The last value is valid; a service whose parser keeps the first would see the other.
        r#"{"name":{"evil":true},"name":"rex"}"#.to_owned(),
        r#"{"name":"rex","price":1E400}"#.to_owned(),
        r#"{"name":"\ud800"}"#.to_owned(),
        r#"{"name":"rex"} {"name":"again"}"#.to_owned(),
        String::new(),
        "   ".to_owned(),
    ];
    for body in cases {
        let shown: String = body.chars().take(40).collect();
        let (status, text) = send(&app, post_json("/pets", body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{shown}");
        assert_eq!(text, r#"{"message":"Invalid request body"}"#, "{shown}");
    }
    let invalid_utf8 = Request::post("/pets")
        .header("content-type", "application/json")
        .body(Body::from(&b"{\"name\":\"\xff\"}"[..]))
        .unwrap();
    let (status, _) = send(&app, invalid_utf8).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn big_numbers_are_validated_as_parsed_and_forwarded_as_sent() {
    let app = media_app(false);
    for sent in [
        r#"{"name":"rex","price":9007199254740993}"#,
        r#"{"name":"rex","price":123456789012345678901234567890}"#,
        r#"{"name":"rex","price":1e308}"#,
    ] {
        let (status, received) = send(&app, post_json("/pets", sent)).await;
        assert_eq!((status, received.as_str()), (StatusCode::OK, sent));
    }
    let (status, _) = send(
        &app,
        post_json(
            "/pets",
            r#"{"name":"rex","price":-123456789012345678901234567890}"#,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "a huge negative is < 0");
}

/// A body of `chunks` frames of `chunk` bytes, then an optional last frame and trailer,
/// counting what was pulled from it; it sends no Content-Length.
struct Chunked {
    chunk: Bytes,
    chunks: usize,
    last: Option<Bytes>,
    pulled: Arc<AtomicUsize>,
    trailers: Option<HeaderMap>,
}

impl Chunked {
    fn new(chunk: &'static [u8], chunks: usize) -> (Self, Arc<AtomicUsize>) {
        let pulled = Arc::new(AtomicUsize::new(0));
        (
            Self {
                chunk: Bytes::from_static(chunk),
                chunks,
                last: None,
                pulled: Arc::clone(&pulled),
                trailers: None,
            },
            pulled,
        )
    }
}

impl http_body::Body for Chunked {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let data = if self.chunks > 0 {
            self.chunks -= 1;
            Some(self.chunk.clone())
        } else {
            self.last.take()
        };
        let Some(data) = data else {
            return Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))));
        };
        self.pulled.fetch_add(data.len(), Ordering::SeqCst);
        Poll::Ready(Some(Ok(Frame::data(data))))
    }
}

fn limited_app() -> GatewayService<Router> {
    gateway()
        .max_body_bytes(1_000)
        .route(
            Route::new(Method::POST, "/pets")
                .validator("all")
                .request_model("$default", "Pet"),
        )
        .route(Route::new(Method::POST, "/raw"))
        .route(
            Route::new(Method::POST, "/pets/{petId}")
                .validator("all")
                .request_model("$default", "Pet")
                .max_body_bytes(10),
        )
        .build()
        .unwrap()
        .layer(echo_router())
}

#[tokio::test]
async fn bodies_over_the_limit_get_413_without_being_buffered() {
    let app = limited_app();
    // A Content-Length over the limit: refused before a byte is read, on every route.
    for uri in ["/pets", "/raw"] {
        let (body, pulled) = Chunked::new(&[b' '; 100], 50);
        let request = Request::post(uri)
            .header("content-length", "5000")
            .body(body)
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE, "{uri}");
        assert_eq!(
            json_body(response).await,
            json!({"message": "Request Too Long"})
        );
        assert_eq!(pulled.load(Ordering::SeqCst), 0, "{uri}: nothing read");
    }
    // Chunked (no Content-Length), and a Content-Length that lies: counted as it arrives, and
    // reading stops at the first frame past the limit.
    for declared in [None, Some("900")] {
        let (body, pulled) = Chunked::new(&[b' '; 100], 10_000);
        let mut request = Request::post("/pets").body(body).unwrap();
        if let Some(length) = declared {
            request
                .headers_mut()
                .insert("content-length", length.parse().unwrap());
        }
        let response = app.clone().oneshot(request).await.unwrap();
        assert_eq!(
            response.status(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "{declared:?}"
        );
        assert_eq!(pulled.load(Ordering::SeqCst), 1_100, "{declared:?}");
    }
    // The route's own limit wins over the gateway's.
    let (status, _) = send(&app, post_json("/pets/1", r#"{"name":"rex!!"}"#)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let (status, _) = send(&app, post_json("/pets", r#"{"name":"rex!!"}"#)).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn unvalidated_bodies_stream_and_fail_past_the_limit() {
    let app = limited_app();
    let (body, pulled) = Chunked::new(&[b'x'; 100], 5);
    let response = app
        .clone()
        .oneshot(Request::post("/raw").body(body).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(text(response).await.len(), 500);
    assert_eq!(pulled.load(Ordering::SeqCst), 500);
    // Past the limit the body fails with http-body-util's LengthLimitError, which axum's
    // extractors answer with 413.
    let (body, pulled) = Chunked::new(&[b'x'; 100], 10_000);
    let response = app
        .oneshot(Request::post("/raw").body(body).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(pulled.load(Ordering::SeqCst) <= 1_100);
}

#[tokio::test]
async fn validated_bodies_keep_their_trailers() {
    let seen = Router::new().route(
        "/pets",
        post(|request: Request<Body>| async move {
            let collected = request.into_body().collect().await.unwrap();
            let trailer = collected
                .trailers()
                .and_then(|t| t.get("x-checksum"))
                .map(|v| v.to_str().unwrap().to_owned());
            format!(
                "{}|{}",
                trailer.unwrap_or_default(),
                collected.to_bytes().len()
            )
        }),
    );
    let app = any_body_validated(seen);
    let mut trailers = HeaderMap::new();
    trailers.insert("x-checksum", "abc".parse().unwrap());
    let (mut body, _) = Chunked::new(b"{\"name\":\"rex\"}", 1);
    body.trailers = Some(trailers);
    let response = app
        .oneshot(Request::post("/pets").body(body).unwrap())
        .await
        .unwrap();
    assert_eq!(text(response).await, "abc|14");
}

/// A body sent as the given frames, without a Content-Length.
struct Frames(std::collections::VecDeque<&'static str>);

impl http_body::Body for Frames {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        Poll::Ready(
            self.0
                .pop_front()
                .map(|part| Ok(Frame::data(Bytes::from_static(part.as_bytes())))),
        )
    }
}

#[tokio::test]
async fn a_body_of_many_frames_is_validated_whole() {
    let app = media_app(false);
    let (body, _) = Chunked::new(b"[1, 2, 3]  ", 3);
    let (status, _) = send(&app, Request::post("/pets").body(body).unwrap()).await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "three arrays in a row are not one document"
    );
    let split = Frames(["{\"na", "me\":", " \"rex\"", "", "}"].into());
    let (status, received) = send(&app, Request::post("/pets").body(split).unwrap()).await;
    assert_eq!(
        (status, received.as_str()),
        (StatusCode::OK, "{\"name\": \"rex\"}")
    );
}

#[tokio::test(start_paused = true)]
async fn an_authorizer_that_waits_then_a_body_that_is_read() {
    let authorizer = CustomAuthorizer::token(|request: AuthorizerRequest| async move {
        tokio::time::sleep(Duration::from_millis(5)).await;
        Ok(AuthorizerResponse::simple(request.token() == Some("yes")))
    })
    .result_ttl(Duration::ZERO)
    .build()
    .unwrap();
    let app = gateway()
        .custom_authorizer("slow", authorizer)
        .route(
            Route::new(Method::POST, "/pets")
                .authorizer("slow")
                .validator("all")
                .request_model("application/json", "Pet"),
        )
        .build()
        .unwrap()
        .layer(echo_router());
    let with = |token: &str, body: &'static str| {
        let mut request = post_json("/pets", body);
        request
            .headers_mut()
            .insert("authorization", token.parse().unwrap());
        request
    };
    let (status, body) = send(&app, with("yes", r#"{"name":"rex"}"#)).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, r#"{"name":"rex"}"#)
    );
    let (status, _) = send(&app, with("yes", r#"{"name":1}"#)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = send(&app, with("no", r#"{"name":1}"#)).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "the authorizer answers before the body is judged"
    );
}

#[tokio::test]
async fn the_layer_alone_on_an_axum_route() {
    let validator = RequestValidatorLayer::builder()
        .required_parameter(RequestParameter::header("x-tenant"))
        .model("application/json", pet_schema())
        .max_body_bytes(64)
        .build()
        .unwrap();
    let app = Router::new().route(
        "/pets",
        post(|body: Bytes| async move { body }).layer(validator),
    );
    let call = |request: Request<Body>| {
        let app = app.clone();
        async move {
            let response = app.oneshot(request).await.unwrap();
            (response.status(), text(response).await)
        }
    };
    assert_eq!(
        call(post_json("/pets", r#"{"name":"rex"}"#)).await,
        (StatusCode::OK, r#"{"name":"rex"}"#.to_owned())
    );
    assert_eq!(
        call(post_json("/pets", r#"{"price":1}"#)).await.0,
        StatusCode::BAD_REQUEST
    );
    let no_tenant = Request::post("/pets")
        .header("content-type", "application/json")
        .body(Body::from(r#"{"name":"rex"}"#))
        .unwrap();
    let (status, body) = call(no_tenant).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("[x-tenant]"));
    let big = format!(r#"{{"name":"{}"}}"#, "x".repeat(100));
    assert_eq!(
        call(post_json("/pets", big)).await.0,
        StatusCode::PAYLOAD_TOO_LARGE
    );
}

#[tokio::test]
async fn the_config_file_attaches_validators_and_models() {
    let config = GatewayConfig::from_json(
        r#"{
        "stages": [{ "name": "prod" }],
        "request_validators": { "all": { "validate_parameters": true, "validate_body": true } },
        "models": { "Pet": { "type": "object", "required": ["name"],
                             "properties": { "price": { "type": "number", "minimum": 0,
                                                        "exclusiveMinimum": true } } } },
        "max_body_bytes": 4096,
        "expose_validation_errors": true,
        "routes": [{
            "route": "POST /pets",
            "validator": "all",
            "required_parameters": ["method.request.header.x-tenant"],
            "request_models": { "application/json": "Pet" }
        }]
    }"#,
    )
    .unwrap();
    let app = GatewayBuilder::from_config(config)
        .unwrap()
        .build()
        .unwrap()
        .layer(echo_router());
    let (status, _) = send(&app, post_json("/pets", r#"{"name":"rex","price":1}"#)).await;
    assert_eq!(status, StatusCode::OK);
    // Draft 4's boolean exclusiveMinimum: 0 is out.
    let response = app
        .clone()
        .oneshot(post_json("/pets", r#"{"name":"rex","price":0}"#))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(json_body(response).await["validationErrorString"].is_string());
    let (status, _) = send(&app, post_json("/pets", "x".repeat(5000))).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

    let unknown = GatewayConfig::from_json(
        r#"{ "stages": [{ "name": "prod" }],
             "routes": [{ "route": "POST /pets", "required_parameters": ["method.request.body.x"] }] }"#,
    )
    .unwrap_err();
    assert!(
        unknown.rule().contains("method.request.querystring"),
        "{unknown}"
    );
}

#[tokio::test]
async fn schemas_are_read_in_their_draft() {
    let modern = json!({
        "type": "object",
        "properties": { "price": { "type": "number", "exclusiveMinimum": 0 } }
    });
    let app = |draft: Option<SchemaDraft>, schema: Value| {
        let mut builder = gateway().model("Modern", schema);
        if let Some(draft) = draft {
            builder = builder.default_schema_draft(draft);
        }
        builder.route(json_validated("/raw", "Modern")).build()
    };
    // Draft 4 wants a boolean exclusiveMinimum: the schema does not compile as draft 4.
    let error = app(None, modern.clone()).unwrap_err();
    assert_eq!(error.field(), "models[Modern]");
    let newer = app(Some(SchemaDraft::Draft2020_12), modern.clone())
        .unwrap()
        .layer(echo_router());
    let (status, _) = send(&newer, post_json("/raw", r#"{"price":0}"#)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let mut named = modern;
    named["$schema"] = json!("https://json-schema.org/draft/2020-12/schema");
    let named = app(None, named).unwrap().layer(echo_router());
    let (status, _) = send(&named, post_json("/raw", r#"{"price":0.5}"#)).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a $schema wins over the default draft"
    );
}

/// The status of `body` posted to a gateway whose `POST /raw` body is validated against
/// `schema` (read in its `$schema`'s draft, or the default).
async fn status_under(schema: Value, body: &'static str) -> StatusCode {
    let app = gateway()
        .model("Drafted", schema)
        .route(json_validated("/raw", "Drafted"))
        .build()
        .unwrap()
        .layer(echo_router());
    send(&app, post_json("/raw", body)).await.0
}

#[tokio::test]
async fn each_draft_enforces_its_own_keywords() {
    const DRAFT_4: &str = "http://json-schema.org/draft-04/schema#";
    const DRAFT_6: &str = "http://json-schema.org/draft-06/schema#";
    const DRAFT_7: &str = "http://json-schema.org/draft-07/schema#";
    const DRAFT_2019: &str = "https://json-schema.org/draft/2019-09/schema";
    const DRAFT_2020: &str = "https://json-schema.org/draft/2020-12/schema";
    let with_schema = |draft: Option<&str>, mut schema: Value| {
        if let Some(draft) = draft {
            schema["$schema"] = json!(draft);
        }
        schema
    };
    // Under each draft, `refused` gets the expected status and `accepted` always passes.
    let check = async |schema: &Value,
                       drafts: &[(Option<&str>, StatusCode)],
                       refused: &'static str,
                       accepted: &'static str| {
        for &(draft, expected) in drafts {
            let schema = with_schema(draft, schema.clone());
            assert_eq!(
                status_under(schema.clone(), refused).await,
                expected,
                "{draft:?}: {refused}"
            );
            assert_eq!(
                status_under(schema, accepted).await,
                StatusCode::OK,
                "{draft:?}: {accepted}"
            );
        }
    };

    // `const` came with draft 6: a model without `$schema` is draft 4 and ignores it.
    let constant = json!({ "type": "object", "properties": { "kind": { "const": "dog" } } });
    let drafts = [
        (None, StatusCode::OK),
        (Some(DRAFT_4), StatusCode::OK),
        (Some(DRAFT_6), StatusCode::BAD_REQUEST),
        (Some(DRAFT_2020), StatusCode::BAD_REQUEST),
    ];
    check(&constant, &drafts, r#"{"kind":"cat"}"#, r#"{"kind":"dog"}"#).await;

    // `if` / `then` came with draft 7.
    let conditional = json!({
        "type": "object",
        "if": { "properties": { "kind": { "enum": ["dog"] } }, "required": ["kind"] },
        "then": { "required": ["bark"] }
    });
    let drafts = [
        (None, StatusCode::OK),
        (Some(DRAFT_6), StatusCode::OK),
        (Some(DRAFT_7), StatusCode::BAD_REQUEST),
    ];
    check(
        &conditional,
        &drafts,
        r#"{"kind":"dog"}"#,
        r#"{"kind":"dog","bark":true}"#,
    )
    .await;

    // `dependentRequired` came with 2019-09 (draft 7 spells it `dependencies`).
    let dependent = json!({ "type": "object", "dependentRequired": { "price": ["currency"] } });
    let drafts = [
        (Some(DRAFT_7), StatusCode::OK),
        (Some(DRAFT_2019), StatusCode::BAD_REQUEST),
        (Some(DRAFT_2020), StatusCode::BAD_REQUEST),
    ];
    check(
        &dependent,
        &drafts,
        r#"{"price":1}"#,
        r#"{"price":1,"currency":"EUR"}"#,
    )
    .await;

    // `prefixItems` came with 2020-12 (2019-09 reads a list of `items` instead).
    let tuple = json!({ "type": "array", "prefixItems": [{ "type": "string" }] });
    let drafts = [
        (Some(DRAFT_2019), StatusCode::OK),
        (Some(DRAFT_2020), StatusCode::BAD_REQUEST),
    ];
    check(&tuple, &drafts, "[1]", r#"["a", 1]"#).await;

    // The standalone layer reads drafts the same way.
    let layer = |schema: Value| {
        let validator = RequestValidatorLayer::builder()
            .model("application/json", schema)
            .build()
            .unwrap();
        Router::new().route(
            "/raw",
            post(|body: Bytes| async move { body }).layer(validator),
        )
    };
    for (draft, expected) in [
        (None, StatusCode::OK),
        (Some(DRAFT_6), StatusCode::BAD_REQUEST),
    ] {
        let response = layer(with_schema(draft, constant.clone()))
            .oneshot(post_json("/raw", r#"{"kind":"cat"}"#))
            .await
            .unwrap();
        assert_eq!(response.status(), expected, "{draft:?}");
    }
}

#[tokio::test]
async fn openapi_3_1_models_are_enforced_as_draft_2020_12() {
    let document = OpenApi::from_json(
        r##"{
      "openapi": "3.1.0",
      "info": { "title": "pets", "version": "1" },
      "paths": {
        "/pets": {
          "post": {
            "requestBody": { "content": {
              "application/json": { "schema": { "$ref": "#/components/schemas/Pet" } }
            } }
          }
        }
      },
      "components": {
        "schemas": { "Pet": {
          "type": "object", "required": ["name"],
          "properties": {
            "name": { "type": "string" },
            "tag": { "type": ["string", "null"] },
            "price": { "type": "number", "exclusiveMinimum": 0 },
            "kind": { "const": "dog" }
          }
        } }
      }
    }"##,
    )
    .unwrap();
    let app = GatewayBuilder::new()
        .stage(Stage::builder("prod").build().unwrap())
        .request_validator("all", Validator::all())
        .openapi(&document, "all")
        .build()
        .expect("a 3.1 schema (numeric exclusiveMinimum) compiles")
        .layer(echo_router());
    for (body, expected) in [
        (r#"{"name":"rex"}"#, StatusCode::OK),
        (r#"{"name":"rex","tag":null}"#, StatusCode::OK),
        (r#"{"name":"rex","tag":"good"}"#, StatusCode::OK),
        (r#"{"name":"rex","tag":5}"#, StatusCode::BAD_REQUEST),
        (r#"{"name":null}"#, StatusCode::BAD_REQUEST),
        (r#"{"tag":"good"}"#, StatusCode::BAD_REQUEST),
        (r#"{"name":"rex","price":0.5}"#, StatusCode::OK),
        (r#"{"name":"rex","price":0}"#, StatusCode::BAD_REQUEST),
        (r#"{"name":"rex","kind":"dog"}"#, StatusCode::OK),
        (r#"{"name":"rex","kind":"cat"}"#, StatusCode::BAD_REQUEST),
    ] {
        assert_eq!(
            send(&app, post_json("/pets", body)).await.0,
            expected,
            "{body}"
        );
    }
}

/// A JSON body of exactly `length` bytes (a valid `Pet`, padded with leading spaces), sent
/// in 64 KiB frames; and how many bytes were pulled from it.
fn pet_of_length(length: usize) -> (Chunked, Arc<AtomicUsize>) {
    const FRAME: usize = 64 * 1024;
    static SPACES: [u8; FRAME] = [b' '; FRAME];
    let pet = br#"{"name":"rex"}"#;
    let padding = length - pet.len();
    let mut last = vec![b' '; padding % FRAME];
    last.extend_from_slice(pet);
    let (mut body, pulled) = Chunked::new(&SPACES, padding / FRAME);
    body.last = Some(Bytes::from(last));
    (body, pulled)
}

#[tokio::test]
async fn the_default_payload_limit_is_10_mib() {
    const LIMIT: usize = 10 * 1024 * 1024;
    assert_eq!(
        tower_gateway::validate::DEFAULT_MAX_BODY_BYTES,
        LIMIT as u64
    );
    // No max_body_bytes anywhere: the default applies to validated and unvalidated routes.
    let limit_error = |error: &(dyn std::error::Error + 'static)| {
        let mut source = Some(error);
        while let Some(error) = source {
            if error.is::<http_body_util::LengthLimitError>() {
                return true;
            }
            source = error.source();
        }
        false
    };
    // Reads the whole body (axum's `Bytes` extractor would stop at its own 2 MB).
    let read = move |request: axum::extract::Request| async move {
        match request.into_body().collect().await {
            Ok(bytes) => format!("read {}", bytes.to_bytes().len()),
            Err(error) => format!("failed, length limit: {}", limit_error(&error)),
        }
    };
    let counting = Router::new()
        .route("/raw", post(read))
        .route("/pets", post(read));
    let app = gateway()
        .route(json_validated("/pets", "Pet"))
        .route(Route::new(Method::POST, "/raw"))
        .build()
        .unwrap()
        .layer(counting);
    let post = |uri: &str, body: Chunked, length: Option<usize>| {
        let mut request = Request::post(uri).header("content-type", "application/json");
        if let Some(length) = length {
            request = request.header("content-length", length);
        }
        request.body(body).unwrap()
    };

    for uri in ["/pets", "/raw"] {
        // A Content-Length one byte over: 413 before anything is read.
        let (body, pulled) = pet_of_length(LIMIT + 1);
        let response = app
            .clone()
            .oneshot(post(uri, body, Some(LIMIT + 1)))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE, "{uri}");
        assert_eq!(
            json_body(response).await,
            json!({"message": "Request Too Long"})
        );
        assert_eq!(pulled.load(Ordering::SeqCst), 0, "{uri}");

        // Exactly at the limit, declared or streamed: accepted whole.
        for declared in [Some(LIMIT), None] {
            let (body, pulled) = pet_of_length(LIMIT);
            let response = app
                .clone()
                .oneshot(post(uri, body, declared))
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK, "{uri} {declared:?}");
            assert_eq!(text(response).await, format!("read {LIMIT}"));
            assert_eq!(pulled.load(Ordering::SeqCst), LIMIT);
        }
    }

    // Streamed without a Content-Length, one byte over: the validator answers 413 itself;
    // elsewhere the body the service reads fails with LengthLimitError.
    let (body, pulled) = pet_of_length(LIMIT + 1);
    let response = app
        .clone()
        .oneshot(post("/pets", body, None))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        json_body(response).await,
        json!({"message": "Request Too Long"})
    );
    assert_eq!(pulled.load(Ordering::SeqCst), LIMIT + 1);
    let (body, _) = pet_of_length(LIMIT + 1);
    let response = app.oneshot(post("/raw", body, None)).await.unwrap();
    assert_eq!(text(response).await, "failed, length limit: true");
}

#[tokio::test]
async fn openapi_operations_become_validated_routes() {
    let document = OpenApi::from_json(
        r##"{
      "openapi": "3.0.3",
      "info": { "title": "pets", "version": "1" },
      "paths": {
        "/pets/{petId}": {
          "parameters": [{ "$ref": "#/components/parameters/PetId" }],
          "post": {
            "parameters": [{ "name": "page", "in": "query", "required": true }],
            "requestBody": { "$ref": "#/components/requestBodies/Pet" }
          }
        }
      },
      "components": {
        "parameters": { "PetId": { "name": "petId", "in": "path", "required": true } },
        "requestBodies": { "Pet": { "content": {
          "application/json": { "schema": { "$ref": "#/components/schemas/Pet" } },
          "multipart/form-data": { "schema": { "type": "object" } }
        } } },
        "schemas": { "Pet": {
          "type": "object", "required": ["name"],
          "properties": { "name": { "type": "string" },
                          "tag": { "type": "string", "nullable": true } }
        } }
      }
    }"##,
    )
    .unwrap();
    let app = GatewayBuilder::new()
        .stage(Stage::builder("prod").build().unwrap())
        .request_validator("all", Validator::all())
        .openapi(&document, "all")
        .build()
        .unwrap()
        .layer(echo_router());
    let (status, _) = send(
        &app,
        post_json("/pets/1?page=1", r#"{"name":"rex","tag":null}"#),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "nullable allows null");
    let (status, _) = send(&app, post_json("/pets/1?page=1", r#"{"tag":"x"}"#)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, body) = send(&app, post_json("/pets/1", r#"{"name":"rex"}"#)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("[page]"));
    let multipart = Request::post("/pets/1?page=1")
        .header("content-type", "multipart/form-data; boundary=x")
        .body(Body::from("--x--"))
        .unwrap();
    let (status, _) = send(&app, multipart).await;
    assert_eq!(
        status,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "non-JSON media types are not modelled"
    );
    // Operations the document does not declare are not routes.
    let (status, _) = send(&app, post_json("/pets", "{}")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[test]
fn bad_validation_settings_are_config_errors() {
    let post = || Route::new(Method::POST, "/pets");
    let cases: Vec<(GatewayBuilder, &str, &str)> = vec![
        (
            gateway().route(post().validator("nope")),
            "routes[POST /pets].validator",
            "no request validator",
        ),
        (
            gateway().route(
                post()
                    .validator("all")
                    .request_model("application/json", "Nope"),
            ),
            "routes[POST /pets].request_models[application/json]",
            "no model",
        ),
        (
            gateway().route(post().required_parameter(RequestParameter::query("page"))),
            "routes[POST /pets].required_parameters",
            "would be ignored",
        ),
        (
            gateway().route(
                post()
                    .validator("params")
                    .request_model("application/json", "Pet"),
            ),
            "routes[POST /pets].request_models",
            "validate_body",
        ),
        (
            gateway().route(
                post()
                    .validator("all")
                    .request_model("application/json; charset=utf-8", "Pet"),
            ),
            "routes[POST /pets].request_models[application/json; charset=utf-8]",
            "without parameters",
        ),
        (
            gateway().route(
                post()
                    .validator("all")
                    .required_parameter(RequestParameter::path("petId")),
            ),
            "routes[POST /pets].required_parameters[method.request.path.petId]",
            "template has no",
        ),
        (
            gateway().route(
                post()
                    .validator("all")
                    .required_parameter(RequestParameter::header("bad header")),
            ),
            "routes[POST /pets].required_parameters[method.request.header.bad header]",
            "not a valid header name",
        ),
        (
            gateway().model("Broken", json!({"type": 12})),
            "models[Broken]",
            "does not compile",
        ),
        (
            gateway().model("Remote", json!({"$ref": "https://example.com/pet.json"})),
            "models[Remote]",
            "does not compile",
        ),
        (gateway().model("Pet", json!({})), "models[Pet]", "unique"),
        (
            gateway().request_validator("all", Validator::body_only()),
            "request_validators[all]",
            "unique",
        ),
    ];
    for (builder, field, rule) in cases {
        let builder = builder.route(Route::new(Method::GET, "/health"));
        let error = builder.build().unwrap_err();
        assert_eq!(error.field(), field, "{error}");
        assert!(error.rule().contains(rule), "{error}");
    }
    let error = RequestValidatorLayer::builder()
        .model("application/json", json!({"type": "nope"}))
        .build()
        .unwrap_err();
    assert_eq!(error.field(), "models[application/json]");
}

/// The pet schema, decided independently of the validator.
fn is_pet(value: &Value) -> bool {
    let Some(object) = value.as_object() else {
        return false;
    };
    object.get("name").is_some_and(Value::is_string)
        && object.get("type").is_none_or(|t| {
            t.as_str()
                .is_some_and(|t| ["dog", "cat", "fish"].contains(&t))
        })
        && object
            .get("price")
            .is_none_or(|p| p.as_f64().is_some_and(|p| p >= 0.0))
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (-1e6f64..1e6).prop_map(Value::from),
        "\\PC{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z]{1,5}|name|type|price", inner, 0..4)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

fn pet_like() -> impl Strategy<Value = Value> {
    (
        "\\PC{0,12}",
        prop::option::of(prop_oneof![
            Just("dog"),
            Just("cat"),
            Just("fish"),
            Just("cow")
        ]),
        prop::option::of(-10.0f64..1e9),
        prop::collection::btree_map("[a-z]{1,5}", json_value(), 0..3),
    )
        .prop_map(|(name, kind, price, extra)| {
            let mut object: serde_json::Map<String, Value> = extra.into_iter().collect();
            object.insert("name".into(), Value::String(name));
            if let Some(kind) = kind {
                object.insert("type".into(), Value::from(kind));
            }
            if let Some(price) = price {
                object.insert("price".into(), Value::from(price));
            }
            Value::Object(object)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn accepted_bodies_reach_the_service_byte_for_byte(
        value in prop_oneof![pet_like(), json_value()],
        pretty in any::<bool>(),
    ) {
        let sent = if pretty {
            serde_json::to_string_pretty(&value).unwrap()
        } else {
            serde_json::to_string(&value).unwrap()
        };
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let (status, received) = runtime.block_on(send(&media_app(false), post_json("/pets", sent.clone())));
        prop_assert_eq!(status == StatusCode::OK, is_pet(&value), "{}", sent);
        if status == StatusCode::OK {
            prop_assert_eq!(received, sent);
        }
    }
}

/// Answers 500 when called without a `poll_ready` first: a clone starts unready.
struct NeedsReady {
    ready: bool,
}

impl Clone for NeedsReady {
    fn clone(&self) -> Self {
        Self { ready: false }
    }
}

impl<B> tower::Service<Request<B>> for NeedsReady {
    type Response = http::Response<Body>;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<http::Response<Body>, std::convert::Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.ready = true;
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<B>) -> Self::Future {
        let status = if std::mem::take(&mut self.ready) {
            StatusCode::OK
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        };
        let mut response = http::Response::new(Body::empty());
        *response.status_mut() = status;
        std::future::ready(Ok(response))
    }
}

#[tokio::test]
async fn the_service_polled_ready_is_the_one_that_takes_a_validated_request() {
    let gateway = gateway()
        .route(json_validated("/pets", "Pet"))
        .build()
        .unwrap()
        .layer(NeedsReady { ready: false });
    let response = gateway
        .oneshot(post_json("/pets", r#"{"name":"rex"}"#))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let layer = RequestValidatorLayer::builder()
        .model("application/json", pet_schema())
        .build()
        .unwrap()
        .layer(NeedsReady { ready: false });
    let response = layer
        .oneshot(post_json("/pets", r#"{"name":"rex"}"#))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn the_service_sees_framing_headers_for_the_bytes_it_gets() {
    let headers = Router::new().route(
        "/pets",
        post(|request: Request<Body>| async move {
            let length = request.headers().get("content-length").cloned();
            let chunked = request.headers().contains_key("transfer-encoding");
            let body = request.into_body().collect().await.unwrap().to_bytes();
            format!("{length:?} {chunked} {}", body.len())
        }),
    );
    let app = any_body_validated(headers);
    // A Content-Length larger than the body sent, and a chunked one.
    let (body, _) = Chunked::new(b"{\"name\":\"rex\"}", 1);
    let request = Request::post("/pets")
        .header("content-length", "900")
        .header("transfer-encoding", "chunked")
        .body(body)
        .unwrap();
    let response = app.oneshot(request).await.unwrap();
    assert_eq!(text(response).await, "Some(\"14\") false 14");
}

#[tokio::test]
async fn compressed_bodies_and_head_requests_have_documented_outcomes() {
    let app = gateway()
        .route(json_validated("/pets", "Pet"))
        .route(
            Route::new(Method::GET, "/pets")
                .validator("all")
                .request_model("$default", "Pet"),
        )
        .build()
        .unwrap()
        .layer(echo_router().route("/pets", axum::routing::get(|| async { "list" })));
    let mut gzipped = post_json("/pets", r#"{"name":"rex"}"#);
    gzipped
        .headers_mut()
        .insert("content-encoding", "gzip".parse().unwrap());
    let (status, _) = send(&app, gzipped).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let mut identity = post_json("/pets", r#"{"name":"rex"}"#);
    identity
        .headers_mut()
        .insert("content-encoding", "identity".parse().unwrap());
    assert_eq!(send(&app, identity).await.0, StatusCode::OK);
    // A GET (and a HEAD, which runs as the GET route) on a route with a model: the empty
    // body is validated like any other.
    for method in [Method::GET, Method::HEAD] {
        let request = Request::builder()
            .method(method.clone())
            .uri("/pets")
            .body(Body::empty())
            .unwrap();
        assert_eq!(
            send(&app, request).await.0,
            StatusCode::BAD_REQUEST,
            "{method}"
        );
    }
}

#[tokio::test]
async fn exposed_details_keep_the_default_4xx_headers() {
    let app = gateway()
        .gateway_response(
            GatewayResponseType::Default4xx,
            GatewayResponse::new().header("access-control-allow-origin", "*"),
        )
        .expose_validation_errors(true)
        .route(json_validated("/pets", "Pet"))
        .build()
        .unwrap()
        .layer(echo_router());
    let response = app.oneshot(post_json("/pets", "{}")).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(response.headers()["access-control-allow-origin"], "*");
    let body = json_body(response).await;
    assert!(
        body["validationErrorString"]
            .as_str()
            .unwrap()
            .contains("name")
    );
}

#[test]
fn ignored_or_ambiguous_settings_are_refused() {
    let twice = gateway()
        .route(json_validated("/pets", "Pet").request_model("Application/JSON", "Pet"))
        .build()
        .unwrap_err();
    assert_eq!(
        twice.field(),
        "routes[POST /pets].request_models[application/json]"
    );
    assert!(twice.rule().contains("one model"), "{twice}");
    let parameters = RequestValidatorLayer::builder()
        .validator(Validator::body_only())
        .required_parameter(RequestParameter::query("page"))
        .build()
        .unwrap_err();
    assert_eq!(parameters.field(), "required_parameters");
    let models = RequestValidatorLayer::builder()
        .validator(Validator::parameters_only())
        .model("application/json", pet_schema())
        .build()
        .unwrap_err();
    assert_eq!(models.field(), "models");
}
