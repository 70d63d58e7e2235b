//! Body models: JSON Schemas compiled with the `jsonschema` crate, chosen by media type.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use http::HeaderMap;
use http::header::{CONTENT_ENCODING, CONTENT_TYPE};
use serde::Serialize;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

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

/// The longest `validationErrorString`, in bytes: property names from the body appear in it,
/// and a body of a million unexpected keys must not make a megabyte of detail.
const MAX_DETAIL_BYTES: usize = 1024;

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
        let detail = truncated(detail);
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

/// `detail`, cut at a character boundary to at most [`MAX_DETAIL_BYTES`].
pub(crate) fn truncated(mut detail: String) -> String {
    if detail.len() > MAX_DETAIL_BYTES {
        let mut end = MAX_DETAIL_BYTES - '…'.len_utf8();
        while !detail.is_char_boundary(end) {
            end -= 1;
        }
        detail.truncate(end);
        detail.push('…');
    }
    detail
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
    /// `models` pairs a media type (or `$default`) with its model; `None` when there are
    /// none, so that bodies are not read at all.
    pub(crate) fn new(
        field: &str,
        models: Vec<(&str, Arc<CompiledModel>)>,
    ) -> Result<Option<Self>, ConfigError> {
        if models.is_empty() {
            return Ok(None);
        }
        let mut built = Self {
            by_media_type: Vec::new(),
            default: None,
        };
        for (media_type, model) in models {
            let twice = || {
                ConfigError::new(
                    format!("{field}[{media_type}]"),
                    "a media type has one model (names are case-insensitive)",
                )
            };
            if media_type == "$default" {
                if built.default.replace(model).is_some() {
                    return Err(twice());
                }
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
            let essence = parsed.essence.to_ascii_lowercase();
            if built
                .by_media_type
                .iter()
                .any(|(known, _)| **known == *essence)
            {
                return Err(twice());
            }
            built.by_media_type.push((essence.into(), model));
        }
        Ok(Some(built))
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
        let encoded = headers
            .get_all(CONTENT_ENCODING)
            .iter()
            .any(|coding| !coding.as_bytes().eq_ignore_ascii_case(b"identity"));
        if encoded {
            return Err(unsupported(
                "a compressed body (Content-Encoding) cannot be validated".into(),
            ));
        }
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
///
/// The keys are checked in a pass of their own, which builds nothing, so that the document
/// itself is serde_json's own `Value`, whatever serde_json features the build turned on.
fn parse_strict(bytes: &[u8]) -> Result<Value, String> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err("the body is empty".into());
    }
    let not_json = |error: serde_json::Error| format!("the body is not valid JSON: {error}");
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    UniqueKeys
        .deserialize(&mut deserializer)
        .and_then(|()| deserializer.end())
        .map_err(not_json)?;
    serde_json::from_slice(bytes).map_err(not_json)
}

/// Walks a document, failing on the first object that repeats a key.
#[derive(Clone, Copy)]
struct UniqueKeys;

/// Objects with more keys than this are checked with a hash set rather than a scan.
const SCANNED_KEYS: usize = 16;

impl<'de> DeserializeSeed<'de> for UniqueKeys {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for UniqueKeys {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(self)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut scanned: Vec<Cow<'de, str>> = Vec::new();
        let mut hashed: HashSet<Cow<'de, str>> = HashSet::new();
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            let repeated = if hashed.is_empty() && scanned.len() < SCANNED_KEYS {
                let repeated = scanned.contains(&key);
                scanned.push(key);
                repeated
            } else {
                hashed.extend(scanned.drain(..));
                !hashed.insert(key)
            };
            if repeated {
                return Err(de::Error::custom("a key appears twice in one object"));
            }
            map.next_value_seed(self)?;
        }
        Ok(())
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
        assert!(duplicate.contains("appears twice"), "{duplicate}");
        let many: Vec<String> = (0..40).map(|i| format!("\"k{i}\":{i}")).collect();
        let unique = format!("{{{}}}", many.join(","));
        assert!(parse_strict(unique.as_bytes()).is_ok());
        let repeated = format!("{{{},\"k3\":0}}", many.join(","));
        assert!(
            parse_strict(repeated.as_bytes()).is_err(),
            "found past the scanned keys"
        );
        let escaped = parse_strict(br#"{"a":1,"\u0061":2}"#).unwrap_err();
        assert!(
            escaped.contains("appears twice"),
            "escapes are decoded first"
        );
        assert_eq!(parse_strict(b"-5").unwrap(), Value::from(-5));
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
    fn the_detail_lands_in_the_context_capped_and_masked() {
        let schema = serde_json::json!({
            "type": "object",
            "properties": { "price": { "type": "number", "minimum": 0 } },
            "additionalProperties": false
        });
        let model = CompiledModel::compile("models[m]", "m", &schema, SchemaDraft::Draft4).unwrap();
        let context = RequestContext::get_or_insert(&mut http::Request::new(()));
        let error = model
            .validate(br#"{"price":-987654321}"#, &context)
            .unwrap_err();
        assert_eq!(error.response_type(), GatewayResponseType::BadRequestBody);
        let detail = context.validation_error().unwrap();
        assert!(detail.starts_with("/price: "), "{detail}");
        assert!(!detail.contains("987654321"), "{detail}");

        let extra: Vec<String> = (0..5_000).map(|i| format!("\"unexpected{i}\":1")).collect();
        let body = format!("{{{}}}", extra.join(","));
        let context = RequestContext::get_or_insert(&mut http::Request::new(()));
        assert!(model.validate(body.as_bytes(), &context).is_err());
        let detail = context.validation_error().unwrap();
        assert!(
            detail.len() <= MAX_DETAIL_BYTES && detail.ends_with('…'),
            "{}",
            detail.len()
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
