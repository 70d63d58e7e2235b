//! The declarative configuration builds the same gateway as the builder.

mod support;

use axum::routing::get;
use axum::{Json, Router};
use http::StatusCode;
use serde_json::json;
use support::{get as get_request, json as json_body, text};
use tower::{Layer, ServiceExt};
use tower_gateway::{GatewayBuilder, GatewayConfig, RequestContext, StageVariables};

const CONFIG: &str = r#"{
    "stages": [
        { "name": "prod", "variables": { "greeting": "hello" } },
        { "name": "beta", "variables": { "greeting": "hola" } }
    ],
    "stage_selection": { "mode": "base_path" },
    "routes": [
        { "route": "GET /pets" },
        { "route": "GET /pets/{petId}" },
        { "route": "ANY /files/{proxy+}" }
    ],
    "gateway_responses": {
        "MISSING_AUTHENTICATION_TOKEN": {
            "status": 404,
            "headers": { "x-from": "config" },
            "body": "{\"message\":\"No such route\"}"
        }
    },
    "request_id": { "header": "x-req", "trust_inbound": false },
    "trusted_proxies": ["10.0.0.0/8"]
}"#;

fn app(config: &str) -> tower_gateway::GatewayService<Router> {
    let gateway = GatewayBuilder::from_config(GatewayConfig::from_json(config).unwrap())
        .unwrap()
        .build()
        .unwrap();
    let router = Router::new().route(
        "/pets/{id}",
        get(|context: RequestContext, vars: StageVariables| async move {
            Json(json!({
                "resource": context.resource_path(),
                "greeting": vars.get("greeting"),
            }))
        }),
    );
    gateway.layer(router)
}

#[tokio::test]
async fn json_config_builds_a_working_gateway() {
    let response = app(CONFIG)
        .oneshot(get_request("/beta/pets/3"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().contains_key("x-req"));
    assert_eq!(
        json_body(response).await,
        json!({"resource": "/pets/{petId}", "greeting": "hola"})
    );
    let missing = app(CONFIG)
        .oneshot(get_request("/prod/cats"))
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_eq!(missing.headers()["x-from"], "config");
    assert_eq!(text(missing).await, r#"{"message":"No such route"}"#);
}

#[test]
fn config_errors_name_the_problem() {
    let cases = [
        (
            r#"{"stages": [{"name": "prod"}], "routes": [], "rootes": []}"#,
            "unknown field `rootes`",
        ),
        (r#"{"stages": [{"name": "pr od"}]}"#, "stages[pr od].name"),
        (
            r#"{"stages": [{"name": "prod", "variables": {"bad-name": "x"}}]}"#,
            "stages[prod].variables[bad-name]",
        ),
        (
            r#"{"stages": [{"name": "prod"}], "routes": [{"route": "FETCH"}]}"#,
            "routes[FETCH]",
        ),
        (
            r#"{"stages": [{"name": "prod"}], "routes": [{"route": "GET /a"}, {"route": "GET /a"}]}"#,
            "routes[GET /a]",
        ),
        (
            r#"{"stages": [{"name": "prod"}], "routes": [{"route": "GET /a"}], "gateway_responses": {"NOT_A_TYPE": {}}}"#,
            "unknown variant `NOT_A_TYPE`",
        ),
        (
            r#"{"stages": [{"name": "prod"}], "stage_selection": {"mode": "fixed", "stage": "beta"}, "routes": [{"route": "GET /a"}]}"#,
            "stage_selection.stage",
        ),
        (
            r#"{"stages": [{"name": "prod"}], "routes": [{"route": "GET /a", "api_key_required": true}]}"#,
            "routes[GET /a].api_key_required",
        ),
        (
            r#"{"stages": [{"name": "prod"}], "routes": [{"route": "GET /a"}], "unmatched_routes": "maybe"}"#,
            "unknown variant `maybe`",
        ),
        ("{ not json", "line 1, column 3"),
        ("", "EOF"),
        ("42", "invalid type"),
    ];
    for (config, expected) in cases {
        let error = GatewayConfig::from_json(config)
            .and_then(GatewayBuilder::from_config)
            .and_then(GatewayBuilder::build)
            .unwrap_err();
        assert!(error.to_string().contains(expected), "{config}: {error}");
    }
}

#[tokio::test]
async fn pass_through_and_domains_from_config() {
    let config = r#"{
        "stages": [{ "name": "prod", "variables": { "greeting": "hi" } }],
        "stage_selection": { "mode": "domains", "mappings": [
            { "domain": "api.example.com", "base_path": "v1", "stage": "prod" }
        ] },
        "unmatched_routes": "pass_through"
    }"#;
    let request = http::Request::get("/v1/pets/9")
        .header("host", "api.example.com")
        .body(axum::body::Body::empty())
        .unwrap();
    let body = json_body(app(config).oneshot(request).await.unwrap()).await;
    assert_eq!(body, json!({"resource": null, "greeting": "hi"}));
}

mod never_panics {
    use proptest::prelude::*;
    use tower_gateway::{GatewayBuilder, GatewayConfig};

    /// JSON-shaped noise built from the configuration's own vocabulary, so that the loader
    /// gets past parsing and into the checks.
    fn config_like() -> impl Strategy<Value = String> {
        let atom = prop_oneof![
            Just("\"prod\"".to_owned()),
            Just("\"GET /pets/{id}\"".to_owned()),
            Just("\"ANY /{proxy+}\"".to_owned()),
            Just("\"$default\"".to_owned()),
            Just("\"base_path\"".to_owned()),
            Just("\"THROTTLED\"".to_owned()),
            Just("0".to_owned()),
            Just("-1".to_owned()),
            Just("1e400".to_owned()),
            Just("null".to_owned()),
            Just("true".to_owned()),
            "\"[a-z/{}+$ -]{0,12}\"".prop_map(|s| s),
        ];
        let key = prop_oneof![
            Just("stages"),
            Just("name"),
            Just("variables"),
            Just("routes"),
            Just("route"),
            Just("stage_selection"),
            Just("mode"),
            Just("stage"),
            Just("mappings"),
            Just("domain"),
            Just("base_path"),
            Just("default_stage"),
            Just("unmatched_routes"),
            Just("gateway_responses"),
            Just("status"),
            Just("body"),
            Just("headers"),
            Just("request_id"),
            Just("trusted_proxies"),
            Just("max_path_length"),
        ];
        atom.prop_recursive(4, 48, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4)
                    .prop_map(|items| format!("[{}]", items.join(","))),
                prop::collection::vec((key.clone(), inner), 0..5).prop_map(|fields| {
                    let body: Vec<String> = fields
                        .into_iter()
                        .map(|(k, v)| format!("\"{k}\":{v}"))
                        .collect();
                    format!("{{{}}}", body.join(","))
                }),
            ]
        })
    }

    proptest! {
        #[test]
        fn loading_any_config_returns_a_result(json in config_like()) {
            let _ = GatewayConfig::from_json(&json)
                .and_then(GatewayBuilder::from_config)
                .and_then(GatewayBuilder::build);
        }

        #[test]
        fn loading_arbitrary_text_returns_a_result(text in "\\PC{0,200}") {
            let _ = GatewayConfig::from_json(&text);
        }
    }
}

#[tokio::test]
async fn trusted_proxies_from_config_decide_the_source_ip() {
    let config = r#"{
        "stages": [{ "name": "prod" }],
        "routes": [{ "route": "GET /ip" }],
        "trusted_proxies": ["10.0.0.0/8"],
        "max_path_length": 64
    }"#;
    let gateway = GatewayBuilder::from_config(GatewayConfig::from_json(config).unwrap())
        .unwrap()
        .build()
        .unwrap();
    let router = Router::new().route(
        "/ip",
        get(|context: RequestContext| async move {
            context
                .source_ip()
                .map(|ip| ip.to_string())
                .unwrap_or_default()
        }),
    );
    let app = gateway.layer(router);
    let request = |peer: &str| {
        let mut request = http::Request::get("/ip")
            .header("x-forwarded-for", "6.6.6.6, 1.2.3.4")
            .body(axum::body::Body::empty())
            .unwrap();
        request
            .extensions_mut()
            .insert(tower_gateway::ClientAddr(peer.parse().unwrap()));
        request
    };
    let via_proxy = app.clone().oneshot(request("10.1.2.3:4000")).await.unwrap();
    assert_eq!(text(via_proxy).await, "1.2.3.4");
    let direct = app
        .clone()
        .oneshot(request("198.51.100.7:4000"))
        .await
        .unwrap();
    assert_eq!(
        text(direct).await,
        "198.51.100.7",
        "X-Forwarded-For from a client is ignored"
    );

    let long = format!("/ip/{}", "x".repeat(64));
    let too_long = app.oneshot(get_request(&long)).await.unwrap();
    assert_eq!(too_long.status(), StatusCode::PAYLOAD_TOO_LARGE);
}
