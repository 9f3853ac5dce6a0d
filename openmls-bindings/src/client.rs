//! A client: one Ed25519 signing key, its credential, and one store holding
//! its KeyPackages and groups — in memory, or in an encrypted file.
//!
//! Every call that changes state is a transaction ([`ClientState::transact`]):
//! the store starts journaling, the call runs, and then either the store is
//! written to the state file (success) or the journal puts back every value
//! the call changed and the touched groups are reloaded from the store (any
//! error, including a failed write or a panic). A caller therefore sees each call happen completely or not at
//! all, in memory and on disk.
//!
//! Time and randomness are the caller's: every transaction reads the
//! client's clock once ([`crate::clock`]), and every random draw comes from
//! the client's generator ([`crate::crypto`]).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use openmls::group::{
    GroupId, MlsGroup, MlsGroupCreateConfig, MlsGroupJoinConfig, ProcessedWelcome, StagedWelcome,
    MIXED_CIPHERTEXT_WIRE_FORMAT_POLICY, PURE_CIPHERTEXT_WIRE_FORMAT_POLICY,
};
use openmls::prelude::{
    BasicCredential, Ciphersuite, CredentialWithKey, LeafNodeParameters, Lifetime,
    MlsMessageBodyIn, MlsMessageIn, MlsMessageOut, SenderRatchetConfiguration, SignatureScheme,
};
use openmls_basic_credential::SignatureKeyPair;
use openmls_traits::OpenMlsProvider;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use tls_codec::DeserializeBytes;
use zeroize::Zeroize;

use crate::clock::{Clock, Now};
use crate::crypto::RNG_SEED_LEN;
use crate::error::{guarded, Error, Result};
use crate::group::Group;
use crate::key_package::{
    ciphersuite_from_code, verified_identity, KeyPackageLifetime, CIPHERSUITE_X25519_AES128GCM,
    IDENTITY_LEN, KEY_PACKAGE_LIFETIME_SECS,
};
use crate::meta::{self, OwnCommit};
use crate::policy::{capabilities, Policy};
use crate::provider::{Entries, Provider};
use crate::store_file::StateFile;
use crate::welcome_info::WelcomeInfo;

// The Python signatures below spell the default ciphersuite as a literal so
// that it shows up in `inspect.signature`; keep it equal to the constant.
const _: () = assert!(CIPHERSUITE_X25519_AES128GCM == 0x0001);
// The same for the default key_package_lifetime_s (12 weeks).
const _: () = assert!(KEY_PACKAGE_LIFETIME_SECS == 7_257_600);

/// Length of a raw Ed25519 private key (the RFC 8032 seed).
pub const SIGNING_KEY_LEN: usize = 32;

/// Past epochs whose message keys are kept, so that an application message
/// sent just before a commit still decrypts after it. A trade-off: those keys
/// live one commit longer (forward secrecy), and OpenMLS rewrites the past
/// epochs' member lists with every message (cost grows with group size).
pub const MAX_PAST_EPOCHS: usize = 1;

/// Out-of-order tolerance within one sender's chain, and how far ahead a
/// message may be (RFC 9420 §9.1; OpenMLS defaults are 5 and 1000).
const OUT_OF_ORDER_TOLERANCE: u32 = 32;
const MAXIMUM_FORWARD_DISTANCE: u32 = 1000;

/// Configuration for groups we create, whose creator's leaf has `lifetime`.
/// The ratchet tree goes into every Welcome and GroupInfo (RFC 9420
/// §12.4.3.3), so joiners need nothing out of band. Handshake messages go
/// out encrypted; incoming ones may be PublicMessages only in groups open to
/// external commits (which are always PublicMessages) and in interop groups
/// (other implementations may send their handshakes in the clear).
pub(crate) fn create_config(
    suite: Ciphersuite,
    policy: &Policy,
    lifetime: Lifetime,
) -> Result<MlsGroupCreateConfig> {
    Ok(MlsGroupCreateConfig::builder()
        .ciphersuite(suite)
        // The creator's leaf carries a lifetime, like a KeyPackage's.
        .lifetime(lifetime)
        .use_ratchet_tree_extension(true)
        .capabilities(capabilities())
        .with_group_context_extensions(policy.new_group_extensions()?)
        .max_past_epochs(MAX_PAST_EPOCHS)
        .sender_ratchet_configuration(SenderRatchetConfiguration::new(
            OUT_OF_ORDER_TOLERANCE,
            MAXIMUM_FORWARD_DISTANCE,
        ))
        .wire_format_policy(if policy.external_joins || policy.interop {
            MIXED_CIPHERTEXT_WIRE_FORMAT_POLICY
        } else {
            PURE_CIPHERTEXT_WIRE_FORMAT_POLICY
        })
        .build())
}

/// Configuration for groups we join (see [`create_config`]).
pub(crate) fn join_config(accept_public: bool) -> MlsGroupJoinConfig {
    MlsGroupJoinConfig::builder()
        .use_ratchet_tree_extension(true)
        .max_past_epochs(MAX_PAST_EPOCHS)
        .sender_ratchet_configuration(SenderRatchetConfiguration::new(
            OUT_OF_ORDER_TOLERANCE,
            MAXIMUM_FORWARD_DISTANCE,
        ))
        .wire_format_policy(if accept_public {
            MIXED_CIPHERTEXT_WIRE_FORMAT_POLICY
        } else {
            PURE_CIPHERTEXT_WIRE_FORMAT_POLICY
        })
        .build()
}

/// TLS-encodes an outgoing MLSMessage.
pub(crate) fn encode(message: &MlsMessageOut) -> Result<Vec<u8>> {
    message
        .to_bytes()
        .map_err(|_| Error::state("could not encode an MLS message"))
}

/// The signing key and what is derived from it.
pub struct Keys {
    pub(crate) signer: SignatureKeyPair,
    pub(crate) credential: CredentialWithKey,
    pub(crate) identity: [u8; IDENTITY_LEN],
}

impl Keys {
    /// From a raw 32-byte Ed25519 private key.
    pub fn from_signing_key(signing_key: &[u8]) -> Result<Self> {
        let mut seed: [u8; SIGNING_KEY_LEN] = signing_key.try_into().map_err(|_| {
            Error::invalid_input(format!(
                "signing key must be {SIGNING_KEY_LEN} bytes, got {}",
                signing_key.len()
            ))
        })?;
        // `SigningKey` zeroizes itself on drop.
        let identity = ed25519_dalek::SigningKey::from_bytes(&seed)
            .verifying_key()
            .to_bytes();
        // openmls_basic_credential signs Ed25519 with the 32-byte seed as the
        // private key (zeroized on drop) and the public key alongside it.
        let signer =
            SignatureKeyPair::from_raw(SignatureScheme::ED25519, seed.to_vec(), identity.to_vec());
        seed.zeroize();
        let credential = CredentialWithKey {
            credential: BasicCredential::new(identity.to_vec()).into(),
            signature_key: identity.to_vec().into(),
        };
        Ok(Self {
            signer,
            credential,
            identity,
        })
    }
}

/// The mutable part of a client, behind one lock.
pub struct Inner {
    pub(crate) provider: Provider,
    pub(crate) groups: HashMap<Vec<u8>, MlsGroup>,
    /// The time the running transaction read from the client's clock.
    now: Now,
    /// The length of every lifetime this client makes.
    key_package_lifetime: KeyPackageLifetime,
    file: Option<StateFile>,
    /// Groups the running transaction changed, to reload if it fails.
    touched: Vec<Vec<u8>>,
    /// Set if undoing a failed call failed: the client refuses all calls.
    broken: bool,
}

impl Inner {
    /// The time the running transaction read from the client's clock (its
    /// one reading: a call sees one "now").
    pub(crate) fn now(&self) -> Now {
        self.now
    }

    /// The length of every lifetime this client makes.
    pub(crate) fn key_package_lifetime(&self) -> KeyPackageLifetime {
        self.key_package_lifetime
    }

    /// The lifetime of a KeyPackage or creator leaf made now: from an hour
    /// before [`Inner::now`] to `now` plus the client's lifetime length.
    pub(crate) fn lifetime(&self) -> Lifetime {
        self.key_package_lifetime.at(self.now)
    }

    /// Marks a group as changed by the running transaction.
    pub(crate) fn touch(&mut self, group_id: &[u8]) {
        if !self.touched.iter().any(|id| id == group_id) {
            self.touched.push(group_id.to_vec());
        }
    }

    /// A group of this client, or NotMemberError.
    pub(crate) fn group_mut(&mut self, group_id: &[u8]) -> Result<(&Provider, &mut MlsGroup)> {
        let group = self
            .groups
            .get_mut(group_id)
            .ok_or_else(|| Error::not_member("unknown group"))?;
        Ok((&self.provider, group))
    }

    pub(crate) fn group(&self, group_id: &[u8]) -> Result<(&Provider, &MlsGroup)> {
        let group = self
            .groups
            .get(group_id)
            .ok_or_else(|| Error::not_member("unknown group"))?;
        Ok((&self.provider, group))
    }

    fn persist(&mut self) -> Result<()> {
        match &mut self.file {
            Some(file) => file.save(self.provider.storage(), self.provider.rand()),
            None => Ok(()),
        }
    }

    /// After a rollback: makes the in-memory groups match the store again.
    fn reload_touched(&mut self) {
        for group_id in std::mem::take(&mut self.touched) {
            match MlsGroup::load(self.provider.storage(), &GroupId::from_slice(&group_id)) {
                Ok(Some(group)) => {
                    self.groups.insert(group_id, group);
                }
                // Absent (the failed call created it) or unreadable.
                Ok(None) | Err(_) => {
                    self.groups.remove(&group_id);
                }
            }
        }
    }

    /// Forgets a group's state (in memory and in the store).
    pub(crate) fn delete_group(&mut self, group_id: &[u8]) -> Result<()> {
        self.touch(group_id);
        if let Some(mut group) = self.groups.remove(group_id) {
            group.delete(self.provider.storage())?;
        }
        self.provider.remove(&meta::own_commit_key(group_id));
        meta::remove_group(&self.provider, group_id)
    }
}

/// What a client and all of its groups share. Groups hold an `Arc` to it, so
/// they keep working after the Python `Client` object is gone.
pub struct ClientState {
    pub(crate) keys: Keys,
    clock: Clock,
    inner: Mutex<Inner>,
}

/// Turns the caller's `rng_seed` into a seed.
pub fn rng_seed_from(rng_seed: Option<&[u8]>) -> Result<Option<[u8; RNG_SEED_LEN]>> {
    rng_seed
        .map(|seed| {
            seed.try_into().map_err(|_| {
                Error::invalid_input(format!(
                    "rng_seed must be {RNG_SEED_LEN} bytes or None, got {}",
                    seed.len()
                ))
            })
        })
        .transpose()
}

impl ClientState {
    /// An in-memory client with the default lifetimes (tests).
    #[cfg(test)]
    pub fn in_memory(
        signing_key: &[u8],
        clock: Clock,
        rng_seed: Option<[u8; RNG_SEED_LEN]>,
    ) -> Result<Self> {
        Self::open(
            signing_key,
            None,
            clock,
            rng_seed,
            KeyPackageLifetime::default(),
        )
    }

    /// A client whose state lives in the encrypted file at `path`; created
    /// if it does not exist. Its time comes from `clock`, its randomness from
    /// `rng_seed` (or the operating system without one); every lifetime it
    /// makes is `key_package_lifetime` long.
    pub fn open(
        signing_key: &[u8],
        storage: Option<(PathBuf, &[u8])>,
        clock: Clock,
        rng_seed: Option<[u8; RNG_SEED_LEN]>,
        key_package_lifetime: KeyPackageLifetime,
    ) -> Result<Self> {
        let keys = Keys::from_signing_key(signing_key)?;
        // The identity a stored state belongs to must be ours.
        let check = |entries: Option<&Entries>| match entries {
            None => Ok(()),
            Some(entries) => match entries.get(meta::IDENTITY) {
                Some(identity) if *identity == keys.identity => Ok(()),
                Some(_) => Err(Error::storage(
                    "the MLS state file belongs to another identity",
                )),
                None => Err(Error::storage("the MLS state file has no identity record")),
            },
        };
        let (provider, file, existed) = match storage {
            None => (Provider::new(rng_seed)?, None, false),
            Some((path, key)) => {
                let (file, entries) = StateFile::open(&path, key, check)?;
                match entries {
                    Some(entries) => (Provider::with_entries(entries, rng_seed)?, Some(file), true),
                    None => (Provider::new(rng_seed)?, Some(file), false),
                }
            }
        };
        if !existed {
            provider.put(meta::IDENTITY.to_vec(), keys.identity.to_vec());
            keys.signer.store(provider.storage())?;
        }
        let mut groups = HashMap::new();
        for group_id in meta::groups(&provider)? {
            let group = MlsGroup::load(provider.storage(), &GroupId::from_slice(&group_id))?
                .ok_or_else(|| Error::storage("the MLS state file lacks a group it lists"))?;
            groups.insert(group_id, group);
        }
        let mut inner = Inner {
            provider,
            groups,
            // Set by every transaction before it runs.
            now: Now::from_ms(0),
            key_package_lifetime,
            file,
            touched: Vec::new(),
            broken: false,
        };
        if !existed {
            inner.persist()?;
        }
        Ok(Self {
            keys,
            clock,
            inner: Mutex::new(inner),
        })
    }

    fn lock(&self) -> Result<MutexGuard<'_, Inner>> {
        let unusable = || Error::state("client is unusable after an internal error");
        // Transactions catch panics inside the lock, so it is never poisoned
        // in practice; if it is, refuse rather than use half-updated state.
        let inner = self.inner.lock().map_err(|_| unusable())?;
        if inner.broken {
            return Err(unusable());
        }
        Ok(inner)
    }

    /// Runs a read-only `f` that needs no time (it reads no clock).
    pub(crate) fn read<T>(&self, f: impl FnOnce(&Keys, &Inner) -> Result<T>) -> Result<T> {
        let inner = self.lock()?;
        guarded(|| f(&self.keys, &inner))
    }

    /// Runs a read-only `f` at the clock's current time.
    pub(crate) fn read_now<T>(&self, f: impl FnOnce(&Keys, &Inner, Now) -> Result<T>) -> Result<T> {
        // The clock first: reading a Python clock takes the GIL, which must
        // never be awaited while holding the lock (see src/clock.rs).
        let now = self.clock.now()?;
        let inner = self.lock()?;
        guarded(|| f(&self.keys, &inner, now))
    }

    /// Runs `f` at the clock's current time as a transaction that is always
    /// undone: whatever it changed in the store is put back and no state is
    /// written (for a look that OpenMLS can only take by changing state).
    pub(crate) fn undone<T>(&self, f: impl FnOnce(&Keys, &mut Inner) -> Result<T>) -> Result<T> {
        let now = self.clock.now()?;
        let mut guard = self.lock()?;
        let inner = &mut *guard;
        inner.now = now;
        inner.touched.clear();
        inner.provider.storage().begin();
        let result = guarded(|| f(&self.keys, inner));
        let rolled_back = guarded(|| {
            inner.provider.storage().rollback();
            inner.reload_touched();
            Ok(())
        });
        if rolled_back.is_err() {
            inner.broken = true;
        }
        result
    }

    /// Runs `f` as one atomic step at the clock's current time
    /// ([`Inner::now`]): its changes are written to the state file before
    /// this returns, or undone (in memory) if anything fails.
    pub(crate) fn transact<T>(&self, f: impl FnOnce(&Keys, &mut Inner) -> Result<T>) -> Result<T> {
        let now = self.clock.now()?;
        let mut guard = self.lock()?;
        let inner = &mut *guard;
        inner.now = now;
        self.transact_locked(inner, f)
    }

    fn transact_locked<T>(
        &self,
        inner: &mut Inner,
        f: impl FnOnce(&Keys, &mut Inner) -> Result<T>,
    ) -> Result<T> {
        inner.touched.clear();
        inner.provider.storage().begin();
        let result = guarded(|| {
            let value = f(&self.keys, inner)?;
            inner.persist()?;
            Ok(value)
        });
        if result.is_ok() {
            inner.provider.storage().commit();
            inner.touched.clear();
            return result;
        }
        let rolled_back = guarded(|| {
            inner.provider.storage().rollback();
            inner.reload_touched();
            Ok(())
        });
        if rolled_back.is_err() {
            // Memory no longer matches the file: refuse every further call
            // (a new client reopens the file, which holds the last success).
            inner.broken = true;
        }
        result
    }

    // --- groups -----------------------------------------------------------

    /// Creates a group with this client as its only member and committer.
    /// An `interop` group has no committer record, so members of other
    /// implementations can be added, and no committer policy (see
    /// src/policy.rs).
    pub fn create_group(
        &self,
        group_id: &[u8],
        ciphersuite: i64,
        external_joins: bool,
        interop: bool,
    ) -> Result<()> {
        let suite = ciphersuite_from_code(ciphersuite)?;
        if group_id.is_empty() {
            return Err(Error::invalid_input("group id must not be empty"));
        }
        self.transact(|keys, inner| {
            if inner.groups.contains_key(group_id) {
                return Err(Error::state(
                    "a group with this id already exists for this client",
                ));
            }
            inner.touch(group_id);
            let policy = if interop {
                if external_joins {
                    return Err(Error::invalid_input(
                        "an interop group cannot accept external joins",
                    ));
                }
                Policy::interop()
            } else {
                Policy {
                    committer: keys.identity.to_vec(),
                    external_joins,
                    interop: false,
                }
            };
            let group = MlsGroup::new_with_group_id(
                &inner.provider,
                &keys.signer,
                &create_config(suite, &policy, inner.lifetime())?,
                GroupId::from_slice(group_id),
                keys.credential.clone(),
            )?;
            meta::add_group(&inner.provider, group_id)?;
            inner.groups.insert(group_id.to_vec(), group);
            Ok(())
        })
    }

    /// Joins a group from a Welcome made for one of this client's
    /// KeyPackages; returns the group id. A group without a committer record
    /// (an interop group) is refused unless `interop`.
    pub fn join(&self, welcome: &[u8], interop: bool) -> Result<Vec<u8>> {
        let welcome = match MlsMessageIn::tls_deserialize_exact_bytes(welcome)?.extract() {
            MlsMessageBodyIn::Welcome(welcome) => welcome,
            _ => return Err(Error::invalid_input("message is not a welcome")),
        };
        self.transact(|_, inner| {
            let processed =
                ProcessedWelcome::new_from_welcome(&inner.provider, &join_config(false), welcome)?;
            let group_id = processed
                .unverified_group_info()
                .group_id()
                .as_slice()
                .to_vec();
            replace_inactive(inner, &group_id)?;
            let staged: StagedWelcome = processed.into_staged_welcome(&inner.provider, None)?;
            let policy = Policy::from_extensions(staged.group_context().extensions())?;
            if policy.interop && !interop {
                return Err(Error::invalid_message(
                    "the group does not record a committer (an interop group; \
                     join it with interop=True)",
                ));
            }
            // Apply our credential rule to everyone already in the group.
            let mut identities = Vec::new();
            for member in staged.members() {
                identities.push(verified_identity(
                    &member.credential,
                    &member.signature_key,
                )?);
            }
            policy.require_member(&identities)?;
            inner.touch(&group_id);
            let mut group = staged.into_group(&inner.provider)?;
            if policy.external_joins || policy.interop {
                group.set_configuration(inner.provider.storage(), &join_config(true))?;
            }
            meta::add_group(&inner.provider, &group_id)?;
            inner.groups.insert(group_id.clone(), group);
            Ok(group_id)
        })
    }

    /// Joins a group by external commit from its GroupInfo; returns the
    /// group id and the commit to send to the members.
    pub fn join_external(&self, group_info: &[u8]) -> Result<(Vec<u8>, Vec<u8>)> {
        let group_info = match MlsMessageIn::tls_deserialize_exact_bytes(group_info)?.extract() {
            MlsMessageBodyIn::GroupInfo(info) => info,
            _ => return Err(Error::invalid_input("message is not a group info")),
        };
        ciphersuite_from_code(group_info.ciphersuite() as i64)?;
        self.transact(|keys, inner| {
            let group_id = group_info.group_id().as_slice().to_vec();
            replace_inactive(inner, &group_id)?;
            inner.touch(&group_id);
            let provider = &inner.provider;
            let (group, bundle) = MlsGroup::external_commit_builder()
                .with_config(join_config(true))
                .build_group(provider, group_info, keys.credential.clone())?
                .leaf_node_parameters(
                    LeafNodeParameters::builder()
                        .with_capabilities(capabilities())
                        .build(),
                )
                .load_psks(provider.storage())?
                .build(provider.rand(), provider.crypto(), &keys.signer, |_| true)?
                .finalize(provider)?;
            let policy = Policy::of(&group)?;
            if !policy.external_joins {
                return Err(Error::not_committer(
                    "this group does not accept external joins",
                ));
            }
            let mut identities = Vec::new();
            for member in group.members() {
                identities.push(verified_identity(
                    &member.credential,
                    &member.signature_key,
                )?);
            }
            policy.require_member(&identities)?;
            let commit = encode(bundle.commit())?;
            meta::store(
                provider,
                &meta::own_commit_key(&group_id),
                &OwnCommit {
                    epoch: group.epoch().as_u64(),
                    commit: commit.as_slice().into(),
                    welcome: None,
                    recipients: meta::identities_except(&group, &keys.identity)
                        .into_iter()
                        .map(Into::into)
                        .collect(),
                    joiners: Vec::new(),
                },
            )?;
            meta::add_group(provider, &group_id)?;
            inner.groups.insert(group_id.clone(), group);
            Ok((group_id, commit))
        })
    }

    /// Every group this client holds state for, in creation order.
    pub fn group_ids(&self) -> Result<Vec<Vec<u8>>> {
        self.read(|_, inner| meta::groups(&inner.provider))
    }

    /// Forgets a group: its state is deleted from the store.
    pub fn forget_group(&self, group_id: &[u8]) -> Result<()> {
        self.transact(|_, inner| {
            if !inner.groups.contains_key(group_id) {
                return Err(Error::not_member("unknown group"));
            }
            inner.delete_group(group_id)
        })
    }
}

/// Drops the state of a group we were removed from, so that we can join it
/// again; refuses if we are still a member.
fn replace_inactive(inner: &mut Inner, group_id: &[u8]) -> Result<()> {
    match inner.groups.get(group_id) {
        None => Ok(()),
        Some(group) if group.is_active() => Err(Error::state(
            "this client is already a member of that group",
        )),
        Some(_) => inner.delete_group(group_id),
    }
}

/// An MLS client: an Ed25519 signing key and the groups and KeyPackages made
/// with it.
#[pyclass(frozen, module = "openmls_bindings._native")]
pub struct Client {
    state: Arc<ClientState>,
}

#[pymethods]
impl Client {
    /// `clock_ms` and `rng_seed` have no defaults on purpose: a simulation
    /// must never run on the real clock or the system's randomness by
    /// omission. `key_package_lifetime_s` is the length of every lifetime
    /// the client makes (1 s to 100 years; 12 weeks by default).
    #[new]
    #[pyo3(signature = (
        signing_key,
        *,
        clock_ms,
        rng_seed,
        storage_path = None,
        storage_key = None,
        key_package_lifetime_s = 7_257_600,
    ))]
    fn new(
        py: Python<'_>,
        signing_key: &[u8],
        clock_ms: &Bound<'_, PyAny>,
        rng_seed: Option<&[u8]>,
        storage_path: Option<PathBuf>,
        storage_key: Option<&[u8]>,
        key_package_lifetime_s: i128,
    ) -> PyResult<Self> {
        let clock = Clock::python(clock_ms)?;
        let rng_seed = rng_seed_from(rng_seed)?;
        let lifetime = KeyPackageLifetime::from_secs(key_package_lifetime_s)?;
        let state = py.detach(|| {
            guarded(|| match (storage_path, storage_key) {
                (None, None) => ClientState::open(signing_key, None, clock, rng_seed, lifetime),
                (Some(path), Some(key)) => {
                    ClientState::open(signing_key, Some((path, key)), clock, rng_seed, lifetime)
                }
                _ => Err(Error::invalid_input(
                    "storage_path and storage_key must be given together",
                )),
            })
        })?;
        Ok(Self {
            state: Arc::new(state),
        })
    }

    /// The 32-byte Ed25519 public key; also the credential identity.
    #[getter]
    fn identity<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.state.keys.identity)
    }

    /// A fresh single-use KeyPackage, serialized as an MLSMessage.
    #[pyo3(signature = (ciphersuite = 0x0001))]
    fn key_package<'py>(&self, py: Python<'py>, ciphersuite: i64) -> PyResult<Bound<'py, PyBytes>> {
        let state = &self.state;
        let mut bytes = py.detach(|| guarded(|| state.key_packages(1, ciphersuite)))?;
        let kp = bytes
            .pop()
            .ok_or_else(|| Error::state("no key package was made"))?;
        Ok(PyBytes::new(py, &kp))
    }

    /// `count` fresh single-use KeyPackages.
    #[pyo3(signature = (count, ciphersuite = 0x0001))]
    fn key_packages<'py>(
        &self,
        py: Python<'py>,
        count: usize,
        ciphersuite: i64,
    ) -> PyResult<Vec<Bound<'py, PyBytes>>> {
        let state = &self.state;
        let kps = py.detach(|| guarded(|| state.key_packages(count, ciphersuite)))?;
        Ok(kps.iter().map(|kp| PyBytes::new(py, kp)).collect())
    }

    /// How many single-use KeyPackages are still unused and unexpired.
    #[pyo3(signature = (ciphersuite = 0x0001))]
    fn unused_key_packages(&self, py: Python<'_>, ciphersuite: i64) -> PyResult<usize> {
        let state = &self.state;
        Ok(py.detach(|| guarded(|| state.unused_key_packages(ciphersuite)))?)
    }

    /// The last-resort KeyPackage (stable until rotated).
    #[pyo3(signature = (ciphersuite = 0x0001))]
    fn last_resort_key_package<'py>(
        &self,
        py: Python<'py>,
        ciphersuite: i64,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let state = &self.state;
        let kp = py.detach(|| guarded(|| state.last_resort_key_package(ciphersuite)))?;
        Ok(PyBytes::new(py, &kp))
    }

    /// One KeyPackage per ciphersuite for a peer that asked, from a bounded
    /// pool (see [`ClientState::serve_key_packages`]).
    #[pyo3(signature = (ciphersuites, *, pool_size))]
    fn serve_key_packages<'py>(
        &self,
        py: Python<'py>,
        ciphersuites: Vec<i64>,
        pool_size: i64,
    ) -> PyResult<Vec<Bound<'py, PyBytes>>> {
        let state = &self.state;
        let kps = py.detach(|| guarded(|| state.serve_key_packages(&ciphersuites, pool_size)))?;
        Ok(kps.iter().map(|kp| PyBytes::new(py, kp)).collect())
    }

    /// Replaces the last-resort KeyPackage; returns the new one.
    #[pyo3(signature = (ciphersuite = 0x0001))]
    fn rotate_last_resort<'py>(
        &self,
        py: Python<'py>,
        ciphersuite: i64,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let state = &self.state;
        let kp = py.detach(|| guarded(|| state.rotate_last_resort(ciphersuite)))?;
        Ok(PyBytes::new(py, &kp))
    }

    /// Creates a new group with this client as its only member and committer.
    #[pyo3(signature = (group_id, ciphersuite = 0x0001, *, external_joins = false, interop = false))]
    fn create_group(
        &self,
        py: Python<'_>,
        group_id: &[u8],
        ciphersuite: i64,
        external_joins: bool,
        interop: bool,
    ) -> PyResult<Group> {
        let state = &self.state;
        py.detach(|| {
            guarded(|| state.create_group(group_id, ciphersuite, external_joins, interop))
        })?;
        Ok(Group::new(Arc::clone(state), group_id.to_vec()))
    }

    /// Joins a group from a Welcome MLSMessage.
    #[pyo3(signature = (welcome, *, interop = false))]
    fn join(&self, py: Python<'_>, welcome: &[u8], interop: bool) -> PyResult<Group> {
        let state = &self.state;
        let group_id = py.detach(|| guarded(|| state.join(welcome, interop)))?;
        Ok(Group::new(Arc::clone(state), group_id))
    }

    /// What a Welcome made for us says (group, inviter, members), verified,
    /// without joining: the client's state is unchanged.
    fn inspect_welcome(&self, py: Python<'_>, welcome: &[u8]) -> PyResult<WelcomeInfo> {
        let state = &self.state;
        Ok(py.detach(|| guarded(|| state.inspect_welcome(welcome)))?)
    }

    /// Joins a group by external commit; returns the group and the commit.
    fn join_external<'py>(
        &self,
        py: Python<'py>,
        group_info: &[u8],
    ) -> PyResult<(Group, Bound<'py, PyBytes>)> {
        let state = &self.state;
        let (group_id, commit) = py.detach(|| guarded(|| state.join_external(group_info)))?;
        Ok((
            Group::new(Arc::clone(state), group_id),
            PyBytes::new(py, &commit),
        ))
    }

    /// The ids of every group this client holds state for.
    fn group_ids<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyBytes>>> {
        let ids = self.state.group_ids()?;
        Ok(ids.iter().map(|id| PyBytes::new(py, id)).collect())
    }

    /// The group with this id, at the epoch it was left at.
    fn load_group(&self, group_id: &[u8]) -> PyResult<Group> {
        self.state
            .read(|_, inner| inner.group(group_id).map(drop))?;
        Ok(Group::new(Arc::clone(&self.state), group_id.to_vec()))
    }

    /// Deletes a group's state from this client.
    fn forget_group(&self, py: Python<'_>, group_id: &[u8]) -> PyResult<()> {
        let state = &self.state;
        Ok(py.detach(|| guarded(|| state.forget_group(group_id)))?)
    }

    fn __repr__(&self) -> String {
        format!(
            "<Client identity={}…>",
            hex_prefix(&self.state.keys.identity)
        )
    }
}

/// The first bytes of a public value as hex, for reprs.
pub(crate) fn hex_prefix(bytes: &[u8]) -> String {
    bytes.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::testing::{at_system_now, system_now};
    use crate::key_package::{build_key_package, SUPPORTED_CIPHERSUITES as SUPPORTED};

    #[test]
    fn wrong_signing_key_length_is_invalid_input() {
        let err = ClientState::in_memory(&[0u8; 31], at_system_now(), None)
            .err()
            .unwrap();
        assert_eq!(err.python_class(), "InvalidInputError");
        assert_eq!(err.message(), "signing key must be 32 bytes, got 31");
    }

    #[test]
    fn failed_transaction_leaves_the_store_untouched() {
        let client = ClientState::in_memory(&[1; 32], at_system_now(), None).unwrap();
        let before = client
            .read(|_, inner| Ok(inner.provider.storage().with_entries(|e| e.len())))
            .unwrap();
        let err = client
            .transact(|keys, inner| {
                build_key_package(
                    &inner.provider,
                    &keys.signer,
                    &keys.credential,
                    SUPPORTED[0],
                    false,
                    KeyPackageLifetime::default().at(system_now()),
                )?;
                Err::<(), _>(Error::state("boom"))
            })
            .unwrap_err();
        assert_eq!(err.message(), "boom");
        let after = client
            .read(|_, inner| Ok(inner.provider.storage().with_entries(|e| e.len())))
            .unwrap();
        assert_eq!(before, after);
    }

    #[test]
    fn panic_inside_a_transaction_is_an_error_and_rolls_back() {
        let client = ClientState::in_memory(&[1; 32], at_system_now(), None).unwrap();
        client.create_group(b"g", 1, false, false).unwrap();
        let err = client
            .transact(|_, inner| -> Result<()> {
                inner.touch(b"g");
                inner.groups.clear();
                panic!("inside OpenMLS");
            })
            .unwrap_err();
        assert_eq!(err.python_class(), "MlsError");
        // The group was reloaded from the restored store.
        client.read(|_, inner| inner.group(b"g").map(drop)).unwrap();
    }
}
