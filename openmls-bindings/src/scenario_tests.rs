//! Scenario tests of the binding's Rust core: groups, the committer policy
//! against misbehaving clients, and KeyPackage lifetimes.

use openmls::group::{GroupContext, MlsGroup};
use openmls::prelude::{
    Extensions, LeafNodeParameters, Lifetime, MlsMessageBodyIn, MlsMessageIn, MlsMessageOut,
};
use openmls_traits::OpenMlsProvider;
use tls_codec::DeserializeBytes;

use crate::client::{encode, ClientState, Keys};
use crate::clock::testing::{at_system_now, system_now};
use crate::error::Result;
use crate::group_ops::{parse_group_message, GroupOps, Kind, Outcome};
use crate::key_package::{build_key_package, SUPPORTED_CIPHERSUITES};
use crate::policy::{self, Policy};
use crate::provider::Provider;

const GID: &[u8] = b"room";

fn client(seed: u8) -> ClientState {
    ClientState::in_memory(&[seed; 32], at_system_now(), None).unwrap()
}

fn ops<T>(c: &ClientState, f: impl FnOnce(&mut GroupOps<'_>) -> Result<T>) -> Result<T> {
    c.transact(|keys, inner| f(&mut GroupOps::new(keys, inner, GID)?))
}

fn epoch(c: &ClientState) -> u64 {
    c.read(|_, inner| Ok(inner.group(GID)?.1.epoch().as_u64()))
        .unwrap()
}

/// alice (committer) and bob in one group at epoch 1.
fn pair(external_joins: bool) -> (ClientState, ClientState) {
    let (alice, bob) = (client(1), client(2));
    alice.create_group(GID, 1, external_joins, false).unwrap();
    let kp = bob.key_packages(1, 1).unwrap();
    let (_commit, welcome) = ops(&alice, |g| g.add_members(&kp)).unwrap();
    bob.join(&welcome, false).unwrap();
    (alice, bob)
}

/// Runs `f` on `c`'s raw OpenMLS group, bypassing the binding's checks
/// (how a misbehaving client would act).
fn raw<T>(
    c: &ClientState,
    f: impl FnOnce(&Keys, &Provider, &mut MlsGroup) -> Result<T>,
) -> Result<T> {
    c.transact(|keys, inner| {
        let (provider, group) = inner.group_mut(GID)?;
        f(keys, provider, group)
    })
}

fn raw_commit(
    keys: &Keys,
    provider: &Provider,
    group: &mut MlsGroup,
    extensions: Option<Extensions<GroupContext>>,
) -> Result<Vec<u8>> {
    let mut builder = group.commit_builder().force_self_update(true);
    if let Some(extensions) = extensions {
        builder = builder.propose_group_context_extensions(extensions)?;
    }
    let bundle = builder
        .load_psks(provider.storage())?
        .build(provider.rand(), provider.crypto(), &keys.signer, |_| true)?
        .stage_commit(provider)?;
    encode(bundle.commit())
}

fn process(c: &ClientState, message: &[u8]) -> Result<Outcome> {
    let parsed = parse_group_message(message)?;
    ops(c, |g| g.process(parsed))
}

#[test]
fn two_member_round_trip() {
    let (alice, bob) = pair(false);
    assert_eq!(epoch(&alice), 1);
    assert_eq!(epoch(&bob), 1);
    let ct = ops(&alice, |g| g.encrypt(b"hi bob")).unwrap();
    let got = process(&bob, &ct).unwrap();
    assert_eq!(got.kind, Kind::Application);
    assert_eq!(got.plaintext.as_deref(), Some(&b"hi bob"[..]));
    assert_eq!(got.sender, alice.keys.identity.to_vec());
    // Replaying the same ciphertext is refused, not decrypted twice.
    let err = process(&bob, &ct).unwrap_err();
    assert_eq!(err.python_class(), "InvalidMessageError");
}

#[test]
fn a_commit_from_a_member_who_is_not_the_committer_is_refused() {
    let (alice, bob) = pair(false);
    let rogue = raw(&bob, |k, p, g| raw_commit(k, p, g, None)).unwrap();
    let err = process(&alice, &rogue).unwrap_err();
    assert_eq!(err.python_class(), "NotCommitterError");
    assert_eq!(epoch(&alice), 1);
    // Alice's state is untouched: she still commits and bob's own
    // pending commit does not matter to her.
    ops(&alice, |g| g.self_update()).unwrap();
    assert_eq!(epoch(&alice), 2);
}

#[test]
fn a_hand_over_to_a_non_member_is_refused() {
    let (alice, bob) = pair(false);
    let stranger = client(9);
    let rogue = raw(&alice, |k, p, g| {
        let policy = Policy {
            committer: stranger.keys.identity.to_vec(),
            external_joins: false,
            interop: false,
        };
        let extensions = policy.replace_in(g.extensions())?;
        raw_commit(k, p, g, Some(extensions))
    })
    .unwrap();
    let err = process(&bob, &rogue).unwrap_err();
    assert_eq!(err.python_class(), "InvalidMessageError");
    assert!(err.message().contains("not a member"), "{err}");
    assert_eq!(epoch(&bob), 1);
}

#[test]
fn a_commit_that_drops_the_policy_is_refused() {
    let (alice, bob) = pair(false);
    let rogue = raw(&alice, |k, p, g| {
        let mut extensions = g.extensions().clone();
        extensions.remove(openmls::prelude::ExtensionType::Unknown(
            policy::POLICY_EXTENSION_TYPE,
        ));
        raw_commit(k, p, g, Some(extensions))
    });
    // OpenMLS itself may already refuse to build it; if not, bob refuses it.
    if let Ok(rogue) = rogue {
        let err = process(&bob, &rogue).unwrap_err();
        assert_eq!(err.python_class(), "InvalidMessageError");
    }
    assert_eq!(epoch(&bob), 1);
}

#[test]
fn an_external_commit_is_refused_unless_the_group_allows_it() {
    for allowed in [false, true] {
        let (alice, bob) = pair(allowed);
        let info = alice
            .read(|keys, inner| {
                let (provider, group) = inner.group(GID)?;
                encode(&group.export_group_info(provider.crypto(), &keys.signer, true)?)
            })
            .unwrap();
        // An outsider that skips the joiner-side check.
        let outsider = client(7);
        let commit = outsider
            .transact(|keys, inner| {
                let info = match MlsMessageIn::tls_deserialize_exact_bytes(&info)?.extract() {
                    MlsMessageBodyIn::GroupInfo(info) => info,
                    _ => unreachable!(),
                };
                let provider = &inner.provider;
                let (_group, bundle) = MlsGroup::external_commit_builder()
                    .build_group(provider, info, keys.credential.clone())?
                    .leaf_node_parameters(
                        LeafNodeParameters::builder()
                            .with_capabilities(policy::capabilities())
                            .build(),
                    )
                    .load_psks(provider.storage())?
                    .build(provider.rand(), provider.crypto(), &keys.signer, |_| true)?
                    .finalize(provider)?;
                encode(bundle.commit())
            })
            .unwrap();
        let got = process(&bob, &commit);
        if allowed {
            assert_eq!(got.unwrap().added, vec![outsider.keys.identity.to_vec()]);
            assert_eq!(epoch(&bob), 2);
        } else {
            // Refused by the wire-format policy or by the committer policy.
            let class = got.unwrap_err().python_class();
            assert!(
                ["NotCommitterError", "InvalidMessageError"].contains(&class),
                "{class}"
            );
            assert_eq!(epoch(&bob), 1);
        }
    }
}

#[test]
fn an_expired_key_package_is_invalid_message() {
    let (alice, _bob) = pair(false);
    let dave = client(4);
    let now = system_now().secs();
    let expired = dave
        .transact(|keys, inner| {
            let bundle = build_key_package(
                &inner.provider,
                &keys.signer,
                &keys.credential,
                SUPPORTED_CIPHERSUITES[0],
                false,
                Lifetime::init(now - 7200, now - 60),
            )?;
            encode(&MlsMessageOut::from(bundle))
        })
        .unwrap();
    let err = ops(&alice, |g| g.add_members(&[&expired])).unwrap_err();
    assert_eq!(err.python_class(), "InvalidMessageError");
    assert_eq!(epoch(&alice), 1);
}

#[test]
fn an_interop_group_has_no_committer_and_never_gains_one() {
    let (alice, bob) = (client(1), client(2));
    alice.create_group(GID, 1, false, true).unwrap();
    let kp = bob.key_packages(1, 1).unwrap();
    let (_commit, welcome) = ops(&alice, |g| g.add_members(&kp)).unwrap();
    // Our clients join a group without the record only when they ask to.
    let err = bob.join(&welcome, false).unwrap_err();
    assert_eq!(err.python_class(), "InvalidMessageError");
    bob.join(&welcome, true).unwrap();
    // Any member may commit.
    let commit = ops(&bob, |g| g.self_update()).unwrap();
    process(&alice, &commit).unwrap();
    assert_eq!((epoch(&alice), epoch(&bob)), (2, 2));
    // A commit that adds a committer record is refused.
    let rogue = raw(&alice, |k, p, g| {
        let policy = Policy {
            committer: k.identity.to_vec(),
            external_joins: false,
            interop: false,
        };
        // The record and a RequiredCapabilities listing it, as in a normal group.
        raw_commit(k, p, g, Some(policy.new_group_extensions()?))
    })
    .unwrap();
    let err = process(&bob, &rogue).unwrap_err();
    assert_eq!(err.python_class(), "InvalidMessageError");
    assert!(err.message().contains("committer record"), "{err}");
    assert_eq!(epoch(&bob), 2);
}

/// Keys in `c`'s store that start with `label`.
fn stored(c: &ClientState, label: &[u8]) -> usize {
    c.read(|_, inner| {
        Ok(inner
            .provider
            .storage()
            .with_entries(|e| e.keys().filter(|k| k.starts_with(label)).count()))
    })
    .unwrap()
}

#[test]
fn committed_proposals_leave_nothing_queued_behind() {
    let (alice, bob) = pair(false);
    let proposal = ops(&bob, |g| g.propose_update()).unwrap();
    process(&alice, &proposal).unwrap();
    assert_eq!(stored(&alice, b"QueuedProposal"), 1);
    assert_eq!(stored(&alice, b"ProposalQueueRefs"), 1);
    let output = ops(&alice, |g| g.commit::<&[u8]>(&[])).unwrap();
    process(&bob, &output.commit).unwrap();
    assert_eq!(epoch(&bob), 2);
    assert_eq!(stored(&alice, b"QueuedProposal"), 0);
    assert_eq!(stored(&alice, b"ProposalQueueRefs"), 0);
}

#[test]
fn encrypting_changes_only_the_message_secrets() {
    // What a call changes is what gets written: one entry per message sent.
    let (alice, _bob) = pair(false);
    let changed = alice
        .transact(|keys, inner| {
            GroupOps::new(keys, inner, GID)?.encrypt(b"hi")?;
            Ok(inner
                .provider
                .storage()
                .changes(|changes| changes.iter().map(|(k, _)| k.to_vec()).collect::<Vec<_>>()))
        })
        .unwrap();
    assert_eq!(changed.len(), 1);
    assert!(changed[0].starts_with(b"MessageSecrets"));
}
