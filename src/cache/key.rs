//! What a route puts in its cache key, and the request that fills an entry.

use http::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, HeaderName, TRANSFER_ENCODING};
use http::uri::PathAndQuery;
use http::{HeaderMap, Method, Request, Uri};
use smallvec::SmallVec;

use super::RouteCacheSettings;
use crate::context::RequestContext;
use crate::error::ConfigError;
use crate::validate::RequestParameter;

/// A route's cache settings, compiled: what the key holds beyond the method and the path.
#[derive(Debug)]
pub(crate) struct RoutePolicy {
    pub(super) enabled: Option<bool>,
    pub(super) ttl_seconds: Option<u32>,
    query: Box<[Box<str>]>,
    headers: Box<[HeaderName]>,
    /// Whether the caller (principal, else API key id) is part of the key.
    pub(super) by_caller: bool,
    /// Whether a request without a known caller stays out of the cache (on routes whose
    /// authorizer or API key should have named one).
    pub(super) requires_caller: bool,
}

impl RoutePolicy {
    /// Compiles a route's settings. `route_key` (`GET /pets/{petId}`) checks declared path
    /// parameters against the template; `protected` says the route has an authorizer or
    /// requires an API key (`None` for the standalone layer, which cannot tell, and keys by
    /// whatever caller the request's context names).
    pub(crate) fn compile(
        settings: Option<&RouteCacheSettings>,
        field: &str,
        route_key: Option<&str>,
        protected: Option<bool>,
    ) -> Result<Self, ConfigError> {
        let default = RouteCacheSettings::default();
        let settings = settings.unwrap_or(&default);
        if let Some(ttl) = settings.ttl_seconds
            && ttl > super::MAX_TTL_SECONDS
        {
            return Err(ConfigError::new(
                format!("{field}.ttl_seconds"),
                format!("must be 0–{} seconds", super::MAX_TTL_SECONDS),
            ));
        }
        let mut query = Vec::new();
        let mut headers = Vec::new();
        for parameter in &settings.key_parameters {
            // Checks the name, and that a path parameter is in the template.
            let compiled = parameter.compile(&format!("{field}.key_parameters"), route_key)?;
            match parameter {
                RequestParameter::QueryString(name) => query.push(name.as_str().into()),
                RequestParameter::Header(_) => headers.extend(compiled.header().cloned()),
                // The path is always in the key.
                RequestParameter::Path(_) => {}
            }
        }
        let shared = settings.shared_between_callers;
        Ok(Self {
            enabled: settings.enabled,
            ttl_seconds: settings.ttl_seconds,
            query: query.into(),
            headers: headers.into(),
            by_caller: !shared && protected != Some(false),
            requires_caller: !shared && protected == Some(true),
        })
    }

    /// The key of `request` for `method` (`GET` for a `HEAD`): method, resource and path
    /// parameters (or, without a matched route, the path), the declared query-string
    /// parameters and headers, and the caller. Every part is length-prefixed, so no value can
    /// pass for another part.
    pub(crate) fn key<B>(
        &self,
        method: &Method,
        request: &Request<B>,
        context: &RequestContext,
        caller: Option<&str>,
    ) -> Key {
        let mut key = Key::default();
        key.part(method.as_str().as_bytes());
        match context.route() {
            Some(route) => {
                key.part(route.resource_path().as_bytes());
                for (name, value) in context.path_parameters() {
                    key.part(name.as_bytes());
                    key.part(value.as_bytes());
                }
            }
            None => key.part(request.uri().path().as_bytes()),
        }
        let query = request.uri().query().unwrap_or("");
        for name in &self.query {
            key.tag(b'q');
            key.part(name.as_bytes());
            for (_, value) in form_urlencoded::parse(query.as_bytes())
                .filter(|(parameter, _)| parameter.as_ref() == &**name)
            {
                key.tag(b'=');
                key.part(value.as_bytes());
            }
        }
        for name in &self.headers {
            key.tag(b'h');
            key.part(name.as_str().as_bytes());
            for value in request.headers().get_all(name) {
                key.tag(b'=');
                key.part(value.as_bytes());
            }
        }
        if canary_apart(context) {
            key.tag(b'r');
        }
        match caller {
            Some(caller) => {
                key.tag(b'c');
                key.part(caller.as_bytes());
            }
            None => key.tag(b'-'),
        }
        key
    }

    /// Leaves in `request` only what the key holds (and, on a method with a body, the body's
    /// own headers), so that the response stored for the key depends on nothing else.
    pub(crate) fn strip_for_fill<B>(&self, request: &mut Request<B>, keeps_body: bool) {
        let mut kept = HeaderMap::new();
        let body_headers: &[HeaderName] = if keeps_body {
            &[
                CONTENT_TYPE,
                CONTENT_LENGTH,
                TRANSFER_ENCODING,
                CONTENT_ENCODING,
            ]
        } else {
            &[]
        };
        for name in self.headers.iter().chain(body_headers) {
            for value in request.headers().get_all(name) {
                kept.append(name.clone(), value.clone());
            }
        }
        *request.headers_mut() = kept;

        let uri = request.uri();
        let path = uri.path();
        let mut path_and_query =
            String::with_capacity(uri.path_and_query().map_or(0, |p| p.as_str().len()));
        path_and_query.push_str(path);
        let mut separator = '?';
        for pair in uri.query().unwrap_or("").split('&') {
            let declared = form_urlencoded::parse(pair.as_bytes())
                .next()
                .is_some_and(|(name, _)| self.query.iter().any(|kept| **kept == *name));
            if declared {
                path_and_query.push(separator);
                path_and_query.push_str(pair);
                separator = '&';
            }
        }
        // The scheme and authority (the host) are left out with the rest of the unkeyed input.
        if let Ok(path_and_query) = PathAndQuery::try_from(path_and_query) {
            *request.uri_mut() = Uri::from(path_and_query);
        }
    }
}

/// A cache key as it is built: on the stack for the usual sizes, so a hit allocates nothing
/// for it.
#[derive(Default)]
pub(crate) struct Key(SmallVec<[u8; 128]>);

impl Key {
    fn part(&mut self, bytes: &[u8]) {
        let length = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        self.0.extend_from_slice(&length.to_le_bytes());
        self.0.extend_from_slice(&bytes[..length as usize]);
    }

    fn tag(&mut self, tag: u8) {
        self.0.push(tag);
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// The caller a request's entry belongs to: the principal, else the API key id.
pub(crate) fn caller_of(context: &RequestContext) -> Option<&str> {
    context
        .identity()
        .and_then(|identity| identity.principal_id())
        .or_else(|| context.api_key_id())
}

/// Whether a request's entries are the canary's own: a canary request, unless its stage's
/// canary shares the stage cache.
fn canary_apart(context: &RequestContext) -> bool {
    context.release().is_canary()
        && !context
            .stage()
            .and_then(crate::Stage::canary)
            .is_some_and(|canary| canary.use_stage_cache)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(parameters: &[RequestParameter]) -> RoutePolicy {
        let mut settings = RouteCacheSettings::new();
        for parameter in parameters {
            settings = settings.key_parameter(parameter.clone());
        }
        RoutePolicy::compile(Some(&settings), "cache", None, Some(false)).unwrap()
    }

    fn key_of(policy: &RoutePolicy, uri: &str, headers: &[(&str, &str)]) -> Vec<u8> {
        let mut request = Request::get(uri);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let mut request = request.body(()).unwrap();
        let context = RequestContext::get_or_insert(&mut request);
        policy
            .key(&Method::GET, &request, &context, None)
            .as_bytes()
            .to_vec()
    }

    #[test]
    fn only_declared_inputs_vary_the_key() {
        let policy = policy(&[
            RequestParameter::query("page"),
            RequestParameter::header("accept-language"),
        ]);
        let base = key_of(&policy, "/pets?page=1", &[("accept-language", "en")]);
        assert_eq!(
            base,
            key_of(
                &policy,
                "/pets?page=1&utm=x",
                &[("accept-language", "en"), ("x-forwarded-host", "evil")]
            )
        );
        assert_eq!(
            base,
            key_of(&policy, "/pets?page=%31", &[("accept-language", "en")])
        );
        assert_ne!(
            base,
            key_of(&policy, "/pets?page=2", &[("accept-language", "en")])
        );
        assert_ne!(
            base,
            key_of(&policy, "/pets?page=1", &[("accept-language", "de")])
        );
        assert_ne!(
            base,
            key_of(&policy, "/pets?page=1&page=2", &[("accept-language", "en")])
        );
        assert_ne!(base, key_of(&policy, "/pets", &[("accept-language", "en")]));
    }

    #[test]
    fn values_cannot_pass_for_other_parts() {
        let policy = policy(&[RequestParameter::query("a"), RequestParameter::query("b")]);
        // `a` holding what would be `b`'s part, byte for byte, is another key.
        assert_ne!(
            key_of(&policy, "/x?a=1&b=2", &[]),
            key_of(&policy, "/x?a=1%00%00%00%00b&b=2", &[])
        );
        assert_ne!(
            key_of(&policy, "/x?a=1&a=2", &[]),
            key_of(&policy, "/x?a=1,2", &[])
        );
    }

    #[test]
    fn a_fill_request_keeps_only_what_the_key_holds() {
        let policy = policy(&[
            RequestParameter::query("page"),
            RequestParameter::header("accept-language"),
        ]);
        let mut request = Request::get("http://evil.example/pets?utm=1&page=2&page=3&x=%26")
            .header("accept-language", "en")
            .header("x-forwarded-host", "evil.example")
            .header("x-original-url", "/admin")
            .header("content-type", "text/plain")
            .body(())
            .unwrap();
        policy.strip_for_fill(&mut request, false);
        assert_eq!(request.uri(), "/pets?page=2&page=3");
        assert_eq!(request.headers().len(), 1);
        assert_eq!(request.headers()["accept-language"], "en");

        let mut post = Request::post("/pets")
            .header("content-type", "application/json")
            .header("cookie", "a=b")
            .body(())
            .unwrap();
        policy.strip_for_fill(&mut post, true);
        assert_eq!(post.uri(), "/pets");
        assert_eq!(post.headers().len(), 1);
        assert_eq!(post.headers()["content-type"], "application/json");
    }

    proptest::proptest! {
        #[test]
        fn any_request_gets_a_key_and_a_fill_request(
            query in "[ -~]{0,64}",
            header in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..48),
        ) {
            let policy = policy(&[
                RequestParameter::query("a"),
                RequestParameter::query("&"),
                RequestParameter::header("x-h"),
            ]);
            let Ok(uri) = Uri::try_from(format!("/x?{query}")) else { return Ok(()) };
            let Ok(value) = http::HeaderValue::from_bytes(&header) else { return Ok(()) };
            let mut request = Request::get(uri).header("x-h", value).body(()).unwrap();
            let context = RequestContext::get_or_insert(&mut request);
            let key = policy.key(&Method::GET, &request, &context, Some("caller"));
            proptest::prop_assert!(!key.as_bytes().is_empty());
            policy.strip_for_fill(&mut request, false);
            proptest::prop_assert!(request.headers().len() <= 1);
            // The fill request's query holds only declared pairs.
            for pair in request.uri().query().unwrap_or("").split('&').filter(|p| !p.is_empty()) {
                let name = form_urlencoded::parse(pair.as_bytes()).next().map(|(n, _)| n.into_owned());
                proptest::prop_assert!(matches!(name.as_deref(), Some("a" | "&")), "{pair}");
            }
        }
    }

    #[test]
    fn undeclarable_parameters_are_refused() {
        let settings = RouteCacheSettings::new().key_parameter(RequestParameter::path("id"));
        let error = RoutePolicy::compile(
            Some(&settings),
            "routes[GET /pets].cache",
            Some("GET /pets"),
            None,
        )
        .unwrap_err();
        assert_eq!(
            error.field(),
            "routes[GET /pets].cache.key_parameters[method.request.path.id]"
        );
        let settings =
            RouteCacheSettings::new().key_parameter(RequestParameter::header("bad name"));
        assert!(RoutePolicy::compile(Some(&settings), "cache", None, None).is_err());
        let settings = RouteCacheSettings::new().ttl_seconds(3601);
        let error = RoutePolicy::compile(Some(&settings), "cache", None, None).unwrap_err();
        assert_eq!(error.field(), "cache.ttl_seconds");
    }
}
