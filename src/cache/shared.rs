//! A stage cache's entries on Redis: how a stored response is written and read back.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use super::CacheError;
use super::CacheSettings;
use super::store::{CachedResponse, PendingLookup, PendingPut};
use tracing::Instrument;

use crate::clock::GatewayClock;
use crate::store::{CachePut, RedisBackend};

/// What an entry's bytes start with; another layout gets another tag.
const LAYOUT: &[u8; 4] = b"tgc1";

/// The entries of one stage's cache on Redis, under the hash tag `{c:<name>}`.
#[derive(Clone)]
pub(crate) struct RedisEntries {
    backend: RedisBackend,
    tag: Arc<str>,
    /// The canary deployments' entries of the stage, flushed with the stage's: they outlive
    /// the canary that stored them, which a later one must not serve.
    canary_tag: Option<Arc<str>>,
}

impl RedisEntries {
    /// The entries of `stage`, or of its canary deployments.
    pub(crate) fn new(backend: RedisBackend, stage: &str, canary: bool) -> Self {
        // Stage names hold no `~`, so a canary's entries cannot meet a stage's.
        let canary_tag: Arc<str> = format!("c:{stage}~canary").into();
        if canary {
            Self {
                backend,
                tag: canary_tag,
                canary_tag: None,
            }
        } else {
            Self {
                backend,
                tag: format!("c:{stage}").into(),
                canary_tag: Some(canary_tag),
            }
        }
    }

    /// Reads `key`'s entry: a miss when it is missing, expired or unreadable, or when Redis
    /// is unavailable (the backend logs that).
    pub(crate) fn fetch(&self, key: &[u8], clock: &GatewayClock) -> PendingLookup {
        let entries = self.clone();
        let key = key.to_vec();
        let clock = clock.clone();
        let span = trace_span!("cache");
        let lookup = async move {
            let bytes = entries.backend.cache_get(&entries.tag, &key).await.ok()??;
            match decode(bytes, &clock) {
                Ok(fresh) => fresh,
                Err(reason) => {
                    tracing::warn!(
                        target: "tower_gateway::redis",
                        cache = &*entries.tag,
                        reason,
                        "an unreadable response cache entry on Redis was taken for a miss"
                    );
                    None
                }
            }
        };
        Box::pin(lookup.instrument(span))
    }

    /// Writes `entry` under `key` for its TTL, within the cache's capacity.
    pub(crate) fn put(
        &self,
        key: &[u8],
        entry: &CachedResponse,
        settings: &CacheSettings,
        clock: &GatewayClock,
    ) -> PendingPut {
        let entries = self.clone();
        let key = key.to_vec();
        let stored = clock.unix_millis();
        let ttl_millis = u64::try_from(entry.ttl.as_millis()).unwrap_or(u64::MAX);
        let value = encode(entry, stored, stored.saturating_add(ttl_millis));
        let size = u64::from(entry.weight);
        let capacity = settings.capacity_bytes;
        Box::pin(async move {
            let put = CachePut {
                key: &key,
                value,
                ttl_millis,
                size,
                capacity,
            };
            // A failed store is logged by the backend; the response is served all the same,
            // and the next request misses.
            let _ = entries.backend.cache_put(&entries.tag, put).await;
        })
    }

    pub(crate) async fn remove(&self, key: &[u8]) -> Result<bool, CacheError> {
        self.backend
            .cache_remove(&self.tag, key)
            .await
            .map_err(|error| CacheError::Backend(error.to_string()))
    }

    pub(crate) async fn flush(&self) -> Result<(), CacheError> {
        for tag in std::iter::once(&self.tag).chain(&self.canary_tag) {
            self.backend
                .cache_flush(tag)
                .await
                .map_err(|error| CacheError::Backend(error.to_string()))?;
        }
        Ok(())
    }

    pub(crate) async fn counts(&self) -> Result<(u64, u64), CacheError> {
        self.backend
            .cache_count(&self.tag)
            .await
            .map_err(|error| CacheError::Backend(error.to_string()))
    }

    /// Starts the removal of `key`'s entry on the current Tokio runtime; false outside one.
    pub(crate) fn spawn_remove(&self, key: &[u8]) -> bool {
        let entries = self.clone();
        let key = key.to_vec();
        self.spawn("remove an entry", async move {
            entries.remove(&key).await.map(drop)
        })
    }

    /// Starts the flush on the current Tokio runtime; false outside one.
    pub(crate) fn spawn_flush(&self) -> bool {
        let entries = self.clone();
        self.spawn("flush", async move { entries.flush().await })
    }

    fn spawn(
        &self,
        what: &'static str,
        task: impl Future<Output = Result<(), CacheError>> + Send + 'static,
    ) -> bool {
        let tag = Arc::clone(&self.tag);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!(
                target: "tower_gateway::redis",
                cache = &*tag,
                "cannot {what} of a response cache on Redis outside a Tokio runtime; \
                 use the _async methods of ResponseCaches"
            );
            return false;
        };
        runtime.spawn(async move {
            if let Err(error) = task.await {
                tracing::warn!(target: "tower_gateway::redis", cache = &*tag, %error, "cannot {what}");
            }
        });
        true
    }
}

/// `tgc1`, status (u16), stored and expires (u64 ms since the epoch, on the storing
/// instance's clock), the header count (u32), each header as name and value with u32
/// lengths, then the body. Numbers are big-endian.
fn encode(entry: &CachedResponse, stored: u64, expires: u64) -> Vec<u8> {
    let header_bytes: usize = entry
        .headers
        .iter()
        .map(|(name, value)| 8 + name.as_str().len() + value.len())
        .sum();
    let mut out = Vec::with_capacity(26 + header_bytes + entry.body.len());
    out.extend_from_slice(LAYOUT);
    out.extend_from_slice(&entry.status.as_u16().to_be_bytes());
    out.extend_from_slice(&stored.to_be_bytes());
    out.extend_from_slice(&expires.to_be_bytes());
    out.extend_from_slice(&length(entry.headers.len()));
    for (name, value) in &entry.headers {
        out.extend_from_slice(&length(name.as_str().len()));
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(&length(value.len()));
        out.extend_from_slice(value.as_bytes());
    }
    out.extend_from_slice(&entry.body);
    out
}

/// A length as four bytes; what is stored is bounded far below 4 GiB (an entry's body by
/// `max_entry_bytes`, its headers by the HTTP stack).
fn length(length: usize) -> [u8; 4] {
    u32::try_from(length).unwrap_or(u32::MAX).to_be_bytes()
}

/// The entry in `bytes` with its age in seconds, `None` when it has expired on this
/// instance's clock, or why it cannot be read.
fn decode(
    bytes: Vec<u8>,
    clock: &GatewayClock,
) -> Result<Option<(Arc<CachedResponse>, u64)>, &'static str> {
    let bytes = Bytes::from(bytes);
    let mut reader = Reader {
        bytes: &bytes,
        at: 0,
    };
    if reader.take(4) != Some(LAYOUT) {
        return Err("not an entry of this layout");
    }
    let status = reader.u16().ok_or("cut short")?;
    let status = StatusCode::from_u16(status).map_err(|_| "not an HTTP status")?;
    let stored = reader.u64().ok_or("cut short")?;
    let expires = reader.u64().ok_or("cut short")?;
    let now = clock.unix_millis();
    if now >= expires {
        return Ok(None);
    }
    let count = reader.u32().ok_or("cut short")?;
    let mut headers = HeaderMap::new();
    for _ in 0..count {
        let name = reader.chunk().ok_or("cut short")?;
        let value = reader.chunk().ok_or("cut short")?;
        headers
            .try_append(
                HeaderName::from_bytes(name).map_err(|_| "not a header name")?,
                HeaderValue::from_bytes(value).map_err(|_| "not a header value")?,
            )
            .map_err(|_| "too many headers")?;
    }
    let body = bytes.slice(reader.at..);
    let age = Duration::from_millis(now.saturating_sub(stored));
    let left = Duration::from_millis(expires - now);
    let elapsed = clock.elapsed();
    let entry = CachedResponse {
        status,
        headers,
        weight: u32::try_from(bytes.len()).unwrap_or(u32::MAX),
        body,
        stored_at: elapsed.saturating_sub(age),
        expires_at: elapsed + left,
        ttl: Duration::from_millis(expires.saturating_sub(stored)),
    };
    Ok(Some((Arc::new(entry), age.as_secs())))
}

/// Reads an entry's fields, never past its end.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, count: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(count)?;
        let taken = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(taken)
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }

    fn chunk(&mut self) -> Option<&'a [u8]> {
        let length = usize::try_from(self.u32()?).ok()?;
        self.take(length)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn entry() -> CachedResponse {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.append("x-many", HeaderValue::from_static("one"));
        headers.append("x-many", HeaderValue::from_static("two"));
        CachedResponse {
            status: StatusCode::CREATED,
            headers,
            body: Bytes::from_static(b"{\"id\":1}"),
            stored_at: Duration::ZERO,
            expires_at: Duration::from_secs(60),
            ttl: Duration::from_secs(60),
            weight: 0,
        }
    }

    #[test]
    fn an_entry_reads_back_with_its_age_until_it_expires() {
        let manual = ManualClock::starting_at(1_000_000);
        let clock = manual.clock();
        let stored = clock.unix_millis();
        let bytes = encode(&entry(), stored, stored + 60_000);
        manual.advance(Duration::from_millis(7_500));
        let (read, age) = decode(bytes.clone(), &clock).unwrap().unwrap();
        assert_eq!(age, 7);
        assert_eq!(read.status, StatusCode::CREATED);
        assert_eq!(read.body, Bytes::from_static(b"{\"id\":1}"));
        let many: Vec<_> = read.headers.get_all("x-many").iter().collect();
        assert_eq!(many, ["one", "two"]);
        assert_eq!(read.headers["content-type"], "application/json");
        manual.advance(Duration::from_millis(52_500));
        assert!(decode(bytes, &clock).unwrap().is_none());
    }

    #[test]
    fn damaged_entries_are_refused_and_never_panic() {
        let clock = ManualClock::starting_at(1_000_000).clock();
        let stored = clock.unix_millis();
        let bytes = encode(&entry(), stored, stored + 60_000);
        let body_starts = bytes.len() - 8;
        // Every cut inside the head is refused; a cut in the body only shortens it.
        for cut in 0..body_starts {
            assert!(
                decode(bytes[..cut].to_vec(), &clock).is_err(),
                "cut at {cut}"
            );
        }
        let mut other = bytes.clone();
        other[0] = b'x';
        assert_eq!(
            decode(other, &clock).err(),
            Some("not an entry of this layout")
        );
        let mut huge_length = bytes.clone();
        huge_length[26..30].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(decode(huge_length, &clock).err(), Some("cut short"));
        // More distinct header names than a HeaderMap holds: refused, not a panic.
        let mut many = Vec::from(&bytes[..22]);
        many.extend_from_slice(&40_000u32.to_be_bytes());
        for index in 0..40_000u32 {
            let name = format!("x-{index}");
            many.extend_from_slice(&length(name.len()));
            many.extend_from_slice(name.as_bytes());
            many.extend_from_slice(&length(1));
            many.push(b'v');
        }
        assert_eq!(decode(many, &clock).err(), Some("too many headers"));
        let mut bad_status = bytes;
        bad_status[4..6].copy_from_slice(&7u16.to_be_bytes());
        assert_eq!(decode(bad_status, &clock).err(), Some("not an HTTP status"));
    }
}
