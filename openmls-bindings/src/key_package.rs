//! Ciphersuites, credentials and KeyPackages.
//!
//! Our credential rule: a member's BasicCredential identity is its 32-byte
//! Ed25519 signature public key. OpenMLS does not bind the identity to the
//! key (that is the Authentication Service's job, RFC 9420 §5.3.1), so every
//! leaf that enters a group through us is checked with [`leaf_identity`].

use openmls::prelude::{
    Ciphersuite, Credential, CredentialType, CredentialWithKey, KeyPackage, KeyPackageBundle,
    LeafNode, Lifetime, MlsMessageBodyIn, MlsMessageIn, OpenMlsCrypto, ProtocolVersion,
};
use openmls_basic_credential::SignatureKeyPair;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use tls_codec::DeserializeBytes;

use crate::clock::Now;
use crate::error::{guarded, Error, Result};
use crate::policy::capabilities;
use crate::provider::{shared_crypto, Provider};

/// MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519 (RFC 9420 §17.1).
pub const CIPHERSUITE_X25519_AES128GCM: u16 = 0x0001;

/// MLS_256_XWING_CHACHA20POLY1305_SHA256_Ed25519
/// (draft-ietf-mls-pq-ciphersuites; X-Wing = ML-KEM-768 + X25519).
pub const CIPHERSUITE_XWING: u16 = 0x004D;

/// Every ciphersuite a client offers: Ed25519 signatures (the only key a
/// client holds) with the default suite, its ChaCha20 twin and X-Wing.
pub const SUPPORTED_CIPHERSUITES: [Ciphersuite; 3] = [
    Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519,
    Ciphersuite::MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519,
    Ciphersuite::MLS_256_XWING_CHACHA20POLY1305_SHA256_Ed25519,
];

/// Length of an identity: a raw Ed25519 public key.
pub const IDENTITY_LEN: usize = 32;

/// How long a KeyPackage we make is valid by default: 12 weeks, as
/// OpenMLS's default.
pub const KEY_PACKAGE_LIFETIME_SECS: u64 = 12 * 7 * 24 * 60 * 60;

/// The longest lifetime a client makes: 100 years of 365.25 days. A
/// simulation whose clock is far from the real one passes a long lifetime so
/// that its KeyPackages also pass OpenMLS's checks against the real clock
/// (see src/clock.rs).
pub const MAX_KEY_PACKAGE_LIFETIME_SECS: u64 = 36525 * 24 * 60 * 60;

/// How far into the past a KeyPackage's lifetime reaches, for peers whose
/// clocks are behind (an hour, as OpenMLS's default).
pub const KEY_PACKAGE_LIFETIME_MARGIN_SECS: u64 = 60 * 60;

/// The length of every lifetime a client makes (KeyPackages, last-resort
/// KeyPackages, a group creator's leaf), in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyPackageLifetime {
    secs: u64,
}

impl Default for KeyPackageLifetime {
    fn default() -> Self {
        Self {
            secs: KEY_PACKAGE_LIFETIME_SECS,
        }
    }
}

impl KeyPackageLifetime {
    /// A lifetime of `secs` seconds: at least 1, at most
    /// [`MAX_KEY_PACKAGE_LIFETIME_SECS`].
    pub fn from_secs(secs: i128) -> Result<Self> {
        match u64::try_from(secs) {
            Ok(secs) if (1..=MAX_KEY_PACKAGE_LIFETIME_SECS).contains(&secs) => Ok(Self { secs }),
            _ => Err(Error::invalid_input(format!(
                "key_package_lifetime_s must be between 1 and \
                 {MAX_KEY_PACKAGE_LIFETIME_SECS} seconds (100 years), got {secs}"
            ))),
        }
    }

    pub fn secs(self) -> u64 {
        self.secs
    }

    /// The lifetime of a KeyPackage (or a group creator's leaf) made at
    /// `now`: from an hour before `now` to `now` plus this length.
    pub fn at(self, now: Now) -> Lifetime {
        Lifetime::init(
            now.secs().saturating_sub(KEY_PACKAGE_LIFETIME_MARGIN_SECS),
            now.secs().saturating_add(self.secs),
        )
    }
}

/// Checks `lifetime` against the client's `now` (not the system clock).
pub fn check_lifetime(lifetime: &Lifetime, now: Now) -> Result<()> {
    lifetime
        .validate_with_time(now.system_time())
        .map_err(|e| Error::invalid_message(format!("invalid key package: {e}")))
}

/// Turns a Python int into a ciphersuite this binding can use: one of
/// [`SUPPORTED_CIPHERSUITES`], and supported by the crypto provider.
pub fn ciphersuite_from_code(code: i64) -> Result<Ciphersuite> {
    let unsupported = || Error::wrong_ciphersuite(format!("unsupported ciphersuite {code:#06x}"));
    let value = u16::try_from(code).map_err(|_| unsupported())?;
    let suite = SUPPORTED_CIPHERSUITES
        .into_iter()
        .find(|suite| *suite as u16 == value)
        .ok_or_else(unsupported)?;
    if !shared_crypto()?.supported_ciphersuites().contains(&suite) {
        return Err(unsupported());
    }
    Ok(suite)
}

/// The IANA code point of a ciphersuite.
pub fn ciphersuite_code(suite: Ciphersuite) -> u16 {
    suite as u16
}

/// The identity in `credential`, if it is a BasicCredential whose identity
/// is exactly `signature_key` (an Ed25519 public key).
pub fn verified_identity(credential: &Credential, signature_key: &[u8]) -> Result<Vec<u8>> {
    if credential.credential_type() != CredentialType::Basic {
        return Err(Error::invalid_message(
            "credential is not a basic credential",
        ));
    }
    // For a BasicCredential the serialized content is the identity itself.
    let identity = credential.serialized_content();
    if identity.len() != IDENTITY_LEN || identity != signature_key {
        return Err(Error::invalid_message(
            "credential identity does not match the member's signature key",
        ));
    }
    Ok(identity.to_vec())
}

/// [`verified_identity`] for a leaf node.
pub fn leaf_identity(leaf: &LeafNode) -> Result<Vec<u8>> {
    verified_identity(leaf.credential(), leaf.signature_key().as_slice())
}

/// Decodes a KeyPackage MLSMessage, verifies its signatures, lifetime (at
/// `now`) and credential rule, and returns it.
///
/// OpenMLS's `KeyPackageIn::validate` also checks the lifetime, against the
/// system clock (src/clock.rs); the check at `now` is ours.
pub fn parse_key_package(bytes: &[u8], now: Now) -> Result<KeyPackage> {
    let message = MlsMessageIn::tls_deserialize_exact_bytes(bytes)?;
    let key_package_in = match message.extract() {
        MlsMessageBodyIn::KeyPackage(kp) => kp,
        _ => return Err(Error::invalid_input("message is not a key package")),
    };
    let crypto = shared_crypto()?;
    let key_package = key_package_in.validate(crypto, ProtocolVersion::Mls10)?;
    check_lifetime(key_package.life_time(), now)?;
    leaf_identity(key_package.leaf_node())?;
    Ok(key_package)
}

/// Makes a KeyPackage with our capabilities and `lifetime` (normally
/// [`KeyPackageLifetime::at`] the client's now), and stores its private keys in
/// `provider`.
pub fn build_key_package(
    provider: &Provider,
    signer: &SignatureKeyPair,
    credential: &CredentialWithKey,
    suite: Ciphersuite,
    last_resort: bool,
    lifetime: Lifetime,
) -> Result<KeyPackageBundle> {
    let mut builder = KeyPackage::builder()
        .leaf_node_capabilities(capabilities())
        .key_package_lifetime(lifetime);
    if last_resort {
        builder = builder.mark_as_last_resort();
    }
    Ok(builder.build(suite, provider, signer, credential.clone())?)
}

/// Validate a KeyPackage (an MLSMessage) at time `now_ms` (milliseconds
/// since the Unix epoch) and return its credential identity.
///
/// The identity is the 32-byte Ed25519 public key that signed the KeyPackage.
/// Raises InvalidInputError for undecodable bytes and InvalidMessageError for
/// a KeyPackage that fails validation (also: not valid at `now_ms`, or not
/// valid by the system clock, which OpenMLS checks too).
#[pyfunction]
#[pyo3(signature = (key_package, *, now_ms))]
pub fn key_package_identity<'py>(
    py: Python<'py>,
    key_package: &[u8],
    now_ms: u64,
) -> PyResult<Bound<'py, PyBytes>> {
    let now = Now::from_ms(now_ms);
    let identity = py.detach(|| {
        guarded(|| {
            let kp = parse_key_package(key_package, now)?;
            leaf_identity(kp.leaf_node())
        })
    })?;
    Ok(PyBytes::new(py, &identity))
}

/// Validate a KeyPackage (an MLSMessage) at time `now_ms`, as
/// [`key_package_identity`] does, and return its credential identity and its
/// ciphersuite's code point.
///
/// Raises WrongCiphersuiteError for a valid KeyPackage of a ciphersuite this
/// binding cannot use, so that a caller can tell "not for us" from "bad".
#[pyfunction]
#[pyo3(signature = (key_package, *, now_ms))]
pub fn key_package_info<'py>(
    py: Python<'py>,
    key_package: &[u8],
    now_ms: u64,
) -> PyResult<(Bound<'py, PyBytes>, u16)> {
    let now = Now::from_ms(now_ms);
    let (identity, suite) = py.detach(|| {
        guarded(|| {
            let kp = parse_key_package(key_package, now)?;
            let suite = ciphersuite_from_code(i64::from(ciphersuite_code(kp.ciphersuite())))?;
            Ok((leaf_identity(kp.leaf_node())?, ciphersuite_code(suite)))
        })
    })?;
    Ok((PyBytes::new(py, &identity), suite))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ed25519_suites_the_provider_supports_are_accepted() {
        assert!(ciphersuite_from_code(0x0001).is_ok());
        assert!(ciphersuite_from_code(0x0003).is_ok());
        assert!(ciphersuite_from_code(0x004D).is_ok());
        for bad in [0x0002, 0x0004, 0x0007, 0x004F, 0x9999, -1, 1 << 20] {
            let err = ciphersuite_from_code(bad).unwrap_err();
            assert_eq!(err.python_class(), "WrongCiphersuiteError", "code {bad}");
        }
    }

    #[test]
    fn garbage_is_not_a_key_package() {
        for bytes in [&b""[..], b"\x00", b"\x00\x01\x00\x05", &[0xff; 64]] {
            let err = parse_key_package(bytes, Now::from_ms(0)).unwrap_err();
            assert_eq!(err.python_class(), "InvalidInputError");
        }
    }

    #[test]
    fn identity_must_equal_signature_key() {
        let key = [7u8; 32];
        let cred: Credential = openmls::prelude::BasicCredential::new(key.to_vec()).into();
        assert_eq!(verified_identity(&cred, &key).unwrap(), key.to_vec());
        let err = verified_identity(&cred, &[8u8; 32]).unwrap_err();
        assert_eq!(err.python_class(), "InvalidMessageError");
    }
}
