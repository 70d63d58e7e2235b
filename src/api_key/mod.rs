//! API keys: values held as SHA-256 digests, a store that can change at runtime, and the
//! layer that checks the key a request presents.
//!
//! A key has an id, a name, a value of 20–128 visible ASCII characters, an enabled flag and
//! optional metadata (customer id, description). The store keeps only the SHA-256 digest of
//! each value and finds keys by the digest of what a request presents, so values are never
//! compared byte by byte, never logged and never echoed: `Debug` output, errors and the
//! [`RequestContext`](crate::RequestContext) carry the key's id, not its value.
//!
//! Keys come from code ([`ApiKey::new`]), are generated ([`ApiKey::generate`], 40 characters
//! from the operating system's random source), are imported from API Gateway's CSV format
//! ([`InMemoryApiKeyStore::import_csv`]) or from the declarative configuration. The
//! [`InMemoryApiKeyStore`] can add, disable, enable and delete keys while the gateway runs.
//!
//! [`ApiKeyLayer`] checks keys on its own; [`GatewayBuilder::api_key_store`] puts the same
//! check in the gateway, where it applies to the routes marked
//! [`api_key_required`](crate::Route::api_key_required).
//!
//! Missing, malformed, unknown or disabled keys get 403 `{"message":"Forbidden"}`
//! (`INVALID_API_KEY`), as from API Gateway. When the gateway has [usage
//! plans](crate::usage_plan), a key must also be in a plan for the request's stage; without
//! plans, an enabled key is accepted on every stage.
//!
//! [`GatewayBuilder::api_key_store`]: crate::GatewayBuilder::api_key_store
//!
//! # Example
//!
//! ```
//! use http::{Request, Response, StatusCode};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_gateway::api_key::{ApiKey, ApiKeyLayer, InMemoryApiKeyStore};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let store = InMemoryApiKeyStore::new();
//! let (key, value) = ApiKey::generate("demo");
//! store.insert(key).unwrap();
//!
//! let service = ServiceBuilder::new()
//!     .layer(ApiKeyLayer::builder(store.clone()).build().unwrap())
//!     .service(service_fn(|_request: Request<String>| async {
//!         Ok::<_, std::convert::Infallible>(Response::new(String::from("hello")))
//!     }));
//!
//! let with_key = Request::builder().header("x-api-key", &value).body(String::new()).unwrap();
//! assert_eq!(service.clone().oneshot(with_key).await.unwrap().status(), StatusCode::OK);
//!
//! let without = Request::new(String::new());
//! assert_eq!(service.oneshot(without).await.unwrap().status(), StatusCode::FORBIDDEN);
//! # }
//! ```

mod layer;
mod store;

use std::fmt;

use rand::SeedableRng;
use rand::distr::{Alphanumeric, SampleString};
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub(crate) use layer::{ApiKeyCheck, DEFAULT_HEADER, key_header};
pub use layer::{ApiKeyLayer, ApiKeyLayerBuilder, ApiKeyService};
pub use store::{ApiKeyInfo, ApiKeyStore, InMemoryApiKeyStore};

use crate::error::{ConfigError, is_identifier};

/// The shortest key value API Gateway accepts.
pub const MIN_KEY_LENGTH: usize = 20;
/// The longest key value API Gateway accepts.
pub const MAX_KEY_LENGTH: usize = 128;
const GENERATED_KEY_LENGTH: usize = 40;
const GENERATED_ID_LENGTH: usize = 10;

/// The SHA-256 digest of a key value: how keys are stored and found.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeyDigest([u8; 32]);

impl KeyDigest {
    /// The digest of `value`.
    #[inline]
    pub fn of(value: &[u8]) -> Self {
        Self(Sha256::digest(value).into())
    }

    /// A digest written as 64 hexadecimal digits (`sha256sum`'s output), for configurations
    /// that should not hold raw key values.
    pub fn from_hex(hex: &str) -> Option<Self> {
        if hex.len() != 64 {
            return None;
        }
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let mut digest = [0u8; 32];
        for (byte, pair) in digest.iter_mut().zip(hex.as_bytes().chunks(2)) {
            let text = std::str::from_utf8(pair).ok()?;
            *byte = u8::from_str_radix(text, 16).ok()?;
        }
        Some(Self(digest))
    }
}

impl fmt::Debug for KeyDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A prefix is enough to tell digests apart in logs without making them useful.
        write!(
            f,
            "KeyDigest({:02x}{:02x}{:02x}{:02x}…)",
            self.0[0], self.0[1], self.0[2], self.0[3]
        )
    }
}

/// Where the gateway finds the key of a request (API Gateway's `apiKeySource`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ApiKeySource {
    /// A request header, `x-api-key` unless configured otherwise.
    #[default]
    Header,
    /// The usage identifier an authorizer recorded: in the gateway, a
    /// [custom authorizer's](crate::authorizer::custom::AuthorizerResponse::usage_identifier_key)
    /// (every route that requires a key then needs one); in front of an
    /// [`ApiKeyLayer`], a layer of yours calling
    /// [`RequestContext::set_usage_identifier_key`](crate::RequestContext::set_usage_identifier_key).
    Authorizer,
}

/// Whether `value` is an acceptable key value: 20–128 visible ASCII characters.
#[inline]
pub(crate) fn valid_key_value(value: &[u8]) -> bool {
    // A fold without an early exit, so that the compiler checks many bytes per instruction:
    // this runs on every keyed request.
    (MIN_KEY_LENGTH..=MAX_KEY_LENGTH).contains(&value.len())
        && value
            .iter()
            .fold(true, |graphic, b| graphic & b.is_ascii_graphic())
}

#[derive(Clone)]
enum KeyValue {
    Raw(String),
    Digest(KeyDigest),
}

/// A key to add to a store.
#[derive(Clone)]
#[must_use]
pub struct ApiKey {
    id: Option<String>,
    name: String,
    value: KeyValue,
    enabled: bool,
    customer_id: Option<String>,
    description: Option<String>,
}

impl ApiKey {
    /// A key called `name` with the value `value` (checked when it is inserted in a store).
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Self {
        Self::with_value(name.into(), KeyValue::Raw(value.into()))
    }

    /// A key known only by the digest of its value, e.g. from a configuration file that holds
    /// no secrets.
    pub fn from_digest(name: impl Into<String>, digest: KeyDigest) -> Self {
        Self::with_value(name.into(), KeyValue::Digest(digest))
    }

    /// A new key with a random 40-character value, returned beside it: the store keeps only
    /// the digest, so this is the one time the value can be shown.
    pub fn generate(name: impl Into<String>) -> (Self, String) {
        let value = Alphanumeric.sample_string(&mut StdRng::from_os_rng(), GENERATED_KEY_LENGTH);
        (Self::new(name, value.clone()), value)
    }

    fn with_value(name: String, value: KeyValue) -> Self {
        Self {
            id: None,
            name,
            value,
            enabled: true,
            customer_id: None,
            description: None,
        }
    }

    /// The key's id (1–64 letters, digits, `-` and `_`); one is generated when none is given.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Whether the key is accepted (default true).
    pub fn enabled(mut self, enabled: bool) -> Self {
        self.enabled = enabled;
        self
    }

    /// The customer the key belongs to (API Gateway's `customerId`).
    pub fn customer_id(mut self, customer_id: impl Into<String>) -> Self {
        self.customer_id = Some(customer_id.into());
        self
    }

    /// A description.
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = Some(description.into());
        self
    }

    /// Checks the fields and turns the value into its digest.
    fn into_parts(self) -> Result<(KeyDigest, ApiKeyInfo), ConfigError> {
        let id = match self.id {
            Some(id) => id,
            None => Alphanumeric
                .sample_string(&mut StdRng::from_os_rng(), GENERATED_ID_LENGTH)
                .to_ascii_lowercase(),
        };
        let id_ok = is_identifier(&id, 64);
        if !id_ok {
            return Err(ConfigError::new(
                format!("api_keys[{}].id", id.escape_debug()),
                "an id is 1–64 letters, digits, `-` and `_`",
            ));
        }
        let field = |name: &str| format!("api_keys[{id}].{name}");
        if self.name.is_empty() || self.name.len() > 1024 {
            return Err(ConfigError::new(
                field("name"),
                "a name is 1–1024 characters",
            ));
        }
        let digest = match self.value {
            KeyValue::Raw(value) if valid_key_value(value.as_bytes()) => {
                KeyDigest::of(value.as_bytes())
            }
            KeyValue::Raw(_) => {
                return Err(ConfigError::new(
                    field("value"),
                    "a key value is 20–128 visible ASCII characters",
                ));
            }
            KeyValue::Digest(digest) => digest,
        };
        Ok((
            digest,
            ApiKeyInfo::new(
                id,
                self.name,
                self.enabled,
                self.customer_id,
                self.description,
            ),
        ))
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKey")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("value", &"<redacted>")
            .field("enabled", &self.enabled)
            .field("customer_id", &self.customer_id)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_and_hex() {
        let digest = KeyDigest::of(b"abc");
        let hex = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(KeyDigest::from_hex(hex), Some(digest));
        assert_eq!(KeyDigest::from_hex(&hex.to_uppercase()), Some(digest));
        assert_eq!(KeyDigest::from_hex("abc"), None);
        assert_eq!(KeyDigest::from_hex(&"zz".repeat(32)), None);
        assert_eq!(KeyDigest::from_hex(&"é".repeat(32)), None);
        assert_eq!(
            KeyDigest::from_hex(&"+a".repeat(32)),
            None,
            "from_str_radix takes a sign"
        );
        assert_eq!(format!("{digest:?}"), "KeyDigest(ba7816bf…)");
    }

    #[test]
    fn generated_keys_are_long_random_and_valid() {
        let (first, first_value) = ApiKey::generate("a");
        let (_, second_value) = ApiKey::generate("b");
        assert_eq!(first_value.len(), 40);
        assert_ne!(first_value, second_value);
        assert!(valid_key_value(first_value.as_bytes()));
        let (digest, info) = first.into_parts().unwrap();
        assert_eq!(digest, KeyDigest::of(first_value.as_bytes()));
        assert_eq!(info.id().len(), 10);
    }

    #[test]
    fn values_are_checked_and_never_shown() {
        let secret = "this-is-a-secret-value-1234";
        let key = ApiKey::new("demo", secret).id("k1");
        assert!(!format!("{key:?}").contains(secret));
        for bad in [
            "short",
            &"x".repeat(129),
            "has a space in it here!",
            "é-non-ascii-0123456789",
        ] {
            let error = ApiKey::new("demo", bad).id("k1").into_parts().unwrap_err();
            assert_eq!(error.field(), "api_keys[k1].value");
            assert!(!error.to_string().contains(bad));
        }
        let bad_id = ApiKey::new("demo", secret)
            .id("no spaces")
            .into_parts()
            .unwrap_err();
        assert_eq!(bad_id.field(), "api_keys[no spaces].id");
        let no_name = ApiKey::new("", secret).id("k1").into_parts().unwrap_err();
        assert_eq!(no_name.field(), "api_keys[k1].name");
        assert!(valid_key_value(&[b'a'; 20]));
        assert!(valid_key_value(&[b'a'; 128]));
    }
}
