//! The binding's own records, kept in the same store as OpenMLS's state so
//! that one snapshot, one rollback and one file write cover both.
//!
//! Keys start with `qpc/`, which no OpenMLS storage label does, so they never
//! collide with OpenMLS entries. Values are TLS-encoded (RFC 8446 §3).

use tls_codec::{DeserializeBytes, TlsDeserializeBytes, TlsSerialize, TlsSize, VLBytes};

use crate::error::{Error, Result};
use crate::provider::Provider;

/// The 32-byte identity the store belongs to.
pub const IDENTITY: &[u8] = b"qpc/identity";
/// [`GroupList`]: every group this client holds state for.
pub const GROUPS: &[u8] = b"qpc/groups";
/// [`Pool`]: single-use KeyPackages handed out and not yet known to be used.
pub const KEY_PACKAGE_POOL: &[u8] = b"qpc/key-package-pool";

/// [`LastResort`] for one ciphersuite.
pub fn last_resort_key(ciphersuite: u16) -> Vec<u8> {
    let mut key = b"qpc/last-resort/".to_vec();
    key.extend_from_slice(&ciphersuite.to_be_bytes());
    key
}

/// [`OwnCommit`] for one group.
pub fn own_commit_key(group_id: &[u8]) -> Vec<u8> {
    let mut key = b"qpc/own-commit/".to_vec();
    key.extend_from_slice(group_id);
    key
}

/// Group ids in the order the groups were created or joined.
#[derive(Debug, Default, TlsSerialize, TlsDeserializeBytes, TlsSize)]
pub struct GroupList {
    pub ids: Vec<VLBytes>,
}

/// One single-use KeyPackage whose private keys are (or were) in the store.
#[derive(Debug, Clone, TlsSerialize, TlsDeserializeBytes, TlsSize)]
pub struct PoolEntry {
    pub hash_ref: VLBytes,
    pub ciphersuite: u16,
    pub not_after: u64,
}

#[derive(Debug, Default, TlsSerialize, TlsDeserializeBytes, TlsSize)]
pub struct Pool {
    pub entries: Vec<PoolEntry>,
}

/// The last-resort KeyPackage of one ciphersuite. The previous one's private
/// keys are kept until the next rotation, so a Welcome made from a copy
/// published before the rotation still joins.
#[derive(Debug, TlsSerialize, TlsDeserializeBytes, TlsSize)]
pub struct LastResort {
    pub key_package: VLBytes,
    pub hash_ref: VLBytes,
    pub not_after: u64,
    pub previous_hash_ref: Option<VLBytes>,
}

/// The commit (and Welcome) this member made to enter `epoch`, and whom
/// they go to, so they can be sent again after a crash between the call and
/// the send.
#[derive(Debug, TlsSerialize, TlsDeserializeBytes, TlsSize)]
pub struct OwnCommit {
    pub epoch: u64,
    pub commit: VLBytes,
    pub welcome: Option<VLBytes>,
    /// The other members of the epoch the commit ended (removed ones too).
    pub recipients: Vec<VLBytes>,
    /// The members it added: the Welcome's recipients.
    pub joiners: Vec<VLBytes>,
}

/// Every member's identity but `own`, in leaf order.
pub fn identities_except(group: &openmls::group::MlsGroup, own: &[u8]) -> Vec<Vec<u8>> {
    let mut members: Vec<_> = group
        .members()
        .map(|m| (m.index.u32(), m.credential.serialized_content().to_vec()))
        .filter(|(_, identity)| identity.as_slice() != own)
        .collect();
    members.sort_by_key(|(index, _)| *index);
    members.into_iter().map(|(_, identity)| identity).collect()
}

/// How many processed messages are remembered by delivery id ([`Receipt`]).
pub const RECEIPTS: u64 = 256;
const RECEIPT_NEXT: &[u8] = b"qpc/receipt-next";

fn receipt_key(digest: &[u8]) -> Vec<u8> {
    let mut key = b"qpc/receipt/".to_vec();
    key.extend_from_slice(digest);
    key
}

fn receipt_slot_key(slot: u64) -> Vec<u8> {
    let mut key = b"qpc/receipt-slot/".to_vec();
    key.extend_from_slice(&slot.to_be_bytes());
    key
}

/// The outcome of processing one message delivered under a caller's id, so
/// that a caller who crashed before recording it can process the same
/// delivery again and get the same answer (MLS itself refuses a message
/// twice). Kept in a ring of [`RECEIPTS`] slots.
#[derive(Debug, TlsSerialize, TlsDeserializeBytes, TlsSize)]
pub struct Receipt {
    pub kind: u8,
    pub sender: VLBytes,
    pub plaintext: Option<VLBytes>,
    pub epoch: u64,
    pub added: Vec<VLBytes>,
    pub removed: Vec<VLBytes>,
    pub self_removed: u8,
}

/// The receipt kept under `digest`, if it is still in the ring.
pub fn find_receipt(provider: &Provider, digest: &[u8]) -> Result<Option<Receipt>> {
    load(provider, &receipt_key(digest))
}

/// Keeps `receipt` under `digest`, dropping the oldest one if the ring is full.
pub fn keep_receipt(provider: &Provider, digest: &[u8], receipt: &Receipt) -> Result<()> {
    let next = match provider.get(RECEIPT_NEXT) {
        Some(bytes) => u64::from_be_bytes(
            bytes
                .as_slice()
                .try_into()
                .map_err(|_| Error::storage("a record in the MLS state is malformed"))?,
        ),
        None => 0,
    };
    let slot = receipt_slot_key(next % RECEIPTS);
    if let Some(oldest) = provider.get(&slot) {
        provider.remove(&receipt_key(&oldest));
    }
    provider.put(slot, digest.to_vec());
    store(provider, &receipt_key(digest), receipt)?;
    provider.put(RECEIPT_NEXT.to_vec(), (next + 1).to_be_bytes().to_vec());
    Ok(())
}

/// Reads and decodes one record.
pub fn load<T: DeserializeBytes>(provider: &Provider, key: &[u8]) -> Result<Option<T>> {
    provider
        .get(key)
        .map(|bytes| {
            T::tls_deserialize_exact_bytes(&bytes)
                .map_err(|_| Error::storage("a record in the MLS state is malformed"))
        })
        .transpose()
}

/// Encodes and writes one record.
pub fn store<T: tls_codec::Serialize>(provider: &Provider, key: &[u8], value: &T) -> Result<()> {
    let bytes = value
        .tls_serialize_detached()
        .map_err(|_| Error::storage("cannot encode a record of the MLS state"))?;
    provider.put(key.to_vec(), bytes);
    Ok(())
}

/// The group list (empty if none was stored yet).
pub fn groups(provider: &Provider) -> Result<Vec<Vec<u8>>> {
    Ok(load::<GroupList>(provider, GROUPS)?
        .unwrap_or_default()
        .ids
        .into_iter()
        .map(Vec::from)
        .collect())
}

/// Adds `group_id` to the group list if it is not there yet.
pub fn add_group(provider: &Provider, group_id: &[u8]) -> Result<()> {
    let mut list = load::<GroupList>(provider, GROUPS)?.unwrap_or_default();
    if !list.ids.iter().any(|id| id.as_slice() == group_id) {
        list.ids.push(group_id.into());
        store(provider, GROUPS, &list)?;
    }
    Ok(())
}

/// Removes `group_id` from the group list.
pub fn remove_group(provider: &Provider, group_id: &[u8]) -> Result<()> {
    let mut list = load::<GroupList>(provider, GROUPS)?.unwrap_or_default();
    list.ids.retain(|id| id.as_slice() != group_id);
    store(provider, GROUPS, &list)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_garbage_is_a_storage_error() {
        let provider = Provider::new(None).unwrap();
        add_group(&provider, b"g1").unwrap();
        add_group(&provider, b"g2").unwrap();
        add_group(&provider, b"g1").unwrap();
        assert_eq!(
            groups(&provider).unwrap(),
            vec![b"g1".to_vec(), b"g2".to_vec()]
        );
        remove_group(&provider, b"g1").unwrap();
        assert_eq!(groups(&provider).unwrap(), vec![b"g2".to_vec()]);

        provider.put(GROUPS.to_vec(), vec![0xff, 0xff]);
        assert_eq!(
            groups(&provider).unwrap_err().python_class(),
            "StorageError"
        );
    }
}
