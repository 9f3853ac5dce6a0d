//! The OpenMLS provider: crypto, randomness and storage behind one type.
//!
//! Everything else in the crate names [`Provider`] and [`StorageError`] only,
//! so replacing the in-memory store with a persistent one touches this file
//! alone.

use std::sync::OnceLock;

use openmls_rust_crypto::{MemoryStorage, MemoryStorageError, RustCrypto};
use openmls_traits::OpenMlsProvider;

/// The storage backend's error type.
pub type StorageError = MemoryStorageError;

/// Crypto (RustCrypto) and an in-memory store for one client.
///
/// A client's key packages, group states and epoch secrets all live here; a
/// Welcome can only be joined by the client whose provider made the
/// KeyPackage.
#[derive(Debug, Default)]
pub struct Provider {
    crypto: RustCrypto,
    storage: MemoryStorage,
}

impl Provider {
    pub fn new() -> Self {
        Self::default()
    }
}

impl OpenMlsProvider for Provider {
    type CryptoProvider = RustCrypto;
    type RandProvider = RustCrypto;
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

/// A crypto provider for stateless checks (verifying a KeyPackage) that need
/// no client.
pub fn shared_crypto() -> &'static RustCrypto {
    static CRYPTO: OnceLock<RustCrypto> = OnceLock::new();
    CRYPTO.get_or_init(RustCrypto::default)
}
