//! A group this client is a member of, and the result of processing a
//! message for it.

use std::sync::{Arc, Mutex, MutexGuard};

use openmls::prelude::{
    Ciphersuite, MlsGroup, MlsGroupCreateConfig, MlsGroupJoinConfig, MlsMessageBodyIn,
    MlsMessageIn, ProcessMessageError, ProcessedMessageContent, Proposal, ProtocolMessage,
    StagedCommit,
};
use openmls_traits::OpenMlsProvider;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use tls_codec::DeserializeBytes;

use crate::client::{encode, hex_prefix, ClientState};
use crate::error::{guarded, Error, Result};
use crate::key_package::{ciphersuite_code, leaf_identity, parse_key_package};
use crate::provider::StorageError;

/// Configuration for groups we create. The ratchet tree goes into every
/// Welcome (RFC 9420 §12.4.3.3), so joiners need nothing out of band.
pub(crate) fn create_config(suite: Ciphersuite) -> MlsGroupCreateConfig {
    MlsGroupCreateConfig::builder()
        .ciphersuite(suite)
        .use_ratchet_tree_extension(true)
        .build()
}

/// Configuration for groups we join; our own later Welcomes carry the tree too.
pub(crate) fn join_config() -> MlsGroupJoinConfig {
    MlsGroupJoinConfig::builder()
        .use_ratchet_tree_extension(true)
        .build()
}

/// What a processed message was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Application,
    Commit,
    Proposal,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Application => "application",
            Kind::Commit => "commit",
            Kind::Proposal => "proposal",
        }
    }
}

/// The outcome of [`GroupState::process`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub kind: Kind,
    pub sender: Vec<u8>,
    pub plaintext: Option<Vec<u8>>,
    pub epoch: u64,
}

/// An OpenMLS group plus the client state it signs and stores with.
pub struct GroupState {
    client: Arc<ClientState>,
    mls: MlsGroup,
}

impl GroupState {
    pub(crate) fn new(client: Arc<ClientState>, mls: MlsGroup) -> Self {
        Self { client, mls }
    }

    pub fn group_id(&self) -> Vec<u8> {
        self.mls.group_id().as_slice().to_vec()
    }

    pub fn epoch(&self) -> u64 {
        self.mls.epoch().as_u64()
    }

    pub fn ciphersuite(&self) -> u16 {
        ciphersuite_code(self.mls.ciphersuite())
    }

    /// `(leaf_index, identity)` for every member, by leaf index.
    pub fn members(&self) -> Vec<(u32, Vec<u8>)> {
        let mut members: Vec<(u32, Vec<u8>)> = self
            .mls
            .members()
            .map(|m| (m.index.u32(), m.credential.serialized_content().to_vec()))
            .collect();
        members.sort_by_key(|(index, _)| *index);
        members
    }

    /// Commits adding the owners of `key_packages`, merges the commit and
    /// returns `(commit, welcome)` as MLSMessage bytes.
    pub fn add_members<B: AsRef<[u8]>>(
        &mut self,
        key_packages: &[B],
    ) -> Result<(Vec<u8>, Vec<u8>)> {
        if key_packages.is_empty() {
            return Err(Error::invalid_input("no key packages given"));
        }
        let group_suite = self.mls.ciphersuite();
        let mut parsed = Vec::with_capacity(key_packages.len());
        for (position, bytes) in key_packages.iter().enumerate() {
            let kp = parse_key_package(bytes.as_ref())?;
            if kp.ciphersuite() != group_suite {
                return Err(Error::wrong_ciphersuite(format!(
                    "key package {position} uses ciphersuite {:#06x} but the group uses {:#06x}",
                    ciphersuite_code(kp.ciphersuite()),
                    ciphersuite_code(group_suite),
                )));
            }
            parsed.push(kp);
        }
        let client = &self.client;
        let (commit, welcome, _group_info) =
            self.mls
                .add_members(&client.provider, &client.signer, &parsed)?;
        self.mls.merge_pending_commit(&client.provider)?;
        Ok((encode(&commit)?, encode(&welcome)?))
    }

    /// Encrypts an application message as a PrivateMessage MLSMessage.
    pub fn encrypt(&mut self, plaintext: &[u8]) -> Result<Vec<u8>> {
        let client = &self.client;
        let message = self
            .mls
            .create_message(&client.provider, &client.signer, plaintext)?;
        encode(&message)
    }

    /// Processes one incoming MLSMessage for this group.
    pub fn process(&mut self, bytes: &[u8]) -> Result<Outcome> {
        let message: ProtocolMessage =
            match MlsMessageIn::tls_deserialize_exact_bytes(bytes)?.extract() {
                MlsMessageBodyIn::PrivateMessage(m) => m.into(),
                MlsMessageBodyIn::PublicMessage(m) => m.into(),
                _ => {
                    return Err(Error::invalid_input(
                        "message is not a group message (welcome, key package or group info)",
                    ))
                }
            };
        if message.group_id() != self.mls.group_id() {
            return Err(Error::invalid_message("message is for another group"));
        }
        let message_epoch = message.epoch().as_u64();
        let group_epoch = self.epoch();

        let client = Arc::clone(&self.client);
        let provider = &client.provider;
        let processed = self
            .mls
            .process_message(provider, message)
            .map_err(|e| epoch_error(e, message_epoch, group_epoch))?;
        let sender = processed.credential().serialized_content().to_vec();

        let (kind, plaintext) = match processed.into_content() {
            ProcessedMessageContent::ApplicationMessage(app) => {
                (Kind::Application, Some(app.into_bytes()))
            }
            ProcessedMessageContent::ProposalMessage(queued) => {
                check_proposal(queued.proposal())?;
                self.mls
                    .store_pending_proposal(provider.storage(), *queued)
                    .map_err(|_: StorageError| {
                        Error::Storage("the MLS state store failed".into())
                    })?;
                (Kind::Proposal, None)
            }
            ProcessedMessageContent::StagedCommitMessage(staged) => {
                check_commit(&staged)?;
                self.mls.merge_staged_commit(provider, *staged)?;
                (Kind::Commit, None)
            }
            ProcessedMessageContent::ExternalJoinProposalMessage(_) => {
                return Err(Error::invalid_message(
                    "proposals from outside the group are not accepted",
                ))
            }
            ProcessedMessageContent::OwnPendingCommit
            | ProcessedMessageContent::OwnPrivateMessage => {
                return Err(Error::invalid_message(
                    "message was sent by this member and cannot be processed by it",
                ))
            }
        };
        Ok(Outcome {
            kind,
            sender,
            plaintext,
            epoch: self.epoch(),
        })
    }
}

/// Classifies a processing error, naming both epochs when the message is
/// from an epoch other than the group's.
fn epoch_error(
    err: ProcessMessageError<StorageError>,
    message_epoch: u64,
    group_epoch: u64,
) -> Error {
    match Error::from(err) {
        Error::WrongEpoch(_) if message_epoch != group_epoch => {
            Error::wrong_epoch(message_epoch, group_epoch)
        }
        // Same epoch but the key for that generation is gone.
        Error::WrongEpoch(_) => Error::invalid_message(
            "message is too old to decrypt (replayed or too far out of order)",
        ),
        other => other,
    }
}

/// Applies the credential rule to every leaf a proposal would add or change.
fn check_proposal(proposal: &Proposal) -> Result<()> {
    match proposal {
        Proposal::Add(add) => leaf_identity(add.key_package().leaf_node()).map(drop),
        Proposal::Update(update) => leaf_identity(update.leaf_node()).map(drop),
        _ => Ok(()),
    }
}

/// Applies the credential rule to every leaf a commit would add or change.
fn check_commit(staged: &StagedCommit) -> Result<()> {
    if let Some(leaf) = staged.update_path_leaf_node() {
        leaf_identity(leaf)?;
    }
    for queued in staged.queued_proposals() {
        check_proposal(queued.proposal())?;
    }
    Ok(())
}

/// A group this client is a member of.
#[pyclass(frozen, module = "openmls_bindings._native")]
pub struct Group {
    state: Mutex<GroupState>,
}

impl From<GroupState> for Group {
    fn from(state: GroupState) -> Self {
        Self {
            state: Mutex::new(state),
        }
    }
}

impl Group {
    fn lock(&self) -> Result<MutexGuard<'_, GroupState>> {
        self.state
            .lock()
            .map_err(|_| Error::state("group is unusable after an internal error"))
    }

    /// Runs `f` on the locked group state without holding the GIL.
    fn with_state<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut GroupState) -> Result<T> + Send,
    ) -> PyResult<T> {
        Ok(py.detach(|| guarded(|| f(&mut *self.lock()?)))?)
    }
}

#[pymethods]
impl Group {
    /// The group id.
    #[getter]
    fn group_id<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let id = self.lock()?.group_id();
        Ok(PyBytes::new(py, &id))
    }

    /// The current epoch.
    #[getter]
    fn epoch(&self) -> PyResult<u64> {
        Ok(self.lock()?.epoch())
    }

    /// The ciphersuite's IANA code point.
    #[getter]
    fn ciphersuite(&self) -> PyResult<u16> {
        Ok(self.lock()?.ciphersuite())
    }

    /// `(leaf_index, identity)` for every member, ordered by leaf index.
    fn members<'py>(&self, py: Python<'py>) -> PyResult<Vec<(u32, Bound<'py, PyBytes>)>> {
        let members = self.lock()?.members();
        Ok(members
            .into_iter()
            .map(|(index, identity)| (index, PyBytes::new(py, &identity)))
            .collect())
    }

    /// Adds members from their KeyPackages; returns `(commit, welcome)`.
    fn add_members<'py>(
        &self,
        py: Python<'py>,
        key_packages: Vec<Bound<'py, PyBytes>>,
    ) -> PyResult<(Bound<'py, PyBytes>, Bound<'py, PyBytes>)> {
        let inputs: Vec<Vec<u8>> = key_packages.iter().map(|b| b.as_bytes().to_vec()).collect();
        let (commit, welcome) = self.with_state(py, |g| g.add_members(&inputs))?;
        Ok((PyBytes::new(py, &commit), PyBytes::new(py, &welcome)))
    }

    /// Encrypts an application message.
    fn encrypt<'py>(&self, py: Python<'py>, plaintext: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
        let message = self.with_state(py, |g| g.encrypt(plaintext))?;
        Ok(PyBytes::new(py, &message))
    }

    /// Processes an incoming MLSMessage for this group.
    fn process(&self, py: Python<'_>, message: &[u8]) -> PyResult<Processed> {
        let outcome = self.with_state(py, |g| g.process(message))?;
        Ok(Processed { outcome })
    }

    fn __repr__(&self) -> PyResult<String> {
        let state = self.lock()?;
        Ok(format!(
            "<Group id={}… epoch={} members={}>",
            hex_prefix(&state.group_id()),
            state.epoch(),
            state.mls.members().count()
        ))
    }
}

/// The result of processing a message.
#[pyclass(frozen, module = "openmls_bindings._native")]
pub struct Processed {
    outcome: Outcome,
}

#[pymethods]
impl Processed {
    /// "application", "commit" or "proposal".
    #[getter]
    fn kind(&self) -> &'static str {
        self.outcome.kind.as_str()
    }

    /// The sender's credential identity (32-byte Ed25519 public key).
    #[getter]
    fn sender<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.outcome.sender)
    }

    /// The decrypted application data, or None for commits and proposals.
    #[getter]
    fn plaintext<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        self.outcome
            .plaintext
            .as_deref()
            .map(|p| PyBytes::new(py, p))
    }

    /// The group's epoch after processing.
    #[getter]
    fn epoch(&self) -> u64 {
        self.outcome.epoch
    }

    fn __repr__(&self) -> String {
        format!(
            "<Processed kind={} sender={}… epoch={}>",
            self.outcome.kind.as_str(),
            hex_prefix(&self.outcome.sender),
            self.outcome.epoch
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key_package::CIPHERSUITE_X25519_AES128GCM as SUITE;

    fn client(seed: u8) -> Arc<ClientState> {
        Arc::new(ClientState::from_signing_key(&[seed; 32]).unwrap())
    }

    #[test]
    fn two_member_round_trip() {
        let (alice, bob) = (client(1), client(2));
        let mut group = alice.create_group(b"room", SUITE.into()).unwrap();
        let kp = bob.key_package(SUITE.into()).unwrap();
        let (_commit, welcome) = group.add_members(&[kp]).unwrap();
        assert_eq!(group.epoch(), 1);

        let mut bob_group = bob.join(&welcome).unwrap();
        assert_eq!(bob_group.epoch(), 1);
        assert_eq!(bob_group.members(), group.members());

        let ct = group.encrypt(b"hi bob").unwrap();
        let got = bob_group.process(&ct).unwrap();
        assert_eq!(got.kind, Kind::Application);
        assert_eq!(got.plaintext.as_deref(), Some(&b"hi bob"[..]));
        assert_eq!(got.sender, alice.identity.to_vec());

        // Replaying the same ciphertext is refused, not decrypted twice.
        let err = bob_group.process(&ct).unwrap_err();
        assert_eq!(err.python_class(), "InvalidMessageError");
    }

    #[test]
    fn group_outlives_its_client_handle() {
        let alice = client(3);
        let mut group = alice.create_group(b"g", SUITE.into()).unwrap();
        drop(alice);
        assert!(group.encrypt(b"still works").is_ok());
    }

    #[test]
    fn wrong_signing_key_length_is_invalid_input() {
        let err = ClientState::from_signing_key(&[0u8; 31]).err().unwrap();
        assert_eq!(err.python_class(), "InvalidInputError");
        assert_eq!(err.message(), "signing key must be 32 bytes, got 31");
    }
}
