//! Tests of the caller's clock and randomness: a seeded run repeats bit for
//! bit, and every lifetime the binding makes or checks follows the client's
//! clock, not the system's. OpenMLS's own checks against the system clock
//! (src/clock.rs) pass because these clients make lifetimes long enough to
//! cover both.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use crate::client::ClientState;
use crate::clock::testing::{manual, set, shared};
use crate::clock::Now;
use crate::error::Result;
use crate::group_ops::{parse_group_message, GroupOps, Kind};
use crate::key_package::{
    KeyPackageLifetime, KEY_PACKAGE_LIFETIME_MARGIN_SECS, MAX_KEY_PACKAGE_LIFETIME_SECS,
};
use openmls_traits::OpenMlsProvider;

const GID: &[u8] = b"room";

/// 2026-01-01T00:00:00Z: the simulator's epoch, in the past of the system
/// clock.
const SIM_SECS: u64 = 1_767_225_600;

/// 2001-09-09T01:46:40Z: long before the system clock.
const PAST_SECS: u64 = 1_000_000_000;

fn at(secs: u64) -> Now {
    Now::from_ms(secs * 1000)
}

/// The lifetime of these tests' clients: 100 years, so that a KeyPackage made
/// at [`SIM_SECS`] is also valid by the system clock (OpenMLS's checks).
fn long() -> KeyPackageLifetime {
    KeyPackageLifetime::from_secs(MAX_KEY_PACKAGE_LIFETIME_SECS.into()).unwrap()
}

fn ops<T>(c: &ClientState, f: impl FnOnce(&mut GroupOps<'_>) -> Result<T>) -> Result<T> {
    c.transact(|keys, inner| f(&mut GroupOps::new(keys, inner, GID)?))
}

fn process(c: &ClientState, message: &[u8]) -> Result<crate::group_ops::Outcome> {
    let message = parse_group_message(message)?;
    ops(c, |g| g.process(message))
}

fn epoch(c: &ClientState) -> u64 {
    c.read(|_, inner| Ok(inner.group(GID)?.1.epoch().as_u64()))
        .unwrap()
}

/// Clients of one run, all on one clock.
struct World {
    clock: Arc<AtomicU64>,
    rng_base: Option<u8>,
}

impl World {
    fn new(start: Now, rng_base: Option<u8>) -> Self {
        let (_, clock) = manual(0);
        set(&clock, start);
        Self { clock, rng_base }
    }

    /// Client `n`: identity key `[n; 32]`, randomness from `[base + n; 32]`,
    /// 100-year lifetimes.
    fn client(&self, n: u8) -> ClientState {
        self.client_with(n, long())
    }

    fn client_with(&self, n: u8, lifetime: KeyPackageLifetime) -> ClientState {
        let rng_seed = self.rng_base.map(|base| [base.wrapping_add(n); 32]);
        ClientState::open(&[n; 32], None, shared(&self.clock), rng_seed, lifetime).unwrap()
    }

    fn advance(&self, secs: u64) {
        let now = self.clock.load(std::sync::atomic::Ordering::SeqCst);
        self.clock
            .store(now + secs * 1000, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A run of a group's life; returns every message it produced, in order.
fn run(world: &World) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let (alice, bob, carol, dave, eve) = (
        world.client(1),
        world.client(2),
        world.client(3),
        world.client(4),
        world.client(5),
    );
    alice.create_group(GID, 0x004D, true, false).unwrap();
    let kps = [kp(&bob, 0x004D), kp(&carol, 0x004D)];
    out.extend(kps.iter().cloned());
    let (commit, welcome) = ops(&alice, |g| g.add_members(&kps)).unwrap();
    bob.join(&welcome, false).unwrap();
    carol.join(&welcome, false).unwrap();
    out.extend([commit, welcome]);

    world.advance(1);
    let hi = ops(&alice, |g| g.encrypt(b"hi")).unwrap();
    for member in [&bob, &carol] {
        assert_eq!(process(member, &hi).unwrap().plaintext.unwrap(), b"hi");
    }
    let reply = ops(&bob, |g| g.encrypt(b"hello")).unwrap();
    for member in [&alice, &carol] {
        assert_eq!(
            process(member, &reply).unwrap().plaintext.unwrap(),
            b"hello"
        );
    }
    out.extend([hi, reply]);

    // Proposals, and a commit with an Add by value and an Update by reference.
    let dave_kp = kp(&dave, 0x004D);
    let add = ops(&bob, |g| g.propose_add(&dave_kp)).unwrap();
    let update = ops(&carol, |g| g.propose_update()).unwrap();
    for (message, members) in [(&add, [&alice, &carol]), (&update, [&alice, &bob])] {
        for member in members {
            assert_eq!(process(member, message).unwrap().kind, Kind::Proposal);
        }
    }
    let output = ops(&alice, |g| g.commit::<&[u8]>(&[])).unwrap();
    for member in [&bob, &carol] {
        assert_eq!(process(member, &output.commit).unwrap().kind, Kind::Commit);
    }
    let welcome = output.welcome.unwrap();
    dave.join(&welcome, false).unwrap();
    out.extend([dave_kp, add, update, output.commit, welcome]);

    // One Remove per commit: OpenMLS lists a commit's member-specific
    // proposals in HashMap order, so only a commit with at most one of them
    // repeats (docs/architecture.md).
    for removed in [&bob, &carol] {
        let removal = ops(&alice, |g| g.remove_members(&[removed.keys.identity])).unwrap();
        assert_eq!(process(&dave, &removal).unwrap().removed.len(), 1);
        out.push(removal);
    }
    let update = ops(&alice, |g| g.self_update()).unwrap();
    process(&dave, &update).unwrap();
    out.push(update);

    // An external commit (HPKE setup_sender_and_export).
    let info = alice
        .read(|keys, inner| {
            let (provider, group) = inner.group(GID)?;
            crate::client::encode(&group.export_group_info(
                provider.crypto(),
                &keys.signer,
                true,
            )?)
        })
        .unwrap();
    let (_, external) = eve.join_external(&info).unwrap();
    for member in [&alice, &dave] {
        assert_eq!(process(member, &external).unwrap().kind, Kind::Commit);
    }
    let last = ops(&eve, |g| g.encrypt(b"bye")).unwrap();
    assert_eq!(process(&dave, &last).unwrap().plaintext.unwrap(), b"bye");
    out.extend([info, external, last]);
    assert_eq!(epoch(&dave), 6);
    out
}

#[test]
fn a_seeded_run_repeats_bit_for_bit() {
    let start = at(SIM_SECS);
    let first = run(&World::new(start, Some(100)));
    let second = run(&World::new(start, Some(100)));
    assert_eq!(first.len(), second.len());
    for (i, (a, b)) in first.iter().zip(&second).enumerate() {
        assert!(a == b, "message {i} differs between two seeded runs");
    }
    // Another seed: every message differs (KeyPackages, commits, Welcomes,
    // application messages alike).
    let other = run(&World::new(start, Some(200)));
    for (i, (a, b)) in first.iter().zip(&other).enumerate() {
        assert!(a != b, "message {i} is the same under another seed");
    }
    // Without a seed, randomness is the system's.
    let unseeded = [run(&World::new(start, None)), run(&World::new(start, None))];
    assert_ne!(unseeded[0][0], unseeded[1][0]);
}

/// The commits of a 12-member group's members updating their paths:
/// OpenMLS encrypts each commit's path secrets on rayon's threads, in
/// parallel, so the order of those HPKE encryptions varies.
fn path_updates(world: &World) -> Vec<Vec<u8>> {
    let alice = world.client(1);
    let others: Vec<ClientState> = (2..=12).map(|n| world.client(n)).collect();
    alice.create_group(GID, 1, false, true).unwrap();
    let kps: Vec<Vec<u8>> = others.iter().map(|c| kp(c, 1)).collect();
    let (_, welcome) = ops(&alice, |g| g.add_members(&kps)).unwrap();
    for member in &others {
        member.join(&welcome, true).unwrap();
    }
    let mut out = Vec::new();
    for updater in others.iter().step_by(3) {
        let commit = ops(updater, |g| g.self_update()).unwrap();
        for member in std::iter::once(&alice).chain(&others) {
            if !std::ptr::eq(member, updater) {
                process(member, &commit).unwrap();
            }
        }
        out.push(commit);
    }
    out
}

#[test]
fn commits_encrypting_path_secrets_in_parallel_repeat() {
    let first = path_updates(&World::new(at(SIM_SECS), Some(3)));
    for _ in 0..2 {
        assert!(path_updates(&World::new(at(SIM_SECS), Some(3))) == first);
    }
}

#[test]
fn the_same_seed_at_another_time_differs_only_by_the_time() {
    let first = run(&World::new(at(SIM_SECS), Some(100)));
    let later = run(&World::new(at(SIM_SECS + 1), Some(100)));
    // The KeyPackages carry the clock's time in their lifetimes.
    assert_ne!(first[0], later[0]);
}

/// A whole group life at `start` by the clients' clock: create, add from a
/// KeyPackage and by a received Add proposal, join from Welcomes, messages,
/// a removal and an update.
fn full_flow_at(start: Now) {
    let world = World::new(start, Some(7));
    let (alice, bob, carol) = (world.client(1), world.client(2), world.client(3));
    alice.create_group(GID, 1, false, false).unwrap();
    let bob_kp = bob.key_packages(1, 1).unwrap();
    let (_, welcome) = ops(&alice, |g| g.add_members(&bob_kp)).unwrap();
    bob.join(&welcome, false).unwrap();
    let carol_kp = kp(&carol, 1);
    let proposal = ops(&bob, |g| g.propose_add(&carol_kp)).unwrap();
    process(&alice, &proposal).unwrap();
    world.advance(3600);
    let output = ops(&alice, |g| g.commit::<&[u8]>(&[])).unwrap();
    assert_eq!(process(&bob, &output.commit).unwrap().added.len(), 1);
    carol.join(&output.welcome.unwrap(), false).unwrap();
    let hi = ops(&carol, |g| g.encrypt(b"hi")).unwrap();
    for member in [&alice, &bob] {
        assert_eq!(process(member, &hi).unwrap().plaintext.unwrap(), b"hi");
    }
    let removal = ops(&alice, |g| g.remove_members(&[bob.keys.identity])).unwrap();
    process(&carol, &removal).unwrap();
    let update = ops(&alice, |g| g.self_update()).unwrap();
    process(&carol, &update).unwrap();
    assert_eq!((epoch(&alice), epoch(&carol)), (4, 4));
}

#[test]
fn a_group_lives_at_the_simulators_past_epoch_with_long_lifetimes() {
    full_flow_at(at(SIM_SECS));
}

#[test]
fn lifetimes_are_made_from_the_clients_clock() {
    let world = World::new(at(SIM_SECS), None);
    let short = KeyPackageLifetime::from_secs(3600).unwrap();
    for (client, secs) in [
        (world.client(1), MAX_KEY_PACKAGE_LIFETIME_SECS),
        (world.client_with(2, short), 3600),
        (
            world.client_with(3, KeyPackageLifetime::default()),
            12 * 7 * 86400,
        ),
    ] {
        let kp = crate::key_package::parse_key_package(&kp(&client, 1), at(SIM_SECS));
        // A short lifetime at a past clock is expired by the system clock,
        // which OpenMLS's KeyPackageIn::validate still checks.
        let Ok(kp) = kp else {
            assert_ne!(secs, MAX_KEY_PACKAGE_LIFETIME_SECS);
            continue;
        };
        let lifetime = kp.life_time();
        assert_eq!(
            lifetime.not_before(),
            SIM_SECS - KEY_PACKAGE_LIFETIME_MARGIN_SECS
        );
        assert_eq!(lifetime.not_after(), SIM_SECS + secs);
    }
}

#[test]
fn openmls_still_checks_key_packages_against_the_system_clock() {
    // Made in 2001 with the default 12 weeks: valid by the verifier's clock
    // (also 2001), expired by the system clock, so OpenMLS refuses it.
    let world = World::new(at(PAST_SECS), None);
    let kp = kp(&world.client_with(2, KeyPackageLifetime::default()), 1);
    let err = crate::key_package::parse_key_package(&kp, at(PAST_SECS)).unwrap_err();
    assert_eq!(err.python_class(), "InvalidMessageError");
    assert!(err.message().contains("Lifetime is in the past"), "{err}");
}

#[test]
fn a_key_package_is_refused_exactly_outside_its_lifetime_by_the_verifiers_clock() {
    let made = World::new(at(SIM_SECS), None);
    let kp = kp(&made.client(2), 1);
    let first = SIM_SECS - KEY_PACKAGE_LIFETIME_MARGIN_SECS;
    let expiry = SIM_SECS + MAX_KEY_PACKAGE_LIFETIME_SECS;
    for (secs, valid) in [
        (first - 1, false),
        (first, true),
        (expiry - 1, true),
        (expiry, false),
    ] {
        let verifier = World::new(at(secs), None).client(1);
        verifier.create_group(GID, 1, false, false).unwrap();
        let got = ops(&verifier, |g| g.propose_add(&kp));
        assert_eq!(got.is_ok(), valid, "propose_add at {secs}: {got:?}");
        let got = ops(&verifier, |g| g.add_members(&[&kp]));
        assert_eq!(got.is_ok(), valid, "at {secs}: {got:?}");
        if let Err(err) = got {
            assert_eq!(err.python_class(), "InvalidMessageError");
            assert!(err.message().contains("Lifetime is in the"), "{err}");
        }
    }
}

#[test]
fn a_bad_lifetime_length_is_refused() {
    for bad in [
        0,
        -1,
        i128::from(MAX_KEY_PACKAGE_LIFETIME_SECS) + 1,
        i128::from(u64::MAX) + 1,
    ] {
        let err = KeyPackageLifetime::from_secs(bad).unwrap_err();
        assert_eq!(err.python_class(), "InvalidInputError", "{bad}");
    }
    assert!(KeyPackageLifetime::from_secs(1).is_ok());
}

/// One single-use KeyPackage of `suite`.
fn kp(c: &ClientState, suite: i64) -> Vec<u8> {
    c.key_packages(1, suite).unwrap().pop().unwrap()
}
