//! One committer per group (docs/adr/0003).
//!
//! The group context carries a private-use extension naming the committer
//! and whether outsiders may join by external commit:
//!
//! ```text
//! struct {
//!     uint8 version = 1;
//!     uint8 flags;              // bit 0: external joins allowed
//!     opaque committer[32];     // the committer's identity (Ed25519 key)
//! } CommitterPolicy;            // extension type 0xF0C1
//! ```
//!
//! It is listed in the group's RequiredCapabilities, so only leaves that
//! advertise it (ours all do) can be added. Every member checks every commit
//! against the policy of the epoch it is sent in: a commit from anyone else
//! is refused before it touches the group state.
//!
//! An *interop* group carries no record at all: RFC 9420 requires every
//! member to support each GroupContext extension, which members of other
//! implementations cannot do for ours. Such a group has no committer policy:
//! any member may commit (as in plain RFC 9420), nobody may join by external
//! commit, and the group can never gain or lose the record (a commit that
//! adds one is refused, as is one that drops it from a normal group).

use openmls::group::{GroupContext, MlsGroup, QueuedProposal, StagedCommit};
use openmls::prelude::{
    Capabilities, Ciphersuite, CredentialType, Extension, ExtensionType, Extensions, KeyPackage,
    LeafNodeIndex, Proposal, RequiredCapabilitiesExtension, Sender, UnknownExtension,
};

use crate::error::{Error, Result};
use crate::key_package::{leaf_identity, SUPPORTED_CIPHERSUITES};

/// Private-use extension type (RFC 9420 §17.3: 0xF000–0xFFFF).
pub const POLICY_EXTENSION_TYPE: u16 = 0xF0C1;
const POLICY_VERSION: u8 = 1;
const FLAG_EXTERNAL_JOINS: u8 = 0x01;
const POLICY_LEN: usize = 2 + 32;

/// Who may commit in a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub committer: Vec<u8>,
    pub external_joins: bool,
    /// No record: a group open to other implementations, where any member
    /// may commit (`committer` is empty).
    pub interop: bool,
}

impl Policy {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(POLICY_LEN);
        out.push(POLICY_VERSION);
        out.push(if self.external_joins {
            FLAG_EXTERNAL_JOINS
        } else {
            0
        });
        out.extend_from_slice(&self.committer);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let invalid = || Error::invalid_message("the group's committer record is malformed");
        if bytes.len() != POLICY_LEN
            || bytes[0] != POLICY_VERSION
            || bytes[1] & !FLAG_EXTERNAL_JOINS != 0
        {
            return Err(invalid());
        }
        Ok(Self {
            external_joins: bytes[1] & FLAG_EXTERNAL_JOINS != 0,
            committer: bytes[2..].to_vec(),
            interop: false,
        })
    }

    pub fn extension(&self) -> Extension {
        Extension::Unknown(POLICY_EXTENSION_TYPE, UnknownExtension(self.encode()))
    }

    /// The policy of an interop group: no committer, no external joins.
    pub fn interop() -> Self {
        Self {
            committer: Vec::new(),
            external_joins: false,
            interop: true,
        }
    }

    /// The policy recorded in a group context's extensions; an interop
    /// policy if there is no record.
    pub fn from_extensions(extensions: &Extensions<GroupContext>) -> Result<Self> {
        match extensions.unknown(POLICY_EXTENSION_TYPE) {
            Some(ext) => Self::decode(&ext.0),
            None => Ok(Self::interop()),
        }
    }

    /// Whether the member with `identity` may commit.
    pub fn may_commit(&self, identity: &[u8]) -> bool {
        self.interop || self.committer == identity
    }

    /// The policy of a group's current epoch.
    pub fn of(group: &MlsGroup) -> Result<Self> {
        Self::from_extensions(group.extensions())
    }

    /// Refuses a group whose committer is not among `identities` (its
    /// members): nobody could ever commit in it.
    pub fn require_member(&self, identities: &[Vec<u8>]) -> Result<()> {
        if self.interop || identities.contains(&self.committer) {
            Ok(())
        } else {
            Err(Error::invalid_message(
                "the group's committer is not one of its members",
            ))
        }
    }

    /// The group context extensions of a new group with this policy.
    pub fn new_group_extensions(&self) -> Result<Extensions<GroupContext>> {
        let extensions = if self.interop {
            vec![required_capabilities(false)]
        } else {
            vec![self.extension(), required_capabilities(true)]
        };
        Extensions::from_vec(extensions)
            .map_err(|_| Error::state("cannot build the group context extensions"))
    }

    /// `current` with this policy in place of the old one.
    pub fn replace_in(
        &self,
        current: &Extensions<GroupContext>,
    ) -> Result<Extensions<GroupContext>> {
        let mut extensions = current.clone();
        extensions
            .add_or_replace(self.extension())
            .map_err(|_| Error::state("cannot build the group context extensions"))?;
        Ok(extensions)
    }
}

/// Requires every leaf to use a basic credential and, with `policy`, to
/// support the policy extension.
fn required_capabilities(policy: bool) -> Extension {
    let extensions: &[ExtensionType] = if policy {
        &[ExtensionType::Unknown(POLICY_EXTENSION_TYPE)]
    } else {
        &[]
    };
    Extension::RequiredCapabilities(RequiredCapabilitiesExtension::new(
        extensions,
        &[],
        &[CredentialType::Basic],
    ))
}

/// The capabilities of every leaf and KeyPackage we make.
pub fn capabilities() -> Capabilities {
    let suites: Vec<Ciphersuite> = SUPPORTED_CIPHERSUITES.to_vec();
    Capabilities::new(
        None,
        Some(&suites),
        Some(&[
            ExtensionType::Unknown(POLICY_EXTENSION_TYPE),
            ExtensionType::LastResort,
        ]),
        Some(&[]),
        Some(&[CredentialType::Basic]),
    )
}

/// Whether a KeyPackage's leaf can join a group with `policy`: it must
/// support the record unless the group has none (interop).
pub fn key_package_supports_policy(policy: &Policy, key_package: &KeyPackage) -> bool {
    policy.interop
        || key_package
            .leaf_node()
            .capabilities()
            .extensions()
            .contains(&ExtensionType::Unknown(POLICY_EXTENSION_TYPE))
}

/// The identity of the member at `index` in the group's current epoch.
pub fn member_identity(group: &MlsGroup, index: LeafNodeIndex) -> Option<Vec<u8>> {
    group
        .member(index)
        .map(|credential| credential.serialized_content().to_vec())
}

/// Refuses a commit that the group's policy does not allow, before it is
/// merged. `sender` is the commit's sender; `staged` the staged commit.
pub fn check_commit(group: &MlsGroup, sender: &Sender, staged: &StagedCommit) -> Result<()> {
    let policy = Policy::of(group)?;
    match sender {
        Sender::Member(index) => {
            if !member_identity(group, *index).is_some_and(|id| policy.may_commit(&id)) {
                return Err(Error::not_committer(
                    "commit from a member who is not the group's committer",
                ));
            }
        }
        Sender::NewMemberCommit => {
            if !policy.external_joins {
                return Err(Error::not_committer(
                    "this group does not accept external joins",
                ));
            }
        }
        Sender::External(_) | Sender::NewMemberProposal => {
            return Err(Error::invalid_message("commit from outside the group"));
        }
    }
    let next = Policy::from_extensions(staged.group_context().extensions())?;
    if next == policy {
        return Ok(());
    }
    if next.interop || policy.interop {
        return Err(Error::invalid_message(
            "commit adds or drops the group's committer record",
        ));
    }
    if matches!(sender, Sender::NewMemberCommit) {
        return Err(Error::invalid_message(
            "an external commit cannot change the committer",
        ));
    }
    // A hand-over: the new committer must be a member who stays.
    let removed: Vec<LeafNodeIndex> = staged
        .remove_proposals()
        .map(|r| r.remove_proposal().removed())
        .collect();
    let stays = group.members().any(|m| {
        m.credential.serialized_content() == next.committer.as_slice()
            && !removed.contains(&m.index)
    });
    if !stays {
        return Err(Error::invalid_message(
            "commit hands the committer role to someone who is not a member",
        ));
    }
    Ok(())
}

/// Refuses a standalone proposal we will not store: only members may
/// propose, and only Add, Remove and Update.
pub fn check_proposal(group: &MlsGroup, queued: &QueuedProposal) -> Result<()> {
    if !matches!(queued.sender(), Sender::Member(_)) {
        return Err(Error::invalid_message(
            "proposals from outside the group are not accepted",
        ));
    }
    match queued.proposal() {
        Proposal::Add(add) => {
            let kp = add.key_package();
            leaf_identity(kp.leaf_node())?;
            if kp.ciphersuite() != group.ciphersuite() {
                return Err(Error::wrong_ciphersuite(
                    "proposed key package uses another ciphersuite than the group",
                ));
            }
            if !key_package_supports_policy(&Policy::of(group)?, kp) {
                return Err(Error::invalid_message(
                    "proposed key package does not support the committer policy",
                ));
            }
            Ok(())
        }
        Proposal::Update(update) => leaf_identity(update.leaf_node()).map(drop),
        Proposal::Remove(_) => Ok(()),
        _ => Err(Error::invalid_message(
            "only add, remove and update proposals are accepted",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_round_trips_and_rejects_malformed_records() {
        for external_joins in [false, true] {
            let policy = Policy {
                committer: vec![9; 32],
                external_joins,
                interop: false,
            };
            assert_eq!(Policy::decode(&policy.encode()).unwrap(), policy);
        }
        let good = Policy {
            committer: vec![9; 32],
            external_joins: true,
            interop: false,
        }
        .encode();
        let mut bad_version = good.clone();
        bad_version[0] = 2;
        let mut bad_flags = good.clone();
        bad_flags[1] = 0x80;
        for bad in [
            vec![],
            good[..33].to_vec(),
            [&good[..], &[0]].concat(),
            bad_version,
            bad_flags,
        ] {
            let err = Policy::decode(&bad).unwrap_err();
            assert_eq!(err.python_class(), "InvalidMessageError");
        }
    }
}
