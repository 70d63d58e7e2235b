//! Token verification, claim checks and the verified-token cache.

use std::fmt;
use std::hash::BuildHasher;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::HeaderMap;
use http::header::{AUTHORIZATION, HeaderName, HeaderValue, WWW_AUTHENTICATE};
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use quick_cache::Weighter;
use serde_json::{Map, Value};

use super::remote::{
    FetchSettings, JwksError, JwksFetcher, Reason, RemoteKeys, RemoteSource, check_url, clock_nanos,
};
use crate::authorizer::{Authorization, Authorized, Identity};
use crate::clock::GatewayClock;
use crate::error::ConfigError;
use crate::response::{GatewayError, GatewayResponseType};

const COGNITO_GROUPS: &str = "cognito:groups";

/// A Cognito user pool id, as API Gateway documents it.
static COGNITO_POOL_ID: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
    regex::Regex::new(r"^[a-z]{2}-(gov-)?[a-z]+-\d_[A-Za-z0-9]+$").expect("a valid pattern")
});

/// Tokens longer than this are refused before any decoding.
const MAX_TOKEN_BYTES: usize = 8 * 1024;
const DEFAULT_LEEWAY: Duration = Duration::from_secs(60);
const MAX_LEEWAY: Duration = Duration::from_secs(300);
const DEFAULT_CACHE_BYTES: u64 = 16 * 1024 * 1024;
// API Gateway's figures: a 1.5 s timeout, 150 kB bodies, keys cached for up to an hour.
const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_millis(1500);
const DEFAULT_MAX_JWKS_BYTES: usize = 150_000;
const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(60 * 60);
const DEFAULT_UNKNOWN_KID_COOLDOWN: Duration = Duration::from_secs(30);
/// What a cache entry costs besides its token and decoded claims (which are about as large as
/// the token): the identity, the scopes, the cache's own bookkeeping.
const ENTRY_OVERHEAD_BYTES: u64 = 512;
/// An entry's weight for a token of about 500 bytes, to size the cache's table.
const TYPICAL_ENTRY_BYTES: u64 = 1536;

/// A signature algorithm a [`JwtAuthorizer`] can accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize)]
#[non_exhaustive]
#[allow(clippy::upper_case_acronyms)]
pub enum JwtAlgorithm {
    /// HMAC with SHA-256.
    HS256,
    /// HMAC with SHA-384.
    HS384,
    /// HMAC with SHA-512.
    HS512,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    RS384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    RS512,
    /// RSASSA-PSS with SHA-256.
    PS256,
    /// RSASSA-PSS with SHA-384.
    PS384,
    /// RSASSA-PSS with SHA-512.
    PS512,
    /// ECDSA on P-256 with SHA-256.
    ES256,
    /// ECDSA on P-384 with SHA-384.
    ES384,
    /// Ed25519.
    EdDSA,
}

impl JwtAlgorithm {
    pub(crate) fn is_hmac(self) -> bool {
        matches!(self, Self::HS256 | Self::HS384 | Self::HS512)
    }

    const ALL: [Self; 12] = [
        Self::HS256,
        Self::HS384,
        Self::HS512,
        Self::RS256,
        Self::RS384,
        Self::RS512,
        Self::PS256,
        Self::PS384,
        Self::PS512,
        Self::ES256,
        Self::ES384,
        Self::EdDSA,
    ];

    fn to_jwt(self) -> Algorithm {
        match self {
            Self::HS256 => Algorithm::HS256,
            Self::HS384 => Algorithm::HS384,
            Self::HS512 => Algorithm::HS512,
            Self::RS256 => Algorithm::RS256,
            Self::RS384 => Algorithm::RS384,
            Self::RS512 => Algorithm::RS512,
            Self::PS256 => Algorithm::PS256,
            Self::PS384 => Algorithm::PS384,
            Self::PS512 => Algorithm::PS512,
            Self::ES256 => Algorithm::ES256,
            Self::ES384 => Algorithm::ES384,
            Self::EdDSA => Algorithm::EdDSA,
        }
    }

    /// The signature algorithm a JWK's `alg` names; `None` for encryption algorithms.
    fn from_key_algorithm(algorithm: KeyAlgorithm) -> Option<Self> {
        Some(match algorithm {
            KeyAlgorithm::HS256 => Self::HS256,
            KeyAlgorithm::HS384 => Self::HS384,
            KeyAlgorithm::HS512 => Self::HS512,
            KeyAlgorithm::RS256 => Self::RS256,
            KeyAlgorithm::RS384 => Self::RS384,
            KeyAlgorithm::RS512 => Self::RS512,
            KeyAlgorithm::PS256 => Self::PS256,
            KeyAlgorithm::PS384 => Self::PS384,
            KeyAlgorithm::PS512 => Self::PS512,
            KeyAlgorithm::ES256 => Self::ES256,
            KeyAlgorithm::ES384 => Self::ES384,
            KeyAlgorithm::EdDSA => Self::EdDSA,
            _ => return None,
        })
    }
}

/// One verification key and the algorithms it verifies.
pub(crate) struct VerificationKey {
    pub(crate) kid: Option<String>,
    pub(crate) algorithms: Vec<JwtAlgorithm>,
    key: DecodingKey,
    /// The JWK as published (empty for keys from PEM or a secret): two fetches hold the same
    /// key only when this is the same, whatever the `kid`.
    pub(crate) fingerprint: String,
}

enum KeySource {
    Jwks(String),
    Pem {
        kid: Option<String>,
        algorithm: JwtAlgorithm,
        pem: Vec<u8>,
    },
    Secret {
        kid: Option<String>,
        algorithm: JwtAlgorithm,
        secret: Vec<u8>,
    },
}

/// Builds a [`JwtAuthorizer`]; see the [module docs](super) for what it checks.
#[must_use]
pub struct JwtAuthorizerBuilder {
    issuers: Vec<String>,
    audiences: Vec<String>,
    algorithms: Option<Vec<JwtAlgorithm>>,
    leeway: Duration,
    required_claims: Vec<String>,
    require_exp: bool,
    identity_header: String,
    keys: Vec<KeySource>,
    remote: Option<RemoteSource>,
    fetcher: Option<Box<dyn JwksFetcher>>,
    fetch: FetchSettings,
    cache_bytes: u64,
    clock: Option<GatewayClock>,
    groups_claim: String,
    /// The user pool id of a Cognito preset, checked at build.
    cognito: Option<String>,
}

impl fmt::Debug for JwtAuthorizerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Keys and secrets stay out of debug output.
        f.debug_struct("JwtAuthorizerBuilder")
            .field("issuers", &self.issuers)
            .field("audiences", &self.audiences)
            .field("keys", &self.keys.len())
            .field("remote", &self.remote.is_some())
            .finish_non_exhaustive()
    }
}

impl JwtAuthorizerBuilder {
    fn new() -> Self {
        Self {
            issuers: Vec::new(),
            audiences: Vec::new(),
            algorithms: None,
            leeway: DEFAULT_LEEWAY,
            required_claims: Vec::new(),
            require_exp: true,
            identity_header: AUTHORIZATION.as_str().to_owned(),
            keys: Vec::new(),
            remote: None,
            fetcher: None,
            fetch: FetchSettings {
                timeout: DEFAULT_FETCH_TIMEOUT,
                max_bytes: DEFAULT_MAX_JWKS_BYTES,
                refresh_interval: DEFAULT_REFRESH_INTERVAL,
                cooldown: DEFAULT_UNKNOWN_KID_COOLDOWN,
            },
            cache_bytes: DEFAULT_CACHE_BYTES,
            clock: None,
            groups_claim: COGNITO_GROUPS.to_owned(),
            cognito: None,
        }
    }

    /// The claim a route's [groups](crate::Route::authorization_groups) are read from (an
    /// array of strings, or a space-separated string); `cognito:groups` by default.
    pub fn groups_claim(mut self, claim: impl Into<String>) -> Self {
        self.groups_claim = claim.into();
        self
    }

    /// Keys fetched from a JWKS URL (the first time a token needs them), refreshed in the
    /// background every [`refresh_interval`](Self::refresh_interval), and refetched when a
    /// token names an unknown `kid` (at most once per
    /// [`unknown_kid_cooldown`](Self::unknown_kid_cooldown)). A failed fetch keeps the last
    /// good keys. Replaces an earlier [`oidc_discovery`](Self::oidc_discovery).
    pub fn jwks_url(mut self, url: impl Into<String>) -> Self {
        self.remote = Some(RemoteSource::JwksUrl(url.into()));
        self
    }

    /// Keys found through the issuer's OIDC discovery document
    /// (`{issuer}/.well-known/openid-configuration`, whose `issuer` must be exactly `issuer`
    /// and whose `jwks_uri` is then fetched as with [`jwks_url`](Self::jwks_url)). The issuer
    /// is accepted in `iss` too. Replaces an earlier `jwks_url`.
    pub fn oidc_discovery(mut self, issuer: impl Into<String>) -> Self {
        let issuer = issuer.into();
        if !self.issuers.contains(&issuer) {
            self.issuers.push(issuer.clone());
        }
        self.remote = Some(RemoteSource::Discovery { issuer });
        self
    }

    /// The HTTP client for remote keys (by default hyper-util's, with the `http-client`
    /// feature; HTTPS needs the `rustls` feature too).
    pub fn fetcher(mut self, fetcher: impl JwksFetcher) -> Self {
        self.fetcher = Some(Box::new(fetcher));
        self
    }

    /// How long one fetch may take, connection included (1.5 s by default, as API Gateway).
    pub fn fetch_timeout(mut self, timeout: Duration) -> Self {
        self.fetch.timeout = timeout;
        self
    }

    /// The largest JWKS or discovery document accepted (150,000 bytes by default, as API
    /// Gateway).
    pub fn max_jwks_bytes(mut self, bytes: usize) -> Self {
        self.fetch.max_bytes = bytes;
        self
    }

    /// How old remote keys may get before a request starts a background refresh (an hour by
    /// default, as API Gateway).
    pub fn refresh_interval(mut self, interval: Duration) -> Self {
        self.fetch.refresh_interval = interval;
        self
    }

    /// The least time between two fetches, so that tokens with made-up `kid`s cannot make the
    /// gateway hammer the key server (30 s by default).
    pub fn unknown_kid_cooldown(mut self, cooldown: Duration) -> Self {
        self.fetch.cooldown = cooldown;
        self
    }

    /// Accepts tokens whose `iss` is exactly `issuer` (at least one is required).
    pub fn issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuers.push(issuer.into());
        self
    }

    /// Accepts tokens whose `aud` holds `audience`, or whose `client_id` is `audience` when
    /// they have no `aud` (at least one is required).
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audiences.push(audience.into());
        self
    }

    /// The algorithms accepted; by default every algorithm the configured keys can verify.
    pub fn algorithms(mut self, algorithms: impl IntoIterator<Item = JwtAlgorithm>) -> Self {
        self.algorithms = Some(algorithms.into_iter().collect());
        self
    }

    /// How far `exp`, `nbf` and `iat` may be off, for clocks that disagree (60 s by default,
    /// at most 5 minutes).
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    /// A claim every token must have.
    pub fn required_claim(mut self, claim: impl Into<String>) -> Self {
        self.required_claims.push(claim.into());
        self
    }

    /// Whether tokens without `exp` are refused (true by default, as in API Gateway).
    pub fn require_exp(mut self, require: bool) -> Self {
        self.require_exp = require;
        self
    }

    /// The header the token is read from (`Authorization` by default), bare or after
    /// `Bearer `.
    pub fn identity_header(mut self, name: impl Into<String>) -> Self {
        self.identity_header = name.into();
        self
    }

    /// Verification keys from a JWKS document (`{"keys":[…]}`). Keys marked `"use":"enc"`
    /// are skipped.
    pub fn jwks_json(mut self, jwks: impl Into<String>) -> Self {
        self.keys.push(KeySource::Jwks(jwks.into()));
        self
    }

    /// A PEM public key (RSA, EC or Ed25519) for `algorithm`, used for tokens without `kid`.
    pub fn pem_key(self, algorithm: JwtAlgorithm, pem: impl AsRef<[u8]>) -> Self {
        self.push_pem(None, algorithm, pem.as_ref())
    }

    /// A PEM public key for `algorithm`, used for tokens whose `kid` is `kid`.
    pub fn pem_key_with_id(
        self,
        kid: impl Into<String>,
        algorithm: JwtAlgorithm,
        pem: impl AsRef<[u8]>,
    ) -> Self {
        self.push_pem(Some(kid.into()), algorithm, pem.as_ref())
    }

    fn push_pem(mut self, kid: Option<String>, algorithm: JwtAlgorithm, pem: &[u8]) -> Self {
        self.keys.push(KeySource::Pem {
            kid,
            algorithm,
            pem: pem.to_vec(),
        });
        self
    }

    /// An HMAC secret for `algorithm` (`HS256`, `HS384` or `HS512`), at least as long as the
    /// hash (32, 48 or 64 bytes).
    pub fn hmac_secret(mut self, algorithm: JwtAlgorithm, secret: impl AsRef<[u8]>) -> Self {
        self.keys.push(KeySource::Secret {
            kid: None,
            algorithm,
            secret: secret.as_ref().to_vec(),
        });
        self
    }

    /// The most memory the verified-token cache may hold (16 MiB by default; 0 turns the cache
    /// off).
    pub fn token_cache_bytes(mut self, bytes: u64) -> Self {
        self.cache_bytes = bytes;
        self
    }

    /// The clock for `exp`, `nbf` and `iat` (the system clock by default).
    pub fn clock(mut self, clock: GatewayClock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Checks the configuration and builds the authorizer.
    pub fn build(self) -> Result<JwtAuthorizer, ConfigError> {
        install_crypto_provider();
        if let Some(pool) = &self.cognito
            && !COGNITO_POOL_ID.is_match(pool)
        {
            return Err(ConfigError::new(
                "jwt.cognito.user_pool_id",
                "not a user pool id (`{region}_{id}`, e.g. `eu-west-1_AbC123`)",
            ));
        }
        if self.leeway > MAX_LEEWAY {
            return Err(ConfigError::new(
                "jwt.leeway",
                "at most 5 minutes: more would accept tokens long expired",
            ));
        }
        if self.groups_claim.is_empty() {
            return Err(ConfigError::new("jwt.groups_claim", "must not be empty"));
        }
        if self.issuers.is_empty() || self.issuers.iter().any(String::is_empty) {
            return Err(ConfigError::new(
                "jwt.issuer",
                "at least one non-empty issuer is required",
            ));
        }
        if self.audiences.is_empty() || self.audiences.iter().any(String::is_empty) {
            return Err(ConfigError::new(
                "jwt.audience",
                "at least one non-empty audience is required",
            ));
        }
        let identity_header = HeaderName::try_from(self.identity_header.as_str())
            .map_err(|_| ConfigError::new("jwt.identity_header", "not a valid header name"))?;
        if self.algorithms.as_ref().is_some_and(Vec::is_empty) {
            return Err(ConfigError::new(
                "jwt.algorithms",
                "at least one algorithm is required",
            ));
        }
        let mut keys = Vec::new();
        for (index, source) in self.keys.into_iter().enumerate() {
            keys.extend(keys_of(source, index)?);
        }
        if let Some(allowed) = &self.algorithms {
            for key in &mut keys {
                key.algorithms
                    .retain(|algorithm| allowed.contains(algorithm));
            }
            keys.retain(|key| !key.algorithms.is_empty());
        }
        let remote = match self.remote {
            Some(source) => Some(remote_keys(
                source,
                self.fetcher,
                self.algorithms.clone(),
                self.fetch,
            )?),
            None => None,
        };
        if keys.is_empty() && remote.is_none() {
            return Err(ConfigError::new(
                "jwt.keys",
                "no key that verifies an accepted algorithm is configured",
            ));
        }
        let cache = (self.cache_bytes > 0).then(|| {
            TokenCache::with(
                usize::try_from(self.cache_bytes / TYPICAL_ENTRY_BYTES)
                    .unwrap_or(usize::MAX)
                    .max(1),
                self.cache_bytes,
                TokenWeighter,
                foldhash::fast::RandomState::default(),
                quick_cache::sync::DefaultLifecycle::default(),
            )
        });
        Ok(JwtAuthorizer {
            inner: Arc::new(Inner {
                issuers: self.issuers,
                audiences: self.audiences,
                leeway: self.leeway.as_secs_f64(),
                required_claims: self.required_claims,
                require_exp: self.require_exp,
                identity_header,
                keys,
                remote,
                groups_claim: self.groups_claim,
                cognito: self.cognito.is_some(),
                key_generation: AtomicU64::new(0),
                cache,
                hasher: foldhash::fast::RandomState::default(),
                clock: self.clock.unwrap_or_default(),
            }),
        })
    }
}

/// jsonwebtoken verifies with a process-wide crypto provider. This crate enables the RustCrypto
/// backend; installing it explicitly keeps verification working (instead of panicking) when
/// another crate in the program also enables the aws-lc backend. If the program installed a
/// provider first, that one is used.
fn install_crypto_provider() {
    let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
}

fn remote_keys(
    source: RemoteSource,
    fetcher: Option<Box<dyn JwksFetcher>>,
    allowed: Option<Vec<JwtAlgorithm>>,
    settings: FetchSettings,
) -> Result<RemoteKeys, ConfigError> {
    let (field, url) = match &source {
        RemoteSource::JwksUrl(url) => ("jwt.jwks_url", url.as_str()),
        RemoteSource::Discovery { issuer } => ("jwt.oidc_discovery", issuer.as_str()),
    };
    check_url(url).map_err(|rule| ConfigError::new(field, rule))?;
    if settings.timeout.is_zero() {
        return Err(ConfigError::new(
            "jwt.fetch_timeout",
            "must be more than zero",
        ));
    }
    if settings.max_bytes == 0 {
        return Err(ConfigError::new(
            "jwt.max_jwks_bytes",
            "must be more than zero",
        ));
    }
    if settings.refresh_interval < settings.cooldown {
        return Err(ConfigError::new(
            "jwt.refresh_interval",
            "must be at least the unknown-kid cool-down",
        ));
    }
    let fetcher = match fetcher {
        Some(fetcher) => fetcher,
        None => default_fetcher(field, url)?,
    };
    Ok(RemoteKeys::new(source, fetcher, allowed, settings))
}

#[cfg(feature = "http-client")]
fn default_fetcher(field: &str, url: &str) -> Result<Box<dyn JwksFetcher>, ConfigError> {
    if url.starts_with("https:") && cfg!(not(feature = "rustls")) {
        return Err(ConfigError::new(
            field,
            "an https URL needs the `rustls` feature, or a fetcher of your own",
        ));
    }
    let fetcher = super::remote::client::HyperFetcher::new().map_err(|error| {
        ConfigError::new(
            field,
            format!("the HTTP client could not be set up: {error}"),
        )
    })?;
    Ok(Box::new(fetcher))
}

#[cfg(not(feature = "http-client"))]
fn default_fetcher(field: &str, _url: &str) -> Result<Box<dyn JwksFetcher>, ConfigError> {
    Err(ConfigError::new(
        field,
        "remote keys need the `http-client` feature, or a fetcher of your own",
    ))
}

fn key_error(index: usize, rule: impl Into<String>) -> ConfigError {
    ConfigError::new(format!("jwt.keys[{index}]"), rule)
}

fn keys_of(source: KeySource, index: usize) -> Result<Vec<VerificationKey>, ConfigError> {
    match source {
        KeySource::Jwks(json) => {
            let set: JwkSet = serde_json::from_str(&json)
                .map_err(|error| key_error(index, format!("not a JWKS document: {error}")))?;
            let mut keys = Vec::new();
            for (position, jwk) in set.keys.iter().enumerate() {
                if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
                    continue;
                }
                keys.push(jwk_key(jwk).map_err(|rule| {
                    ConfigError::new(format!("jwt.keys[{index}].keys[{position}]"), rule)
                })?);
            }
            Ok(keys)
        }
        KeySource::Pem {
            kid,
            algorithm,
            pem,
        } => {
            let key = match algorithm {
                JwtAlgorithm::RS256
                | JwtAlgorithm::RS384
                | JwtAlgorithm::RS512
                | JwtAlgorithm::PS256
                | JwtAlgorithm::PS384
                | JwtAlgorithm::PS512 => DecodingKey::from_rsa_pem(&pem),
                JwtAlgorithm::ES256 | JwtAlgorithm::ES384 => DecodingKey::from_ec_pem(&pem),
                JwtAlgorithm::EdDSA => DecodingKey::from_ed_pem(&pem),
                _ => {
                    return Err(key_error(
                        index,
                        "a PEM key verifies RS*, PS*, ES* or EdDSA tokens",
                    ));
                }
            }
            .map_err(|_| key_error(index, format!("not a PEM public key for {algorithm:?}")))?;
            Ok(vec![VerificationKey {
                kid,
                algorithms: vec![algorithm],
                key,
                fingerprint: String::new(),
            }])
        }
        KeySource::Secret {
            kid,
            algorithm,
            secret,
        } => {
            let minimum = match algorithm {
                JwtAlgorithm::HS256 => 32,
                JwtAlgorithm::HS384 => 48,
                JwtAlgorithm::HS512 => 64,
                _ => return Err(key_error(index, "a secret verifies HS* tokens only")),
            };
            if secret.len() < minimum {
                return Err(key_error(
                    index,
                    format!("an {algorithm:?} secret needs at least {minimum} bytes"),
                ));
            }
            Ok(vec![VerificationKey {
                kid,
                algorithms: vec![algorithm],
                key: DecodingKey::from_secret(&secret),
                fingerprint: String::new(),
            }])
        }
    }
}

pub(crate) fn jwk_key(jwk: &Jwk) -> Result<VerificationKey, String> {
    let by_type: Vec<JwtAlgorithm> = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => vec![
            JwtAlgorithm::RS256,
            JwtAlgorithm::RS384,
            JwtAlgorithm::RS512,
            JwtAlgorithm::PS256,
            JwtAlgorithm::PS384,
            JwtAlgorithm::PS512,
        ],
        AlgorithmParameters::EllipticCurve(params) => match params.curve {
            EllipticCurve::P256 => vec![JwtAlgorithm::ES256],
            EllipticCurve::P384 => vec![JwtAlgorithm::ES384],
            _ => return Err("only P-256 and P-384 EC keys are supported".into()),
        },
        AlgorithmParameters::OctetKeyPair(params) => {
            if params.curve != EllipticCurve::Ed25519 {
                return Err("only Ed25519 OKP keys are supported".into());
            }
            // A short `x` would make the RustCrypto backend panic at verification time.
            let x = URL_SAFE_NO_PAD
                .decode(params.x.trim_end_matches('='))
                .map_err(|_| "the key's `x` is not base64url")?;
            if x.len() != 32 {
                return Err("an Ed25519 key's `x` must be 32 bytes".into());
            }
            vec![JwtAlgorithm::EdDSA]
        }
        AlgorithmParameters::OctetKey(_) => {
            vec![
                JwtAlgorithm::HS256,
                JwtAlgorithm::HS384,
                JwtAlgorithm::HS512,
            ]
        }
        _ => return Err("unsupported key type".into()),
    };
    let algorithms = match jwk.common.key_algorithm {
        None => by_type,
        Some(declared) => {
            let declared = JwtAlgorithm::from_key_algorithm(declared)
                .ok_or("the key's `alg` is not a signature algorithm this authorizer supports")?;
            if !by_type.contains(&declared) {
                return Err("the key's `alg` does not fit its key type".into());
            }
            vec![declared]
        }
    };
    let key = DecodingKey::from_jwk(jwk).map_err(|error| format!("unusable key: {error}"))?;
    Ok(VerificationKey {
        kid: jwk.common.key_id.clone(),
        algorithms,
        key,
        fingerprint: serde_json::to_string(jwk).unwrap_or_default(),
    })
}

/// A verified token, as cached.
struct VerifiedToken {
    token: Box<str>,
    identity: Identity,
    scopes: Box<[Box<str>]>,
    groups: Box<[Box<str>]>,
    token_use: Option<Box<str>>,
    /// `exp`, Unix seconds, with the leeway added.
    valid_until: Option<f64>,
    /// The key generation it was verified in: a key withdrawal makes it stale.
    key_generation: u64,
}

/// Verified tokens by a hash of their signature. quick_cache rather than moka here: a hit is
/// on every request of a route with a JWT, and its lookups cost a fraction of moka's. It has
/// no per-entry expiry; a hit past `valid_until` is refused and removed, and capacity evicts
/// the rest.
type TokenCache =
    quick_cache::sync::Cache<u64, Arc<VerifiedToken>, TokenWeighter, foldhash::fast::RandomState>;

#[derive(Clone)]
struct TokenWeighter;

impl Weighter<u64, Arc<VerifiedToken>> for TokenWeighter {
    fn weight(&self, _key: &u64, entry: &Arc<VerifiedToken>) -> u64 {
        (entry.token.len() as u64) * 2 + ENTRY_OVERHEAD_BYTES
    }
}

/// Checks JWTs for the gateway's routes; see the [module docs](super).
///
/// Cheap to clone: clones share the keys and the verified-token cache.
pub struct JwtAuthorizer {
    inner: Arc<Inner>,
}

struct Inner {
    issuers: Vec<String>,
    audiences: Vec<String>,
    leeway: f64,
    required_claims: Vec<String>,
    require_exp: bool,
    identity_header: HeaderName,
    keys: Vec<VerificationKey>,
    remote: Option<RemoteKeys>,
    groups_claim: String,
    cognito: bool,
    /// Bumped when a remote key is withdrawn; cached tokens of older generations are stale.
    key_generation: AtomicU64,
    cache: Option<TokenCache>,
    hasher: foldhash::fast::RandomState,
    clock: GatewayClock,
}

impl Clone for JwtAuthorizer {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl fmt::Debug for JwtAuthorizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtAuthorizer")
            .field("issuers", &self.inner.issuers)
            .field("audiences", &self.inner.audiences)
            .field("keys", &self.inner.keys.len())
            .finish_non_exhaustive()
    }
}

/// What a route asks of a verified token (any of its scopes, any of its groups), as the gateway
/// resolved it at build time.
#[derive(Debug, Clone, Default)]
pub(crate) struct RouteRequirements {
    pub(crate) scopes: Box<[String]>,
    pub(crate) groups: Box<[String]>,
}

impl RouteRequirements {
    fn allow(&self, verified: &VerifiedToken, cognito: bool) -> Result<Identity, Refusal> {
        // Cognito, as API Gateway: a route with scopes takes access tokens, one without takes
        // ID tokens.
        if cognito {
            let expected = if self.scopes.is_empty() {
                "id"
            } else {
                "access"
            };
            if verified.token_use.as_deref() != Some(expected) {
                return Err(Refusal::Invalid(if self.scopes.is_empty() {
                    "the route takes Cognito ID tokens (token_use id)"
                } else {
                    "the route takes Cognito access tokens (token_use access)"
                }));
            }
        }
        let holds = |required: &[String], held: &[Box<str>]| {
            required.is_empty()
                || required
                    .iter()
                    .any(|wanted| held.iter().any(|item| **item == **wanted))
        };
        if !holds(&self.scopes, &verified.scopes) {
            return Err(Refusal::InsufficientScope);
        }
        if !holds(&self.groups, &verified.groups) {
            return Err(Refusal::NotInGroup);
        }
        Ok(verified.identity.clone())
    }
}

/// Why a token was refused; the description goes into `WWW-Authenticate`.
enum Refusal {
    Missing,
    Invalid(&'static str),
    /// No key has the token's `kid`: remote keys may have rotated.
    UnknownKey,
    InsufficientScope,
    NotInGroup,
}

const UNKNOWN_KEY: &str = "no key matches the token's key id";

impl Refusal {
    fn into_error(self) -> GatewayError {
        let (response_type, challenge) = match self {
            Self::Missing => (GatewayResponseType::Unauthorized, "Bearer".to_owned()),
            Self::UnknownKey => return Self::Invalid(UNKNOWN_KEY).into_error(),
            Self::Invalid(description) => (
                GatewayResponseType::Unauthorized,
                format!("Bearer error=\"invalid_token\", error_description=\"{description}\""),
            ),
            Self::NotInGroup => (
                GatewayResponseType::AccessDenied,
                "Bearer error=\"insufficient_scope\", error_description=\"the caller is in none \
                 of the route's groups\""
                    .to_owned(),
            ),
            Self::InsufficientScope => (
                GatewayResponseType::AccessDenied,
                "Bearer error=\"insufficient_scope\", error_description=\"the token has none of \
                 the route's scopes\""
                    .to_owned(),
            ),
        };
        let error = GatewayError::new(response_type);
        match HeaderValue::try_from(challenge) {
            Ok(value) => error.header(WWW_AUTHENTICATE, value),
            Err(_) => error,
        }
    }
}

impl JwtAuthorizer {
    /// Starts a [`JwtAuthorizerBuilder`].
    pub fn builder() -> JwtAuthorizerBuilder {
        JwtAuthorizerBuilder::new()
    }

    /// Starts a builder for a Cognito user pool, as API Gateway's Cognito authorizer: the
    /// issuer `https://cognito-idp.{region}.amazonaws.com/{user_pool_id}`, keys from its
    /// `/.well-known/jwks.json` (HTTPS: the `rustls` feature or a
    /// [fetcher](JwtAuthorizerBuilder::fetcher)), RS256 only, and `token_use` checked per
    /// route: a route with [scopes](crate::Route::authorization_scopes) takes access tokens,
    /// one without takes ID tokens. Add the app client ids with
    /// [`audience`](JwtAuthorizerBuilder::audience): an ID token names its client in `aud`,
    /// an access token in `client_id`. Routes can require
    /// [groups](crate::Route::authorization_groups) (`cognito:groups`). For tests, point
    /// [`jwks_url`](JwtAuthorizerBuilder::jwks_url) at a local server; the issuer stays.
    ///
    /// A malformed region or pool id is reported by `build`.
    pub fn cognito(region: &str, user_pool_id: &str) -> JwtAuthorizerBuilder {
        let issuer = format!("https://cognito-idp.{region}.amazonaws.com/{user_pool_id}");
        let mut builder = JwtAuthorizerBuilder::new()
            .jwks_url(format!("{issuer}/.well-known/jwks.json"))
            .issuer(issuer)
            .algorithms([JwtAlgorithm::RS256]);
        // The pool id starts with its region: the pattern checks both.
        builder.cognito = Some(if user_pool_id.starts_with(&format!("{region}_")) {
            user_pool_id.to_owned()
        } else {
            String::new()
        });
        builder
    }

    /// Fetches the remote keys now (e.g. at startup, so that the first requests do not wait),
    /// whatever the cool-down; returns how many keys the authorizer holds. A failure keeps the
    /// last good keys. Without a JWKS URL or OIDC discovery, there is nothing to fetch.
    pub async fn refresh_keys(&self) -> Result<usize, JwksError> {
        let inner = &*self.inner;
        if let Some(remote) = &inner.remote {
            let _fetching = remote.fetch_lock.lock().await;
            self.fetch_and_store(remote).await?;
        }
        Ok(self.key_count())
    }

    fn key_count(&self) -> usize {
        let remote = self
            .inner
            .remote
            .as_ref()
            .map_or(0, |remote| remote.keys.load().len());
        self.inner.keys.len() + remote
    }

    /// Fetches the keys and stores them; called with the fetch lock held.
    async fn fetch_and_store(&self, remote: &RemoteKeys) -> Result<(), JwksError> {
        let inner = &*self.inner;
        remote.record_attempt(clock_nanos(inner.clock.elapsed()));
        let keys = remote.fetch().await.inspect_err(|error| {
            tracing::warn!(%error, "fetching JWT keys failed; keeping the last good keys");
        })?;
        remote.record_success(clock_nanos(inner.clock.elapsed()));
        let previous = remote.keys.swap(Arc::new(keys));
        let current = remote.keys.load();
        let removed = previous.iter().any(|old| {
            !current
                .iter()
                .any(|new| new.fingerprint == old.fingerprint && new.kid == old.kid)
        });
        // A token verified with a key that is gone (or replaced under the same kid) must not
        // outlive it in the cache, nor be cached by a verification that started before.
        if removed {
            inner.key_generation.fetch_add(1, Ordering::AcqRel);
            if let Some(cache) = &inner.cache {
                cache.clear();
            }
        }
        tracing::debug!(keys = current.len(), "JWT keys fetched");
        Ok(())
    }

    /// A fetch because a token named an unknown key, unless one ran since or the cool-down
    /// holds it back.
    async fn fetch_for_unknown_key(&self, asked_at: u64) {
        let Some(remote) = &self.inner.remote else {
            return;
        };
        let _fetching = remote.fetch_lock.lock().await;
        let now = clock_nanos(self.inner.clock.elapsed());
        if remote.should_fetch(Reason::UnknownKey { asked_at }, now) {
            let _ = self.fetch_and_store(remote).await;
        }
    }

    /// Starts a background refresh when the remote keys are due for one.
    fn refresh_in_background(&self, remote: &RemoteKeys, now: u64) {
        if !remote.refresh_due(now) || remote.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            remote.refreshing.store(false, Ordering::Release);
            return;
        };
        /// Clears the flag however the refresh ends (a fetcher of the user's may panic), so
        /// that refreshes are not stopped for good.
        struct Refreshing(JwtAuthorizer);
        impl Drop for Refreshing {
            fn drop(&mut self) {
                if let Some(remote) = &self.0.inner.remote {
                    remote.refreshing.store(false, Ordering::Release);
                }
            }
        }
        let refreshing = Refreshing(self.clone());
        runtime.spawn(async move {
            let authorizer = &refreshing.0;
            if let Some(remote) = &authorizer.inner.remote {
                let _fetching = remote.fetch_lock.lock().await;
                let now = clock_nanos(authorizer.inner.clock.elapsed());
                if remote.should_fetch(Reason::Scheduled, now) {
                    let _ = authorizer.fetch_and_store(remote).await;
                }
            }
        });
    }

    /// Checks the request's token against what its route requires (any of its scopes, any of
    /// its groups).
    pub(crate) fn authorize(
        &self,
        headers: &HeaderMap,
        requirements: &RouteRequirements,
    ) -> Authorization {
        let inner = &*self.inner;
        let cognito = inner.cognito;
        let token = match self.token_of(headers) {
            Ok(token) => token,
            Err(refusal) => return Authorization::Done(Err(refusal.into_error())),
        };
        let now = inner.clock.unix_seconds() as f64;
        if let Some(remote) = &inner.remote {
            self.refresh_in_background(remote, clock_nanos(inner.clock.elapsed()));
        }
        match self.verify(token, now) {
            Err(Refusal::UnknownKey) if inner.remote.is_some() => {
                let asked_at = clock_nanos(inner.clock.elapsed());
                let (authorizer, token, requirements) =
                    (self.clone(), token.to_owned(), requirements.clone());
                Authorization::Pending(Box::pin(async move {
                    authorizer.fetch_for_unknown_key(asked_at).await;
                    let now = authorizer.inner.clock.unix_seconds() as f64;
                    authorizer
                        .verify(&token, now)
                        .and_then(|verified| requirements.allow(&verified, cognito))
                        .map(authorized)
                        .map_err(Refusal::into_error)
                }))
            }
            result => Authorization::Done(
                result
                    .and_then(|verified| requirements.allow(&verified, cognito))
                    .map(authorized)
                    .map_err(Refusal::into_error),
            ),
        }
    }

    /// The token from the identity header, bare or after `Bearer `.
    fn token_of<'h>(&self, headers: &'h HeaderMap) -> Result<&'h str, Refusal> {
        let mut values = headers.get_all(&self.inner.identity_header).iter();
        let value = values.next().ok_or(Refusal::Missing)?;
        if values.next().is_some() {
            return Err(Refusal::Invalid(
                "the request has more than one token header",
            ));
        }
        // UTF-8 is all the fast path needs (and checks far faster than visible ASCII): a token
        // with other characters fails base64 decoding before any key is tried.
        let value = std::str::from_utf8(value.as_bytes())
            .map_err(|_| Refusal::Invalid("the token header is not text"))?
            .trim();
        let token = match value.get(..7) {
            Some(scheme) if scheme.eq_ignore_ascii_case("bearer ") => value[7..].trim_start(),
            _ if value.eq_ignore_ascii_case("bearer") => "",
            _ => value,
        };
        if token.is_empty() {
            return Err(Refusal::Missing);
        }
        Ok(token)
    }

    fn verify(&self, token: &str, now: f64) -> Result<Arc<VerifiedToken>, Refusal> {
        let inner = &*self.inner;
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Refusal::Invalid("the token is too large"));
        }
        // The cache first: it only holds tokens that passed every check below, and a hit must
        // equal one of them, so the signature (found from the end) is all a lookup needs.
        let cache_key = token
            .rsplit_once('.')
            .map(|(_, signature)| inner.hasher.hash_one(signature));
        if let Some(cache_key) = cache_key
            && let Some(cached) = inner.cache.as_ref().and_then(|cache| cache.get(&cache_key))
            && *cached.token == *token
            && cached.key_generation == inner.key_generation.load(Ordering::Acquire)
        {
            if cached.valid_until.is_some_and(|until| now >= until) {
                if let Some(cache) = &inner.cache {
                    cache.remove(&cache_key);
                }
                return Err(Refusal::Invalid("the token has expired"));
            }
            return Ok(cached);
        }
        let mut segments = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) = (
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
        ) else {
            return Err(Refusal::Invalid(
                "the token is not three base64url segments",
            ));
        };
        if header.is_empty() || payload.is_empty() || signature.is_empty() {
            return Err(Refusal::Invalid("the token has an empty segment"));
        }
        let verified = Arc::new(self.verify_cold(token, now)?);
        if let Some(cache) = &inner.cache
            && verified.valid_until.is_some()
        {
            cache.insert(inner.hasher.hash_one(signature), Arc::clone(&verified));
        }
        Ok(verified)
    }

    fn verify_cold(&self, token: &str, now: f64) -> Result<VerifiedToken, Refusal> {
        let inner = &*self.inner;
        let key_generation = inner.key_generation.load(Ordering::Acquire);
        let header = jsonwebtoken::decode_header(token).map_err(|_| {
            Refusal::Invalid("the token's header is malformed or names an unknown algorithm")
        })?;
        if header.crit.is_some() {
            return Err(Refusal::Invalid(
                "the token has a critical header extension",
            ));
        }
        let Some(algorithm) = JwtAlgorithm::ALL
            .into_iter()
            .find(|candidate| candidate.to_jwt() == header.alg)
        else {
            return Err(Refusal::Invalid("the token's algorithm is not accepted"));
        };
        let remote_keys = inner.remote.as_ref().map(|remote| remote.keys.load());
        let all_keys = || {
            inner
                .keys
                .iter()
                .chain(remote_keys.iter().flat_map(|keys| keys.iter()))
        };
        let candidates: Vec<&VerificationKey> = match &header.kid {
            Some(kid) => all_keys()
                .filter(|key| key.kid.as_deref() == Some(kid.as_str()))
                .collect(),
            None if all_keys().count() == 1 => all_keys().collect(),
            None => all_keys().filter(|key| key.kid.is_none()).collect(),
        };
        if candidates.is_empty() {
            return Err(Refusal::UnknownKey);
        }
        let mut validation = Validation::new(algorithm.to_jwt());
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        // Each key with the token's kid and algorithm is tried (during a rotation two can
        // share a kid); the first that verifies wins.
        let mut refusal = Refusal::Invalid("the token's algorithm is not accepted for its key");
        let mut claims = None;
        for key in candidates
            .into_iter()
            .filter(|key| key.algorithms.contains(&algorithm))
        {
            // Verification runs in a dependency; should it panic (a provider problem in the
            // process, a key it mishandles), the request gets a 401, not a dead connection.
            let decoded = catch_unwind(AssertUnwindSafe(|| {
                jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation)
            }));
            match decoded {
                Ok(Ok(data)) => {
                    claims = Some(data.claims);
                    break;
                }
                Ok(Err(error)) => {
                    refusal = Refusal::Invalid(match error.kind() {
                        jsonwebtoken::errors::ErrorKind::InvalidSignature => {
                            "the signature is invalid"
                        }
                        jsonwebtoken::errors::ErrorKind::InvalidAlgorithm
                        | jsonwebtoken::errors::ErrorKind::InvalidKeyFormat => {
                            "the token's algorithm does not fit its key"
                        }
                        _ => "the token is malformed",
                    });
                }
                Err(_) => refusal = Refusal::Invalid("the token could not be verified"),
            }
        }
        let Some(claims) = claims else {
            return Err(refusal);
        };
        let valid_until = self.check_claims(&claims, now)?;
        let scopes = scopes_of(&claims);
        let groups = match claims.get(&inner.groups_claim) {
            Some(Value::Array(groups)) => groups
                .iter()
                .filter_map(Value::as_str)
                .map(Box::from)
                .collect(),
            Some(Value::String(groups)) => groups.split_whitespace().map(Box::from).collect(),
            _ => Box::default(),
        };
        let token_use = claims
            .get("token_use")
            .and_then(Value::as_str)
            .map(Box::from);
        let principal = claims.get("sub").and_then(Value::as_str).map(Box::from);
        Ok(VerifiedToken {
            token: token.into(),
            identity: Identity::new(principal, claims),
            scopes,
            groups,
            token_use,
            valid_until,
            key_generation,
        })
    }

    /// The claim checks; returns when the token stops being valid (`exp` plus the leeway).
    fn check_claims(&self, claims: &Map<String, Value>, now: f64) -> Result<Option<f64>, Refusal> {
        let inner = &*self.inner;
        let time = |name: &str| -> Result<Option<f64>, Refusal> {
            match claims.get(name) {
                None => Ok(None),
                Some(value) => value
                    .as_f64()
                    .filter(|seconds| seconds.is_finite())
                    .map(Some)
                    .ok_or(Refusal::Invalid("a time claim is not a number")),
            }
        };
        let valid_until = match time("exp")? {
            Some(exp) => {
                let until = exp + inner.leeway;
                if now >= until {
                    return Err(Refusal::Invalid("the token has expired"));
                }
                Some(until)
            }
            None if inner.require_exp => {
                return Err(Refusal::Invalid("the token has no exp claim"));
            }
            None => None,
        };
        if time("nbf")?.is_some_and(|nbf| now + inner.leeway < nbf) {
            return Err(Refusal::Invalid("the token is not valid yet"));
        }
        if time("iat")?.is_some_and(|iat| now + inner.leeway < iat) {
            return Err(Refusal::Invalid("the token was issued in the future"));
        }
        let issuer = claims.get("iss").and_then(Value::as_str);
        if !issuer.is_some_and(|issuer| inner.issuers.iter().any(|accepted| accepted == issuer)) {
            return Err(Refusal::Invalid("the issuer is not accepted"));
        }
        let accepted = |audience: &str| inner.audiences.iter().any(|a| a == audience);
        let audience_ok = match claims.get("aud") {
            Some(Value::String(audience)) => accepted(audience),
            Some(Value::Array(audiences)) => audiences
                .iter()
                .any(|audience| audience.as_str().is_some_and(accepted)),
            Some(_) => false,
            None => claims
                .get("client_id")
                .and_then(Value::as_str)
                .is_some_and(accepted),
        };
        if !audience_ok {
            return Err(Refusal::Invalid("the audience is not accepted"));
        }
        if inner
            .required_claims
            .iter()
            .any(|claim| !claims.contains_key(claim))
        {
            return Err(Refusal::Invalid("the token lacks a required claim"));
        }
        Ok(valid_until)
    }
}

fn authorized(identity: Identity) -> Authorized {
    Authorized {
        identity,
        usage_identifier: None,
    }
}

pub(crate) fn scopes_of(claims: &Map<String, Value>) -> Box<[Box<str>]> {
    let mut scopes: Vec<Box<str>> = Vec::new();
    let mut add_words = |text: &str| scopes.extend(text.split_whitespace().map(Into::into));
    if let Some(Value::String(scope)) = claims.get("scope") {
        add_words(scope);
    }
    match claims.get("scp") {
        Some(Value::String(scp)) => add_words(scp),
        Some(Value::Array(items)) => {
            for item in items.iter().filter_map(Value::as_str) {
                add_words(item);
            }
        }
        _ => {}
    }
    scopes.into_boxed_slice()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_algorithms_map_by_name() {
        assert_eq!(
            JwtAlgorithm::from_key_algorithm(KeyAlgorithm::ES256),
            Some(JwtAlgorithm::ES256)
        );
        assert_eq!(JwtAlgorithm::from_key_algorithm(KeyAlgorithm::RSA1_5), None);
    }

    fn authorizer(cache_bytes: u64) -> JwtAuthorizer {
        JwtAuthorizer::builder()
            .issuer("https://issuer.example.com")
            .audience("api")
            .hmac_secret(JwtAlgorithm::HS256, [7u8; 32])
            .require_exp(false)
            .token_cache_bytes(cache_bytes)
            .build()
            .unwrap()
    }

    fn bearer(claims: &Value) -> HeaderMap {
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            claims,
            &jsonwebtoken::EncodingKey::from_secret(&[7u8; 32]),
        )
        .unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, format!("Bearer {token}").try_into().unwrap());
        headers
    }

    fn cached(authorizer: &JwtAuthorizer) -> u64 {
        let cache = authorizer.inner.cache.as_ref().unwrap();
        cache.len() as u64
    }

    fn accept(authorizer: &JwtAuthorizer, headers: &HeaderMap, scopes: &RouteRequirements) {
        assert!(matches!(
            authorizer.authorize(headers, scopes),
            Authorization::Done(Ok(_))
        ));
    }

    #[test]
    fn verified_tokens_with_an_exp_are_cached_once() {
        let authorizer = authorizer(DEFAULT_CACHE_BYTES);
        let now = GatewayClock::system().unix_seconds();
        let expiring = bearer(&serde_json::json!({
            "iss": "https://issuer.example.com", "aud": "api", "exp": now + 600
        }));
        let scopes = RouteRequirements::default();
        for _ in 0..3 {
            accept(&authorizer, &expiring, &scopes);
        }
        assert_eq!(cached(&authorizer), 1);
        let lasting =
            bearer(&serde_json::json!({"iss": "https://issuer.example.com", "aud": "api"}));
        accept(&authorizer, &lasting, &scopes);
        assert_eq!(
            cached(&authorizer),
            1,
            "a token without exp is never cached"
        );
        let uncached = self::authorizer(0);
        accept(&uncached, &expiring, &scopes);
        assert!(uncached.inner.cache.is_none());
    }

    #[test]
    fn scopes_come_from_scope_and_scp() {
        let claims = serde_json::json!({"scope": "a b", "scp": ["c", "d e"]});
        let scopes = scopes_of(claims.as_object().unwrap());
        let scopes: Vec<&str> = scopes.iter().map(|scope| &**scope).collect();
        assert_eq!(scopes, ["a", "b", "c", "d", "e"]);
    }
}
