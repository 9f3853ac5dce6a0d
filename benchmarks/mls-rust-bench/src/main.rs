//! Rust-only timings of the group operations that `benchmarks/mls_bench.py`
//! times through the Python binding; prints JSON on stdout.
//!
//!     mls-rust-bench [--sizes 2,10,100,1000] [--repeat 15] [--suites 0x0001,0x004D]
//!
//! The binding's Rust API (`ClientState`, `GroupOps`) sits in private
//! modules of `openmls-bindings`, so this drives OpenMLS 0.9.2 directly with
//! the binding's configuration (src/client.rs `create_config`/`join_config`,
//! src/policy.rs capabilities and committer record, libcrux crypto) and
//! OpenMLS's own `MemoryStorage`. It does the same bytes-in/bytes-out work per
//! call (decode, validate, build, stage, merge, encode) but not the binding's
//! per-call transaction (the store's undo journal) nor its policy checks, so
//! Python/Rust shows everything the binding adds on top of OpenMLS, Python
//! included — less what its own store saves: it keeps values as MessagePack,
//! `MemoryStorage` as JSON.
//!
//! Same procedure as the Python script: the N-member group is built with one
//! add commit of N-1 KeyPackages; only member B joins from the Welcome.

use std::collections::HashMap;
use std::time::Instant;

use openmls::group::{
    GroupId, MlsGroup, MlsGroupCreateConfig, MlsGroupJoinConfig, ProcessedWelcome,
    PURE_CIPHERTEXT_WIRE_FORMAT_POLICY,
};
use openmls::prelude::{
    BasicCredential, Capabilities, Ciphersuite, CredentialType, CredentialWithKey, Extension,
    ExtensionType, Extensions, KeyPackage, MlsMessageBodyIn, MlsMessageIn, MlsMessageOut,
    ProcessedMessageContent, ProtocolMessage, ProtocolVersion, RequiredCapabilitiesExtension,
    SenderRatchetConfiguration, SignatureScheme, UnknownExtension,
};
use openmls_basic_credential::SignatureKeyPair;
use openmls_libcrux_crypto::CryptoProvider;
use openmls_memory_storage::MemoryStorage;
use openmls_traits::OpenMlsProvider;
use tls_codec::DeserializeBytes;

// Copied from openmls-bindings (src/client.rs, src/policy.rs).
const MAX_PAST_EPOCHS: usize = 1;
const OUT_OF_ORDER_TOLERANCE: u32 = 32;
const MAXIMUM_FORWARD_DISTANCE: u32 = 1000;
const POLICY_EXTENSION_TYPE: u16 = 0xF0C1;
const MESSAGE_LEN: usize = 1024;
/// Messages encrypted and decrypted per repeat (shared with the Python script).
const MESSAGES_PER_REPEAT: usize = 5;

struct Provider {
    crypto: CryptoProvider,
    storage: MemoryStorage,
}

impl OpenMlsProvider for Provider {
    type CryptoProvider = CryptoProvider;
    type RandProvider = CryptoProvider;
    type StorageProvider = MemoryStorage;
    fn storage(&self) -> &MemoryStorage {
        &self.storage
    }
    fn crypto(&self) -> &CryptoProvider {
        &self.crypto
    }
    fn rand(&self) -> &CryptoProvider {
        &self.crypto
    }
}

/// One in-memory client.
struct Client {
    provider: Provider,
    signer: SignatureKeyPair,
    credential: CredentialWithKey,
}

impl Client {
    fn new() -> Self {
        let provider = Provider {
            crypto: CryptoProvider::new().expect("rng"),
            storage: MemoryStorage::default(),
        };
        let signer = SignatureKeyPair::new(SignatureScheme::ED25519).expect("signature key");
        signer.store(provider.storage()).expect("store signer");
        let identity = signer.public().to_vec();
        let credential = CredentialWithKey {
            credential: BasicCredential::new(identity.clone()).into(),
            signature_key: identity.into(),
        };
        Self {
            provider,
            signer,
            credential,
        }
    }

    fn key_package(&self, suite: Ciphersuite) -> Vec<u8> {
        let bundle = KeyPackage::builder()
            .leaf_node_capabilities(capabilities())
            .build(suite, &self.provider, &self.signer, self.credential.clone())
            .expect("key package");
        MlsMessageOut::from(bundle).to_bytes().expect("encode")
    }

    fn create_group(&self, group_id: &[u8], suite: Ciphersuite) -> MlsGroup {
        MlsGroup::new_with_group_id(
            &self.provider,
            &self.signer,
            &create_config(suite, self.signer.public()),
            GroupId::from_slice(group_id),
            self.credential.clone(),
        )
        .expect("create group")
    }

    /// A commit adding `key_packages` (bytes), with a path if `force_path`;
    /// returns (commit, welcome).
    fn commit(
        &self,
        group: &mut MlsGroup,
        key_packages: &[Vec<u8>],
        force_path: bool,
    ) -> (Vec<u8>, Option<Vec<u8>>) {
        let adds: Vec<KeyPackage> = key_packages.iter().map(|b| parse_key_package(b)).collect();
        let bundle = group
            .commit_builder()
            .consume_proposal_store(true)
            .force_self_update(force_path)
            .propose_adds(adds)
            .load_psks(self.provider.storage())
            .expect("psks")
            .build(
                self.provider.rand(),
                self.provider.crypto(),
                &self.signer,
                |_| true,
            )
            .expect("build commit")
            .stage_commit(&self.provider)
            .expect("stage commit");
        group
            .merge_pending_commit(&self.provider)
            .expect("merge commit");
        let commit = bundle.commit().to_bytes().expect("encode");
        let welcome = bundle
            .to_welcome_msg()
            .map(|w| w.to_bytes().expect("encode"));
        // The binding keeps its last commit in the store (for resending).
        let mut record = commit.clone();
        if let Some(w) = &welcome {
            record.extend_from_slice(w);
        }
        self.provider
            .storage
            .values
            .write()
            .unwrap()
            .insert(b"qpc/own-commit".to_vec(), record);
        (commit, welcome)
    }

    fn join(&self, welcome: &[u8]) -> MlsGroup {
        let welcome = match MlsMessageIn::tls_deserialize_exact_bytes(welcome)
            .expect("decode")
            .extract()
        {
            MlsMessageBodyIn::Welcome(w) => w,
            _ => panic!("not a welcome"),
        };
        ProcessedWelcome::new_from_welcome(&self.provider, &join_config(), welcome)
            .expect("welcome")
            .into_staged_welcome(&self.provider, None)
            .expect("stage welcome")
            .into_group(&self.provider)
            .expect("join")
    }

    fn encrypt(&self, group: &mut MlsGroup, plaintext: &[u8]) -> Vec<u8> {
        group
            .create_message(&self.provider, &self.signer, plaintext)
            .expect("encrypt")
            .to_bytes()
            .expect("encode")
    }

    /// Processes a group message; returns the plaintext of an application
    /// message, merges a commit.
    fn process(&self, group: &mut MlsGroup, message: &[u8]) -> Option<Vec<u8>> {
        let message: ProtocolMessage = match MlsMessageIn::tls_deserialize_exact_bytes(message)
            .expect("decode")
            .extract()
        {
            MlsMessageBodyIn::PrivateMessage(m) => m.into(),
            MlsMessageBodyIn::PublicMessage(m) => m.into(),
            _ => panic!("not a group message"),
        };
        let processed = group
            .process_message(&self.provider, message)
            .expect("process");
        match processed.into_content() {
            ProcessedMessageContent::ApplicationMessage(app) => Some(app.into_bytes()),
            ProcessedMessageContent::StagedCommitMessage(staged) => {
                group
                    .merge_staged_commit(&self.provider, *staged)
                    .expect("merge");
                None
            }
            _ => panic!("unexpected message"),
        }
    }
}

fn capabilities() -> Capabilities {
    let suites = [
        Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519,
        Ciphersuite::MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519,
        Ciphersuite::MLS_256_XWING_CHACHA20POLY1305_SHA256_Ed25519,
    ];
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

fn create_config(suite: Ciphersuite, committer: &[u8]) -> MlsGroupCreateConfig {
    let mut record = vec![1u8, 0u8];
    record.extend_from_slice(committer);
    let extensions = Extensions::from_vec(vec![
        Extension::Unknown(POLICY_EXTENSION_TYPE, UnknownExtension(record)),
        Extension::RequiredCapabilities(RequiredCapabilitiesExtension::new(
            &[ExtensionType::Unknown(POLICY_EXTENSION_TYPE)],
            &[],
            &[CredentialType::Basic],
        )),
    ])
    .expect("extensions");
    MlsGroupCreateConfig::builder()
        .ciphersuite(suite)
        .use_ratchet_tree_extension(true)
        .capabilities(capabilities())
        .with_group_context_extensions(extensions)
        .max_past_epochs(MAX_PAST_EPOCHS)
        .sender_ratchet_configuration(SenderRatchetConfiguration::new(
            OUT_OF_ORDER_TOLERANCE,
            MAXIMUM_FORWARD_DISTANCE,
        ))
        .wire_format_policy(PURE_CIPHERTEXT_WIRE_FORMAT_POLICY)
        .build()
}

fn join_config() -> MlsGroupJoinConfig {
    MlsGroupJoinConfig::builder()
        .use_ratchet_tree_extension(true)
        .max_past_epochs(MAX_PAST_EPOCHS)
        .sender_ratchet_configuration(SenderRatchetConfiguration::new(
            OUT_OF_ORDER_TOLERANCE,
            MAXIMUM_FORWARD_DISTANCE,
        ))
        .wire_format_policy(PURE_CIPHERTEXT_WIRE_FORMAT_POLICY)
        .build()
}

fn parse_key_package(bytes: &[u8]) -> KeyPackage {
    let crypto = CryptoProvider::new().expect("rng");
    match MlsMessageIn::tls_deserialize_exact_bytes(bytes)
        .expect("decode")
        .extract()
    {
        MlsMessageBodyIn::KeyPackage(kp) => kp
            .validate(&crypto, ProtocolVersion::Mls10)
            .expect("valid key package"),
        _ => panic!("not a key package"),
    }
}

fn suite_of(code: u16) -> Ciphersuite {
    match code {
        0x0001 => Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519,
        0x004D => Ciphersuite::MLS_256_XWING_CHACHA20POLY1305_SHA256_Ed25519,
        _ => panic!("unsupported ciphersuite {code:#06x}"),
    }
}

/// Repeats at one group size: fewer for large groups (shared rule with the
/// Python script).
fn repeats_for(size: usize, repeat: usize) -> usize {
    if size >= 1000 {
        (repeat / 5).max(3)
    } else if size >= 100 {
        (repeat / 2).max(3)
    } else {
        repeat
    }
}

fn micros(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1e6
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// Times every operation for one suite and group size; op -> samples (µs).
fn bench(
    code: u16,
    size: usize,
    repeats: usize,
    create_repeats: usize,
) -> (HashMap<&'static str, Vec<f64>>, f64) {
    let suite = suite_of(code);
    let mut samples: HashMap<&'static str, Vec<f64>> = HashMap::new();
    let mut record = |op: &'static str, us: f64| samples.entry(op).or_default().push(us);

    // create: a fresh client each time, so the store holds nothing else. Its
    // cost does not depend on the group size: always the full repeat count.
    for i in 0..create_repeats {
        let client = Client::new();
        let start = Instant::now();
        let _group = client.create_group(format!("create-{i}").as_bytes(), suite);
        record("create", micros(start));
    }

    // The N-member group: one commit adding N-1 KeyPackages; only B joins.
    let setup = Instant::now();
    let alice = Client::new();
    let mut group_a = alice.create_group(b"bench", suite);
    let others: Vec<Client> = (1..size).map(|_| Client::new()).collect();
    let kps: Vec<Vec<u8>> = others.iter().map(|c| c.key_package(suite)).collect();
    let (_, welcome) = alice.commit(&mut group_a, &kps, false);
    let bob = &others[0];
    let mut group_b = bob.join(&welcome.expect("welcome"));
    drop(kps);
    let setup_s = setup.elapsed().as_secs_f64();

    let plaintext = vec![0x42u8; MESSAGE_LEN];
    for _ in 0..repeats {
        // add one member (the group grows by one per repeat)
        let newcomer = Client::new();
        let kp = newcomer.key_package(suite);
        let start = Instant::now();
        let (commit, _) = alice.commit(&mut group_a, &[kp], false);
        record("add", micros(start));
        bob.process(&mut group_b, &commit);

        // self-update by the committer
        let start = Instant::now();
        let (commit, _) = alice.commit(&mut group_a, &[], true);
        record("self_update", micros(start));
        bob.process(&mut group_b, &commit);

        // commit (no proposals) + one member processing it
        let start = Instant::now();
        let (commit, _) = alice.commit(&mut group_a, &[], false);
        let committed = micros(start);
        let start = Instant::now();
        bob.process(&mut group_b, &commit);
        let processed = micros(start);
        record("commit", committed);
        record("process", processed);
        record("commit_process", committed + processed);

        // 1 KiB application messages: cheap next to a commit, so several
        for _ in 0..MESSAGES_PER_REPEAT {
            let start = Instant::now();
            let ciphertext = alice.encrypt(&mut group_a, &plaintext);
            record("encrypt", micros(start));
            let start = Instant::now();
            let out = bob.process(&mut group_b, &ciphertext);
            record("decrypt", micros(start));
            assert_eq!(out.as_deref(), Some(plaintext.as_slice()));
        }
    }
    (samples, setup_s)
}

fn main() {
    let mut sizes = vec![2usize, 10, 100, 1000];
    let mut repeat = 15usize;
    let mut suites = vec![0x0001u16, 0x004D];
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).expect("option needs a value");
        match args[i].as_str() {
            "--sizes" => {
                sizes = value
                    .split(',')
                    .map(|s| s.trim().parse().unwrap())
                    .collect()
            }
            "--repeat" => repeat = value.parse().unwrap(),
            "--suites" => {
                suites = value
                    .split(',')
                    .map(|s| {
                        let s = s.trim();
                        let s = s.strip_prefix("0x").unwrap_or(s);
                        u16::from_str_radix(s, 16).unwrap()
                    })
                    .collect()
            }
            other => panic!("unknown option {other}"),
        }
        i += 2;
    }
    let mut rows = Vec::new();
    for &code in &suites {
        for &size in &sizes {
            assert!(size >= 2, "group size must be at least 2");
            let repeats = repeats_for(size, repeat);
            let (mut samples, setup_s) = bench(code, size, repeats, repeat);
            let mut ops: Vec<_> = samples.keys().copied().collect();
            ops.sort();
            let medians: Vec<String> = ops
                .iter()
                .map(|op| {
                    let m = median(samples.get_mut(op).unwrap());
                    format!("\"{op}\": {m:.1}")
                })
                .collect();
            // After `median`, every sample list is sorted: its first value is the lowest.
            let minimums: Vec<String> = ops
                .iter()
                .map(|op| format!("\"{op}\": {:.1}", samples[op][0]))
                .collect();
            rows.push(format!(
                "{{\"suite\": {code}, \"size\": {size}, \"repeats\": {repeats}, \
                 \"setup_s\": {setup_s:.3}, \"median_us\": {{{}}}, \"min_us\": {{{}}}}}",
                medians.join(", "),
                minimums.join(", ")
            ));
            eprintln!("rust: suite {code:#06x} size {size} done (setup {setup_s:.1}s)");
        }
    }
    println!(
        "{{\"implementation\": \"rust\", \"message_bytes\": {MESSAGE_LEN}, \"results\": [{}]}}",
        rows.join(", ")
    );
}
