//! The Python `Group` (a handle on one group of a client) and `Processed`.

use std::sync::Arc;

use openmls::group::MlsGroup;
use openmls_traits::OpenMlsProvider;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::client::{encode, hex_prefix, ClientState, Keys};
use crate::error::{guarded, Error, Result};
use crate::group_ops::{parse_group_message, receipt_digest, GroupOps, Outcome};
use crate::key_package::ciphersuite_code;
use crate::meta::{self, OwnCommit};
use crate::policy::Policy;
use crate::provider::Provider;

/// A group this client is a member of: a handle on the client's state, so
/// every handle of one group sees the same epoch.
#[pyclass(frozen, module = "openmls_bindings._native")]
pub struct Group {
    client: Arc<ClientState>,
    group_id: Vec<u8>,
}

impl Group {
    pub(crate) fn new(client: Arc<ClientState>, group_id: Vec<u8>) -> Self {
        Self { client, group_id }
    }

    /// Runs a read-only `f` on this group.
    fn read<T>(&self, f: impl FnOnce(&Keys, &Provider, &MlsGroup) -> Result<T>) -> Result<T> {
        self.client.read(|keys, inner| {
            let (provider, group) = inner.group(&self.group_id)?;
            f(keys, provider, group)
        })
    }

    /// The record of the commit this member made to enter the current
    /// epoch, if it did.
    fn own_commit(&self) -> Result<Option<OwnCommit>> {
        self.read(|_, provider, g| {
            let own: Option<OwnCommit> =
                meta::load(provider, &meta::own_commit_key(&self.group_id))?;
            Ok(own.filter(|c| c.epoch == g.epoch().as_u64()))
        })
    }

    /// Runs `f` as one transaction on this group, without the GIL.
    fn transact<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut GroupOps<'_>) -> Result<T> + Send,
    ) -> PyResult<T> {
        let client = &self.client;
        let group_id = &self.group_id;
        Ok(py.detach(|| {
            client.transact(|keys, inner| f(&mut GroupOps::new(keys, inner, group_id)?))
        })?)
    }
}

/// `(recipients, joiners)` as returned to Python.
type Recipients<'py> = (Vec<Bound<'py, PyBytes>>, Vec<Bound<'py, PyBytes>>);

/// `(commit, welcome)` as returned to Python.
type CommitPair<'py> = (Bound<'py, PyBytes>, Option<Bound<'py, PyBytes>>);

fn bytes_list<'py>(py: Python<'py>, items: &[Vec<u8>]) -> Vec<Bound<'py, PyBytes>> {
    items.iter().map(|b| PyBytes::new(py, b)).collect()
}

fn to_vecs(items: &[Bound<'_, PyBytes>]) -> Vec<Vec<u8>> {
    items.iter().map(|b| b.as_bytes().to_vec()).collect()
}

#[pymethods]
impl Group {
    /// The group id.
    #[getter]
    fn group_id<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.group_id)
    }

    /// The current epoch.
    #[getter]
    fn epoch(&self) -> PyResult<u64> {
        Ok(self.read(|_, _, g| Ok(g.epoch().as_u64()))?)
    }

    /// The ciphersuite's IANA code point.
    #[getter]
    fn ciphersuite(&self) -> PyResult<u16> {
        Ok(self.read(|_, _, g| Ok(ciphersuite_code(g.ciphersuite())))?)
    }

    /// The identity of the group's committer.
    #[getter]
    fn committer<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let committer = self.read(|_, _, g| Ok(Policy::of(g)?.committer))?;
        Ok(PyBytes::new(py, &committer))
    }

    /// Whether outsiders may join by external commit.
    #[getter]
    fn external_joins(&self) -> PyResult<bool> {
        Ok(self.read(|_, _, g| Ok(Policy::of(g)?.external_joins))?)
    }

    /// Whether the group has no committer record (members of other MLS
    /// implementations may be added; any member may commit).
    #[getter]
    fn interop(&self) -> PyResult<bool> {
        Ok(self.read(|_, _, g| Ok(Policy::of(g)?.interop))?)
    }

    /// False once this member has been removed from the group.
    #[getter]
    fn is_active(&self) -> PyResult<bool> {
        Ok(self.read(|_, _, g| Ok(g.is_active()))?)
    }

    /// How many proposals wait for a commit.
    #[getter]
    fn pending_proposals(&self) -> PyResult<usize> {
        Ok(self.read(|_, _, g| Ok(g.pending_proposals().count()))?)
    }

    /// `(leaf_index, identity)` for every member, ordered by leaf index.
    fn members<'py>(&self, py: Python<'py>) -> PyResult<Vec<(u32, Bound<'py, PyBytes>)>> {
        let mut members = self.read(|_, _, g| {
            Ok(g.members()
                .map(|m| (m.index.u32(), m.credential.serialized_content().to_vec()))
                .collect::<Vec<_>>())
        })?;
        members.sort_by_key(|(index, _)| *index);
        Ok(members
            .into_iter()
            .map(|(index, identity)| (index, PyBytes::new(py, &identity)))
            .collect())
    }

    /// Commits the pending proposals plus adds; returns `(commit, welcome)`.
    #[pyo3(signature = (add = Vec::new()))]
    fn commit<'py>(
        &self,
        py: Python<'py>,
        add: Vec<Bound<'py, PyBytes>>,
    ) -> PyResult<CommitPair<'py>> {
        let inputs = to_vecs(&add);
        let output = self.transact(py, |g| g.commit(&inputs))?;
        Ok((
            PyBytes::new(py, &output.commit),
            output.welcome.map(|w| PyBytes::new(py, &w)),
        ))
    }

    /// Adds members from their KeyPackages; returns `(commit, welcome)`.
    fn add_members<'py>(
        &self,
        py: Python<'py>,
        key_packages: Vec<Bound<'py, PyBytes>>,
    ) -> PyResult<(Bound<'py, PyBytes>, Bound<'py, PyBytes>)> {
        let inputs = to_vecs(&key_packages);
        let (commit, welcome) = self.transact(py, |g| g.add_members(&inputs))?;
        Ok((PyBytes::new(py, &commit), PyBytes::new(py, &welcome)))
    }

    /// Removes members by identity; returns the commit.
    fn remove_members<'py>(
        &self,
        py: Python<'py>,
        identities: Vec<Bound<'py, PyBytes>>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let inputs = to_vecs(&identities);
        let commit = self.transact(py, |g| g.remove_members(&inputs))?;
        Ok(PyBytes::new(py, &commit))
    }

    /// Commits fresh keys for this member; returns the commit.
    fn self_update<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let commit = self.transact(py, |g| g.self_update())?;
        Ok(PyBytes::new(py, &commit))
    }

    /// Hands the committer role to another member; returns the commit.
    fn hand_over<'py>(&self, py: Python<'py>, identity: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
        let commit = self.transact(py, |g| g.hand_over(identity))?;
        Ok(PyBytes::new(py, &commit))
    }

    /// Proposes adding a KeyPackage's owner; returns the proposal.
    fn propose_add<'py>(
        &self,
        py: Python<'py>,
        key_package: &[u8],
    ) -> PyResult<Bound<'py, PyBytes>> {
        let proposal = self.transact(py, |g| g.propose_add(key_package))?;
        Ok(PyBytes::new(py, &proposal))
    }

    /// Proposes removing a member; returns the proposal.
    fn propose_remove<'py>(
        &self,
        py: Python<'py>,
        identity: &[u8],
    ) -> PyResult<Bound<'py, PyBytes>> {
        let proposal = self.transact(py, |g| g.propose_remove(identity))?;
        Ok(PyBytes::new(py, &proposal))
    }

    /// Proposes fresh keys for this member; returns the proposal.
    fn propose_update<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let proposal = self.transact(py, |g| g.propose_update())?;
        Ok(PyBytes::new(py, &proposal))
    }

    /// Proposes this member's removal; returns the proposal.
    fn leave<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let proposal = self.transact(py, |g| g.leave())?;
        Ok(PyBytes::new(py, &proposal))
    }

    /// Encrypts an application message.
    fn encrypt<'py>(&self, py: Python<'py>, plaintext: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
        let message = self.transact(py, |g| g.encrypt(plaintext))?;
        Ok(PyBytes::new(py, &message))
    }

    /// Processes an incoming MLSMessage for this group. With a
    /// `delivery_id`, processing the same message under the same id again
    /// returns the remembered outcome (`repeated`) instead of failing.
    #[pyo3(signature = (message, *, delivery_id = None))]
    fn process(
        &self,
        py: Python<'_>,
        message: &[u8],
        delivery_id: Option<&[u8]>,
    ) -> PyResult<Processed> {
        let group_id = &self.group_id;
        let client = &self.client;
        let (outcome, repeated) = py.detach(|| {
            let parsed = guarded(|| {
                let parsed = parse_group_message(message)?;
                if parsed.group_id().as_slice() != group_id.as_slice() {
                    return Err(Error::invalid_message("message is for another group"));
                }
                Ok(parsed)
            })?;
            let digest = delivery_id.map(|id| receipt_digest(group_id, id, message));
            client.transact(|keys, inner| {
                if let Some(digest) = &digest {
                    if let Some(receipt) = meta::find_receipt(&inner.provider, digest)? {
                        return Ok((Outcome::from_receipt(receipt)?, true));
                    }
                }
                let outcome = GroupOps::new(keys, inner, group_id)?.process(parsed)?;
                if let Some(digest) = &digest {
                    meta::keep_receipt(&inner.provider, digest, &outcome.receipt())?;
                }
                Ok((outcome, false))
            })
        })?;
        Ok(Processed { outcome, repeated })
    }

    /// A GroupInfo (with the ratchet tree) for joining by external commit.
    fn export_group_info<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let info = self.read(|keys, provider, g| {
            if !g.is_active() {
                return Err(Error::not_member("this member was removed from the group"));
            }
            encode(&g.export_group_info(provider.crypto(), &keys.signer, true)?)
        })?;
        Ok(PyBytes::new(py, &info))
    }

    /// A secret derived from the current epoch (RFC 9420 §8.5).
    fn exporter<'py>(
        &self,
        py: Python<'py>,
        label: &str,
        context: &[u8],
        length: usize,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let secret = self.read(|_, provider, g| {
            // HKDF-Expand yields at most 255 hash lengths (RFC 5869 §2.3).
            let max = 255 * g.ciphersuite().hash_length();
            if length == 0 || length > max {
                return Err(Error::invalid_input(format!(
                    "exporter length must be between 1 and {max}"
                )));
            }
            if !g.is_active() {
                return Err(Error::not_member("this member was removed from the group"));
            }
            Ok(g.export_secret(provider.crypto(), label, context, length)?)
        })?;
        Ok(PyBytes::new(py, &secret))
    }

    /// The commit (and Welcome) this member made to enter the current epoch.
    fn last_commit<'py>(&self, py: Python<'py>) -> PyResult<Option<CommitPair<'py>>> {
        Ok(self.own_commit()?.map(|c| {
            (
                PyBytes::new(py, c.commit.as_slice()),
                c.welcome.map(|w| PyBytes::new(py, w.as_slice())),
            )
        }))
    }

    /// Whom [`last_commit`](Self::last_commit) goes to: the other members of
    /// the epoch it ended (removed ones included) and the members it added
    /// (the Welcome's recipients); None when it is None.
    fn last_commit_recipients<'py>(&self, py: Python<'py>) -> PyResult<Option<Recipients<'py>>> {
        let own = self.own_commit()?;
        let list = |ids: Vec<tls_codec::VLBytes>| {
            ids.iter()
                .map(|id| PyBytes::new(py, id.as_slice()))
                .collect::<Vec<_>>()
        };
        Ok(own.map(|c| (list(c.recipients), list(c.joiners))))
    }

    fn __repr__(&self) -> PyResult<String> {
        let (epoch, members) =
            self.read(|_, _, g| Ok((g.epoch().as_u64(), g.members().count())))?;
        Ok(format!(
            "<Group id={}… epoch={epoch} members={members}>",
            hex_prefix(&self.group_id),
        ))
    }
}

/// The result of processing a message.
#[pyclass(frozen, module = "openmls_bindings._native")]
pub struct Processed {
    outcome: Outcome,
    repeated: bool,
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

    /// True if this delivery was processed before and this is the outcome
    /// remembered from then (see `Group.process`'s `delivery_id`).
    #[getter]
    fn repeated(&self) -> bool {
        self.repeated
    }

    /// The group's epoch after processing.
    #[getter]
    fn epoch(&self) -> u64 {
        self.outcome.epoch
    }

    /// Identities a commit added (empty for other kinds).
    #[getter]
    fn added<'py>(&self, py: Python<'py>) -> Vec<Bound<'py, PyBytes>> {
        bytes_list(py, &self.outcome.added)
    }

    /// Identities a commit removed (empty for other kinds).
    #[getter]
    fn removed<'py>(&self, py: Python<'py>) -> Vec<Bound<'py, PyBytes>> {
        bytes_list(py, &self.outcome.removed)
    }

    /// Whether the commit removed this member.
    #[getter]
    fn self_removed(&self) -> bool {
        self.outcome.self_removed
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
