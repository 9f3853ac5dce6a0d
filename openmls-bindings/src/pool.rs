//! The KeyPackage pool and the last-resort KeyPackages of a client.
//!
//! Single-use KeyPackages are recorded in the store ([`meta::Pool`]) so the
//! client can tell how many are left and delete the private keys of expired
//! ones; a Welcome deletes the one it used. The last-resort KeyPackage of a
//! ciphersuite (RFC 9420 §16.8, the last_resort extension) survives joins and
//! restarts until it is rotated.

use openmls::prelude::{Ciphersuite, KeyPackageBundle, KeyPackageRef, MlsMessageOut};
use openmls_traits::storage::StorageProvider as _;
use openmls_traits::OpenMlsProvider;
use tls_codec::{DeserializeBytes, Serialize as _, VLBytes};

use crate::client::{encode, now_secs, ClientState, Inner, Keys};
use crate::error::{Error, Result};
use crate::key_package::{build_key_package, ciphersuite_code, ciphersuite_from_code};
use crate::meta::{self, LastResort, Pool, PoolEntry};
use crate::provider::Provider;

/// Most KeyPackages made by one call.
pub const MAX_KEY_PACKAGES_PER_CALL: usize = 1000;

/// A last-resort KeyPackage closer than this to its expiry is replaced.
const LAST_RESORT_RENEW_MARGIN_SECS: u64 = 7 * 24 * 60 * 60;

impl ClientState {
    /// `count` fresh single-use KeyPackages. Their private keys stay in the
    /// store until a Welcome uses them or they expire.
    pub fn key_packages(&self, count: usize, ciphersuite: i64) -> Result<Vec<Vec<u8>>> {
        let suite = ciphersuite_from_code(ciphersuite)?;
        if count > MAX_KEY_PACKAGES_PER_CALL {
            return Err(Error::invalid_input(format!(
                "at most {MAX_KEY_PACKAGES_PER_CALL} key packages per call"
            )));
        }
        self.transact(|keys, inner| {
            let provider = &inner.provider;
            let mut pool = prune_pool(provider)?;
            let mut out = Vec::with_capacity(count);
            for _ in 0..count {
                let bundle = build_key_package(
                    provider,
                    &keys.signer,
                    &keys.credential,
                    suite,
                    false,
                    None,
                )?;
                pool.entries.push(PoolEntry {
                    hash_ref: encode_ref(provider, &bundle)?,
                    ciphersuite: ciphersuite_code(suite),
                    not_after: bundle.key_package().life_time().not_after(),
                });
                out.push(encode(&MlsMessageOut::from(bundle))?);
            }
            meta::store(provider, meta::KEY_PACKAGE_POOL, &pool)?;
            Ok(out)
        })
    }

    /// How many single-use KeyPackages of `ciphersuite` are unused and
    /// unexpired (not counting the last-resort one).
    pub fn unused_key_packages(&self, ciphersuite: i64) -> Result<usize> {
        let code = ciphersuite_code(ciphersuite_from_code(ciphersuite)?);
        self.read(|_, inner| {
            let provider = &inner.provider;
            let pool = meta::load::<Pool>(provider, meta::KEY_PACKAGE_POOL)?.unwrap_or_default();
            let now = now_secs();
            let mut count = 0;
            for entry in &pool.entries {
                if entry.ciphersuite == code
                    && entry.not_after > now
                    && key_package_stored(provider, entry.hash_ref.as_slice())?
                {
                    count += 1;
                }
            }
            Ok(count)
        })
    }

    /// The last-resort KeyPackage of `ciphersuite`: the same bytes on every
    /// call (and after a restart) until it is rotated — explicitly, or
    /// because it is within a week of expiring.
    pub fn last_resort_key_package(&self, ciphersuite: i64) -> Result<Vec<u8>> {
        let suite = ciphersuite_from_code(ciphersuite)?;
        let key = meta::last_resort_key(ciphersuite_code(suite));
        let current = |inner: &Inner| -> Result<Option<Vec<u8>>> {
            Ok(meta::load::<LastResort>(&inner.provider, &key)?
                .filter(|lr| lr.not_after > now_secs() + LAST_RESORT_RENEW_MARGIN_SECS)
                .map(|lr| lr.key_package.into()))
        };
        if let Some(bytes) = self.read(|_, inner| current(inner))? {
            return Ok(bytes);
        }
        self.transact(|keys, inner| match current(inner)? {
            Some(bytes) => Ok(bytes),
            None => rotate_last_resort(keys, &inner.provider, suite),
        })
    }

    /// Replaces the last-resort KeyPackage of `ciphersuite`; returns the new
    /// one. The previous one still joins until the next rotation.
    pub fn rotate_last_resort(&self, ciphersuite: i64) -> Result<Vec<u8>> {
        let suite = ciphersuite_from_code(ciphersuite)?;
        self.transact(|keys, inner| rotate_last_resort(keys, &inner.provider, suite))
    }
}

/// A KeyPackage's hash reference as we record it (its TLS encoding).
fn encode_ref(provider: &Provider, bundle: &KeyPackageBundle) -> Result<VLBytes> {
    let hash_ref = bundle.key_package().hash_ref(provider.crypto())?;
    let bytes = hash_ref
        .tls_serialize_detached()
        .map_err(|_| Error::state("cannot encode a key package reference"))?;
    Ok(bytes.into())
}

fn decode_ref(bytes: &[u8]) -> Result<KeyPackageRef> {
    KeyPackageRef::tls_deserialize_exact_bytes(bytes)
        .map_err(|_| Error::storage("a key package reference in the MLS state is malformed"))
}

fn key_package_stored(provider: &Provider, hash_ref: &[u8]) -> Result<bool> {
    let bundle: Option<KeyPackageBundle> =
        provider.storage().key_package(&decode_ref(hash_ref)?)?;
    Ok(bundle.is_some())
}

fn delete_key_package(provider: &Provider, hash_ref: &[u8]) -> Result<()> {
    provider
        .storage()
        .delete_key_package(&decode_ref(hash_ref)?)?;
    Ok(())
}

/// The pool without entries that were used or have expired; the private
/// keys of expired ones are deleted.
fn prune_pool(provider: &Provider) -> Result<Pool> {
    let pool = meta::load::<Pool>(provider, meta::KEY_PACKAGE_POOL)?.unwrap_or_default();
    let now = now_secs();
    let mut kept = Pool::default();
    for entry in pool.entries {
        if !key_package_stored(provider, entry.hash_ref.as_slice())? {
            continue;
        }
        if entry.not_after <= now {
            delete_key_package(provider, entry.hash_ref.as_slice())?;
            continue;
        }
        kept.entries.push(entry);
    }
    Ok(kept)
}

fn rotate_last_resort(keys: &Keys, provider: &Provider, suite: Ciphersuite) -> Result<Vec<u8>> {
    let key = meta::last_resort_key(ciphersuite_code(suite));
    let old = meta::load::<LastResort>(provider, &key)?;
    let bundle = build_key_package(provider, &keys.signer, &keys.credential, suite, true, None)?;
    let bytes = encode(&MlsMessageOut::from(bundle.clone()))?;
    let previous_hash_ref = match old {
        Some(old) => {
            if let Some(older) = &old.previous_hash_ref {
                delete_key_package(provider, older.as_slice())?;
            }
            Some(old.hash_ref)
        }
        None => None,
    };
    meta::store(
        provider,
        &key,
        &LastResort {
            key_package: bytes.as_slice().into(),
            hash_ref: encode_ref(provider, &bundle)?,
            not_after: bundle.key_package().life_time().not_after(),
            previous_hash_ref,
        },
    )?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use openmls::prelude::Lifetime;

    use super::*;
    use crate::key_package::SUPPORTED_CIPHERSUITES;

    #[test]
    fn expired_pool_entries_are_pruned_with_their_private_keys() {
        let client = ClientState::in_memory(&[1; 32]).unwrap();
        client.key_packages(2, 1).unwrap();
        let now = now_secs();
        let expired = client
            .transact(|keys, inner| {
                let provider = &inner.provider;
                let bundle = build_key_package(
                    provider,
                    &keys.signer,
                    &keys.credential,
                    SUPPORTED_CIPHERSUITES[0],
                    false,
                    Some(Lifetime::init(now - 7200, now - 60)),
                )?;
                let hash_ref = encode_ref(provider, &bundle)?;
                let mut pool = prune_pool(provider)?;
                pool.entries.push(PoolEntry {
                    hash_ref: hash_ref.clone(),
                    ciphersuite: 1,
                    not_after: now - 60,
                });
                meta::store(provider, meta::KEY_PACKAGE_POOL, &pool)?;
                Ok(hash_ref)
            })
            .unwrap();
        assert_eq!(client.unused_key_packages(1).unwrap(), 2);
        client.key_packages(1, 1).unwrap();
        client
            .read(|_, inner| {
                let provider = &inner.provider;
                let pool =
                    meta::load::<Pool>(provider, meta::KEY_PACKAGE_POOL)?.unwrap_or_default();
                assert_eq!(pool.entries.len(), 3);
                assert!(!key_package_stored(provider, expired.as_slice())?);
                Ok(())
            })
            .unwrap();
        assert_eq!(client.unused_key_packages(1).unwrap(), 3);
    }
}
