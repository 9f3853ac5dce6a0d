//! A client: one Ed25519 signing key, its BasicCredential and its provider.

use std::sync::Arc;

use openmls::prelude::{
    BasicCredential, CredentialWithKey, GroupId, KeyPackage, MlsGroup, MlsMessageBodyIn,
    MlsMessageIn, MlsMessageOut, SignatureScheme, StagedWelcome,
};
use openmls_basic_credential::SignatureKeyPair;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use tls_codec::DeserializeBytes;
use zeroize::Zeroize;

use crate::error::{guarded, Error, Result};
use crate::group::{create_config, join_config, Group, GroupState};
use crate::key_package::{
    ciphersuite_from_code, verified_identity, CIPHERSUITE_X25519_AES128GCM, IDENTITY_LEN,
};
use crate::provider::Provider;

// The Python signatures below spell the default ciphersuite as a literal so
// that it shows up in `inspect.signature`; keep it equal to the constant.
const _: () = assert!(CIPHERSUITE_X25519_AES128GCM == 0x0001);

/// Length of a raw Ed25519 private key (the RFC 8032 seed).
pub const SIGNING_KEY_LEN: usize = 32;

/// What a client and all of its groups share. Groups hold an `Arc` to it, so
/// they keep working after the Python `Client` object is gone.
pub struct ClientState {
    pub(crate) provider: Provider,
    pub(crate) signer: SignatureKeyPair,
    pub(crate) credential: CredentialWithKey,
    pub(crate) identity: [u8; IDENTITY_LEN],
}

impl ClientState {
    /// Builds a client from a raw 32-byte Ed25519 private key.
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
        // private key and the 32-byte public key alongside it.
        let signer =
            SignatureKeyPair::from_raw(SignatureScheme::ED25519, seed.to_vec(), identity.to_vec());
        seed.zeroize();
        let credential = CredentialWithKey {
            credential: BasicCredential::new(identity.to_vec()).into(),
            signature_key: identity.to_vec().into(),
        };
        Ok(Self {
            provider: Provider::new(),
            signer,
            credential,
            identity,
        })
    }

    /// A fresh KeyPackage as MLSMessage bytes. Its private keys stay in this
    /// client's provider until a Welcome uses them.
    pub fn key_package(&self, ciphersuite: i64) -> Result<Vec<u8>> {
        let suite = ciphersuite_from_code(ciphersuite)?;
        let bundle = KeyPackage::builder().build(
            suite,
            &self.provider,
            &self.signer,
            self.credential.clone(),
        )?;
        encode(&MlsMessageOut::from(bundle))
    }

    /// Creates a group with this client as its only member.
    pub fn create_group(self: &Arc<Self>, group_id: &[u8], ciphersuite: i64) -> Result<GroupState> {
        let suite = ciphersuite_from_code(ciphersuite)?;
        if group_id.is_empty() {
            return Err(Error::invalid_input("group id must not be empty"));
        }
        let mls = MlsGroup::new_with_group_id(
            &self.provider,
            &self.signer,
            &create_config(suite),
            GroupId::from_slice(group_id),
            self.credential.clone(),
        )?;
        Ok(GroupState::new(Arc::clone(self), mls))
    }

    /// Joins a group from a Welcome MLSMessage made for one of this client's
    /// KeyPackages. The Welcome must carry the ratchet tree.
    pub fn join(self: &Arc<Self>, welcome: &[u8]) -> Result<GroupState> {
        let welcome = match MlsMessageIn::tls_deserialize_exact_bytes(welcome)?.extract() {
            MlsMessageBodyIn::Welcome(welcome) => welcome,
            _ => return Err(Error::invalid_input("message is not a welcome")),
        };
        let staged =
            StagedWelcome::new_from_welcome(&self.provider, &join_config(), welcome, None)?;
        // Apply our credential rule to everyone already in the group.
        for member in staged.members() {
            verified_identity(&member.credential, &member.signature_key)?;
        }
        let mls = staged.into_group(&self.provider)?;
        Ok(GroupState::new(Arc::clone(self), mls))
    }
}

/// TLS-encodes an outgoing MLSMessage.
pub(crate) fn encode(message: &MlsMessageOut) -> Result<Vec<u8>> {
    message
        .to_bytes()
        .map_err(|_| Error::state("could not encode an MLS message"))
}

/// An MLS client: an Ed25519 signing key and the groups and KeyPackages made
/// with it.
#[pyclass(frozen, module = "openmls_bindings._native")]
pub struct Client {
    state: Arc<ClientState>,
}

#[pymethods]
impl Client {
    #[new]
    fn new(signing_key: &[u8]) -> PyResult<Self> {
        let state = guarded(|| ClientState::from_signing_key(signing_key))?;
        Ok(Self {
            state: Arc::new(state),
        })
    }

    /// The 32-byte Ed25519 public key; also the credential identity.
    #[getter]
    fn identity<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.state.identity)
    }

    /// A fresh KeyPackage, serialized as an MLSMessage.
    #[pyo3(signature = (ciphersuite = 0x0001))]
    fn key_package<'py>(&self, py: Python<'py>, ciphersuite: i64) -> PyResult<Bound<'py, PyBytes>> {
        let state = &self.state;
        let bytes = py.detach(|| guarded(|| state.key_package(ciphersuite)))?;
        Ok(PyBytes::new(py, &bytes))
    }

    /// Creates a new group with this client as its only member.
    #[pyo3(signature = (group_id, ciphersuite = 0x0001))]
    fn create_group(&self, py: Python<'_>, group_id: &[u8], ciphersuite: i64) -> PyResult<Group> {
        let state = &self.state;
        let group = py.detach(|| guarded(|| state.create_group(group_id, ciphersuite)))?;
        Ok(Group::from(group))
    }

    /// Joins a group from a Welcome MLSMessage.
    fn join(&self, py: Python<'_>, welcome: &[u8]) -> PyResult<Group> {
        let state = &self.state;
        let group = py.detach(|| guarded(|| state.join(welcome)))?;
        Ok(Group::from(group))
    }

    fn __repr__(&self) -> String {
        format!("<Client identity={}…>", hex_prefix(&self.state.identity))
    }
}

/// The first bytes of a public value as hex, for reprs.
pub(crate) fn hex_prefix(bytes: &[u8]) -> String {
    bytes.iter().take(4).map(|b| format!("{b:02x}")).collect()
}
