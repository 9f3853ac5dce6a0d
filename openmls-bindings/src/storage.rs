//! The store OpenMLS keeps a client's state in: a map from storage keys to
//! serialized values, with an undo journal.
//!
//! Every binding call is a transaction ([`crate::client::ClientState`]).
//! While one runs, the first change to each key records the value it had, so
//! that a failed call is undone by putting back just those values, and a
//! successful one is persisted by writing just the changed keys
//! ([`Store::changes`]). Cost therefore follows what a call changes, not the
//! size of the store: encrypting a message in a 1,000-member group touches
//! one entry (its message secrets), not the tree and every KeyPackage.
//!
//! Layout: key = label ‖ JSON(key fields) ‖ storage version (u16 BE) (keys
//! are small; JSON keeps them readable in a debugger); value = MessagePack of
//! the OpenMLS entity; list values are a MessagePack list of the items'
//! MessagePack bytes. MessagePack, not JSON, for values: OpenMLS's entities
//! are mostly byte strings, which serde writes as lists of numbers — about
//! 1.5 bytes per byte in MessagePack against 3.6 in JSON, and faster to write
//! and read. It is self-describing, which one OpenMLS type's deserializer
//! (an untagged enum in the join config) needs.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::fmt;
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use openmls_traits::storage::{traits, StorageProvider, CURRENT_VERSION};
use serde::de::DeserializeOwned;
use serde::Serialize;
use zeroize::Zeroize;

/// Every stored entry: storage key -> serialized value.
pub type Entries = HashMap<Vec<u8>, Vec<u8>>;

/// One changed entry: its key and new value (`None`: deleted).
pub type Change<'a> = (&'a [u8], Option<&'a [u8]>);

/// Each key changed by the running transaction -> its value before.
type Undo = HashMap<Vec<u8>, Option<Vec<u8>>>;

/// Why the store failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreError {
    /// A value could not be encoded, or a stored one does not decode.
    Serialization,
    /// An entry that another entry refers to is missing.
    Inconsistent,
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Serialization => "a stored MLS value does not encode or decode",
            Self::Inconsistent => "the MLS store refers to an entry it does not hold",
        })
    }
}

impl std::error::Error for StoreError {}

impl From<serde_json::Error> for StoreError {
    fn from(_: serde_json::Error) -> Self {
        Self::Serialization
    }
}

fn encode<V: Serialize + ?Sized>(value: &V) -> Result<Vec<u8>> {
    rmp_serde::to_vec(value).map_err(|_| StoreError::Serialization)
}

fn decode<V: DeserializeOwned>(bytes: &[u8]) -> Result<V> {
    rmp_serde::from_slice(bytes).map_err(|_| StoreError::Serialization)
}

type Result<T> = std::result::Result<T, StoreError>;

struct State {
    values: Entries,
    /// `Some` while a transaction runs.
    undo: Option<Undo>,
}

/// A client's store.
pub struct Store {
    state: RwLock<State>,
}

impl Store {
    /// A store holding `entries` (empty for a new client).
    pub fn new(values: Entries) -> Self {
        Self {
            state: RwLock::new(State { values, undo: None }),
        }
    }

    // A panic inside OpenMLS while it holds the lock poisons it; the call is
    // then rolled back from the journal, so the data stays usable.
    fn read_state(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_state(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    // --- transactions -------------------------------------------------------

    /// Starts recording changes. A transaction left open (only possible
    /// after a failed rollback, which makes the client refuse all calls) is
    /// abandoned.
    pub fn begin(&self) {
        let mut state = self.write_state();
        if let Some(mut undo) = state.undo.replace(Undo::new()) {
            zeroize_undo(&mut undo);
        }
    }

    /// The keys the running transaction changed, with their new values
    /// (`None`: deleted), in key order.
    pub fn changes<T>(&self, f: impl FnOnce(&[Change<'_>]) -> T) -> T {
        let state = self.read_state();
        let mut changed: Vec<Change<'_>> = state
            .undo
            .iter()
            .flat_map(Undo::keys)
            .map(|key| (key.as_slice(), state.values.get(key).map(Vec::as_slice)))
            .collect();
        changed.sort_unstable_by(|a, b| a.0.cmp(b.0));
        f(&changed)
    }

    /// Ends the running transaction, keeping its changes.
    pub fn commit(&self) {
        if let Some(mut undo) = self.write_state().undo.take() {
            zeroize_undo(&mut undo);
        }
    }

    /// Ends the running transaction, putting back every value it changed.
    pub fn rollback(&self) {
        let mut state = self.write_state();
        let Some(undo) = state.undo.take() else {
            return;
        };
        for (key, before) in undo {
            let replaced = match before {
                Some(value) => state.values.insert(key, value),
                None => state.values.remove(&key),
            };
            if let Some(mut value) = replaced {
                value.zeroize();
            }
        }
    }

    // --- raw entries ----------------------------------------------------------

    /// Reads one entry (for keys outside OpenMLS's, see [`crate::meta`]).
    pub fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.read_state().values.get(key).cloned()
    }

    /// Writes (`Some`) or deletes (`None`) one entry, recording the old
    /// value if a transaction runs and wiping it otherwise.
    pub fn set(&self, key: Vec<u8>, value: Option<Vec<u8>>) {
        let mut guard = self.write_state();
        let state = &mut *guard;
        let old = match value {
            Some(value) => state.values.insert(key.clone(), value),
            None => state.values.remove(&key),
        };
        match &mut state.undo {
            Some(undo) => match undo.entry(key) {
                Entry::Vacant(first_change) => {
                    first_change.insert(old);
                }
                Entry::Occupied(_) => wipe(old),
            },
            None => wipe(old),
        }
    }

    /// Runs `f` on every entry (read-only), e.g. to write them all out.
    pub fn with_entries<T>(&self, f: impl FnOnce(&Entries) -> T) -> T {
        f(&self.read_state().values)
    }

    // --- typed access for the StorageProvider methods -------------------------

    fn write<V: Serialize + ?Sized>(&self, label: &[u8], key: &[u8], value: &V) -> Result<()> {
        self.set(storage_key(label, key), Some(encode(value)?));
        Ok(())
    }

    fn read<V: DeserializeOwned>(&self, label: &[u8], key: &[u8]) -> Result<Option<V>> {
        let state = self.read_state();
        match state.values.get(&storage_key(label, key)) {
            Some(bytes) => Ok(Some(decode(bytes)?)),
            None => Ok(None),
        }
    }

    fn delete(&self, label: &[u8], key: &[u8]) -> Result<()> {
        self.set(storage_key(label, key), None);
        Ok(())
    }

    /// The items of a list value, still serialized.
    fn raw_list(&self, label: &[u8], key: &[u8]) -> Result<Vec<Vec<u8>>> {
        match self.read_state().values.get(&storage_key(label, key)) {
            Some(bytes) => decode(bytes),
            None => Ok(Vec::new()),
        }
    }

    fn read_list<V: DeserializeOwned>(&self, label: &[u8], key: &[u8]) -> Result<Vec<V>> {
        self.raw_list(label, key)?
            .iter()
            .map(|item| decode(item))
            .collect()
    }

    fn edit_list(
        &self,
        label: &[u8],
        key: &[u8],
        edit: impl FnOnce(&mut Vec<Vec<u8>>),
    ) -> Result<()> {
        let mut list = self.raw_list(label, key)?;
        edit(&mut list);
        self.write(label, key, &list)
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        if let Some(mut undo) = state.undo.take() {
            zeroize_undo(&mut undo);
        }
        for value in state.values.values_mut() {
            value.zeroize();
        }
    }
}

/// Values hold private keys: overwrite them before they are freed.
fn wipe(value: Option<Vec<u8>>) {
    if let Some(mut value) = value {
        value.zeroize();
    }
}

fn zeroize_undo(undo: &mut Undo) {
    for value in undo.values_mut().flatten() {
        value.zeroize();
    }
    undo.clear();
}

fn storage_key(label: &[u8], key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(label.len() + key.len() + 2);
    out.extend_from_slice(label);
    out.extend_from_slice(key);
    out.extend_from_slice(&CURRENT_VERSION.to_be_bytes());
    out
}

fn json<K: Serialize + ?Sized>(key: &K) -> Result<Vec<u8>> {
    Ok(serde_json::to_vec(key)?)
}

fn epoch_key_pairs_key(
    group_id: &impl traits::GroupId<CURRENT_VERSION>,
    epoch: &impl traits::EpochKey<CURRENT_VERSION>,
    leaf_index: u32,
) -> Result<Vec<u8>> {
    let mut key = json(group_id)?;
    key.extend_from_slice(&json(epoch)?);
    key.extend_from_slice(&json(&leaf_index)?);
    Ok(key)
}

const KEY_PACKAGE: &[u8] = b"KeyPackage";
const PSK: &[u8] = b"Psk";
const ENCRYPTION_KEY_PAIR: &[u8] = b"EncryptionKeyPair";
const SIGNATURE_KEY_PAIR: &[u8] = b"SignatureKeyPair";
const EPOCH_KEY_PAIRS: &[u8] = b"EpochKeyPairs";
const TREE: &[u8] = b"Tree";
const GROUP_CONTEXT: &[u8] = b"GroupContext";
const INTERIM_TRANSCRIPT_HASH: &[u8] = b"InterimTranscriptHash";
const CONFIRMATION_TAG: &[u8] = b"ConfirmationTag";
const JOIN_CONFIG: &[u8] = b"MlsGroupJoinConfig";
const OWN_LEAF_NODES: &[u8] = b"OwnLeafNodes";
const GROUP_STATE: &[u8] = b"GroupState";
const QUEUED_PROPOSAL: &[u8] = b"QueuedProposal";
const PROPOSAL_QUEUE_REFS: &[u8] = b"ProposalQueueRefs";
const OWN_LEAF_NODE_INDEX: &[u8] = b"OwnLeafNodeIndex";
const EPOCH_SECRETS: &[u8] = b"EpochSecrets";
const RESUMPTION_PSK_STORE: &[u8] = b"ResumptionPsk";
const MESSAGE_SECRETS: &[u8] = b"MessageSecrets";

/// write/read/delete of one value per group, stored under `$label`.
macro_rules! per_group_value {
    ($label:expr, $entity:ident, $write:ident, $read:ident, $delete:ident) => {
        fn $write<G: traits::GroupId<CURRENT_VERSION>, V: traits::$entity<CURRENT_VERSION>>(
            &self,
            group_id: &G,
            value: &V,
        ) -> Result<()> {
            self.write($label, &json(group_id)?, value)
        }

        fn $read<G: traits::GroupId<CURRENT_VERSION>, V: traits::$entity<CURRENT_VERSION>>(
            &self,
            group_id: &G,
        ) -> Result<Option<V>> {
            self.read($label, &json(group_id)?)
        }

        fn $delete<G: traits::GroupId<CURRENT_VERSION>>(&self, group_id: &G) -> Result<()> {
            self.delete($label, &json(group_id)?)
        }
    };
}

impl StorageProvider<CURRENT_VERSION> for Store {
    type Error = StoreError;

    per_group_value!(
        JOIN_CONFIG,
        MlsGroupJoinConfig,
        write_mls_join_config,
        mls_group_join_config,
        delete_group_config
    );
    per_group_value!(TREE, TreeSync, write_tree, tree, delete_tree);
    per_group_value!(
        INTERIM_TRANSCRIPT_HASH,
        InterimTranscriptHash,
        write_interim_transcript_hash,
        interim_transcript_hash,
        delete_interim_transcript_hash
    );
    per_group_value!(
        GROUP_CONTEXT,
        GroupContext,
        write_context,
        group_context,
        delete_context
    );
    per_group_value!(
        CONFIRMATION_TAG,
        ConfirmationTag,
        write_confirmation_tag,
        confirmation_tag,
        delete_confirmation_tag
    );
    per_group_value!(
        MESSAGE_SECRETS,
        MessageSecrets,
        write_message_secrets,
        message_secrets,
        delete_message_secrets
    );
    per_group_value!(
        RESUMPTION_PSK_STORE,
        ResumptionPskStore,
        write_resumption_psk_store,
        resumption_psk_store,
        delete_all_resumption_psk_secrets
    );
    per_group_value!(
        OWN_LEAF_NODE_INDEX,
        LeafNodeIndex,
        write_own_leaf_index,
        own_leaf_index,
        delete_own_leaf_index
    );
    per_group_value!(
        EPOCH_SECRETS,
        GroupEpochSecrets,
        write_group_epoch_secrets,
        group_epoch_secrets,
        delete_group_epoch_secrets
    );

    // The group state's methods name the entity before the group id.
    fn write_group_state<
        V: traits::GroupState<CURRENT_VERSION>,
        G: traits::GroupId<CURRENT_VERSION>,
    >(
        &self,
        group_id: &G,
        group_state: &V,
    ) -> Result<()> {
        self.write(GROUP_STATE, &json(group_id)?, group_state)
    }

    fn group_state<V: traits::GroupState<CURRENT_VERSION>, G: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &G,
    ) -> Result<Option<V>> {
        self.read(GROUP_STATE, &json(group_id)?)
    }

    fn delete_group_state<G: traits::GroupId<CURRENT_VERSION>>(&self, group_id: &G) -> Result<()> {
        self.delete(GROUP_STATE, &json(group_id)?)
    }

    // --- own leaf nodes (a list per group) --------------------------------------

    fn append_own_leaf_node<
        G: traits::GroupId<CURRENT_VERSION>,
        L: traits::LeafNode<CURRENT_VERSION>,
    >(
        &self,
        group_id: &G,
        leaf_node: &L,
    ) -> Result<()> {
        let item = encode(leaf_node)?;
        self.edit_list(OWN_LEAF_NODES, &json(group_id)?, |list| list.push(item))
    }

    fn own_leaf_nodes<G: traits::GroupId<CURRENT_VERSION>, L: traits::LeafNode<CURRENT_VERSION>>(
        &self,
        group_id: &G,
    ) -> Result<Vec<L>> {
        self.read_list(OWN_LEAF_NODES, &json(group_id)?)
    }

    fn delete_own_leaf_nodes<G: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &G,
    ) -> Result<()> {
        self.delete(OWN_LEAF_NODES, &json(group_id)?)
    }

    // --- the proposal queue: one entry per proposal plus a list of refs ---------

    fn queue_proposal<
        G: traits::GroupId<CURRENT_VERSION>,
        R: traits::ProposalRef<CURRENT_VERSION>,
        P: traits::QueuedProposal<CURRENT_VERSION>,
    >(
        &self,
        group_id: &G,
        proposal_ref: &R,
        proposal: &P,
    ) -> Result<()> {
        self.write(QUEUED_PROPOSAL, &json(&(group_id, proposal_ref))?, proposal)?;
        let item = encode(proposal_ref)?;
        self.edit_list(PROPOSAL_QUEUE_REFS, &json(group_id)?, |list| {
            list.push(item)
        })
    }

    fn queued_proposal_refs<
        G: traits::GroupId<CURRENT_VERSION>,
        R: traits::ProposalRef<CURRENT_VERSION>,
    >(
        &self,
        group_id: &G,
    ) -> Result<Vec<R>> {
        self.read_list(PROPOSAL_QUEUE_REFS, &json(group_id)?)
    }

    fn queued_proposals<
        G: traits::GroupId<CURRENT_VERSION>,
        R: traits::ProposalRef<CURRENT_VERSION>,
        P: traits::QueuedProposal<CURRENT_VERSION>,
    >(
        &self,
        group_id: &G,
    ) -> Result<Vec<(R, P)>> {
        let refs: Vec<R> = self.read_list(PROPOSAL_QUEUE_REFS, &json(group_id)?)?;
        refs.into_iter()
            .map(|proposal_ref| {
                let proposal = self
                    .read(QUEUED_PROPOSAL, &json(&(group_id, &proposal_ref))?)?
                    .ok_or(StoreError::Inconsistent)?;
                Ok((proposal_ref, proposal))
            })
            .collect()
    }

    fn remove_proposal<
        G: traits::GroupId<CURRENT_VERSION>,
        R: traits::ProposalRef<CURRENT_VERSION>,
    >(
        &self,
        group_id: &G,
        proposal_ref: &R,
    ) -> Result<()> {
        let item = encode(proposal_ref)?;
        self.edit_list(PROPOSAL_QUEUE_REFS, &json(group_id)?, |list| {
            if let Some(position) = list.iter().position(|stored| *stored == item) {
                list.remove(position);
            }
        })?;
        self.delete(QUEUED_PROPOSAL, &json(&(group_id, proposal_ref))?)
    }

    fn clear_proposal_queue<
        G: traits::GroupId<CURRENT_VERSION>,
        R: traits::ProposalRef<CURRENT_VERSION>,
    >(
        &self,
        group_id: &G,
    ) -> Result<()> {
        let refs: Vec<R> = self.read_list(PROPOSAL_QUEUE_REFS, &json(group_id)?)?;
        for proposal_ref in refs {
            self.delete(QUEUED_PROPOSAL, &json(&(group_id, proposal_ref))?)?;
        }
        self.delete(PROPOSAL_QUEUE_REFS, &json(group_id)?)
    }

    // --- keys -------------------------------------------------------------------

    fn write_signature_key_pair<
        K: traits::SignaturePublicKey<CURRENT_VERSION>,
        V: traits::SignatureKeyPair<CURRENT_VERSION>,
    >(
        &self,
        public_key: &K,
        signature_key_pair: &V,
    ) -> Result<()> {
        self.write(SIGNATURE_KEY_PAIR, &json(public_key)?, signature_key_pair)
    }

    fn signature_key_pair<
        K: traits::SignaturePublicKey<CURRENT_VERSION>,
        V: traits::SignatureKeyPair<CURRENT_VERSION>,
    >(
        &self,
        public_key: &K,
    ) -> Result<Option<V>> {
        self.read(SIGNATURE_KEY_PAIR, &json(public_key)?)
    }

    fn delete_signature_key_pair<K: traits::SignaturePublicKey<CURRENT_VERSION>>(
        &self,
        public_key: &K,
    ) -> Result<()> {
        self.delete(SIGNATURE_KEY_PAIR, &json(public_key)?)
    }

    fn write_encryption_key_pair<
        K: traits::EncryptionKey<CURRENT_VERSION>,
        V: traits::HpkeKeyPair<CURRENT_VERSION>,
    >(
        &self,
        public_key: &K,
        key_pair: &V,
    ) -> Result<()> {
        self.write(ENCRYPTION_KEY_PAIR, &json(public_key)?, key_pair)
    }

    fn encryption_key_pair<
        V: traits::HpkeKeyPair<CURRENT_VERSION>,
        K: traits::EncryptionKey<CURRENT_VERSION>,
    >(
        &self,
        public_key: &K,
    ) -> Result<Option<V>> {
        self.read(ENCRYPTION_KEY_PAIR, &json(public_key)?)
    }

    fn delete_encryption_key_pair<K: traits::EncryptionKey<CURRENT_VERSION>>(
        &self,
        public_key: &K,
    ) -> Result<()> {
        self.delete(ENCRYPTION_KEY_PAIR, &json(public_key)?)
    }

    fn write_encryption_epoch_key_pairs<
        G: traits::GroupId<CURRENT_VERSION>,
        E: traits::EpochKey<CURRENT_VERSION>,
        V: traits::HpkeKeyPair<CURRENT_VERSION>,
    >(
        &self,
        group_id: &G,
        epoch: &E,
        leaf_index: u32,
        key_pairs: &[V],
    ) -> Result<()> {
        let key = epoch_key_pairs_key(group_id, epoch, leaf_index)?;
        self.write(EPOCH_KEY_PAIRS, &key, key_pairs)
    }

    fn encryption_epoch_key_pairs<
        G: traits::GroupId<CURRENT_VERSION>,
        E: traits::EpochKey<CURRENT_VERSION>,
        V: traits::HpkeKeyPair<CURRENT_VERSION>,
    >(
        &self,
        group_id: &G,
        epoch: &E,
        leaf_index: u32,
    ) -> Result<Vec<V>> {
        let key = epoch_key_pairs_key(group_id, epoch, leaf_index)?;
        let stored: Option<Vec<V>> = self.read(EPOCH_KEY_PAIRS, &key)?;
        Ok(stored.unwrap_or_default())
    }

    fn delete_encryption_epoch_key_pairs<
        G: traits::GroupId<CURRENT_VERSION>,
        E: traits::EpochKey<CURRENT_VERSION>,
    >(
        &self,
        group_id: &G,
        epoch: &E,
        leaf_index: u32,
    ) -> Result<()> {
        self.delete(
            EPOCH_KEY_PAIRS,
            &epoch_key_pairs_key(group_id, epoch, leaf_index)?,
        )
    }

    fn write_key_package<
        R: traits::HashReference<CURRENT_VERSION>,
        V: traits::KeyPackage<CURRENT_VERSION>,
    >(
        &self,
        hash_ref: &R,
        key_package: &V,
    ) -> Result<()> {
        self.write(KEY_PACKAGE, &json(hash_ref)?, key_package)
    }

    fn key_package<
        R: traits::HashReference<CURRENT_VERSION>,
        V: traits::KeyPackage<CURRENT_VERSION>,
    >(
        &self,
        hash_ref: &R,
    ) -> Result<Option<V>> {
        self.read(KEY_PACKAGE, &json(hash_ref)?)
    }

    fn delete_key_package<R: traits::HashReference<CURRENT_VERSION>>(
        &self,
        hash_ref: &R,
    ) -> Result<()> {
        self.delete(KEY_PACKAGE, &json(hash_ref)?)
    }

    fn write_psk<I: traits::PskId<CURRENT_VERSION>, V: traits::PskBundle<CURRENT_VERSION>>(
        &self,
        psk_id: &I,
        psk: &V,
    ) -> Result<()> {
        self.write(PSK, &json(psk_id)?, psk)
    }

    fn psk<V: traits::PskBundle<CURRENT_VERSION>, I: traits::PskId<CURRENT_VERSION>>(
        &self,
        psk_id: &I,
    ) -> Result<Option<V>> {
        self.read(PSK, &json(psk_id)?)
    }

    fn delete_psk<I: traits::PskId<CURRENT_VERSION>>(&self, psk_id: &I) -> Result<()> {
        self.delete(PSK, &json(psk_id)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(store: &Store) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut all: Vec<_> = store.with_entries(|e| e.clone().into_iter().collect());
        all.sort();
        all
    }

    fn store_with(pairs: &[(&[u8], &[u8])]) -> Store {
        Store::new(
            pairs
                .iter()
                .map(|(k, v)| (k.to_vec(), v.to_vec()))
                .collect(),
        )
    }

    #[test]
    fn rollback_restores_exactly_what_was_there() {
        let store = store_with(&[(b"a", b"1"), (b"b", b"2")]);
        let before = entries(&store);
        store.begin();
        store.set(b"a".to_vec(), Some(b"changed".to_vec()));
        store.set(b"a".to_vec(), Some(b"changed twice".to_vec()));
        store.set(b"b".to_vec(), None);
        store.set(b"c".to_vec(), Some(b"new".to_vec()));
        store.rollback();
        assert_eq!(entries(&store), before);
    }

    #[test]
    fn changes_lists_each_changed_key_once_with_its_new_value() {
        let store = store_with(&[(b"a", b"1"), (b"b", b"2"), (b"untouched", b"x")]);
        store.begin();
        store.set(b"b".to_vec(), None);
        store.set(b"a".to_vec(), Some(b"3".to_vec()));
        store.set(b"a".to_vec(), Some(b"4".to_vec()));
        store.set(b"c".to_vec(), Some(b"5".to_vec()));
        let changes = store.changes(|changes| {
            changes
                .iter()
                .map(|(k, v)| (k.to_vec(), v.map(<[u8]>::to_vec)))
                .collect::<Vec<_>>()
        });
        assert_eq!(
            changes,
            vec![
                (b"a".to_vec(), Some(b"4".to_vec())),
                (b"b".to_vec(), None),
                (b"c".to_vec(), Some(b"5".to_vec())),
            ]
        );
        store.commit();
        assert_eq!(store.changes(|changes| changes.len()), 0);
        assert_eq!(store.get(b"a"), Some(b"4".to_vec()));
        // Nothing to undo once committed.
        store.rollback();
        assert_eq!(store.get(b"a"), Some(b"4".to_vec()));
    }

    #[test]
    fn undecodable_values_are_errors_not_panics() {
        let store = Store::new(Entries::new());
        store.set(storage_key(TREE, b"\"g\""), Some(vec![0xc1]));
        let read: Result<Option<Vec<u8>>> = store.read(TREE, b"\"g\"");
        assert_eq!(read.unwrap_err(), StoreError::Serialization);
    }
}
