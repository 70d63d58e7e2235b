//! Body models: JSON Schemas compiled with the `jsonschema` crate, chosen by media type.

use std::fmt;
use std::sync::Arc;

use http::HeaderMap;
use http::header::CONTENT_TYPE;
use serde::Serialize;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use crate::context::RequestContext;
use crate::error::ConfigError;
use crate::response::{GatewayError, GatewayResponseType};

/// The JSON Schema dialect of models that do not name one with `$schema`.
///
/// API Gateway's models are draft 4, hence the default; a model with a `$schema` is read in
/// the dialect it names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum SchemaDraft {
    /// Draft 4 (`http://json-schema.org/draft-04/schema#`), API Gateway's.
    #[default]
    #[serde(rename = "draft4")]
    Draft4,
    /// Draft 6.
    #[serde(rename = "draft6")]
    Draft6,
    /// Draft 7.
    #[serde(rename = "draft7")]
    Draft7,
    /// Draft 2019-09.
    #[serde(rename = "draft2019-09")]
    Draft2019_09,
    /// Draft 2020-12, which OpenAPI 3.1 uses.
    #[serde(rename = "draft2020-12")]
    Draft2020_12,
}

impl SchemaDraft {
    fn to_jsonschema(self) -> jsonschema::Draft {
        match self {
            Self::Draft4 => jsonschema::Draft::Draft4,
            Self::Draft6 => jsonschema::Draft::Draft6,
            Self::Draft7 => jsonschema::Draft::Draft7,
            Self::Draft2019_09 => jsonschema::Draft::Draft201909,
            Self::Draft2020_12 => jsonschema::Draft::Draft202012,
        }
    }
}

/// How many of a schema's complaints are kept for `validationErrorString`.
const MAX_REPORTED_ERRORS: usize = 5;

/// A model, compiled once.
pub(crate) struct CompiledModel {
    name: Box<str>,
    validator: jsonschema::Validator,
}

impl fmt::Debug for CompiledModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompiledModel")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl CompiledModel {
    /// Compiles `schema`; references may only point inside it (the crate is built without
    /// the resolvers that fetch files or URLs).
    pub(crate) fn compile(
        field: &str,
        name: &str,
        schema: &Value,
        default_draft: SchemaDraft,
    ) -> Result<Self, ConfigError> {
        let names_its_draft = schema.get("$schema").is_some_and(Value::is_string);
        let mut options = jsonschema::options();
        if !names_its_draft {
            options = options.with_draft(default_draft.to_jsonschema());
        }
        let validator = options.build(schema).map_err(|error| {
            ConfigError::new(field, format!("the schema does not compile: {error}"))
        })?;
        Ok(Self {
            name: name.into(),
            validator,
        })
    }

    /// Parses `bytes` as one JSON document and validates it; on failure records why in the
    /// context and returns the `BAD_REQUEST_BODY` rejection.
    pub(crate) fn validate(
        &self,
        bytes: &[u8],
        context: &RequestContext,
    ) -> Result<(), GatewayError> {
        let detail = match parse_strict(bytes) {
            Err(error) => error,
            Ok(instance) => {
                if self.validator.is_valid(&instance) {
                    return Ok(());
                }
                self.complaints(&instance)
            }
        };
        tracing::debug!(model = %self.name, detail = %detail, "request body refused");
        context.set_validation_error(detail);
        Err(GatewayError::new(GatewayResponseType::BadRequestBody))
    }

    /// The schema's complaints, with the offending values masked so that nothing from the
    /// body is echoed into responses or logs.
    fn complaints(&self, instance: &Value) -> String {
        let mut detail = String::new();
        for error in self
            .validator
            .iter_errors(instance)
            .take(MAX_REPORTED_ERRORS)
        {
            if !detail.is_empty() {
                detail.push_str("; ");
            }
            let path = error.instance_path().to_string();
            if !path.is_empty() {
                detail.push_str(&path);
                detail.push_str(": ");
            }
            detail.push_str(&error.masked().to_string());
        }
        detail
    }
}

/// A route's models by media type, with the `$default` one.
#[derive(Debug)]
pub(crate) struct BodyModels {
    by_media_type: Vec<(Box<str>, Arc<CompiledModel>)>,
    default: Option<Arc<CompiledModel>>,
}

/// The content type of bodies sent without one, as API Gateway assumes.
const ASSUMED_MEDIA_TYPE: &str = "application/json";

impl BodyModels {
    /// `models` pairs a media type (or `$default`) with its model.
    pub(crate) fn new(
        field: &str,
        models: Vec<(&str, Arc<CompiledModel>)>,
    ) -> Result<Self, ConfigError> {
        let mut built = Self {
            by_media_type: Vec::new(),
            default: None,
        };
        for (media_type, model) in models {
            if media_type == "$default" {
                built.default = Some(model);
                continue;
            }
            let parsed = MediaType::parse(media_type)
                .filter(|parsed| parsed.parameters.trim().is_empty())
                .ok_or_else(|| {
                    ConfigError::new(
                        format!("{field}[{media_type}]"),
                        "expected a media type without parameters (`application/json`) or \
                         `$default`",
                    )
                })?;
            built
                .by_media_type
                .push((parsed.essence.to_ascii_lowercase().into(), model));
        }
        Ok(built)
    }

    /// The model for the request's media type.
    pub(crate) fn model_for(
        &self,
        headers: &HeaderMap,
        context: &RequestContext,
    ) -> Result<&Arc<CompiledModel>, GatewayError> {
        let unsupported = |detail: String| {
            context.set_validation_error(detail);
            GatewayError::new(GatewayResponseType::UnsupportedMediaType)
        };
        let mut values = headers.get_all(CONTENT_TYPE).iter();
        let media_type = match (values.next(), values.next()) {
            (None, _) => MediaType {
                essence: ASSUMED_MEDIA_TYPE,
                parameters: "",
            },
            (Some(_), Some(_)) => return Err(unsupported("two Content-Type headers".into())),
            (Some(value), None) => value
                .to_str()
                .ok()
                .and_then(MediaType::parse)
                .ok_or_else(|| unsupported("the Content-Type is not a media type".into()))?,
        };
        if !media_type.is_utf8() {
            return Err(unsupported(
                "JSON bodies must be UTF-8; the Content-Type names another charset".into(),
            ));
        }
        self.by_media_type
            .iter()
            .find(|(essence, _)| essence.eq_ignore_ascii_case(media_type.essence))
            .map(|(_, model)| model)
            .or(self.default.as_ref())
            .ok_or_else(|| unsupported("no model for the request's media type".into()))
    }
}

/// A media type split into `type/subtype` and whatever parameters follow it.
struct MediaType<'a> {
    essence: &'a str,
    parameters: &'a str,
}

impl<'a> MediaType<'a> {
    fn parse(text: &'a str) -> Option<Self> {
        let (essence, parameters) = text.split_once(';').unwrap_or((text, ""));
        let essence = essence.trim();
        let (kind, subtype) = essence.split_once('/')?;
        let is_token = |part: &str| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
        };
        (is_token(kind) && is_token(subtype)).then_some(Self {
            essence,
            parameters,
        })
    }

    /// Whether the `charset` parameter, if any, is UTF-8 (or its subset US-ASCII).
    fn is_utf8(&self) -> bool {
        self.parameters.split(';').all(|parameter| {
            let Some((name, value)) = parameter.split_once('=') else {
                return true;
            };
            if !name.trim().eq_ignore_ascii_case("charset") {
                return true;
            }
            let value = value.trim().trim_matches('"');
            value.eq_ignore_ascii_case("utf-8")
                || value.eq_ignore_ascii_case("utf8")
                || value.eq_ignore_ascii_case("us-ascii")
        })
    }
}

/// Parses one JSON document, refusing a key repeated in an object: parsers disagree about
/// which of the two values counts, and the service must read the value that was validated.
/// Nesting is bounded by serde_json's recursion limit (128).
fn parse_strict(bytes: &[u8]) -> Result<Value, String> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err("the body is empty".into());
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = StrictValue
        .deserialize(&mut deserializer)
        .and_then(|value| deserializer.end().map(|()| value))
        .map_err(|error| format!("the body is not valid JSON: {error}"))?;
    Ok(value)
}

/// A `serde_json::Value` seed that fails on duplicate keys.
#[derive(Clone, Copy)]
struct StrictValue;

impl<'de> DeserializeSeed<'de> for StrictValue {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictValue {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, value: bool) -> Result<Value, E> {
        Ok(Value::Bool(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Value, E> {
        Ok(Value::Number(value.into()))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Value, E> {
        Ok(Value::Number(value.into()))
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<Value, E> {
        Number::from_f64(value)
            .map(Value::Number)
            .ok_or_else(|| E::custom("number out of range"))
    }

    fn visit_str<E>(self, value: &str) -> Result<Value, E> {
        Ok(Value::String(value.to_owned()))
    }

    fn visit_string<E>(self, value: String) -> Result<Value, E> {
        Ok(Value::String(value))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(de::Error::custom(format_args!(
                    "the key `{}` appears twice in one object",
                    key.escape_default()
                )));
            }
            let value = map.next_value_seed(self)?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_parsing_outcomes() {
        assert_eq!(
            parse_strict(br#"{"a":[1,2.5,"x",null,true]}"#).unwrap()["a"][1],
            2.5
        );
        let duplicate = parse_strict(br#"{"a":1,"b":{"c":1,"c":2}}"#).unwrap_err();
        assert!(duplicate.contains("`c` appears twice"), "{duplicate}");
        assert!(parse_strict(b"").unwrap_err().contains("empty"));
        assert!(parse_strict(b"{} {}").is_err(), "one document only");
        assert!(parse_strict(br#""\ud800""#).is_err(), "lone surrogate");
        assert!(parse_strict(b"1E400").is_err(), "out of range");
        let deep = "[".repeat(100_000);
        assert!(
            parse_strict(deep.as_bytes())
                .unwrap_err()
                .contains("recursion")
        );
        let big = parse_strict(b"100000000000000000000000").unwrap();
        assert_eq!(big.as_f64(), Some(1e23));
        assert_eq!(
            parse_strict(b"9007199254740993").unwrap().as_u64(),
            Some(9_007_199_254_740_993),
            "integers up to 2^64 are exact"
        );
    }

    #[test]
    fn media_types() {
        let parsed = MediaType::parse("Application/JSON ; charset=\"UTF-8\"").unwrap();
        assert_eq!(parsed.essence, "Application/JSON");
        assert!(parsed.is_utf8());
        assert!(
            !MediaType::parse("application/json; charset=utf-16")
                .unwrap()
                .is_utf8()
        );
        assert!(MediaType::parse("json").is_none());
        assert!(MediaType::parse("application/").is_none());
        assert!(MediaType::parse("a b/c").is_none());
    }
}
