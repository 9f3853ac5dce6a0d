//! The OpenMLS provider: libcrux crypto (every suite we offer, X-Wing
//! included) and an in-memory key/value store.
//!
//! The store is OpenMLS's `MemoryStorage`: a map from storage keys to
//! serialized values. It holds every secret a client has (signature key,
//! KeyPackage init and leaf keys, epoch secrets, ratchet trees), so it is the
//! unit that [`crate::store_file`] encrypts and writes, and the unit that a
//! failed call is rolled back to ([`Snapshot`]).

use std::collections::HashMap;
use std::sync::{OnceLock, PoisonError, RwLockReadGuard, RwLockWriteGuard};

use openmls_libcrux_crypto::CryptoProvider;
use openmls_memory_storage::{MemoryStorage, MemoryStorageError};
use openmls_traits::OpenMlsProvider;
use zeroize::Zeroize;

use crate::error::{Error, Result};

/// The storage backend's error type.
pub type StorageError = MemoryStorageError;

/// Every stored entry: storage key -> serialized value.
pub type Entries = HashMap<Vec<u8>, Vec<u8>>;

/// Crypto and storage for one client.
pub struct Provider {
    crypto: CryptoProvider,
    storage: MemoryStorage,
}

impl Provider {
    /// An empty store.
    pub fn new() -> Result<Self> {
        Self::with_entries(Entries::new())
    }

    /// A store holding `entries` (read back from a state file).
    pub fn with_entries(entries: Entries) -> Result<Self> {
        let crypto = CryptoProvider::new()
            .map_err(|_| Error::state("the system random number generator is unavailable"))?;
        let storage = MemoryStorage::default();
        *write(&storage) = entries;
        Ok(Self { crypto, storage })
    }

    /// A copy of every entry, to [`restore`](Self::restore) if a call fails.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot(read(&self.storage).clone())
    }

    /// Puts the entries of `snapshot` back, wiping the ones they replace.
    pub fn restore(&self, mut snapshot: Snapshot) {
        let mut values = write(&self.storage);
        zeroize_entries(&mut values);
        *values = std::mem::take(&mut snapshot.0);
    }

    /// Reads one entry outside OpenMLS's key space (see [`crate::meta`]).
    pub fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        read(&self.storage).get(key).cloned()
    }

    /// Writes one entry outside OpenMLS's key space.
    pub fn put(&self, key: Vec<u8>, value: Vec<u8>) {
        if let Some(mut old) = write(&self.storage).insert(key, value) {
            old.zeroize();
        }
    }

    /// Deletes one entry outside OpenMLS's key space.
    pub fn remove(&self, key: &[u8]) {
        if let Some(mut old) = write(&self.storage).remove(key) {
            old.zeroize();
        }
    }

    /// Runs `f` on every entry (read-only), e.g. to serialize the store.
    pub fn with_entries_ref<T>(&self, f: impl FnOnce(&Entries) -> T) -> T {
        f(&read(&self.storage))
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        zeroize_entries(&mut write(&self.storage));
    }
}

impl OpenMlsProvider for Provider {
    type CryptoProvider = CryptoProvider;
    type RandProvider = CryptoProvider;
    type StorageProvider = MemoryStorage;

    fn storage(&self) -> &Self::StorageProvider {
        &self.storage
    }

    fn crypto(&self) -> &Self::CryptoProvider {
        &self.crypto
    }

    fn rand(&self) -> &Self::RandProvider {
        &self.crypto
    }
}

/// The entries of a store at one moment; wiped when dropped.
pub struct Snapshot(Entries);

impl Drop for Snapshot {
    fn drop(&mut self) {
        zeroize_entries(&mut self.0);
    }
}

/// Overwrites every value (they hold private keys) before the map is freed.
fn zeroize_entries(entries: &mut Entries) {
    for value in entries.values_mut() {
        value.zeroize();
    }
    entries.clear();
}

// A panic inside OpenMLS while it holds the store's lock poisons the lock;
// the call is then rolled back from its snapshot, so the data is usable.
fn read(storage: &MemoryStorage) -> RwLockReadGuard<'_, Entries> {
    storage
        .values
        .read()
        .unwrap_or_else(PoisonError::into_inner)
}

fn write(storage: &MemoryStorage) -> RwLockWriteGuard<'_, Entries> {
    storage
        .values
        .write()
        .unwrap_or_else(PoisonError::into_inner)
}

/// A crypto provider for stateless checks (verifying a KeyPackage) that need
/// no client.
pub fn shared_crypto() -> Result<&'static CryptoProvider> {
    static CRYPTO: OnceLock<Option<CryptoProvider>> = OnceLock::new();
    CRYPTO
        .get_or_init(|| CryptoProvider::new().ok())
        .as_ref()
        .ok_or_else(|| Error::state("the system random number generator is unavailable"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_puts_the_snapshot_back() {
        let provider = Provider::new().unwrap();
        provider.put(b"a".to_vec(), b"1".to_vec());
        let snapshot = provider.snapshot();
        provider.put(b"a".to_vec(), b"2".to_vec());
        provider.put(b"b".to_vec(), b"3".to_vec());
        provider.restore(snapshot);
        assert_eq!(provider.get(b"a"), Some(b"1".to_vec()));
        assert_eq!(provider.get(b"b"), None);
    }
}
