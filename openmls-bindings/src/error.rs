//! One error type for the whole binding, and its mapping onto the Python
//! exception family defined in `python/openmls_bindings/exceptions.py`.
//!
//! Messages are short and written for users. They never contain key
//! material, plaintext or whole messages: OpenMLS error texts are only used
//! where they describe a *reason* (e.g. "Verifying the signature failed.").

use std::fmt;

use openmls::error::LibraryError;
use openmls::framing::errors::{MessageDecryptionError, SecretTreeError};
use openmls::group::{
    AddMembersError, CommitBuilderStageError, CreateCommitError, CreateMessageError,
    ExportGroupInfoError, ExportSecretError, ExternalCommitBuilderError,
    ExternalCommitBuilderFinalizeError, LeaveGroupError, MergeCommitError, MergePendingCommitError,
    MlsGroupStateError, NewGroupError, ProcessMessageError, ProposeAddMemberError,
    ProposeRemoveMemberError, ProposeSelfUpdateError, RemoveProposalError, StageCommitError,
    ValidationError, WelcomeError,
};
use openmls::prelude::{KeyPackageNewError, KeyPackageVerifyError};
use pyo3::PyErr;

use crate::provider::StorageError;

mod py {
    pyo3::import_exception!(openmls_bindings.exceptions, MlsError);
    pyo3::import_exception!(openmls_bindings.exceptions, InvalidInputError);
    pyo3::import_exception!(openmls_bindings.exceptions, InvalidMessageError);
    pyo3::import_exception!(openmls_bindings.exceptions, MissingProposalError);
    pyo3::import_exception!(openmls_bindings.exceptions, WrongEpochError);
    pyo3::import_exception!(openmls_bindings.exceptions, WrongCiphersuiteError);
    pyo3::import_exception!(openmls_bindings.exceptions, StorageError);
    pyo3::import_exception!(openmls_bindings.exceptions, NotMemberError);
    pyo3::import_exception!(openmls_bindings.exceptions, NotCommitterError);
}

/// Everything that can go wrong in the binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// Malformed bytes, wrong lengths, or a value of the wrong kind.
    InvalidInput(String),
    /// A decodable message that fails validation, authentication or
    /// decryption, or that belongs to another group.
    InvalidMessage(String),
    /// A commit that covers a proposal this member has not received yet.
    MissingProposal(String),
    /// A message from an epoch the group cannot process.
    WrongEpoch(String),
    /// An unsupported ciphersuite, or one that does not match the group.
    WrongCiphersuite(String),
    /// The encrypted state file cannot be opened, read or written.
    Storage(String),
    /// This client is not (or no longer) a member of the group, or the group
    /// is unknown.
    NotMember(String),
    /// A commit by (or attempted by) someone other than the group's committer.
    NotCommitter(String),
    /// Local state problems (e.g. use after eviction) and OpenMLS internal
    /// errors; raised as the base `MlsError`.
    State(String),
}

/// Result alias used throughout the crate.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn invalid_input(msg: impl Into<String>) -> Self {
        Self::InvalidInput(msg.into())
    }

    pub(crate) fn invalid_message(msg: impl Into<String>) -> Self {
        Self::InvalidMessage(msg.into())
    }

    pub(crate) fn wrong_ciphersuite(msg: impl Into<String>) -> Self {
        Self::WrongCiphersuite(msg.into())
    }

    pub(crate) fn state(msg: impl Into<String>) -> Self {
        Self::State(msg.into())
    }

    pub(crate) fn storage(msg: impl Into<String>) -> Self {
        Self::Storage(msg.into())
    }

    pub(crate) fn not_member(msg: impl Into<String>) -> Self {
        Self::NotMember(msg.into())
    }

    pub(crate) fn not_committer(msg: impl Into<String>) -> Self {
        Self::NotCommitter(msg.into())
    }

    /// The user-facing message for a message from another epoch.
    pub(crate) fn wrong_epoch(message_epoch: u64, group_epoch: u64) -> Self {
        Self::WrongEpoch(format!(
            "message is for epoch {message_epoch} but the group is at epoch {group_epoch}"
        ))
    }

    /// Name of the Python exception class this error is raised as.
    pub fn python_class(&self) -> &'static str {
        match self {
            Self::InvalidInput(_) => "InvalidInputError",
            Self::InvalidMessage(_) => "InvalidMessageError",
            Self::MissingProposal(_) => "MissingProposalError",
            Self::WrongEpoch(_) => "WrongEpochError",
            Self::WrongCiphersuite(_) => "WrongCiphersuiteError",
            Self::Storage(_) => "StorageError",
            Self::NotMember(_) => "NotMemberError",
            Self::NotCommitter(_) => "NotCommitterError",
            Self::State(_) => "MlsError",
        }
    }

    /// The message carried by the exception.
    pub fn message(&self) -> &str {
        match self {
            Self::InvalidInput(m)
            | Self::InvalidMessage(m)
            | Self::MissingProposal(m)
            | Self::WrongEpoch(m)
            | Self::WrongCiphersuite(m)
            | Self::Storage(m)
            | Self::NotMember(m)
            | Self::NotCommitter(m)
            | Self::State(m) => m,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for Error {}

impl From<Error> for PyErr {
    fn from(err: Error) -> PyErr {
        match err {
            Error::InvalidInput(m) => py::InvalidInputError::new_err(m),
            Error::InvalidMessage(m) => py::InvalidMessageError::new_err(m),
            Error::MissingProposal(m) => py::MissingProposalError::new_err(m),
            Error::WrongEpoch(m) => py::WrongEpochError::new_err(m),
            Error::WrongCiphersuite(m) => py::WrongCiphersuiteError::new_err(m),
            Error::Storage(m) => py::StorageError::new_err(m),
            Error::NotMember(m) => py::NotMemberError::new_err(m),
            Error::NotCommitter(m) => py::NotCommitterError::new_err(m),
            Error::State(m) => py::MlsError::new_err(m),
        }
    }
}

/// Runs `f`, turning a panic inside OpenMLS (or here) into an [`Error`]
/// instead of a `PanicException` in Python.
///
/// A panic while a group's mutex is held poisons that mutex, so the group
/// refuses further use instead of continuing from a half-updated state.
pub fn guarded<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|_| Err(Error::state("internal error in the MLS library")))
}

// --- Conversions from OpenMLS errors -------------------------------------

fn storage(_err: StorageError) -> Error {
    // The store fails only when a value does not encode or decode, or an
    // entry it refers to is missing: the state is inconsistent, and the text
    // stays generic.
    Error::Storage("the MLS state store failed".into())
}

impl From<StorageError> for Error {
    fn from(err: StorageError) -> Self {
        storage(err)
    }
}

impl From<LibraryError> for Error {
    fn from(err: LibraryError) -> Self {
        let detail = err.to_string();
        Error::State(format!("internal OpenMLS error: {}", detail.trim()))
    }
}

impl From<MlsGroupStateError> for Error {
    fn from(err: MlsGroupStateError) -> Self {
        match err {
            MlsGroupStateError::LibraryError(e) => e.into(),
            MlsGroupStateError::UseAfterEviction => {
                Error::not_member("this member was removed from the group")
            }
            MlsGroupStateError::PendingProposal => {
                Error::state("a proposal is pending; wait for the commit that covers it")
            }
            MlsGroupStateError::PendingCommit => Error::state("a commit is pending"),
            other => Error::state(other.to_string()),
        }
    }
}

impl From<KeyPackageVerifyError> for Error {
    fn from(err: KeyPackageVerifyError) -> Self {
        match err {
            KeyPackageVerifyError::LibraryError(e) => e.into(),
            other => Error::InvalidMessage(format!("invalid key package: {other}")),
        }
    }
}

impl From<KeyPackageNewError> for Error {
    fn from(err: KeyPackageNewError) -> Self {
        match err {
            KeyPackageNewError::LibraryError(e) => e.into(),
            KeyPackageNewError::UnsupportedCiphersuite(_)
            | KeyPackageNewError::CiphersuiteSignatureSchemeMismatch => {
                Error::wrong_ciphersuite("ciphersuite is not supported for this client")
            }
            KeyPackageNewError::StorageError => Error::Storage("the MLS state store failed".into()),
            other => Error::state(format!("could not create key package: {other}")),
        }
    }
}

impl From<NewGroupError<StorageError>> for Error {
    fn from(err: NewGroupError<StorageError>) -> Self {
        match err {
            NewGroupError::LibraryError(e) => e.into(),
            NewGroupError::StorageError(e) => storage(e),
            NewGroupError::UnsupportedCiphersuite(_) => {
                Error::wrong_ciphersuite("ciphersuite is not supported")
            }
            NewGroupError::GroupAlreadyExists => {
                Error::state("a group with this id already exists for this client")
            }
            other => Error::invalid_input(format!("cannot create group: {other}")),
        }
    }
}

impl From<WelcomeError<StorageError>> for Error {
    fn from(err: WelcomeError<StorageError>) -> Self {
        match err {
            WelcomeError::LibraryError(e) => e.into(),
            WelcomeError::StorageError(e) => storage(e),
            WelcomeError::UnsupportedCiphersuite(_) | WelcomeError::CiphersuiteMismatch => {
                Error::wrong_ciphersuite("the welcome's ciphersuite does not match")
            }
            WelcomeError::NoMatchingKeyPackage
            | WelcomeError::NoMatchingEncryptionKey
            | WelcomeError::JoinerSecretNotFound
            | WelcomeError::PrivateInitKeyNotFound => Error::invalid_message(
                "welcome is not for a key package of this client (or it was already used)",
            ),
            WelcomeError::MissingRatchetTree => {
                Error::invalid_message("welcome does not carry the ratchet tree")
            }
            WelcomeError::GroupAlreadyExists => {
                Error::state("this client is already a member of that group")
            }
            other => Error::InvalidMessage(format!("invalid welcome: {other}")),
        }
    }
}

impl From<MessageDecryptionError> for Error {
    fn from(err: MessageDecryptionError) -> Self {
        match err {
            MessageDecryptionError::LibraryError(e) => e.into(),
            // A generation or epoch we no longer hold keys for.
            MessageDecryptionError::SecretTreeError(SecretTreeError::TooDistantInThePast) => {
                Error::WrongEpoch("message is too old to decrypt".into())
            }
            MessageDecryptionError::SecretTreeError(SecretTreeError::SecretReuseError) => {
                Error::invalid_message("message was already processed")
            }
            other => Error::InvalidMessage(format!("cannot decrypt message: {other}")),
        }
    }
}

impl From<ValidationError> for Error {
    fn from(err: ValidationError) -> Self {
        match err {
            ValidationError::LibraryError(e) => e.into(),
            ValidationError::WrongGroupId => Error::invalid_message("message is for another group"),
            ValidationError::WrongEpoch | ValidationError::NoPastEpochData => {
                Error::WrongEpoch("message is from another epoch".into())
            }
            ValidationError::UnableToDecrypt(e) => e.into(),
            other => Error::InvalidMessage(format!("invalid message: {other}")),
        }
    }
}

impl From<StageCommitError> for Error {
    fn from(err: StageCommitError) -> Self {
        match err {
            StageCommitError::LibraryError(e) => e.into(),
            StageCommitError::EpochMismatch => {
                Error::WrongEpoch("commit is from another epoch".into())
            }
            StageCommitError::MissingProposal => Error::MissingProposal(
                "commit covers a proposal this member has not received (yet)".into(),
            ),
            other => Error::InvalidMessage(format!("invalid commit: {other}")),
        }
    }
}

impl From<ProcessMessageError<StorageError>> for Error {
    fn from(err: ProcessMessageError<StorageError>) -> Self {
        match err {
            ProcessMessageError::LibraryError(e) => e.into(),
            ProcessMessageError::StorageError(e) => storage(e),
            ProcessMessageError::ValidationError(e) => e.into(),
            ProcessMessageError::GroupStateError(e) => e.into(),
            ProcessMessageError::InvalidCommit(e) => e.into(),
            ProcessMessageError::IncompatibleWireFormat => {
                Error::invalid_message("message wire format is not accepted by this group")
            }
            other => Error::InvalidMessage(format!("invalid message: {other}")),
        }
    }
}

impl From<MergeCommitError<StorageError>> for Error {
    fn from(err: MergeCommitError<StorageError>) -> Self {
        match err {
            MergeCommitError::LibraryError(e) => e.into(),
            MergeCommitError::StorageError(e) => storage(e),
        }
    }
}

impl From<MergePendingCommitError<StorageError>> for Error {
    fn from(err: MergePendingCommitError<StorageError>) -> Self {
        match err {
            MergePendingCommitError::MlsGroupStateError(e) => e.into(),
            MergePendingCommitError::MergeCommitError(e) => e.into(),
        }
    }
}

impl From<CreateCommitError> for Error {
    fn from(err: CreateCommitError) -> Self {
        match err {
            CreateCommitError::LibraryError(e) => e.into(),
            // Caller-supplied key packages that the group cannot accept, e.g.
            // a member who is already in the group.
            CreateCommitError::ProposalValidationError(e) => {
                Error::InvalidInput(format!("cannot add member: {e}"))
            }
            CreateCommitError::LeafNodeValidation(e) => {
                Error::InvalidInput(format!("cannot add member: {e}"))
            }
            other => Error::state(format!("cannot create commit: {other}")),
        }
    }
}

impl From<CommitBuilderStageError<StorageError>> for Error {
    fn from(err: CommitBuilderStageError<StorageError>) -> Self {
        match err {
            CommitBuilderStageError::LibraryError(e) => e.into(),
            CommitBuilderStageError::KeyStoreError(e) => storage(e),
        }
    }
}

impl From<AddMembersError<StorageError>> for Error {
    fn from(err: AddMembersError<StorageError>) -> Self {
        match err {
            AddMembersError::LibraryError(e) => e.into(),
            AddMembersError::EmptyInput(_) => Error::invalid_input("no key packages given"),
            AddMembersError::CreateCommitError(e) => e.into(),
            AddMembersError::CommitBuilderStageError(e) => e.into(),
            AddMembersError::GroupStateError(e) => e.into(),
            AddMembersError::StorageError(e) => storage(e),
        }
    }
}

impl From<CreateMessageError> for Error {
    fn from(err: CreateMessageError) -> Self {
        match err {
            CreateMessageError::LibraryError(e) => e.into(),
            CreateMessageError::GroupStateError(e) => e.into(),
        }
    }
}

impl From<ProposeAddMemberError<StorageError>> for Error {
    fn from(err: ProposeAddMemberError<StorageError>) -> Self {
        match err {
            ProposeAddMemberError::LibraryError(e) => e.into(),
            ProposeAddMemberError::GroupStateError(e) => e.into(),
            ProposeAddMemberError::StorageError(e) => storage(e),
            ProposeAddMemberError::UnsupportedExtensions => {
                Error::invalid_input("the key package does not support this group's extensions")
            }
            ProposeAddMemberError::LeafNodeValidation(e) => {
                Error::invalid_input(format!("cannot add member: {e}"))
            }
        }
    }
}

impl From<ProposeRemoveMemberError<StorageError>> for Error {
    fn from(err: ProposeRemoveMemberError<StorageError>) -> Self {
        match err {
            ProposeRemoveMemberError::LibraryError(e) => e.into(),
            ProposeRemoveMemberError::GroupStateError(e) => e.into(),
            ProposeRemoveMemberError::StorageError(e) => storage(e),
            ProposeRemoveMemberError::UnknownMember => {
                Error::invalid_input("no such member in the group")
            }
        }
    }
}

impl From<ProposeSelfUpdateError<StorageError>> for Error {
    fn from(err: ProposeSelfUpdateError<StorageError>) -> Self {
        match err {
            ProposeSelfUpdateError::LibraryError(e) => e.into(),
            ProposeSelfUpdateError::GroupStateError(e) => e.into(),
            ProposeSelfUpdateError::StorageError(e) => storage(e),
            other => Error::state(format!("cannot propose an update: {other}")),
        }
    }
}

impl From<LeaveGroupError<StorageError>> for Error {
    fn from(err: LeaveGroupError<StorageError>) -> Self {
        match err {
            LeaveGroupError::LibraryError(e) => e.into(),
            LeaveGroupError::GroupStateError(e) => e.into(),
            LeaveGroupError::StorageError(e) => storage(e),
            other => Error::state(format!("cannot leave: {other}")),
        }
    }
}

impl From<RemoveProposalError<StorageError>> for Error {
    fn from(err: RemoveProposalError<StorageError>) -> Self {
        match err {
            RemoveProposalError::Storage(e) => storage(e),
            RemoveProposalError::ProposalNotFound => {
                Error::state("a pending proposal disappeared from the proposal store")
            }
        }
    }
}

impl From<ExportGroupInfoError> for Error {
    fn from(err: ExportGroupInfoError) -> Self {
        match err {
            ExportGroupInfoError::LibraryError(e) => e.into(),
            ExportGroupInfoError::GroupStateError(e) => e.into(),
            other => Error::state(format!("cannot export the group info: {other}")),
        }
    }
}

impl From<ExportSecretError> for Error {
    fn from(err: ExportSecretError) -> Self {
        match err {
            ExportSecretError::LibraryError(e) => e.into(),
            ExportSecretError::GroupStateError(e) => e.into(),
            ExportSecretError::KeyLengthTooLong => {
                Error::invalid_input("exporter length must be at most 65535")
            }
        }
    }
}

impl From<ExternalCommitBuilderError<StorageError>> for Error {
    fn from(err: ExternalCommitBuilderError<StorageError>) -> Self {
        match err {
            ExternalCommitBuilderError::LibraryError(e) => e.into(),
            ExternalCommitBuilderError::StorageError(e) => storage(e),
            ExternalCommitBuilderError::UnsupportedCiphersuite(_) => {
                Error::wrong_ciphersuite("the group's ciphersuite is not supported")
            }
            ExternalCommitBuilderError::MissingRatchetTree => {
                Error::invalid_message("group info does not carry the ratchet tree")
            }
            ExternalCommitBuilderError::MissingExternalPub => {
                Error::invalid_message("group info does not carry an external public key")
            }
            other => Error::InvalidMessage(format!("invalid group info: {other}")),
        }
    }
}

impl From<ExternalCommitBuilderFinalizeError<StorageError>> for Error {
    fn from(err: ExternalCommitBuilderFinalizeError<StorageError>) -> Self {
        match err {
            ExternalCommitBuilderFinalizeError::LibraryError(e) => e.into(),
            ExternalCommitBuilderFinalizeError::StorageError(e) => storage(e),
            ExternalCommitBuilderFinalizeError::MergeCommitError(e) => e.into(),
        }
    }
}

impl From<tls_codec::Error> for Error {
    fn from(_err: tls_codec::Error) -> Self {
        Error::invalid_input("bytes are not a well-formed MLS message")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_epoch_message_names_both_epochs() {
        let err = Error::wrong_epoch(3, 5);
        assert_eq!(err.python_class(), "WrongEpochError");
        assert_eq!(
            err.message(),
            "message is for epoch 3 but the group is at epoch 5"
        );
    }

    #[test]
    fn validation_errors_are_classified() {
        let cases: Vec<(ValidationError, &str)> = vec![
            (ValidationError::WrongGroupId, "InvalidMessageError"),
            (ValidationError::WrongEpoch, "WrongEpochError"),
            (ValidationError::NoPastEpochData, "WrongEpochError"),
            (ValidationError::InvalidSignature, "InvalidMessageError"),
            (
                ValidationError::UnableToDecrypt(MessageDecryptionError::AeadError),
                "InvalidMessageError",
            ),
            (
                ValidationError::UnableToDecrypt(MessageDecryptionError::SecretTreeError(
                    SecretTreeError::TooDistantInThePast,
                )),
                "WrongEpochError",
            ),
        ];
        for (input, class) in cases {
            let text = input.to_string();
            let err = Error::from(ProcessMessageError::<StorageError>::ValidationError(input));
            assert_eq!(err.python_class(), class, "for {text}");
        }
    }

    #[test]
    fn storage_and_state_errors_are_classified() {
        let err = Error::from(ProcessMessageError::<StorageError>::StorageError(
            StorageError::Serialization,
        ));
        assert_eq!(err.python_class(), "StorageError");
        let err = Error::from(ProcessMessageError::<StorageError>::GroupStateError(
            MlsGroupStateError::UseAfterEviction,
        ));
        assert_eq!(err.python_class(), "NotMemberError");
        let err = Error::from(ProcessMessageError::<StorageError>::GroupStateError(
            MlsGroupStateError::PendingCommit,
        ));
        assert_eq!(err.python_class(), "MlsError");
        let err = Error::from(WelcomeError::<StorageError>::CiphersuiteMismatch);
        assert_eq!(err.python_class(), "WrongCiphersuiteError");
        let err = Error::from(WelcomeError::<StorageError>::NoMatchingKeyPackage);
        assert_eq!(err.python_class(), "InvalidMessageError");
    }
}
