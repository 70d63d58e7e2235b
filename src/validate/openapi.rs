//! Routes, required parameters and body models from an OpenAPI 3 document.

use http::Method;
use serde_json::{Map, Value, json};

use super::RequestParameter;
use crate::error::ConfigError;
use crate::route::Route;

/// The operations of an OpenAPI 3.0 or 3.1 document (JSON), as routes to validate.
///
/// Each operation becomes a route (`POST /pets`) with:
/// - its required path, query and header parameters (path parameters are always required;
///   cookie parameters are not checked), path-level ones included, `$ref`s to
///   `#/components/parameters` followed;
/// - a model per JSON media type of its request body (`application/json`, `…+json`; `*/*`
///   becomes `$default`), named `"POST /pets application/json"`. `$ref`s inside a schema
///   resolve against the document's `components`. OpenAPI 3.0 schemas are read as draft 4,
///   with `nullable: true` allowing `null`; 3.1 schemas as draft 2020-12.
///
/// Not carried over: servers and base paths (the gateway's stages do that), security
/// requirements (set [`Route::authorizer`] or [`Route::api_key_required`] on the routes from
/// [`routes`](Self::routes)), non-JSON media types (on an operation that also takes JSON,
/// they get 415; an operation with only non-JSON media types has no models, so its bodies
/// are not validated), and `required: false` on a request body (a body is validated whenever
/// the operation has models, so an empty one is refused).
///
/// # Example
///
/// ```
/// use tower_gateway::validate::{OpenApi, Validator};
/// use tower_gateway::{GatewayBuilder, Stage};
///
/// let document = OpenApi::from_json(r##"{
///   "openapi": "3.0.3",
///   "info": { "title": "pets", "version": "1" },
///   "paths": {
///     "/pets": {
///       "post": {
///         "parameters": [{ "name": "x-tenant", "in": "header", "required": true,
///                          "schema": { "type": "string" } }],
///         "requestBody": { "content": { "application/json": {
///           "schema": { "$ref": "#/components/schemas/Pet" } } } }
///       }
///     }
///   },
///   "components": { "schemas": { "Pet": {
///     "type": "object", "required": ["name"],
///     "properties": { "name": { "type": "string" } }
///   } } }
/// }"##)?;
/// let gateway = GatewayBuilder::new()
///     .stage(Stage::builder("prod").build()?)
///     .request_validator("all", Validator::all())
///     .openapi(&document, "all")
///     .build()?;
/// # let _ = gateway;
/// # Ok::<(), tower_gateway::ConfigError>(())
/// ```
#[derive(Debug, Clone)]
pub struct OpenApi {
    operations: Vec<Operation>,
}

#[derive(Debug, Clone)]
struct Operation {
    method: Method,
    path: String,
    parameters: Vec<RequestParameter>,
    /// Media type (or `$default`), model name, schema.
    models: Vec<(String, String, Value)>,
}

const METHODS: [(&str, Method); 8] = [
    ("get", Method::GET),
    ("put", Method::PUT),
    ("post", Method::POST),
    ("delete", Method::DELETE),
    ("options", Method::OPTIONS),
    ("head", Method::HEAD),
    ("patch", Method::PATCH),
    ("trace", Method::TRACE),
];

impl OpenApi {
    /// Reads a JSON OpenAPI document (convert a YAML one with any YAML reader and use
    /// [`from_value`](Self::from_value)).
    pub fn from_json(document: &str) -> Result<Self, ConfigError> {
        let value: Value = serde_json::from_str(document)
            .map_err(|error| ConfigError::new("openapi", format!("not JSON: {error}")))?;
        Self::from_value(&value)
    }

    /// Reads an OpenAPI document already parsed.
    pub fn from_value(document: &Value) -> Result<Self, ConfigError> {
        let version = document
            .get("openapi")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let draft_uri = if version.starts_with("3.0.") {
            "http://json-schema.org/draft-04/schema#"
        } else if version.starts_with("3.1.") {
            "https://json-schema.org/draft/2020-12/schema"
        } else {
            return Err(ConfigError::new(
                "openapi.openapi",
                "expected an OpenAPI 3.0 or 3.1 document (`\"openapi\": \"3.x.y\"`)",
            ));
        };
        let nullable_keyword = version.starts_with("3.0.");
        let mut components = document.get("components").cloned().unwrap_or(Value::Null);
        if nullable_keyword {
            rewrite_nullable(&mut components);
        }
        let paths = match document.get("paths") {
            None => {
                return Ok(Self {
                    operations: Vec::new(),
                });
            }
            Some(Value::Object(paths)) => paths,
            Some(_) => return Err(ConfigError::new("openapi.paths", "expected an object")),
        };
        let mut operations = Vec::new();
        for (path, item) in paths {
            let field = format!("openapi.paths[{path}]");
            let item = resolve(document, item, &field)?;
            let shared = parameters(document, item.get("parameters"), &field)?;
            for (name, method) in &METHODS {
                let Some(operation) = item.get(*name) else {
                    continue;
                };
                let field = format!("{field}.{name}");
                let mut declared = shared.clone();
                for parameter in parameters(document, operation.get("parameters"), &field)? {
                    // An operation's parameter replaces a path-level one of the same name and
                    // location.
                    declared.retain(|(existing, _)| *existing != parameter.0);
                    declared.push(parameter);
                }
                let required = declared
                    .into_iter()
                    .filter_map(|(parameter, required)| required.then_some(parameter))
                    .collect();
                let mut models = Vec::new();
                if let Some(body) = operation.get("requestBody") {
                    let field = format!("{field}.requestBody");
                    let body = resolve(document, body, &field)?;
                    let content = body.get("content").and_then(Value::as_object);
                    for (media_type, media) in content.into_iter().flatten() {
                        let Some(slot) = model_slot(media_type) else {
                            continue;
                        };
                        let mut schema = media.get("schema").cloned().unwrap_or(json!({}));
                        if nullable_keyword {
                            rewrite_nullable(&mut schema);
                        }
                        let mut root = Map::new();
                        root.insert("$schema".into(), draft_uri.into());
                        root.insert("allOf".into(), json!([schema]));
                        if !components.is_null() {
                            root.insert("components".into(), components.clone());
                        }
                        models.push((
                            slot.clone(),
                            format!("{} {path} {slot}", method.as_str()),
                            Value::Object(root),
                        ));
                    }
                }
                operations.push(Operation {
                    method: method.clone(),
                    path: path.clone(),
                    parameters: required,
                    models,
                });
            }
        }
        Ok(Self { operations })
    }

    /// One route per operation, naming `validator` and carrying the operation's required
    /// parameters and models.
    pub fn routes(&self, validator: &str) -> Vec<Route> {
        self.operations
            .iter()
            .map(|operation| {
                let mut route = Route::new(operation.method.clone(), operation.path.clone())
                    .validator(validator);
                for parameter in &operation.parameters {
                    route = route.required_parameter(parameter.clone());
                }
                for (media_type, name, _) in &operation.models {
                    route = route.request_model(media_type.clone(), name.clone());
                }
                route
            })
            .collect()
    }

    /// The models the routes name, with their schemas.
    pub fn models(&self) -> Vec<(String, Value)> {
        self.operations
            .iter()
            .flat_map(|operation| &operation.models)
            .map(|(_, name, schema)| (name.clone(), schema.clone()))
            .collect()
    }
}

/// The media type a JSON model is attached to, or `None` for a media type whose bodies are
/// not JSON.
fn model_slot(media_type: &str) -> Option<String> {
    let essence = media_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if essence == "*/*" {
        Some("$default".into())
    } else if essence == "application/json" || essence.ends_with("+json") {
        Some(essence)
    } else {
        None
    }
}

/// `value`, or what its local `$ref` points at.
fn resolve<'a>(
    document: &'a Value,
    value: &'a Value,
    field: &str,
) -> Result<&'a Value, ConfigError> {
    let Some(reference) = value.get("$ref").and_then(Value::as_str) else {
        return Ok(value);
    };
    reference
        .strip_prefix('#')
        .and_then(|pointer| document.pointer(pointer))
        .ok_or_else(|| {
            ConfigError::new(
                field,
                format!("`{reference}` does not point inside the document"),
            )
        })
}

/// The parameters declared in `list`, each with whether it is required (path parameters
/// always are); cookies are left out.
fn parameters(
    document: &Value,
    list: Option<&Value>,
    field: &str,
) -> Result<Vec<(RequestParameter, bool)>, ConfigError> {
    let Some(list) = list else {
        return Ok(Vec::new());
    };
    let list = list
        .as_array()
        .ok_or_else(|| ConfigError::new(format!("{field}.parameters"), "expected an array"))?;
    let mut declared = Vec::new();
    for (index, parameter) in list.iter().enumerate() {
        let field = format!("{field}.parameters[{index}]");
        let parameter = resolve(document, parameter, &field)?;
        let name = parameter.get("name").and_then(Value::as_str);
        let location = parameter.get("in").and_then(Value::as_str);
        let (Some(name), Some(location)) = (name, location) else {
            return Err(ConfigError::new(field, "a parameter needs `name` and `in`"));
        };
        let is_required = parameter.get("required").and_then(Value::as_bool) == Some(true);
        let parameter = match location {
            "path" => (RequestParameter::path(name), true),
            "query" => (RequestParameter::query(name), is_required),
            "header" => (RequestParameter::header(name), is_required),
            "cookie" => continue,
            other => {
                return Err(ConfigError::new(
                    field,
                    format!("unknown parameter location `{other}`"),
                ));
            }
        };
        declared.push(parameter);
    }
    Ok(declared)
}

/// OpenAPI 3.0's `nullable: true` next to a `type`, as draft 4 says it: the type or `null`.
fn rewrite_nullable(value: &mut Value) {
    match value {
        Value::Object(object) => {
            if object.get("nullable") == Some(&Value::Bool(true))
                && let Some(Value::String(kind)) = object.get("type")
            {
                let kind = kind.clone();
                object.insert("type".into(), json!([kind, "null"]));
            }
            object.values_mut().for_each(rewrite_nullable);
        }
        Value::Array(items) => items.iter_mut().for_each(rewrite_nullable),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types_that_get_models() {
        assert_eq!(
            model_slot("application/json; charset=utf-8").as_deref(),
            Some("application/json")
        );
        assert_eq!(
            model_slot("application/problem+json").as_deref(),
            Some("application/problem+json")
        );
        assert_eq!(model_slot("*/*").as_deref(), Some("$default"));
        assert_eq!(model_slot("multipart/form-data"), None);
    }

    #[test]
    fn nullable_becomes_a_type_union() {
        let mut schema = json!({"properties": {"tag": {"type": "string", "nullable": true}}});
        rewrite_nullable(&mut schema);
        assert_eq!(
            schema["properties"]["tag"]["type"],
            json!(["string", "null"])
        );
    }

    #[test]
    fn bad_documents_name_the_problem() {
        let cases = [
            (json!({"openapi": "2.0"}), "openapi.openapi"),
            (json!({"openapi": "3.0.0", "paths": []}), "openapi.paths"),
            (
                json!({"openapi": "3.0.0", "paths": {"/a": {"get": {"parameters": [{"in": "query"}]}}}}),
                "openapi.paths[/a].get.parameters[0]",
            ),
            (
                json!({"openapi": "3.0.0", "paths": {"/a": {"get": {"parameters": [{"$ref": "other.json#/x"}]}}}}),
                "openapi.paths[/a].get.parameters[0]",
            ),
            (
                json!({"openapi": "3.1.0", "paths": {"/a": {"get": {"parameters": [{"name": "x", "in": "body"}]}}}}),
                "openapi.paths[/a].get.parameters[0]",
            ),
        ];
        for (document, field) in cases {
            assert_eq!(OpenApi::from_value(&document).unwrap_err().field(), field);
        }
    }

    #[test]
    fn operation_parameters_override_path_level_ones() {
        let document = json!({
            "openapi": "3.0.3",
            "paths": {"/pets/{petId}": {
                "parameters": [{"name": "petId", "in": "path", "required": true},
                               {"name": "page", "in": "query", "required": true}],
                "get": {"parameters": [{"name": "page", "in": "query", "required": false},
                                       {"name": "x-t", "in": "header", "required": true}]}
            }}
        });
        let api = OpenApi::from_value(&document).unwrap();
        let routes = api.routes("v");
        assert_eq!(routes.len(), 1);
        assert_eq!(routes[0].key(), "GET /pets/{petId}");
        assert_eq!(
            api.operations[0].parameters,
            vec![
                RequestParameter::path("petId"),
                RequestParameter::header("x-t")
            ],
            "an optional operation parameter drops the path-level requirement"
        );
    }
}
