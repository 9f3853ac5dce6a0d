//! The OpenMLS provider: libcrux crypto (every suite we offer, X-Wing
//! included) with the client's randomness ([`crate::crypto`]), and the
//! client's journaled store ([`crate::storage`]).
//!
//! The store holds every secret a client has (signature key, KeyPackage init
//! and leaf keys, epoch secrets, ratchet trees), so it is the unit that
//! [`crate::store_file`] encrypts and writes, and whose journal undoes a
//! failed call.

use std::sync::OnceLock;

use openmls_libcrux_crypto::CryptoProvider;
use openmls_traits::OpenMlsProvider;

use crate::crypto::{Crypto, RNG_SEED_LEN};
use crate::error::{Error, Result};
pub use crate::storage::{Entries, Store, StoreError as StorageError};

/// Crypto and storage for one client.
pub struct Provider {
    crypto: Crypto,
    store: Store,
}

impl Provider {
    /// An empty store; randomness from `rng_seed` or, without one, the
    /// operating system.
    pub fn new(rng_seed: Option<[u8; RNG_SEED_LEN]>) -> Result<Self> {
        Self::with_entries(Entries::new(), rng_seed)
    }

    /// A store holding `entries` (read back from a state file).
    pub fn with_entries(entries: Entries, rng_seed: Option<[u8; RNG_SEED_LEN]>) -> Result<Self> {
        Ok(Self {
            crypto: Crypto::new(rng_seed)?,
            store: Store::new(entries),
        })
    }

    /// Reads one entry outside OpenMLS's key space (see [`crate::meta`]).
    pub fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.store.get(key)
    }

    /// Writes one entry outside OpenMLS's key space.
    pub fn put(&self, key: Vec<u8>, value: Vec<u8>) {
        self.store.set(key, Some(value));
    }

    /// Deletes one entry outside OpenMLS's key space.
    pub fn remove(&self, key: &[u8]) {
        self.store.set(key.to_vec(), None);
    }
}

impl OpenMlsProvider for Provider {
    type CryptoProvider = Crypto;
    type RandProvider = Crypto;
    type StorageProvider = Store;

    fn storage(&self) -> &Self::StorageProvider {
        &self.store
    }

    fn crypto(&self) -> &Self::CryptoProvider {
        &self.crypto
    }

    fn rand(&self) -> &Self::RandProvider {
        &self.crypto
    }
}

/// A crypto provider for stateless checks (verifying a KeyPackage) that need
/// no client and draw no randomness.
pub fn shared_crypto() -> Result<&'static CryptoProvider> {
    static CRYPTO: OnceLock<Option<CryptoProvider>> = OnceLock::new();
    CRYPTO
        .get_or_init(|| CryptoProvider::new().ok())
        .as_ref()
        .ok_or_else(|| Error::state("the system random number generator is unavailable"))
}
