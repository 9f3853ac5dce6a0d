//! The KeyPackage pool and the last-resort KeyPackages of a client.
//!
//! Single-use KeyPackages are recorded in the store ([`meta::Pool`]) so the
//! client can tell how many are left and delete the private keys of expired
//! ones; a Welcome deletes the one it used. The last-resort KeyPackage of a
//! ciphersuite (RFC 9420 §16.8, the last_resort extension) survives joins and
//! restarts until it is rotated.
//!
//! Every lifetime and expiry here is measured by the client's clock: a
//! KeyPackage made at clock time T is valid from T - 1 h to T + the client's
//! `key_package_lifetime_s` (12 weeks by default).

use openmls::prelude::{Ciphersuite, KeyPackageBundle, KeyPackageRef, Lifetime, MlsMessageOut};
use openmls_traits::storage::StorageProvider as _;
use openmls_traits::OpenMlsProvider;
use tls_codec::{DeserializeBytes, Serialize as _, VLBytes};

use crate::client::{encode, ClientState, Inner, Keys};
use crate::clock::Now;
use crate::error::{Error, Result};
use crate::key_package::{
    build_key_package, ciphersuite_code, ciphersuite_from_code, SUPPORTED_CIPHERSUITES,
};
use crate::meta::{self, LastResort, Pool, PoolEntry};
use crate::provider::Provider;

/// Most KeyPackages made by one call.
pub const MAX_KEY_PACKAGES_PER_CALL: usize = 1000;

/// The largest pool [`ClientState::serve_key_packages`] may keep per
/// ciphersuite.
pub const MAX_POOL_SIZE: usize = 1000;

/// A last-resort KeyPackage closer than this to its expiry is replaced (or
/// than half its lifetime, for lifetimes shorter than two weeks).
const LAST_RESORT_RENEW_MARGIN_SECS: u64 = 7 * 24 * 60 * 60;

fn last_resort_renew_margin(inner: &Inner) -> u64 {
    LAST_RESORT_RENEW_MARGIN_SECS.min(inner.key_package_lifetime().secs() / 2)
}

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
            let now = inner.now();
            let provider = &inner.provider;
            let mut pool = prune_pool(provider, now)?;
            let mut out = Vec::with_capacity(count);
            for _ in 0..count {
                let bundle = build_key_package(
                    provider,
                    &keys.signer,
                    &keys.credential,
                    suite,
                    false,
                    inner.lifetime(),
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
        let suite = ciphersuite_from_code(ciphersuite)?;
        self.read_now(|_, inner, now| unused_in_pool(&inner.provider, suite, now))
    }

    /// The last-resort KeyPackage of `ciphersuite`: the same bytes on every
    /// call (and after a restart) until it is rotated — explicitly, or
    /// because it is within a week of expiring.
    pub fn last_resort_key_package(&self, ciphersuite: i64) -> Result<Vec<u8>> {
        let suite = ciphersuite_from_code(ciphersuite)?;
        if let Some(bytes) =
            self.read_now(|_, inner, now| current_last_resort(inner, now, suite))?
        {
            return Ok(bytes);
        }
        self.transact(
            |keys, inner| match current_last_resort(inner, inner.now(), suite)? {
                Some(bytes) => Ok(bytes),
                None => rotate_last_resort(keys, &inner.provider, suite, inner.lifetime()),
            },
        )
    }

    /// One KeyPackage per ciphersuite in `ciphersuites`, for a peer that
    /// asked for one, from a pool of at most `pool_size` unused, unexpired
    /// single-use KeyPackages per ciphersuite: while the pool has room a
    /// fresh one is made and joins it; once it is full, the last-resort
    /// KeyPackage of that suite is served instead. So however often anyone
    /// asks, the state holds at most `pool_size` handed-out private keys per
    /// suite (plus the last-resort ones). A Welcome that uses a pooled
    /// KeyPackage takes it out of the pool, and expired ones are pruned, so
    /// the pool refills as it is used.
    ///
    /// A full pool serves the last-resort KeyPackage rather than one already
    /// handed out: a single-use KeyPackage given to two inviters would leave
    /// the second one's Welcome unjoinable, while the last-resort one is made
    /// to be used more than once (RFC 9420 §16.8). When every pool is full
    /// this call only reads: no state is written and no randomness drawn.
    pub fn serve_key_packages(&self, ciphersuites: &[i64], pool_size: i64) -> Result<Vec<Vec<u8>>> {
        let pool_size = usize::try_from(pool_size)
            .ok()
            .filter(|size| *size <= MAX_POOL_SIZE)
            .ok_or_else(|| {
                Error::invalid_input(format!(
                    "pool_size must be between 0 and {MAX_POOL_SIZE}, got {pool_size}"
                ))
            })?;
        let mut suites: Vec<Ciphersuite> = Vec::with_capacity(ciphersuites.len());
        for code in ciphersuites {
            let suite = ciphersuite_from_code(*code)?;
            if suites.contains(&suite) {
                return Err(Error::invalid_input(format!(
                    "ciphersuite {code:#06x} is named twice"
                )));
            }
            suites.push(suite);
        }
        if suites.is_empty() || suites.len() > SUPPORTED_CIPHERSUITES.len() {
            return Err(Error::invalid_input(
                "name at least one ciphersuite, each at most once",
            ));
        }
        let all_full = self.read_now(|_, inner, now| {
            let mut out = Vec::with_capacity(suites.len());
            for suite in &suites {
                if unused_in_pool(&inner.provider, *suite, now)? < pool_size {
                    return Ok(None);
                }
                match current_last_resort(inner, now, *suite)? {
                    Some(bytes) => out.push(bytes),
                    None => return Ok(None),
                }
            }
            Ok(Some(out))
        })?;
        if let Some(out) = all_full {
            return Ok(out);
        }
        self.transact(|keys, inner| {
            let now = inner.now();
            let mut pool = prune_pool(&inner.provider, now)?;
            let mut out = Vec::with_capacity(suites.len());
            for suite in &suites {
                let code = ciphersuite_code(*suite);
                let pooled = pool
                    .entries
                    .iter()
                    .filter(|e| e.ciphersuite == code)
                    .count();
                if pooled < pool_size {
                    let bundle = build_key_package(
                        &inner.provider,
                        &keys.signer,
                        &keys.credential,
                        *suite,
                        false,
                        inner.lifetime(),
                    )?;
                    pool.entries.push(PoolEntry {
                        hash_ref: encode_ref(&inner.provider, &bundle)?,
                        ciphersuite: code,
                        not_after: bundle.key_package().life_time().not_after(),
                    });
                    out.push(encode(&MlsMessageOut::from(bundle))?);
                    continue;
                }
                out.push(match current_last_resort(inner, now, *suite)? {
                    Some(bytes) => bytes,
                    None => rotate_last_resort(keys, &inner.provider, *suite, inner.lifetime())?,
                });
            }
            meta::store(&inner.provider, meta::KEY_PACKAGE_POOL, &pool)?;
            Ok(out)
        })
    }

    /// Replaces the last-resort KeyPackage of `ciphersuite`; returns the new
    /// one. The previous one still joins until the next rotation.
    pub fn rotate_last_resort(&self, ciphersuite: i64) -> Result<Vec<u8>> {
        let suite = ciphersuite_from_code(ciphersuite)?;
        self.transact(|keys, inner| {
            rotate_last_resort(keys, &inner.provider, suite, inner.lifetime())
        })
    }
}

/// How many pooled KeyPackages of `suite` are unused and unexpired at `now`.
fn unused_in_pool(provider: &Provider, suite: Ciphersuite, now: Now) -> Result<usize> {
    let code = ciphersuite_code(suite);
    let pool = meta::load::<Pool>(provider, meta::KEY_PACKAGE_POOL)?.unwrap_or_default();
    let mut count = 0;
    for entry in &pool.entries {
        if entry.ciphersuite == code
            && entry.not_after > now.secs()
            && key_package_stored(provider, entry.hash_ref.as_slice())?
        {
            count += 1;
        }
    }
    Ok(count)
}

/// The last-resort KeyPackage of `suite`, unless there is none yet or it is
/// due for renewal at `now`.
fn current_last_resort(inner: &Inner, now: Now, suite: Ciphersuite) -> Result<Option<Vec<u8>>> {
    let key = meta::last_resort_key(ciphersuite_code(suite));
    Ok(meta::load::<LastResort>(&inner.provider, &key)?
        .filter(|lr| lr.not_after > now.secs().saturating_add(last_resort_renew_margin(inner)))
        .map(|lr| lr.key_package.into()))
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

/// The pool without entries that were used or have expired by `now`; the
/// private keys of expired ones are deleted.
fn prune_pool(provider: &Provider, now: Now) -> Result<Pool> {
    let pool = meta::load::<Pool>(provider, meta::KEY_PACKAGE_POOL)?.unwrap_or_default();
    let mut kept = Pool::default();
    for entry in pool.entries {
        if !key_package_stored(provider, entry.hash_ref.as_slice())? {
            continue;
        }
        if entry.not_after <= now.secs() {
            delete_key_package(provider, entry.hash_ref.as_slice())?;
            continue;
        }
        kept.entries.push(entry);
    }
    Ok(kept)
}

fn rotate_last_resort(
    keys: &Keys,
    provider: &Provider,
    suite: Ciphersuite,
    lifetime: Lifetime,
) -> Result<Vec<u8>> {
    let key = meta::last_resort_key(ciphersuite_code(suite));
    let old = meta::load::<LastResort>(provider, &key)?;
    let bundle = build_key_package(
        provider,
        &keys.signer,
        &keys.credential,
        suite,
        true,
        lifetime,
    )?;
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
    use super::*;
    use crate::clock::testing::{at_system_now, manual, set};
    use crate::key_package::KEY_PACKAGE_LIFETIME_SECS;

    /// 2001-09-09T01:46:40Z: far from the system clock, so that an expiry
    /// measured by the system clock would fail these tests (the pool never
    /// parses its KeyPackages, so OpenMLS's own checks do not run here).
    const T0_SECS: u64 = 1_000_000_000;

    fn at(secs: u64) -> Now {
        Now::from_ms(secs * 1000)
    }

    fn pool_refs(client: &ClientState) -> Vec<VLBytes> {
        client
            .read(|_, inner| {
                let pool = meta::load::<Pool>(&inner.provider, meta::KEY_PACKAGE_POOL)?
                    .unwrap_or_default();
                Ok(pool.entries.into_iter().map(|e| e.hash_ref).collect())
            })
            .unwrap()
    }

    #[test]
    fn pool_expiry_follows_the_clients_clock() {
        let (clock, handle) = manual(T0_SECS * 1000);
        let client = ClientState::in_memory(&[1; 32], clock, None).unwrap();
        client.key_packages(2, 1).unwrap();
        let made_at_t0 = pool_refs(&client);
        assert_eq!(made_at_t0.len(), 2);
        assert_eq!(client.unused_key_packages(1).unwrap(), 2);
        let expiry = T0_SECS + KEY_PACKAGE_LIFETIME_SECS;
        set(&handle, Now::from_ms(expiry * 1000 - 1));
        assert_eq!(client.unused_key_packages(1).unwrap(), 2);
        set(&handle, at(expiry));
        assert_eq!(client.unused_key_packages(1).unwrap(), 0);
        // The next call prunes the expired entries and their private keys.
        client.key_packages(1, 1).unwrap();
        assert_eq!(pool_refs(&client).len(), 1);
        client
            .read(|_, inner| {
                for hash_ref in &made_at_t0 {
                    assert!(!key_package_stored(&inner.provider, hash_ref.as_slice())?);
                }
                Ok(())
            })
            .unwrap();
        assert_eq!(client.unused_key_packages(1).unwrap(), 1);
    }

    const XWING: i64 = 0x004D;
    const X25519: i64 = 0x0001;

    fn state_len(client: &ClientState) -> usize {
        client
            .read(|_, inner| {
                Ok(inner
                    .provider
                    .storage()
                    .with_entries(|e| e.iter().map(|(k, v)| k.len() + v.len()).sum()))
            })
            .unwrap()
    }

    #[test]
    fn serving_fills_the_pool_then_serves_the_last_resort_key_package() {
        let client = ClientState::in_memory(&[1; 32], at_system_now(), None).unwrap();
        let mut pooled = Vec::new();
        for _ in 0..3 {
            let served = client.serve_key_packages(&[XWING, X25519], 3).unwrap();
            assert_eq!(served.len(), 2);
            pooled.push(served);
        }
        assert_eq!(client.unused_key_packages(XWING).unwrap(), 3);
        assert_eq!(client.unused_key_packages(X25519).unwrap(), 3);
        let last_resort = vec![
            client.last_resort_key_package(XWING).unwrap(),
            client.last_resort_key_package(X25519).unwrap(),
        ];
        let full = state_len(&client);
        for _ in 0..200 {
            assert_eq!(
                client.serve_key_packages(&[XWING, X25519], 3).unwrap(),
                last_resort
            );
        }
        assert_eq!(state_len(&client), full);
        assert_eq!(client.unused_key_packages(XWING).unwrap(), 3);
        // Distinct single-use KeyPackages went out before the pool was full.
        let mut all: Vec<_> = pooled.concat();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 6);
    }

    #[test]
    fn a_welcome_takes_its_key_package_out_of_the_pool_and_one_more_is_made() {
        let bob = ClientState::in_memory(&[2; 32], at_system_now(), None).unwrap();
        let first = bob.serve_key_packages(&[X25519], 2).unwrap();
        bob.serve_key_packages(&[X25519], 2).unwrap();
        let last_resort = bob.serve_key_packages(&[X25519], 2).unwrap();
        assert_eq!(last_resort[0], bob.last_resort_key_package(X25519).unwrap());

        let alice = ClientState::in_memory(&[1; 32], at_system_now(), None).unwrap();
        alice.create_group(b"g", X25519, false, false).unwrap();
        let (_commit, welcome) = alice
            .transact(|keys, inner| {
                crate::group_ops::GroupOps::new(keys, inner, b"g")?.add_members(&first)
            })
            .unwrap();
        bob.join(&welcome, false).unwrap();
        assert_eq!(bob.unused_key_packages(X25519).unwrap(), 1);
        let fresh = bob.serve_key_packages(&[X25519], 2).unwrap();
        assert_ne!(fresh, first);
        assert_ne!(fresh, last_resort);
        assert_eq!(bob.unused_key_packages(X25519).unwrap(), 2);
    }

    #[test]
    fn expired_pool_entries_are_pruned_and_replaced() {
        let (clock, handle) = manual(T0_SECS * 1000);
        let client = ClientState::in_memory(&[1; 32], clock, None).unwrap();
        client.serve_key_packages(&[X25519], 2).unwrap();
        client.serve_key_packages(&[X25519], 2).unwrap();
        let old = pool_refs(&client);
        set(&handle, at(T0_SECS + KEY_PACKAGE_LIFETIME_SECS));
        client.serve_key_packages(&[X25519], 2).unwrap();
        let now_in_pool = pool_refs(&client);
        assert_eq!(now_in_pool.len(), 1);
        assert!(old.iter().all(|r| !now_in_pool.contains(r)));
        client
            .read(|_, inner| {
                for hash_ref in &old {
                    assert!(!key_package_stored(&inner.provider, hash_ref.as_slice())?);
                }
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn serving_refuses_bad_arguments() {
        let client = ClientState::in_memory(&[1; 32], at_system_now(), None).unwrap();
        for (suites, size) in [
            (&[][..], 1),
            (&[X25519, X25519][..], 1),
            (&[X25519][..], -1),
            (&[X25519][..], 1001),
        ] {
            let err = client.serve_key_packages(suites, size).unwrap_err();
            assert_eq!(err.python_class(), "InvalidInputError", "{suites:?} {size}");
        }
        let err = client.serve_key_packages(&[0x0002], 1).unwrap_err();
        assert_eq!(err.python_class(), "WrongCiphersuiteError");
        // A pool of 0 always serves the last-resort KeyPackage.
        assert_eq!(
            client.serve_key_packages(&[X25519], 0).unwrap()[0],
            client.last_resort_key_package(X25519).unwrap()
        );
    }

    #[test]
    fn the_last_resort_key_package_is_renewed_a_week_before_expiry_by_the_clock() {
        let (clock, handle) = manual(T0_SECS * 1000);
        let client = ClientState::in_memory(&[1; 32], clock, None).unwrap();
        let first = client.last_resort_key_package(1).unwrap();
        let renew_at = T0_SECS + KEY_PACKAGE_LIFETIME_SECS - LAST_RESORT_RENEW_MARGIN_SECS;
        set(&handle, at(renew_at - 1));
        assert_eq!(client.last_resort_key_package(1).unwrap(), first);
        set(&handle, at(renew_at));
        let second = client.last_resort_key_package(1).unwrap();
        assert_ne!(second, first);
        assert_eq!(client.last_resort_key_package(1).unwrap(), second);
    }
}
