//! The client's clock: every "now" the binding decides with — the lifetimes
//! of the KeyPackages, last-resort KeyPackages and creator leaves it makes,
//! the lifetime checks of the KeyPackages it is handed
//! (`key_package_identity`, `add_members`, `commit(add=...)`,
//! `propose_add`), the expiry of its pool and the renewal of its last-resort
//! KeyPackage — comes from the `clock_ms` callable it was built with (or the
//! `now_ms` argument), never from the system clock.
//!
//! A call reads the clock once, before it takes the client's lock (so a
//! thread waiting for the lock while holding the GIL cannot deadlock with
//! one that holds the lock and needs the GIL).
//!
//! What OpenMLS 0.9.2 (unmodified, from crates.io) still checks against the
//! system clock, with `Lifetime::validate` (`SystemTime::now()`), because
//! its public API takes no time for these checks:
//!
//! - `KeyPackageIn::validate`: every KeyPackage the binding parses (so a
//!   KeyPackage handed to us must be valid by the system clock *and* by ours)
//!   and every Add proposal inside a received proposal or commit message;
//! - `PublicGroup::validate_add_proposals` (RFC 9420 valn0202): the Adds of a
//!   commit we build and of a commit or proposal we receive;
//! - the ratchet tree of a Welcome (`join`) and of a GroupInfo
//!   (`join_external`), valn1407: every leaf that still carries a lifetime
//!   (added from a KeyPackage, or the creator's leaf, and never updated since).
//!   OpenMLS's `JoinBuilder::skip_lifetime_validation` would turn this off, but
//!   the binding then has no public way to reach those leaves' lifetimes
//!   before the group is built, so it leaves OpenMLS's check on;
//! - the leaf node of an UpdatePath or Update proposal — these leaves carry no
//!   lifetime (RFC 9420 §7.2), so the check never fires.
//!
//! OpenMLS also stamps each epoch's message secrets with the system time in
//! the stored group state (used only by its time-based past-epoch deletion
//! policy, which the binding does not use), so state files, unlike messages,
//! are not a pure function of the injected clock.
//!
//! A simulation whose clock is far from the real one therefore builds its
//! clients with a long `key_package_lifetime_s` (up to 100 years) and a
//! simulated epoch in the past: its lifetimes then cover both its own clock
//! and the real one, and its messages are still a pure function of its clock.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pyo3::prelude::*;
use pyo3::types::PyBool;

use crate::error::{Error, Result};

/// One reading of a clock: milliseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Now {
    ms: u64,
}

impl Now {
    pub fn from_ms(ms: u64) -> Self {
        Self { ms }
    }

    /// Whole seconds since the Unix epoch (the unit of MLS lifetimes).
    pub fn secs(self) -> u64 {
        self.ms / 1000
    }

    pub fn system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.ms)
    }
}

/// Where a client's time comes from.
pub enum Clock {
    /// A Python callable returning an int: milliseconds since the Unix epoch.
    Python(Py<PyAny>),
    /// Tests: a clock the test sets.
    #[cfg(test)]
    Manual(std::sync::Arc<std::sync::atomic::AtomicU64>),
}

impl Clock {
    /// A clock from a Python object, which must be callable.
    pub fn python(clock_ms: &Bound<'_, PyAny>) -> Result<Self> {
        if !clock_ms.is_callable() {
            return Err(Error::invalid_input(
                "clock_ms must be a callable returning milliseconds since the Unix epoch",
            ));
        }
        Ok(Self::Python(clock_ms.clone().unbind()))
    }

    /// Reads the clock. From Rust code that does not hold the GIL this
    /// attaches to the interpreter for the call.
    pub fn now(&self) -> Result<Now> {
        match self {
            Self::Python(clock_ms) => Python::attach(|py| {
                let value = clock_ms
                    .bind(py)
                    .call0()
                    .map_err(|e| Error::invalid_input(format!("clock_ms() raised {e}")))?;
                let ms = if value.is_instance_of::<PyBool>() {
                    None
                } else {
                    value.extract::<u64>().ok()
                };
                ms.map(Now::from_ms).ok_or_else(|| {
                    Error::invalid_input(
                        "clock_ms() must return a non-negative int \
                         (milliseconds since the Unix epoch)",
                    )
                })
            }),
            #[cfg(test)]
            Self::Manual(ms) => Ok(Now::from_ms(ms.load(std::sync::atomic::Ordering::SeqCst))),
        }
    }
}

#[cfg(test)]
pub mod testing {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use super::*;

    /// A clock for tests, and the handle that moves it.
    pub fn manual(ms: u64) -> (Clock, Arc<AtomicU64>) {
        let handle = Arc::new(AtomicU64::new(ms));
        (Clock::Manual(Arc::clone(&handle)), handle)
    }

    /// Another clock moved by the same handle.
    pub fn shared(handle: &Arc<AtomicU64>) -> Clock {
        Clock::Manual(Arc::clone(handle))
    }

    /// The system clock's reading now (tests only: the binding never reads
    /// the system clock).
    pub fn system_now() -> Now {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Now::from_ms(ms)
    }

    /// A manual clock set to the system clock's reading now.
    pub fn at_system_now() -> Clock {
        manual(system_now().ms).0
    }

    pub fn set(handle: &AtomicU64, now: Now) {
        handle.store(now.ms, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lifetime_is_checked_at_the_time_given() {
        use crate::key_package::check_lifetime;
        use openmls::prelude::Lifetime;
        let now = Now::from_ms(1_000_000_000_000);
        let lifetime = Lifetime::init(now.secs() - 10, now.secs() + 10);
        // Valid at `now`, long expired by the system clock.
        assert!(lifetime.validate().is_err());
        assert!(check_lifetime(&lifetime, now).is_ok());
        assert!(check_lifetime(&lifetime, Now::from_ms((now.secs() + 10) * 1000)).is_err());
        assert!(check_lifetime(&lifetime, Now::from_ms((now.secs() - 11) * 1000)).is_err());
    }
}
