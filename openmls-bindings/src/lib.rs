//! PyO3 bindings for the parts of OpenMLS that quicnprotochat uses.
//!
//! Bytes in, bytes out: every MLS object crosses into Python as RFC 9420
//! MLSMessage bytes, and every error is raised as a subclass of
//! `openmls_bindings.exceptions.MlsError`.

mod client;
mod clock;
mod crypto;
mod error;
mod group;
mod group_ops;
mod key_package;
mod message_info;
mod meta;
mod policy;
mod pool;
mod provider;
mod storage;
mod store_file;
mod welcome_info;

#[cfg(test)]
mod scenario_tests;
#[cfg(test)]
mod seeded_tests;

pub use error::{Error, Result};

/// Native part of `openmls_bindings`; import from `openmls_bindings` instead.
#[pyo3::pymodule]
mod _native {
    #[pymodule_export]
    use crate::client::Client;
    #[pymodule_export]
    use crate::group::{Group, Processed};
    #[pymodule_export]
    use crate::key_package::key_package_identity;
    #[pymodule_export]
    use crate::key_package::key_package_info;
    #[pymodule_export]
    use crate::message_info::{message_info, MessageInfo};
    #[pymodule_export]
    use crate::welcome_info::WelcomeInfo;
    #[pymodule_export]
    const CIPHERSUITE_X25519_AES128GCM: u16 = crate::key_package::CIPHERSUITE_X25519_AES128GCM;
    #[pymodule_export]
    const CIPHERSUITE_XWING: u16 = crate::key_package::CIPHERSUITE_XWING;
}
