//! Keys fetched from a JWKS URL or found through an issuer's OIDC discovery document.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::Uri;
use jsonwebtoken::jwk::{JwkSet, PublicKeyUse};
use serde::Deserialize;

use super::verify::{JwtAlgorithm, VerificationKey, jwk_key};

/// What a [`JwksFetcher`] returns.
pub type FetchFuture<'a> = Pin<
    Box<dyn Future<Output = Result<Vec<u8>, Box<dyn std::error::Error + Send + Sync>>> + Send + 'a>,
>;

/// Fetches a document (a JWKS, an OIDC discovery document) over HTTP(S): implement it to use
/// an HTTP client of your own (a proxy, a custom TLS setup), and give it to
/// [`JwtAuthorizerBuilder::fetcher`](super::JwtAuthorizerBuilder::fetcher).
///
/// The authorizer applies its timeout around the whole call and refuses bodies over the
/// limit; `max_bytes` lets the fetcher stop reading early.
pub trait JwksFetcher: Send + Sync + 'static {
    /// GETs `url` and returns the body of a successful (2xx) response.
    fn fetch<'a>(&'a self, url: &'a str, max_bytes: usize) -> FetchFuture<'a>;
}

/// Why fetching keys failed. The authorizer keeps its last good keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksError {
    message: String,
}

impl JwksError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

impl fmt::Display for JwksError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for JwksError {}

/// Where remote keys come from.
pub(crate) enum RemoteSource {
    JwksUrl(String),
    /// `{issuer}/.well-known/openid-configuration`, whose `jwks_uri` is then fetched.
    Discovery {
        issuer: String,
    },
}

/// A URL the fetcher can use: absolute, http or https.
pub(crate) fn check_url(url: &str) -> Result<(), &'static str> {
    let uri: Uri = url.parse().map_err(|_| "not a valid URL")?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("http" | "https"), Some(_)) => Ok(()),
        _ => Err("must be an absolute http:// or https:// URL"),
    }
}

const NEVER: u64 = u64::MAX;

/// How remote keys are fetched and kept, as the builder set it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FetchSettings {
    pub(crate) timeout: Duration,
    pub(crate) max_bytes: usize,
    pub(crate) refresh_interval: Duration,
    pub(crate) cooldown: Duration,
}

/// The remote keys and when they were fetched; fetches are serialised by `fetch_lock`.
pub(crate) struct RemoteKeys {
    pub(crate) source: RemoteSource,
    pub(crate) fetcher: Box<dyn JwksFetcher>,
    pub(crate) keys: ArcSwap<Vec<VerificationKey>>,
    allowed: Option<Vec<JwtAlgorithm>>,
    settings: FetchSettings,
    pub(crate) fetch_lock: tokio::sync::Mutex<()>,
    /// Nanoseconds on the authorizer's clock; `NEVER` before the first.
    last_attempt: AtomicU64,
    last_success: AtomicU64,
    pub(crate) refreshing: AtomicBool,
    discovered_jwks_uri: Mutex<Option<String>>,
}

/// Why keys are being fetched.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Reason {
    /// A token names a key we do not have; `asked_at` is when (clock nanoseconds).
    UnknownKey { asked_at: u64 },
    /// The keys are older than the refresh interval.
    Scheduled,
}

impl RemoteKeys {
    pub(crate) fn new(
        source: RemoteSource,
        fetcher: Box<dyn JwksFetcher>,
        allowed: Option<Vec<JwtAlgorithm>>,
        settings: FetchSettings,
    ) -> Self {
        Self {
            source,
            fetcher,
            keys: ArcSwap::from_pointee(Vec::new()),
            allowed,
            settings,
            fetch_lock: tokio::sync::Mutex::new(()),
            last_attempt: AtomicU64::new(NEVER),
            last_success: AtomicU64::new(NEVER),
            refreshing: AtomicBool::new(false),
            discovered_jwks_uri: Mutex::new(None),
        }
    }

    /// Whether a background refresh is due at `now` (clock nanoseconds).
    pub(crate) fn refresh_due(&self, now: u64) -> bool {
        let success = self.last_success.load(Ordering::Relaxed);
        let attempt = self.last_attempt.load(Ordering::Relaxed);
        success != NEVER
            && now.saturating_sub(success) >= nanos(self.settings.refresh_interval)
            && now.saturating_sub(attempt) >= nanos(self.settings.cooldown)
    }

    /// Whether a fetch for `reason` should go ahead at `now`; called under `fetch_lock`.
    pub(crate) fn should_fetch(&self, reason: Reason, now: u64) -> bool {
        let attempt = self.last_attempt.load(Ordering::Relaxed);
        if attempt == NEVER {
            return true;
        }
        let cooled_down = now.saturating_sub(attempt) >= nanos(self.settings.cooldown);
        match reason {
            // Someone fetched after this request asked: its keys are the newest there are.
            Reason::UnknownKey { asked_at } => attempt < asked_at && cooled_down,
            Reason::Scheduled => self.refresh_due(now),
        }
    }

    /// Recorded before the fetch starts, so that a fetch abandoned half-way (its request
    /// dropped) still counts against the cool-down.
    pub(crate) fn record_attempt(&self, now: u64) {
        self.last_attempt.store(now, Ordering::Relaxed);
    }

    pub(crate) fn record_success(&self, now: u64) {
        self.last_success.store(now, Ordering::Relaxed);
    }

    /// Fetches and parses the keys (the caller stores them), discovery included, within one
    /// timeout.
    pub(crate) async fn fetch(&self) -> Result<Vec<VerificationKey>, JwksError> {
        let fetched = tokio::time::timeout(self.settings.timeout, self.fetch_unbounded())
            .await
            .unwrap_or_else(|_| {
                Err(JwksError::new(format!(
                    "the key server did not answer in {:?}",
                    self.settings.timeout
                )))
            });
        if fetched.is_err() {
            // The next attempt looks the JWKS URL up afresh: the issuer may have moved it.
            *self
                .discovered_jwks_uri
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        }
        fetched
    }

    async fn fetch_unbounded(&self) -> Result<Vec<VerificationKey>, JwksError> {
        let jwks_url = match &self.source {
            RemoteSource::JwksUrl(url) => url.clone(),
            RemoteSource::Discovery { issuer } => {
                let known = self
                    .discovered_jwks_uri
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone();
                match known {
                    Some(url) => url,
                    None => {
                        let url = self.discover(issuer).await?;
                        *self
                            .discovered_jwks_uri
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(url.clone());
                        url
                    }
                }
            }
        };
        let body = self.get(&jwks_url).await?;
        let set: JwkSet = serde_json::from_slice(&body).map_err(|error| {
            JwksError::new(format!("{jwks_url} is not a JWKS document: {error}"))
        })?;
        let mut keys = Vec::new();
        for jwk in &set.keys {
            if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
                continue;
            }
            match jwk_key(jwk) {
                // A JWKS is public: a secret published in one would let anyone sign.
                Ok(key) if key.algorithms.iter().any(|algorithm| algorithm.is_hmac()) => {
                    tracing::warn!(
                        kid = jwk.common.key_id.as_deref(),
                        "skipping a symmetric key published in a JWKS"
                    );
                }
                Ok(mut key) => {
                    if let Some(allowed) = &self.allowed {
                        key.algorithms
                            .retain(|algorithm| allowed.contains(algorithm));
                    }
                    if !key.algorithms.is_empty() {
                        keys.push(key);
                    }
                }
                // One key this crate cannot use does not spoil the others.
                Err(reason) => tracing::warn!(
                    kid = jwk.common.key_id.as_deref(),
                    %reason,
                    "skipping a key of the JWKS"
                ),
            }
        }
        if keys.is_empty() {
            return Err(JwksError::new(format!(
                "{jwks_url} has no key that verifies an accepted algorithm"
            )));
        }
        Ok(keys)
    }

    async fn discover(&self, issuer: &str) -> Result<String, JwksError> {
        #[derive(Deserialize)]
        struct Discovery {
            issuer: String,
            jwks_uri: String,
        }
        let url = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        let body = self.get(&url).await?;
        let document: Discovery = serde_json::from_slice(&body).map_err(|error| {
            JwksError::new(format!("{url} is not an OIDC discovery document: {error}"))
        })?;
        // OIDC Discovery 1.0, section 4.3: the document must name the issuer it was fetched
        // for, or its keys could be anyone's.
        if document.issuer != issuer {
            return Err(JwksError::new(format!(
                "{url} names the issuer `{}`, not `{issuer}`",
                document.issuer
            )));
        }
        check_url(&document.jwks_uri)
            .map_err(|rule| JwksError::new(format!("the jwks_uri of {url} {rule}")))?;
        if issuer.starts_with("https:") && !document.jwks_uri.starts_with("https:") {
            return Err(JwksError::new(format!(
                "the jwks_uri of {url} is not https, while the issuer is"
            )));
        }
        Ok(document.jwks_uri)
    }

    async fn get(&self, url: &str) -> Result<Vec<u8>, JwksError> {
        let body = self
            .fetcher
            .fetch(url, self.settings.max_bytes)
            .await
            .map_err(|error| JwksError::new(format!("{url}: {error}")))?;
        if body.len() > self.settings.max_bytes {
            return Err(JwksError::new(format!(
                "{url} sent more than {} bytes",
                self.settings.max_bytes
            )));
        }
        Ok(body)
    }
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

pub(crate) fn clock_nanos(elapsed: Duration) -> u64 {
    // `NEVER` is reserved; a clock 584 years in is not a concern.
    nanos(elapsed).min(NEVER - 1)
}

/// The built-in fetcher: hyper-util's client, plain HTTP, and HTTPS with the `rustls`
/// feature.
#[cfg(feature = "http-client")]
pub(crate) mod client {
    use bytes::Bytes;
    use http::Request;
    use http::header::ACCEPT;
    use http_body_util::{BodyExt, Empty, LengthLimitError, Limited};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    use super::{FetchFuture, JwksFetcher};

    #[cfg(feature = "rustls")]
    type Connector =
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>;
    #[cfg(not(feature = "rustls"))]
    type Connector = hyper_util::client::legacy::connect::HttpConnector;

    pub(crate) struct HyperFetcher {
        client: Client<Connector, Empty<Bytes>>,
    }

    impl HyperFetcher {
        pub(crate) fn new() -> Result<Self, String> {
            #[cfg(feature = "rustls")]
            // The ring provider is named explicitly, so that another crate enabling rustls's
            // aws-lc-rs provider cannot leave the process without a default one.
            let connector = hyper_rustls::HttpsConnectorBuilder::new()
                .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
                .map_err(|error| error.to_string())?
                .https_or_http()
                .enable_http1()
                .build();
            #[cfg(not(feature = "rustls"))]
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            Ok(Self {
                client: Client::builder(TokioExecutor::new()).build(connector),
            })
        }
    }

    impl JwksFetcher for HyperFetcher {
        fn fetch<'a>(&'a self, url: &'a str, max_bytes: usize) -> FetchFuture<'a> {
            Box::pin(async move {
                let request = Request::get(url)
                    .header(ACCEPT, "application/json")
                    .body(Empty::new())?;
                let response = self.client.request(request).await?;
                if !response.status().is_success() {
                    return Err(format!("answered {}", response.status()).into());
                }
                let body = Limited::new(response.into_body(), max_bytes)
                    .collect()
                    .await
                    .map_err(|error| {
                        if error.is::<LengthLimitError>() {
                            format!("sent more than {max_bytes} bytes").into()
                        } else {
                            error
                        }
                    })?
                    .to_bytes();
                Ok(body.to_vec())
            })
        }
    }
}
