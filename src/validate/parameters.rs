//! Required request parameters.

use std::fmt;

use http::Request;
use http::header::HeaderName;
use serde::{Deserialize, Deserializer};
use smallvec::SmallVec;

use crate::context::RequestContext;
use crate::error::ConfigError;
use crate::response::{GatewayError, GatewayResponseType};

/// A request parameter a route requires: present and not blank.
///
/// In a [`GatewayConfig`](crate::GatewayConfig) it is written as in API Gateway:
/// `method.request.path.petId`, `method.request.querystring.page`,
/// `method.request.header.x-tenant`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RequestParameter {
    /// A path parameter of the route's template (`{petId}`).
    Path(String),
    /// A query-string parameter, compared after percent-decoding.
    QueryString(String),
    /// A header (names are case-insensitive).
    Header(String),
}

impl RequestParameter {
    /// A path parameter.
    pub fn path(name: impl Into<String>) -> Self {
        Self::Path(name.into())
    }

    /// A query-string parameter.
    pub fn query(name: impl Into<String>) -> Self {
        Self::QueryString(name.into())
    }

    /// A header.
    pub fn header(name: impl Into<String>) -> Self {
        Self::Header(name.into())
    }

    /// Reads API Gateway's form, `method.request.{path|querystring|header}.{name}`.
    pub fn from_api_gateway(expression: &str) -> Result<Self, ConfigError> {
        let invalid = || {
            ConfigError::new(
                format!("required_parameters[{expression}]"),
                "expected method.request.path.NAME, method.request.querystring.NAME or \
                 method.request.header.NAME",
            )
        };
        let rest = expression
            .strip_prefix("method.request.")
            .ok_or_else(invalid)?;
        let (location, name) = rest.split_once('.').ok_or_else(invalid)?;
        if name.is_empty() {
            return Err(invalid());
        }
        match location {
            "path" => Ok(Self::path(name)),
            "querystring" => Ok(Self::query(name)),
            "header" => Ok(Self::header(name)),
            _ => Err(invalid()),
        }
    }

    /// The parameter's name, as listed in the 400 response.
    pub fn name(&self) -> &str {
        match self {
            Self::Path(name) | Self::QueryString(name) | Self::Header(name) => name,
        }
    }

    /// The parameter as checked per request, once it is known it can ever be present: a
    /// name at all, a header name that is one, a path parameter that is in the route's
    /// template (`route_key` as `METHOD /template`).
    pub(crate) fn compile(
        &self,
        field: &str,
        route_key: Option<&str>,
    ) -> Result<Required, ConfigError> {
        let refuse = |rule: String| Err(ConfigError::new(format!("{field}[{self}]"), rule));
        let name: Box<str> = self.name().into();
        let location = match self {
            _ if name.is_empty() => return refuse("the parameter has no name".into()),
            Self::Header(header) => match HeaderName::from_bytes(header.as_bytes()) {
                Ok(header) => Location::Header(header),
                Err(_) => return refuse(format!("`{header}` is not a valid header name")),
            },
            Self::Path(path) => {
                let in_template = route_key.is_none_or(|key| {
                    key.contains(&format!("{{{path}}}")) || key.contains(&format!("{{{path}+}}"))
                });
                if !in_template {
                    return refuse(format!(
                        "the route's template has no `{{{path}}}`, so the parameter could never \
                         be present"
                    ));
                }
                Location::Path
            }
            Self::QueryString(_) => Location::QueryString,
        };
        Ok(Required { name, location })
    }
}

/// A required parameter, ready for requests.
#[derive(Debug)]
pub(crate) struct Required {
    name: Box<str>,
    location: Location,
}

impl Required {
    /// The header's name, for a header parameter.
    pub(crate) fn header(&self) -> Option<&HeaderName> {
        match &self.location {
            Location::Header(name) => Some(name),
            Location::Path | Location::QueryString => None,
        }
    }
}

#[derive(Debug)]
enum Location {
    Path,
    QueryString,
    Header(HeaderName),
}

impl fmt::Display for RequestParameter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let location = match self {
            Self::Path(_) => "path",
            Self::QueryString(_) => "querystring",
            Self::Header(_) => "header",
        };
        write!(f, "method.request.{location}.{}", self.name())
    }
}

impl<'de> Deserialize<'de> for RequestParameter {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let expression = String::deserialize(deserializer)?;
        Self::from_api_gateway(&expression).map_err(serde::de::Error::custom)
    }
}

fn is_blank(value: &[u8]) -> bool {
    value.iter().all(u8::is_ascii_whitespace)
}

/// Rejects the request with every required parameter it lacks, in declaration order.
pub(super) fn check<B>(
    required: &[Required],
    request: &Request<B>,
    context: &RequestContext,
) -> Result<(), GatewayError> {
    let mut present: SmallVec<[bool; 8]> = required
        .iter()
        .map(|parameter| match &parameter.location {
            Location::Path => context
                .path_parameter(&parameter.name)
                .is_some_and(|value| !is_blank(value.as_bytes())),
            Location::Header(name) => request
                .headers()
                .get_all(name)
                .iter()
                .any(|value| !is_blank(value.as_bytes())),
            Location::QueryString => false,
        })
        .collect();
    // One pass over the query string for every query parameter.
    if let Some(query) = request.uri().query() {
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            if is_blank(value.as_bytes()) {
                continue;
            }
            for (parameter, found) in required.iter().zip(present.iter_mut()) {
                if matches!(parameter.location, Location::QueryString) && *parameter.name == *key {
                    *found = true;
                }
            }
        }
    }
    if present.iter().all(|found| *found) {
        return Ok(());
    }
    let missing: Vec<&str> = required
        .iter()
        .zip(&present)
        .filter(|(_, found)| !**found)
        .map(|(parameter, _)| &*parameter.name)
        .collect();
    Err(GatewayError::with_message(
        GatewayResponseType::BadRequestParameters,
        format!(
            "Missing required request parameters: [{}]",
            missing.join(", ")
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_gateway_expressions_parse_and_print_back() {
        for expression in [
            "method.request.path.petId",
            "method.request.querystring.page",
            "method.request.header.x-tenant",
        ] {
            let parameter = RequestParameter::from_api_gateway(expression).unwrap();
            assert_eq!(parameter.to_string(), expression);
        }
        for bad in [
            "",
            "method.request.body.x",
            "method.request.header.",
            "querystring.page",
            "method.request.header",
        ] {
            let error = RequestParameter::from_api_gateway(bad).unwrap_err();
            assert!(error.field().starts_with("required_parameters["), "{bad}");
        }
    }

    #[test]
    fn build_checks_names_and_templates() {
        let field = "routes[GET /pets/{petId}].required_parameters";
        let key = Some("GET /pets/{petId}");
        assert!(RequestParameter::path("petId").compile(field, key).is_ok());
        assert!(
            RequestParameter::path("proxy")
                .compile(field, Some("ANY /{proxy+}"))
                .is_ok()
        );
        let error = RequestParameter::path("id")
            .compile(field, key)
            .unwrap_err();
        assert_eq!(error.field(), format!("{field}[method.request.path.id]"));
        assert!(
            RequestParameter::header("bad header")
                .compile(field, key)
                .is_err()
        );
        assert!(RequestParameter::query("").compile(field, key).is_err());
    }
}
