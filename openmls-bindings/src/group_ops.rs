//! One group's operations on the client's locked state: commits (committer
//! only), proposals, encryption and processing.
//!
//! Commits follow the committer policy (src/policy.rs, ADR 0003): only the
//! committer commits; everyone else proposes. The committer re-issues the Add
//! and Remove proposals it received as its own (by value), so they need to
//! reach only the committer; Update proposals can only be committed by
//! reference, so every member must have received one before the commit
//! covering it.

use std::collections::{BTreeSet, HashSet};

use openmls::group::{MlsGroup, QueuedProposal};
use openmls::prelude::{
    KeyPackage, LeafNodeIndex, LeafNodeParameters, MlsMessageBodyIn, MlsMessageIn,
    ProcessedMessageContent, Proposal, ProposalOrRefType, ProtocolMessage, Sender,
};
use openmls_traits::OpenMlsProvider;
use sha2::{Digest, Sha256};
use tls_codec::{DeserializeBytes, VLBytes};

use crate::client::{encode, Inner, Keys};
use crate::clock::Now;
use crate::error::{Error, Result};
use crate::key_package::{check_lifetime, ciphersuite_code, leaf_identity, parse_key_package};
use crate::meta::{self, OwnCommit};
use crate::policy::{self, key_package_supports_policy, member_identity, Policy};
use crate::provider::Provider;

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

/// The outcome of [`GroupOps::process`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub kind: Kind,
    pub sender: Vec<u8>,
    pub plaintext: Option<Vec<u8>>,
    pub epoch: u64,
    pub added: Vec<Vec<u8>>,
    pub removed: Vec<Vec<u8>>,
    pub self_removed: bool,
}

impl Outcome {
    /// The receipt kept for a delivery (see [`meta::Receipt`]).
    pub fn receipt(&self) -> meta::Receipt {
        let list = |ids: &[Vec<u8>]| ids.iter().map(|id| id.as_slice().into()).collect();
        meta::Receipt {
            kind: match self.kind {
                Kind::Application => 1,
                Kind::Proposal => 2,
                Kind::Commit => 3,
            },
            sender: self.sender.as_slice().into(),
            plaintext: self.plaintext.as_deref().map(Into::into),
            epoch: self.epoch,
            added: list(&self.added),
            removed: list(&self.removed),
            self_removed: u8::from(self.self_removed),
        }
    }

    /// The outcome a receipt recorded.
    pub fn from_receipt(receipt: meta::Receipt) -> Result<Self> {
        let list = |ids: Vec<VLBytes>| ids.into_iter().map(Vec::from).collect();
        Ok(Self {
            kind: match receipt.kind {
                1 => Kind::Application,
                2 => Kind::Proposal,
                3 => Kind::Commit,
                _ => return Err(Error::storage("a record in the MLS state is malformed")),
            },
            sender: receipt.sender.into(),
            plaintext: receipt.plaintext.map(Vec::from),
            epoch: receipt.epoch,
            added: list(receipt.added),
            removed: list(receipt.removed),
            self_removed: receipt.self_removed != 0,
        })
    }
}

/// What identifies one delivery of `message` to `group_id` under a caller's
/// `delivery_id`: the key of its receipt.
pub fn receipt_digest(group_id: &[u8], delivery_id: &[u8], message: &[u8]) -> [u8; 32] {
    let mut hash = Sha256::new();
    for part in [group_id, delivery_id] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    hash.update(message);
    hash.finalize().into()
}

/// What a commit we made produced.
pub struct CommitOutput {
    pub commit: Vec<u8>,
    pub welcome: Option<Vec<u8>>,
}

/// One group's operations, on the client's locked state.
pub struct GroupOps<'a> {
    keys: &'a Keys,
    provider: &'a Provider,
    group: &'a mut MlsGroup,
    group_id: &'a [u8],
    /// The transaction's time: KeyPackages to add must be valid at it.
    now: Now,
}

impl<'a> GroupOps<'a> {
    pub fn new(keys: &'a Keys, inner: &'a mut Inner, group_id: &'a [u8]) -> Result<Self> {
        inner.touch(group_id);
        let now = inner.now();
        let (provider, group) = inner.group_mut(group_id)?;
        Ok(Self {
            keys,
            provider,
            group,
            group_id,
            now,
        })
    }

    fn require_active(&self) -> Result<()> {
        if self.group.is_active() {
            Ok(())
        } else {
            Err(Error::not_member("this member was removed from the group"))
        }
    }

    fn require_committer(&self) -> Result<()> {
        self.require_active()?;
        if !Policy::of(self.group)?.may_commit(&self.keys.identity) {
            return Err(Error::not_committer(
                "only the group's committer can commit; send a proposal to it instead",
            ));
        }
        Ok(())
    }

    /// The leaf index of the member with `identity`.
    fn leaf_of(&self, identity: &[u8]) -> Result<LeafNodeIndex> {
        self.group
            .members()
            .find(|m| m.credential.serialized_content() == identity)
            .map(|m| m.index)
            .ok_or_else(|| Error::invalid_input("no member with this identity"))
    }

    /// Parses KeyPackages to add and checks they fit this group.
    fn key_packages_to_add<B: AsRef<[u8]>>(&self, key_packages: &[B]) -> Result<Vec<KeyPackage>> {
        let group_suite = self.group.ciphersuite();
        let policy = Policy::of(self.group)?;
        let mut parsed = Vec::with_capacity(key_packages.len());
        for (position, bytes) in key_packages.iter().enumerate() {
            let kp = parse_key_package(bytes.as_ref(), self.now)?;
            if kp.ciphersuite() != group_suite {
                return Err(Error::wrong_ciphersuite(format!(
                    "key package {position} uses ciphersuite {:#06x} but the group uses {:#06x}",
                    ciphersuite_code(kp.ciphersuite()),
                    ciphersuite_code(group_suite),
                )));
            }
            if !key_package_supports_policy(&policy, &kp) {
                return Err(Error::invalid_input(format!(
                    "key package {position} does not support the committer policy"
                )));
            }
            parsed.push(kp);
        }
        Ok(parsed)
    }

    // --- commits (committer only) -----------------------------------------

    /// Builds, checks and merges one commit covering the pending proposals
    /// plus `adds`, `removes` and an optional new policy.
    fn commit_with(
        &mut self,
        mut adds: Vec<KeyPackage>,
        removes: Vec<LeafNodeIndex>,
        new_policy: Option<Policy>,
        force_path: bool,
        allow_pending_adds: bool,
    ) -> Result<CommitOutput> {
        self.require_committer()?;
        let own = self.group.own_leaf_index();
        let members: BTreeSet<Vec<u8>> = self
            .group
            .members()
            .map(|m| m.credential.serialized_content().to_vec())
            .collect();
        let mut adding: BTreeSet<Vec<u8>> = adds
            .iter()
            .map(|kp| kp.leaf_node().credential().serialized_content().to_vec())
            .collect();
        let mut removing: BTreeSet<LeafNodeIndex> = removes.into_iter().collect();
        // Re-issue received Add and Remove proposals by value (they then
        // need to reach only us), dropping ones that became invalid.
        for queued in self.group.pending_proposals() {
            match queued.proposal() {
                Proposal::Add(add) => {
                    if !allow_pending_adds {
                        return Err(Error::state(
                            "pending add proposals need a Welcome: commit them with commit() first",
                        ));
                    }
                    let kp = add.key_package();
                    let identity = kp.leaf_node().credential().serialized_content().to_vec();
                    if !members.contains(&identity)
                        && check_lifetime(kp.life_time(), self.now).is_ok()
                        && adding.insert(identity)
                    {
                        adds.push(kp.clone());
                    }
                }
                Proposal::Remove(remove) => {
                    let removed = remove.removed();
                    if removed != own && self.group.member(removed).is_some() {
                        removing.insert(removed);
                    }
                }
                _ => {}
            }
        }
        // The builder passes our by-value proposals and the store's (by
        // reference) through this filter. From the store, only other
        // members' Updates stay, and not for a member this commit removes.
        let keep = |queued: &QueuedProposal| {
            if queued.proposal_or_ref_type() == ProposalOrRefType::Proposal {
                return true;
            }
            match (queued.proposal(), queued.sender()) {
                (Proposal::Update(_), Sender::Member(index)) => {
                    *index != own && !removing.contains(index)
                }
                _ => false,
            }
        };
        let extensions = new_policy
            .as_ref()
            .map(|policy| policy.replace_in(self.group.extensions()))
            .transpose()?;
        let mut builder = self
            .group
            .commit_builder()
            .consume_proposal_store(true)
            .force_self_update(force_path)
            .propose_adds(adds)
            .propose_removals(removing.iter().copied());
        if let Some(extensions) = extensions {
            builder = builder.propose_group_context_extensions(extensions)?;
        }
        let bundle = builder
            .load_psks(self.provider.storage())?
            .build(
                self.provider.rand(),
                self.provider.crypto(),
                &self.keys.signer,
                keep,
            )?
            .stage_commit(self.provider)?;
        let staged = self
            .group
            .pending_commit()
            .ok_or_else(|| Error::state("the commit was not staged"))?;
        // Our own commit obeys the same rule we apply to others'.
        policy::check_commit(self.group, &Sender::Member(own), staged)?;
        let identity = self.keys.identity;
        let before = meta::identities_except(self.group, &identity);
        self.group.merge_pending_commit(self.provider)?;
        let known: HashSet<&[u8]> = before.iter().map(Vec::as_slice).collect();
        let joiners: Vec<VLBytes> = meta::identities_except(self.group, &identity)
            .into_iter()
            .filter(|member| !known.contains(member.as_slice()))
            .map(Into::into)
            .collect();
        let output = CommitOutput {
            commit: encode(bundle.commit())?,
            welcome: bundle.to_welcome_msg().as_ref().map(encode).transpose()?,
        };
        meta::store(
            self.provider,
            &meta::own_commit_key(self.group_id),
            &OwnCommit {
                epoch: self.group.epoch().as_u64(),
                commit: output.commit.as_slice().into(),
                welcome: output.welcome.as_deref().map(Into::into),
                recipients: before.into_iter().map(Into::into).collect(),
                joiners,
            },
        )?;
        Ok(output)
    }

    /// Commits the pending proposals and adds the owners of `key_packages`.
    pub fn commit<B: AsRef<[u8]>>(&mut self, key_packages: &[B]) -> Result<CommitOutput> {
        self.require_committer()?;
        let adds = self.key_packages_to_add(key_packages)?;
        self.commit_with(adds, Vec::new(), None, false, true)
    }

    /// [`Self::commit`] that must add someone; returns `(commit, welcome)`.
    pub fn add_members<B: AsRef<[u8]>>(
        &mut self,
        key_packages: &[B],
    ) -> Result<(Vec<u8>, Vec<u8>)> {
        if key_packages.is_empty() {
            return Err(Error::invalid_input("no key packages given"));
        }
        let output = self.commit(key_packages)?;
        let welcome = output
            .welcome
            .ok_or_else(|| Error::state("the commit produced no welcome"))?;
        Ok((output.commit, welcome))
    }

    /// Commits removing the members with `identities`.
    pub fn remove_members<B: AsRef<[u8]>>(&mut self, identities: &[B]) -> Result<Vec<u8>> {
        self.require_committer()?;
        if identities.is_empty() {
            return Err(Error::invalid_input("no members given"));
        }
        let own = self.group.own_leaf_index();
        let mut leaves = Vec::with_capacity(identities.len());
        for identity in identities {
            let leaf = self.leaf_of(identity.as_ref())?;
            if leaf == own {
                return Err(Error::invalid_input(
                    "the committer cannot remove itself: hand_over first, then leave",
                ));
            }
            leaves.push(leaf);
        }
        Ok(self
            .commit_with(Vec::new(), leaves, None, false, false)?
            .commit)
    }

    /// Commits a fresh leaf and path for this member (post-compromise
    /// security); pending proposals are committed with it.
    pub fn self_update(&mut self) -> Result<Vec<u8>> {
        Ok(self
            .commit_with(Vec::new(), Vec::new(), None, true, false)?
            .commit)
    }

    /// Commits handing the committer role to the member with `identity`.
    pub fn hand_over(&mut self, identity: &[u8]) -> Result<Vec<u8>> {
        let current = Policy::of(self.group)?;
        if current.interop {
            return Err(Error::invalid_input(
                "an interop group has no committer role to hand over",
            ));
        }
        self.require_committer()?;
        if identity == self.keys.identity {
            return Err(Error::invalid_input("this member is already the committer"));
        }
        self.leaf_of(identity)?;
        let policy = Policy {
            committer: identity.to_vec(),
            ..current
        };
        Ok(self
            .commit_with(Vec::new(), Vec::new(), Some(policy), false, false)?
            .commit)
    }

    // --- proposals (anyone) -----------------------------------------------

    /// Proposes adding the owner of `key_package`.
    pub fn propose_add(&mut self, key_package: &[u8]) -> Result<Vec<u8>> {
        self.require_active()?;
        let kp = self
            .key_packages_to_add(&[key_package])?
            .pop()
            .ok_or_else(|| Error::state("no key package parsed"))?;
        let (message, _) = self
            .group
            .propose_add_member(self.provider, &self.keys.signer, &kp)?;
        encode(&message)
    }

    /// Proposes removing the member with `identity`.
    pub fn propose_remove(&mut self, identity: &[u8]) -> Result<Vec<u8>> {
        self.require_active()?;
        let leaf = self.leaf_of(identity)?;
        if leaf == self.group.own_leaf_index() {
            return Err(Error::invalid_input("use leave() to leave the group"));
        }
        let (message, _) =
            self.group
                .propose_remove_member(self.provider, &self.keys.signer, leaf)?;
        encode(&message)
    }

    /// Proposes a fresh leaf for this member.
    pub fn propose_update(&mut self) -> Result<Vec<u8>> {
        self.require_active()?;
        let (message, _) = self.group.propose_self_update(
            self.provider,
            &self.keys.signer,
            LeafNodeParameters::default(),
        )?;
        encode(&message)
    }

    /// Proposes removing this member; the committer commits it.
    pub fn leave(&mut self) -> Result<Vec<u8>> {
        self.require_active()?;
        let policy = Policy::of(self.group)?;
        if !policy.interop && policy.committer == self.keys.identity {
            return Err(Error::state(
                "the committer must hand_over the role to another member before leaving",
            ));
        }
        let message = self.group.leave_group(self.provider, &self.keys.signer)?;
        encode(&message)
    }

    // --- messages -----------------------------------------------------------

    /// Encrypts an application message as a PrivateMessage MLSMessage.
    pub fn encrypt(&mut self, plaintext: &[u8]) -> Result<Vec<u8>> {
        self.require_active()?;
        // OpenMLS refuses to send while proposals are pending; in our design
        // only the committer clears them, and an absent committer must not
        // stop messages (ADR 0003). Set them aside for the send.
        let pending: Vec<QueuedProposal> = self.group.pending_proposals().cloned().collect();
        let storage = self.provider.storage();
        for queued in &pending {
            self.group
                .remove_pending_proposal(storage, queued.proposal_reference_ref())?;
        }
        let message = self
            .group
            .create_message(self.provider, &self.keys.signer, plaintext)?;
        for queued in pending {
            self.group.store_pending_proposal(storage, queued)?;
        }
        encode(&message)
    }

    /// Processes one incoming MLSMessage for this group.
    pub fn process(&mut self, message: ProtocolMessage) -> Result<Outcome> {
        self.require_active()?;
        let message_epoch = message.epoch().as_u64();
        let group_epoch = self.group.epoch().as_u64();
        let processed = self
            .group
            .process_message(self.provider, message)
            .map_err(|e| epoch_error(e, message_epoch, group_epoch))?;
        let sender_identity = processed.credential().serialized_content().to_vec();
        let sender = processed.sender().clone();
        let mut outcome = Outcome {
            kind: Kind::Application,
            sender: sender_identity,
            plaintext: None,
            epoch: group_epoch,
            added: Vec::new(),
            removed: Vec::new(),
            self_removed: false,
        };
        match processed.into_content() {
            ProcessedMessageContent::ApplicationMessage(app) => {
                outcome.plaintext = Some(app.into_bytes());
            }
            ProcessedMessageContent::ProposalMessage(queued) => {
                policy::check_proposal(self.group, &queued)?;
                self.group
                    .store_pending_proposal(self.provider.storage(), *queued)?;
                outcome.kind = Kind::Proposal;
            }
            ProcessedMessageContent::StagedCommitMessage(staged) => {
                policy::check_commit(self.group, &sender, &staged)?;
                if let Some(leaf) = staged.update_path_leaf_node() {
                    leaf_identity(leaf)?;
                }
                for queued in staged.queued_proposals() {
                    match queued.proposal() {
                        Proposal::Add(add) => {
                            let identity = leaf_identity(add.key_package().leaf_node())?;
                            outcome.added.push(identity);
                        }
                        Proposal::Update(update) => {
                            leaf_identity(update.leaf_node())?;
                        }
                        Proposal::Remove(remove) => {
                            if let Some(identity) = member_identity(self.group, remove.removed()) {
                                outcome.removed.push(identity);
                            }
                        }
                        _ => {}
                    }
                }
                if matches!(sender, Sender::NewMemberCommit) {
                    outcome.added.push(outcome.sender.clone());
                }
                outcome.self_removed = staged.self_removed();
                self.group.merge_staged_commit(self.provider, *staged)?;
                self.provider.remove(&meta::own_commit_key(self.group_id));
                outcome.kind = Kind::Commit;
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
        }
        outcome.epoch = self.group.epoch().as_u64();
        Ok(outcome)
    }
}

/// Classifies a processing error, naming both epochs when the message is
/// from an epoch other than the group's.
fn epoch_error(
    err: openmls::group::ProcessMessageError<crate::provider::StorageError>,
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

/// Decodes a group message (PrivateMessage or PublicMessage).
pub(crate) fn parse_group_message(bytes: &[u8]) -> Result<ProtocolMessage> {
    match MlsMessageIn::tls_deserialize_exact_bytes(bytes)?.extract() {
        MlsMessageBodyIn::PrivateMessage(m) => Ok(m.into()),
        MlsMessageBodyIn::PublicMessage(m) => Ok(m.into()),
        _ => Err(Error::invalid_input(
            "message is not a group message (welcome, key package or group info)",
        )),
    }
}
