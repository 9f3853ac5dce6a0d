//! `message_info`: what a group message says about itself in the clear.
//!
//! A node must route some messages before MLS has authenticated them: keep a
//! message from an epoch still to come until the commit that opens it
//! arrives, or refuse an envelope labelled "proposal" that holds a commit.
//! Group id, epoch and content type are in the clear in every PublicMessage
//! and PrivateMessage (RFC 9420 §6); OpenMLS's own decoder reads them here.
//! Nothing read here is authenticated: processing the message is.

use openmls::framing::ProtocolMessage;
use openmls::prelude::ContentType;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::error::{guarded, Result};
use crate::group_ops::parse_group_message;

/// The unauthenticated header of a group message.
#[pyclass(frozen, module = "openmls_bindings._native")]
pub struct MessageInfo {
    group_id: Vec<u8>,
    epoch: u64,
    content_type: &'static str,
}

impl MessageInfo {
    fn of(message: &ProtocolMessage) -> Self {
        Self {
            group_id: message.group_id().as_slice().to_vec(),
            epoch: message.epoch().as_u64(),
            content_type: match message.content_type() {
                ContentType::Application => "application",
                ContentType::Proposal => "proposal",
                ContentType::Commit => "commit",
            },
        }
    }

    pub(crate) fn parse(message: &[u8]) -> Result<Self> {
        Ok(Self::of(&parse_group_message(message)?))
    }
}

#[pymethods]
impl MessageInfo {
    #[getter]
    fn group_id<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.group_id)
    }

    #[getter]
    fn epoch(&self) -> u64 {
        self.epoch
    }

    #[getter]
    fn content_type(&self) -> &'static str {
        self.content_type
    }

    fn __repr__(&self) -> String {
        format!(
            "<MessageInfo {} epoch={} group={}…>",
            self.content_type,
            self.epoch,
            crate::client::hex_prefix(&self.group_id)
        )
    }
}

/// Reads the group id, epoch and content type of a PublicMessage or
/// PrivateMessage without any keys. Raises InvalidInputError for bytes that
/// are not a group message (a Welcome, KeyPackage, GroupInfo, or garbage).
#[pyfunction]
pub fn message_info(py: Python<'_>, message: &[u8]) -> PyResult<MessageInfo> {
    Ok(py.detach(|| guarded(|| MessageInfo::parse(message)))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_invalid_input() {
        for bytes in [&b""[..], b"\x00\x01", &[0xff; 64]] {
            let err = MessageInfo::parse(bytes).err().unwrap();
            assert_eq!(err.python_class(), "InvalidInputError");
        }
    }
}
