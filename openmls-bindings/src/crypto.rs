//! The client's crypto provider: libcrux for every primitive, and one source
//! for every random byte the client uses.
//!
//! Without an `rng_seed` this is libcrux's `CryptoProvider` unchanged: its
//! HMAC-DRBG, seeded (and reseeded) from the operating system, serves
//! OpenMLS's randomness (`provider.rand()`), and hpke-rs seeds a fresh
//! ChaCha20 generator from the operating system for each HPKE encapsulation.
//!
//! With an `rng_seed` (simulations and tests: a seeded run repeats bit for
//! bit) every random draw comes from one ChaCha20 generator seeded with it:
//!
//! * `provider.rand()`: init and path secrets, HPKE and leaf key seeds (OpenMLS
//!   derives HPKE key pairs from them with `derive_hpke_keypair`), reuse
//!   guards, and the state file's salts and nonces;
//! * HPKE encapsulation (`hpke_seal`: Welcomes' group secrets and UpdatePath
//!   secrets; `hpke_setup_sender_and_export`: external commits), where
//!   libcrux would draw the ephemeral key from hpke-rs's own OS-seeded
//!   generator: here hpke-rs draws from a ChaCha20 generator with a seed of
//!   ours (see [`SeededHpke`]). For `hpke_setup_sender_and_export` that seed
//!   is drawn from our generator. `hpke_seal` cannot draw in turn: OpenMLS
//!   encrypts a commit's path secrets on rayon's threads in parallel, in an
//!   order that changes from run to run. Its seed is therefore derived from
//!   what it encrypts: HKDF-Extract(salt = a 32-byte key drawn from our
//!   generator when the client is made, the length-prefixed recipient key,
//!   info, aad and plaintext) — the same in every run whatever the order,
//!   and different for every encryption MLS makes (each plaintext is a fresh
//!   secret). Only a repeated encryption of the same plaintext to the same
//!   key would repeat its ciphertext;
//! * signature key generation (OpenMLS does not call it on our paths; the
//!   client's signature key is the caller's).
//!
//! Nothing else in libcrux draws randomness: Ed25519 signing is
//! deterministic, AEAD nonces are inputs, HPKE key pairs are derived from
//! input key material.
//!
//! A seeded client is exactly as secret as its seed, and a second client
//! given the same seed repeats the same "random" values: never give one to
//! real users, and never reuse a seed for a client reopening the same state
//! file (its state file nonces would repeat under the same key).

use std::cell::Cell;
use std::convert::Infallible;
use std::sync::Mutex;

use hkdf::Hkdf;
use hpke_rs::{Hpke, HpkePublicKey, Mode};
use hpke_rs_crypto::error::Error as HpkeCryptoError;
use hpke_rs_crypto::types::{AeadAlgorithm, KdfAlgorithm, KemAlgorithm};
use hpke_rs_crypto::{HpkeCrypto, HpkeTestRng, Rng as _};
use hpke_rs_libcrux::HpkeLibcrux;
use openmls_libcrux_crypto::{CryptoProvider, RandError};
use openmls_traits::crypto::OpenMlsCrypto;
use openmls_traits::random::OpenMlsRand;
use openmls_traits::types::{
    AeadType, Ciphersuite, CryptoError, ExporterSecret, HashType, HpkeAeadType, HpkeCiphertext,
    HpkeConfig, HpkeKdfType, HpkeKemType, HpkeKeyPair, KemOutput, SignatureScheme,
};
use rand_chacha::ChaCha20Rng;
use rand_core::{SeedableRng, TryCryptoRng, TryRng};
use sha2::Sha256;
use tls_codec::SecretVLBytes;
use zeroize::{Zeroize, Zeroizing};

use crate::error::{Error, Result};

/// Length of an `rng_seed`.
pub const RNG_SEED_LEN: usize = 32;

/// libcrux, with all randomness from one seeded generator if there is one.
pub struct Crypto {
    libcrux: CryptoProvider,
    seeded: Option<Seeded>,
}

/// A seeded client's generator, and the key its `hpke_seal` seeds are
/// derived with (see the module documentation).
struct Seeded {
    rng: Mutex<ChaCha20Rng>,
    seal_key: Zeroizing<[u8; 32]>,
}

impl Crypto {
    /// `rng_seed` None: the operating system's randomness (through libcrux).
    pub fn new(rng_seed: Option<[u8; RNG_SEED_LEN]>) -> Result<Self> {
        let libcrux = CryptoProvider::new()
            .map_err(|_| Error::state("the system random number generator is unavailable"))?;
        let seeded = rng_seed.map(|seed| {
            let mut rng = ChaCha20Rng::from_seed(seed);
            let mut seal_key = Zeroizing::new([0; 32]);
            rng.fill_bytes(&mut *seal_key);
            Seeded {
                rng: Mutex::new(rng),
                seal_key,
            }
        });
        Ok(Self { libcrux, seeded })
    }

    /// Fills `out` from the seeded generator, or from libcrux's DRBG.
    fn fill(&self, out: &mut [u8]) -> std::result::Result<(), RandError> {
        match &self.seeded {
            Some(seeded) => {
                seeded
                    .rng
                    .lock()
                    .map_err(|_| RandError::UnableToGenerate)?
                    .fill_bytes(out);
                Ok(())
            }
            None => {
                let bytes = self.libcrux.random_vec(out.len())?;
                out.copy_from_slice(&bytes);
                Ok(())
            }
        }
    }

    /// The seed of an `hpke_seal`'s encapsulation: a function of what it
    /// encrypts, not of when (see the module documentation).
    fn seal_seed(
        seeded: &Seeded,
        parts: [&[u8]; 4],
    ) -> std::result::Result<[u8; RNG_SEED_LEN], CryptoError> {
        let mut transcript = Zeroizing::new(b"quicnprotochat seeded hpke_seal v1".to_vec());
        for part in parts {
            transcript.extend_from_slice(&(part.len() as u64).to_be_bytes());
            transcript.extend_from_slice(part);
        }
        let (prk, _) = Hkdf::<Sha256>::extract(Some(&*seeded.seal_key), &transcript);
        prk.as_slice()
            .try_into()
            .map_err(|_| CryptoError::CryptoLibraryError)
    }

    /// An hpke-rs context whose generator is seeded with `seed`.
    fn seeded_hpke(
        config: HpkeConfig,
        seed: [u8; RNG_SEED_LEN],
    ) -> std::result::Result<Hpke<SeededHpke>, CryptoError> {
        let kem = match config.0 {
            HpkeKemType::DhKem25519 => KemAlgorithm::DhKem25519,
            HpkeKemType::XWingKemDraft6 => KemAlgorithm::XWingDraft06,
            _ => return Err(CryptoError::UnsupportedCiphersuite),
        };
        let kdf = match config.1 {
            HpkeKdfType::HkdfSha256 => KdfAlgorithm::HkdfSha256,
            HpkeKdfType::HkdfSha384 => KdfAlgorithm::HkdfSha384,
            HpkeKdfType::HkdfSha512 => KdfAlgorithm::HkdfSha512,
        };
        let aead = match config.2 {
            HpkeAeadType::AesGcm128 => AeadAlgorithm::Aes128Gcm,
            HpkeAeadType::AesGcm256 => AeadAlgorithm::Aes256Gcm,
            HpkeAeadType::ChaCha20Poly1305 => AeadAlgorithm::ChaCha20Poly1305,
            HpkeAeadType::Export => AeadAlgorithm::HpkeExport,
        };
        NEXT_HPKE_SEED.with(|next| next.set(Some(seed)));
        let hpke = Hpke::<SeededHpke>::new(Mode::Base, kem, kdf, aead);
        // `Hpke::new` takes the seed (SeededHpke::prng); never leave one behind.
        if NEXT_HPKE_SEED.with(Cell::take).is_some() {
            return Err(CryptoError::CryptoLibraryError);
        }
        Ok(hpke)
    }
}

impl OpenMlsRand for Crypto {
    type Error = RandError;

    fn random_array<const N: usize>(&self) -> std::result::Result<[u8; N], Self::Error> {
        let mut out = [0u8; N];
        self.fill(&mut out)?;
        Ok(out)
    }

    fn random_vec(&self, len: usize) -> std::result::Result<Vec<u8>, Self::Error> {
        let mut out = vec![0u8; len];
        self.fill(&mut out)?;
        Ok(out)
    }
}

impl OpenMlsCrypto for Crypto {
    fn supports(&self, ciphersuite: Ciphersuite) -> std::result::Result<(), CryptoError> {
        self.libcrux.supports(ciphersuite)
    }

    fn supported_ciphersuites(&self) -> Vec<Ciphersuite> {
        self.libcrux.supported_ciphersuites()
    }

    fn hkdf_extract(
        &self,
        hash_type: HashType,
        salt: &[u8],
        ikm: &[u8],
    ) -> std::result::Result<SecretVLBytes, CryptoError> {
        self.libcrux.hkdf_extract(hash_type, salt, ikm)
    }

    fn hmac(
        &self,
        hash_type: HashType,
        key: &[u8],
        message: &[u8],
    ) -> std::result::Result<SecretVLBytes, CryptoError> {
        self.libcrux.hmac(hash_type, key, message)
    }

    fn hkdf_expand(
        &self,
        hash_type: HashType,
        prk: &[u8],
        info: &[u8],
        okm_len: usize,
    ) -> std::result::Result<SecretVLBytes, CryptoError> {
        self.libcrux.hkdf_expand(hash_type, prk, info, okm_len)
    }

    fn hash(&self, hash_type: HashType, data: &[u8]) -> std::result::Result<Vec<u8>, CryptoError> {
        self.libcrux.hash(hash_type, data)
    }

    fn aead_encrypt(
        &self,
        alg: AeadType,
        key: &[u8],
        data: &[u8],
        nonce: &[u8],
        aad: &[u8],
    ) -> std::result::Result<Vec<u8>, CryptoError> {
        self.libcrux.aead_encrypt(alg, key, data, nonce, aad)
    }

    fn aead_decrypt(
        &self,
        alg: AeadType,
        key: &[u8],
        ct_tag: &[u8],
        nonce: &[u8],
        aad: &[u8],
    ) -> std::result::Result<Vec<u8>, CryptoError> {
        self.libcrux.aead_decrypt(alg, key, ct_tag, nonce, aad)
    }

    fn signature_key_gen(
        &self,
        alg: SignatureScheme,
    ) -> std::result::Result<(Vec<u8>, Vec<u8>), CryptoError> {
        if self.seeded.is_none() {
            return self.libcrux.signature_key_gen(alg);
        }
        if !matches!(alg, SignatureScheme::ED25519) {
            return Err(CryptoError::UnsupportedSignatureScheme);
        }
        // As libcrux does: a random 32-byte Ed25519 secret key (RFC 8032
        // seed) and its public key.
        let sk: [u8; 32] = self
            .random_array()
            .map_err(|_| CryptoError::InsufficientRandomness)?;
        let pk = ed25519_dalek::SigningKey::from_bytes(&sk)
            .verifying_key()
            .to_bytes();
        Ok((sk.to_vec(), pk.to_vec()))
    }

    fn verify_signature(
        &self,
        alg: SignatureScheme,
        data: &[u8],
        pk: &[u8],
        signature: &[u8],
    ) -> std::result::Result<(), CryptoError> {
        self.libcrux.verify_signature(alg, data, pk, signature)
    }

    fn sign(
        &self,
        alg: SignatureScheme,
        data: &[u8],
        key: &[u8],
    ) -> std::result::Result<Vec<u8>, CryptoError> {
        self.libcrux.sign(alg, data, key)
    }

    fn hpke_seal(
        &self,
        config: HpkeConfig,
        pk_r: &[u8],
        info: &[u8],
        aad: &[u8],
        ptxt: &[u8],
    ) -> std::result::Result<HpkeCiphertext, CryptoError> {
        let Some(seeded) = &self.seeded else {
            return self.libcrux.hpke_seal(config, pk_r, info, aad, ptxt);
        };
        // As libcrux's hpke_seal, with our generator.
        let seed = Self::seal_seed(seeded, [pk_r, info, aad, ptxt])?;
        let pk_r = HpkePublicKey::new(pk_r.to_vec());
        let (kem_output, ciphertext) = Self::seeded_hpke(config, seed)?
            .seal(&pk_r, info, aad, ptxt, None, None, None)
            .map_err(|e| match e {
                hpke_rs::HpkeError::InvalidConfig => CryptoError::SenderSetupError,
                _ => CryptoError::HpkeEncryptionError,
            })?;
        Ok(HpkeCiphertext {
            kem_output: kem_output.into(),
            ciphertext: ciphertext.into(),
        })
    }

    fn hpke_open(
        &self,
        config: HpkeConfig,
        input: &HpkeCiphertext,
        sk_r: &[u8],
        info: &[u8],
        aad: &[u8],
    ) -> std::result::Result<Vec<u8>, CryptoError> {
        self.libcrux.hpke_open(config, input, sk_r, info, aad)
    }

    fn hpke_setup_sender_and_export(
        &self,
        config: HpkeConfig,
        pk_r: &[u8],
        info: &[u8],
        exporter_context: &[u8],
        exporter_length: usize,
    ) -> std::result::Result<(KemOutput, ExporterSecret), CryptoError> {
        if self.seeded.is_none() {
            return self.libcrux.hpke_setup_sender_and_export(
                config,
                pk_r,
                info,
                exporter_context,
                exporter_length,
            );
        }
        // As libcrux's hpke_setup_sender_and_export, with our generator.
        // OpenMLS calls this once per external commit, never in parallel.
        let seed: [u8; RNG_SEED_LEN] = self
            .random_array()
            .map_err(|_| CryptoError::InsufficientRandomness)?;
        let pk_r = HpkePublicKey::new(pk_r.to_vec());
        let (enc, context) = Self::seeded_hpke(config, seed)?
            .setup_sender(&pk_r, info, None, None, None)
            .map_err(|_| CryptoError::SenderSetupError)?;
        context
            .export(exporter_context, exporter_length)
            .map_err(|_| CryptoError::ExporterError)
            .map(|exported| (enc, exported.into()))
    }

    fn hpke_setup_receiver_and_export(
        &self,
        config: HpkeConfig,
        enc: &[u8],
        sk_r: &[u8],
        info: &[u8],
        exporter_context: &[u8],
        exporter_length: usize,
    ) -> std::result::Result<ExporterSecret, CryptoError> {
        self.libcrux.hpke_setup_receiver_and_export(
            config,
            enc,
            sk_r,
            info,
            exporter_context,
            exporter_length,
        )
    }

    fn derive_hpke_keypair(
        &self,
        config: HpkeConfig,
        ikm: &[u8],
    ) -> std::result::Result<HpkeKeyPair, CryptoError> {
        self.libcrux.derive_hpke_keypair(config, ikm)
    }
}

thread_local! {
    /// The seed for the generator of the next `Hpke<SeededHpke>` made on this
    /// thread: `HpkeCrypto::prng` takes no arguments, so
    /// [`Crypto::seeded_hpke`] hands it over here, immediately before
    /// `Hpke::new` takes it.
    static NEXT_HPKE_SEED: Cell<Option<[u8; RNG_SEED_LEN]>> = const { Cell::new(None) };
}

/// hpke-rs's crypto for seeded clients: libcrux (through hpke-rs-libcrux)
/// for every primitive, and a ChaCha20 generator seeded by
/// [`Crypto::seeded_hpke`] for the encapsulation.
///
/// hpke-rs also makes generators for copies of a context (`Hpke::clone`,
/// inside `setup_sender`); those never draw (the key schedule, sealing and
/// exporting are deterministic) and are seeded from the operating system,
/// as upstream does.
#[derive(Debug)]
pub struct SeededHpke;

/// The generator hpke-rs draws from in a [`SeededHpke`] context.
pub struct SeededPrng(ChaCha20Rng);

impl TryRng for SeededPrng {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> std::result::Result<u32, Infallible> {
        self.0.try_next_u32()
    }

    fn try_next_u64(&mut self) -> std::result::Result<u64, Infallible> {
        self.0.try_next_u64()
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> std::result::Result<(), Infallible> {
        self.0.try_fill_bytes(dst)
    }
}

impl TryCryptoRng for SeededPrng {}

impl HpkeTestRng for SeededPrng {
    type Error = HpkeCryptoError;

    fn try_fill_test_bytes(&mut self, dest: &mut [u8]) -> std::result::Result<(), Self::Error> {
        self.0.fill_bytes(dest);
        Ok(())
    }

    fn seed(&mut self, _: &[u8]) {}
}

impl Zeroize for SeededPrng {
    fn zeroize(&mut self) {
        self.0 = ChaCha20Rng::from_seed([0; RNG_SEED_LEN]);
    }
}

impl HpkeCrypto for SeededHpke {
    type HpkePrng = SeededPrng;

    fn name() -> String {
        "Libcrux (seeded)".into()
    }

    fn supports_kdf(alg: KdfAlgorithm) -> std::result::Result<(), HpkeCryptoError> {
        HpkeLibcrux::supports_kdf(alg)
    }

    fn supports_kem(alg: KemAlgorithm) -> std::result::Result<(), HpkeCryptoError> {
        match alg {
            KemAlgorithm::DhKem25519 | KemAlgorithm::XWingDraft06 => Ok(()),
            _ => Err(HpkeCryptoError::UnknownKemAlgorithm),
        }
    }

    fn supports_aead(alg: AeadAlgorithm) -> std::result::Result<(), HpkeCryptoError> {
        HpkeLibcrux::supports_aead(alg)
    }

    fn prng() -> SeededPrng {
        let seed = NEXT_HPKE_SEED.with(Cell::take).unwrap_or_else(|| {
            let mut seed = [0; RNG_SEED_LEN];
            HpkeLibcrux::prng().fill_bytes(&mut seed);
            seed
        });
        SeededPrng(ChaCha20Rng::from_seed(seed))
    }

    fn kdf_extract(
        alg: KdfAlgorithm,
        salt: &[u8],
        ikm: &[u8],
    ) -> std::result::Result<Vec<u8>, HpkeCryptoError> {
        HpkeLibcrux::kdf_extract(alg, salt, ikm)
    }

    fn kdf_expand(
        alg: KdfAlgorithm,
        prk: &[u8],
        info: &[u8],
        output_size: usize,
    ) -> std::result::Result<Vec<u8>, HpkeCryptoError> {
        HpkeLibcrux::kdf_expand(alg, prk, info, output_size)
    }

    fn dh(
        alg: KemAlgorithm,
        pk: &[u8],
        sk: &[u8],
    ) -> std::result::Result<Vec<u8>, HpkeCryptoError> {
        HpkeLibcrux::dh(alg, pk, sk)
    }

    fn secret_to_public(
        alg: KemAlgorithm,
        sk: &[u8],
    ) -> std::result::Result<Vec<u8>, HpkeCryptoError> {
        HpkeLibcrux::secret_to_public(alg, sk)
    }

    fn kem_key_gen(
        _alg: KemAlgorithm,
        _prng: &mut SeededPrng,
    ) -> std::result::Result<(Vec<u8>, Vec<u8>), HpkeCryptoError> {
        // Only `Hpke::generate_key_pair` calls this; OpenMLS derives its
        // HPKE key pairs (derive_hpke_keypair) instead.
        Err(HpkeCryptoError::UnsupportedKemOperation)
    }

    fn kem_key_gen_derand(
        alg: KemAlgorithm,
        seed: &[u8],
    ) -> std::result::Result<(Vec<u8>, Vec<u8>), HpkeCryptoError> {
        HpkeLibcrux::kem_key_gen_derand(alg, seed)
    }

    fn kem_encaps(
        alg: KemAlgorithm,
        pk_r: &[u8],
        prng: &mut SeededPrng,
    ) -> std::result::Result<(Vec<u8>, Vec<u8>), HpkeCryptoError> {
        // hpke-rs encapsulates DH KEMs itself (with randomness from `prng`)
        // and asks for this only for the KEMs that are not DH-based; of
        // those we support X-Wing, as hpke-rs-libcrux implements it.
        if alg != KemAlgorithm::XWingDraft06 {
            return Err(HpkeCryptoError::UnknownKemAlgorithm);
        }
        let pk = libcrux_kem::PublicKey::decode(libcrux_kem::Algorithm::XWingKemDraft06, pk_r)
            .map_err(|_| HpkeCryptoError::KemInvalidPublicKey)?;
        pk.encapsulate(&mut prng.0)
            .map_err(|e| HpkeCryptoError::CryptoLibraryError(format!("Encaps error {e:?}")))
            .map(|(ss, ct)| (ss.encode(), ct.encode()))
    }

    fn kem_decaps(
        alg: KemAlgorithm,
        ct: &[u8],
        sk_r: &[u8],
    ) -> std::result::Result<Vec<u8>, HpkeCryptoError> {
        HpkeLibcrux::kem_decaps(alg, ct, sk_r)
    }

    fn dh_validate_sk(
        alg: KemAlgorithm,
        sk: &[u8],
    ) -> std::result::Result<Vec<u8>, HpkeCryptoError> {
        HpkeLibcrux::dh_validate_sk(alg, sk)
    }

    fn aead_seal(
        alg: AeadAlgorithm,
        key: &[u8],
        nonce: &[u8],
        aad: &[u8],
        msg: &[u8],
    ) -> std::result::Result<Vec<u8>, HpkeCryptoError> {
        HpkeLibcrux::aead_seal(alg, key, nonce, aad, msg)
    }

    fn aead_open(
        alg: AeadAlgorithm,
        key: &[u8],
        nonce: &[u8],
        aad: &[u8],
        msg: &[u8],
    ) -> std::result::Result<Vec<u8>, HpkeCryptoError> {
        HpkeLibcrux::aead_open(alg, key, nonce, aad, msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUITES: [Ciphersuite; 2] = [
        Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519,
        Ciphersuite::MLS_256_XWING_CHACHA20POLY1305_SHA256_Ed25519,
    ];

    fn key_pair(crypto: &Crypto, suite: Ciphersuite) -> HpkeKeyPair {
        crypto
            .derive_hpke_keypair(suite.hpke_config(), &[9; 32])
            .unwrap()
    }

    #[test]
    fn seeded_randomness_repeats_and_depends_on_the_seed() {
        let (a, b, c) = (
            Crypto::new(Some([1; 32])).unwrap(),
            Crypto::new(Some([1; 32])).unwrap(),
            Crypto::new(Some([2; 32])).unwrap(),
        );
        let draw = |x: &Crypto| x.random_vec(100).unwrap();
        assert_eq!(draw(&a), draw(&b));
        assert_ne!(draw(&a), draw(&c));
        let unseeded = Crypto::new(None).unwrap();
        assert_ne!(draw(&unseeded), draw(&unseeded));
    }

    #[test]
    fn seeded_hpke_repeats_and_opens_with_libcrux() {
        for suite in SUITES {
            let (a, b, c) = (
                Crypto::new(Some([1; 32])).unwrap(),
                Crypto::new(Some([1; 32])).unwrap(),
                Crypto::new(Some([2; 32])).unwrap(),
            );
            let keys = key_pair(&a, suite);
            let seal = |x: &Crypto| {
                x.hpke_seal(
                    suite.hpke_config(),
                    &keys.public,
                    b"info",
                    b"aad",
                    b"secret",
                )
                .unwrap()
            };
            let (sa, sb, sc) = (seal(&a), seal(&b), seal(&c));
            assert_eq!(sa.kem_output, sb.kem_output, "{suite:?}");
            assert_eq!(sa.ciphertext, sb.ciphertext, "{suite:?}");
            assert_ne!(sa.kem_output, sc.kem_output, "{suite:?}");
            // The same seal again is the same (derived from its inputs, not
            // from the order of calls); any other input changes it.
            assert_eq!(seal(&a).kem_output, sa.kem_output, "{suite:?}");
            let other = a
                .hpke_seal(
                    suite.hpke_config(),
                    &keys.public,
                    b"info",
                    b"aad",
                    b"secret2",
                )
                .unwrap();
            assert_ne!(other.kem_output, sa.kem_output, "{suite:?}");
            let opened = CryptoProvider::new()
                .unwrap()
                .hpke_open(suite.hpke_config(), &sa, &keys.private, b"info", b"aad")
                .unwrap();
            assert_eq!(opened, b"secret");

            let export = |x: &Crypto| {
                x.hpke_setup_sender_and_export(suite.hpke_config(), &keys.public, b"i", b"c", 32)
                    .unwrap()
            };
            // Fresh clients: `a` has drawn more than `b` by now.
            let (a, b) = (
                Crypto::new(Some([1; 32])).unwrap(),
                Crypto::new(Some([1; 32])).unwrap(),
            );
            let (ea, eb) = (export(&a), export(&b));
            assert_ne!(ea.0, export(&c).0);
            assert_eq!(ea.0, eb.0);
            assert_eq!(&*ea.1, &*eb.1);
            let received = CryptoProvider::new()
                .unwrap()
                .hpke_setup_receiver_and_export(
                    suite.hpke_config(),
                    &ea.0,
                    &keys.private,
                    b"i",
                    b"c",
                    32,
                )
                .unwrap();
            assert_eq!(&*received, &*ea.1);
        }
    }

    #[test]
    fn seeded_signature_keys_repeat_and_sign() {
        let (a, b) = (
            Crypto::new(Some([1; 32])).unwrap(),
            Crypto::new(Some([1; 32])).unwrap(),
        );
        let (sk, pk) = a.signature_key_gen(SignatureScheme::ED25519).unwrap();
        assert_eq!(
            (sk.clone(), pk.clone()),
            b.signature_key_gen(SignatureScheme::ED25519).unwrap()
        );
        let signature = a.sign(SignatureScheme::ED25519, b"m", &sk).unwrap();
        a.verify_signature(SignatureScheme::ED25519, b"m", &pk, &signature)
            .unwrap();
    }
}
