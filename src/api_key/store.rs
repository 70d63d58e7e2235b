//! Where keys live: the [`ApiKeyStore`] trait and the in-memory store.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::{ApiKey, KeyDigest};
use crate::error::ConfigError;
use crate::usage_plan::PlanMemo;

/// What the gateway knows about a key, without its value.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKeyInfo {
    id: Box<str>,
    name: Box<str>,
    enabled: bool,
    customer_id: Option<Box<str>>,
    description: Option<Box<str>>,
    /// The key's usage plan on the stage last asked about, kept with the key so that the
    /// usage-plan step finds it in memory the API-key step has just read.
    pub(crate) plan_memo: PlanMemo,
}

impl fmt::Debug for ApiKeyInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeyInfo")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("enabled", &self.enabled)
            .field("customer_id", &self.customer_id)
            .field("description", &self.description)
            .finish()
    }
}

impl ApiKeyInfo {
    pub(super) fn new(
        id: String,
        name: String,
        enabled: bool,
        customer_id: Option<String>,
        description: Option<String>,
    ) -> Self {
        Self {
            id: id.into(),
            name: name.into(),
            enabled,
            customer_id: customer_id.map(Into::into),
            description: description.map(Into::into),
            plan_memo: PlanMemo::default(),
        }
    }

    /// The key's id (`$context.identity.apiKeyId`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the key is accepted.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The customer the key belongs to.
    pub fn customer_id(&self) -> Option<&str> {
        self.customer_id.as_deref()
    }

    /// The description.
    pub fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }
}

/// A source of API keys, looked up by the digest of the presented value.
///
/// The lookup is synchronous and on the request path: an implementation backed by a database
/// should keep its own in-memory copy and refresh it in the background.
pub trait ApiKeyStore: Send + Sync + 'static {
    /// The key whose value has this digest, enabled or not.
    fn find(&self, digest: &KeyDigest) -> Option<Arc<ApiKeyInfo>>;
}

/// A SHA-256 digest is already uniformly distributed, so its first eight bytes are the hash.
/// Hash flooding needs colliding *entries*, and only the operator inserts keys.
#[derive(Default)]
struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

impl Hash for KeyDigest {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let mut prefix = [0u8; 8];
        prefix.copy_from_slice(&self.0[..8]);
        state.write_u64(u64::from_le_bytes(prefix));
    }
}

#[derive(Default)]
struct Index {
    by_digest: HashMap<KeyDigest, Arc<ApiKeyInfo>, BuildHasherDefault<DigestHasher>>,
    digest_of: HashMap<Box<str>, KeyDigest>,
}

impl Index {
    fn insert(
        &mut self,
        digest: KeyDigest,
        info: ApiKeyInfo,
    ) -> Result<Arc<ApiKeyInfo>, ConfigError> {
        let field = || format!("api_keys[{}]", info.id);
        if self.digest_of.contains_key(&*info.id) {
            return Err(ConfigError::new(
                field(),
                "a key with this id already exists",
            ));
        }
        if self.by_digest.contains_key(&digest) {
            return Err(ConfigError::new(
                format!("{}.value", field()),
                "a key with this value already exists",
            ));
        }
        let info = Arc::new(info);
        self.digest_of.insert(info.id.clone(), digest);
        self.by_digest.insert(digest, Arc::clone(&info));
        Ok(info)
    }

    fn unknown(id: &str) -> ConfigError {
        ConfigError::new(format!("api_keys[{id}]"), "no key has this id")
    }
}

/// Keys in memory, shared by every clone of the store and by the layers that use it; keys can
/// be added, disabled, enabled and removed while the gateway serves requests.
#[derive(Clone, Default)]
pub struct InMemoryApiKeyStore {
    index: Arc<RwLock<Index>>,
}

impl InMemoryApiKeyStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    // A panic while holding the lock cannot leave the maps half-updated (each update is one
    // insert or remove pair done after all checks), so a poisoned lock is still consistent.
    fn read(&self) -> RwLockReadGuard<'_, Index> {
        self.index
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Index> {
        self.index
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds a key. Invalid fields, a duplicate id or a duplicate value are errors that name the
    /// key by id, never by value.
    pub fn insert(&self, key: ApiKey) -> Result<Arc<ApiKeyInfo>, ConfigError> {
        let (digest, info) = key.into_parts()?;
        self.write().insert(digest, info)
    }

    /// Adds several keys, all or none.
    pub fn insert_all(
        &self,
        keys: impl IntoIterator<Item = ApiKey>,
    ) -> Result<Vec<Arc<ApiKeyInfo>>, ConfigError> {
        let parts = keys
            .into_iter()
            .map(ApiKey::into_parts)
            .collect::<Result<Vec<_>, _>>()?;
        let mut index = self.write();
        let mut staged = Index::default();
        for (digest, info) in &parts {
            if index.digest_of.contains_key(&*info.id) || index.by_digest.contains_key(digest) {
                let field = format!("api_keys[{}]", info.id);
                return Err(ConfigError::new(
                    field,
                    "a key with this id or value already exists",
                ));
            }
            staged.insert(*digest, info.clone())?;
        }
        let mut added = Vec::with_capacity(parts.len());
        for (digest, info) in parts {
            added.push(index.insert(digest, info)?);
        }
        Ok(added)
    }

    /// Imports keys in API Gateway's CSV format: a header row naming the columns `name` and
    /// `key` (required) and `enabled`, `description`, `customerId`, `id` (optional; other
    /// columns are ignored), then one key per row. All rows are imported or none; an error
    /// names the row, never the key value.
    pub fn import_csv(&self, csv_text: &str) -> Result<Vec<Arc<ApiKeyInfo>>, ConfigError> {
        let mut reader = csv::ReaderBuilder::new()
            .trim(csv::Trim::All)
            .from_reader(csv_text.as_bytes());
        let headers = reader
            .headers()
            .map_err(|_| ConfigError::new("csv line 1", "the header row is not valid CSV"))?
            .clone();
        let column = |name: &str| headers.iter().position(|h| h.eq_ignore_ascii_case(name));
        let (Some(name_column), Some(key_column)) = (column("name"), column("key")) else {
            return Err(ConfigError::new(
                "csv line 1",
                "the header row must name the columns `name` and `key`",
            ));
        };
        let (enabled_column, description_column) = (column("enabled"), column("description"));
        let (customer_column, id_column) = (column("customerid"), column("id"));
        let mut keys = Vec::new();
        for (index, record) in reader.records().enumerate() {
            let line = format!("csv line {}", index + 2);
            let record = record.map_err(|_| ConfigError::new(&line, "not a valid CSV row"))?;
            let cell = |column: Option<usize>| {
                column
                    .and_then(|c| record.get(c))
                    .filter(|value| !value.is_empty())
            };
            let name = cell(Some(name_column))
                .ok_or_else(|| ConfigError::new(format!("{line}.name"), "a key needs a name"))?;
            let value = cell(Some(key_column))
                .ok_or_else(|| ConfigError::new(format!("{line}.key"), "a key needs a value"))?;
            let enabled = match cell(enabled_column) {
                None => true,
                Some(text) if text.eq_ignore_ascii_case("true") => true,
                Some(text) if text.eq_ignore_ascii_case("false") => false,
                Some(_) => {
                    return Err(ConfigError::new(
                        format!("{line}.enabled"),
                        "expected `true` or `false`",
                    ));
                }
            };
            let mut key = ApiKey::new(name, value).enabled(enabled);
            if let Some(description) = cell(description_column) {
                key = key.description(description);
            }
            if let Some(customer) = cell(customer_column) {
                key = key.customer_id(customer);
            }
            if let Some(id) = cell(id_column) {
                key = key.id(id);
            }
            // Check here so the error names the row rather than a generated id.
            key.clone()
                .into_parts()
                .map_err(|error| ConfigError::new(&line, error.rule().to_owned()))?;
            keys.push(key);
        }
        self.insert_all(keys)
    }

    /// Enables or disables the key with this id.
    pub fn set_enabled(&self, id: &str, enabled: bool) -> Result<(), ConfigError> {
        let mut index = self.write();
        let digest = *index.digest_of.get(id).ok_or_else(|| Index::unknown(id))?;
        if let Some(info) = index.by_digest.get_mut(&digest) {
            Arc::make_mut(info).enabled = enabled;
        }
        Ok(())
    }

    /// Removes the key with this id.
    pub fn remove(&self, id: &str) -> Result<Arc<ApiKeyInfo>, ConfigError> {
        let mut index = self.write();
        let digest = index
            .digest_of
            .remove(id)
            .ok_or_else(|| Index::unknown(id))?;
        index
            .by_digest
            .remove(&digest)
            .ok_or_else(|| Index::unknown(id))
    }

    /// The key with this id.
    pub fn get(&self, id: &str) -> Option<Arc<ApiKeyInfo>> {
        let index = self.read();
        let digest = index.digest_of.get(id)?;
        index.by_digest.get(digest).cloned()
    }

    /// The key whose value is `value`.
    pub fn find_value(&self, value: &str) -> Option<Arc<ApiKeyInfo>> {
        self.find(&KeyDigest::of(value.as_bytes()))
    }

    /// How many keys the store holds.
    pub fn len(&self) -> usize {
        self.read().by_digest.len()
    }

    /// Whether the store holds no keys.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl ApiKeyStore for InMemoryApiKeyStore {
    fn find(&self, digest: &KeyDigest) -> Option<Arc<ApiKeyInfo>> {
        self.read().by_digest.get(digest).cloned()
    }
}

impl fmt::Debug for InMemoryApiKeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InMemoryApiKeyStore")
            .field("keys", &self.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALUE_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const VALUE_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    #[test]
    fn insert_find_disable_remove() {
        let store = InMemoryApiKeyStore::new();
        let info = store
            .insert(
                ApiKey::new("alice", VALUE_A)
                    .id("a")
                    .customer_id("cust-1")
                    .description("d"),
            )
            .unwrap();
        assert_eq!(info.id(), "a");
        assert_eq!(info.customer_id(), Some("cust-1"));
        let found = store.find_value(VALUE_A).unwrap();
        assert!(found.enabled());
        assert_eq!(found.name(), "alice");
        assert!(store.find_value(VALUE_B).is_none());

        store.set_enabled("a", false).unwrap();
        assert!(!store.find_value(VALUE_A).unwrap().enabled());
        assert!(info.enabled(), "earlier snapshots are unchanged");
        store.set_enabled("a", true).unwrap();
        assert!(store.get("a").unwrap().enabled());

        assert_eq!(store.remove("a").unwrap().id(), "a");
        assert!(store.find_value(VALUE_A).is_none());
        assert!(store.is_empty());
        assert_eq!(store.remove("a").unwrap_err().field(), "api_keys[a]");
        assert_eq!(
            store.set_enabled("nope", true).unwrap_err().field(),
            "api_keys[nope]"
        );
    }

    #[test]
    fn duplicates_are_refused_without_echoing_values() {
        let store = InMemoryApiKeyStore::new();
        store.insert(ApiKey::new("alice", VALUE_A).id("a")).unwrap();
        let same_value = store
            .insert(ApiKey::new("bob", VALUE_A).id("b"))
            .unwrap_err();
        assert_eq!(same_value.field(), "api_keys[b].value");
        assert!(!same_value.to_string().contains(VALUE_A));
        let same_id = store
            .insert(ApiKey::new("bob", VALUE_B).id("a"))
            .unwrap_err();
        assert_eq!(same_id.field(), "api_keys[a]");
        let digest_twin = store
            .insert(ApiKey::from_digest("carol", KeyDigest::of(VALUE_A.as_bytes())).id("c"))
            .unwrap_err();
        assert!(digest_twin.rule().contains("value already exists"));
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn insert_all_is_all_or_nothing() {
        let store = InMemoryApiKeyStore::new();
        let error = store
            .insert_all([
                ApiKey::new("a", VALUE_A).id("a"),
                ApiKey::new("b", VALUE_A).id("b"),
            ])
            .unwrap_err();
        assert!(error.rule().contains("already exists"));
        assert!(store.is_empty());
        assert_eq!(
            store
                .insert_all([ApiKey::new("a", VALUE_A), ApiKey::new("b", VALUE_B)])
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn csv_import() {
        let store = InMemoryApiKeyStore::new();
        let csv = format!(
            "Name,Key,Description,Enabled,usageplanIds\n\
             alice,{VALUE_A},first key,true,plan1\n\
             bob , {VALUE_B} ,,FALSE,\n"
        );
        let added = store.import_csv(&csv).unwrap();
        assert_eq!(added.len(), 2);
        assert_eq!(added[0].description(), Some("first key"));
        assert!(!store.find_value(VALUE_B).unwrap().enabled());
        assert_eq!(store.find_value(VALUE_B).unwrap().name(), "bob");
    }

    #[test]
    fn csv_errors_name_the_row_and_import_nothing() {
        let cases = [
            (
                "key\nvalue-without-name-0000000",
                "csv line 1",
                "`name` and `key`",
            ),
            (
                &format!("name,key\nalice,{VALUE_A}\nbob,short-key\n") as &str,
                "csv line 3",
                "20–128",
            ),
            (
                &format!("name,key,enabled\nalice,{VALUE_A},yes\n"),
                "csv line 2.enabled",
                "true",
            ),
            (
                &format!("name,key\n,{VALUE_A}\n"),
                "csv line 2.name",
                "name",
            ),
            ("name,key\nalice,\n", "csv line 2.key", "value"),
            (
                &format!("name,key\nalice,{VALUE_A}\nbob,{VALUE_A}\n"),
                "api_keys[",
                "already exists",
            ),
            ("name,key\n\"unterminated,x\n", "csv line 2", "CSV"),
        ];
        for (csv, field, rule) in cases {
            let store = InMemoryApiKeyStore::new();
            let error = store.import_csv(csv).unwrap_err();
            assert!(error.field().starts_with(field), "{csv}: {error}");
            assert!(error.rule().contains(rule), "{csv}: {error}");
            assert!(!error.to_string().contains(VALUE_A));
            assert!(store.is_empty(), "{csv}");
        }
    }
}
