//! Response cache entries on Redis: one string per entry (`SET PX`), and per cache an index
//! of the entries by expiry, their sizes and their total, so that the cache keeps to its
//! capacity and can be flushed without a `SCAN` of the whole server.

use redis::Script;

use super::{RedisBackend, Unavailable};

/// Forgets the entries of the index that have expired (at most 256 per call), keeping the
/// total in step. Shared by the scripts that write or count.
///
/// KEYS: the index (sorted set of entry names by expiry in ms on the server's clock), the
/// sizes (hash of entry name → bytes, and the total under `#total`, which no entry name is).
const PURGE: &str = r"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local total = tonumber(redis.call('HGET', KEYS[2], '#total') or '0')
local function forget(name)
    local size = tonumber(redis.call('HGET', KEYS[2], name) or '0')
    redis.call('HDEL', KEYS[2], name)
    redis.call('ZREM', KEYS[1], name)
    total = total - size
end
for _, name in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 256)) do
    redis.call('DEL', name)
    forget(name)
end
-- Without an index (lost to eviction, say), no entry is counted.
if redis.call('EXISTS', KEYS[1]) == 0 then total = 0 end
local function keep_total()
    if total < 0 then total = 0 end
    if redis.call('EXISTS', KEYS[2]) == 1 then
        redis.call('HSET', KEYS[2], '#total', total)
    end
end
";

/// Stores an entry, evicting the entries closest to expiry until it fits the capacity; an
/// entry bigger than the capacity is not stored.
///
/// KEYS: as [`PURGE`], then the entry. ARGV: the entry's bytes, its TTL in ms, its size as
/// counted against the capacity, the capacity, how long the index and sizes outlive their
/// last write in ms.
///
/// Returns the cache's total after the store.
const PUT: &str = r"
local size = tonumber(ARGV[3])
local capacity = tonumber(ARGV[4])
if size > capacity then
    keep_total()
    return total
end
forget(KEYS[3])
while total + size > capacity do
    local soonest = redis.call('ZRANGE', KEYS[1], 0, 0)[1]
    if not soonest then break end
    redis.call('DEL', soonest)
    forget(soonest)
end
if total < 0 then total = 0 end
total = total + size
redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[2])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), KEYS[3])
redis.call('HSET', KEYS[2], KEYS[3], size, '#total', total)
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
return total
";

/// Removes one entry. KEYS: as [`PURGE`], then the entry. Returns 1 when it was there.
const REMOVE: &str = r"
local existed = redis.call('DEL', KEYS[3])
forget(KEYS[3])
keep_total()
return existed
";

/// Removes up to ARGV[1] entries, so that no call blocks Redis for long. KEYS: as
/// [`PURGE`]. Returns {entries removed, entries left}; with none left, the index and sizes
/// go too.
const FLUSH: &str = r"
local names = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
for _, name in ipairs(names) do
    redis.call('DEL', name)
    forget(name)
end
local left = redis.call('ZCARD', KEYS[1])
if left == 0 then
    redis.call('DEL', KEYS[1], KEYS[2])
else
    keep_total()
end
return {#names, left}
";

/// Counts the entries and their bytes. KEYS: as [`PURGE`]. Returns {entries, bytes}.
const COUNT: &str = r"
keep_total()
return {redis.call('ZCARD', KEYS[1]), total}
";

/// The cache scripts, loaded once per backend.
pub(super) struct CacheScripts {
    put: Script,
    remove: Script,
    flush: Script,
    count: Script,
}

impl CacheScripts {
    pub(super) fn new() -> Self {
        Self {
            put: Script::new(&format!("{PURGE}{PUT}")),
            remove: Script::new(&format!("{PURGE}{REMOVE}")),
            flush: Script::new(&format!("{PURGE}{FLUSH}")),
            count: Script::new(&format!("{PURGE}{COUNT}")),
        }
    }
}

/// One entry to store.
pub(crate) struct CachePut<'a> {
    pub(crate) key: &'a [u8],
    pub(crate) value: Vec<u8>,
    pub(crate) ttl_millis: u64,
    pub(crate) size: u64,
    pub(crate) capacity: u64,
}

/// The entries a flush removes per script call.
const FLUSH_BATCH: u64 = 500;
/// The most batches one flush runs (five million entries).
const MAX_FLUSH_BATCHES: usize = 10_000;

/// How long a cache's index and sizes outlive their last write: past the longest TTL,
/// every entry they list has expired.
const BOOKKEEPING_MILLIS: u64 = (crate::cache::MAX_TTL_SECONDS as u64 + 60) * 1000;

impl RedisBackend {
    /// `<prefix>{<tag>}:e:<key>`: an entry's name, in its cache's slot.
    fn entry_name(&self, tag: &str, key: &[u8]) -> Vec<u8> {
        let mut name = self.name(tag, "e:").into_bytes();
        name.extend_from_slice(key);
        name
    }

    fn bookkeeping(&self, tag: &str) -> [String; 2] {
        [self.name(tag, "index"), self.name(tag, "sizes")]
    }

    /// The stored bytes of `key` in the cache `tag`.
    pub(crate) async fn cache_get(
        &self,
        tag: &str,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, Unavailable> {
        let name = self.entry_name(tag, key);
        self.run_with(
            |mut connection| async move {
                redis::cmd("GET")
                    .arg(name)
                    .query_async(&mut connection)
                    .await
            },
            false,
        )
        .await
    }

    /// Stores an entry in the cache `tag` (`SET PX`), within its capacity.
    pub(crate) async fn cache_put(&self, tag: &str, put: CachePut<'_>) -> Result<(), Unavailable> {
        let mut invocation = self.inner.cache.put.prepare_invoke();
        for name in self.bookkeeping(tag) {
            invocation.key(name);
        }
        invocation
            .key(self.entry_name(tag, put.key))
            .arg(put.value)
            .arg(put.ttl_millis.max(1))
            .arg(put.size)
            .arg(put.capacity)
            .arg(BOOKKEEPING_MILLIS);
        self.run_with(
            |mut connection| async move { invocation.invoke_async::<i64>(&mut connection).await },
            false,
        )
        .await
        .map(drop)
    }

    /// Removes `key` from the cache `tag`; true when it was there.
    pub(crate) async fn cache_remove(&self, tag: &str, key: &[u8]) -> Result<bool, Unavailable> {
        let mut invocation = self.inner.cache.remove.prepare_invoke();
        for name in self.bookkeeping(tag) {
            invocation.key(name);
        }
        invocation.key(self.entry_name(tag, key));
        self.run_with(
            |mut connection| async move { invocation.invoke_async::<i64>(&mut connection).await },
            false,
        )
        .await
        .map(|removed| removed > 0)
    }

    /// Removes every entry of the cache `tag`, a batch per call; returns how many there were.
    pub(crate) async fn cache_flush(&self, tag: &str) -> Result<u64, Unavailable> {
        let mut removed = 0;
        // Each batch removes at least one entry while any is left; the bound only stops a
        // flush that other instances keep refilling.
        for _ in 0..MAX_FLUSH_BATCHES {
            let mut invocation = self.inner.cache.flush.prepare_invoke();
            for name in self.bookkeeping(tag) {
                invocation.key(name);
            }
            invocation.arg(FLUSH_BATCH);
            let (batch, left): (u64, u64) = self
                .run_with(
                    |mut connection| async move { invocation.invoke_async(&mut connection).await },
                    false,
                )
                .await?;
            removed += batch;
            if left == 0 {
                break;
            }
        }
        Ok(removed)
    }

    /// The cache `tag`'s entries and their bytes.
    pub(crate) async fn cache_count(&self, tag: &str) -> Result<(u64, u64), Unavailable> {
        let mut invocation = self.inner.cache.count.prepare_invoke();
        for name in self.bookkeeping(tag) {
            invocation.key(name);
        }
        self.run_with(
            |mut connection| async move {
                invocation.invoke_async::<(u64, u64)>(&mut connection).await
            },
            false,
        )
        .await
    }
}
