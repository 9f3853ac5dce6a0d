//! `Client.inspect_welcome`: who invites us, to which group, with whom,
//! before we agree to join.
//!
//! A node asks its user before it joins a group a stranger made (DESIGN
//! §11). To say who invited, it has to open the Welcome: decrypting the
//! GroupSecrets needs our KeyPackage's init key, and OpenMLS deletes a
//! single-use KeyPackage as soon as it finds it. The inspection therefore
//! runs inside a transaction that is always undone
//! ([`ClientState::undone`]): the KeyPackage, and everything else, is as it
//! was, and the later `join` finds it. What it returns is what a join would
//! verify: the GroupInfo's signature, the ratchet tree and every member's
//! credential rule.

use openmls::group::ProcessedWelcome;
use openmls::prelude::{MlsMessageBodyIn, MlsMessageIn};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use tls_codec::DeserializeBytes;

use crate::client::{join_config, ClientState};
use crate::error::{Error, Result};
use crate::key_package::{leaf_identity, verified_identity};
use crate::policy::Policy;

/// What a Welcome says, verified, without joining.
#[pyclass(frozen, module = "openmls_bindings._native")]
pub struct WelcomeInfo {
    group_id: Vec<u8>,
    ciphersuite: u16,
    sender: Vec<u8>,
    members: Vec<Vec<u8>>,
    committer: Option<Vec<u8>>,
}

impl ClientState {
    /// Opens a Welcome made for one of this client's KeyPackages and
    /// reports it; the client's state is unchanged afterwards.
    pub fn inspect_welcome(&self, welcome: &[u8]) -> Result<WelcomeInfo> {
        let welcome = match MlsMessageIn::tls_deserialize_exact_bytes(welcome)?.extract() {
            MlsMessageBodyIn::Welcome(welcome) => welcome,
            _ => return Err(Error::invalid_input("message is not a welcome")),
        };
        self.undone(|_, inner| {
            let processed =
                ProcessedWelcome::new_from_welcome(&inner.provider, &join_config(false), welcome)?;
            let staged = processed.into_staged_welcome(&inner.provider, None)?;
            let policy = Policy::from_extensions(staged.group_context().extensions())?;
            let mut members = Vec::new();
            for member in staged.members() {
                members.push(verified_identity(
                    &member.credential,
                    &member.signature_key,
                )?);
            }
            let sender = leaf_identity(staged.welcome_sender()?)?;
            Ok(WelcomeInfo {
                group_id: staged.group_context().group_id().as_slice().to_vec(),
                ciphersuite: staged.group_context().ciphersuite() as u16,
                sender,
                members,
                committer: (!policy.interop).then_some(policy.committer),
            })
        })
    }
}

#[pymethods]
impl WelcomeInfo {
    #[getter]
    fn group_id<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.group_id)
    }

    #[getter]
    fn ciphersuite(&self) -> u16 {
        self.ciphersuite
    }

    /// The identity of the member that signed the GroupInfo (the one who
    /// added us).
    #[getter]
    fn sender<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.sender)
    }

    /// Every member's identity in leaf order, ours included.
    #[getter]
    fn members<'py>(&self, py: Python<'py>) -> Vec<Bound<'py, PyBytes>> {
        self.members.iter().map(|m| PyBytes::new(py, m)).collect()
    }

    /// The group's committer (None for an interop group, which has none).
    #[getter]
    fn committer<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        self.committer.as_ref().map(|c| PyBytes::new(py, c))
    }

    fn __repr__(&self) -> String {
        format!(
            "<WelcomeInfo group={}… members={} sender={}…>",
            crate::client::hex_prefix(&self.group_id),
            self.members.len(),
            crate::client::hex_prefix(&self.sender)
        )
    }
}

#[cfg(test)]
mod tests {
    use crate::client::ClientState;
    use crate::clock::testing::at_system_now;
    use crate::group_ops::GroupOps;

    fn client(seed: u8) -> ClientState {
        ClientState::in_memory(&[seed; 32], at_system_now(), None).unwrap()
    }

    #[test]
    fn inspecting_a_welcome_changes_nothing_and_join_still_works() {
        let (alice, bob, carol) = (client(1), client(2), client(3));
        alice.create_group(b"room", 1, false, false).unwrap();
        let kp = bob.key_packages(1, 1).unwrap();
        let (_, welcome) = alice
            .transact(|keys, inner| GroupOps::new(keys, inner, b"room")?.add_members(&kp))
            .unwrap();
        let first = bob.inspect_welcome(&welcome).unwrap();
        let again = bob.inspect_welcome(&welcome).unwrap();
        assert_eq!(first.group_id, b"room");
        assert_eq!(first.sender, alice.keys.identity);
        assert_eq!(first.committer.as_deref(), Some(&alice.keys.identity[..]));
        assert_eq!(
            first.members,
            vec![alice.keys.identity.to_vec(), bob.keys.identity.to_vec()]
        );
        assert_eq!(first.members, again.members);
        assert!(carol.inspect_welcome(&welcome).is_err());
        assert!(bob.group_ids().unwrap().is_empty());
        assert_eq!(bob.join(&welcome, false).unwrap(), b"room");
    }
}
